# Embedding: token ids (stored as floats in the input rows) -> rows of the table. Per chunk of
# examples in forward; the table's gradient is tiles of rows, each summing the deltas of its own
# tokens over the batch's (example, step) positions in order, so it is the same on any thread count.

cdef void emb_forward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c): out[i, t] = weight[ids[i, t]] (ids checked on the Python side)."""
    cdef Py_ssize_t D = o.hidden, i
    cdef floating* ids = Wk + o.in_e + r0 * o.n_in
    cdef floating* out = Wk + o.a_e + r0 * o.n_out
    for i in range(c * o.n_in):
        memcpy(out + i * D, P + o.w_off + (<Py_ssize_t>ids[i]) * D, D * sizeof(floating))


cdef void emb_grad(Op* o, Tile* Tl, floating* Wk, floating* G, Py_ssize_t B) noexcept nogil:
    """Rows [r0, r0+nr) of dW: each the sum of the deltas at its token's positions, in order;
    the padding row's stays zero."""
    cdef Py_ssize_t D = o.hidden, i, j, k
    cdef floating* ids = Wk + o.in_e
    cdef floating* d = Wk + o.d_e
    cdef floating* g
    cdef floating* dr
    memset(G + o.w_off + Tl.r0 * D, 0, Tl.nr * D * sizeof(floating))
    for i in range(B * o.n_in):
        k = <Py_ssize_t>ids[i]
        if k < Tl.r0 or k >= Tl.r0 + Tl.nr or k == o.cell:
            continue
        g = G + o.w_off + k * D
        dr = d + i * D
        for j in range(D):
            g[j] = g[j] + dr[j]
