# Losses from logits, in stable forms: per-example value and the delta fed to backprop.

cdef struct LossRec:
    int code
    Py_ssize_t n_classes
    int has_pos_weight


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


