# Recurrent layers (RNN tanh/relu, LSTM, GRU), one op per layer of a stack, PyTorch's equations and
# gate order. A chunk of sequences runs its whole time loop on one thread: LSTM one GEMM per step
# of [x_t, h_{t-1}] by [W_ih, W_hh], the others every step's input projection as one GEMM, then
# one recurrent GEMM per step (GRU's n gate needs the recurrent part alone); backward through time
# runs on the same chunk and keeps, for every step, the gate deltas, so the weight gradients are
# tiles of rows (weight_ih, weight_hh and both biases) summed over examples and steps in a fixed
# order (LSTM: one GEMM by [x_t, h_{t-1}] for both weights).
#
# With bfloat16 operands (Op.prec) the products run on bf16.pxi's kernels, the weights packed with the
# optimizer update, the step's rows and deltas rounded as they are packed for each product.
#
# Per-example blocks of the work buffer (each B rows), from the op's s_col, widths in elements:
#   GA  T*GH      gates after their nonlinearity (RNN: h_t)
#   XH  T*(F+H)   [x_t, h_{t-1}] at slot t (h_{-1} = 0); the last state is in the output
#   CS  T*H       LSTM: c_t
#   TC  T*H       LSTM: tanh(c_t), from forward (backward would compute it again)
#   HN  T*H       GRU: W_hn h_{t-1} + b_hn
#   DI  T*GH      deltas of the gate pre-activations (input side); all but GRU's over GA itself, each
#                 step's once its gates are done with (a block of their own costs cache)
#   DH  T*GH      GRU: the same on the recurrent side (differs in n: times r)
#   SC  GH+H      scratch: GRU's recurrent projection of a step; dh (and LSTM's dc) in backward, and
#                 (the last H) the dh of a finished sequence kept across the recurrent GEMM
#   DS  T*H       dL/dh_t of every step (the diagnostics' gradient norm through time)

cdef enum:
    CELL_TANH = 0
    CELL_RELU = 1
    CELL_LSTM = 2
    CELL_GRU = 3


cdef extern from *:
    """
    /* float32 sigmoid and tanh over rows, branch-free so they vectorize (libm's scalar tanhf and
       expf were half of an LSTM step): expf by Cephes' range reduction and degree-5 polynomial
       (about 1 ulp), tanh by its odd polynomial below 0.625 and (1 - e) / (1 + e), e = exp(-2|x|),
       above. IEEE operations only, the polynomials' steps fused multiply-adds where the build has
       them (AVX2 and AVX-512: a third less time per LSTM step's gates, the same accuracy: sigmoid
       within 2.5 ulp and tanh within 1.6 ulp of float64 over every float in [-30, 30]; the baseline
       build rounds the product and the sum apiece). Every clone of a build gives the same bits. */
    #ifdef __FMA__
    #define FASTNN_MADDF(a, b, c) fmaf(a, b, c)
    #else
    #define FASTNN_MADDF(a, b, c) ((a) * (b) + (c))
    #endif
    static inline float fastnn_expf_poly(float x) {
        float n, r, p;
        union { int i; float f; } s;
        x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
        n = FASTNN_MADDF(x, 1.44269504088896341f, 12582912.0f) - 12582912.0f;   /* round to nearest */
        r = FASTNN_MADDF(n, -0.693359375f, x);
        r = FASTNN_MADDF(n, 2.12194440e-4f, r);
        p = 1.9875691500E-4f;
        p = FASTNN_MADDF(p, r, 1.3981999507E-3f);
        p = FASTNN_MADDF(p, r, 8.3334519073E-3f);
        p = FASTNN_MADDF(p, r, 4.1665795894E-2f);
        p = FASTNN_MADDF(p, r, 1.6666665459E-1f);
        p = FASTNN_MADDF(p, r, 5.0000001201E-1f);
        p = FASTNN_MADDF(p, r * r, r) + 1.0f;
        s.i = ((int)n + 127) << 23;
        return p * s.f;
    }
    static inline float fastnn_sigmoidf(float x) {
        return 1.0f / (1.0f + fastnn_expf_poly(-x));
    }
    static inline float fastnn_tanhf(float v) {
        float a = v < 0 ? -v : v, z = v * v, e, big, small;
        e = fastnn_expf_poly(-2.0f * a);
        big = (1.0f - e) / (1.0f + e);
        big = v < 0 ? -big : big;
        small = -5.70498872745E-3f;
        small = FASTNN_MADDF(small, z, 2.06390887954E-2f);
        small = FASTNN_MADDF(small, z, -5.37397155531E-2f);
        small = FASTNN_MADDF(small, z, 1.33314422036E-1f);
        small = FASTNN_MADDF(small, z, -3.33332819422E-1f);
        small = FASTNN_MADDF(small * z, v, v);
        return a < 0.625f ? small : big;
    }
    FASTNN_CLONES static void fastnn_sigmoid_rowf(float* x, Py_ssize_t n) {
        Py_ssize_t i;
        #pragma omp simd
        for (i = 0; i < n; i++) x[i] = fastnn_sigmoidf(x[i]);
    }
    FASTNN_CLONES static void fastnn_tanh_rowf(const float* x, float* y, Py_ssize_t n) {
        Py_ssize_t i;
        #pragma omp simd
        for (i = 0; i < n; i++) y[i] = fastnn_tanhf(x[i]);
    }
    /* One LSTM step of one example after its recurrent GEMM, in one pass over the four gate blocks
       (separate passes per gate and per update were a tenth of the step): the biases, the gates'
       nonlinearities in place, c_t, tanh(c_t) (kept for backward) and h_t. */
    #define FASTNN_LSTM_FWD_LOOP(CELL) \
        _Pragma("omp simd") \
        for (j = 0; j < H; j++) { \
            float ig = fastnn_sigmoidf(g[j]), fg = fastnn_sigmoidf(g[H + j]); \
            float gg = fastnn_tanhf(g[2 * H + j]), og = fastnn_sigmoidf(g[3 * H + j]), cv, t; \
            cv = CELL; \
            t = fastnn_tanhf(cv); \
            g[j] = ig; g[H + j] = fg; g[2 * H + j] = gg; g[3 * H + j] = og; \
            cq[j] = cv; tc[j] = t; hq[j] = og * t; }
    FASTNN_CLONES static void fastnn_lstm_fwd_f(float* restrict g, const float* restrict bi,
            const float* restrict bh, const float* restrict cp, float* restrict cq, float* restrict tc,
            float* restrict hq, Py_ssize_t H, int first) {
        Py_ssize_t j;
        if (bi != NULL) {
            #pragma omp simd
            for (j = 0; j < 4 * H; j++) g[j] = (g[j] + bi[j]) + bh[j];
        }
        if (first) { FASTNN_LSTM_FWD_LOOP(ig * gg) }
        else { FASTNN_LSTM_FWD_LOOP(ig * gg + fg * cp[j]) }
    }
    """
    void fastnn_sigmoid_rowf(float* x, Py_ssize_t n) nogil
    void fastnn_tanh_rowf(const float* x, float* y, Py_ssize_t n) nogil
    void fastnn_lstm_fwd_f(float* g, const float* bi, const float* bh, const float* cp, float* cq, float* tc,
                           float* hq, Py_ssize_t H, int first) nogil


cdef extern from *:
    """
    /* The gate deltas of one example and step, as in the equations of rnn_backward, over restrict
       pointers into disjoint blocks so that the compiler vectorizes them (the same operations in
       the same order as the scalar form). LSTM's replace its gates in place: an iteration reads
       its four gates before it writes their deltas and touches no other's, hence simd. */
    #define FASTNN_LSTM_BACK(T, NAME) __attribute__((noinline)) \
    static void NAME(T* restrict g, const T* restrict tc, const T* restrict cp, \
                     T* restrict dh, T* restrict dc, Py_ssize_t H, int first) { \
        _Pragma("omp simd") \
        for (Py_ssize_t j = 0; j < H; j++) { \
            T ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j], t = tc[j]; \
            T dcv = dc[j] + ((dh[j] * og) * ((T)1 - t * t)); \
            g[j] = ((dcv * gg) * ig) * ((T)1 - ig); \
            g[H + j] = first ? (T)0 : ((dcv * cp[j]) * fg) * ((T)1 - fg); \
            g[2 * H + j] = (dcv * ig) * ((T)1 - gg * gg); \
            g[3 * H + j] = ((dh[j] * t) * og) * ((T)1 - og); \
            dc[j] = dcv * fg; } }
    #define FASTNN_GRU_BACK(T, NAME) __attribute__((noinline)) \
    static void NAME(const T* restrict g, const T* restrict hn, const T* restrict hp, \
                     T* restrict dh, T* restrict d, T* restrict d2, Py_ssize_t H) { \
        for (Py_ssize_t j = 0; j < H; j++) { \
            T r = g[j], z = g[H + j], n = g[2 * H + j]; \
            T dn = dh[j] * ((T)1 - z), da = dn * ((T)1 - n * n); \
            d[2 * H + j] = da; \
            d2[2 * H + j] = da * r; \
            d[j] = ((da * hn[j]) * r) * ((T)1 - r); \
            d[H + j] = ((dh[j] * (hp[j] - n)) * z) * ((T)1 - z); \
            d2[j] = d[j]; \
            d2[H + j] = d[H + j]; \
            dh[j] = dh[j] * z; } }
    FASTNN_LSTM_BACK(float, fastnn_lstm_back_f)
    FASTNN_LSTM_BACK(double, fastnn_lstm_back_d)
    FASTNN_GRU_BACK(float, fastnn_gru_back_f)
    FASTNN_GRU_BACK(double, fastnn_gru_back_d)
    """
    void fastnn_lstm_back_f(float* g, const float* tc, const float* cp, float* dh, float* dc,
                            Py_ssize_t H, int first) nogil
    void fastnn_lstm_back_d(double* g, const double* tc, const double* cp, double* dh, double* dc,
                            Py_ssize_t H, int first) nogil
    void fastnn_gru_back_f(const float* g, const float* hn, const float* hp, float* dh, float* d, float* d2,
                           Py_ssize_t H) nogil
    void fastnn_gru_back_d(const double* g, const double* hn, const double* hp, double* dh, double* d,
                           double* d2, Py_ssize_t H) nogil


cdef inline void sigmoid_row(floating* x, Py_ssize_t n) noexcept nogil:
    """x <- sigmoid(x) in place."""
    cdef Py_ssize_t i
    if floating is float:
        fastnn_sigmoid_rowf(x, n)
    else:
        for i in range(n):
            x[i] = sigmoid(x[i])


cdef inline void tanh_row(floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    """y <- tanh(x) (y may be x)."""
    cdef Py_ssize_t i
    if floating is float:
        fastnn_tanh_rowf(x, y, n)
    else:
        for i in range(n):
            y[i] = tanh(x[i])


cdef inline Py_ssize_t rnn_gates(int cell) noexcept nogil:
    if cell == CELL_LSTM:
        return 4
    if cell == CELL_GRU:
        return 3
    return 1


cdef void rnn_layout(int cell, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H, Py_ssize_t* cols) noexcept nogil:
    """Per-example column offsets of the blocks GA, XH, CS, TC, HN, DI, DH, SC, DS from the op's
    s_col into cols[0..8], and the total width into cols[9] (F: input features per step)."""
    cdef Py_ssize_t gh = rnn_gates(cell) * H
    cols[0] = 0                                                   # GA
    cols[1] = T * gh                                              # XH
    cols[2] = cols[1] + T * (F + H)                               # CS
    cols[3] = cols[2] + (T * H if cell == CELL_LSTM else 0)       # TC
    cols[4] = cols[3] + (T * H if cell == CELL_LSTM else 0)       # HN
    cols[5] = cols[4] + T * H if cell == CELL_GRU else 0          # DI (GRU; else GA itself)
    cols[6] = cols[5] + T * gh if cell == CELL_GRU else cols[5]   # DH (GRU; else DI itself)
    cols[7] = cols[6] + T * gh if cell == CELL_GRU else cols[4]   # SC
    cols[8] = cols[7] + gh + H                                    # DS
    cols[9] = cols[8] + T * H


def rnn_state_width(int cell, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H):
    """Per-example work-buffer columns an op of this cell needs for its saved states and deltas."""
    cdef Py_ssize_t cols[10]
    rnn_layout(cell, T, F, H, cols)
    return cols[9]


def rnn_block_offsets(int cell, Py_ssize_t T, Py_ssize_t F, Py_ssize_t H):
    """Per-example column offsets of the blocks, from the op's s_col, by name."""
    cdef Py_ssize_t cols[10]
    rnn_layout(cell, T, F, H, cols)
    return {name: cols[i] for i, name in enumerate(("GA", "XH", "CS", "TC", "HN", "DI", "DH", "SC", "DS"))}


def rnn_scratch(int cell, Py_ssize_t F, Py_ssize_t H):
    """Per-chunk scratch elements of a layer: its weights transposed for the step GEMMs."""
    return rnn_gates(cell) * H * (F + H if cell == CELL_LSTM else H)


cdef void rnn_setup(Op* o, Py_ssize_t B) noexcept nogil:
    """Element offsets of the op's blocks (o.s_e is the first)."""
    cdef Py_ssize_t cols[10]
    rnn_layout(o.cell, o.steps, o.n_in // o.steps, o.hidden, cols)
    o.ga_e = o.s_e + B * cols[0]
    o.xh_e = o.s_e + B * cols[1]
    o.cs_e = o.s_e + B * cols[2]
    o.tc_e = o.s_e + B * cols[3]
    o.hn_e = o.s_e + B * cols[4]
    o.di_e = o.s_e + B * cols[5]
    o.dh_e = o.s_e + B * cols[6]
    o.sc_e = o.s_e + B * cols[7]
    o.ds_e = o.s_e + B * cols[8]


cdef inline Py_ssize_t seq_len(Op* o, Ctx* cx, Py_ssize_t r) noexcept nogil:
    """The length of row r's sequence: cx.lens of its example, else every step."""
    if cx.lens == NULL:
        return o.steps
    return <Py_ssize_t>cx.lens[cx.ordp[cx.b0 + r]]


cdef enum:
    # A step multiplies few rows (a chunk of sequences) by the weights, where OpenBLAS packs them on
    # every call unless its unpacked small-matrix kernel takes the product: it does for an "NN"
    # product of up to a million multiply-adds. So forward multiplies by a transposed copy of the
    # weights (LSTM: [W_ih, W_hh]; else W_hh; made once per chunk) in blocks of STEP_ROWS gate rows,
    # each block contiguous and small enough for L1 (LSTM, F = 32, H = 128, batch 32, 1 thread:
    # 128 rows with a row's stride 6.6k ex/s, 64 rows strided 6.6k, 64 contiguous 7.1k, 32
    # contiguous 6.9k), and backward sums blocks of STEP_ROWS_BACK gate rows (measured, H = 128,
    # 16 rows: 86 -> 175 and 178 -> 216 GFLOP/s). OpenBLAS's Haswell kernels have no such unpacked
    # path, so the AVX2 build multiplies a step on smallgemm.pxi's broadcast kernel instead (Intel
    # Xeon as an AVX2 machine, 1 thread, batch 32: LSTM and GRU +43%); in the AVX-512 build the
    # same kernel lost 3-11% to OpenBLAS's small-matrix path (FNN_STEP_OWN).
    STEP_ROWS = 64
    STEP_ROWS_BACK = 64


cdef void transpose_into(floating* W, Py_ssize_t rows, Py_ssize_t cols, floating* Wt) noexcept nogil:
    """Wt[k, j] = W[j, k] (W rows x cols, row-major), in cache-sized tiles."""
    cdef Py_ssize_t j0, k0, j, k, j1, k1
    for j0 in range(0, rows, 32):
        j1 = j0 + 32 if j0 + 32 <= rows else rows
        for k0 in range(0, cols, 32):
            k1 = k0 + 32 if k0 + 32 <= cols else cols
            for k in range(k0, k1):         # contiguous stores: a row-sized store stride thrashes L1 sets
                for j in range(j0, j1):
                    Wt[k * rows + j] = W[j * cols + k]


cdef void transpose_blocks(floating* W, Py_ssize_t rows, Py_ssize_t cols, floating* Wt, Py_ssize_t K,
                           Py_ssize_t k0) noexcept nogil:
    """W (rows x cols, row-major) transposed into rows k0.. of Wt, K rows of W^T for every block of
    STEP_ROWS gate rows, each block contiguous (K x nb, column-major), so a step's GEMM reads its
    block of weights as one run of memory rather than with a row's stride."""
    cdef Py_ssize_t j0 = 0, nb
    while j0 < rows:
        nb = STEP_ROWS if j0 + STEP_ROWS <= rows else rows - j0
        transpose_into(W + j0 * cols, nb, cols, Wt + j0 * K + k0 * nb)
        j0 += nb


cdef inline void step_gemm(Py_ssize_t GH, Py_ssize_t c, Py_ssize_t H, floating* Wt, Py_ssize_t K, floating* h,
                           Py_ssize_t ldh, int beta, floating* out, Py_ssize_t ldo) noexcept nogil:
    """out[c x GH] (=|+=) h[c x H] W^T, given W^T (the first H of K rows) from transpose_blocks,
    in blocks of STEP_ROWS gate rows."""
    cdef Py_ssize_t j0 = 0, nb
    while j0 < GH:
        nb = STEP_ROWS if j0 + STEP_ROWS <= GH else GH - j0
        if floating is float and FNN_STEP_OWN:
            fnn_sgemm_bc(c, nb, H, h, ldh, 1, Wt + j0 * K, nb, out + j0, ldo, beta)
        else:
            gemm(c'N', c'N', <int>nb, <int>c, <int>H, <floating>1, Wt + j0 * K, <int>nb, h, <int>ldh,
                 <floating>beta, out + j0, <int>ldo)
        j0 += nb


cdef inline void step_gemm_back(Py_ssize_t H, Py_ssize_t c, Py_ssize_t GH, floating* W, floating* d,
                                Py_ssize_t ldd, int beta, floating* out, Py_ssize_t ldo) noexcept nogil:
    """out[c x H] (=|+=) d[c x GH] W, summed over blocks of STEP_ROWS_BACK gate rows in order."""
    cdef Py_ssize_t j0 = 0, nb
    while j0 < GH:
        nb = STEP_ROWS_BACK if j0 + STEP_ROWS_BACK <= GH else GH - j0
        if floating is float and FNN_STEP_OWN:
            fnn_sgemm_bc(c, H, nb, d + j0, ldd, 1, W + j0 * H, H, out, ldo, beta if j0 == 0 else 1)
        else:
            gemm(c'N', c'N', <int>H, <int>c, <int>nb, <floating>1, W + j0 * H, <int>H, d + j0, <int>ldd,
                 <floating>(beta if j0 == 0 else 1), out, <int>ldo)
        j0 += nb


cdef void loss_steps(Ctx* cx, floating* O, floating* D, Py_ssize_t c, Py_ssize_t r0) noexcept nogil:
    """Per-step losses: rows [r0, r0+c) hold cx.steps outputs of C values each. Targets are class
    labels, step-major (example e's label at step s is yi[s * cx.n_ex + e]), or, for MSE, rows of
    yf, example-major (example e's step s is row e * steps + s). Only the steps within an example's
    length count; the batch's normaliser counts them too (steps_norm), so the mean is torch's over
    every labelled step (times C for MSE: over real steps x outputs). Steps past a length get a
    zero delta. A step's weight is cx.ssw[s * n_ex + e] (per-step weights, then cx.sw is NULL),
    else sw[e]; exl receives the example's sum over its steps, weighted by ssw only (sw is applied
    by the caller, as for one row per example). With cx.predp, the predicted class of a step goes
    to predp[s * n_ex + e]."""
    cdef Py_ssize_t i, s, e, k, C = cx.lr.n_classes, S = cx.steps, row, n, ne = cx.n_ex
    cdef Py_ssize_t* idx = cx.ordp + cx.b0 + r0
    cdef floating* sw = <floating*>cx.sw
    cdef floating* ssw = <floating*>cx.ssw
    cdef bint mse = cx.lr.code == LOSS_MSE
    cdef double l, w, tot
    for i in range(c):
        tot = 0
        e = idx[i]
        n = S if cx.lens == NULL else <Py_ssize_t>cx.lens[e]
        for s in range(S):
            row = (i * S + s) * C
            if s >= n:
                memset(D + row, 0, C * sizeof(floating))
                continue
            # the weight goes into the scale passed as inv_norm (sw NULL): the same bits as
            # loss_rows forming sw[e] * inv_norm itself
            w = ssw[s * ne + e] if ssw != NULL else (sw[e] if sw != NULL else 1.0)
            if mse:
                k = e * S + s
                loss_rows(&cx.lr, O + row, D + row, 1, &k, <int64_t*>NULL, <floating*>cx.yf, <floating*>NULL,
                          <floating*>NULL, w * cx.inv_norm, &l, NULL)
            else:
                loss_rows(&cx.lr, O + row, D + row, 1, idx + i, <int64_t*>cx.yi + s * ne, <floating*>NULL,
                          <floating*>NULL, <floating*>NULL, w * cx.inv_norm, &l,
                          (cx.predp + s * ne) if cx.predp != NULL else NULL)
            tot += w * l if ssw != NULL else l
        cx.exl[r0 + i] = tot


cdef double steps_norm(Ctx* cx, floating* sw, Py_ssize_t b0, Py_ssize_t bsz) noexcept nogil:
    """The mean's normaliser for per-step losses: the real steps of the batch's examples, each
    times its weight (per-step cx.ssw, else the example's sw), summed in example then step order."""
    cdef Py_ssize_t i, e, s, n, ne = cx.n_ex
    cdef floating* ssw = <floating*>cx.ssw
    cdef double norm = 0
    for i in range(bsz):
        e = cx.ordp[b0 + i]
        n = cx.steps if cx.lens == NULL else <Py_ssize_t>cx.lens[e]
        if ssw != NULL:
            for s in range(n):
                norm += ssw[s * ne + e]
        else:
            norm += <double>n * (sw[e] if sw != NULL else 1.0)
    return norm


cdef void rnn_forward(Op* o, Ctx* cx, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c,
                      floating* Wt) noexcept nogil:
    """Rows [r0, r0+c): the sequences through the layer, states saved for backward. Past its
    length (cx.lens) a sequence keeps its state and outputs zeros, as torch's packed sequences.
    ``Wt``: the chunk's scratch, for the weights transposed."""
    cdef Py_ssize_t T = o.steps, H = o.hidden, G = rnn_gates(o.cell)
    cdef Py_ssize_t GH = G * H, F = o.n_in // T, K = F + H, i, j, t, ld_ga = T * GH, ld_xh = T * K
    cdef floating* x = Wk + o.in_e + r0 * o.n_in
    cdef floating* ga = Wk + o.ga_e + r0 * ld_ga
    cdef floating* xh = Wk + o.xh_e + r0 * ld_xh
    cdef floating* cs = Wk + o.cs_e + r0 * T * H
    cdef floating* tc = Wk + o.tc_e + r0 * T * H
    cdef floating* hn = Wk + o.hn_e + r0 * T * H
    cdef floating* sc = Wk + o.sc_e + r0 * (GH + H)
    cdef floating* out = Wk + o.a_e + r0 * o.n_out
    cdef floating* Whh = P + o.w2_off
    cdef floating* bih = (P + o.b_off) if o.b_off >= 0 else <floating*>NULL
    cdef floating* bhh = (P + o.b2_off) if o.b2_off >= 0 else <floating*>NULL
    cdef floating* g
    cdef floating* hp
    cdef floating* hq
    cdef floating* s
    cdef floating* cp
    cdef floating* cq
    cdef floating* v
    cdef floating one = 1
    for i in range(c):
        for t in range(T):
            memcpy(xh + i * ld_xh + t * K, x + i * o.n_in + t * F, F * sizeof(floating))
        memset(xh + i * ld_xh + F, 0, H * sizeof(floating))
    cdef bint b16 = floating is float and o.prec == PREC_BF16     # weights come packed (bf16.pxi)
    if o.cell == CELL_LSTM:
        if not b16:
            transpose_blocks(P + o.w_off, GH, F, Wt, K, 0)
            if T > 1:
                transpose_blocks(Whh, GH, H, Wt, K, F)
    else:
        # every step's input projection in one GEMM, then the biases (GRU: b_hn acts inside r*(...))
        if b16:
            bf16_rnn_mm(o, <float*>Wk, RNN_WF_X, <float*>xh, K, c * T, <float*>ga, GH, 0, <float*>Wt)
        else:
            gemm(c'T', c'N', <int>GH, <int>(c * T), <int>F, <floating>1, P + o.w_off, <int>F, xh, <int>K,
                 <floating>0, ga, <int>GH)
        if bih != NULL:
            for i in range(c * T):
                g = ga + i * GH
                for j in range(GH):
                    g[j] = g[j] + bih[j]
                for j in range(2 * H if o.cell == CELL_GRU else GH):
                    g[j] = g[j] + bhh[j]
        if T > 1 and not b16:
            transpose_blocks(Whh, GH, H, Wt, H, 0)
    for t in range(T):
        if o.cell == CELL_LSTM and b16:
            bf16_rnn_mm(o, <float*>Wk, RNN_WF_X, <float*>(xh + t * K), ld_xh, c, <float*>(ga + t * GH), ld_ga, 0,
                        <float*>Wt)
        elif o.cell == CELL_LSTM:
            # h_{-1} = 0: the first step needs only the inputs
            step_gemm(GH, c, K if t > 0 else F, Wt, K, xh + t * K, ld_xh, 0, ga + t * GH, ld_ga)
        elif o.cell != CELL_GRU:
            if t > 0 and b16:
                bf16_rnn_mm(o, <float*>Wk, RNN_WF_H, <float*>(xh + t * K + F), ld_xh, c, <float*>(ga + t * GH), ld_ga,
                            1, <float*>Wt)
            elif t > 0:
                step_gemm(GH, c, H, Wt, H, xh + t * K + F, ld_xh, 1, ga + t * GH, ld_ga)
        elif t > 0 and b16:
            bf16_rnn_mm(o, <float*>Wk, RNN_WF_H, <float*>(xh + t * K + F), ld_xh, c, <float*>sc, GH + H, 0,
                        <float*>Wt)
        elif t > 0:
            step_gemm(GH, c, H, Wt, H, xh + t * K + F, ld_xh, 0, sc, GH + H)
        else:
            memset(sc, 0, c * (GH + H) * sizeof(floating))
        for i in range(c):
            g = ga + i * ld_ga + t * GH
            hp = xh + i * ld_xh + t * K + F
            # h_t: the next slot, or for the last step the output
            hq = hp + K if t + 1 < T else out + i * o.n_out + (t * H if o.n_out == T * H else 0)
            if t >= seq_len(o, cx, r0 + i):        # finished: the state stays, the output is zero
                memcpy(hq, hp, H * sizeof(floating))
                if o.cell == CELL_LSTM:
                    cq = cs + i * T * H + t * H
                    memcpy(cq, cq - H, H * sizeof(floating))
                    cq = tc + i * T * H + t * H
                    memcpy(cq, cq - H, H * sizeof(floating))
                if o.n_out == T * H:
                    memset(out + i * o.n_out + t * H, 0, H * sizeof(floating))
                continue
            if bih != NULL and floating is double and o.cell == CELL_LSTM:
                for j in range(GH):
                    g[j] = (g[j] + bih[j]) + bhh[j]
            if o.cell == CELL_TANH:
                tanh_row(g, g, H)
                memcpy(hq, g, H * sizeof(floating))
            elif o.cell == CELL_RELU:
                for j in range(H):
                    g[j] = g[j] if g[j] > 0 else 0
                    hq[j] = g[j]
            elif o.cell == CELL_LSTM:
                cq = cs + i * T * H + t * H
                cp = cq - H
                v = tc + i * T * H + t * H
                if floating is float:
                    fastnn_lstm_fwd_f(g, bih, bhh, cp, cq, v, hq, H, t == 0)
                else:
                    sigmoid_row(g, 2 * H)
                    tanh_row(g + 2 * H, g + 2 * H, H)
                    sigmoid_row(g + 3 * H, H)
                    for j in range(H):
                        cq[j] = g[j] * g[2 * H + j]
                    if t > 0:
                        for j in range(H):
                            cq[j] = cq[j] + g[H + j] * cp[j]
                    tanh_row(cq, v, H)
                    for j in range(H):
                        hq[j] = g[3 * H + j] * v[j]
            else:
                s = sc + i * (GH + H)
                for j in range(2 * H):
                    g[j] = g[j] + s[j]
                sigmoid_row(g, 2 * H)
                v = hn + i * T * H + t * H
                for j in range(H):
                    v[j] = s[2 * H + j] + (bhh[2 * H + j] if bhh != NULL else 0)
                    g[2 * H + j] = g[2 * H + j] + g[j] * v[j]
                tanh_row(g + 2 * H, g + 2 * H, H)
                for j in range(H):
                    hq[j] = (one - g[H + j]) * g[2 * H + j] + g[H + j] * hp[j]
            if o.n_out == T * H and t + 1 < T:
                memcpy(out + i * o.n_out + t * H, hq, H * sizeof(floating))


cdef void rnn_backward(Op* o, Ctx* cx, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c,
                       floating* scratch) noexcept nogil:
    """Rows [r0, r0+c): backward through time; gate deltas of every step kept for the tiles,
    the input delta (=|+=) into dIn. Past a sequence's length its deltas are zero and dh, dc
    pass through unchanged. ``scratch``: the chunk's (bfloat16 operands' packing)."""
    cdef Py_ssize_t T = o.steps, H = o.hidden, G = rnn_gates(o.cell)
    cdef Py_ssize_t GH = G * H, F = o.n_in // T, K = F + H, i, j, t, ld_ga = T * GH, ld_xh = T * K
    cdef bint seq = o.n_out == T * H
    cdef floating* dy = Wk + o.d_e + r0 * o.n_out
    cdef floating* ga = Wk + o.ga_e + r0 * ld_ga
    cdef floating* xh = Wk + o.xh_e + r0 * ld_xh
    cdef floating* cs = Wk + o.cs_e + r0 * T * H
    cdef floating* tc = Wk + o.tc_e + r0 * T * H
    cdef floating* hn = Wk + o.hn_e + r0 * T * H
    cdef floating* di = Wk + o.di_e + r0 * ld_ga
    cdef floating* dhh = Wk + o.dh_e + r0 * ld_ga
    cdef floating* sc = Wk + o.sc_e + r0 * (GH + H)
    cdef floating* ds = Wk + o.ds_e + r0 * T * H
    cdef floating* Whh = P + o.w2_off
    cdef floating* g
    cdef floating* d
    cdef floating* d2
    cdef floating* dh
    cdef floating* dc
    cdef floating* hp
    cdef floating* cq
    cdef floating* cp
    cdef floating* tcr
    cdef bint held = False
    # a typed one: a bare 1 is the C double 1.0, which would take float32 arithmetic to double, scalar
    cdef floating one = 1
    for i in range(c):
        dh = sc + i * (GH + H)
        if seq:
            memset(dh, 0, H * sizeof(floating))
        else:
            memcpy(dh, dy + i * o.n_out, H * sizeof(floating))
        if o.cell == CELL_LSTM:
            memset(dh + H, 0, H * sizeof(floating))
    for t in range(T - 1, -1, -1):
        held = False
        for i in range(c):
            dh = sc + i * (GH + H)
            g = ga + i * ld_ga + t * GH
            d = di + i * ld_ga + t * GH
            if t >= seq_len(o, cx, r0 + i):
                # finished: h_t = h_{t-1}, so dh (and dc) flow on; kept past the recurrent GEMM
                memset(d, 0, GH * sizeof(floating))
                if o.cell == CELL_GRU:
                    memset(dhh + i * ld_ga + t * GH, 0, GH * sizeof(floating))
                memcpy(ds + i * T * H + t * H, dh, H * sizeof(floating))
                memcpy(dh + GH, dh, H * sizeof(floating))
                held = True
                continue
            if seq:
                for j in range(H):
                    dh[j] = dh[j] + dy[i * o.n_out + t * H + j]
            memcpy(ds + i * T * H + t * H, dh, H * sizeof(floating))
            if o.cell == CELL_TANH:
                for j in range(H):
                    d[j] = dh[j] * (one - g[j] * g[j])
            elif o.cell == CELL_RELU:
                for j in range(H):
                    d[j] = dh[j] if g[j] > 0 else 0
            elif o.cell == CELL_LSTM:
                dc = dh + H
                tcr = tc + i * T * H + t * H
                cp = cs + i * T * H + t * H - H
                if floating is float:
                    fastnn_lstm_back_f(d, tcr, cp, dh, dc, H, t == 0)
                else:
                    fastnn_lstm_back_d(d, tcr, cp, dh, dc, H, t == 0)
            else:
                hp = xh + i * ld_xh + t * K + F
                d2 = dhh + i * ld_ga + t * GH
                if floating is float:
                    fastnn_gru_back_f(g, hn + i * T * H + t * H, hp, dh, d, d2, H)
                else:
                    fastnn_gru_back_d(g, hn + i * T * H + t * H, hp, dh, d, d2, H)
        if t > 0:
            # dh_{t-1} = D_t W_hh (+ GRU's direct path z * dh_t, already in dh)
            if floating is float and o.prec == PREC_BF16:
                bf16_rnn_mm(o, <float*>Wk, RNN_WB_H, <float*>(dhh + t * GH), ld_ga, c, <float*>sc, GH + H,
                            1 if o.cell == CELL_GRU else 0, <float*>scratch)
            else:
                step_gemm_back(H, c, GH, Whh, dhh + t * GH, ld_ga, 1 if o.cell == CELL_GRU else 0, sc, GH + H)
            if held:
                for i in range(c):
                    if t >= seq_len(o, cx, r0 + i):
                        dh = sc + i * (GH + H)
                        memcpy(dh, dh + GH, H * sizeof(floating))
    if o.din_e >= 0 and floating is float and o.prec == PREC_BF16:
        bf16_rnn_mm(o, <float*>Wk, RNN_WB_X, <float*>di, GH, c * T, <float*>(Wk + o.din_e + r0 * o.n_in), F,
                    o.din_acc, <float*>scratch)
    elif o.din_e >= 0:
        gemm(c'N', c'N', <int>F, <int>(c * T), <int>GH, <floating>1, P + o.w_off, <int>F, di, <int>GH,
             <floating>o.din_acc, Wk + o.din_e + r0 * o.n_in, <int>F)


cdef void rnn_grad(Op* o, Tile* Tl, floating* Wk, floating* G, Py_ssize_t B, void* tsc) noexcept nogil:
    """Rows [r0, r0+nr) of dW_ih = sum D_t^T x_t, dW_hh = sum D_t^T h_{t-1} and the biases' sums,
    over examples (in order) and steps. ``tsc``: the thread's scratch (bfloat16 operands)."""
    cdef Py_ssize_t T = o.steps, H = o.hidden, GH = rnn_gates(o.cell) * o.hidden, F = o.n_in // T
    cdef Py_ssize_t K = F + H, i, j, r0 = Tl.r0, nr = Tl.nr
    cdef floating* di = Wk + o.di_e
    cdef floating* dhh = Wk + o.dh_e
    cdef floating* xh = Wk + o.xh_e
    cdef floating* gb
    cdef floating* row
    cdef floating* S
    if floating is float and o.prec == PREC_BF16:
        bf16_rnn_weight_grad(o, Tl, <float*>Wk, <float*>G, B, <fnn_u16*>tsc)
    elif o.cell == CELL_LSTM and GH * K <= 2 * B * T * H:
        # both weights in one GEMM by [x_t, h_{t-1}], so the deltas are packed once, not twice,
        # into the cell states' blocks (CS, TC: unread after backward; each tile its own rows),
        # then split into the two weights' rows
        S = Wk + o.cs_e + r0 * K
        gemm(c'N', c'T', <int>K, <int>nr, <int>(B * T), <floating>1, xh, <int>K, di + r0, <int>GH,
             <floating>0, S, <int>K)
        for j in range(nr):
            memcpy(G + o.w_off + (r0 + j) * F, S + j * K, F * sizeof(floating))
            memcpy(G + o.w2_off + (r0 + j) * H, S + j * K + F, H * sizeof(floating))
    else:
        gemm(c'N', c'T', <int>F, <int>nr, <int>(B * T), <floating>1, xh, <int>K, di + r0, <int>GH,
             <floating>0, G + o.w_off + r0 * F, <int>F)
        gemm(c'N', c'T', <int>H, <int>nr, <int>(B * T), <floating>1, xh + F, <int>K, dhh + r0, <int>GH,
             <floating>0, G + o.w2_off + r0 * H, <int>H)
    if o.b_off >= 0:
        gb = G + o.b_off + r0
        for j in range(nr):
            gb[j] = 0
        for i in range(B * T):
            row = di + i * GH + r0
            for j in range(nr):
                gb[j] = gb[j] + row[j]
        gb = G + o.b2_off + r0
        if dhh == di:
            # both biases act on the same pre-activations (not GRU's b_hn): the same sum, once
            memcpy(gb, G + o.b_off + r0, nr * sizeof(floating))
        else:
            for j in range(nr):
                gb[j] = 0
            for i in range(B * T):
                row = dhh + i * GH + r0
                for j in range(nr):
                    gb[j] = gb[j] + row[j]


cdef inline bint rnn_tile_span(Op* o, Tile* Tl, Py_ssize_t i, Py_ssize_t* off, Py_ssize_t* n,
                               bint* weight) noexcept nogil:
    """Spans of a tile of gate rows [r0, r0+nr): each row of weight_ih, each row of weight_hh,
    then bias_ih and bias_hh."""
    cdef Py_ssize_t F = o.n_in // o.steps
    if i < Tl.nr:
        off[0] = o.w_off + (Tl.r0 + i) * F
        n[0] = F
        weight[0] = True
        return True
    if i < 2 * Tl.nr:
        off[0] = o.w2_off + (Tl.r0 + i - Tl.nr) * o.hidden
        n[0] = o.hidden
        weight[0] = True
        return True
    if o.b_off < 0 or i > 2 * Tl.nr + 1:
        return False
    off[0] = (o.b_off if i == 2 * Tl.nr else o.b2_off) + Tl.r0
    n[0] = Tl.nr
    weight[0] = False
    return True
