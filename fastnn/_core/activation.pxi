# Elementwise families: activations and dropout (in place over rows of a chunk).

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
                       Py_ssize_t row0, Py_ssize_t col0=0, Py_ssize_t per=1) noexcept nogil:
    """AD <- dropout(A) for c rows of n units whose batch positions start at row0 and whose unit
    indices start at col0; ``per`` consecutive units share one draw (whole channels: Dropout2d)."""
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
            if uniform01(key, row0 + i, (col0 + j) if per == 1 else (col0 + j) // per) < p:
                AD[i * n + j] = 0
            else:
                AD[i * n + j] = A[i * n + j] * scale


cdef void dropout_backward_rows(floating* G, Py_ssize_t c, Py_ssize_t n, int mode,
                                double p, uint64_t key, Py_ssize_t row0, Py_ssize_t col0=0,
                                Py_ssize_t per=1) noexcept nogil:
    """In place: G (dL/d dropout-output) <- dL/d dropout-input, mask regenerated."""
    cdef Py_ssize_t i, j
    cdef floating scale = <floating>(1.0 / (1.0 - p)) if mode == DROP_INVERTED else 1
    for i in range(c):
        for j in range(n):
            if uniform01(key, row0 + i, (col0 + j) if per == 1 else (col0 + j) // per) < p:
                G[i * n + j] = 0
            else:
                G[i * n + j] = G[i * n + j] * scale


