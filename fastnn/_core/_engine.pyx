# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastnn's compiled training core.

Design
------
A network is a *plan*: a C array of ``LayerRec`` (one per Dense layer, with the
activation and dropout that follow it), offsets into one flat parameter buffer
``P`` (weights row-major ``(n_out, n_in)`` as in PyTorch, then bias), and offsets
into one work buffer holding, for the current mini-batch of ``B`` examples, each
layer's input rows, activations ``A``, post-dropout activations ``AD`` and deltas
``D`` (all row-major, one row per example).

One training step is three parallel phases, each a ``prange`` whose work units
have sizes derived from the layer shapes and never from the thread count, so the
result is bit-for-bit the same on any number of threads:

1. *Examples*: the batch is cut into chunks of ``chunk`` examples. Per chunk,
   the rows are gathered from ``X`` through the shuffle permutation, pushed
   forward (GEMM, then bias + activation + dropout fused in one pass), the loss
   and its gradient taken from the logits, and the deltas pushed back
   (GEMM, then dropout mask and activation derivative fused). The first layer's
   input gradient is never formed.
2. *Gradient average*: dW = D^T A_prev and db = sum_i D_i over the batch (the
   1/B of the mean is already folded into the output delta). Work is split into
   tiles of whole rows of dW (output neurons) over all layers; each tile is owned
   by one thread and summed over the whole batch in a fixed order: no atomics, no
   reductions, no per-thread gradient copies.
3. *Update*: the optimizer rule, applied by the tile that owns the rows, right
   after their gradient (still in cache) -- a third pass over the buffer saved.
   Global-norm clipping needs every gradient first, so then a norm pass over
   fixed-size blocks comes between the gradient tiles and their updates.

Chunk and tile sizes are derived from the layer shapes and the batch size (see
fastnn/model.py), never from the thread count. Where this departs from DESIGN.md
(whole-row tiles instead of separate row and column blocks; the update fused into
the tiles instead of a pass over fixed blocks), measurements on the benchmark grid
chose it.

GEMMs are single-threaded BLAS calls (``scipy.linalg.cython_blas``) made from
inside the parallel loops; the Python side holds BLAS to one thread.
Random numbers (dropout masks) come from a counter-based hash keyed by
(seed, epoch, step, example, unit), so they too are independent of scheduling.
"""

from cython.parallel cimport prange, parallel
from libc.math cimport exp, expf, log, logf, log1p, log1pf, tanh, tanhf, sqrt, sqrtf, fabs, isfinite, pow
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint64_t, int64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm

import numpy as np

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
    /* Reductions for the diagnostics, vectorized by ``omp simd``: their order depends on the
       build's vector width, never on the thread count. */
    #define FASTNN_RED(T, NAME, EXPR) \
    static void NAME(const T* x, const T* y, Py_ssize_t n, double* out) { \
        double s = 0; Py_ssize_t i; \
        _Pragma("omp simd reduction(+:s)") \
        for (i = 0; i < n; i++) { double v = (double)x[i], w = (double)y[i]; (void)w; s += EXPR; } \
        *out += s; }
    FASTNN_RED(float, fastnn_sum_f, v)
    FASTNN_RED(double, fastnn_sum_d, v)
    FASTNN_RED(float, fastnn_sumsq_f, v * v)
    FASTNN_RED(double, fastnn_sumsq_d, v * v)
    FASTNN_RED(float, fastnn_sumabs_f, (v < 0 ? -v : v))
    FASTNN_RED(double, fastnn_sumabs_d, (v < 0 ? -v : v))
    FASTNN_RED(float, fastnn_sumdiffsq_f, (v - w) * (v - w))
    FASTNN_RED(double, fastnn_sumdiffsq_d, (v - w) * (v - w))
    """
    void fastnn_sum_f(const float* x, const float* y, Py_ssize_t n, double* out) nogil
    void fastnn_sum_d(const double* x, const double* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumsq_f(const float* x, const float* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumsq_d(const double* x, const double* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumabs_f(const float* x, const float* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumabs_d(const double* x, const double* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumdiffsq_f(const float* x, const float* y, Py_ssize_t n, double* out) nogil
    void fastnn_sumdiffsq_d(const double* x, const double* y, Py_ssize_t n, double* out) nogil


cdef extern from *:
    """
    /* The compute-bound update rules (Adam/AdamW, Adagrad) in C, cloned for AVX-512, AVX2 and
       baseline x86-64 and picked at load time (the wheel itself targets baseline x86-64).
       Elementwise IEEE operations only, with contraction off: every clone gives the same bits. */
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
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


cdef inline void red_sumdiffsq(floating* x, floating* y, Py_ssize_t n, double* out) noexcept nogil:
    if floating is float:
        fastnn_sumdiffsq_f(x, y, n, out)
    else:
        fastnn_sumdiffsq_d(x, y, n, out)


OPENMP = bool(FASTNN_OPENMP)


def omp_max_threads():
    """OpenMP's own default team size (1 in a serial build)."""
    return fastnn_omp_max_threads()


# ---------------------------------------------------------------- codes
# Activation codes (shared with fastnn/layers.py).
cdef enum:
    ACT_IDENTITY = 0
    ACT_SIGMOID = 1
    ACT_TANH = 2
    ACT_RELU = 3
    ACT_LEAKY = 4
    ACT_SOFTMAX = 5

cdef enum:
    DROP_NONE = 0
    DROP_INVERTED = 1
    DROP_CLASSIC = 2

# Loss codes (shared with fastnn/losses.py).
cdef enum:
    LOSS_MSE = 0
    LOSS_BCE = 1
    LOSS_CE = 2          # integer labels
    LOSS_CE_PROB = 3     # probability rows
    LOSS_NLL = 4
    LOSS_KLDIV = 5

# Optimizer codes (shared with fastnn/optim.py).
cdef enum:
    OPT_NONE = 0
    OPT_SGD = 1
    OPT_ADAM = 2
    OPT_ADAGRAD = 3
    OPT_RMSPROP = 4

PLAN_FIELDS = 8          # n_in, n_out, w_off, b_off, act, drop_mode, (unused) x2
PLANF_FIELDS = 2         # act_param, drop_p
cdef enum:
    UPDATE_BLOCK = 16384     # optimizer work unit (elements); fixed, so updates are thread-count invariant


cdef struct LayerRec:
    Py_ssize_t n_in, n_out, w_off, b_off
    int act, drop
    double act_param, drop_p
    # work-buffer offsets (elements), each a block of B rows
    Py_ssize_t in_off, a_off, ad_off, d_off
    Py_ssize_t out_off       # what the next layer reads: ad_off with dropout, else a_off
    Py_ssize_t unit_off      # first unit of this layer among all layers' units (diagnostics)


cdef struct GradTile:
    int layer
    Py_ssize_t r0, nr, c0, nc


cdef struct Net:
    LayerRec* L
    int n_layers
    Py_ssize_t B              # rows in the work buffer
    Py_ssize_t chunk
    GradTile* tiles
    Py_ssize_t n_tiles


cdef struct LossRec:
    int code
    Py_ssize_t n_classes
    int has_pos_weight


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


# ---------------------------------------------------------------- layer kernels
cdef void act_forward_rows(floating* Z, Py_ssize_t c, Py_ssize_t n, floating* bias,
                           int act, double slope) noexcept nogil:
    """In place on c rows of width n: Z <- f(Z + bias).

    Elementwise activations store unconditionally (``z = z < 0 ? 0 : z``), so the loops
    vectorize; z < 0 rather than "not z > 0" lets NaN through, as PyTorch does."""
    cdef Py_ssize_t i, j, cn = c * n
    cdef floating* z
    cdef floating m, s, v, fs = <floating>slope
    if bias != NULL:
        for i in range(c):
            z = Z + i * n
            for j in range(n):
                z[j] = z[j] + bias[j]
    if act == ACT_RELU:
        for i in range(cn):
            Z[i] = 0 if Z[i] < 0 else Z[i]
    elif act == ACT_LEAKY:
        for i in range(cn):
            Z[i] = Z[i] * fs if Z[i] < 0 else Z[i]
    elif act == ACT_SIGMOID:
        for i in range(cn):
            Z[i] = sigmoid(Z[i])
    elif act == ACT_TANH:
        for i in range(cn):
            Z[i] = f_tanh(Z[i])
    elif act == ACT_SOFTMAX:
        for i in range(c):
            z = Z + i * n
            m = z[0]
            for j in range(1, n):
                if z[j] > m:
                    m = z[j]
            s = 0
            for j in range(n):
                v = f_exp(z[j] - m)
                z[j] = v
                s = s + v
            for j in range(n):
                z[j] = z[j] / s


cdef void act_backward_rows(floating* G, floating* A, Py_ssize_t c, Py_ssize_t n,
                            int act, double slope) noexcept nogil:
    """In place on c rows: G (dL/da) <- dL/dz given the activation output A."""
    cdef Py_ssize_t i, j, cn = c * n
    cdef floating* g
    cdef floating* a
    cdef floating s, fs = <floating>slope
    if act == ACT_RELU:
        for i in range(cn):
            G[i] = G[i] if A[i] > 0 else 0
    elif act == ACT_LEAKY:
        # slope >= 0 is enforced, so a > 0 exactly where z > 0
        for i in range(cn):
            G[i] = G[i] if A[i] > 0 else G[i] * fs
    elif act == ACT_SIGMOID:
        for i in range(cn):
            G[i] = G[i] * A[i] * (1 - A[i])
    elif act == ACT_TANH:
        for i in range(cn):
            G[i] = G[i] * (1 - A[i] * A[i])
    elif act == ACT_SOFTMAX:
        for i in range(c):
            g = G + i * n
            a = A + i * n
            s = 0
            for j in range(n):
                s = s + g[j] * a[j]
            for j in range(n):
                g[j] = a[j] * (g[j] - s)


cdef void dropout_rows(floating* AD, floating* A, Py_ssize_t c, Py_ssize_t n,
                       int mode, double p, bint training, uint64_t key,
                       Py_ssize_t row0) noexcept nogil:
    """AD <- dropout(A) for c rows whose batch positions start at row0."""
    cdef Py_ssize_t i, j
    cdef floating scale
    if not training:
        scale = <floating>(1.0 - p) if mode == DROP_CLASSIC else 1
        for i in range(c * n):
            AD[i] = A[i] * scale
        return
    scale = <floating>(1.0 / (1.0 - p)) if mode == DROP_INVERTED else 1
    for i in range(c):
        for j in range(n):
            if uniform01(key, row0 + i, j) < p:
                AD[i * n + j] = 0
            else:
                AD[i * n + j] = A[i * n + j] * scale


cdef void dropout_backward_rows(floating* G, Py_ssize_t c, Py_ssize_t n, int mode,
                                double p, uint64_t key, Py_ssize_t row0) noexcept nogil:
    """In place: G (dL/d dropout-output) <- dL/d dropout-input, mask regenerated."""
    cdef Py_ssize_t i, j
    cdef floating scale = <floating>(1.0 / (1.0 - p)) if mode == DROP_INVERTED else 1
    for i in range(c):
        for j in range(n):
            if uniform01(key, row0 + i, j) < p:
                G[i * n + j] = 0
            else:
                G[i * n + j] = G[i * n + j] * scale


# ---------------------------------------------------------------- loss kernels
cdef double loss_rows(LossRec* lr, floating* O, floating* G, Py_ssize_t c,
                      Py_ssize_t* idx, int64_t* yi, floating* yf, floating* sw,
                      floating* pos_weight, double inv_norm, double* ex_loss,
                      int64_t* pred) noexcept nogil:
    """Per-example loss of c output rows O into ex_loss (unweighted), and, when G is
    not NULL, G <- w_i * inv_norm * dloss_i/dO (the delta fed to backprop).
    When pred is not NULL, pred[example] <- the predicted class (argmax, or o > 0
    for a single logit).

    idx maps each row to its example in yi / yf / sw."""
    cdef Py_ssize_t i, j, C = lr.n_classes, e
    cdef floating* o
    cdef floating* g
    cdef floating* t
    cdef floating m, s, v, sc, st, lw, x, tt
    cdef double l, lse
    cdef int64_t lab
    for i in range(c):
        e = idx[i]
        o = O + i * C
        g = (G + i * C) if G != NULL else NULL
        sc = <floating>inv_norm
        if sw != NULL:
            sc = <floating>(sw[e] * inv_norm)
        l = 0
        if lr.code == LOSS_MSE:
            t = yf + e * C
            for j in range(C):
                v = o[j] - t[j]
                l += <double>v * v
                if g != NULL:
                    g[j] = 2 * v * sc
        elif lr.code == LOSS_BCE:
            t = yf + e * C
            for j in range(C):
                x = o[j]
                tt = t[j]
                lw = 1
                if lr.has_pos_weight:
                    lw = 1 + (pos_weight[j] - 1) * tt
                # (1 - t) x + lw (log1p(exp(-|x|)) + max(-x, 0))
                v = softplus_neg_abs(x) + (-x if x < 0 else 0)
                l += (1 - tt) * x + lw * v
                if g != NULL:
                    g[j] = ((1 - tt) - lw * sigmoid(-x)) * sc
        elif lr.code == LOSS_CE or lr.code == LOSS_CE_PROB:
            m = o[0]
            for j in range(1, C):
                if o[j] > m:
                    m = o[j]
            s = 0
            for j in range(C):
                s = s + f_exp(o[j] - m)
            lse = m + log(<double>s)
            if lr.code == LOSS_CE:
                lab = yi[e]
                l = lse - o[lab]
                if g != NULL:
                    for j in range(C):
                        g[j] = f_exp(o[j] - m) / s * sc
                    g[lab] = g[lab] - sc
            else:
                t = yf + e * C
                st = 0
                for j in range(C):
                    st = st + t[j]
                    l += t[j] * (lse - o[j])
                if g != NULL:
                    for j in range(C):
                        g[j] = (f_exp(o[j] - m) / s * st - t[j]) * sc
        elif lr.code == LOSS_NLL:
            lab = yi[e]
            l = -o[lab]
            if g != NULL:
                for j in range(C):
                    g[j] = 0
                g[lab] = -sc
        elif lr.code == LOSS_KLDIV:
            t = yf + e * C
            for j in range(C):
                if t[j] > 0:
                    l += t[j] * (log(<double>t[j]) - o[j])
                if g != NULL:
                    g[j] = -t[j] * sc
        ex_loss[i] = l
        if pred != NULL:
            if C == 1:
                pred[e] = 1 if o[0] > 0 else 0
            else:
                lab = 0
                for j in range(1, C):
                    if o[j] > o[lab]:
                        lab = j
                pred[e] = lab
    return 0


# ---------------------------------------------------------------- the chunk task
cdef struct Diag:
    # Accumulators over an epoch, each owned by a fixed work unit (a chunk slot or a tile),
    # so their sums are the same on any thread count.
    double* act_acc          # [slot][layer][3]: sum a, sum a^2, saturated units
    unsigned char* active    # [slot][unit]: the unit was > 0 on some example
    Py_ssize_t n_units
    double sat_sigmoid       # sigmoid(threshold): a beyond [1 - s, s] means |z| > threshold
    double sat_tanh          # tanh(threshold)
    double* tile_acc         # [tile][4]: sum |g|, sum g^2, sum (dW)^2, sum W^2 (before the update)
    void* scratch            # [tile][max n_in] old parameter rows
    Py_ssize_t scratch_stride


cdef void diag_activations(Diag* dg, LayerRec* L, int l, int n_layers, floating* a, Py_ssize_t c,
                           Py_ssize_t slot, bint full) noexcept nogil:
    """Dead-unit flags on every step; sums, squares and saturation counts when ``full``."""
    cdef double* acc = dg.act_acc + (slot * n_layers + l) * 3
    cdef unsigned char* act = dg.active + slot * dg.n_units + L.unit_off
    cdef Py_ssize_t i, j, n = L.n_out, cn = c * n
    cdef int64_t sat = 0
    cdef floating hi = <floating>dg.sat_sigmoid, lo = <floating>(1.0 - dg.sat_sigmoid)
    cdef floating th = <floating>dg.sat_tanh
    cdef floating* row
    if L.act == ACT_RELU or L.act == ACT_LEAKY:
        for i in range(c):
            row = a + i * n
            for j in range(n):
                act[j] = act[j] | (row[j] > 0)
    if not full:
        return
    red_sum(a, cn, acc)
    red_sumsq(a, cn, acc + 1)
    if L.act == ACT_SIGMOID:
        for i in range(cn):
            sat += (a[i] > hi) | (a[i] < lo)
    elif L.act == ACT_TANH:
        for i in range(cn):
            sat += (a[i] > th) | (a[i] < -th)
    acc[2] += sat


cdef void chunk_forward(Net* net, floating* P, floating* W, Py_ssize_t r0, Py_ssize_t c,
                        bint training, uint64_t seed, uint64_t epoch, uint64_t step,
                        Py_ssize_t pos0, Diag* dg=NULL, Py_ssize_t slot=0, bint full=False) noexcept nogil:
    """Forward rows [r0, r0+c) of the work buffer (inputs already gathered)."""
    cdef int l
    cdef LayerRec* L
    cdef floating* inp
    cdef floating* a
    for l in range(net.n_layers):
        L = &net.L[l]
        inp = W + L.in_off + r0 * L.n_in
        a = W + L.a_off + r0 * L.n_out
        gemm(c'T', c'N', <int>L.n_out, <int>c, <int>L.n_in, <floating>1, P + L.w_off, <int>L.n_in,
             inp, <int>L.n_in, <floating>0, a, <int>L.n_out)
        act_forward_rows(a, c, L.n_out, (P + L.b_off) if L.b_off >= 0 else <floating*>NULL,
                         L.act, L.act_param)
        if dg != NULL:
            diag_activations(dg, L, l, net.n_layers, a, c, slot, full)
        if L.drop != DROP_NONE:
            dropout_rows(W + L.ad_off + r0 * L.n_out, a, c, L.n_out, L.drop, L.drop_p, training,
                         dropout_key(seed, epoch, step, l), pos0 + r0)


cdef void chunk_backward(Net* net, floating* P, floating* W, Py_ssize_t r0, Py_ssize_t c,
                         uint64_t seed, uint64_t epoch, uint64_t step, Py_ssize_t pos0) noexcept nogil:
    """Deltas for rows [r0, r0+c); the last layer's D holds dL/d(output) on entry."""
    cdef int l
    cdef LayerRec* L
    cdef LayerRec* Lp
    for l in range(net.n_layers - 1, -1, -1):
        L = &net.L[l]
        if L.drop != DROP_NONE:
            dropout_backward_rows(W + L.d_off + r0 * L.n_out, c, L.n_out, L.drop, L.drop_p,
                                  dropout_key(seed, epoch, step, l), pos0 + r0)
        act_backward_rows(W + L.d_off + r0 * L.n_out, W + L.a_off + r0 * L.n_out, c, L.n_out,
                          L.act, L.act_param)
        if l == 0:
            break
        Lp = &net.L[l - 1]
        gemm(c'N', c'N', <int>L.n_in, <int>c, <int>L.n_out, <floating>1, P + L.w_off, <int>L.n_in,
             W + L.d_off + r0 * L.n_out, <int>L.n_out, <floating>0,
             W + Lp.d_off + r0 * L.n_in, <int>L.n_in)


# ---------------------------------------------------------------- optimizer kernel
cdef struct OptStep:
    # One step's constants, formed in double as torch forms its Python scalars;
    # the kernels round them to the tensor dtype.
    int code
    double lr, c0, c1, c2, c3, c4
    bint f0, f1


cdef OptStep opt_step_consts(int code, const double* hp, double lr, int64_t t) noexcept nogil:
    """Constants of update number t (1-based) for the rule ``code`` and hyper-parameters hp:

      SGD:     hp = momentum, dampening, nesterov, weight_decay
      Adam:    hp = beta1, beta2, eps, weight_decay, amsgrad, decoupled (AdamW)
      Adagrad: hp = lr_decay, eps, weight_decay, initial_accumulator_value
      RMSprop: hp = alpha, eps, momentum, centered, weight_decay
    """
    cdef OptStep o
    o.code = code
    o.lr = lr
    o.c0 = o.c1 = o.c2 = o.c3 = o.c4 = 0
    o.f0 = o.f1 = False
    if code == OPT_SGD:
        o.c0 = hp[0]                 # momentum
        o.c1 = 1.0 - hp[1]           # 1 - dampening
        o.c2 = hp[3]                 # weight decay
        o.f0 = hp[2] != 0            # nesterov
        o.f1 = t == 1                # first step: buffer = gradient
    elif code == OPT_ADAM:
        o.c0 = 1.0 - hp[0]                              # lerp weight of the first moment
        o.c1 = hp[1]                                    # beta2
        o.c2 = 1.0 - hp[1]
        o.c3 = (1.0 - lr * hp[3]) if hp[5] != 0 else hp[3]   # AdamW decay factor or L2 weight decay
        o.c4 = sqrt(1.0 - pow(hp[1], <double>t))        # sqrt of bias correction 2
        o.lr = lr / (1.0 - pow(hp[0], <double>t))       # step size
        o.f0 = hp[4] != 0                               # amsgrad
        o.f1 = hp[5] != 0                               # decoupled
    elif code == OPT_ADAGRAD:
        o.lr = lr / (1.0 + (t - 1) * hp[0])
        o.c1 = hp[1]                 # eps
        o.c2 = hp[2]                 # weight decay
    elif code == OPT_RMSPROP:
        o.c0 = hp[0]                 # alpha
        o.c1 = 1.0 - hp[0]
        o.c2 = hp[2]                 # momentum
        o.c3 = hp[4]                 # weight decay
        o.f0 = hp[3] != 0            # centered
    return o


cdef void update_span(OptStep* o, double eps, floating* p, floating* g, floating* s0,
                      floating* s1, floating* s2, Py_ssize_t n) noexcept nogil:
    """Apply one step to n contiguous parameters (state pointers mirror p).

    Every variant is its own branch-free loop so the compiler vectorizes it; weight decay
    is added as g + wd * p even when wd = 0 (the same value for finite p)."""
    cdef Py_ssize_t i
    cdef floating gi, b, lr = <floating>o.lr, a0 = <floating>o.c0, a1 = <floating>o.c1
    cdef floating a2 = <floating>o.c2, a3 = <floating>o.c3, a4 = <floating>o.c4, e = <floating>eps
    cdef floating m, v
    cdef int mode
    if o.code == OPT_SGD:
        # a0 = momentum, a1 = 1 - dampening, a2 = weight decay; f0 nesterov, f1 first step
        mode = 0 if a0 == 0 else (1 if o.f1 else 2)
        if floating is float:
            fastnn_sgd_f(p, g, s0, n, lr, a0, a1, a2, mode, o.f0)
        else:
            fastnn_sgd_d(p, g, s0, n, lr, a0, a1, a2, mode, o.f0)
    elif o.code == OPT_ADAM:
        # a0 = 1 - beta1, a1 = beta2, a2 = 1 - beta2, a3 = AdamW factor or L2 decay,
        # a4 = sqrt(1 - beta2^t), lr = lr / (1 - beta1^t); compute-bound, so in cloned C
        if floating is float:
            fastnn_adam_f(p, g, s0, s1, s2, n, lr, a0, a1, a2, a3, a4, e, o.f0, o.f1)
        else:
            fastnn_adam_d(p, g, s0, s1, s2, n, lr, a0, a1, a2, a3, a4, e, o.f0, o.f1)
    elif o.code == OPT_ADAGRAD:
        if floating is float:
            fastnn_adagrad_f(p, g, s0, n, lr, a2, e)
        else:
            fastnn_adagrad_d(p, g, s0, n, lr, a2, e)
    elif o.code == OPT_RMSPROP:
        # a0 = alpha, a1 = 1 - alpha, a2 = momentum, a3 = weight decay; s1 momentum, s2 mean grad
        if floating is float:
            fastnn_rmsprop_f(p, g, s0, s1, s2, n, lr, a0, a1, a2, a3, e, o.f0)
        else:
            fastnn_rmsprop_d(p, g, s0, s1, s2, n, lr, a0, a1, a2, a3, e, o.f0)


cdef inline double opt_eps(int code, const double* hp) noexcept nogil:
    if code == OPT_ADAM or code == OPT_ADAGRAD or code == OPT_RMSPROP:
        return hp[2] if code == OPT_ADAM else hp[1]
    return 0


cdef struct OptRun:
    OptStep st
    double eps
    Py_ssize_t n_par
    void* s0
    void* s1
    void* s2


cdef inline void update_at(OptRun* o, floating* P, floating* G, Py_ssize_t off, Py_ssize_t n) noexcept nogil:
    """Update parameters [off, off + n) of the flat buffer."""
    update_span(&o.st, o.eps, P + off, G + off,
                (<floating*>o.s0 + off) if o.s0 != NULL else <floating*>NULL,
                (<floating*>o.s1 + off) if o.s1 != NULL else <floating*>NULL,
                (<floating*>o.s2 + off) if o.s2 != NULL else <floating*>NULL, n)


cdef struct GradOpts:
    double l2            # > 0: the loss has l2 * ||W||^2, so dW += 2 l2 W
    bint l2_bias         # ... and the biases too
    double clip_value    # > 0: clamp every gradient entry to [-clip_value, clip_value]


cdef inline void grad_post(floating* g, floating* p, Py_ssize_t n, double l2, double clip) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating c2 = <floating>(2.0 * l2), cv = <floating>clip
    if l2 > 0:
        for i in range(n):
            g[i] = g[i] + c2 * p[i]
    if clip > 0:
        for i in range(n):
            if g[i] > cv:
                g[i] = cv
            elif g[i] < -cv:
                g[i] = -cv


cdef inline double sum_sq(floating* g, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double acc = 0
    for i in range(n):
        acc += <double>g[i] * g[i]
    return acc


cdef inline void scale_span(floating* g, Py_ssize_t n, double coef) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating c = <floating>coef
    for i in range(n):
        g[i] = g[i] * c


def clip_grad_norm(floating[::1] grads, double max_norm, int n_threads):
    """Rescale grads in place to global L2 norm <= max_norm; return the norm before.

    The norm is a sum of fixed-size block sums taken in order, so it is the same on any
    number of threads."""
    cdef Py_ssize_t n = grads.shape[0], blk, p0, pn
    cdef Py_ssize_t n_blocks = (n + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef double[::1] part = np.zeros(max(n_blocks, 1))
    cdef double sq = 0, norm, coef
    if n == 0:
        return 0.0
    with nogil:
        for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
            p0 = blk * UPDATE_BLOCK
            pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n else n - p0
            part[blk] = sum_sq(&grads[p0], pn)
        for blk in range(n_blocks):
            sq += part[blk]
        norm = sqrt(sq)
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
                p0 = blk * UPDATE_BLOCK
                pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n else n - p0
                scale_span(&grads[p0], pn, coef)
    return norm


cdef void grad_tile(Net* net, GradTile* T, floating* W, floating* P, floating* G, Py_ssize_t B,
                    OptRun* opt, GradOpts* go, Diag* dg, Py_ssize_t ti) noexcept nogil:
    """dW[rows, cols] = D[:, rows]^T In[:, cols]; db[rows] = sum_i D[i, rows] (fixed order),
    then the L2 term and value clipping.

    With ``opt`` the tile's parameters are updated at once, while their gradient is in cache."""
    cdef LayerRec* L = &net.L[T.layer]
    cdef floating* D = W + L.d_off
    cdef floating* db
    cdef Py_ssize_t i, j
    gemm(c'N', c'T', <int>T.nc, <int>T.nr, <int>B, <floating>1, W + L.in_off + T.c0, <int>L.n_in,
         D + T.r0, <int>L.n_out, <floating>0, G + L.w_off + T.r0 * L.n_in + T.c0, <int>L.n_in)
    if T.c0 == 0 and L.b_off >= 0:
        db = G + L.b_off + T.r0
        for j in range(T.nr):
            db[j] = 0
        for i in range(B):
            for j in range(T.nr):
                db[j] = db[j] + D[i * L.n_out + T.r0 + j]
    if go.l2 > 0 or go.clip_value > 0:
        for i in range(T.nr):
            j = L.w_off + (T.r0 + i) * L.n_in + T.c0
            grad_post(G + j, P + j, T.nc, go.l2, go.clip_value)
        if T.c0 == 0 and L.b_off >= 0:
            grad_post(G + L.b_off + T.r0, P + L.b_off + T.r0, T.nr,
                      go.l2 if go.l2_bias else 0.0, go.clip_value)
    if opt != NULL:
        tile_update(net, T, P, G, opt, 1.0, dg, ti)


cdef void tile_update(Net* net, GradTile* T, floating* P, floating* G, OptRun* opt, double coef,
                      Diag* dg, Py_ssize_t ti) noexcept nogil:
    """Scale the tile's gradient by coef (< 1: clipping) and apply the optimizer to its
    parameters; with diagnostics, accumulate |g|, g^2, the update's and the weights' squares."""
    cdef LayerRec* L = &net.L[T.layer]
    cdef Py_ssize_t i, j, off, n
    cdef floating* old = NULL
    cdef double* acc = NULL
    cdef double sa = 0, s2 = 0, du = 0, w2 = 0, d
    if dg != NULL:
        acc = dg.tile_acc + ti * 4
        old = <floating*>dg.scratch + ti * dg.scratch_stride
    for i in range(T.nr + 1):
        if i < T.nr:
            off = L.w_off + (T.r0 + i) * L.n_in + T.c0
            n = T.nc
        elif T.c0 == 0 and L.b_off >= 0:
            off = L.b_off + T.r0
            n = T.nr
        else:
            break
        if coef < 1.0:
            scale_span(G + off, n, coef)
        if dg != NULL:
            memcpy(old, P + off, n * sizeof(floating))
            red_sumabs(G + off, n, &sa)
            red_sumsq(G + off, n, &s2)
        update_at(opt, P, G, off, n)
        if dg != NULL and i < T.nr:          # the update-to-weight ratio is over weights
            red_sumdiffsq(P + off, old, n, &du)
            red_sumsq(old, n, &w2)
    if dg != NULL:
        acc[0] += sa
        acc[1] += s2
        acc[2] += du
        acc[3] += w2


# ---------------------------------------------------------------- plan building
cdef Net* net_new(const int64_t[:, ::1] plan, const double[:, ::1] planf, Py_ssize_t B,
                  Py_ssize_t chunk, const int64_t[:, ::1] tiles) except NULL:
    cdef Net* net = <Net*>malloc(sizeof(Net))
    if net == NULL:
        raise MemoryError()
    cdef int l, n = <int>plan.shape[0]
    cdef Py_ssize_t off = 0, t
    net.n_layers = n
    net.B = B
    net.chunk = chunk
    net.L = <LayerRec*>malloc(n * sizeof(LayerRec))
    net.n_tiles = tiles.shape[0]
    net.tiles = <GradTile*>malloc((net.n_tiles + 1) * sizeof(GradTile))
    if net.L == NULL or net.tiles == NULL:
        net_free(net)
        raise MemoryError()
    # work layout: X rows, then per layer A, [AD], D
    off = B * plan[0, 0]
    for l in range(n):
        net.L[l].n_in = plan[l, 0]
        net.L[l].n_out = plan[l, 1]
        net.L[l].w_off = plan[l, 2]
        net.L[l].b_off = plan[l, 3]
        net.L[l].act = <int>plan[l, 4]
        net.L[l].drop = <int>plan[l, 5]
        net.L[l].act_param = planf[l, 0]
        net.L[l].drop_p = planf[l, 1]
        net.L[l].in_off = 0 if l == 0 else net.L[l - 1].out_off
        net.L[l].a_off = off
        off += B * plan[l, 1]
        if net.L[l].drop != DROP_NONE:
            net.L[l].ad_off = off
            off += B * plan[l, 1]
        else:
            net.L[l].ad_off = net.L[l].a_off
        net.L[l].out_off = net.L[l].ad_off
        net.L[l].d_off = off
        off += B * plan[l, 1]
        net.L[l].unit_off = 0 if l == 0 else net.L[l - 1].unit_off + plan[l - 1, 1]
    for t in range(net.n_tiles):
        net.tiles[t].layer = <int>tiles[t, 0]
        net.tiles[t].r0 = tiles[t, 1]
        net.tiles[t].nr = tiles[t, 2]
        net.tiles[t].c0 = tiles[t, 3]
        net.tiles[t].nc = tiles[t, 4]
    return net


cdef void net_free(Net* net) noexcept:
    if net != NULL:
        free(net.L)
        free(net.tiles)
        free(net)


def work_size(const int64_t[:, ::1] plan, Py_ssize_t B):
    """Elements of work buffer a plan needs for B rows."""
    cdef Py_ssize_t s = plan[0, 0], l
    for l in range(plan.shape[0]):
        s += plan[l, 1] * (3 if plan[l, 5] != DROP_NONE else 2)
    return s * B


cdef inline void gather_rows(floating* dst, const floating* X, Py_ssize_t* idx, Py_ssize_t c,
                             Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(c):
        memcpy(dst + i * n, X + idx[i] * n, n * sizeof(floating))


# ---------------------------------------------------------------- drivers
def run_steps(const int64_t[:, ::1] plan, const double[:, ::1] planf, Py_ssize_t chunk,
              const int64_t[:, ::1] tiles,
              floating[::1] params, floating[::1] grads, floating[:, ::1] state,
              const floating[:, ::1] X, const int64_t[::1] yi, const floating[:, ::1] yf,
              const floating[::1] sw, const floating[::1] pos_weight,
              const Py_ssize_t[::1] order, Py_ssize_t batch_size, Py_ssize_t n_steps,
              int loss_code, Py_ssize_t n_classes, int reduction,
              int opt_code, const double[::1] hp, const double[::1] lrs, int64_t t0,
              uint64_t seed, uint64_t epoch, uint64_t step0, bint training,
              floating[::1] work, double[::1] step_loss, int n_threads,
              double l2=0.0, bint l2_bias=False, double clip_value=0.0, double clip_norm=0.0,
              double[::1] grad_norms=None, int64_t[::1] pred=None, dict diag=None):
    """Run n_steps mini-batch steps over examples X[order] (batch b holds
    order[b*batch_size : (b+1)*batch_size]). Each step: forward, loss, backward,
    mean gradient into ``grads``, and (opt_code != 0) the update of ``params``
    with rate lrs[b] as optimizer step t0 + b + 1.

    reduction: 0 mean over examples, 1 mean over elements, 2 sum.
    l2 adds l2 * ||W||^2 to the loss (weights; biases too with l2_bias) through its
    gradient; clip_value clamps gradient entries; clip_norm rescales the whole gradient
    to at most that global L2 norm (torch.nn.utils.clip_grad_norm_'s rule), and
    grad_norms[s] receives step s's norm (before clipping). pred[example] receives the
    predicted class of every example seen. ``diag`` (arrays made by the caller:
    act_acc, active, tile_acc, scratch, and floats sat_sigmoid, sat_tanh) accumulates
    per-layer statistics; see fastnn/diagnostics.py.
    Returns the number of steps completed; a step whose loss is not finite stops
    the run before its update (its loss is still written to step_loss).
    """
    cdef Py_ssize_t N = order.shape[0]
    cdef Py_ssize_t n_par = params.shape[0]
    cdef Net* net = net_new(plan, planf, batch_size, chunk, tiles)
    cdef LossRec lr
    cdef Py_ssize_t s, b0, bsz, n_chunks, ci, r0, c, ti, i, blk, p0, pn
    cdef double norm, tot, inv_norm, sq, gnorm, coef
    cdef GradOpts go
    cdef bint split_update = clip_norm > 0 or grad_norms is not None
    cdef Py_ssize_t n_blocks = (n_par + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef double* blk_sq = NULL
    cdef int64_t* predp = &pred[0] if pred is not None and pred.shape[0] > 0 else NULL
    cdef double* gnp = &grad_norms[0] if grad_norms is not None and grad_norms.shape[0] > 0 else NULL
    cdef Diag dgs
    cdef Diag* dgp = NULL
    cdef Diag* dgt = NULL
    cdef int64_t every = 1
    cdef double[::1] d_act, d_tile
    cdef unsigned char[::1] d_active
    cdef floating[::1] d_scratch
    if diag is not None:
        d_act = diag["act_acc"]
        d_tile = diag["tile_acc"]
        d_active = diag["active"]
        d_scratch = diag["scratch"]
        if (d_act.shape[0] < ((batch_size + chunk - 1) // chunk) * plan.shape[0] * 3
                or d_tile.shape[0] < tiles.shape[0] * 4 or d_scratch.shape[0] < tiles.shape[0] * diag["stride"]):
            raise ValueError("diagnostics buffers are too small for this plan")
        dgs.act_acc = &d_act[0]
        dgs.active = &d_active[0]
        dgs.n_units = diag["n_units"]
        dgs.sat_sigmoid = diag["sat_sigmoid"]
        dgs.sat_tanh = diag["sat_tanh"]
        dgs.tile_acc = &d_tile[0]
        dgs.scratch = <void*>&d_scratch[0]
        dgs.scratch_stride = diag["stride"]
        dgp = &dgs
        every = max(1, <int64_t>diag["every"])
    cdef OptRun orun
    cdef OptRun* optp = NULL
    cdef floating* P = &params[0]
    cdef floating* G = &grads[0]
    cdef floating* Wk = &work[0]
    cdef floating* Xp = <floating*>&X[0, 0]
    cdef int64_t* yip = <int64_t*>&yi[0] if yi.shape[0] > 0 else NULL
    cdef floating* yfp = <floating*>&yf[0, 0] if yf.shape[0] > 0 else NULL
    cdef floating* swp = <floating*>&sw[0] if sw.shape[0] > 0 else NULL
    cdef floating* pwp = <floating*>&pos_weight[0] if pos_weight.shape[0] > 0 else NULL
    cdef floating* S0 = NULL
    cdef floating* S1 = NULL
    cdef floating* S2 = NULL
    cdef Py_ssize_t* ordp = <Py_ssize_t*>&order[0]
    cdef LayerRec* Llast = &net.L[net.n_layers - 1]
    cdef Py_ssize_t n_in0 = net.L[0].n_in
    cdef double* exl = <double*>malloc(batch_size * sizeof(double))
    cdef double* hpp = <double*>&hp[0] if hp.shape[0] > 0 else NULL
    cdef Py_ssize_t done = 0
    if split_update:
        blk_sq = <double*>malloc(n_blocks * sizeof(double))
    if exl == NULL or (split_update and blk_sq == NULL):
        free(exl)
        free(blk_sq)
        net_free(net)
        raise MemoryError()
    go.l2 = l2
    go.l2_bias = l2_bias
    go.clip_value = clip_value
    if state.shape[0] > 0:
        S0 = &state[0, 0]
    if state.shape[0] > 1:
        S1 = &state[1, 0]
    if state.shape[0] > 2:
        S2 = &state[2, 0]
    lr.code = loss_code
    lr.n_classes = n_classes
    lr.has_pos_weight = pwp != NULL
    orun.n_par = n_par
    orun.s0, orun.s1, orun.s2 = <void*>S0, <void*>S1, <void*>S2
    orun.eps = opt_eps(opt_code, hpp) if hpp != NULL else 0
    try:
        with nogil:
            for s in range(n_steps):
                b0 = s * batch_size
                bsz = batch_size if b0 + batch_size <= N else N - b0
                if bsz <= 0:
                    break
                # loss normaliser: sum of example weights (x elements for elementwise means)
                if reduction == 2:
                    norm = 1
                else:
                    if swp != NULL:
                        norm = 0
                        for i in range(bsz):
                            norm += swp[ordp[b0 + i]]
                    else:
                        norm = bsz
                    if reduction == 1:
                        norm = norm * n_classes
                # a batch whose weights are all zero contributes nothing
                inv_norm = 1.0 / norm if norm > 0 else 0.0
                # statistics on every ``every``-th global step, but the dead-unit flags on every
                # step: a dead unit must be silent on every example
                dgt = dgp if (dgp != NULL and (step0 + s) % every == 0) else NULL
                n_chunks = (bsz + chunk - 1) // chunk
                for ci in prange(n_chunks, schedule='dynamic', num_threads=n_threads):
                    r0 = ci * chunk
                    c = chunk if r0 + chunk <= bsz else bsz - r0
                    gather_rows(Wk + r0 * n_in0, Xp, ordp + b0 + r0, c, n_in0)
                    chunk_forward(net, P, Wk, r0, c, training, seed, epoch, step0 + s, 0, dgp, ci, dgt != NULL)
                    loss_rows(&lr, Wk + Llast.out_off + r0 * n_classes,
                              Wk + Llast.d_off + r0 * n_classes, c, ordp + b0 + r0,
                              yip, yfp, swp, pwp, inv_norm, exl + r0, predp)
                    chunk_backward(net, P, Wk, r0, c, seed, epoch, step0 + s, 0)
                tot = 0
                if swp != NULL:
                    for i in range(bsz):
                        tot += exl[i] * swp[ordp[b0 + i]]
                else:
                    for i in range(bsz):
                        tot += exl[i]
                tot = tot * inv_norm
                step_loss[s] = tot
                if not isfinite(tot):
                    break
                optp = NULL
                if opt_code != OPT_NONE:
                    orun.st = opt_step_consts(opt_code, hpp, lrs[s], t0 + s + 1)
                    optp = &orun
                if not split_update:
                    # gradient average and fused update: one tile per task, no shared writes
                    for ti in prange(net.n_tiles, schedule='dynamic', num_threads=n_threads):
                        grad_tile(net, &net.tiles[ti], Wk, P, G, bsz, optp, &go, dgt, ti)
                else:
                    # the global norm needs every gradient first: gradient, norm, then update
                    for ti in prange(net.n_tiles, schedule='dynamic', num_threads=n_threads):
                        grad_tile(net, &net.tiles[ti], Wk, P, G, bsz, NULL, &go, NULL, ti)
                    for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
                        p0 = blk * UPDATE_BLOCK
                        pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n_par else n_par - p0
                        blk_sq[blk] = sum_sq(G + p0, pn)
                    sq = 0
                    for blk in range(n_blocks):
                        sq += blk_sq[blk]
                    gnorm = sqrt(sq)
                    if gnp != NULL:
                        gnp[s] = gnorm
                    coef = 1.0
                    if clip_norm > 0:
                        coef = clip_norm / (gnorm + 1e-6)
                    if optp != NULL:
                        for ti in prange(net.n_tiles, schedule='dynamic', num_threads=n_threads):
                            tile_update(net, &net.tiles[ti], P, G, optp, coef, dgt, ti)
                    elif coef < 1.0:
                        for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
                            p0 = blk * UPDATE_BLOCK
                            pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n_par else n_par - p0
                            scale_span(G + p0, pn, coef)
                done = s + 1
    finally:
        free(blk_sq)
        free(exl)
        net_free(net)
    return done


def forward_rows(const int64_t[:, ::1] plan, const double[:, ::1] planf, Py_ssize_t chunk,
                 floating[::1] params, const floating[:, ::1] X, floating[:, ::1] out,
                 floating[::1] work, Py_ssize_t batch_size, int n_threads, bint training=False,
                 uint64_t seed=0, uint64_t epoch=0, uint64_t step=0):
    """out <- network(X), in batches of batch_size rows. Dropout is in inference mode
    unless ``training``; then row i of X draws the mask of example i of step ``step``."""
    cdef Py_ssize_t N = X.shape[0]
    cdef Net* net = net_new(plan, planf, batch_size, chunk, np.zeros((0, 5), dtype=np.int64))
    cdef Py_ssize_t b0, bsz, n_chunks, ci, r0, c, i
    cdef floating* P = &params[0]
    cdef floating* Wk = &work[0]
    cdef floating* Xp = <floating*>&X[0, 0]
    cdef floating* Op = &out[0, 0]
    cdef LayerRec* Llast = &net.L[net.n_layers - 1]
    cdef Py_ssize_t n_in0 = net.L[0].n_in, n_out = Llast.n_out
    try:
        with nogil:
            b0 = 0
            while b0 < N:
                bsz = batch_size if b0 + batch_size <= N else N - b0
                n_chunks = (bsz + chunk - 1) // chunk
                for ci in prange(n_chunks, schedule='dynamic', num_threads=n_threads):
                    r0 = ci * chunk
                    c = chunk if r0 + chunk <= bsz else bsz - r0
                    memcpy(Wk + r0 * n_in0, Xp + (b0 + r0) * n_in0, c * n_in0 * sizeof(floating))
                    chunk_forward(net, P, Wk, r0, c, training, seed, epoch, step, b0)
                    memcpy(Op + (b0 + r0) * n_out, Wk + Llast.out_off + r0 * n_out,
                           c * n_out * sizeof(floating))
                b0 += bsz
    finally:
        net_free(net)


def loss_per_example(const floating[:, ::1] O, const int64_t[::1] yi, const floating[:, ::1] yf,
                     const floating[::1] pos_weight, int loss_code, double[::1] out):
    """Unweighted per-example loss of outputs O (the kernel behind evaluate)."""
    cdef LossRec lr
    cdef Py_ssize_t N = O.shape[0], i
    cdef Py_ssize_t* idx = <Py_ssize_t*>malloc(max(N, 1) * sizeof(Py_ssize_t))
    if idx == NULL:
        raise MemoryError()
    lr.code = loss_code
    lr.n_classes = O.shape[1]
    lr.has_pos_weight = pos_weight.shape[0] > 0
    try:
        for i in range(N):
            idx[i] = i
        with nogil:
            loss_rows(&lr, <floating*>&O[0, 0], <floating*>NULL, N, idx,
                      <int64_t*>&yi[0] if yi.shape[0] > 0 else NULL,
                      <floating*>&yf[0, 0] if yf.shape[0] > 0 else NULL, <floating*>NULL,
                      <floating*>&pos_weight[0] if pos_weight.shape[0] > 0 else NULL,
                      1.0, &out[0], NULL)
    finally:
        free(idx)


def optimizer_step(int opt_code, floating[::1] params, const floating[::1] grads,
                   floating[:, ::1] state, const double[::1] hp, double lr, int64_t t,
                   int n_threads):
    """One update (number t, 1-based) of the whole flat buffer, parallel over fixed blocks."""
    cdef Py_ssize_t n_par = params.shape[0], blk, p0, pn
    cdef Py_ssize_t n_blocks = (n_par + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef OptRun o
    o.st = opt_step_consts(opt_code, &hp[0], lr, t)
    o.eps = opt_eps(opt_code, &hp[0])
    o.n_par = n_par
    o.s0 = <void*>&state[0, 0] if state.shape[0] > 0 else NULL
    o.s1 = <void*>&state[1, 0] if state.shape[0] > 1 else NULL
    o.s2 = <void*>&state[2, 0] if state.shape[0] > 2 else NULL
    with nogil:
        for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
            p0 = blk * UPDATE_BLOCK
            pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n_par else n_par - p0
            update_at(&o, &params[0], <floating*>&grads[0], p0, pn)
