# Convolution and pooling over examples laid out (C, H, W) (1-D as H = 1), per example of a chunk.
# Conv: im2col into the op's column block (kept for the filter gradient), one GEMM per group;
# backward: a GEMM into the chunk's scratch, then col2im added into the input delta. Filter
# gradients are tiles of output channels summed over the examples in order.
#
# geometry (Op.g): 0 Cin, 1 H, 2 W, 3 Cout, 4 kh, 5 kw, 6 sh, 7 sw, 8 ph, 9 pw, 10 dh, 11 dw,
# 12 groups, 13 Hout, 14 Wout, 15 pool mode (0 max, 1 avg, 2 adaptive avg), 16 count_include_pad

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
    #define FASTNN_MAXPOS(T, NAME) \
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
    """
    void fastnn_maxpos_f(const float* x, const int* base, int off, int n, float* m, int* a) noexcept nogil
    void fastnn_maxpos_d(const double* x, const int* base, int off, int n, double* m, int* a) noexcept nogil


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


cdef void im2col(floating* x, floating* col, Py_ssize_t* g, Py_ssize_t c0, Py_ssize_t nc) noexcept nogil:
    """col[(c*kh + i)*kw + j, oh*Wout + ow] = x[c0 + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (0 outside)."""
    cdef Py_ssize_t H = g[1], W = g[2], kh = g[4], kw = g[5], sh = g[6], sw = g[7], ph = g[8], pw = g[9]
    cdef Py_ssize_t dh = g[10], dw = g[11], Ho = g[13], Wo = g[14], L = Ho * Wo
    cdef Py_ssize_t c, i, j, oh, ow, ih, w_lo, w_hi, off
    cdef floating* xc
    cdef floating* dst
    cdef floating* src
    for c in range(nc):
        xc = x + (c0 + c) * H * W
        for i in range(kh):
            for j in range(kw):
                dst = col + ((c * kh + i) * kw + j) * L
                off = j * dw - pw
                valid_range(Wo, W, sw, off, &w_lo, &w_hi)
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


cdef void col2im_add(floating* col, floating* dx, Py_ssize_t* g, Py_ssize_t c0, Py_ssize_t nc) noexcept nogil:
    """dx[c0 + c, ...] += the entries of col that im2col read from there."""
    cdef Py_ssize_t H = g[1], W = g[2], kh = g[4], kw = g[5], sh = g[6], sw = g[7], ph = g[8], pw = g[9]
    cdef Py_ssize_t dh = g[10], dw = g[11], Ho = g[13], Wo = g[14], L = Ho * Wo
    cdef Py_ssize_t c, i, j, oh, ow, ih, w_lo, w_hi, off
    cdef floating* dxc
    cdef floating* src
    cdef floating* dst
    for c in range(nc):
        dxc = dx + (c0 + c) * H * W
        for i in range(kh):
            for j in range(kw):
                src = col + ((c * kh + i) * kw + j) * L
                off = j * dw - pw
                valid_range(Wo, W, sw, off, &w_lo, &w_hi)
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


cdef void conv_forward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c): out[co, l] = sum_k W[co, k] col[k, l] + bias[co], group by group."""
    cdef Py_ssize_t* g = o.g
    cdef Py_ssize_t G = g[12], Cg = g[0] // G, Og = g[3] // G, K = Cg * g[4] * g[5], L = g[13] * g[14]
    cdef Py_ssize_t e, gi, co, l
    cdef floating* x
    cdef floating* col
    cdef floating* out
    cdef floating b
    for e in range(r0, r0 + c):
        x = Wk + o.in_e + e * o.n_in
        out = Wk + o.a_e + e * o.n_out
        for gi in range(G):
            col = Wk + o.s_e + e * G * K * L + gi * K * L
            im2col(x, col, g, gi * Cg, Cg)
            gemm(c'N', c'N', <int>L, <int>Og, <int>K, <floating>1, col, <int>L, P + o.w_off + gi * Og * K,
                 <int>K, <floating>0, out + gi * Og * L, <int>L)
        if o.b_off >= 0:
            for co in range(g[3]):
                b = P[o.b_off + co]
                for l in range(L):
                    out[co * L + l] = out[co * L + l] + b


cdef void conv_backward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c,
                        floating* scratch) noexcept nogil:
    """Rows [r0, r0+c): dcol = W^T dout per group (in scratch), col2im into the input delta."""
    if o.din_e < 0:
        return
    cdef Py_ssize_t* g = o.g
    cdef Py_ssize_t G = g[12], Cg = g[0] // G, Og = g[3] // G, K = Cg * g[4] * g[5], L = g[13] * g[14]
    cdef Py_ssize_t e, gi, i
    cdef floating* dout
    cdef floating* dx
    for e in range(r0, r0 + c):
        dout = Wk + o.d_e + e * o.n_out
        dx = Wk + o.din_e + e * o.n_in
        if not o.din_acc:
            for i in range(o.n_in):
                dx[i] = 0
        for gi in range(G):
            gemm(c'N', c'T', <int>L, <int>K, <int>Og, <floating>1, dout + gi * Og * L, <int>L,
                 P + o.w_off + gi * Og * K, <int>K, <floating>0, scratch, <int>L)
            col2im_add(scratch, dx, g, gi * Cg, Cg)


cdef void conv_grad(Op* o, Tile* T, floating* Wk, floating* G_, Py_ssize_t B) noexcept nogil:
    """Filters [r0, r0+nr) (one group): dW = sum_e dout_e col_e^T, db = sum_e sum_l dout_e, in example
    order."""
    cdef Py_ssize_t* g = o.g
    cdef Py_ssize_t G = g[12], Og = g[3] // G, K = (g[0] // G) * g[4] * g[5], L = g[13] * g[14]
    cdef Py_ssize_t gi = T.r0 // Og, e, j, l
    cdef floating* dout
    cdef floating* db
    cdef double s
    for e in range(B):
        dout = Wk + o.d_e + e * o.n_out + T.r0 * L
        gemm(c'T', c'N', <int>K, <int>T.nr, <int>L, <floating>1, Wk + o.s_e + e * G * K * L + gi * K * L,
             <int>L, dout, <int>L, <floating>(0 if e == 0 else 1), G_ + o.w_off + T.r0 * K, <int>K)
    if o.b_off >= 0:
        db = G_ + o.b_off + T.r0
        for j in range(T.nr):
            db[j] = 0
        for e in range(B):
            dout = Wk + o.d_e + e * o.n_out + T.r0 * L
            for j in range(T.nr):
                s = 0
                red_sum(dout + j * L, L, &s)
                db[j] = db[j] + <floating>s


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
    for e in range(r0, r0 + c):
        dx = Wk + o.din_e + e * o.n_in
        if not o.din_acc:
            for i in range(o.n_in):
                dx[i] = 0
        dy = Wk + o.d_e + e * o.n_out
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
