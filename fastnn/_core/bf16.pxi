# bfloat16 products with float32 accumulation (precision="bf16-mixed").
#
# What is rounded: the operands of the products (a Dense layer's input rows, its weights and its
# output delta; a convolution's columns, filters and deltas; a recurrent layer's [x_t, h_{t-1}],
# weights and gate deltas) are rounded to bfloat16, round to nearest even, as the hardware
# conversion does it (VCVTNEPS2BF16: NaN stays NaN, float32 denormals become zero). The product of
# two bfloat16 numbers is exact in float32, and every sum runs in float32 in a fixed order. Master
# weights, optimizer state, the loss, activations, norms and every other sum stay float32.
#
# One layout for every kernel: a product C (=|+=) A B reads A as bfloat16 rows (K contiguous) and B
# as "VNNI" panels of 16 columns, each K/2 rows of 16 pairs (B[2p][n], B[2p+1][n]), K padded with
# zeros to a multiple of 32. Three kernels read it, chosen once per process (bf16_use):
# - "amx": AMX tiles (TDPBF16PS), 2 x 2 tiles of 16 x 16 float32 sums at a time, K in blocks of
#   FNN_AMX_KB; needs the CPU's AMX-BF16 and the kernel's permission (arch_prctl, asked once);
# - "avx512bf16": VDPBF16PS, 6 rows x 64 columns at a time;
# - "emulate": portable C, the arithmetic of VDPBF16PS (each lane adds the odd product, then the
#   even one, in float32), so it gives the avx512bf16 kernel's bits (denormal results aside).
# The AMX and AVX512-BF16 code is compiled into the x86-64-v4 build only, under target attributes,
# and runs only where CPUID (and the OS) report the units. Every entry of C is one chain over K in
# order, whatever the blocking over rows and columns, so results do not depend on the thread count;
# AMX's own order of additions inside a tile differs from VDPBF16PS's (see docs/guide/mixed-precision.md).

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    typedef uint16_t fnn_u16;

    /* float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN, zero and denormals become
       a signed zero (VCVTNEPS2BF16's rule). Branch-free, so loops over it vectorize. */
    static inline fnn_u16 fnn_bf16(float x) {
        uint32_t u, r, nan, z;
        memcpy(&u, &x, 4);
        r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        nan = (u >> 16) | 0x40u;
        z = (u >> 16) & 0x8000u;
        r = ((u & 0x7fffffffu) > 0x7f800000u) ? nan : r;
        r = ((u & 0x7f800000u) == 0) ? z : r;
        return (fnn_u16)r;
    }
    static inline float fnn_f32(fnn_u16 b) {
        uint32_t u = (uint32_t)b << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }

    #if defined(__AVX512F__) && defined(__GNUC__) && defined(__x86_64__)
    #define FNN_BF16_V 1
    #include <immintrin.h>
    /* fnn_bf16 of 16 floats, each result in the low half of its 32-bit lane */
    static inline __m512i fnn_bf16_v(__m512 x) {
        __m512i u = _mm512_castps_si512(x), h = _mm512_srli_epi32(u, 16);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                                       _mm512_and_si512(h, _mm512_set1_epi32(1))), 16);
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
        __mmask16 tiny = _mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7f800000));
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(h, _mm512_set1_epi32(0x40)));
        return _mm512_mask_mov_epi32(r, tiny, _mm512_and_si512(h, _mm512_set1_epi32(0x8000)));
    }
    /* 16 x 16 transpose of 32-bit lanes: r[i] lane j -> r[j] lane i */
    static inline void fnn_tr16i(__m512i* r) {
        __m512i t[16], u[16];
        int i;
        for (i = 0; i < 8; i++) {
            t[2*i] = _mm512_unpacklo_epi32(r[2*i], r[2*i+1]);
            t[2*i+1] = _mm512_unpackhi_epi32(r[2*i], r[2*i+1]);
        }
        for (i = 0; i < 4; i++) {
            u[4*i+0] = _mm512_unpacklo_epi64(t[4*i], t[4*i+2]);
            u[4*i+1] = _mm512_unpackhi_epi64(t[4*i], t[4*i+2]);
            u[4*i+2] = _mm512_unpacklo_epi64(t[4*i+1], t[4*i+3]);
            u[4*i+3] = _mm512_unpackhi_epi64(t[4*i+1], t[4*i+3]);
        }
        for (i = 0; i < 4; i++) {
            __m512i a = _mm512_shuffle_i32x4(u[i], u[4+i], 0x88), b = _mm512_shuffle_i32x4(u[i], u[4+i], 0xDD);
            __m512i c = _mm512_shuffle_i32x4(u[8+i], u[12+i], 0x88), d = _mm512_shuffle_i32x4(u[8+i], u[12+i], 0xDD);
            r[i] = _mm512_shuffle_i32x4(a, c, 0x88);
            r[8+i] = _mm512_shuffle_i32x4(a, c, 0xDD);
            r[4+i] = _mm512_shuffle_i32x4(b, d, 0x88);
            r[12+i] = _mm512_shuffle_i32x4(b, d, 0xDD);
        }
    }
    #else
    #define FNN_BF16_V 0
    #endif

    /* y[i ldy + j] = bf16(x[i ldx + j]) for j in [j0, j1), 0 for j in [j1, jp), rows i < m */
    static void fnn_bf16_rows(const float* x, Py_ssize_t ldx, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t j1,
                              Py_ssize_t jp, fnn_u16* y, Py_ssize_t ldy) {
        Py_ssize_t i, j;
        for (i = 0; i < m; i++) {
            const float* xr = x + i * ldx;
            fnn_u16* yr = y + i * ldy;
            for (j = j0; j < j1; j++) yr[j] = fnn_bf16(xr[j]);
            for (j = j1; j < jp; j++) yr[j] = 0;
        }
    }

    /* The VNNI panels of rows [i0, i0 + m) of y (i0 even): panel q, pair row p, column n holds
       (y[2p][16q + n], y[2p + 1][16q + n]) at v[q ps + 32 p + 2 n]; a missing odd partner (m odd) is
       0. Panels [q0, q1); y's rows must hold 16 q1 columns (zero-padded). */
    static void fnn_bf16_pairs(const fnn_u16* y, Py_ssize_t ldy, Py_ssize_t i0, Py_ssize_t m, Py_ssize_t q0,
                               Py_ssize_t q1, fnn_u16* v, Py_ssize_t ps) {
        Py_ssize_t i, q;
        int n;
        /* panel by panel, so the stores run through memory in order (panels are ps apart: a pair's
           stores to every panel in turn fall into one L1 set) */
        for (q = q0; q < q1; q++) {
            for (i = 0; i < m; i += 2) {
                const fnn_u16* e = y + i * ldy;
                const fnn_u16* o = e + ldy;
                int odd = i + 1 < m;
                fnn_u16* d = v + q * ps + ((i0 + i) / 2) * 32;
                const fnn_u16* eq = e + 16 * q;
                const fnn_u16* oq = o + 16 * q;
    #if FNN_BF16_V
                __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)eq));
                __m512i hi = odd ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)oq)) : _mm512_setzero_si512();
                _mm512_storeu_si512((void*)d, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
                (void)n;
    #else
                if (odd) { for (n = 0; n < 16; n++) { d[2 * n] = eq[n]; d[2 * n + 1] = oq[n]; } }
                else { for (n = 0; n < 16; n++) { d[2 * n] = eq[n]; d[2 * n + 1] = 0; } }
    #endif
            }
        }
    }

    /* Zero pair rows [p0, p1) of panels [q0, q1) */
    static void fnn_bf16_zero_pairs(fnn_u16* v, Py_ssize_t ps, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t q0,
                                    Py_ssize_t q1) {
        Py_ssize_t q;
        if (p1 > p0)
            for (q = q0; q < q1; q++) memset(v + q * ps + 32 * p0, 0, (size_t)(p1 - p0) * 64);
    }

    /* t[j ldt + i] = bf16(x[i ldx + j]) for rows i < m, j in [j0, j1): a block of the transpose */
    static void fnn_bf16_trans(const float* x, Py_ssize_t ldx, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t j1,
                               fnn_u16* t, Py_ssize_t ldt) {
        Py_ssize_t i0, jb, i, j, ie, je;
    #if FNN_BF16_V
        /* whole 16 x 16 blocks through registers: rounded, transposed, 32-byte stores */
        Py_ssize_t m16 = m & ~(Py_ssize_t)15, j16 = j0 + ((j1 - j0) & ~(Py_ssize_t)15);
        for (jb = j0; jb < j16; jb += 16)
            for (i0 = 0; i0 < m16; i0 += 16) {
                __m512i r[16];
                int k;
                for (k = 0; k < 16; k++) r[k] = fnn_bf16_v(_mm512_loadu_ps(x + (i0 + k) * ldx + jb));
                fnn_tr16i(r);
                for (k = 0; k < 16; k++) _mm256_storeu_si256((__m256i*)(t + (jb + k) * ldt + i0), _mm512_cvtepi32_epi16(r[k]));
            }
        /* the rest: the rows past m16 of those columns, then the columns past j16 */
        for (j = j0; j < j16; j++)
            for (i = m16; i < m; i++) t[j * ldt + i] = fnn_bf16(x[i * ldx + j]);
        j0 = j16;
    #endif
        for (jb = j0; jb < j1; jb += 32) {
            je = jb + 32 < j1 ? jb + 32 : j1;
            for (i0 = 0; i0 < m; i0 += 32) {
                ie = i0 + 32 < m ? i0 + 32 : m;
                for (j = jb; j < je; j++)
                    for (i = i0; i < ie; i++) t[j * ldt + i] = fnn_bf16(x[i * ldx + j]);
            }
        }
    }

    /* t[j ldt + i] = x[i ldx + j] for i < m, j < n (float32, a transpose) */
    static void fnn_trans_f32(const float* x, Py_ssize_t ldx, Py_ssize_t m, Py_ssize_t n, float* t, Py_ssize_t ldt) {
        Py_ssize_t i, j, i16 = 0, j16 = 0;
    #if FNN_BF16_V
        Py_ssize_t i0, j0;
        i16 = m & ~(Py_ssize_t)15;
        j16 = n & ~(Py_ssize_t)15;
        for (i0 = 0; i0 < i16; i0 += 16)
            for (j0 = 0; j0 < j16; j0 += 16) {
                __m512i r[16];
                int k;
                for (k = 0; k < 16; k++) r[k] = _mm512_loadu_si512((const void*)(x + (i0 + k) * ldx + j0));
                fnn_tr16i(r);
                for (k = 0; k < 16; k++) _mm512_storeu_si512((void*)(t + (j0 + k) * ldt + i0), r[k]);
            }
    #endif
        for (i = 0; i < m; i++)
            for (j = (i < i16 ? j16 : 0); j < n; j++) t[j * ldt + i] = x[i * ldx + j];
    }

    /* Zero t[j ldt + i] for j in [j0, j1), i in [i0, i1) */
    static void fnn_bf16_zero_cols(fnn_u16* t, Py_ssize_t ldt, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t i0,
                                   Py_ssize_t i1) {
        Py_ssize_t j;
        if (i1 > i0)
            for (j = j0; j < j1; j++) memset(t + j * ldt + i0, 0, (size_t)(i1 - i0) * 2);
    }

    /* Weights, forward panels: row n of W (K values, ldw apart) is column n of B = W^T, so
       f[(n / 16) Kp 16 + 32 p + 2 (n % 16) + s] = bf16(W[n][2 p + s]), rows [n0, n1). Entries past K
       are never written (the buffer starts zeroed). */
    static void fnn_pack_wf(const float* W, Py_ssize_t ldw, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t K,
                            Py_ssize_t Kp, fnn_u16* f) {
        Py_ssize_t n, k;
    #if FNN_BF16_V
        /* whole panels of 16 rows: 32 columns of each rounded into 16 pairs, then transposed, so each
           pair row of the panel is one 64-byte store */
        while (n0 < n1 && n0 % 16 == 0 && n0 + 16 <= n1) {
            fnn_u16* d = f + (n0 / 16) * Kp * 16;
            __m512i r[16];
            int i;
            for (k = 0; k < K; k += 32) {
                int w = K - k < 32 ? (int)(K - k) : 32;
                __mmask16 m0 = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1);
                __mmask16 m1 = w >= 32 ? (__mmask16)0xFFFF : (__mmask16)(w > 16 ? (1u << (w - 16)) - 1 : 0);
                for (i = 0; i < 16; i++) {
                    const float* src = W + (n0 + i) * ldw + k;
                    __m256i a = _mm512_cvtepi32_epi16(fnn_bf16_v(_mm512_maskz_loadu_ps(m0, src)));
                    __m256i b = _mm512_cvtepi32_epi16(fnn_bf16_v(_mm512_maskz_loadu_ps(m1, src + 16)));
                    r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
                }
                fnn_tr16i(r);
                for (i = 0; i < 16 && k + 2 * i < K; i++) _mm512_storeu_si512((void*)(d + 16 * k + 32 * i), r[i]);
            }
            n0 += 16;
        }
    #endif
        for (n = n0; n < n1; n++) {
            const float* w = W + n * ldw;
            fnn_u16* d = f + (n / 16) * Kp * 16 + 2 * (n % 16);
            for (k = 0; k + 1 < K; k += 2) {
                d[16 * k] = fnn_bf16(w[k]);
                d[16 * k + 1] = fnn_bf16(w[k + 1]);
            }
            if (k < K) d[16 * k] = fnn_bf16(w[k]);
        }
    }

    /* Weights, backward panels: B = W (rows o, columns j): b[(j / 16) Kp 16 + 32 (o / 2) + 2 (j % 16)
       + o % 2] = bf16(W[o][j]), rows [o0, o1) (Kp: the rows of W padded). */
    static void fnn_pack_wb(const float* W, Py_ssize_t ldw, Py_ssize_t o0, Py_ssize_t o1, Py_ssize_t K,
                            Py_ssize_t Kp, fnn_u16* b) {
        Py_ssize_t o, j;
    #if FNN_BF16_V
        /* whole pairs of rows: 16 columns of both, interleaved, are one 64-byte store */
        if (o0 % 2) {
            fnn_pack_wb(W, ldw, o0, o0 + 1, K, Kp, b);
            o0++;
        }
        /* panel by panel, the pairs' stores in order */
        for (j = 0; j < K; j += 16) {
            int w = K - j < 16 ? (int)(K - j) : 16;
            __mmask16 m = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1);
            for (o = o0; o + 2 <= o1; o += 2) {
                const float* e = W + o * ldw + j;
                __m512i lo = fnn_bf16_v(_mm512_maskz_loadu_ps(m, e));
                __m512i hi = fnn_bf16_v(_mm512_maskz_loadu_ps(m, e + ldw));
                _mm512_storeu_si512((void*)(b + (j / 16) * Kp * 16 + 32 * (o / 2)),
                                    _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
        o0 += (o1 - o0) & ~(Py_ssize_t)1;
    #endif
        for (o = o0; o < o1; o++) {
            const float* w = W + o * ldw;
            fnn_u16* d = b + 32 * (o / 2) + (o % 2);
            for (j = 0; j < K; j++) d[(j / 16) * Kp * 16 + 2 * (j % 16)] = fnn_bf16(w[j]);
        }
    }

    /* The A operand of a product from float32: y[i Kp + k] = bf16(op(a)[i][k]), op(a)[i][k] = a[i lda + k]
       (or a[k lda + i] with trans), zero for k in [K, Kp) */
    static void fnn_bf16_pack_a(const float* a, Py_ssize_t lda, int trans, Py_ssize_t M, Py_ssize_t K, fnn_u16* y,
                           Py_ssize_t Kp) {
        if (!trans) { fnn_bf16_rows(a, lda, M, 0, K, Kp, y, Kp); return; }
        fnn_bf16_trans(a, lda, K, 0, M, y, Kp);
        fnn_bf16_zero_cols(y, Kp, 0, M, K, Kp);
    }

    /* The B operand [K x N] from float32 as VNNI panels (ps = 16 Kp): op(b)[k][n] = b[k ldb + n] (or
       b[n ldb + k] with trans); zero past K and N */
    static void fnn_bf16_pack_b(const float* b, Py_ssize_t ldb, int trans, Py_ssize_t K, Py_ssize_t N, fnn_u16* v,
                           Py_ssize_t Kp) {
        Py_ssize_t nq = (N + 15) / 16, q, p0 = K / 2;
        /* zero what the packers leave: pair rows past K (and the half of a last odd pair), and the
           columns past N of a partial last panel */
        for (q = 0; q < nq; q++) memset(v + q * Kp * 16 + 32 * p0, 0, (size_t)(Kp / 2 - p0) * 64);
        if (N % 16) memset(v + (nq - 1) * Kp * 16, 0, (size_t)Kp * 32);
        if (trans) fnn_pack_wf(b, ldb, 0, N, K, Kp, v);      /* column n of op(b) is row n of b */
        else fnn_pack_wb(b, ldb, 0, K, N, Kp, v);           /* row k of op(b) is row k of b */
    }

    /* ------------------------------------------------------------------ kernels */
    /* C[M x N] (=|+=) A[M x Kp] B[Kp x N]: A bfloat16 rows (lda apart), B VNNI panels (ps apart), C float32
       (ldc); Kp a multiple of 32. */
    typedef void (*fnn_bgemm_fn)(Py_ssize_t, Py_ssize_t, Py_ssize_t, const fnn_u16*, Py_ssize_t, const fnn_u16*,
                                 Py_ssize_t, float*, Py_ssize_t, int);

    /* Emulation: each entry's float32 sum adds, pair by pair, A's odd times B's odd element, then the
       even ones (VDPBF16PS's order); the products are exact. FNN_EM_MR rows x one panel at a time. */
    #define FNN_EM_MR 4
    static void fnn_bgemm_emul(Py_ssize_t M, Py_ssize_t N, Py_ssize_t Kp, const fnn_u16* A, Py_ssize_t lda,
                               const fnn_u16* B, Py_ssize_t ps, float* C, Py_ssize_t ldc, int acc) {
        Py_ssize_t q, m0, p, P = Kp / 2;
        int r, n, mr, nc;
        float be[16], bo[16], s[FNN_EM_MR][16];
        for (q = 0; 16 * q < N; q++) {
            const fnn_u16* bq = B + q * ps;
            nc = N - 16 * q < 16 ? (int)(N - 16 * q) : 16;
            for (m0 = 0; m0 < M; m0 += FNN_EM_MR) {
                mr = M - m0 < FNN_EM_MR ? (int)(M - m0) : FNN_EM_MR;
                for (r = 0; r < FNN_EM_MR; r++)
                    for (n = 0; n < 16; n++)
                        s[r][n] = (acc && r < mr && n < nc) ? C[(m0 + r) * ldc + 16 * q + n] : 0.0f;
                for (p = 0; p < P; p++) {
                    const fnn_u16* b = bq + 32 * p;
                    for (n = 0; n < 16; n++) { be[n] = fnn_f32(b[2 * n]); bo[n] = fnn_f32(b[2 * n + 1]); }
                    for (r = 0; r < FNN_EM_MR; r++) {
                        const fnn_u16* a = A + (m0 + (r < mr ? r : 0)) * lda + 2 * p;
                        float ae = fnn_f32(a[0]), ao = fnn_f32(a[1]);
                        for (n = 0; n < 16; n++) s[r][n] = (s[r][n] + ao * bo[n]) + ae * be[n];
                    }
                }
                for (r = 0; r < mr; r++)
                    for (n = 0; n < nc; n++) C[(m0 + r) * ldc + 16 * q + n] = s[r][n];
            }
        }
    }

    #if defined(__AVX512F__) && defined(__GNUC__) && defined(__x86_64__)
    #define FNN_BF16_HW 1
    #include <immintrin.h>
    #include <cpuid.h>

    #define FNN_TGT_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))
    /* MR rows x NV panels of C over all Kp; nc columns valid in the last panel */
    #define FNN_BK(NAME, MR, NV) \
    static inline __attribute__((always_inline)) FNN_TGT_BF16 void NAME(Py_ssize_t Kp, const fnn_u16* A, \
            Py_ssize_t lda, const fnn_u16* B, Py_ssize_t ps, float* C, Py_ssize_t ldc, int nc, int acc) { \
        __m512 s[MR][NV]; \
        Py_ssize_t p; int r, v; \
        for (r = 0; r < MR; r++) for (v = 0; v < NV; v++) { \
            int w = nc - 16 * v; __mmask16 k = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w > 0 ? w : 0)) - 1); \
            s[r][v] = acc ? _mm512_maskz_loadu_ps(k, C + r * ldc + 16 * v) : _mm512_setzero_ps(); } \
        for (p = 0; p < Kp / 2; p++) { \
            __m512i b[NV]; \
            for (v = 0; v < NV; v++) b[v] = _mm512_loadu_si512((const void*)(B + v * ps + 32 * p)); \
            for (r = 0; r < MR; r++) { \
                int32_t ai; memcpy(&ai, A + r * lda + 2 * p, 4); \
                __m512i a = _mm512_set1_epi32(ai); \
                for (v = 0; v < NV; v++) s[r][v] = _mm512_dpbf16_ps(s[r][v], (__m512bh)a, (__m512bh)b[v]); } } \
        for (r = 0; r < MR; r++) for (v = 0; v < NV; v++) { \
            int w = nc - 16 * v; __mmask16 k = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (w > 0 ? w : 0)) - 1); \
            _mm512_mask_storeu_ps(C + r * ldc + 16 * v, k, s[r][v]); } \
    }
    FNN_BK(fnn_bk_6x4, 6, 4)
    FNN_BK(fnn_bk_3x4, 3, 4)
    FNN_BK(fnn_bk_1x4, 1, 4)
    FNN_BK(fnn_bk_6x1, 6, 1)
    FNN_BK(fnn_bk_3x1, 3, 1)
    FNN_BK(fnn_bk_1x1, 1, 1)

    FNN_TGT_BF16 static void fnn_bgemm_avx512bf16(Py_ssize_t M, Py_ssize_t N, Py_ssize_t Kp, const fnn_u16* A,
            Py_ssize_t lda, const fnn_u16* B, Py_ssize_t ps, float* C, Py_ssize_t ldc, int acc) {
        Py_ssize_t n0, m0;
        for (n0 = 0; n0 < N; n0 += 64) {
            int nc = N - n0 < 64 ? (int)(N - n0) : 64;
            const fnn_u16* b = B + (n0 / 16) * ps;
            float* c = C + n0;
            if (nc > 48) {
                for (m0 = 0; m0 + 6 <= M; m0 += 6) fnn_bk_6x4(Kp, A + m0 * lda, lda, b, ps, c + m0 * ldc, ldc, nc, acc);
                for (; m0 + 3 <= M; m0 += 3) fnn_bk_3x4(Kp, A + m0 * lda, lda, b, ps, c + m0 * ldc, ldc, nc, acc);
                for (; m0 < M; m0++) fnn_bk_1x4(Kp, A + m0 * lda, lda, b, ps, c + m0 * ldc, ldc, nc, acc);
            } else {
                int v;
                for (v = 0; 16 * v < nc; v++) {
                    int w = nc - 16 * v;
                    for (m0 = 0; m0 + 6 <= M; m0 += 6)
                        fnn_bk_6x1(Kp, A + m0 * lda, lda, b + v * ps, ps, c + m0 * ldc + 16 * v, ldc, w, acc);
                    for (; m0 + 3 <= M; m0 += 3)
                        fnn_bk_3x1(Kp, A + m0 * lda, lda, b + v * ps, ps, c + m0 * ldc + 16 * v, ldc, w, acc);
                    for (; m0 < M; m0++)
                        fnn_bk_1x1(Kp, A + m0 * lda, lda, b + v * ps, ps, c + m0 * ldc + 16 * v, ldc, w, acc);
                }
            }
        }
    }

    #if defined(__linux__)
    #define FNN_AMX 1
    #include <unistd.h>
    #include <sys/syscall.h>
    #define FNN_TGT_AMX __attribute__((target("amx-tile,amx-bf16,avx512f")))
    #define FNN_AMX_KB 256       /* K per pass over a block of C (128 and 512 ran 5-25% slower) */
    typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } fnn_tilecfg;

    /* Tiles 0-3: 16 x 16 float32 sums; 4, 5: 16 rows of A (32 bfloat16 each); 6, 7: 16 pair rows of B.
       Loaded on every call: another library in the process may have configured or released the tiles. */
    FNN_TGT_AMX static void fnn_amx_config(void) {
        fnn_tilecfg cfg __attribute__((aligned(64)));
        int t;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (t = 0; t < 8; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }
        _tile_loadconfig(&cfg);
    }

    /* A tile (16 rows x 64 bytes) for rows [m0, m0 + mr) of A at column k: in place when all 16 rows
       exist, else copied with zero rows into buf */
    static inline const fnn_u16* fnn_amx_a(const fnn_u16* A, Py_ssize_t lda, int mr, Py_ssize_t k, fnn_u16* buf,
                                            Py_ssize_t* stride) {
        int r;
        if (mr == 16) { *stride = lda * 2; return A + k; }
        for (r = 0; r < 16; r++) {
            if (r < mr) memcpy(buf + 32 * r, A + r * lda + k, 64);
            else memset(buf + 32 * r, 0, 64);
        }
        *stride = 64;
        return buf;
    }

    /* One block of up to 32 x 32 entries of C: mr rows (<= 32), nc columns (<= 32), K in [k0, k1) */
    /* C tile T of a block (rows rr, columns cc of 16): in place when whole, else through buf */
    #define FNN_AMX_CLOAD(T, CP, rr, cc, buf) \
        if ((rr) == 16 && (cc) == 16) { if (start) _tile_zero(T); else _tile_loadd(T, CP, ldc * 4); } \
        else if ((rr) > 0 && (cc) > 0) { int r_, j_; memset(buf, 0, 1024); \
            if (!start) for (r_ = 0; r_ < (rr); r_++) for (j_ = 0; j_ < (cc); j_++) buf[16 * r_ + j_] = (CP)[r_ * ldc + j_]; \
            _tile_loadd(T, buf, 64); }
    #define FNN_AMX_CSTORE(T, CP, rr, cc, buf) \
        if ((rr) == 16 && (cc) == 16) _tile_stored(T, CP, ldc * 4); \
        else if ((rr) > 0 && (cc) > 0) { int r_, j_; _tile_stored(T, buf, 64); \
            for (r_ = 0; r_ < (rr); r_++) for (j_ = 0; j_ < (cc); j_++) (CP)[r_ * ldc + j_] = buf[16 * r_ + j_]; }
    FNN_TGT_AMX static void fnn_amx_block(Py_ssize_t k0, Py_ssize_t k1, const fnn_u16* A, Py_ssize_t lda, int mr,
            const fnn_u16* B, Py_ssize_t ps, int nc, float* C, Py_ssize_t ldc, int start) {
        fnn_u16 abuf[2][512] __attribute__((aligned(64)));
        float cbuf[4][256] __attribute__((aligned(64)));
        int r0 = mr < 16 ? mr : 16, r1 = mr - 16, c0 = nc < 16 ? nc : 16, c1 = nc - 16;
        Py_ssize_t k, sa0, sa1;
        if (mr == 32 && nc == 32) {     /* the common case, straight */
            if (start) { _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); }
            else { _tile_loadd(0, C, ldc * 4); _tile_loadd(1, C + 16, ldc * 4);
                   _tile_loadd(2, C + 16 * ldc, ldc * 4); _tile_loadd(3, C + 16 * ldc + 16, ldc * 4); }
            for (k = k0; k < k1; k += 32) {
                _tile_loadd(4, A + k, lda * 2);
                _tile_loadd(5, A + 16 * lda + k, lda * 2);
                _tile_loadd(6, B + 16 * k, 64);
                _tile_loadd(7, B + ps + 16 * k, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            _tile_stored(0, C, ldc * 4); _tile_stored(1, C + 16, ldc * 4);
            _tile_stored(2, C + 16 * ldc, ldc * 4); _tile_stored(3, C + 16 * ldc + 16, ldc * 4);
            return;
        }
        /* an edge block: whole 16 x 16 tiles of C and 16-row tiles of A in place, the rest copied */
        FNN_AMX_CLOAD(0, C, r0, c0, cbuf[0])
        FNN_AMX_CLOAD(1, C + 16, r0, c1, cbuf[1])
        FNN_AMX_CLOAD(2, C + 16 * ldc, r1, c0, cbuf[2])
        FNN_AMX_CLOAD(3, C + 16 * ldc + 16, r1, c1, cbuf[3])
        for (k = k0; k < k1; k += 32) {
            const fnn_u16* a0 = fnn_amx_a(A, lda, r0, k, abuf[0], &sa0);
            _tile_loadd(4, a0, sa0);
            _tile_loadd(6, B + 16 * k, 64);
            _tile_dpbf16ps(0, 4, 6);
            if (c1 > 0) { _tile_loadd(7, B + ps + 16 * k, 64); _tile_dpbf16ps(1, 4, 7); }
            if (r1 > 0) {
                const fnn_u16* a1 = fnn_amx_a(A + 16 * lda, lda, r1, k, abuf[1], &sa1);
                _tile_loadd(5, a1, sa1);
                _tile_dpbf16ps(2, 5, 6);
                if (c1 > 0) _tile_dpbf16ps(3, 5, 7);
            }
        }
        FNN_AMX_CSTORE(0, C, r0, c0, cbuf[0])
        FNN_AMX_CSTORE(1, C + 16, r0, c1, cbuf[1])
        FNN_AMX_CSTORE(2, C + 16 * ldc, r1, c0, cbuf[2])
        FNN_AMX_CSTORE(3, C + 16 * ldc + 16, r1, c1, cbuf[3])
    }

    FNN_TGT_AMX static void fnn_bgemm_amx(Py_ssize_t M, Py_ssize_t N, Py_ssize_t Kp, const fnn_u16* A,
            Py_ssize_t lda, const fnn_u16* B, Py_ssize_t ps, float* C, Py_ssize_t ldc, int acc) {
        Py_ssize_t k0, k1, n0, m0;
        fnn_amx_config();
        k0 = 0;
        do {        /* once at least: Kp = 0 still writes C */
            k1 = k0 + FNN_AMX_KB < Kp ? k0 + FNN_AMX_KB : Kp;
            /* 32 rows of A over the K block (16 KB) stay in L1 while B's panels stream past them
               (B in L1 and A streaming ran 1.5x slower, 784-1024-1024-10 at batch 512) */
            for (m0 = 0; m0 < M; m0 += 32) {
                int mr = M - m0 < 32 ? (int)(M - m0) : 32;
                for (n0 = 0; n0 < N; n0 += 32) {
                    int nc = N - n0 < 32 ? (int)(N - n0) : 32;
                    fnn_amx_block(k0, k1, A + m0 * lda, lda, mr, B + (n0 / 16) * ps, ps, nc, C + m0 * ldc + n0,
                                  ldc, k0 == 0 && !acc);
                }
            }
            k0 = k1;
        } while (k0 < Kp);
    }

    /* Whether this process may use AMX tiles: asks the kernel once (Linux makes the tile data an
       opt-in part of the thread state) */
    static int fnn_amx_permitted(void) {
        static int state = -1;
        if (state < 0) state = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
        return state;
    }
    #endif

    static unsigned long long fnn_xcr0(void) {
        unsigned int lo, hi;
        __asm__ volatile ("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        return ((unsigned long long)hi << 32) | lo;
    }

    /* bit 0: AVX512-BF16 usable, bit 1: AMX-BF16 present with OS support for the tile state */
    static int fnn_bf16_cpu(void) {
        unsigned int a, b, c, d, sub;
        int out = 0;
        unsigned long long x;
        if (__get_cpuid_max(0, 0) < 7) return 0;
        __cpuid(1, a, b, c, d);
        if (!((c >> 27) & 1)) return 0;               /* OSXSAVE */
        x = fnn_xcr0();
        __cpuid_count(7, 0, a, b, c, d);
        sub = a;
        if ((x & 0xe6) == 0xe6 && ((b >> 16) & 1) && sub >= 1) {     /* AVX-512 state and AVX512F */
            unsigned int a1, b1, c1, d1;
            __cpuid_count(7, 1, a1, b1, c1, d1);
            if ((a1 >> 5) & 1) out |= 1;
        }
        if (((d >> 22) & 1) && ((d >> 24) & 1) && (x & 0x60000) == 0x60000) out |= 2;
        return out;
    }
    #else
    #define FNN_BF16_HW 0
    static int fnn_bf16_cpu(void) { return 0; }
    #endif
    #ifndef FNN_AMX
    #define FNN_AMX 0
    #endif

    /* the kernel in use: 0 emulate, 1 avx512bf16, 2 amx */
    static int fnn_bk_code = 0;
    static fnn_bgemm_fn fnn_bk = fnn_bgemm_emul;

    static int fnn_bf16_available(int code) {
        if (code == 0) return 1;
    #if FNN_BF16_HW
        if (code == 1) return (fnn_bf16_cpu() & 1) != 0;
    #endif
    #if FNN_AMX
        if (code == 2) return (fnn_bf16_cpu() & 2) != 0 && fnn_amx_permitted();
    #endif
        return 0;
    }

    static int fnn_bf16_select(int code) {
        if (!fnn_bf16_available(code)) return -1;
        fnn_bk_code = code;
        fnn_bk = fnn_bgemm_emul;
    #if FNN_BF16_HW
        if (code == 1) fnn_bk = fnn_bgemm_avx512bf16;
    #endif
    #if FNN_AMX
        if (code == 2) fnn_bk = fnn_bgemm_amx;
    #endif
        return code;
    }

    static void fnn_bgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t Kp, const fnn_u16* A, Py_ssize_t lda,
                          const fnn_u16* B, Py_ssize_t ps, float* C, Py_ssize_t ldc, int acc) {
        if (M > 0 && N > 0) fnn_bk(M, N, Kp, A, lda, B, ps, C, ldc, acc);
    }
    """
    ctypedef unsigned short fnn_u16
    fnn_u16 fnn_bf16(float x) nogil
    float fnn_f32(fnn_u16 b) nogil
    void fnn_bf16_rows(const float* x, Py_ssize_t ldx, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t j1,
                       Py_ssize_t jp, fnn_u16* y, Py_ssize_t ldy) nogil
    void fnn_bf16_pairs(const fnn_u16* y, Py_ssize_t ldy, Py_ssize_t i0, Py_ssize_t m, Py_ssize_t q0,
                        Py_ssize_t q1, fnn_u16* v, Py_ssize_t ps) nogil
    void fnn_bf16_zero_pairs(fnn_u16* v, Py_ssize_t ps, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t q0,
                             Py_ssize_t q1) nogil
    void fnn_bf16_trans(const float* x, Py_ssize_t ldx, Py_ssize_t m, Py_ssize_t j0, Py_ssize_t j1,
                        fnn_u16* t, Py_ssize_t ldt) nogil
    void fnn_bf16_zero_cols(fnn_u16* t, Py_ssize_t ldt, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t i0,
                            Py_ssize_t i1) nogil
    void fnn_trans_f32(const float* x, Py_ssize_t ldx, Py_ssize_t m, Py_ssize_t n, float* t, Py_ssize_t ldt) nogil
    void fnn_pack_wf(const float* W, Py_ssize_t ldw, Py_ssize_t n0, Py_ssize_t n1, Py_ssize_t K,
                     Py_ssize_t Kp, fnn_u16* f) nogil
    void fnn_pack_wb(const float* W, Py_ssize_t ldw, Py_ssize_t o0, Py_ssize_t o1, Py_ssize_t K,
                     Py_ssize_t Kp, fnn_u16* b) nogil
    void fnn_bf16_pack_a(const float* a, Py_ssize_t lda, int trans, Py_ssize_t M, Py_ssize_t K, fnn_u16* y,
                    Py_ssize_t Kp) nogil
    void fnn_bf16_pack_b(const float* b, Py_ssize_t ldb, int trans, Py_ssize_t K, Py_ssize_t N, fnn_u16* v,
                    Py_ssize_t Kp) nogil
    void fnn_bgemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t Kp, const fnn_u16* A, Py_ssize_t lda,
                   const fnn_u16* B, Py_ssize_t ps, float* C, Py_ssize_t ldc, int acc) nogil
    int fnn_bf16_available(int code) nogil
    int fnn_bf16_select(int code) nogil
    int fnn_bk_code


BF16_KERNELS = ("emulate", "avx512bf16", "amx")


def bf16_kernels():
    """The bfloat16 product kernels this build can run on this CPU, slowest first."""
    return [name for code, name in enumerate(BF16_KERNELS) if fnn_bf16_available(code)]


def bf16_use(name):
    """Make ``name`` (one of ``bf16_kernels()``) the kernel of every bfloat16 product; returns it."""
    if name not in BF16_KERNELS or fnn_bf16_select(BF16_KERNELS.index(name)) < 0:
        raise ValueError(f"bfloat16 kernel {name!r} is not available here; available: {bf16_kernels()}")
    return name


def bf16_kernel():
    """The bfloat16 product kernel in use."""
    return BF16_KERNELS[fnn_bk_code]


def bf16_round(const float[::1] x):
    """x rounded to bfloat16 (as uint16 bit patterns), the rounding of every product operand."""
    out = np.empty(x.shape[0], dtype=np.uint16)
    cdef fnn_u16[::1] o = out
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            o[i] = fnn_bf16(x[i])
    return out


def bf16_matmul(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] C, bint accumulate=False):
    """C (=|+=) bf16(A) @ bf16(B) in float32 on the kernel in use (for tests): A is M x K, B K x N."""
    cdef Py_ssize_t M = A.shape[0], K = A.shape[1], N = B.shape[1], Kp = (K + 31) // 32 * 32
    if B.shape[0] != K or C.shape[0] != M or C.shape[1] != N:
        raise ValueError("shapes do not match")
    ap = np.empty(max(M * Kp, 1), dtype=np.uint16)
    bp = np.empty(max(Kp * ((N + 15) // 16) * 16, 1), dtype=np.uint16)
    cdef fnn_u16[::1] a = ap
    cdef fnn_u16[::1] b = bp
    with nogil:
        fnn_bf16_pack_a(&A[0, 0], K, 0, M, K, &a[0], Kp)
        fnn_bf16_pack_b(&B[0, 0], N, 0, K, N, &b[0], Kp)
        fnn_bgemm(M, N, Kp, &a[0], Kp, &b[0], Kp * 16, &C[0, 0], N, accumulate)


# ---------------------------------------------------------------- ops in bfloat16
# A bfloat16 Dense op (Op.prec) reads, from the work buffer, its input's copies (rows Xb, and VNNI
# panels over pairs of rows XV for the weight gradient) and its delta's (rows Db for the input delta,
# transposed DT for the weight gradient), and from the bfloat16 buffer PB its weights' panels (WF:
# B = W^T for forward, WB: B = W for the input delta). Whoever finishes a buffer writes its copies
# while its rows are in cache: the producer's tail (or the gather of the input) its output's, the
# op's head its delta's, the optimizer update of a tile of weight rows their panels. K-dimensions are
# padded to multiples of 32 and the rows of a weight gradient's sum (the batch, times groups) to
# Rp = a multiple of 32 below the buffer's block of rows, with zeros.

cdef enum:
    PREC_F32 = 0
    PREC_BF16 = 1

PRECISIONS = {"float32": PREC_F32, "bf16-mixed": PREC_BF16}


cdef inline Py_ssize_t rup(Py_ssize_t n, Py_ssize_t m) noexcept nogil:
    return (n + m - 1) // m * m


cdef inline fnn_u16* u16(float* base, Py_ssize_t off) noexcept nogil:
    """The bfloat16 block that starts ``off`` floats into ``base``."""
    return <fnn_u16*>(base + off)


cdef void bf16_out_rows(float* src, Py_ssize_t n, Py_ssize_t K, Py_ssize_t ob_e, Py_ssize_t ov_e, Py_ssize_t bw,
                        bint grad, Py_ssize_t r0, Py_ssize_t c, Py_ssize_t bsz, float* Wk) noexcept nogil:
    """Copies of rows [r0, r0+c) of a buffer (``src``: its first row, n values per example) for
    products over rows of K values (n // K per example)."""
    cdef Py_ssize_t g = n // K, Kp = rup(K, 32), R0 = r0 * g, m = c * g, ps, nq
    cdef fnn_u16* xb = u16(Wk, ob_e)
    fnn_bf16_rows(src + r0 * n, K, m, 0, K, Kp, xb + R0 * Kp, Kp)
    if grad and ov_e >= 0:
        ps = bw * g * 16
        nq = (K + 15) // 16
        fnn_bf16_pairs(xb + R0 * Kp, Kp, R0, m, 0, nq, u16(Wk, ov_e), ps)
        if r0 + c == bsz:
            fnn_bf16_zero_pairs(u16(Wk, ov_e), ps, (R0 + m + 1) // 2, rup(bsz * g, 32) // 2, 0, nq)


cdef void bf16_out_block(float* src, Py_ssize_t n, Py_ssize_t ob_e, Py_ssize_t ov_e, Py_ssize_t bw, bint grad,
                         Py_ssize_t j0, Py_ssize_t nb, Py_ssize_t bsz, float* Wk) noexcept nogil:
    """Copies of columns [j0, j0+nb) (j0 a multiple of 16) of every row of a buffer of n values per
    example (one product row each); the block that ends the row also writes the padding."""
    cdef Py_ssize_t Kp = rup(n, 32), j1 = j0 + nb, ps = bw * 16, q1
    cdef fnn_u16* xb = u16(Wk, ob_e)
    fnn_bf16_rows(src, n, bsz, j0, j1, Kp if j1 == n else j1, xb, Kp)
    if grad and ov_e >= 0:
        q1 = (j1 + 15) // 16
        fnn_bf16_pairs(xb, Kp, 0, bsz, j0 // 16, q1, u16(Wk, ov_e), ps)
        fnn_bf16_zero_pairs(u16(Wk, ov_e), ps, (bsz + 1) // 2, rup(bsz, 32) // 2, j0 // 16, q1)


cdef void bf16_delta_rows(Op* o, float* Wk, Py_ssize_t r0, Py_ssize_t c, Py_ssize_t bsz) noexcept nogil:
    """Copies of rows [r0, r0+c) of a bfloat16 Dense op's output delta."""
    cdef Py_ssize_t g = o.groups, K = o.n_out // g, Kp = rup(K, 32), R0 = r0 * g, m = c * g
    cdef Py_ssize_t Rw = o.bw * g
    cdef float* D = Wk + o.d_e + r0 * o.n_out
    cdef fnn_u16* dt = u16(Wk, o.dt_e)
    if o.din_e >= 0:
        fnn_bf16_rows(D, K, m, 0, K, Kp, u16(Wk, o.db_e) + R0 * Kp, Kp)
    fnn_bf16_trans(D, K, m, 0, K, dt + R0, Rw)
    if r0 + c == bsz:
        fnn_bf16_zero_cols(dt, Rw, 0, K, bsz * g, rup(bsz * g, 32))


cdef void bf16_delta_block(Op* o, float* Wk, Py_ssize_t j0, Py_ssize_t nb, Py_ssize_t bsz) noexcept nogil:
    """Copies of columns [j0, j0+nb) of a (wide, one row per example) bfloat16 Dense op's output delta."""
    cdef Py_ssize_t n = o.n_out, Kp = rup(n, 32), j1 = j0 + nb, Rw = o.bw
    cdef float* D = Wk + o.d_e
    cdef fnn_u16* dt = u16(Wk, o.dt_e)
    if o.din_e >= 0:
        fnn_bf16_rows(D, n, bsz, j0, j1, Kp if j1 == n else j1, u16(Wk, o.db_e), Kp)
    fnn_bf16_trans(D, n, bsz, j0, j1, dt, Rw)
    fnn_bf16_zero_cols(dt, Rw, j0, j1, bsz, rup(bsz, 32))


cdef void bf16_pack_rows(Op* o, float* P, float* Wk, Py_ssize_t r0, Py_ssize_t nr) noexcept nogil:
    """The weight panels of output neurons [r0, r0+nr) of a bfloat16 Dense op (after an update)."""
    cdef Py_ssize_t K = o.n_in // o.groups, N = o.n_out // o.groups
    fnn_pack_wf(P + o.w_off, K, r0, r0 + nr, K, rup(K, 32), u16(Wk, 0) + o.wf_e)
    fnn_pack_wb(P + o.w_off, K, r0, r0 + nr, K, rup(N, 32), u16(Wk, 0) + o.wb_e)


cdef void bf16_pack_conv_rows(Op* o, float* P, float* Wk, Py_ssize_t r0, Py_ssize_t nr) noexcept nogil:
    """A convolution's filters [r0, r0+nr) (one group) as bfloat16 rows (the forward product's A) and
    transposed within their group (the column delta's A)."""
    cdef Py_ssize_t K = (o.g[0] // o.g[12]) * o.g[4] * o.g[5], Og = o.g[3] // o.g[12], gi = r0 // Og
    cdef Py_ssize_t Kp = rup(K, 32), Ogp = rup(Og, 32)
    fnn_bf16_rows(P + o.w_off + r0 * K, K, nr, 0, K, Kp, u16(Wk, 0) + o.wf_e + r0 * Kp, Kp)
    fnn_bf16_trans(P + o.w_off + r0 * K, K, nr, 0, K, u16(Wk, 0) + o.wb_e + gi * K * Ogp + (r0 - gi * Og), Ogp)


cdef inline void bf16_pack_op(Op* o, float* P, float* Wk, Py_ssize_t r0, Py_ssize_t nr) noexcept nogil:
    """The weight panels of a bfloat16 op's rows [r0, r0+nr) (output neurons, filters, gate rows)."""
    if o.kind == OP_DENSE:
        bf16_pack_rows(o, P, Wk, r0, nr)
    elif o.kind == OP_CONV:
        bf16_pack_conv_rows(o, P, Wk, r0, nr)
    elif o.kind == OP_RNN:
        bf16_pack_rnn_rows(o, P, Wk, r0, nr)


cdef inline Py_ssize_t bf16_rows(Op* o) noexcept nogil:
    """The rows of a bfloat16 op's weights that its tiles split."""
    if o.kind == OP_CONV:
        return o.g[3]
    if o.kind == OP_RNN:
        return o.hidden * (4 if o.cell == CELL_LSTM else (3 if o.cell == CELL_GRU else 1))
    return o.n_out // o.groups


cdef void bf16_pack_all(Net* net, float* P, float* Wk, int n_threads) noexcept nogil:
    """Every bfloat16 op's weight panels, from P (once per call, before the first product); the
    panels' padding is zero."""
    cdef int k
    cdef Op* o
    cdef Py_ssize_t nb, b, N, step
    if net.pb_n == 0:
        return
    memset(u16(Wk, net.pb_e), 0, net.pb_n * 2)
    for k in range(net.n_ops):
        o = &net.ops[k]
        if o.prec != PREC_BF16:
            continue
        N = bf16_rows(o)
        # blocks within one group of filters
        step = o.g[3] // o.g[12] if o.kind == OP_CONV else 32
        nb = (N + step - 1) // step
        for b in prange(nb, schedule='static', num_threads=n_threads):
            bf16_pack_op(o, P, Wk, b * step, step if (b + 1) * step <= N else N - b * step)


cdef inline void bf16_dense_forward(Op* o, float* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c) of Z = bf16(In) bf16(W)^T."""
    cdef Py_ssize_t K = o.n_in // o.groups, N = o.n_out // o.groups, Kp = rup(K, 32)
    fnn_count(FNN_BF16P, FNN_FWD)
    fnn_bgemm(c * o.groups, N, Kp, u16(Wk, o.xb_e) + r0 * o.groups * Kp, Kp, u16(Wk, 0) + o.wf_e, Kp * 16,
              Wk + o.a_e + r0 * o.n_out, N, 0)


cdef inline void bf16_dense_backward(Op* o, float* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c) of dIn (=|+=) bf16(D) bf16(W)."""
    cdef Py_ssize_t K = o.n_in // o.groups, N = o.n_out // o.groups, Kp = rup(N, 32)
    fnn_count(FNN_BF16P, FNN_DIN)
    fnn_bgemm(c * o.groups, K, Kp, u16(Wk, o.db_e) + r0 * o.groups * Kp, Kp, u16(Wk, 0) + o.wb_e, Kp * 16,
              Wk + o.din_e + r0 * o.n_in, K, o.din_acc)


cdef inline void bf16_dense_wide_forward(Op* o, float* Wk, Py_ssize_t B, Py_ssize_t j0, Py_ssize_t nb) noexcept nogil:
    """Columns [j0, j0+nb) (j0 a multiple of 16) of Z over all B rows."""
    cdef Py_ssize_t Kp = rup(o.n_in, 32)
    fnn_count(FNN_BF16P, FNN_FWD)
    fnn_bgemm(B, nb, Kp, u16(Wk, o.xb_e), Kp, u16(Wk, 0) + o.wf_e + (j0 // 16) * Kp * 16, Kp * 16,
              Wk + o.a_e + j0, o.n_out, 0)


cdef inline void bf16_dense_wide_backward(Op* o, float* Wk, Py_ssize_t B, Py_ssize_t c0, Py_ssize_t nc) noexcept nogil:
    """Columns [c0, c0+nc) (c0 a multiple of 16) of dIn (=|+=) over all B rows."""
    cdef Py_ssize_t Kp = rup(o.n_out, 32)
    fnn_count(FNN_BF16P, FNN_DIN)
    fnn_bgemm(B, nc, Kp, u16(Wk, o.db_e), Kp, u16(Wk, 0) + o.wb_e + (c0 // 16) * Kp * 16, Kp * 16,
              Wk + o.din_e + c0, o.n_in, o.din_acc)


cdef inline void bf16_dense_grad(Op* o, Tile* T, float* Wk, float* G, Py_ssize_t B) noexcept nogil:
    """dW[rows] = bf16(D)[:, rows]^T bf16(In), each entry one float32 sum over the batch in order."""
    cdef Py_ssize_t K = o.n_in // o.groups, Rw = o.bw * o.groups
    fnn_count(FNN_BF16P, FNN_WGRAD)
    fnn_bgemm(T.nr, K, rup(B * o.groups, 32), u16(Wk, o.dt_e) + T.r0 * Rw, Rw, u16(Wk, o.xv_e), Rw * 16,
              G + o.w_off + T.r0 * K, K, 0)


cdef int check_bf16(const int64_t[::1] bf16, floating[::1] work, int n_threads) except -1:
    """A plan with bfloat16 products needs a float32 model and a work buffer that holds its blocks,
    its weight panels and ``n_threads`` gradient tiles' scratch (bf16_work_size)."""
    if bf16 is None:
        return 0
    if floating is double:
        raise ValueError("bfloat16 products need a float32 model")
    if bf16.shape[0] != 7 or work.shape[0] < bf16_work_size(bf16[0], bf16[5], bf16[4], bf16[6], n_threads):
        raise ValueError("the work buffer is too small for this plan's bfloat16 blocks")
    return 0


cpdef Py_ssize_t bf16_work_size(Py_ssize_t rows, Py_ssize_t columns, Py_ssize_t panels, Py_ssize_t thread_scratch,
                                int n_threads) noexcept nogil:
    """Floats of a work buffer with bfloat16 blocks: ``rows`` x ``columns``, the weight panels
    (bfloat16 values), then each thread's gradient-tile scratch (bfloat16 values), on cache lines."""
    return rows * columns + rup(panels, 32) // 2 + n_threads * rup(thread_scratch, 32) // 2


cdef inline fnn_u16* bf16_thread_space(Net* net, float* Wk) noexcept nogil:
    """The gradient tiles' scratch: after the weight panels."""
    return u16(Wk, net.pb_e) + rup(net.pb_n, 32)


# ---------------------------------------------------------------- convolutions in bfloat16
cdef inline fnn_u16* bf16_conv_pack(Op* o, float* scratch) noexcept nogil:
    """The chunk's packing space: after the float32 scratch of this op (gathered delta, columns'
    delta: (Og + K) x the sub-block's positions), on a 64-byte boundary."""
    cdef Py_ssize_t K = (o.g[0] // o.g[12]) * o.g[4] * o.g[5], Og = o.g[3] // o.g[12]
    return <fnn_u16*>(scratch + rup((Og + K) * o.sub * o.g[13] * o.g[14], 16))


cdef inline Py_ssize_t bf16_conv_width(Op* o) noexcept nogil:
    """Floats per example of a convolution's bfloat16 columns (Bf16Plan._conv): every group's K rows of
    its positions, each sub-block's rows padded to 32, on cache lines."""
    cdef Py_ssize_t K = (o.g[0] // o.g[12]) * o.g[4] * o.g[5]
    return rup((o.g[12] * K * (o.g[13] * o.g[14] + 31) + 1) // 2, 16)


cdef inline fnn_u16* bf16_conv_cols(Op* o, float* Wk, Py_ssize_t e0, Py_ssize_t gi, Py_ssize_t M) noexcept nogil:
    """Group gi's bfloat16 columns (K rows of rup(M, 32)) of the sub-block at example e0."""
    cdef Py_ssize_t K = (o.g[0] // o.g[12]) * o.g[4] * o.g[5]
    return u16(Wk, o.xb_e + e0 * bf16_conv_width(o)) + gi * K * rup(M, 32)


cdef void bf16_conv_forward(Op* o, float* Wk, float* col, Py_ssize_t M, Py_ssize_t gi, Py_ssize_t e0,
                            float* tmp) noexcept nogil:
    """tmp[Og x M] = bf16(W_gi) bf16(col) for one group's columns (K x M, in the scratch); the rounded
    columns are kept for the filter gradient."""
    cdef Py_ssize_t K = (o.g[0] // o.g[12]) * o.g[4] * o.g[5], Og = o.g[3] // o.g[12], Kp = rup(K, 32)
    cdef Py_ssize_t Mp = rup(M, 32), nq = (M + 15) // 16
    cdef fnn_u16* cb = bf16_conv_cols(o, Wk, e0, gi, M)
    cdef fnn_u16* pk = bf16_conv_pack(o, tmp)
    fnn_bf16_rows(col, M, K, 0, M, Mp, cb, Mp)
    fnn_bf16_pairs(cb, Mp, 0, K, 0, nq, pk, Kp * 16)
    fnn_bf16_zero_pairs(pk, Kp * 16, (K + 1) // 2, Kp // 2, 0, nq)
    fnn_bgemm(Og, M, Kp, u16(Wk, 0) + o.wf_e + gi * Og * Kp, Kp, pk, Kp * 16, tmp, M, 0)


cdef void bf16_conv_filter_grad(Op* o, float* Wk, Py_ssize_t M, Py_ssize_t gi, Py_ssize_t e0, float* dout,
                                float* part) noexcept nogil:
    """part[Og x K] = bf16(dout) bf16(col)^T over the sub-block's M positions (dout at the chunk's
    scratch). Formed as its transpose, bf16(col) bf16(dout)^T: the kept bfloat16 columns (K rows) are
    its A as they are, and the delta (Og rows, fewer) is the operand transposed into pairs; the K x Og
    result is then transposed into part."""
    cdef Py_ssize_t K = (o.g[0] // o.g[12]) * o.g[4] * o.g[5], Og = o.g[3] // o.g[12], Mp = rup(M, 32)
    cdef fnn_u16* pb = bf16_conv_pack(o, dout)
    cdef float* ct = <float*>(pb + Mp * rup(Og, 16))
    fnn_bf16_pack_b(dout, M, 1, M, Og, pb, Mp)
    fnn_bgemm(K, Og, Mp, bf16_conv_cols(o, Wk, e0, gi, M), Mp, pb, Mp * 16, ct, Og, 0)
    fnn_trans_f32(ct, Og, K, Og, part, K)


cdef void bf16_conv_col_delta(Op* o, float* Wk, float* dout, Py_ssize_t M, Py_ssize_t gi, float* dcol) noexcept nogil:
    """dcol[K x M] = bf16(W_gi)^T bf16(dout) (dout at the chunk's scratch)."""
    cdef Py_ssize_t K = (o.g[0] // o.g[12]) * o.g[4] * o.g[5], Og = o.g[3] // o.g[12], Ogp = rup(Og, 32)
    cdef fnn_u16* pk = bf16_conv_pack(o, dout)
    fnn_bf16_pack_b(dout, M, 0, Og, M, pk, Ogp)
    fnn_bgemm(K, M, Ogp, u16(Wk, 0) + o.wb_e + gi * K * Ogp, Ogp, pk, Ogp * 16, dcol, M, 0)


# ---------------------------------------------------------------- recurrent layers in bfloat16
# Weight panels of a recurrent op (GH = gates x hidden rows): from wf_e, the forward ones, B = W^T:
# LSTM [W_ih, W_hh] over K = F + H as one (a step multiplies [x_t, h_{t-1}]), else W_ih (K = F)
# then W_hh (K = H); from wb_e the backward ones, B = W over K = GH: W_ih (N = F), then W_hh.
cdef enum:
    RNN_WF_X = 0      # [x_t, h_{t-1}] (LSTM) or x_t (RNN, GRU) times the forward weights
    RNN_WF_H = 1      # h_{t-1} times W_hh^T (RNN, GRU)
    RNN_WB_X = 2      # gate deltas times W_ih (the input delta)
    RNN_WB_H = 3      # gate deltas times W_hh (dh_{t-1})
    RNN_MM_ROWS = 64  # rows packed at a time (bounds the chunk's packing space)

RNN_MM_ROWS_ = RNN_MM_ROWS

cdef extern from *:
    """
    /* fnn_pack_wf of the rows [W1[n], W2[n]] (K1 + K2 values) */
    static void fnn_pack_wf2(const float* W1, Py_ssize_t K1, const float* W2, Py_ssize_t K2, Py_ssize_t n0,
                             Py_ssize_t n1, Py_ssize_t Kp, fnn_u16* f) {
        Py_ssize_t n, k;
        for (n = n0; n < n1; n++) {
            fnn_u16* d = f + (n / 16) * Kp * 16 + 2 * (n % 16);
            for (k = 0; k < K1 + K2; k++)
                d[16 * (k & ~(Py_ssize_t)1) + (k & 1)] = fnn_bf16(k < K1 ? W1[n * K1 + k] : W2[n * K2 + k - K1]);
        }
    }
    #ifdef _OPENMP
    #include <omp.h>
    static int fnn_thread_num(void) { return omp_get_thread_num(); }
    #else
    static int fnn_thread_num(void) { return 0; }
    #endif
    """
    void fnn_pack_wf2(const float* W1, Py_ssize_t K1, const float* W2, Py_ssize_t K2, Py_ssize_t n0,
                      Py_ssize_t n1, Py_ssize_t Kp, fnn_u16* f) nogil
    int fnn_thread_num() nogil


cdef inline void* bf16_thread_scratch(Net* net) noexcept nogil:
    """This thread's scratch in a parallel loop over gradient tiles (NULL if the plan needs none)."""
    if net.tsc == NULL:
        return NULL
    return <void*>(<fnn_u16*>net.tsc + fnn_thread_num() * net.tsc_n)


cdef inline Py_ssize_t rnn_gh(Op* o) noexcept nogil:
    return o.hidden * (4 if o.cell == CELL_LSTM else (3 if o.cell == CELL_GRU else 1))


cdef void bf16_pack_rnn_rows(Op* o, float* P, float* Wk, Py_ssize_t r0, Py_ssize_t nr) noexcept nogil:
    """Gate rows [r0, r0+nr) of a recurrent op's weight panels."""
    cdef Py_ssize_t H = o.hidden, GH = rnn_gh(o), F = o.n_in // o.steps, GHp = rup(GH, 32)
    cdef fnn_u16* f = u16(Wk, 0) + o.wf_e
    cdef fnn_u16* b = u16(Wk, 0) + o.wb_e
    if o.cell == CELL_LSTM:
        fnn_pack_wf2(P + o.w_off, F, P + o.w2_off, H, r0, r0 + nr, rup(F + H, 32), f)
    else:
        fnn_pack_wf(P + o.w_off, F, r0, r0 + nr, F, rup(F, 32), f)
        fnn_pack_wf(P + o.w2_off, H, r0, r0 + nr, H, rup(H, 32), f + rup(GH, 16) * rup(F, 32))
    fnn_pack_wb(P + o.w_off, F, r0, r0 + nr, F, GHp, b)
    fnn_pack_wb(P + o.w2_off, H, r0, r0 + nr, H, GHp, b + rup(F, 16) * GHp)


cdef void bf16_rnn_mm(Op* o, float* Wk, int which, float* A, Py_ssize_t lda, Py_ssize_t m, float* C,
                      Py_ssize_t ldc, int acc, float* scratch) noexcept nogil:
    """C[m x N] (=|+=) bf16(A[m x K]) times the op's weight panels ``which`` (RNN_WF_X, ...), A's rows
    rounded into ``scratch`` RNN_MM_ROWS at a time."""
    cdef Py_ssize_t H = o.hidden, GH = rnn_gh(o), F = o.n_in // o.steps, K, N, i0, mi
    cdef fnn_u16* B
    cdef fnn_u16* pk = <fnn_u16*>scratch
    if which == RNN_WF_X:
        K, N = (F + H if o.cell == CELL_LSTM else F), GH
        B = u16(Wk, 0) + o.wf_e
    elif which == RNN_WF_H:
        K, N = H, GH
        B = u16(Wk, 0) + o.wf_e + rup(GH, 16) * rup(F, 32)
    elif which == RNN_WB_X:
        K, N = GH, F
        B = u16(Wk, 0) + o.wb_e
    else:
        K, N = GH, H
        B = u16(Wk, 0) + o.wb_e + rup(F, 16) * rup(GH, 32)
    cdef Py_ssize_t Kp = rup(K, 32)
    i0 = 0
    while i0 < m:
        mi = RNN_MM_ROWS if i0 + RNN_MM_ROWS <= m else m - i0
        fnn_bf16_pack_a(A + i0 * lda, lda, 0, mi, K, pk, Kp)
        fnn_bgemm(mi, N, Kp, pk, Kp, B, Kp * 16, C + i0 * ldc, ldc, acc)
        i0 += mi


cdef void bf16_rnn_weight_grad(Op* o, Tile* Tl, float* Wk, float* G, Py_ssize_t B, fnn_u16* sc) noexcept nogil:
    """Gate rows [r0, r0+nr) of dW_ih = bf16(D)^T bf16(x) and dW_hh = bf16(D')^T bf16(h_{t-1}), each entry
    one float32 sum over the batch's (example, step) rows in order (D' = D but for GRU's n gate)."""
    cdef Py_ssize_t T = o.steps, H = o.hidden, GH = rnn_gh(o), F = o.n_in // T, K = F + H
    cdef Py_ssize_t R = B * T, Rp = rup(R, 32), r0 = Tl.r0, nr = Tl.nr
    cdef float* di = Wk + o.di_e
    cdef float* dhh = Wk + o.dh_e
    cdef float* xh = Wk + o.xh_e
    cdef fnn_u16* pa = sc
    cdef fnn_u16* pb = sc + nr * Rp
    fnn_bf16_pack_a(di + r0, GH, 1, nr, R, pa, Rp)
    fnn_bf16_pack_b(xh, K, 0, R, F, pb, Rp)
    fnn_bgemm(nr, F, Rp, pa, Rp, pb, Rp * 16, G + o.w_off + r0 * F, F, 0)
    if dhh != di:
        fnn_bf16_pack_a(dhh + r0, GH, 1, nr, R, pa, Rp)
    fnn_bf16_pack_b(xh + F, K, 0, R, H, pb, Rp)
    fnn_bgemm(nr, H, Rp, pa, Rp, pb, Rp * 16, G + o.w2_off + r0 * H, H, 0)
