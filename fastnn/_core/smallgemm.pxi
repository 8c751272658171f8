# Single-precision GEMMs for the products of a training step over a batch or a chunk of examples
# (up to a few hundred rows) against a layer's weights, in the AVX-512 and AVX2 builds. OpenBLAS
# packs both operands into panels on every call: for 32-128 rows the weights' copy costs about as
# much as the multiplication (784x1024 layer at batch 32: 40% of the GEMM time was packing), and a
# layer split into blocks of neurons re-packs the batch's rows once per block. One core, 32 rows
# against a 784x1024 layer (AMD EPYC, AVX-512): 210-230 GFLOP/s against OpenBLAS's 105-125. The
# planner picks them per layer and per build (fastnn/_plan.py: SMALL_LIMITS).
# - fnn_sgemm_nt (AVX-512): C = A B^T, each entry a 16-lane dot product over k, 4 x 6 entries at a
#   time (k contiguous in both operands: a Dense layer's input rows against its weight rows; 4 x 4
#   ran 8-14% slower, 5 x 5 and 6 x 4 3-10%); both operands read in place;
# - fnn_sgemm_bc: C (=|+=) op(A) B, rows of B scaled by broadcast entries of op(A), FNN_BC_MR rows x
#   FV_N FNN_BC_NV columns at a time (the input delta D W, and the weight gradient D^T In): 6 x 64
#   with AVX-512's 32 registers of 16 lanes, 4 x 24 with AVX2's 16 registers of 8 lanes (12
#   accumulators; 6 x 16 ran 5-20% slower at 16-32 rows, where 6-row tiles leave 1-2-row rests).
#   Over a copy of FNN_BC_KB rows of B's column block at a time where B's rows are 4 KB apart (a
#   1024-wide layer) and alias in L1 (AVX-512 +5-15%; AVX2 at 16 rows 0.57 -> 0.87 of OpenBLAS),
#   or where the sum runs over more than FNN_BC_KB rows of B (512/1024 +1-4% with the weight
#   gradients);
# - fnn_sgemm_bt: C = A B^T with fnn_sgemm_bc's tiles over a transposed copy of B's block (register
#   transposes of FV_N x FV_N). AVX-512, from FNN_BT_ROWS rows on, where the copy is shared by enough
#   rows: one core, 1024x1024 layer in blocks of 128 neurons, 128 rows 223 -> 236 GFLOP/s against
#   fnn_sgemm_nt, 512 rows 218 -> 243 (OpenBLAS 213); AVX2 at every row count. fnn_sgemm_fwd picks
#   (fewer columns than a vector's lanes stay on fnn_sgemm_nt). fnn_pack_bt makes every block's copy
#   at once for products that share B (inference's units), fnn_sgemm_bt_packed runs on them. Where
#   A's rows and a copy of all of B would not stay in L2 together (512 rows against a 1024-wide
#   layer's block of 128 neurons), fnn_sgemm_bt and fnn_sgemm_bc copy all of B once and go over A in
#   blocks of rows that fit beside it (fnn_row_block; the L2 size from sysfs);
# - fnn_sgemv: one row against B^T (inference on one example), B read in place; with AVX-512 the
#   bits of fnn_sgemm_nt.
# Each entry's sum runs in a fixed order (an FMA chain per lane, then, in fnn_sgemm_nt, a fixed tree
# over the lanes) whichever thread computes it, so training stays bit-identical on any thread count;
# the broadcast kernels give the same bits in both builds. The baseline build and float64 use BLAS.
cdef extern from *:
    """
    /* Dense (fnn_count) and convolution (fnn_count_conv) products by path (own kernels, BLAS, or
       bf16.pxi's bfloat16 kernels) and kind, counted only while fnn_counting is set (tests read them
       to see which path ran; a flag test costs nothing when off) */
    enum { FNN_OWN = 0, FNN_BLAS = 1, FNN_BF16P = 2 };
    enum { FNN_FWD = 0, FNN_DIN = 1, FNN_WGRAD = 2 };
    static int fnn_counting = 0;
    static long long fnn_counts[18];
    static inline void fnn_count_at(int i) {
        if (fnn_counting) {
    #if defined(__GNUC__)
            __atomic_fetch_add(&fnn_counts[i], 1, __ATOMIC_RELAXED);
    #else
            fnn_counts[i]++;
    #endif
        }
    }
    static inline void fnn_count(int path, int kind) { fnn_count_at(path * 3 + kind); }
    static inline void fnn_count_conv(int path, int kind) { fnn_count_at(9 + path * 3 + kind); }
    #if defined(__AVX512F__) && defined(__GNUC__)
    #define FNN_SMALL_GEMM 1
    #include <immintrin.h>
    #include <stdlib.h>
    #define FV_N 16               /* lanes of a vector */
    typedef __m512 fv;
    static inline fv fv_zero(void) { return _mm512_setzero_ps(); }
    static inline fv fv_load(const float* p) { return _mm512_loadu_ps(p); }
    static inline __mmask16 fv_mask(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n > 0 ? n : 0)) - 1); }
    static inline fv fv_loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(fv_mask(n), p); }
    static inline void fv_storen(float* p, fv v, int n) { _mm512_mask_storeu_ps(p, fv_mask(n), v); }
    static inline fv fv_set1(float a) { return _mm512_set1_ps(a); }
    static inline fv fv_fma(fv a, fv b, fv c) { return _mm512_fmadd_ps(a, b, c); }
    #define FNN_BC_MR 6
    #define FNN_BC_NV 4
    #define FNN_BC_KB 128         /* rows of a block of B (32 KB); fnn_set_l1 sizes it to the CPU's L1 */
    #define FNN_BC_KB_MAX 256
    #define FNN_BC_PACK_ROWS 48   /* fewer rows of C: the copy of a long B costs more than it saves (32/256: -3%) */
    #define FNN_BC_COPY_ROWS 0    /* no copy of B's short blocks for rows of A read in place (MLP 512/256 level) */
    #ifndef FNN_BC_APACK_ROWS
    #define FNN_BC_APACK_ROWS 48
    #endif

    /* lane 4 r + c of the result: the sum of a[4 c + r]'s 16 lanes p, as q_m = (p_m + p_m+8) +
       (p_m+4 + p_m+12), then (q_0 + q_2) + (q_1 + q_3) */
    static inline __attribute__((always_inline)) __m512 fnn_hsum16(__m512* a) {
        __m512 s[8], u[4], v[2];
        int i;
        for (i = 0; i < 8; i++)
            s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2*i], a[2*i+1], 0x44),
                                 _mm512_shuffle_f32x4(a[2*i], a[2*i+1], 0xEE));
        for (i = 0; i < 4; i++)
            u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2*i], s[2*i+1], 0x88),
                                 _mm512_shuffle_f32x4(s[2*i], s[2*i+1], 0xDD));
        for (i = 0; i < 2; i++)
            v[i] = _mm512_add_ps(_mm512_unpacklo_ps(u[2*i], u[2*i+1]), _mm512_unpackhi_ps(u[2*i], u[2*i+1]));
        return _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x44), _mm512_shuffle_ps(v[0], v[1], 0xEE));
    }

    /* fnn_hsum16 of a[0..7] and eight zero vectors (lane 4 r + c: the sum of a[4 c + r], c < 2) */
    static inline __attribute__((always_inline)) __m512 fnn_hsum8(__m512* a) {
        __m512 s[4], u[2], v;
        int i;
        for (i = 0; i < 4; i++)
            s[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2*i], a[2*i+1], 0x44),
                                 _mm512_shuffle_f32x4(a[2*i], a[2*i+1], 0xEE));
        for (i = 0; i < 2; i++)
            u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2*i], s[2*i+1], 0x88),
                                 _mm512_shuffle_f32x4(s[2*i], s[2*i+1], 0xDD));
        v = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
        return _mm512_add_ps(_mm512_shuffle_ps(v, v, 0x44), _mm512_shuffle_ps(v, v, 0xEE));
    }

    /* C[i, j] = sum_k A[i, k] B[j, k] for i < M, j < N (C = A B^T). */
    static void fnn_sgemm_nt(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                             const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc) {
        enum { MR = 4, NR = 6, MB = 64 };
        Py_ssize_t ib, ie, i0, j0, k, K16 = K & ~(Py_ssize_t)15;
        int r, c, t, kt = (int)(K & 15);
        /* rows in blocks of MB stay in L2 while NR rows of B at a time, in L1, meet every tile of MR
           rows of the block */
        for (ib = 0; ib < M; ib += MB) {
            ie = ib + MB < M ? ib + MB : M;
            for (j0 = 0; j0 < N; j0 += NR) {
                const float* b[NR];
                int nc = N - j0 < NR ? (int)(N - j0) : NR;
                for (c = 0; c < NR; c++) b[c] = B + (j0 + (c < nc ? c : nc - 1)) * ldb;
                for (i0 = ib; i0 < ie; i0 += MR) {
                    const float* a[MR];
                    int nr = ie - i0 < MR ? (int)(ie - i0) : MR;
                    fv acc[24], x[MR], w;
                    float out[32];
                    for (r = 0; r < MR; r++) a[r] = A + (i0 + (r < nr ? r : nr - 1)) * lda;
                    for (t = 0; t < MR * NR; t++) acc[t] = fv_zero();
                    for (k = 0; k < K16; k += 16) {
                        for (r = 0; r < MR; r++) x[r] = fv_load(a[r] + k);
                        for (c = 0; c < NR; c++) {
                            w = fv_load(b[c] + k);
                            for (r = 0; r < MR; r++) acc[MR * c + r] = fv_fma(x[r], w, acc[MR * c + r]);
                        }
                    }
                    if (kt) {
                        for (r = 0; r < MR; r++) x[r] = fv_loadn(a[r] + k, kt);
                        for (c = 0; c < NR; c++) {
                            w = fv_loadn(b[c] + k, kt);
                            for (r = 0; r < MR; r++) acc[MR * c + r] = fv_fma(x[r], w, acc[MR * c + r]);
                        }
                    }
                    {
                        /* entry (r, c): lane 4 r + c of s0 (c < 4), lane 4 r + c - 4 of s1 (c = 4, 5) */
                        __m512 s0 = fnn_hsum16(acc), s1 = fnn_hsum8(acc + 16);
                        if (nr == 4 && nc == 6) {
                            float* c0 = C + i0 * ldc + j0;
                            _mm_storeu_ps(c0, _mm512_extractf32x4_ps(s0, 0));
                            _mm_storel_pi((__m64*)(c0 + 4), _mm512_extractf32x4_ps(s1, 0));
                            _mm_storeu_ps(c0 + ldc, _mm512_extractf32x4_ps(s0, 1));
                            _mm_storel_pi((__m64*)(c0 + ldc + 4), _mm512_extractf32x4_ps(s1, 1));
                            _mm_storeu_ps(c0 + 2 * ldc, _mm512_extractf32x4_ps(s0, 2));
                            _mm_storel_pi((__m64*)(c0 + 2 * ldc + 4), _mm512_extractf32x4_ps(s1, 2));
                            _mm_storeu_ps(c0 + 3 * ldc, _mm512_extractf32x4_ps(s0, 3));
                            _mm_storel_pi((__m64*)(c0 + 3 * ldc + 4), _mm512_extractf32x4_ps(s1, 3));
                        } else {
                            _mm512_storeu_ps(out, s0);
                            _mm512_storeu_ps(out + 16, s1);
                            for (r = 0; r < nr; r++)
                                for (c = 0; c < nc; c++)
                                    C[(i0 + r) * ldc + j0 + c] = c < 4 ? out[4 * r + c] : out[16 + 4 * r + c - 4];
                        }
                    }
                }
            }
        }
    }

    /* dst[c * ldd + r] = src[r * lds + c] for r, c < 16 */
    static inline void fnn_trv(const float* src, Py_ssize_t lds, float* dst, Py_ssize_t ldd) {
        __m512 r[16], t[16], u[16];
        int i, c;
        for (i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
        for (i = 0; i < 8; i++) {
            t[2*i] = _mm512_unpacklo_ps(r[2*i], r[2*i+1]);
            t[2*i+1] = _mm512_unpackhi_ps(r[2*i], r[2*i+1]);
        }
        for (i = 0; i < 4; i++) {
            u[4*i+0] = _mm512_shuffle_ps(t[4*i], t[4*i+2], 0x44);
            u[4*i+1] = _mm512_shuffle_ps(t[4*i], t[4*i+2], 0xEE);
            u[4*i+2] = _mm512_shuffle_ps(t[4*i+1], t[4*i+3], 0x44);
            u[4*i+3] = _mm512_shuffle_ps(t[4*i+1], t[4*i+3], 0xEE);
        }
        for (c = 0; c < 4; c++) {
            __m512 a = _mm512_shuffle_f32x4(u[c], u[4+c], 0x88), b = _mm512_shuffle_f32x4(u[c], u[4+c], 0xDD);
            __m512 p = _mm512_shuffle_f32x4(u[8+c], u[12+c], 0x88), q = _mm512_shuffle_f32x4(u[8+c], u[12+c], 0xDD);
            _mm512_storeu_ps(dst + c * ldd, _mm512_shuffle_f32x4(a, p, 0x88));
            _mm512_storeu_ps(dst + (8 + c) * ldd, _mm512_shuffle_f32x4(a, p, 0xDD));
            _mm512_storeu_ps(dst + (4 + c) * ldd, _mm512_shuffle_f32x4(b, q, 0x88));
            _mm512_storeu_ps(dst + (12 + c) * ldd, _mm512_shuffle_f32x4(b, q, 0xDD));
        }
    }

    #define FNN_BT_ROWS 64
    /* A convolution's output on the own kernels from 24 channels per group, its column delta on
       OpenBLAS (conv.pxi) */
    #define FNN_CONV_OWN_MIN_OUT 24
    #define FNN_CONV_DCOL_MAX_OUT 0
    #elif defined(__AVX2__) && defined(__FMA__) && defined(__GNUC__)
    /* AVX2: 16 registers of 8 lanes, so 6 x 16 tiles (12 accumulators, BLIS's Haswell shape) */
    #define FNN_SMALL_GEMM 2
    #include <immintrin.h>
    #include <stdlib.h>
    #define FV_N 8
    typedef __m256 fv;
    static inline fv fv_zero(void) { return _mm256_setzero_ps(); }
    static inline fv fv_load(const float* p) { return _mm256_loadu_ps(p); }
    static inline __m256i fv_mask(int n) {
        return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    }
    static inline fv fv_loadn(const float* p, int n) {
        return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, fv_mask(n));
    }
    static inline void fv_storen(float* p, fv v, int n) {
        if (n >= 8) _mm256_storeu_ps(p, v);
        else if (n > 0) _mm256_maskstore_ps(p, fv_mask(n), v);
    }
    static inline fv fv_set1(float a) { return _mm256_set1_ps(a); }
    static inline fv fv_fma(fv a, fv b, fv c) { return _mm256_fmadd_ps(a, b, c); }
    #ifndef FNN_BC_MR
    #define FNN_BC_MR 4
    #define FNN_BC_NV 3
    #endif
    #define FNN_BC_KB 256         /* rows of a block of B (24 KB); fnn_set_l1 sizes it to the CPU's L1 */
    #define FNN_BC_KB_MAX 512
    /* From 16 rows of C on, B's long blocks are copied and a transposed op(A) packed: a 64-wide
       layer's weight gradient runs in two tiles of 32 rows on two threads, whose 4-row tiles
       otherwise stream B's 96-byte row pieces from L2 and gather D's columns for every block of
       columns. Intel Xeon, one core, 32 rows x 784 over 512 examples 80 -> 104 GFLOP/s (64 rows
       112); held to AVX2, 2 threads, MLP 512/64 +9%, 128/64 +4%, the other cells level. */
    #define FNN_BC_PACK_ROWS 16
    /* From 64 rows of A read in place (k contiguous: the input delta D W) on, B's blocks are copied
       even where they are short and their rows not 4 KB apart, so that the tiles run compiled for
       contiguous strides (fnn_bc_rows_t; with strides as variables they ran at 0.8x). Intel Xeon held
       to AVX2, 2 threads, MLP 512/256 +4-8%, 512/64 and 128/64 +2%; 32 rows lost 7%, so not there. */
    #define FNN_BC_COPY_ROWS 64
    #ifndef FNN_BC_APACK_ROWS
    #define FNN_BC_APACK_ROWS 16
    #endif
    #define FNN_BT_ROWS 0
    /* A convolution's products on the own kernels (conv.pxi): its output for every channel count,
       its column delta below 32 output channels per group. OpenBLAS's Haswell kernels pack even
       the smallest operands (they have no unpacked small-matrix path), which LeNet-5's 6 and 16
       channels cannot repay. Intel Xeon as an AVX2 machine, 2 threads, against OpenBLAS for both:
       output LeNet-5 batch 32 / 128 +18% / +22%; column delta as well, LeNet-5 +4%, 1-D CNN (25
       channels) +3%, but the CIFAR-size net's 64 and 128 channels -2%. */
    #define FNN_CONV_OWN_MIN_OUT 1
    #define FNN_CONV_DCOL_MAX_OUT 32

    /* dst[c * ldd + r] = src[r * lds + c] for r, c < 8 */
    static inline void fnn_trv(const float* src, Py_ssize_t lds, float* dst, Py_ssize_t ldd) {
        __m256 r[8], t[8], u[8];
        int i;
        for (i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * lds);
        for (i = 0; i < 4; i++) {
            t[2*i] = _mm256_unpacklo_ps(r[2*i], r[2*i+1]);
            t[2*i+1] = _mm256_unpackhi_ps(r[2*i], r[2*i+1]);
        }
        for (i = 0; i < 2; i++) {
            u[4*i+0] = _mm256_shuffle_ps(t[4*i], t[4*i+2], 0x44);
            u[4*i+1] = _mm256_shuffle_ps(t[4*i], t[4*i+2], 0xEE);
            u[4*i+2] = _mm256_shuffle_ps(t[4*i+1], t[4*i+3], 0x44);
            u[4*i+3] = _mm256_shuffle_ps(t[4*i+1], t[4*i+3], 0xEE);
        }
        for (i = 0; i < 4; i++) {
            _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[4+i], 0x20));
            _mm256_storeu_ps(dst + (4 + i) * ldd, _mm256_permute2f128_ps(u[i], u[4+i], 0x31));
        }
    }
    #else
    #define FNN_SMALL_GEMM 0
    #define FNN_CONV_OWN_MIN_OUT 0
    #define FNN_CONV_DCOL_MAX_OUT 0
    #endif

    /* rows ahead that the copies of operands with rows a multiple of 4 KB apart prefetch (a prefetch
       past the end of an array is harmless: it never faults) */
    #ifndef FNN_PF_ROWS
    #define FNN_PF_ROWS 8
    #endif

    /* the recurrent steps' products on the own kernels (recurrent.pxi): where OpenBLAS has no
       unpacked small-matrix path for them */
    #define FNN_STEP_OWN (FNN_SMALL_GEMM == 2)

    #if FNN_SMALL_GEMM
    /* Rows of B per block (FNN_BC_KB) as the CPU's L1 data cache allows: two thirds of it, the
       rest for the rows of A and C a tile reads, in whole vectors. The blocking changes no sum's
       order (each entry's FMA chain goes on from block to block), only where the block lives. */
    static Py_ssize_t fnn_kb = FNN_BC_KB;
    static void fnn_set_l1(Py_ssize_t bytes) {
        Py_ssize_t kb = bytes * 2 / 3 / (FV_N * FNN_BC_NV * (Py_ssize_t)sizeof(float)) / FV_N * FV_N;
        fnn_kb = kb < 2 * FV_N ? 2 * FV_N : kb > FNN_BC_KB_MAX ? FNN_BC_KB_MAX : kb;
    }

    /* Rows of A per pass over the column blocks of C (fnn_sgemm_bt, fnn_sgemm_bc), where A (M x K)
       and a copy of all of B's blocks (N x K) would not stay together in three quarters of the L2
       cache of a core but the copy alone fills at most half of that: as many rows as fit beside the
       copy, so that every column block finds them in L2 rather than streaming A again from L3 (AVX2,
       one core, 512 rows against 128 x 1024 weights: +7-9% against no blocks). M otherwise. A row
       block's products change no entry's sum. */
    static Py_ssize_t fnn_l2 = 1 << 20;
    /* Floats in a copy of all of B's column blocks, NW columns each over its K rows (fnn_pack_b,
       fnn_pack_bt) */
    static Py_ssize_t fnn_bt_packed_size(Py_ssize_t N, Py_ssize_t K) {
        const Py_ssize_t NW = FV_N * FNN_BC_NV;
        return (N + NW - 1) / NW * NW * K;
    }
    static void fnn_set_l2(Py_ssize_t bytes) { fnn_l2 = bytes < (256 << 10) ? (256 << 10) : bytes; }
    static inline Py_ssize_t fnn_row_block(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K) {
        const Py_ssize_t room = fnn_l2 / 4 * 3 / (Py_ssize_t)sizeof(float), bsz = fnn_bt_packed_size(N, K);
        Py_ssize_t fit, nblk, mb;
        if (K < 1 || M * K + bsz <= room || 2 * bsz > room) return M;
        fit = (room - bsz) / K;
        if (fit < FNN_BC_MR) return M;
        nblk = (M + fit - 1) / fit;
        mb = (M + nblk - 1) / nblk;
        return (mb + FNN_BC_MR - 1) / FNN_BC_MR * FNN_BC_MR;
    }

    /* One MR x (FV_N NV) block of C (+)= op(A) B over K rows of B, op(A)[i, j] = A[i si + j sj]; columns
       [0, nc). Starts from zero, or (load) from C: a longer sum runs in blocks of rows, each chain
       going on from where the last one stopped, so every entry is one FMA chain in j order. */
    #define FNN_BC(NAME, MR, NV) \
    static inline __attribute__((always_inline)) void fnn_bc_##NAME(Py_ssize_t K, const float* A, \
            Py_ssize_t si, Py_ssize_t sj, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc, int nc, \
            int load) { \
        fv acc[MR][NV], w[NV]; \
        Py_ssize_t j; int r, v; \
        if (load) { for (r = 0; r < MR; r++) for (v = 0; v < NV; v++) \
            acc[r][v] = fv_loadn(C + r * ldc + FV_N * v, nc - FV_N * v); } \
        else { for (r = 0; r < MR; r++) for (v = 0; v < NV; v++) acc[r][v] = fv_zero(); } \
        if (nc == FV_N * NV) { \
            for (j = 0; j < K; j++) { \
                const float* b = B + j * ldb; \
                for (v = 0; v < NV; v++) w[v] = fv_load(b + FV_N * v); \
                for (r = 0; r < MR; r++) { fv a = fv_set1(A[r * si + j * sj]); \
                    for (v = 0; v < NV; v++) acc[r][v] = fv_fma(a, w[v], acc[r][v]); } } \
        } else { \
            for (j = 0; j < K; j++) { \
                const float* b = B + j * ldb; \
                for (v = 0; v < NV; v++) w[v] = fv_loadn(b + FV_N * v, nc - FV_N * v); \
                for (r = 0; r < MR; r++) { fv a = fv_set1(A[r * si + j * sj]); \
                    for (v = 0; v < NV; v++) acc[r][v] = fv_fma(a, w[v], acc[r][v]); } } \
        } \
        for (r = 0; r < MR; r++) for (v = 0; v < NV; v++) fv_storen(C + r * ldc + FV_N * v, acc[r][v], nc - FV_N * v); \
    }
    /* Each row count in every width from one vector to FNN_BC_NV: a product's last block of columns
       (N not a multiple of NW) runs the tile as wide as it needs, not NW wide over masked lanes (an
       LSTM step's 64 gate columns are 24 + 24 + 16 on AVX2: a third of the last tile's FMAs were on
       zeros). Which tile sums an entry changes none of its bits. */
    #define FNN_BC_SET(S, NV) FNN_BC(main##S, FNN_BC_MR, NV) FNN_BC(half##S, FNN_BC_MR / 2, NV) \
        FNN_BC(two##S, 2, NV) FNN_BC(one##S, 1, NV)
    FNN_BC_SET(, FNN_BC_NV)
    FNN_BC_SET(_1, 1)
    FNN_BC_SET(_2, 2)
    #if FNN_BC_NV > 3
    FNN_BC_SET(_3, 3)
    #endif

    /* Rows per tile from the rows left: whole FNN_BC_MR tiles, then the rest in tiles of at least two
       rows where it can (a 1-row tile has too few FMA chains to hide the FMA latency), e.g. with
       6-row tiles 5 = 3 + 2 and 4 = 2 + 2. Which tile sums a row changes none of its bits. */
    static inline int fnn_bc_cut(Py_ssize_t left) {
        if (left >= FNN_BC_MR) return FNN_BC_MR;
        if (left >= FNN_BC_MR / 2 && left != 4) return FNN_BC_MR / 2;
        return left >= 2 ? 2 : 1;
    }

    #define FNN_BC_DISPATCH_S(S, MR, K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD) \
        switch (MR) { \
        case FNN_BC_MR: fnn_bc_main##S(K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD); break; \
        case FNN_BC_MR / 2: fnn_bc_half##S(K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD); break; \
        default: if ((MR) == 2) fnn_bc_two##S(K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD); \
                 else fnn_bc_one##S(K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD); }
    #if FNN_BC_NV > 3
    #define FNN_BC_CASE3(...) case 3: FNN_BC_DISPATCH_S(_3, __VA_ARGS__) break;
    #else
    #define FNN_BC_CASE3(...)
    #endif
    #define FNN_BC_DISPATCH(MR, K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD) \
        switch (((NC) + FV_N - 1) / FV_N) { \
        case 1: FNN_BC_DISPATCH_S(_1, MR, K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD) break; \
        case 2: FNN_BC_DISPATCH_S(_2, MR, K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD) break; \
        FNN_BC_CASE3(MR, K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD) \
        default: FNN_BC_DISPATCH_S(, MR, K, A, SI, SJ, B, LDB, C, LDC, NC, LOAD) }

    /* M rows of a block of C (+)= op(A) B over K rows of B (columns [0, nc)), in fnn_bc_cut's tiles */
    static inline __attribute__((always_inline)) void fnn_bc_rows_in(Py_ssize_t M, Py_ssize_t K, const float* A,
            Py_ssize_t si, Py_ssize_t sj, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc, int nc, int load) {
        Py_ssize_t i0;
        int mr;
        for (i0 = 0; i0 < M; i0 += mr) {
            mr = fnn_bc_cut(M - i0);
            FNN_BC_DISPATCH(mr, K, A + i0 * si, si, sj, B, ldb, C + i0 * ldc, ldc, nc, load);
        }
    }
    static void fnn_bc_rows(Py_ssize_t M, Py_ssize_t K, const float* A, Py_ssize_t si, Py_ssize_t sj,
                            const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc, int nc, int load) {
        fnn_bc_rows_in(M, K, A, si, sj, B, ldb, C, ldc, nc, load);
    }
    /* the same over rows of A read in place (k contiguous) and a contiguous copy of B's block (the
       forward's and the input delta's case), compiled for those strides: with them as variables the
       AVX2 forward ran 1.4x slower (512 rows against 128 x 1024 weights) */
    static __attribute__((noinline, noclone)) void fnn_bc_rows_t(Py_ssize_t M, Py_ssize_t K, const float* A,
            Py_ssize_t lda, const float* bp, float* C, Py_ssize_t ldc, int nc, int load) {
        fnn_bc_rows_in(M, K, A, lda, 1, bp, FV_N * FNN_BC_NV, C, ldc, nc, load);
    }

    /* Rows [0, M) x columns [0, kb) of op(A) as fnn_bc_rows_p reads them: tile by tile (fnn_bc_cut's
       tiles), a tile's mr rows interleaved per column: ap[i0 kb + j mr + r] = op(A)[i0 + r, j]. Where
       op(A) is a transposed view (si = 1: the weight gradient's D^T), column by column, each tile's
       rows one masked vector move: a column's entries share cache lines, which a tile-by-tile pass
       would fetch again for every tile (D's rows are 4 KB apart in a 1024-wide layer). */
    static void fnn_pack_a(Py_ssize_t M, Py_ssize_t kb, const float* A, Py_ssize_t si, Py_ssize_t sj, float* ap) {
        Py_ssize_t i0, j;
        int r, mr;
        if (si == 1) {
            for (j = 0; j < kb; j++) {
                const float* a = A + j * sj;
                for (i0 = 0; i0 < M; i0 += 16)      /* rows 4 KB apart defeat the hardware prefetch */
                    _mm_prefetch((const char*)(a + FNN_PF_ROWS * sj + i0), _MM_HINT_T0);
                for (i0 = 0; i0 < M; i0 += mr) {
                    mr = fnn_bc_cut(M - i0);
    #if FNN_SMALL_GEMM == 1
                    fv_storen(ap + i0 * kb + j * mr, fv_loadn(a + i0, mr), mr);
    #else
                    /* AVX2's masked stores are slow (microcoded on AMD): a 4-row tile as one 128-bit
                       move, the rest by scalar moves */
                    if (mr == 4) _mm_storeu_ps(ap + i0 * kb + j * 4, _mm_loadu_ps(a + i0));
                    else for (r = 0; r < mr; r++) ap[i0 * kb + j * mr + r] = a[i0 + r];
    #endif
                }
            }
            return;
        }
        for (i0 = 0; i0 < M; i0 += mr) {
            mr = fnn_bc_cut(M - i0);
            float* p = ap + i0 * kb;
            const float* a = A + i0 * si;
            for (j = 0; j < kb; j++)
                for (r = 0; r < mr; r++)
                    p[j * mr + r] = a[r * si + j * sj];
        }
    }

    static inline void fnn_bc_rows_p(Py_ssize_t M, Py_ssize_t kb, const float* ap, const float* B, Py_ssize_t ldb,
                                     float* C, Py_ssize_t ldc, int nc, int load) {
        Py_ssize_t i0;
        int mr;
        for (i0 = 0; i0 < M; i0 += mr) {
            mr = fnn_bc_cut(M - i0);
            FNN_BC_DISPATCH(mr, kb, ap + i0 * kb, 1, mr, B, ldb, C + i0 * ldc, ldc, nc, load);
        }
    }

    /* A thread's buffer for packed rows of op(A), grown as needed and kept for the thread's life
       (the kernels run inside the engine's parallel loops, where nothing may be allocated per step) */
    static float* fnn_buf_get(float** buf, Py_ssize_t* cap, Py_ssize_t n) {
        if (n > *cap) {
            free(*buf);
            *buf = (float*)aligned_alloc(64, (size_t)((n + 15) & ~(Py_ssize_t)15) * sizeof(float));
            *cap = *buf ? n : 0;
        }
        return *buf;
    }
    static __thread float* fnn_ap_buf = NULL;
    static __thread Py_ssize_t fnn_ap_cap = 0;
    static float* fnn_ap_get(Py_ssize_t n) { return fnn_buf_get(&fnn_ap_buf, &fnn_ap_cap, n); }
    /* ... and for a copy of all of B's blocks, shared by blocks of rows (fnn_row_block) */
    static __thread float* fnn_bp_buf = NULL;
    static __thread Py_ssize_t fnn_bp_cap = 0;
    static float* fnn_bp_get(Py_ssize_t n) { return fnn_buf_get(&fnn_bp_buf, &fnn_bp_cap, n); }

    /* B's rows [0, kb) x columns [0, nc) copied to bp (rows of NW) */
    static inline void fnn_copy_b(Py_ssize_t kb, int nc, const float* B, Py_ssize_t ldb, float* bp) {
        enum { NW = FV_N * FNN_BC_NV };
        Py_ssize_t j;
        int v;
        for (j = 0; j < kb; j++) {
            for (v = 0; v < FNN_BC_NV * FV_N; v += 16)
                _mm_prefetch((const char*)(B + (j + FNN_PF_ROWS) * ldb + v), _MM_HINT_T0);
            for (v = 0; v < FNN_BC_NV; v++)
                fv_storen(bp + j * NW + FV_N * v, fv_loadn(B + j * ldb + FV_N * v, nc - FV_N * v), FV_N);
        }
    }

    /* All of B's column blocks at once: block n0 (rows [0, K) x columns [n0, n0 + NW)) at bp + n0 K,
       rows of NW; row by row, so each of B's rows (4 KB apart in a 1024-wide layer, each on its own
       page) is fetched once, not once per column block */
    static void fnn_pack_b(Py_ssize_t K, Py_ssize_t N, const float* B, Py_ssize_t ldb, float* bp) {
        enum { NW = FV_N * FNN_BC_NV };
        Py_ssize_t j, n0;
        int v;
        for (j = 0; j < K; j++) {
            for (v = 0; v < N; v += 16)
                _mm_prefetch((const char*)(B + (j + FNN_PF_ROWS) * ldb + v), _MM_HINT_T0);
            for (n0 = 0; n0 < N; n0 += NW) {
                int nc = N - n0 < NW ? (int)(N - n0) : NW;
                const float* b = B + j * ldb + n0;
                for (v = 0; v < FNN_BC_NV; v++)
                    fv_storen(bp + n0 * K + j * NW + FV_N * v, fv_loadn(b + FV_N * v, nc - FV_N * v), FV_N);
            }
        }
    }

    /* C (=|+=) op(A) B: C is M x N (ldc), B is K x N (ldb), op(A)[i, j] = A[i si + j sj] (M x K). With
       acc_c, each entry's chain starts from C. B goes in blocks of FNN_BC_KB rows x NW columns, copied
       to a contiguous block first, where its rows are a multiple of 4 KB apart (1024-wide layers:
       they all fall into the same few L1 sets; Intel Xeon, one core, 1024x1024 input delta over 32
       rows 41 -> 100 GFLOP/s, over 256 +5-15%) or, for FNN_BC_PACK_ROWS rows of C or more, where K is
       longer than a block (NW columns of B over all K rows would not stay in L1 while every tile of
       C passes over them), or (AVX2) from FNN_BC_COPY_ROWS rows of A read in place on; elsewhere the
       copy only cost time (32/256: 3-6%). From FNN_BC_APACK_ROWS
       rows and 8 column blocks on, op(A) is packed too where it is a transposed view (the weight
       gradient's D^T: each broadcast otherwise reads a new row of D) or its rows are 4 KB apart, a
       block of FNN_BC_KB columns at a time shared by every column block of C, so the broadcasts
       read one contiguous stream (Intel Xeon, one core, 128 rows of a 1024x1024 weight gradient
       over 512 examples: 100-106 -> 130-150 GFLOP/s; with fewer column blocks it lost 4-6%). */
    static void fnn_sgemm_bc(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t si,
                             Py_ssize_t sj, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc, int acc_c) {
        enum { NW = FV_N * FNN_BC_NV };
        float bp[FNN_BC_KB_MAX * NW] __attribute__((aligned(64)));
        const Py_ssize_t KB = fnn_kb;
        Py_ssize_t n0, j0, kb;
        int copy = ldb % 1024 == 0 || (M >= FNN_BC_PACK_ROWS && K > KB) ||
                   (FNN_BC_COPY_ROWS && sj == 1 && M >= FNN_BC_COPY_ROWS);
        float* ap = M >= FNN_BC_APACK_ROWS && N >= 8 * NW && K > 0 && (sj != 1 || si % 1024 == 0) ?
                    fnn_ap_get(M * (K < KB ? K : KB)) : NULL;
        if (ap) {
            for (j0 = 0; j0 < K; j0 += kb) {
                kb = K - j0 < KB ? K - j0 : KB;
                fnn_pack_a(M, kb, A + j0 * sj, si, sj, ap);
                for (n0 = 0; n0 < N; n0 += NW) {
                    int nc = N - n0 < NW ? (int)(N - n0) : NW;
                    const float* Bj = B + j0 * ldb + n0;
                    if (copy) fnn_copy_b(kb, nc, Bj, ldb, bp);
                    fnn_bc_rows_p(M, kb, ap, copy ? bp : Bj, copy ? NW : ldb, C + n0, ldc, nc, j0 > 0 || acc_c);
                }
            }
            return;
        }
        const Py_ssize_t MB = fnn_row_block(M, N, K);
        Py_ssize_t i0, mb;
        float* bpa = MB < M && copy ? fnn_bp_get(fnn_bt_packed_size(N, K)) : NULL;
        if (bpa) fnn_pack_b(K, N, B, ldb, bpa);     /* once, for every block of rows */
        for (i0 = 0; i0 < M; i0 += MB) {
            mb = M - i0 < MB ? M - i0 : MB;
            for (n0 = 0; n0 < N; n0 += NW) {
                int nc = N - n0 < NW ? (int)(N - n0) : NW;
                j0 = 0;
                do {        /* once at least: K = 0 still writes C */
                    const float* Bj = B + j0 * ldb + n0;
                    Py_ssize_t ldbj = ldb;
                    kb = K - j0;
                    if (copy) {
                        kb = kb < KB ? kb : KB;
                        if (bpa) {
                            Bj = bpa + n0 * K + j0 * NW;
                        } else {
                            fnn_copy_b(kb, nc, Bj, ldb, bp);
                            Bj = bp;
                        }
                        ldbj = NW;
                    }
                    if (copy && sj == 1)
                        fnn_bc_rows_t(mb, kb, A + i0 * si + j0, si, Bj, C + i0 * ldc + n0, ldc, nc,
                                      j0 > 0 || acc_c);
                    else
                        fnn_bc_rows(mb, kb, A + i0 * si + j0 * sj, si, sj, Bj, ldbj, C + i0 * ldc + n0, ldc, nc,
                                    j0 > 0 || acc_c);
                    j0 += kb;
                } while (j0 < K);
            }
        }
    }

    /* B's rows [0, nc) x columns [0, kb), transposed into bp (rows of NW) */
    static inline void fnn_copy_bt(Py_ssize_t kb, int nc, const float* B, Py_ssize_t ldb, float* bp) {
        enum { NW = FV_N * FNN_BC_NV };
        Py_ssize_t j, n;
        for (n = 0; n < nc; n += FV_N)
            for (j = 0; j < kb; j += FV_N) {
                if (n + FV_N <= nc && j + FV_N <= kb) {
                    fnn_trv(B + n * ldb + j, ldb, bp + j * NW + n, NW);
                } else {
                    int jn = kb - j < FV_N ? (int)(kb - j) : FV_N, nn = nc - n < FV_N ? (int)(nc - n) : FV_N, a, b;
                    for (a = 0; a < jn; a++)
                        for (b = 0; b < nn; b++)
                            bp[(j + a) * NW + n + b] = B[(n + b) * ldb + j + a];
                }
            }
    }

    static void fnn_pack_bt(Py_ssize_t N, Py_ssize_t K, const float* B, Py_ssize_t ldb, float* bp);
    static void fnn_sgemm_bt_packed(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                                    const float* bp, float* C, Py_ssize_t ldc);
    static void fnn_sgemm_bt_shared(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                                    const float* bp, float* C, Py_ssize_t ldc);
    /* C[i, j] = sum_k A[i, k] B[j, k] (C = A B^T, B is N x K) as fnn_sgemm_bc's tiles over
       B^T, copied FNN_BC_KB x NW at a time; each entry one FMA chain in k order (A's rows read in
       place: packing them measured level for 1024-wide inputs and 5-25% slower for narrower ones) */
    static void fnn_sgemm_bt(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                             const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc) {
        enum { NW = FV_N * FNN_BC_NV };
        float bp[FNN_BC_KB_MAX * NW] __attribute__((aligned(64)));
        const Py_ssize_t KB = fnn_kb;
        Py_ssize_t n0, j0, kb;
        const Py_ssize_t MB = fnn_row_block(M, N, K);
        Py_ssize_t i0, mb;
        float* bpa = MB < M ? fnn_bp_get(fnn_bt_packed_size(N, K)) : NULL;
        if (bpa) {
            fnn_pack_bt(N, K, B, ldb, bpa);
            fnn_sgemm_bt_shared(M, N, K, A, lda, bpa, C, ldc);
            return;
        }
        for (i0 = 0; i0 < M; i0 += MB) {
            mb = M - i0 < MB ? M - i0 : MB;
            for (n0 = 0; n0 < N; n0 += NW) {
                int nc = N - n0 < NW ? (int)(N - n0) : NW;
                j0 = 0;
                do {
                    kb = K - j0 < KB ? K - j0 : KB;
                    fnn_copy_bt(kb, nc, B + n0 * ldb + j0, ldb, bp);
                    fnn_bc_rows_t(mb, kb, A + i0 * lda + j0, lda, bp, C + i0 * ldc + n0, ldc, nc, j0 > 0);
                    j0 += kb;
                } while (j0 < K);
            }
        }
    }

    /* Whether fnn_sgemm_fwd multiplies M rows against N x K weights with the broadcast kernel: from
       FNN_BT_ROWS rows on, where the transposed copy is shared by enough rows, unless B has fewer rows
       than a vector has lanes (a 10-class output layer: the broadcast tiles' 64 columns would be
       mostly masked lanes, 5x slower at 64 rows than the dot-product kernel) */
    static inline int fnn_fwd_uses_bt(Py_ssize_t M, Py_ssize_t N) {
    #if FNN_BT_ROWS
        return M >= FNN_BT_ROWS && N >= FV_N;
    #else
        return 1;
    #endif
    }

    /* C = A B^T (B is N x K): the dot-product kernel where fnn_fwd_uses_bt says no, the broadcast one
       elsewhere */
    static void fnn_sgemm_fwd(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                              const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc) {
    #if FNN_BT_ROWS
        if (!fnn_fwd_uses_bt(M, N)) {
            fnn_sgemm_nt(M, N, K, A, lda, B, ldb, C, ldc);
            return;
        }
    #endif
        fnn_sgemm_bt(M, N, K, A, lda, B, ldb, C, ldc);
    }

    /* All of fnn_sgemm_bt's transposed blocks of B (N x K) at once: block (n0, j0) at bp + n0 K + j0 NW,
       so that many products against the same B (the units of an inference call over a large batch)
       share one copy instead of making one each. fnn_sgemm_bt_packed then runs fnn_sgemm_bt's tiles
       over them: the same bits. (fnn_bt_packed_size, above, gives the copy's size.) */

    /* Rows of B per block of fnn_pack_bt's copy: rows [n0, n0 + NW) pack on their own, by
       fnn_pack_bt(nc, K, B + n0 ldb, ldb, bp + n0 K), so threads can share the packing. */
    static Py_ssize_t fnn_bt_block_rows(void) { return FV_N * FNN_BC_NV; }

    static void fnn_pack_bt(Py_ssize_t N, Py_ssize_t K, const float* B, Py_ssize_t ldb, float* bp) {
        enum { NW = FV_N * FNN_BC_NV };
        const Py_ssize_t KB = fnn_kb;
        Py_ssize_t n0, j0, kb;
        for (n0 = 0; n0 < N; n0 += NW) {
            int nc = N - n0 < NW ? (int)(N - n0) : NW;
            for (j0 = 0; j0 < K; j0 += kb) {
                kb = K - j0 < KB ? K - j0 : KB;
                fnn_copy_bt(kb, nc, B + n0 * ldb + j0, ldb, bp + n0 * K + j0 * NW);
            }
        }
    }

    static void fnn_sgemm_bt_packed(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                                    const float* bp, float* C, Py_ssize_t ldc) {
        enum { NW = FV_N * FNN_BC_NV };
        const Py_ssize_t KB = fnn_kb;
        Py_ssize_t n0, j0, kb;
        for (n0 = 0; n0 < N; n0 += NW) {
            int nc = N - n0 < NW ? (int)(N - n0) : NW;
            j0 = 0;
            do {
                kb = K - j0 < KB ? K - j0 : KB;
                fnn_bc_rows_t(M, kb, A + j0, lda, bp + n0 * K + j0 * NW, C + n0, ldc, nc, j0 > 0);
                j0 += kb;
            } while (j0 < K);
        }
    }

    /* Rows [r0, r0 + nr) of B (N x K) into fnn_pack_bt's copy of all of B, each row into its block's
       lanes (rows of any range: an optimizer tile renews the rows it has just updated) */
    static void fnn_pack_bt_rows(Py_ssize_t r0, Py_ssize_t nr, Py_ssize_t K, const float* B, Py_ssize_t ldb,
                                 float* bp) {
        enum { NW = FV_N * FNN_BC_NV };
        Py_ssize_t n = r0, e, bs;
        while (n < r0 + nr) {
            bs = n / NW * NW;
            e = bs + NW < r0 + nr ? bs + NW : r0 + nr;
            fnn_pack_bt(e - n, K, B + n * ldb, ldb, bp + bs * K + (n - bs));
            n = e;
        }
    }

    /* C = A B^T over fnn_pack_bt's copy of B, in fnn_sgemm_bt's blocks of rows: fnn_sgemm_bt's bits
       without its copy (a training step's chunks share one copy of a layer's weights) */
    static void fnn_sgemm_bt_shared(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                                    const float* bp, float* C, Py_ssize_t ldc) {
        const Py_ssize_t MB = fnn_row_block(M, N, K);
        Py_ssize_t i0;
        for (i0 = 0; i0 < M; i0 += MB)
            fnn_sgemm_bt_packed(M - i0 < MB ? M - i0 : MB, N, K, A + i0 * lda, lda, bp, C + i0 * ldc, ldc);
    }

    /* y[j] = sum_k x[k] W[j, k], j < N: one row against a layer's weights (inference on one example),
       FV_N rows of W at a time, each entry an FV_N-lane FMA chain over k, then a fixed tree over the
       lanes. AVX-512: fnn_hsum16's tree, so every entry has the bits fnn_sgemm_nt gives that row in a
       batch, at a quarter of its work (its 4-row tiles would repeat the one row). AVX2: a new rounding
       (fnn_sgemm_fwd sums each entry in k order there, which needs W transposed). W is read in place. */
    static inline void fnn_gemv_store(fv* acc, float* y, int nc) {
    #if FNN_SMALL_GEMM == 1
        /* lane 4 r + c of fnn_hsum16 is the sum of acc[4 c + r]: entry j is lane 4 (j % 4) + j / 4 */
        const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        fv_storen(y, _mm512_permutexvar_ps(idx, fnn_hsum16(acc)), nc);
    #else
        float t[FV_N][FV_N];
        int c;
        for (c = 0; c < nc; c++) {
            _mm256_storeu_ps(t[c], acc[c]);
            y[c] = ((t[c][0] + t[c][4]) + (t[c][2] + t[c][6])) + ((t[c][1] + t[c][5]) + (t[c][3] + t[c][7]));
        }
    #endif
    }

    static void fnn_sgemv(Py_ssize_t N, Py_ssize_t K, const float* x, const float* W, Py_ssize_t ldw, float* y) {
        Py_ssize_t j0, k, Kv = K - K % FV_N;
        int c, kt = (int)(K % FV_N);
        for (j0 = 0; j0 < N; j0 += FV_N) {
            int nc = N - j0 < FV_N ? (int)(N - j0) : FV_N;
            const float* w[FV_N];
            fv acc[FV_N], xv;
            for (c = 0; c < FV_N; c++) {
                w[c] = W + (j0 + (c < nc ? c : nc - 1)) * ldw;
                acc[c] = fv_zero();
            }
            for (k = 0; k < Kv; k += FV_N) {
                xv = fv_load(x + k);
                for (c = 0; c < FV_N; c++) acc[c] = fv_fma(xv, fv_load(w[c] + k), acc[c]);
            }
            if (kt) {
                xv = fv_loadn(x + k, kt);
                for (c = 0; c < FV_N; c++) acc[c] = fv_fma(xv, fv_loadn(w[c] + k, kt), acc[c]);
            }
            fnn_gemv_store(acc, y + j0, nc);
        }
    }
    #else
    static Py_ssize_t fnn_kb = 0;
    static void fnn_set_l1(Py_ssize_t bytes) { }
    static Py_ssize_t fnn_l2 = 0;
    static void fnn_set_l2(Py_ssize_t bytes) { }
    static inline Py_ssize_t fnn_row_block(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K) { return M; }
    static void fnn_sgemm_bc(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t si,
                             Py_ssize_t sj, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc,
                             int acc_c) { }
    static void fnn_sgemm_fwd(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                              const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc) { }
    static void fnn_sgemv(Py_ssize_t N, Py_ssize_t K, const float* x, const float* W, Py_ssize_t ldw, float* y) { }
    static inline int fnn_fwd_uses_bt(Py_ssize_t M, Py_ssize_t N) { return 0; }
    static Py_ssize_t fnn_bt_packed_size(Py_ssize_t N, Py_ssize_t K) { return 0; }
    static Py_ssize_t fnn_bt_block_rows(void) { return 1; }
    static void fnn_pack_bt(Py_ssize_t N, Py_ssize_t K, const float* B, Py_ssize_t ldb, float* bp) { }
    static void fnn_sgemm_bt_packed(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                                    const float* bp, float* C, Py_ssize_t ldc) { }
    static void fnn_pack_bt_rows(Py_ssize_t r0, Py_ssize_t nr, Py_ssize_t K, const float* B, Py_ssize_t ldb,
                                 float* bp) { }
    static void fnn_sgemm_bt_shared(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                                    const float* bp, float* C, Py_ssize_t ldc) { }
    #endif
    """
    int FNN_SMALL_GEMM
    int FNN_CONV_OWN_MIN_OUT
    int FNN_CONV_DCOL_MAX_OUT
    bint FNN_STEP_OWN
    enum: FNN_OWN, FNN_BLAS, FNN_BF16P, FNN_FWD, FNN_DIN, FNN_WGRAD
    int fnn_counting
    long long fnn_counts[18]
    void fnn_count(int path, int kind) nogil
    void fnn_count_conv(int path, int kind) nogil
    Py_ssize_t fnn_kb
    void fnn_set_l1(Py_ssize_t bytes) nogil
    Py_ssize_t fnn_l2
    void fnn_set_l2(Py_ssize_t bytes) nogil
    Py_ssize_t fnn_row_block(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K) nogil
    void fnn_sgemm_bc(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t si,
                      Py_ssize_t sj, const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc,
                      int acc_c) nogil
    void fnn_sgemm_fwd(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                       const float* B, Py_ssize_t ldb, float* C, Py_ssize_t ldc) nogil
    void fnn_sgemv(Py_ssize_t N, Py_ssize_t K, const float* x, const float* W, Py_ssize_t ldw, float* y) nogil
    int fnn_fwd_uses_bt(Py_ssize_t M, Py_ssize_t N) nogil
    Py_ssize_t fnn_bt_packed_size(Py_ssize_t N, Py_ssize_t K) nogil
    Py_ssize_t fnn_bt_block_rows() nogil
    void fnn_pack_bt(Py_ssize_t N, Py_ssize_t K, const float* B, Py_ssize_t ldb, float* bp) nogil
    void fnn_sgemm_bt_packed(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                             const float* bp, float* C, Py_ssize_t ldc) nogil
    void fnn_pack_bt_rows(Py_ssize_t r0, Py_ssize_t nr, Py_ssize_t K, const float* B, Py_ssize_t ldb,
                          float* bp) nogil
    void fnn_sgemm_bt_shared(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const float* A, Py_ssize_t lda,
                             const float* bp, float* C, Py_ssize_t ldc) nogil


def set_l1_cache(Py_ssize_t nbytes):
    """Size the own kernels' blocks of B to an L1 data cache of ``nbytes`` (done once at import from
    what the machine reports); returns the rows per block (0 in a build without the kernels)."""
    if nbytes > 0:
        fnn_set_l1(nbytes)
    return fnn_kb


def set_l2_cache(Py_ssize_t nbytes):
    """Size the own kernels' blocks of rows to an L2 cache of ``nbytes`` per core (done once at import
    from what the machine reports); returns the size in use (0 in a build without the kernels)."""
    if nbytes > 0:
        fnn_set_l2(nbytes)
    return fnn_l2


def own_row_block(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K):
    """Rows of A per block in the own kernels' C = A B over an M x K A and a K x N B (M: one block)."""
    return fnn_row_block(M, N, K)


def own_gemm(str kind, const float[:, :] A, const float[:, :] B, float[:, :] C, bint accumulate=False):
    """The own kernels alone, for tests and benchmarks: kind "fwd", C = A B^T; kind "gemv", the same for
    one row of A (inference on one example); kind "bc", C = A B (+ C with accumulate). Rows of B and C
    (and of A for "fwd" and "gemv") must be contiguous; "bc" reads A with any strides (a transposed
    view: the weight gradient's D^T)."""
    if not FNN_SMALL_GEMM:
        raise RuntimeError("this build has no own GEMM kernels")
    cdef Py_ssize_t M = C.shape[0], N = C.shape[1], K = A.shape[1], f = sizeof(float)
    if B.strides[1] != f or C.strides[1] != f or (kind != "bc" and A.strides[1] != f):
        raise ValueError("the rows of B and C (and of A for 'fwd') must be contiguous")
    cdef Py_ssize_t si = A.strides[0] // f, sj = A.strides[1] // f, ldb = B.strides[0] // f, ldc = C.strides[0] // f
    if kind == "fwd":
        if A.shape[0] != M or B.shape[0] != N or B.shape[1] != K:
            raise ValueError("fwd: C (M, N) = A (M, K) B^T, B (N, K)")
        with nogil:
            fnn_sgemm_fwd(M, N, K, &A[0, 0], si, &B[0, 0], ldb, &C[0, 0], ldc)
    elif kind == "gemv":
        if M != 1 or A.shape[0] != 1 or B.shape[0] != N or B.shape[1] != K:
            raise ValueError("gemv: C (1, N) = A (1, K) B^T, B (N, K)")
        with nogil:
            fnn_sgemv(N, K, &A[0, 0], &B[0, 0], ldb, &C[0, 0])
    elif kind == "bc":
        if A.shape[0] != M or B.shape[0] != K or B.shape[1] != N:
            raise ValueError("bc: C (M, N) = A (M, K) B (K, N)")
        with nogil:
            fnn_sgemm_bc(M, N, K, &A[0, 0], si, sj, &B[0, 0], ldb, &C[0, 0], ldc, accumulate)
    else:
        raise ValueError(f"kind must be 'fwd', 'gemv' or 'bc', not {kind!r}")
