# Convolution and pooling over examples laid out (C, H, W) (1-D as H = 1).
# A convolution works on sub-blocks of ``o.sub`` consecutive examples of a chunk (a number from the
# shapes only, so that a sub-block's columns fit in cache): im2col writes the sub-block's columns
# side by side ([group][k][example, position], kept for backward), one GEMM per group multiplies
# them all, and the result is scattered into each example's (channel, position) rows. Backward
# gathers the sub-block's output delta the same way, forms the sub-block's filter and bias
# gradient with one GEMM (into the op's partial block, at the sub-block's first row) and the
# column delta with another, then col2im adds it into each input delta. The gradient tiles sum
# the partials sub-block by sub-block in batch order: the same sum on any thread count, and the
# filter gradient is formed in parallel over chunks, while the columns are in cache.
#
# With bfloat16 operands (Op.prec) the three products run on bf16.pxi's kernels: the columns are kept
# as bfloat16 (half the memory traffic; im2col writes them to the chunk's scratch first), the deltas
# are rounded as they are packed for each product, the filters come packed with the weights.
#
# geometry (Op.g): 0 Cin, 1 H, 2 W, 3 Cout, 4 kh, 5 kw, 6 sh, 7 sw, 8 ph, 9 pw, 10 dh, 11 dw,
# 12 groups, 13 Hout, 14 Wout, 15 pool mode (0 max, 1 avg, 2 adaptive avg), 16 count_include_pad

# In float32, the own GEMMs of smallgemm.pxi form a sub-block's filter gradient (dout col^T: dot
# products over its positions) and, for FNN_CONV_OWN_MIN_OUT output channels per group or more, its
# output (W col); the column delta runs on them below FNN_CONV_DCOL_MAX_OUT channels. Both limits
# are the build's (smallgemm.pxi). AVX-512, Intel Xeon, 1 thread, batch 128, against BLAS for all
# three: filter gradient LeNet-5 +3%, CIFAR-size net +5%; output CIFAR +6% but LeNet-5 (6 and 16
# channels: short tiles, where OpenBLAS's SkylakeX small-matrix path is quicker) -4%; column delta
# LeNet -5%, CIFAR -2%. Together, batch 32 / 128: LeNet-5 +2% / +1%, 1-D CNN +6% / +11%, CIFAR-size
# +14% / +9%.


cdef enum:
    POOL_MAX = 0
    POOL_AVG = 1
    POOL_ADAPTIVE = 2
    POOL_LANES = 64         # outputs of a row pooled together (stack buffers)


cdef extern from *:
    """
    /* One window element (offset off) for n max-pool outputs whose windows start at base[i]: m, a
       hold each output's running maximum and its position; the first maximum wins and a NaN wins
       over numbers (PyTorch's rule). Selects over lanes (gathers), so the compiler vectorizes it
       however short the output rows are. */
    #define FASTNN_MAXPOS(T, NAME) __attribute__((noinline)) \
    static void NAME(const T* restrict x, const int* restrict base, int off, int n, T* restrict m, \
                     int* restrict a) { \
        for (int i = 0; i < n; i++) { \
            int q = base[i] + off; \
            T v = x[q], c = m[i]; \
            int u = (v > c) | ((v != v) & (c == c)); \
            m[i] = u ? v : c; \
            a[i] = u ? q : a[i]; } }
    FASTNN_MAXPOS(float, fastnn_maxpos_f)
    FASTNN_MAXPOS(double, fastnn_maxpos_d)

    static inline int fastnn_clip(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
    #if FNN_SMALL_GEMM == 1
    /* lane masks from smallgemm.pxi's fv_mask, for the pools and the narrow-row im2col/col2im below */
    static inline __mmask16 fastnn_lanes(int lo, int hi) {   /* lanes l with lo <= l < hi */
        return fv_mask(hi) & (__mmask16)~fv_mask(lo);
    }
    #elif FNN_SMALL_GEMM == 2
    static inline __m256i fastnn_lanes8(int lo, int hi) {  /* lanes l with lo <= l < hi */
        return _mm256_andnot_si256(fv_mask(lo), fv_mask(hi));
    }
    #endif

    /* AVX-512 and AVX2, float32: max pooling over windows of kh (1 or 2) rows x 2 columns, stride kh x 2,
       no padding (the common 2 x 2 pool, and 1-D pools of 2), 16 (8) outputs of a row at a time: each
       input row's even and odd columns split by permutes, the window's elements compared in
       row-major order under FASTNN_MAXPOS's rule, the argmax a position in the channel's plane.
       The general path's gathers cost LeNet-5's pools a tenth of its training time. */
    #if FNN_SMALL_GEMM == 1
    #define FASTNN_HAS_MAXPOOL2 1
    static inline void fastnn_max_step(__m512 v, __m512i q, __m512* m, __m512i* a) {
        __mmask16 u = _mm512_cmp_ps_mask(v, *m, _CMP_GT_OQ) |
                      (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(*m, *m, _CMP_ORD_Q));
        *m = _mm512_mask_blend_ps(u, *m, v);
        *a = _mm512_mask_blend_epi32(u, *a, q);
    }
    static void fastnn_maxpool2_f(const float* restrict x, float* restrict y, float* restrict arg, int C, int H,
                                  int W, int kh, int Ho, int Wo) {
        const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
        for (int c = 0; c < C; c++) for (int oh = 0; oh < Ho; oh++) {
            const float* r0 = x + ((Py_ssize_t)c * H + kh * oh) * W;
            float* yo = y + ((Py_ssize_t)c * Ho + oh) * Wo;
            float* ao = arg + ((Py_ssize_t)c * Ho + oh) * Wo;
            int p0 = kh * oh * W;
            for (int w0 = 0; w0 < Wo; w0 += 16) {
                int n = Wo - w0 < 16 ? Wo - w0 : 16;
                __mmask16 lo = fastnn_lanes(0, 2 * n), hi = fastnn_lanes(0, 2 * n - 16), out = fastnn_lanes(0, n);
                __m512i q = _mm512_add_epi32(_mm512_set1_epi32(p0 + 2 * w0), ev);
                __m512 a0 = _mm512_maskz_loadu_ps(lo, r0 + 2 * w0), b0 = _mm512_maskz_loadu_ps(hi, r0 + 2 * w0 + 16);
                __m512 m = _mm512_permutex2var_ps(a0, ev, b0);
                __m512i a = q;
                fastnn_max_step(_mm512_permutex2var_ps(a0, od, b0), _mm512_add_epi32(q, _mm512_set1_epi32(1)), &m, &a);
                if (kh == 2) {
                    const float* r1 = r0 + W;
                    __m512i q1 = _mm512_add_epi32(q, _mm512_set1_epi32(W));
                    __m512 a1 = _mm512_maskz_loadu_ps(lo, r1 + 2 * w0), b1 = _mm512_maskz_loadu_ps(hi, r1 + 2 * w0 + 16);
                    fastnn_max_step(_mm512_permutex2var_ps(a1, ev, b1), q1, &m, &a);
                    fastnn_max_step(_mm512_permutex2var_ps(a1, od, b1), _mm512_add_epi32(q1, _mm512_set1_epi32(1)),
                                    &m, &a);
                }
                _mm512_mask_storeu_ps(yo + w0, out, m);
                _mm512_mask_storeu_ps(ao + w0, out, _mm512_cvtepi32_ps(a));
            }
        }
    }
    #elif FNN_SMALL_GEMM == 2
    #define FASTNN_HAS_MAXPOOL2 1
    static inline void fastnn_max_step8(__m256 v, __m256i q, __m256* m, __m256i* a) {
        __m256 u = _mm256_or_ps(_mm256_cmp_ps(v, *m, _CMP_GT_OQ),
                                _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), _mm256_cmp_ps(*m, *m, _CMP_ORD_Q)));
        *m = _mm256_blendv_ps(*m, v, u);
        *a = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(*a), _mm256_castsi256_ps(q), u));
    }
    /* 16 consecutive floats -> their 8 even and 8 odd ones, in order */
    static inline void fastnn_evenodd8(const float* p, __m256i lo, __m256i hi, __m256* ev, __m256* od) {
        __m256 a = _mm256_maskload_ps(p, lo), b = _mm256_maskload_ps(p + 8, hi);
        *ev = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
        *od = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
    }
    static void fastnn_maxpool2_f(const float* restrict x, float* restrict y, float* restrict arg, int C, int H,
                                  int W, int kh, int Ho, int Wo) {
        const __m256i ev = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), one = _mm256_set1_epi32(1);
        for (int c = 0; c < C; c++) for (int oh = 0; oh < Ho; oh++) {
            const float* r0 = x + ((Py_ssize_t)c * H + kh * oh) * W;
            float* yo = y + ((Py_ssize_t)c * Ho + oh) * Wo;
            float* ao = arg + ((Py_ssize_t)c * Ho + oh) * Wo;
            int p0 = kh * oh * W;
            for (int w0 = 0; w0 < Wo; w0 += 8) {
                int n = Wo - w0 < 8 ? Wo - w0 : 8;
                __m256i lo = fastnn_lanes8(0, 2 * n), hi = fastnn_lanes8(0, 2 * n - 8);
                __m256i q = _mm256_add_epi32(_mm256_set1_epi32(p0 + 2 * w0), ev), a = q;
                __m256 m, v;
                fastnn_evenodd8(r0 + 2 * w0, lo, hi, &m, &v);
                fastnn_max_step8(v, _mm256_add_epi32(q, one), &m, &a);
                if (kh == 2) {
                    __m256 e1, o1;
                    __m256i q1 = _mm256_add_epi32(q, _mm256_set1_epi32(W));
                    fastnn_evenodd8(r0 + W + 2 * w0, lo, hi, &e1, &o1);
                    fastnn_max_step8(e1, q1, &m, &a);
                    fastnn_max_step8(o1, _mm256_add_epi32(q1, one), &m, &a);
                }
                if (n == 8) {
                    _mm256_storeu_ps(yo + w0, m);
                    _mm256_storeu_ps(ao + w0, _mm256_cvtepi32_ps(a));
                } else {
                    __m256i out = fastnn_lanes8(0, n);
                    _mm256_maskstore_ps(yo + w0, out, m);
                    _mm256_maskstore_ps(ao + w0, out, _mm256_cvtepi32_ps(a));
                }
            }
        }
    }
    #else
    #define FASTNN_HAS_MAXPOOL2 0
    static void fastnn_maxpool2_f(const float* x, float* y, float* arg, int C, int H, int W, int kh, int Ho,
                                  int Wo) { }
    #endif

    /* im2col and col2im for stride 1 and no dilation where an output row is shorter than an input
       row (no 'same' padding: LeNet-5's 14 -> 10). Short rows cost the general loops more in
       bookkeeping than in moves (skipped, im2col and col2im were a third of LeNet-5's training).
       Here im2col moves each row as masked vector loads and stores, and col2im sums each input
       row's contributions in a row of accumulators first (kernel row i, then column j, in order)
       and adds the row to dx once; with AVX-512 or AVX2 in registers, the same adds lane by lane (a
       lane outside a row adds +0.0 to a sum that starts at +0.0: no change), so every build gives
       the same bits. FASTNN_S1_MAX_W: the widest input row col2im takes this way. */
    #define FASTNN_S1_MAX_W 64
    #define FASTNN_IM2COL_S1(T, NAME, SIMD) \
    static void NAME(const T* restrict x, T* restrict col, Py_ssize_t ld, int H, int W, int kh, int kw, \
                     int ph, int pw, int Ho, int Wo, int nc) { \
        for (int c = 0; c < nc; c++) for (int i = 0; i < kh; i++) for (int j = 0; j < kw; j++) { \
            T* dst = col + ((Py_ssize_t)(c * kh + i) * kw + j) * ld; \
            int off = j - pw, lo = fastnn_clip(-off, 0, Wo), hi = fastnn_clip(W - off, lo, Wo); \
            for (int oh = 0; oh < Ho; oh++) { \
                int ih = oh - ph + i; \
                T* d = dst + (Py_ssize_t)oh * Wo; \
                if (ih < 0 || ih >= H) { for (int w = 0; w < Wo; w++) d[w] = 0; continue; } \
                const T* s = x + ((Py_ssize_t)c * H + ih) * W + off; \
                if (SIMD) { FASTNN_IM2COL_ROW } \
                else { for (int w = 0; w < lo; w++) d[w] = 0; \
                       for (int w = lo; w < hi; w++) d[w] = s[w]; \
                       for (int w = hi; w < Wo; w++) d[w] = 0; } } } }
    #define FASTNN_COL2IM_S1(T, NAME, SIMD) \
    static void NAME(const T* restrict col, Py_ssize_t ld, T* restrict dx, int H, int W, int kh, int kw, \
                     int ph, int pw, int Ho, int Wo, int nc) { \
        T acc[FASTNN_S1_MAX_W]; \
        for (int c = 0; c < nc; c++) for (int ih = 0; ih < H; ih++) { \
            if (SIMD) { FASTNN_COL2IM_ROW } \
            else { \
                for (int w = 0; w < W; w++) acc[w] = 0; \
                for (int i = 0; i < kh; i++) { \
                    int oh = ih + ph - i; \
                    if (oh < 0 || oh >= Ho) continue; \
                    for (int j = 0; j < kw; j++) { \
                        int off = j - pw, a = fastnn_clip(off, 0, W), b = fastnn_clip(Wo + off, a, W); \
                        const T* s = col + ((Py_ssize_t)(c * kh + i) * kw + j) * ld + (Py_ssize_t)oh * Wo - off; \
                        for (int w = a; w < b; w++) acc[w] += s[w]; } } \
                T* d = dx + ((Py_ssize_t)c * H + ih) * W; \
                for (int w = 0; w < W; w++) d[w] += acc[w]; } } }
    #if FNN_SMALL_GEMM == 1
    /* one output row in 16-lane pieces: lanes [lo, hi) from the input, the rest of [0, Wo) zero */
    #define FASTNN_IM2COL_ROW \
        for (int w0 = 0; w0 < Wo; w0 += 16) \
            _mm512_mask_storeu_ps(d + w0, fastnn_lanes(0, Wo - w0), \
                                  _mm512_maskz_loadu_ps(fastnn_lanes(lo - w0, hi - w0), s + w0));
    /* one input row: up to 4 vectors of sums; a vector lane w takes column w - off of row oh */
    #define FASTNN_COL2IM_ROW \
        __m512 v[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()}; \
        int nv = (W + 15) / 16; \
        for (int i = 0; i < kh; i++) { \
            int oh = ih + ph - i; \
            if (oh < 0 || oh >= Ho) continue; \
            for (int j = 0; j < kw; j++) { \
                int off = j - pw, a = fastnn_clip(off, 0, W), b = fastnn_clip(Wo + off, a, W); \
                const float* s = col + ((Py_ssize_t)(c * kh + i) * kw + j) * ld + (Py_ssize_t)oh * Wo - off; \
                for (int q = 0; q < nv; q++) \
                    v[q] = _mm512_add_ps(v[q], _mm512_maskz_loadu_ps(fastnn_lanes(a - 16 * q, b - 16 * q), s + 16 * q)); } } \
        float* d = dx + ((Py_ssize_t)c * H + ih) * W; \
        for (int q = 0; q < nv; q++) { \
            __mmask16 m = fastnn_lanes(0, W - 16 * q); \
            _mm512_mask_storeu_ps(d + 16 * q, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, d + 16 * q), v[q])); }
    #elif FNN_SMALL_GEMM == 2
    /* AVX2's masked stores are slow (microcoded on AMD): whole vectors, a row's last piece running
       into the next row (written after it) unless it is the block's last row */
    #define FASTNN_IM2COL_ROW \
        for (int w0 = 0; w0 < Wo; w0 += 8) { \
            __m256 v = _mm256_maskload_ps(s + w0, fastnn_lanes8(lo - w0, hi - w0)); \
            if (w0 + 8 <= Wo || (oh + 1 < Ho && Wo >= 8)) _mm256_storeu_ps(d + w0, v); \
            else _mm256_maskstore_ps(d + w0, fastnn_lanes8(0, Wo - w0), v); }
    #define FASTNN_COL2IM_ROW \
        __m256 v[8]; \
        int nv = (W + 7) / 8; \
        for (int q = 0; q < 8; q++) v[q] = _mm256_setzero_ps(); \
        for (int i = 0; i < kh; i++) { \
            int oh = ih + ph - i; \
            if (oh < 0 || oh >= Ho) continue; \
            for (int j = 0; j < kw; j++) { \
                int off = j - pw, a = fastnn_clip(off, 0, W), b = fastnn_clip(Wo + off, a, W); \
                const float* s = col + ((Py_ssize_t)(c * kh + i) * kw + j) * ld + (Py_ssize_t)oh * Wo - off; \
                for (int q = 0; q < nv; q++) \
                    v[q] = _mm256_add_ps(v[q], _mm256_maskload_ps(s + 8 * q, fastnn_lanes8(a - 8 * q, b - 8 * q))); } } \
        float* d = dx + ((Py_ssize_t)c * H + ih) * W; \
        for (int q = 0; q < nv; q++) { \
            if (8 * q + 8 <= W) _mm256_storeu_ps(d + 8 * q, _mm256_add_ps(_mm256_loadu_ps(d + 8 * q), v[q])); \
            else { __m256i m = fastnn_lanes8(0, W - 8 * q); \
                   _mm256_maskstore_ps(d + 8 * q, m, _mm256_add_ps(_mm256_maskload_ps(d + 8 * q, m), v[q])); } }
    #endif
    #if FNN_SMALL_GEMM
    FASTNN_IM2COL_S1(float, fastnn_im2col_s1_f, 1)
    FASTNN_COL2IM_S1(float, fastnn_col2im_s1_f, 1)
    #undef FASTNN_IM2COL_ROW
    #undef FASTNN_COL2IM_ROW
    #endif
    #define FASTNN_IM2COL_ROW
    #define FASTNN_COL2IM_ROW
    #if !FNN_SMALL_GEMM
    FASTNN_IM2COL_S1(float, fastnn_im2col_s1_f, 0)
    FASTNN_COL2IM_S1(float, fastnn_col2im_s1_f, 0)
    #endif
    FASTNN_IM2COL_S1(double, fastnn_im2col_s1_d, 0)
    FASTNN_COL2IM_S1(double, fastnn_col2im_s1_d, 0)
    """
    int FASTNN_S1_MAX_W
    void fastnn_im2col_s1_f(const float* x, float* col, Py_ssize_t ld, int H, int W, int kh, int kw, int ph, int pw,
                            int Ho, int Wo, int nc) noexcept nogil
    void fastnn_im2col_s1_d(const double* x, double* col, Py_ssize_t ld, int H, int W, int kh, int kw, int ph,
                            int pw, int Ho, int Wo, int nc) noexcept nogil
    void fastnn_col2im_s1_f(const float* col, Py_ssize_t ld, float* dx, int H, int W, int kh, int kw, int ph, int pw,
                            int Ho, int Wo, int nc) noexcept nogil
    void fastnn_col2im_s1_d(const double* col, Py_ssize_t ld, double* dx, int H, int W, int kh, int kw, int ph,
                            int pw, int Ho, int Wo, int nc) noexcept nogil
    void fastnn_maxpos_f(const float* x, const int* base, int off, int n, float* m, int* a) noexcept nogil
    void fastnn_maxpos_d(const double* x, const int* base, int off, int n, double* m, int* a) noexcept nogil
    bint FASTNN_HAS_MAXPOOL2
    void fastnn_maxpool2_f(const float* x, float* y, float* arg, int C, int H, int W, int kh, int Ho, int Wo) noexcept nogil


cdef inline void valid_range(Py_ssize_t n_out, Py_ssize_t size, Py_ssize_t stride, Py_ssize_t off,
                             Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """Outputs o in [lo, hi) read input o*stride + off inside [0, size)."""
    cdef Py_ssize_t a = 0, b = n_out
    if off < 0:
        a = (-off + stride - 1) // stride
    if (n_out - 1) * stride + off >= size:
        b = (size - 1 - off) // stride + 1 if size - 1 - off >= 0 else 0
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b


cdef void im2col(floating* x, floating* col, Py_ssize_t ld, Py_ssize_t* g, Py_ssize_t c0,
                 Py_ssize_t nc) noexcept nogil:
    """col[((c*kh + i)*kw + j) * ld + oh*Wout + ow] = x[c0 + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw]
    (0 outside)."""
    cdef Py_ssize_t H = g[1], W = g[2], kh = g[4], kw = g[5], sh = g[6], sw = g[7], ph = g[8], pw = g[9]
    cdef Py_ssize_t dh = g[10], dw = g[11], Ho = g[13], Wo = g[14], L = Ho * Wo
    cdef Py_ssize_t c, i, j, oh, ow, ih, w_lo, w_hi, off
    cdef floating* xc
    cdef floating* dst
    cdef floating* src
    cdef Py_ssize_t h_lo, h_hi, t0, t1
    cdef bint flat = sh == 1 and sw == 1 and Wo == W
    if sh == 1 and sw == 1 and dh == 1 and dw == 1 and not flat:
        if floating is float:
            fastnn_im2col_s1_f(x + c0 * H * W, col, ld, <int>H, <int>W, <int>kh, <int>kw, <int>ph, <int>pw,
                               <int>Ho, <int>Wo, <int>nc)
        else:
            fastnn_im2col_s1_d(x + c0 * H * W, col, ld, <int>H, <int>W, <int>kh, <int>kw, <int>ph, <int>pw,
                               <int>Ho, <int>Wo, <int>nc)
        return
    for c in range(nc):
        xc = x + (c0 + c) * H * W
        for i in range(kh):
            for j in range(kw):
                dst = col + ((c * kh + i) * kw + j) * ld
                off = j * dw - pw
                valid_range(Wo, W, sw, off, &w_lo, &w_hi)
                if flat:
                    # a 'same'-width stride-1 row block is one shifted run of the input plane:
                    # copy it whole (the few positions it wraps into are padding, zeroed after)
                    valid_range(Ho, H, 1, i * dh - ph, &h_lo, &h_hi)
                    if h_lo >= h_hi or w_lo >= w_hi:
                        memset(dst, 0, L * sizeof(floating))
                        continue
                    t0 = h_lo * W + w_lo
                    t1 = (h_hi - 1) * W + w_hi
                    off = (i * dh - ph) * W + off
                    if t0 > 0:      # no call for nothing: a 3x3 'same' layer has 18 edges a channel
                        memset(dst, 0, t0 * sizeof(floating))
                    for ow in range(t0, t1):
                        dst[ow] = xc[ow + off]
                    if t1 < L:
                        memset(dst + t1, 0, (L - t1) * sizeof(floating))
                    for oh in range(h_lo, h_hi):
                        for ow in range(w_lo):
                            dst[oh * Wo + ow] = 0
                        for ow in range(w_hi, Wo):
                            dst[oh * Wo + ow] = 0
                    continue
                for oh in range(Ho):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        memset(dst + oh * Wo, 0, Wo * sizeof(floating))
                        continue
                    src = xc + ih * W + off
                    for ow in range(w_lo):
                        dst[oh * Wo + ow] = 0
                    if sw == 1:         # rows are short: a loop, not a memcpy call
                        for ow in range(w_lo, w_hi):
                            dst[oh * Wo + ow] = src[ow]
                    else:
                        for ow in range(w_lo, w_hi):
                            dst[oh * Wo + ow] = src[ow * sw]
                    for ow in range(w_hi, Wo):
                        dst[oh * Wo + ow] = 0


cdef void col2im_add(floating* col, Py_ssize_t ld, floating* dx, Py_ssize_t* g, Py_ssize_t c0,
                     Py_ssize_t nc) noexcept nogil:
    """dx[c0 + c, ...] += the entries of col that im2col read from there."""
    cdef Py_ssize_t H = g[1], W = g[2], kh = g[4], kw = g[5], sh = g[6], sw = g[7], ph = g[8], pw = g[9]
    cdef Py_ssize_t dh = g[10], dw = g[11], Ho = g[13], Wo = g[14], L = Ho * Wo
    cdef Py_ssize_t c, i, j, oh, ow, ih, w_lo, w_hi, off
    cdef floating* dxc
    cdef floating* src
    cdef floating* dst
    cdef Py_ssize_t h_lo, h_hi, t0, t1
    cdef bint flat = sh == 1 and sw == 1 and Wo == W
    if sh == 1 and sw == 1 and dh == 1 and dw == 1 and not flat and W <= FASTNN_S1_MAX_W:
        if floating is float:
            fastnn_col2im_s1_f(col, ld, dx + c0 * H * W, <int>H, <int>W, <int>kh, <int>kw, <int>ph, <int>pw,
                               <int>Ho, <int>Wo, <int>nc)
        else:
            fastnn_col2im_s1_d(col, ld, dx + c0 * H * W, <int>H, <int>W, <int>kh, <int>kw, <int>ph, <int>pw,
                               <int>Ho, <int>Wo, <int>nc)
        return
    for c in range(nc):
        dxc = dx + (c0 + c) * H * W
        for i in range(kh):
            for j in range(kw):
                src = col + ((c * kh + i) * kw + j) * ld
                off = j * dw - pw
                valid_range(Wo, W, sw, off, &w_lo, &w_hi)
                if flat:
                    # as in im2col: one shifted run; the padding entries of the column delta (a
                    # scratch, read once) are zeroed first, so the run adds nothing where it wraps
                    valid_range(Ho, H, 1, i * dh - ph, &h_lo, &h_hi)
                    if h_lo >= h_hi or w_lo >= w_hi:
                        continue
                    for oh in range(h_lo, h_hi):
                        for ow in range(w_lo):
                            src[oh * Wo + ow] = 0
                        for ow in range(w_hi, Wo):
                            src[oh * Wo + ow] = 0
                    t0 = h_lo * W + w_lo
                    t1 = (h_hi - 1) * W + w_hi
                    off = (i * dh - ph) * W + off
                    for ow in range(t0, t1):
                        dxc[ow + off] = dxc[ow + off] + src[ow]
                    continue
                for oh in range(Ho):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    dst = dxc + ih * W + off
                    if sw == 1:
                        for ow in range(w_lo, w_hi):
                            dst[ow] = dst[ow] + src[oh * Wo + ow]
                    else:
                        for ow in range(w_lo, w_hi):
                            dst[ow * sw] = dst[ow * sw] + src[oh * Wo + ow]


cdef void conv_forward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c,
                       floating* tmp) noexcept nogil:
    """Rows [r0, r0+c), a sub-block of examples at a time: out[e, co, l] = sum_k W[co, k] col[k, (e, l)]
    + bias[co], one GEMM per group into ``tmp`` (out channels x the sub-block's positions)."""
    cdef Py_ssize_t* g = o.g
    cdef Py_ssize_t G = g[12], Cg = g[0] // G, Og = g[3] // G, K = Cg * g[4] * g[5], L = g[13] * g[14]
    cdef Py_ssize_t j0 = 0, nb, e0, M, gi, j, co, l
    cdef floating* colg
    cdef floating* out
    cdef floating* src
    cdef floating* dst
    cdef floating b
    cdef bint direct
    while j0 < c:
        nb = c - j0 if c - j0 < o.sub else o.sub
        e0 = r0 + j0
        M = nb * L
        # one example's group output (Og x L) is laid out as the product's: the product goes there
        # and the bias is added in place, with no pass through ``tmp``
        direct = nb == 1 and not (floating is float and o.prec == PREC_BF16)
        for gi in range(G):
            colg = Wk + o.s_e + e0 * G * K * L + gi * K * M
            dst = (Wk + o.a_e + e0 * o.n_out + gi * Og * L) if direct else tmp
            if floating is float and o.prec == PREC_BF16:
                colg = tmp + Og * M     # into the scratch: the op keeps a bfloat16 copy instead
            for j in range(nb):
                im2col(Wk + o.in_e + (e0 + j) * o.n_in, colg + j * L, M, g, gi * Cg, Cg)
            if floating is float and o.prec == PREC_BF16:
                fnn_count_conv(FNN_BF16P, FNN_FWD)
                bf16_conv_forward(o, Wk, colg, M, gi, e0, tmp)
            elif floating is float and FNN_SMALL_GEMM and Og >= FNN_CONV_OWN_MIN_OUT:
                fnn_count_conv(FNN_OWN, FNN_FWD)
                fnn_sgemm_bc(Og, M, K, P + o.w_off + gi * Og * K, K, 1, colg, M, dst, M, 0)
            else:
                fnn_count_conv(FNN_BLAS, FNN_FWD)
                gemm(c'N', c'N', <int>M, <int>Og, <int>K, <floating>1, colg, <int>M, P + o.w_off + gi * Og * K,
                     <int>K, <floating>0, dst, <int>M)
            for j in range(nb):
                for co in range(Og):
                    out = Wk + o.a_e + (e0 + j) * o.n_out + (gi * Og + co) * L
                    src = dst + co * M + j * L
                    b = P[o.b_off + gi * Og + co] if o.b_off >= 0 else 0
                    if direct and o.b_off < 0:
                        continue
                    for l in range(L):
                        out[l] = src[l] + b
        j0 += nb


cdef void conv_backward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c,
                        floating* scratch) noexcept nogil:
    """Rows [r0, r0+c), a sub-block at a time: the sub-block's filter and bias gradient (into the
    partial block at its first row) and, when the input needs it, dcol = W^T dout per group, col2im
    into the input delta. ``scratch``: the delta gathered from a sub-block of several examples, then
    the column delta."""
    cdef Py_ssize_t* g = o.g
    cdef Py_ssize_t G = g[12], Cg = g[0] // G, Og = g[3] // G, K = Cg * g[4] * g[5], L = g[13] * g[14]
    cdef Py_ssize_t Cout = g[3], j0 = 0, nb, e0, M, gi, j, co
    cdef floating* colg
    cdef floating* part
    cdef floating* dx
    cdef floating* dcol
    cdef floating* dout
    cdef double s
    cdef bint bf16
    while j0 < c:
        nb = c - j0 if c - j0 < o.sub else o.sub
        e0 = r0 + j0
        M = nb * L
        part = Wk + o.p_e + e0 * (Cout * K + Cout)
        bf16 = floating is float and o.prec == PREC_BF16
        if o.din_e >= 0 and not o.din_acc:
            memset(Wk + o.din_e + e0 * o.n_in, 0, nb * o.n_in * sizeof(floating))
        for gi in range(G):
            colg = Wk + o.s_e + e0 * G * K * L + gi * K * M
            if nb == 1 and not bf16:
                # one example's group delta (Og x L) is already the products' operand: read in place
                dout = Wk + o.d_e + e0 * o.n_out + gi * Og * L
            else:
                dout = scratch
                for co in range(Og):
                    for j in range(nb):
                        memcpy(scratch + co * M + j * L, Wk + o.d_e + (e0 + j) * o.n_out + (gi * Og + co) * L,
                               L * sizeof(floating))
            # partial[co, k] = sum over the sub-block's positions of dout[co, .] col[k, .]
            if floating is float and o.prec == PREC_BF16:
                fnn_count_conv(FNN_BF16P, FNN_WGRAD)
                bf16_conv_filter_grad(o, Wk, M, gi, e0, scratch, part + gi * Og * K)
            elif floating is float and FNN_SMALL_GEMM:
                fnn_count_conv(FNN_OWN, FNN_WGRAD)
                fnn_sgemm_fwd(Og, K, M, dout, M, colg, M, part + gi * Og * K, K)
            else:
                fnn_count_conv(FNN_BLAS, FNN_WGRAD)
                gemm(c'T', c'N', <int>K, <int>Og, <int>M, <floating>1, colg, <int>M, dout, <int>M,
                     <floating>0, part + gi * Og * K, <int>K)
            if o.b_off >= 0:
                for co in range(Og):
                    s = 0
                    red_sum(dout + co * M, M, &s)
                    part[Cout * K + gi * Og + co] = <floating>s
            if o.din_e >= 0:
                dcol = scratch + Og * M
                if floating is float and o.prec == PREC_BF16:
                    fnn_count_conv(FNN_BF16P, FNN_DIN)
                    bf16_conv_col_delta(o, Wk, scratch, M, gi, dcol)
                elif floating is float and Og < FNN_CONV_DCOL_MAX_OUT:
                    fnn_count_conv(FNN_OWN, FNN_DIN)
                    fnn_sgemm_bc(K, M, Og, P + o.w_off + gi * Og * K, 1, K, dout, M, dcol, M, 0)
                else:
                    fnn_count_conv(FNN_BLAS, FNN_DIN)
                    gemm(c'N', c'T', <int>M, <int>K, <int>Og, <floating>1, dout, <int>M,
                         P + o.w_off + gi * Og * K, <int>K, <floating>0, dcol, <int>M)
                for j in range(nb):
                    col2im_add(dcol + j * L, M, Wk + o.din_e + (e0 + j) * o.n_in, g, gi * Cg, Cg)
        j0 += nb


cdef void conv_grad(Op* o, Tile* T, floating* Wk, floating* G_, Py_ssize_t B, Py_ssize_t chunk) noexcept nogil:
    """Filters [r0, r0+nr) (one group): the sum of the sub-blocks' partial gradients in batch order
    (chunks of ``chunk`` rows, each in sub-blocks of ``o.sub``)."""
    cdef Py_ssize_t* g = o.g
    cdef Py_ssize_t K = (g[0] // g[12]) * g[4] * g[5], Cout = g[3], pw = Cout * K + Cout
    cdef Py_ssize_t ci = 0, cc, j0, i, n = T.nr * K
    cdef floating* dw = G_ + o.w_off + T.r0 * K
    cdef floating* db = G_ + o.b_off + T.r0
    cdef floating* part
    cdef bint first = True
    while ci < B:
        cc = B - ci if B - ci < chunk else chunk
        j0 = 0
        while j0 < cc:
            part = Wk + o.p_e + (ci + j0) * pw
            if first:
                memcpy(dw, part + T.r0 * K, n * sizeof(floating))
                if o.b_off >= 0:
                    memcpy(db, part + Cout * K + T.r0, T.nr * sizeof(floating))
                first = False
            else:
                for i in range(n):
                    dw[i] = dw[i] + part[T.r0 * K + i]
                if o.b_off >= 0:
                    for i in range(T.nr):
                        db[i] = db[i] + part[Cout * K + T.r0 + i]
            j0 += o.sub
        ci += chunk


cdef inline void pool_window(Py_ssize_t* g, Py_ssize_t oh, Py_ssize_t ow, Py_ssize_t* h0, Py_ssize_t* h1,
                             Py_ssize_t* w0, Py_ssize_t* w1) noexcept nogil:
    """Input rows [h0, h1) and columns [w0, w1) of output (oh, ow), clipped to the input."""
    cdef Py_ssize_t H = g[1], W = g[2], Ho = g[13], Wo = g[14]
    if g[15] == POOL_ADAPTIVE:          # torch: floor(i In / Out) .. ceil((i + 1) In / Out)
        h0[0] = (oh * H) // Ho
        h1[0] = ((oh + 1) * H + Ho - 1) // Ho
        w0[0] = (ow * W) // Wo
        w1[0] = ((ow + 1) * W + Wo - 1) // Wo
        return
    h0[0] = oh * g[6] - g[8]
    w0[0] = ow * g[7] - g[9]
    h1[0] = h0[0] + g[4]
    w1[0] = w0[0] + g[5]


cdef void pool_forward(Op* o, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c): max (first maximum; NaN wins, as in PyTorch) or mean over each window.
    Max also records each output's argmax in the op's column block, for backward."""
    cdef Py_ssize_t* g = o.g
    cdef Py_ssize_t C = g[0], H = g[1], W = g[2], Ho = g[13], Wo = g[14]
    cdef Py_ssize_t e, ch, oh, ow, h0, h1, w0, w1, a0, a1, b0, b1, ih, iw, cnt, am
    cdef floating* x
    cdef floating* y
    cdef floating* arg
    cdef floating m, v
    cdef double s
    cdef Py_ssize_t kh = g[4], kw = g[5], sh = g[6], sw = g[7], base, q
    cdef bint inside = g[15] == POOL_MAX and g[8] == 0 and g[9] == 0
    cdef int u
    cdef Py_ssize_t o0, nw, n_o, i
    cdef floating mb[POOL_LANES]
    cdef int ab[POOL_LANES]
    cdef int bb[POOL_LANES]
    cdef int pb[POOL_LANES]
    if (floating is float and FASTNN_HAS_MAXPOOL2 and inside and kw == 2 and sw == 2 and kh == sh
            and (kh == 1 or kh == 2)):
        for e in range(r0, r0 + c):
            fastnn_maxpool2_f(Wk + o.in_e + e * o.n_in, Wk + o.a_e + e * o.n_out, Wk + o.s_e + e * o.n_out,
                              <int>C, <int>H, <int>W, <int>kh, <int>Ho, <int>Wo)
        return
    for e in range(r0, r0 + c):
        if inside:          # no padding: every window lies inside the input
            # the example's outputs (channel, row, column) in blocks of POOL_LANES lanes; each window
            # element in row-major order over a block: the comparisons of one window at a time
            x = Wk + o.in_e + e * o.n_in
            y = Wk + o.a_e + e * o.n_out
            arg = Wk + o.s_e + e * o.n_out
            n_o = C * Ho * Wo
            ch = oh = ow = 0
            o0 = 0
            while o0 < n_o:
                nw = n_o - o0 if n_o - o0 < POOL_LANES else POOL_LANES
                for i in range(nw):
                    pb[i] = <int>(ch * H * W)
                    bb[i] = <int>(ch * H * W + oh * sh * W + ow * sw)
                    mb[i] = x[bb[i]]
                    ab[i] = bb[i]
                    ow += 1
                    if ow == Wo:
                        ow = 0
                        oh += 1
                        if oh == Ho:
                            oh = 0
                            ch += 1
                for ih in range(kh):
                    for iw in range(kw):
                        if ih == 0 and iw == 0:
                            continue
                        if floating is float:
                            fastnn_maxpos_f(x, bb, <int>(ih * W + iw), <int>nw, mb, ab)
                        else:
                            fastnn_maxpos_d(x, bb, <int>(ih * W + iw), <int>nw, mb, ab)
                for i in range(nw):
                    y[o0 + i] = mb[i]
                    arg[o0 + i] = <floating>(ab[i] - pb[i])
                o0 += nw
            continue
        for ch in range(C):
            x = Wk + o.in_e + e * o.n_in + ch * H * W
            y = Wk + o.a_e + e * o.n_out + ch * Ho * Wo
            arg = Wk + o.s_e + e * o.n_out + ch * Ho * Wo
            for oh in range(Ho):
                for ow in range(Wo):
                    pool_window(g, oh, ow, &h0, &h1, &w0, &w1)
                    a0 = h0 if h0 > 0 else 0
                    a1 = h1 if h1 < H else H
                    b0 = w0 if w0 > 0 else 0
                    b1 = w1 if w1 < W else W
                    if g[15] == POOL_MAX:
                        am = a0 * W + b0
                        m = x[am]
                        for ih in range(a0, a1):
                            for iw in range(b0, b1):
                                v = x[ih * W + iw]
                                if v > m or (v != v and m == m):
                                    m = v
                                    am = ih * W + iw
                        y[oh * Wo + ow] = m
                        arg[oh * Wo + ow] = <floating>am
                    else:
                        s = 0
                        for ih in range(a0, a1):
                            for iw in range(b0, b1):
                                s += x[ih * W + iw]
                        # avg with count_include_pad counts the padded window, clipped at the far
                        # edge beyond the padding (torch's rule); otherwise the inputs seen
                        if g[15] == POOL_AVG and g[16]:
                            cnt = ((h1 if h1 < H + g[8] else H + g[8]) - h0) * ((w1 if w1 < W + g[9] else W + g[9]) - w0)
                        else:
                            cnt = (a1 - a0) * (b1 - b0)
                        y[oh * Wo + ow] = <floating>(s / cnt)


cdef void pool_backward(Op* o, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """The input delta (=|+=): max routes each output's delta to its recorded argmax, avg spreads
    it evenly over the window."""
    if o.din_e < 0:
        return
    cdef Py_ssize_t* g = o.g
    cdef Py_ssize_t C = g[0], H = g[1], W = g[2], Ho = g[13], Wo = g[14], HW = H * W
    cdef Py_ssize_t e, ch, oh, ow, h0, h1, w0, w1, a0, a1, b0, b1, ih, iw, cnt, i, q
    cdef floating* dy
    cdef floating* dx
    cdef floating* arg
    cdef floating d
    # max windows that tile the input (no padding, stride = size): each band of windows' input rows
    # is zeroed just before its deltas land, while it is in L1, not in a pass over the whole input
    cdef Py_ssize_t kh = g[4], kw = g[5], band = g[4] * W, r
    cdef bint tiles = (g[15] == POOL_MAX and not o.din_acc and g[8] == 0 and g[9] == 0 and g[6] == kh
                       and g[7] == kw and Ho * kh == H and Wo * kw == W)
    for e in range(r0, r0 + c):
        dx = Wk + o.din_e + e * o.n_in
        dy = Wk + o.d_e + e * o.n_out
        if tiles:
            arg = Wk + o.s_e + e * o.n_out
            for ch in range(C):
                for oh in range(Ho):
                    r = ch * HW + oh * band
                    for i in range(r, r + band):
                        dx[i] = 0
                    for q in range(ch * Ho * Wo + oh * Wo, ch * Ho * Wo + oh * Wo + Wo):
                        i = ch * HW + <Py_ssize_t>arg[q]
                        dx[i] = dx[i] + dy[q]
            continue
        if not o.din_acc:
            for i in range(o.n_in):
                dx[i] = 0
        if g[15] == POOL_MAX:
            arg = Wk + o.s_e + e * o.n_out
            for ch in range(C):
                for q in range(Ho * Wo):
                    i = ch * HW + <Py_ssize_t>arg[ch * Ho * Wo + q]
                    dx[i] = dx[i] + dy[ch * Ho * Wo + q]
            continue
        for ch in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    pool_window(g, oh, ow, &h0, &h1, &w0, &w1)
                    a0 = h0 if h0 > 0 else 0
                    a1 = h1 if h1 < H else H
                    b0 = w0 if w0 > 0 else 0
                    b1 = w1 if w1 < W else W
                    if g[15] == POOL_AVG and g[16]:
                        cnt = ((h1 if h1 < H + g[8] else H + g[8]) - h0) * ((w1 if w1 < W + g[9] else W + g[9]) - w0)
                    else:
                        cnt = (a1 - a0) * (b1 - b0)
                    d = dy[ch * Ho * Wo + oh * Wo + ow] / cnt
                    for ih in range(a0, a1):
                        for iw in range(b0, b1):
                            dx[ch * HW + ih * W + iw] = dx[ch * HW + ih * W + iw] + d
