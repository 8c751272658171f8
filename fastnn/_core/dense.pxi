# Dense: y = x W^T + b. Per chunk of examples (narrow layers) or per block of output neurons over
# the whole batch (wide layers: W is packed once per step, not once per chunk). In float32, products
# over at most ``sg_rows`` rows and weight gradients over ``sg_grad_min`` to ``sg_grad_rows`` rows
# (the planner's choice, from the shapes) run on smallgemm.pxi's kernels, the rest on BLAS. The
# bias and the activation are the op's tail (see _engine.pyx), the input delta its backward. Where
# a training step's chunks each multiply by a layer's weights on fnn_sgemm_bt, they share one copy of
# W in that kernel's transposed blocks (Op.wt), renewed by the optimizer's tiles. A
# Dense on per-example input (..., in_features) has ``groups`` rows per example (one per leading
# index, e.g. a time step): n_in and n_out are per example, the matrix products run over c * groups
# rows. An op whose operand type is bfloat16 (``prec``, precision="bf16-mixed") multiplies on
# bf16.pxi's kernels instead.

cdef inline void dense_rows(Op* o, floating* P, floating* x, floating* z, Py_ssize_t c) noexcept nogil:
    """z = x W^T for c examples' rows x of the Dense's input (the work buffer's, or X's own)."""
    cdef Py_ssize_t K = o.n_in // o.groups, N = o.n_out // o.groups
    if floating is float and c * o.groups <= o.sg_rows:
        fnn_count(FNN_OWN, FNN_FWD)
        if o.wt != NULL and fnn_fwd_uses_bt(c * o.groups, N):
            fnn_sgemm_bt_shared(c * o.groups, N, K, x, K, o.wt, z, N)
        else:
            fnn_sgemm_fwd(c * o.groups, N, K, x, K, P + o.w_off, K, z, N)
        return
    fnn_count(FNN_BLAS, FNN_FWD)
    gemm(c'T', c'N', <int>N, <int>(c * o.groups), <int>K, <floating>1, P + o.w_off, <int>K, x, <int>K,
         <floating>0, z, <int>N)


cdef inline void dense_forward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c) of Z = In W^T."""
    if floating is float and o.prec == PREC_BF16:
        bf16_dense_forward(o, Wk, r0, c)
        return
    dense_rows(o, P, Wk + o.in_e + r0 * o.n_in, Wk + o.a_e + r0 * o.n_out, c)


cdef inline void dense_backward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c) of dIn (=|+=) D W."""
    if o.din_e < 0:
        return
    cdef Py_ssize_t K = o.n_in // o.groups, N = o.n_out // o.groups
    if floating is float and o.prec == PREC_BF16:
        bf16_dense_backward(o, Wk, r0, c)
        return
    if floating is float and c * o.groups <= o.sg_rows:
        fnn_count(FNN_OWN, FNN_DIN)
        fnn_sgemm_bc(c * o.groups, K, N, Wk + o.d_e + r0 * o.n_out, N, 1, P + o.w_off, K,
                     Wk + o.din_e + r0 * o.n_in, K, <int>o.din_acc)
        return
    fnn_count(FNN_BLAS, FNN_DIN)
    gemm(c'N', c'N', <int>K, <int>(c * o.groups), <int>N, <floating>1, P + o.w_off, <int>K,
         Wk + o.d_e + r0 * o.n_out, <int>N, <floating>o.din_acc, Wk + o.din_e + r0 * o.n_in, <int>K)


cdef inline void dense_wide_forward(Op* o, floating* P, floating* Wk, Py_ssize_t B, Py_ssize_t j0,
                                    Py_ssize_t nb) noexcept nogil:
    """Columns [j0, j0+nb) of Z = In W^T over all B rows."""
    if floating is float and o.prec == PREC_BF16:
        bf16_dense_wide_forward(o, Wk, B, j0, nb)
        return
    if floating is float and B <= o.sg_rows:
        fnn_count(FNN_OWN, FNN_FWD)
        fnn_sgemm_fwd(B, nb, o.n_in, Wk + o.in_e, o.n_in, P + o.w_off + j0 * o.n_in, o.n_in,
                      Wk + o.a_e + j0, o.n_out)
        return
    fnn_count(FNN_BLAS, FNN_FWD)
    gemm(c'T', c'N', <int>nb, <int>B, <int>o.n_in, <floating>1, P + o.w_off + j0 * o.n_in, <int>o.n_in,
         Wk + o.in_e, <int>o.n_in, <floating>0, Wk + o.a_e + j0, <int>o.n_out)


cdef inline void dense_wide_backward(Op* o, floating* P, floating* Wk, Py_ssize_t B, Py_ssize_t c0,
                                     Py_ssize_t nc) noexcept nogil:
    """Columns [c0, c0+nc) of dIn (=|+=) D W over all B rows."""
    if floating is float and o.prec == PREC_BF16:
        bf16_dense_wide_backward(o, Wk, B, c0, nc)
        return
    if floating is float and B <= o.sg_rows:
        fnn_count(FNN_OWN, FNN_DIN)
        fnn_sgemm_bc(B, nc, o.n_out, Wk + o.d_e, o.n_out, 1, P + o.w_off + c0, o.n_in,
                     Wk + o.din_e + c0, o.n_in, <int>o.din_acc)
        return
    fnn_count(FNN_BLAS, FNN_DIN)
    gemm(c'N', c'N', <int>nc, <int>B, <int>o.n_out, <floating>1, P + o.w_off + c0, <int>o.n_in,
         Wk + o.d_e, <int>o.n_out, <floating>o.din_acc, Wk + o.din_e + c0, <int>o.n_in)


cdef void dense_grad(Op* o, Tile* T, floating* Wk, floating* G, Py_ssize_t B) noexcept nogil:
    """dW[rows] = D[:, rows]^T In; db[rows] = sum_i D[i, rows], summed in example order."""
    cdef floating* D = Wk + o.d_e
    cdef floating* db
    cdef Py_ssize_t i, j, K = o.n_in // o.groups, N = o.n_out // o.groups
    if floating is float and o.prec == PREC_BF16:
        bf16_dense_grad(o, T, Wk, G, B)
    elif floating is float and o.sg_grad_min <= B * o.groups <= o.sg_grad_rows:
        fnn_count(FNN_OWN, FNN_WGRAD)
        fnn_sgemm_bc(T.nr, K, B * o.groups, D + T.r0, 1, N, Wk + o.in_e, K, G + o.w_off + T.r0 * K, K, 0)
    else:
        fnn_count(FNN_BLAS, FNN_WGRAD)
        gemm(c'N', c'T', <int>K, <int>T.nr, <int>(B * o.groups), <floating>1, Wk + o.in_e, <int>K,
             D + T.r0, <int>N, <floating>0, G + o.w_off + T.r0 * K, <int>K)
    if o.b_off >= 0:
        db = G + o.b_off + T.r0
        for j in range(T.nr):
            db[j] = 0
        for i in range(B * o.groups):
            for j in range(T.nr):
                db[j] = db[j] + D[i * N + T.r0 + j]
