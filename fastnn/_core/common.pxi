# Shared by every family: the fused float type, C helpers (SIMD reductions, cloned optimizer loops),
# BLAS, the counter-based RNG and scalar math.

ctypedef fused floating:
    float
    double

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTNN_OPENMP 1
    static int fastnn_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define FASTNN_OPENMP 0
    static int fastnn_omp_max_threads(void) { return 1; }
    #endif
    """
    int FASTNN_OPENMP
    int fastnn_omp_max_threads() nogil

cdef extern from *:
    """
    /* Reductions (diagnostics, BatchNorm over positions) in eight fixed lanes combined in a fixed
       order: the compiler vectorizes the lanes at whatever width the build has, and the sum is the
       same for every build and every thread count. */
    #define FASTNN_LANES(EXPR, V, W) \
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0, t = 0; \
        Py_ssize_t i = 0; \
        for (; i + 8 <= n; i += 8) { \
            { Py_ssize_t q = i + 0; double v = V, w = W; (void)w; s0 += EXPR; } \
            { Py_ssize_t q = i + 1; double v = V, w = W; (void)w; s1 += EXPR; } \
            { Py_ssize_t q = i + 2; double v = V, w = W; (void)w; s2 += EXPR; } \
            { Py_ssize_t q = i + 3; double v = V, w = W; (void)w; s3 += EXPR; } \
            { Py_ssize_t q = i + 4; double v = V, w = W; (void)w; s4 += EXPR; } \
            { Py_ssize_t q = i + 5; double v = V, w = W; (void)w; s5 += EXPR; } \
            { Py_ssize_t q = i + 6; double v = V, w = W; (void)w; s6 += EXPR; } \
            { Py_ssize_t q = i + 7; double v = V, w = W; (void)w; s7 += EXPR; } } \
        for (; i < n; i++) { Py_ssize_t q = i; double v = V, w = W; (void)w; t += EXPR; } \
        double total = (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + t;
    #define FASTNN_RED(T, NAME, EXPR) \
    static void NAME(const T* x, const T* y, Py_ssize_t n, double* out) { \
        FASTNN_LANES(EXPR, (double)x[q], (double)y[q]) *out += total; }
    FASTNN_RED(float, fastnn_sum_f, v)
    FASTNN_RED(double, fastnn_sum_d, v)
    FASTNN_RED(float, fastnn_sumsq_f, v * v)
    FASTNN_RED(double, fastnn_sumsq_d, v * v)
    FASTNN_RED(float, fastnn_sumabs_f, (v < 0 ? -v : v))
    FASTNN_RED(double, fastnn_sumabs_d, (v < 0 ? -v : v))
    FASTNN_RED(float, fastnn_sumdiffsq_f, (v - w) * (v - w))
    FASTNN_RED(double, fastnn_sumdiffsq_d, (v - w) * (v - w))
    /* sum (x - c)^2 and sum y (x - c) for a scalar c (BatchNorm over positions) */
    #define FASTNN_RED_C(T, NAME, EXPR) \
    static double NAME(const T* x, const T* y, Py_ssize_t n, double c) { \
        FASTNN_LANES(EXPR, (double)x[q] - c, (double)y[q]) return total; }
    FASTNN_RED_C(float, fastnn_sqdev_f, v * v)
    FASTNN_RED_C(double, fastnn_sqdev_d, v * v)
    FASTNN_RED_C(float, fastnn_dotdev_f, w * v)
    FASTNN_RED_C(double, fastnn_dotdev_d, w * v)
    """
    void fastnn_sum_f(const float* x, const float* y, Py_ssize_t n, double* out) nogil
    void fastnn_sum_d(const double* x, const double* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumsq_f(const float* x, const float* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumsq_d(const double* x, const double* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumabs_f(const float* x, const float* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumabs_d(const double* x, const double* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumdiffsq_f(const float* x, const float* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumdiffsq_d(const double* x, const double* y, Py_ssize_t n, double* out) nogil
    double fastnn_sqdev_f(const float* x, const float* y, Py_ssize_t n, double c) nogil
    double fastnn_sqdev_d(const double* x, const double* y, Py_ssize_t n, double c) nogil
    double fastnn_dotdev_f(const float* x, const float* y, Py_ssize_t n, double c) nogil
    double fastnn_dotdev_d(const double* x, const double* y, Py_ssize_t n, double c) nogil


cdef extern from *:
    """
    /* The compute-bound update rules (Adam/AdamW, Adagrad) in C. The baseline build clones them
       for AVX-512 and AVX2, picked at load time; the x86-64-v3 and -v4 builds are compiled for
       their ISA as a whole, so forcing one (FASTNN_ISA=v3 on an AVX-512 CPU) runs its code and
       not a wider clone. Elementwise IEEE operations only, with contraction off: every clone
       gives the same bits. */
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && !defined(__AVX2__)
    #define FASTNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
    #else
    #define FASTNN_CLONES
    #endif
    #define FASTNN_ADAM_LOOP(PRE, VMAX) \
        for (i = 0; i < n; i++) { \
            T gi = g[i]; PRE; \
            T mm = m[i] + a0 * (gi - m[i]); \
            T vv = v[i] * a1 + a2 * gi * gi; \
            m[i] = mm; v[i] = vv; VMAX; \
            p[i] = p[i] - lr * (mm / (SQRT(vv) / a4 + e)); }
    #define FASTNN_ADAM(T, NAME, SQRT) \
    FASTNN_CLONES static void NAME(T* restrict p, const T* restrict g, T* restrict m, T* restrict v, \
            T* restrict vmax, Py_ssize_t n, T lr, T a0, T a1, T a2, T a3, T a4, T e, \
            int amsgrad, int decoupled) { \
        Py_ssize_t i; \
        if (decoupled && amsgrad) { FASTNN_ADAM_LOOP(p[i] = p[i] * a3, vv = vmax[i] > vv ? vmax[i] : vv; vmax[i] = vv) } \
        else if (decoupled) { FASTNN_ADAM_LOOP(p[i] = p[i] * a3, (void)0) } \
        else if (amsgrad) { FASTNN_ADAM_LOOP(gi = gi + a3 * p[i], vv = vmax[i] > vv ? vmax[i] : vv; vmax[i] = vv) } \
        else { FASTNN_ADAM_LOOP(gi = gi + a3 * p[i], (void)0) } }
    #define FASTNN_ADAGRAD(T, NAME, SQRT) \
    FASTNN_CLONES static void NAME(T* restrict p, const T* restrict g, T* restrict s, Py_ssize_t n, \
            T lr, T wd, T e) { \
        Py_ssize_t i; \
        for (i = 0; i < n; i++) { T gi = g[i] + wd * p[i]; T vv = s[i] + gi * gi; s[i] = vv; \
            p[i] = p[i] - lr * (gi / (SQRT(vv) + e)); } }
    /* SGD: mode 0 plain, 1 first momentum step (buffer = gradient), 2 momentum; nesterov adds
       momentum * buffer to the gradient. */
    #define FASTNN_SGD(T, NAME) \
    FASTNN_CLONES static void NAME(T* restrict p, const T* restrict g, T* restrict b, Py_ssize_t n, \
            T lr, T mom, T damp, T wd, int mode, int nesterov) { \
        Py_ssize_t i; \
        if (mode == 0) { for (i = 0; i < n; i++) p[i] = p[i] - lr * (g[i] + wd * p[i]); } \
        else if (mode == 1 && nesterov) { for (i = 0; i < n; i++) { T gi = g[i] + wd * p[i]; b[i] = gi; \
            p[i] = p[i] - lr * (gi + mom * gi); } } \
        else if (mode == 1) { for (i = 0; i < n; i++) { T gi = g[i] + wd * p[i]; b[i] = gi; \
            p[i] = p[i] - lr * gi; } } \
        else if (nesterov) { for (i = 0; i < n; i++) { T gi = g[i] + wd * p[i]; T bb = b[i] * mom + damp * gi; \
            b[i] = bb; p[i] = p[i] - lr * (gi + mom * bb); } } \
        else { for (i = 0; i < n; i++) { T bb = b[i] * mom + damp * (g[i] + wd * p[i]); b[i] = bb; \
            p[i] = p[i] - lr * bb; } } }
    FASTNN_SGD(float, fastnn_sgd_f)
    FASTNN_SGD(double, fastnn_sgd_d)
    /* RMSprop: s square average, b momentum buffer, a mean gradient (centered). */
    #define FASTNN_RMS_LOOP(DEN, STEP) \
        for (i = 0; i < n; i++) { \
            T gi = g[i] + wd * p[i]; T vv = s[i] * al + om * gi * gi; s[i] = vv; \
            T mm = 0; (void)mm; DEN; STEP; }
    #define FASTNN_RMSPROP(T, NAME, SQRT) \
    FASTNN_CLONES static void NAME(T* restrict p, const T* restrict g, T* restrict s, T* restrict b, \
            T* restrict a, Py_ssize_t n, T lr, T al, T om, T mom, T wd, T e, int centered) { \
        Py_ssize_t i; \
        if (centered && mom > 0) { FASTNN_RMS_LOOP(mm = a[i] + om * (gi - a[i]); a[i] = mm; \
            T avg = SQRT(vv - mm * mm) + e, T bb = b[i] * mom + gi / avg; b[i] = bb; p[i] = p[i] - lr * bb) } \
        else if (centered) { FASTNN_RMS_LOOP(mm = a[i] + om * (gi - a[i]); a[i] = mm; \
            T avg = SQRT(vv - mm * mm) + e, p[i] = p[i] - lr * (gi / avg)) } \
        else if (mom > 0) { FASTNN_RMS_LOOP(T avg = SQRT(vv) + e, \
            T bb = b[i] * mom + gi / avg; b[i] = bb; p[i] = p[i] - lr * bb) } \
        else { FASTNN_RMS_LOOP(T avg = SQRT(vv) + e, p[i] = p[i] - lr * (gi / avg)) } }
    #define T float
    #define SQRT sqrtf
    FASTNN_RMSPROP(float, fastnn_rmsprop_f, sqrtf)
    FASTNN_ADAM(float, fastnn_adam_f, sqrtf)
    FASTNN_ADAGRAD(float, fastnn_adagrad_f, sqrtf)
    #undef T
    #undef SQRT
    #define T double
    #define SQRT sqrt
    FASTNN_RMSPROP(double, fastnn_rmsprop_d, sqrt)
    FASTNN_ADAM(double, fastnn_adam_d, sqrt)
    FASTNN_ADAGRAD(double, fastnn_adagrad_d, sqrt)
    #undef T
    #undef SQRT
    """
    void fastnn_adam_f(float* p, const float* g, float* m, float* v, float* vmax, Py_ssize_t n,
                       float lr, float a0, float a1, float a2, float a3, float a4, float e,
                       int amsgrad, int decoupled) nogil
    void fastnn_adam_d(double* p, const double* g, double* m, double* v, double* vmax, Py_ssize_t n,
                       double lr, double a0, double a1, double a2, double a3, double a4, double e,
                       int amsgrad, int decoupled) nogil
    void fastnn_sgd_f(float* p, const float* g, float* b, Py_ssize_t n, float lr, float mom, float damp,
                      float wd, int mode, int nesterov) nogil
    void fastnn_sgd_d(double* p, const double* g, double* b, Py_ssize_t n, double lr, double mom,
                      double damp, double wd, int mode, int nesterov) nogil
    void fastnn_rmsprop_f(float* p, const float* g, float* s, float* b, float* a, Py_ssize_t n,
                          float lr, float al, float om, float mom, float wd, float e, int centered) nogil
    void fastnn_rmsprop_d(double* p, const double* g, double* s, double* b, double* a, Py_ssize_t n,
                          double lr, double al, double om, double mom, double wd, double e,
                          int centered) nogil
    void fastnn_adagrad_f(float* p, const float* g, float* s, Py_ssize_t n, float lr, float wd, float e) nogil
    void fastnn_adagrad_d(double* p, const double* g, double* s, Py_ssize_t n, double lr, double wd,
                          double e) nogil


cdef inline void red_sum(floating* x, Py_ssize_t n, double* out) noexcept nogil:
    if floating is float:
        fastnn_sum_f(x, x, n, out)
    else:
        fastnn_sum_d(x, x, n, out)


cdef inline void red_sumsq(floating* x, Py_ssize_t n, double* out) noexcept nogil:
    if floating is float:
        fastnn_sumsq_f(x, x, n, out)
    else:
        fastnn_sumsq_d(x, x, n, out)


cdef inline void red_sumabs(floating* x, Py_ssize_t n, double* out) noexcept nogil:
    if floating is float:
        fastnn_sumabs_f(x, x, n, out)
    else:
        fastnn_sumabs_d(x, x, n, out)


cdef inline double red_sqdev(floating* x, Py_ssize_t n, double c) noexcept nogil:
    if floating is float:
        return fastnn_sqdev_f(x, x, n, c)
    else:
        return fastnn_sqdev_d(x, x, n, c)


cdef inline double red_dotdev(floating* x, floating* y, Py_ssize_t n, double c) noexcept nogil:
    """sum y (x - c)"""
    if floating is float:
        return fastnn_dotdev_f(x, y, n, c)
    else:
        return fastnn_dotdev_d(x, y, n, c)


cdef inline void red_sumdiffsq(floating* x, floating* y, Py_ssize_t n, double* out) noexcept nogil:
    if floating is float:
        fastnn_sumdiffsq_f(x, y, n, out)
    else:
        fastnn_sumdiffsq_d(x, y, n, out)


# ---------------------------------------------------------------- BLAS
cdef inline void gemm(char ta, char tb, int m, int n, int k, floating alpha,
                      floating* a, int lda, floating* b, int ldb, floating beta,
                      floating* c, int ldc) noexcept nogil:
    """Column-major C = alpha op(A) op(B) + beta C (row-major callers swap roles)."""
    if floating is float:
        sgemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc)


# ---------------------------------------------------------------- RNG
cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    # splitmix64 finaliser: a bijective avalanche mix of a 64-bit counter.
    z = (z ^ (z >> 30)) * <uint64_t>0xbf58476d1ce4e5b9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94d049bb133111ebULL
    return z ^ (z >> 31)


cdef inline double uniform01(uint64_t key, uint64_t a, uint64_t b) noexcept nogil:
    """Uniform in [0, 1) from a counter (key, a, b): 53 random bits."""
    cdef uint64_t h = mix64(key ^ mix64(a * <uint64_t>0x9e3779b97f4a7c15ULL + b))
    return (h >> 11) * (1.0 / 9007199254740992.0)


cdef inline uint64_t dropout_key(uint64_t seed, uint64_t epoch, uint64_t step, uint64_t layer) noexcept nogil:
    return mix64(mix64(mix64(seed + <uint64_t>0x632be59bd9b4e019ULL) ^ epoch) ^ (step * <uint64_t>1024 + layer))


def uniform_stream(uint64_t seed, uint64_t epoch, uint64_t step, uint64_t layer,
                   Py_ssize_t n_rows, Py_ssize_t n_cols, uint64_t row0=0):
    """The uniforms a dropout mask draws from (for tests and documentation)."""
    cdef uint64_t key = dropout_key(seed, epoch, step, layer)
    out = np.empty((n_rows, n_cols))
    cdef double[:, ::1] o = out
    cdef Py_ssize_t i, j
    for i in range(n_rows):
        for j in range(n_cols):
            o[i, j] = uniform01(key, row0 + i, j)
    return out


# ---------------------------------------------------------------- math helpers
cdef inline floating f_exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating f_log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating f_log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline floating f_tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating f_sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating sigmoid(floating z) noexcept nogil:
    # Two branches so exp never overflows.
    cdef floating e
    if z >= 0:
        e = f_exp(-z)
        return 1 / (1 + e)
    e = f_exp(z)
    return e / (1 + e)


cdef inline floating softplus_neg_abs(floating x) noexcept nogil:
    """log(1 + exp(-|x|)), finite for every finite x."""
    return f_log1p(f_exp(-fabs(x)))
