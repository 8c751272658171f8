# Normalization. BatchNorm in training is batch-coupled. Its passes over the batch run inside the
# chunk phases around it, while a chunk is in cache: the chunk that makes its input also forms
# per-channel partials (mean and squared deviations; backward: sum dy, sum dy xhat), the
# BatchNorm phases merge the partials over channel blocks in chunk order (the chunks are fixed by
# the shapes, so the merge is the same on any thread count), and the next chunk phase normalises
# its rows (forward) or forms their input delta (backward) just before its ops read them.
# In inference it is a per-example op with the running statistics. LayerNorm is per example
# (rows of `groups` groups of `m` features); its gamma/beta gradients are tiles over features.
# Statistics are accumulated in double.

cdef void bn_part_forward(Op* o, floating* Wk, double* part, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c) of a chunk: per channel, the mean of its c*S values (part[j]) and the sum
    of their squared deviations from it (part[C+j]), while the chunk is in cache."""
    cdef Py_ssize_t S = o.groups, C = o.n_out // S, n = o.n_out, i, j
    cdef double* mean = part
    cdef double* m2 = part + C
    cdef floating* x = Wk + o.in_e + r0 * n
    cdef floating* row
    cdef double d, acc, cnt = <double>c * S
    for j in range(C):
        mean[j] = 0
        m2[j] = 0
    for i in range(c):
        row = x + i * n
        if S == 1:
            for j in range(C):
                mean[j] += row[j]
        else:
            for j in range(C):
                acc = 0
                red_sum(row + j * S, S, &acc)
                mean[j] += acc
    for j in range(C):
        mean[j] = mean[j] / cnt
    for i in range(c):
        row = x + i * n
        if S == 1:
            for j in range(C):
                d = row[j] - mean[j]
                m2[j] += d * d
        else:
            for j in range(C):
                m2[j] += red_sqdev(row + j * S, S, mean[j])


cdef void bn_forward_batch(Op* o, double* part, Py_ssize_t n_part, Py_ssize_t chunk, double* st,
                           floating* R, Py_ssize_t B, Py_ssize_t f0, Py_ssize_t nf, bint update,
                           double factor) noexcept nogil:
    """Channels [f0, f0+nf): the batch mean and biased variance from the chunks' partials, merged
    in chunk order (Chan et al.'s pairwise update, as exact as two passes over the batch), kept as
    (mean, 1/sqrt(var + eps)); with ``update`` the running estimates move by ``factor``
    (unbiased variance)."""
    cdef Py_ssize_t S = o.groups, C = o.n_out // S, j, ci, f1 = f0 + nf
    cdef Py_ssize_t n_chunks = (B + chunk - 1) // chunk
    cdef double* mean = st + o.s_off
    cdef double* istd = mean + C
    cdef double* p
    cdef floating* rm
    cdef floating* rv
    cdef double na, nb, nab, d, mu, m2, m = <double>B * S
    for j in range(f0, f1):
        na = 0
        mu = 0
        m2 = 0
        for ci in range(n_chunks):
            p = part + ci * n_part + o.pt_off
            nb = <double>((chunk if (ci + 1) * chunk <= B else B - ci * chunk) * S)
            nab = na + nb
            d = p[j] - mu
            mu = mu + d * (nb / nab)
            m2 = m2 + p[C + j] + d * d * (na * nb / nab)
            na = nab
        mean[j] = mu
        if update and o.r_off >= 0:
            rm = R + o.r_off
            rv = rm + C
            rm[j] = <floating>((1.0 - factor) * rm[j] + factor * mu)
            rv[j] = <floating>((1.0 - factor) * rv[j] + factor * (m2 / (m - 1)))
        istd[j] = 1.0 / sqrt(m2 / m + o.eps)


cdef void bn_normalize(Op* o, floating* P, floating* x, floating* y, double* st, Py_ssize_t c,
                       Py_ssize_t f0, Py_ssize_t nf) noexcept nogil:
    """y = (x - mean) * istd * g + b over c rows, channels [f0, f0+nf). Over positions (S > 1) as
    y = x a + d in double, a = istd g and d = b - mean a per channel: two operations an element."""
    cdef Py_ssize_t S = o.groups, C = o.n_out // S, n = o.n_out, i, j, s, f1 = f0 + nf
    cdef double* mean = st + o.s_off
    cdef double* istd = mean + C
    cdef floating* g = (P + o.w_off) if o.w_off >= 0 else <floating*>NULL
    cdef floating* b = (P + o.b_off) if o.b_off >= 0 else <floating*>NULL
    cdef floating* row
    cdef floating* yr
    cdef double a, d
    for i in range(c):
        row = x + i * n
        yr = y + i * n
        if S == 1 and g != NULL:
            for j in range(f0, f1):
                yr[j] = <floating>((row[j] - mean[j]) * istd[j]) * g[j] + b[j]
            continue
        elif S == 1:
            for j in range(f0, f1):
                yr[j] = <floating>((row[j] - mean[j]) * istd[j])
            continue
        for j in range(f0, f1):
            a = istd[j] * (g[j] if g != NULL else 1.0)
            d = (b[j] if b != NULL else 0.0) - mean[j] * a
            for s in range(j * S, j * S + S):
                yr[s] = <floating>(row[s] * a + d)


cdef void bn_eval_prepare(Op* o, floating* R, double* st) noexcept nogil:
    """Running statistics as (mean, 1/sqrt(var + eps)) for bn_normalize."""
    cdef Py_ssize_t C = o.n_out // o.groups, j
    cdef floating* rm = R + o.r_off
    for j in range(C):
        st[o.s_off + j] = rm[j]
        st[o.s_off + C + j] = 1.0 / sqrt(<double>rm[C + j] + o.eps)


cdef void bn_part_backward(Op* o, floating* Wk, double* st, double* part, Py_ssize_t r0,
                           Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c) of a chunk, after the head: per channel, sum dy (part[j]) and
    sum dy xhat (part[C+j]), while the chunk's deltas are in cache."""
    cdef Py_ssize_t S = o.groups, C = o.n_out // S, n = o.n_out, i, j
    cdef double* mean = st + o.s_off
    cdef double* istd = mean + C
    cdef double* s1 = part
    cdef double* s2 = part + C
    cdef floating* x = Wk + o.in_e + r0 * n
    cdef floating* dy = Wk + o.d_e + r0 * n
    cdef floating* row
    cdef floating* xr
    cdef double a1
    for j in range(C):
        s1[j] = 0
        s2[j] = 0
    for i in range(c):
        row = dy + i * n
        xr = x + i * n
        if S == 1:
            for j in range(C):
                s1[j] += row[j]
                s2[j] += row[j] * ((xr[j] - mean[j]) * istd[j])
        else:
            for j in range(C):
                a1 = 0
                red_sum(row + j * S, S, &a1)
                s1[j] += a1
                s2[j] += red_dotdev(xr + j * S, row + j * S, S, mean[j]) * istd[j]


cdef void bn_backward_batch(Op* o, double* part, Py_ssize_t n_part, Py_ssize_t chunk, floating* G,
                            double* st, Py_ssize_t B, Py_ssize_t f0, Py_ssize_t nf) noexcept nogil:
    """Channels [f0, f0+nf): dgamma = sum dy xhat and dbeta = sum dy (into G) from the chunks'
    partials in chunk order; their means kept for bn_dx."""
    cdef Py_ssize_t S = o.groups, C = o.n_out // S, j, ci, f1 = f0 + nf
    cdef Py_ssize_t n_chunks = (B + chunk - 1) // chunk
    cdef double* s1 = st + o.s_off + 2 * C
    cdef double* s2 = s1 + C
    cdef double* p
    cdef double m = <double>B * S
    for j in range(f0, f1):
        s1[j] = 0
        s2[j] = 0
    for ci in range(n_chunks):
        p = part + ci * n_part + o.pt_off
        for j in range(f0, f1):
            s1[j] += p[j]
            s2[j] += p[C + j]
    if o.w_off >= 0:
        for j in range(f0, f1):
            G[o.w_off + j] = <floating>s2[j]
            G[o.b_off + j] = <floating>s1[j]
    for j in range(f0, f1):
        s1[j] = s1[j] / m
        s2[j] = s2[j] / m


cdef void bn_dx(Op* o, floating* P, floating* Wk, double* st, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c): dx = g istd (dy - mean(dy) - xhat mean(dy xhat)) (=|+=) into the input's
    delta, just before the chunk's backward reads it. Over positions (S > 1) as dx = dy a + x b + d
    in double, a = g istd, b = -a istd mean(dy xhat) and d = -a mean(dy) - b mean per channel: four
    operations an element, not six."""
    cdef Py_ssize_t S = o.groups, C = o.n_out // S, n = o.n_out, i, j, s
    cdef double* mean = st + o.s_off
    cdef double* istd = mean + C
    cdef double* s1 = istd + C
    cdef double* s2 = s1 + C
    cdef floating* x = Wk + o.in_e + r0 * n
    cdef floating* dy = Wk + o.d_e + r0 * n
    cdef floating* row
    cdef floating* drow
    cdef floating* xr
    cdef double a, b, d, xh, k
    for i in range(c):
        row = dy + i * n
        xr = x + i * n
        drow = Wk + o.din_e + (r0 + i) * n
        if S == 1:
            for j in range(C):
                xh = (xr[j] - mean[j]) * istd[j]
                k = istd[j] * (P[o.w_off + j] if o.w_off >= 0 else 1.0) * (row[j] - s1[j] - xh * s2[j])
                drow[j] = (drow[j] + <floating>k) if o.din_acc else <floating>k
            continue
        for j in range(C):
            a = istd[j] * (P[o.w_off + j] if o.w_off >= 0 else 1.0)
            b = -a * istd[j] * s2[j]
            d = -a * s1[j] - b * mean[j]
            if o.din_acc:
                for s in range(j * S, j * S + S):
                    drow[s] = drow[s] + <floating>(row[s] * a + xr[s] * b + d)
            else:
                for s in range(j * S, j * S + S):
                    drow[s] = <floating>(row[s] * a + xr[s] * b + d)


cdef void ln_forward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c): per group of m features, y = (x - mean) * rstd * g + b; (mean, rstd) kept."""
    cdef Py_ssize_t m = o.n_out // o.groups, rows = c * o.groups, r, k
    cdef floating* x = Wk + o.in_e + r0 * o.n_out
    cdef floating* y = Wk + o.a_e + r0 * o.n_out
    cdef floating* sv = Wk + o.s_e + r0 * 2 * o.groups
    cdef floating* g = (P + o.w_off) if o.w_off >= 0 else <floating*>NULL
    cdef floating* b = (P + o.b_off) if o.b_off >= 0 else <floating*>NULL
    cdef floating* xr
    cdef floating* yr
    cdef double mean, var, d, rstd
    cdef floating fm, fr
    for r in range(rows):
        xr = x + r * m
        yr = y + r * m
        mean = 0
        for k in range(m):
            mean += xr[k]
        mean = mean / m
        var = 0
        for k in range(m):
            d = xr[k] - mean
            var += d * d
        rstd = 1.0 / sqrt(var / m + o.eps)
        fm = <floating>mean
        fr = <floating>rstd
        sv[2 * r] = fm
        sv[2 * r + 1] = fr
        for k in range(m):
            yr[k] = (xr[k] - fm) * fr
        if g != NULL:
            for k in range(m):
                yr[k] = yr[k] * g[k]
        if b != NULL:
            for k in range(m):
                yr[k] = yr[k] + b[k]


cdef void ln_backward(Op* o, floating* P, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """Rows [r0, r0+c): dx = rstd (dxh - mean(dxh) - xhat mean(dxh xhat)), dxh = dy g (=|+=) dIn."""
    if o.din_e < 0:
        return
    cdef Py_ssize_t m = o.n_out // o.groups, rows = c * o.groups, r, k
    cdef floating* x = Wk + o.in_e + r0 * o.n_out
    cdef floating* dy = Wk + o.d_e + r0 * o.n_out
    cdef floating* dx = Wk + o.din_e + r0 * o.n_out
    cdef floating* sv = Wk + o.s_e + r0 * 2 * o.groups
    cdef floating* g = (P + o.w_off) if o.w_off >= 0 else <floating*>NULL
    cdef floating* xr
    cdef floating* dr
    cdef floating* outr
    cdef double a, bb, gk, xh, v
    cdef floating fm, fr
    for r in range(rows):
        xr = x + r * m
        dr = dy + r * m
        outr = dx + r * m
        fm = sv[2 * r]
        fr = sv[2 * r + 1]
        a = 0
        bb = 0
        for k in range(m):
            gk = dr[k] * (g[k] if g != NULL else 1)
            a += gk
            bb += gk * ((xr[k] - fm) * fr)
        a = a / m
        bb = bb / m
        for k in range(m):
            gk = dr[k] * (g[k] if g != NULL else 1)
            xh = (xr[k] - fm) * fr
            v = fr * (gk - a - xh * bb)
            if o.din_acc:
                outr[k] = outr[k] + <floating>v
            else:
                outr[k] = <floating>v


cdef void ln_grad(Op* o, Tile* T, floating* Wk, floating* G, Py_ssize_t B) noexcept nogil:
    """Features [r0, r0+nr) of dgamma = sum dy xhat and dbeta = sum dy over every row of the batch,
    in row order."""
    cdef Py_ssize_t m = o.n_out // o.groups, rows = B * o.groups, r, k, k0 = T.r0, k1 = T.r0 + T.nr
    cdef floating* x = Wk + o.in_e
    cdef floating* dy = Wk + o.d_e
    cdef floating* sv = Wk + o.s_e
    cdef floating* dg = G + o.w_off
    cdef floating* db = (G + o.b_off) if o.b_off >= 0 else <floating*>NULL
    cdef floating fm, fr
    for k in range(k0, k1):
        dg[k] = 0
        if db != NULL:
            db[k] = 0
    for r in range(rows):
        fm = sv[2 * r]
        fr = sv[2 * r + 1]
        for k in range(k0, k1):
            dg[k] = dg[k] + dy[r * m + k] * ((x[r * m + k] - fm) * fr)
        if db != NULL:
            for k in range(k0, k1):
                db[k] = db[k] + dy[r * m + k]
