# Update rules: constants of a step, the fused span update, clipping helpers.

cdef struct OptStep:
    # One step's constants, formed in double as torch forms its Python scalars;
    # the kernels round them to the tensor dtype.
    int code
    double lr, c0, c1, c2, c3, c4
    bint f0, f1


cdef OptStep opt_step_consts(int code, const double* hp, double lr, int64_t t) noexcept nogil:
    """Constants of update number t (1-based) for the rule ``code`` and hyper-parameters hp:

      SGD:     hp = momentum, dampening, nesterov, weight_decay
      Adam:    hp = beta1, beta2, eps, weight_decay, amsgrad, decoupled (AdamW)
      Adagrad: hp = lr_decay, eps, weight_decay, initial_accumulator_value
      RMSprop: hp = alpha, eps, momentum, centered, weight_decay
    """
    cdef OptStep o
    o.code = code
    o.lr = lr
    o.c0 = o.c1 = o.c2 = o.c3 = o.c4 = 0
    o.f0 = o.f1 = False
    if code == OPT_SGD:
        o.c0 = hp[0]                 # momentum
        o.c1 = 1.0 - hp[1]           # 1 - dampening
        o.c2 = hp[3]                 # weight decay
        o.f0 = hp[2] != 0            # nesterov
        o.f1 = t == 1                # first step: buffer = gradient
    elif code == OPT_ADAM:
        o.c0 = 1.0 - hp[0]                              # lerp weight of the first moment
        o.c1 = hp[1]                                    # beta2
        o.c2 = 1.0 - hp[1]
        o.c3 = (1.0 - lr * hp[3]) if hp[5] != 0 else hp[3]   # AdamW decay factor or L2 weight decay
        o.c4 = sqrt(1.0 - pow(hp[1], <double>t))        # sqrt of bias correction 2
        o.lr = lr / (1.0 - pow(hp[0], <double>t))       # step size
        o.f0 = hp[4] != 0                               # amsgrad
        o.f1 = hp[5] != 0                               # decoupled
    elif code == OPT_ADAGRAD:
        o.lr = lr / (1.0 + (t - 1) * hp[0])
        o.c1 = hp[1]                 # eps
        o.c2 = hp[2]                 # weight decay
    elif code == OPT_RMSPROP:
        o.c0 = hp[0]                 # alpha
        o.c1 = 1.0 - hp[0]
        o.c2 = hp[2]                 # momentum
        o.c3 = hp[4]                 # weight decay
        o.f0 = hp[3] != 0            # centered
    return o


cdef void update_span(OptStep* o, double eps, floating* p, floating* g, floating* s0,
                      floating* s1, floating* s2, Py_ssize_t n) noexcept nogil:
    """Apply one step to n contiguous parameters (state pointers mirror p).

    Every variant is its own branch-free loop so the compiler vectorizes it; weight decay
    is added as g + wd * p even when wd = 0 (the same value for finite p)."""
    cdef Py_ssize_t i
    cdef floating gi, b, lr = <floating>o.lr, a0 = <floating>o.c0, a1 = <floating>o.c1
    cdef floating a2 = <floating>o.c2, a3 = <floating>o.c3, a4 = <floating>o.c4, e = <floating>eps
    cdef floating m, v
    cdef int mode
    if o.code == OPT_SGD:
        # a0 = momentum, a1 = 1 - dampening, a2 = weight decay; f0 nesterov, f1 first step
        mode = 0 if a0 == 0 else (1 if o.f1 else 2)
        if floating is float:
            fastnn_sgd_f(p, g, s0, n, lr, a0, a1, a2, mode, o.f0)
        else:
            fastnn_sgd_d(p, g, s0, n, lr, a0, a1, a2, mode, o.f0)
    elif o.code == OPT_ADAM:
        # a0 = 1 - beta1, a1 = beta2, a2 = 1 - beta2, a3 = AdamW factor or L2 decay,
        # a4 = sqrt(1 - beta2^t), lr = lr / (1 - beta1^t); compute-bound, so in cloned C
        if floating is float:
            fastnn_adam_f(p, g, s0, s1, s2, n, lr, a0, a1, a2, a3, a4, e, o.f0, o.f1)
        else:
            fastnn_adam_d(p, g, s0, s1, s2, n, lr, a0, a1, a2, a3, a4, e, o.f0, o.f1)
    elif o.code == OPT_ADAGRAD:
        if floating is float:
            fastnn_adagrad_f(p, g, s0, n, lr, a2, e)
        else:
            fastnn_adagrad_d(p, g, s0, n, lr, a2, e)
    elif o.code == OPT_RMSPROP:
        # a0 = alpha, a1 = 1 - alpha, a2 = momentum, a3 = weight decay; s1 momentum, s2 mean grad
        if floating is float:
            fastnn_rmsprop_f(p, g, s0, s1, s2, n, lr, a0, a1, a2, a3, e, o.f0)
        else:
            fastnn_rmsprop_d(p, g, s0, s1, s2, n, lr, a0, a1, a2, a3, e, o.f0)


cdef inline double opt_eps(int code, const double* hp) noexcept nogil:
    if code == OPT_ADAM or code == OPT_ADAGRAD or code == OPT_RMSPROP:
        return hp[2] if code == OPT_ADAM else hp[1]
    return 0


cdef struct OptRun:
    OptStep st
    double eps
    Py_ssize_t n_par
    void* s0
    void* s1
    void* s2


cdef inline void update_at(OptRun* o, floating* P, floating* G, Py_ssize_t off, Py_ssize_t n) noexcept nogil:
    """Update parameters [off, off + n) of the flat buffer."""
    update_span(&o.st, o.eps, P + off, G + off,
                (<floating*>o.s0 + off) if o.s0 != NULL else <floating*>NULL,
                (<floating*>o.s1 + off) if o.s1 != NULL else <floating*>NULL,
                (<floating*>o.s2 + off) if o.s2 != NULL else <floating*>NULL, n)


cdef struct GradOpts:
    double l2            # > 0: the loss has l2 * ||W||^2, so dW += 2 l2 W
    bint l2_bias         # ... and the biases too
    double clip_value    # > 0: clamp every gradient entry to [-clip_value, clip_value]


cdef inline void grad_post(floating* g, floating* p, Py_ssize_t n, double l2, double clip) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating c2 = <floating>(2.0 * l2), cv = <floating>clip
    if l2 > 0:
        for i in range(n):
            g[i] = g[i] + c2 * p[i]
    if clip > 0:
        for i in range(n):
            if g[i] > cv:
                g[i] = cv
            elif g[i] < -cv:
                g[i] = -cv


cdef inline double sum_sq(floating* g, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double acc = 0
    for i in range(n):
        acc += <double>g[i] * g[i]
    return acc


cdef inline void scale_span(floating* g, Py_ssize_t n, double coef) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating c = <floating>coef
    for i in range(n):
        g[i] = g[i] * c




def clip_grad_norm(floating[::1] grads, double max_norm, int n_threads):
    """Rescale grads in place to global L2 norm <= max_norm; return the norm before.

    The norm is a sum of fixed-size block sums taken in order, so it is the same on any
    number of threads."""
    cdef Py_ssize_t n = grads.shape[0], blk, p0, pn
    cdef Py_ssize_t n_blocks = (n + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef double[::1] part = np.zeros(max(n_blocks, 1))
    cdef double sq = 0, norm, coef
    if n == 0:
        return 0.0
    with nogil:
        for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
            p0 = blk * UPDATE_BLOCK
            pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n else n - p0
            part[blk] = sum_sq(&grads[p0], pn)
        for blk in range(n_blocks):
            sq += part[blk]
        norm = sqrt(sq)
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
                p0 = blk * UPDATE_BLOCK
                pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n else n - p0
                scale_span(&grads[p0], pn, coef)
    return norm


