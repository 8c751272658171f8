# Inference: a plan's forward ops over the rows of X, with what a call can share prepared once.
#
# An InferRunner is built per model and per bucket of rows per work unit (Python caches them): the C
# records of the ops, laid out for units of at most ``cap`` rows, and one work buffer of ``cap`` rows
# (and one scratch area) per thread. A call only takes pointers: each unit of rows is gathered into
# its thread's buffer (converted to the model's type and checked for NaN/Inf in the same pass), runs
# through every op back to back while it is in cache, goes through the loss's link and is copied to
# ``out``. The buffers hold no weights, so a runner stays valid while the parameters change in place.
# One unit, or one thread asked for, runs without an OpenMP region (no thread team is woken). The
# units are consecutive slices of ``unit`` rows, from the shapes and the batch, never from the
# thread count, so every row's result is the same on any number of threads.
import threading

from fastnn._util import aligned_empty

cimport numpy as cnp

cnp.import_array()

cdef enum:
    LINK_IDENTITY = 0
    LINK_SIGMOID = 1
    LINK_SOFTMAX = 2
    LINK_EXP = 3

LINK_CODES = {"identity": LINK_IDENTITY, "sigmoid": LINK_SIGMOID, "softmax": LINK_SOFTMAX, "exp": LINK_EXP}


cdef void link_rows(floating* z, Py_ssize_t c, Py_ssize_t n, int link) noexcept nogil:
    """In place on c rows of n outputs: softmax, sigmoid or exp (a loss's link)."""
    cdef Py_ssize_t i
    if link == LINK_SOFTMAX:
        act_forward_rows(z, c, n, <floating*>NULL, ACT_SOFTMAX, 0)
    elif link == LINK_SIGMOID:
        act_forward_rows(z, c, n, <floating*>NULL, ACT_SIGMOID, 0)
    elif link == LINK_EXP:
        for i in range(c * n):
            z[i] = f_exp(z[i])


def apply_link(floating[:, ::1] z, int link):
    """In place: the link ``link`` (LINK_CODES) over every row of z."""
    if z.shape[0] > 0 and z.shape[1] > 0:
        with nogil:
            link_rows(&z[0, 0], z.shape[0], z.shape[1], link)


cdef inline bint gather_checked(floating* dst, void* X, int code, Py_ssize_t r0, Py_ssize_t c,
                                Py_ssize_t n) noexcept nogil:
    """dst <- rows [r0, r0+c) of X in the model's type; False if a float entry is NaN or Inf (the
    check on X's own values, before any conversion)."""
    cdef bint ok = True
    cdef Py_ssize_t i
    if floating is float and code == X_F32:
        return fastnn_copy_finite_f(<float*>dst, <float*>X + r0 * n, c * n)
    if floating is double and code == X_F64:
        return fastnn_copy_finite_d(<double*>dst, <double*>X + r0 * n, c * n)
    if code == X_F32:
        ok = fastnn_finite_f(<float*>X + r0 * n, c * n)
    elif code == X_F64:
        ok = fastnn_finite_d(<double*>X + r0 * n, c * n)
    for i in range(c):
        gather_row(dst + i * n, X, code, r0 + i, n)
    return ok


cdef struct InferCall:
    void* X
    int xcode
    Py_ssize_t N, unit, n_in0, n_out, link_n
    void* out
    void* work
    Py_ssize_t slot_size
    int link
    bint direct               # only Dense layers read the network's input (from X, when of their type)
    bint gemv                 # float32 with the own kernels: a one-row Dense product is a GEMV
    float* pk                 # ... Dense weights in fnn_pack_bt's blocks for this call, or NULL
    const int64_t* pk_off     # [op]: where in pk (-1: none)
    unsigned char* bad        # [slot]: a unit of this slot saw NaN or Inf in X


cdef void infer_unit(Net* net, Ctx* cx0, InferCall* ic, Py_ssize_t u, int slot, floating* tag) noexcept nogil:
    """Unit u (rows [u unit, ...) of X) through every op in slot ``slot``'s buffer, into out."""
    cdef Py_ssize_t r0 = u * ic.unit
    cdef Py_ssize_t c = ic.unit if r0 + ic.unit <= ic.N else ic.N - r0
    cdef floating* Wk = <floating*>ic.work + slot * ic.slot_size
    cdef floating* P = <floating*>cx0.P
    cdef Ctx cx = cx0[0]
    cdef Op* o
    cdef Op* last = &net.ops[net.last]
    cdef int k
    cx.Wk = <void*>Wk
    cx.pos0 = r0
    cx.bsz = c
    if cx.lens != NULL:
        cx.lens = cx.lens + r0        # rows are read at ordp[b0 + i] = i within the unit
    # X in the model's type and read only by Dense layers: they multiply its rows in place
    cdef floating* xin = NULL
    if ic.direct and ((floating is float and ic.xcode == X_F32) or (floating is double and ic.xcode == X_F64)):
        xin = <floating*>ic.X + r0 * ic.n_in0
        if not (fastnn_finite_f(<float*>xin, c * ic.n_in0) if floating is float else
                fastnn_finite_d(<double*>xin, c * ic.n_in0)):
            ic.bad[slot] = 1
    elif not gather_checked(Wk, ic.X, ic.xcode, r0, c, ic.n_in0):
        ic.bad[slot] = 1
    cdef floating* a_in
    cdef Py_ssize_t K, N
    for k in range(net.n_ops):
        o = &net.ops[k]
        K = o.n_in // o.groups
        N = o.n_out // o.groups
        a_in = xin if (xin != NULL and o.in_e == 0) else Wk + o.in_e
        if floating is float and ic.gemv and o.kind == OP_DENSE and c * o.groups == 1:
            fnn_count(FNN_OWN, FNN_FWD)
            fnn_sgemv(N, K, a_in, P + o.w_off, K, Wk + o.a_e)
            op_tail(o, &cx, Wk, P, 0, 1, slot)
        elif (floating is float and ic.pk != NULL and o.kind == OP_DENSE and ic.pk_off[k] >= 0
                and fnn_fwd_uses_bt(c * o.groups, N)):
            fnn_count(FNN_OWN, FNN_FWD)
            fnn_sgemm_bt_packed(c * o.groups, N, K, a_in, K, ic.pk + ic.pk_off[k], Wk + o.a_e, N)
            op_tail(o, &cx, Wk, P, 0, c, slot)
        elif o.kind == OP_DENSE and a_in != Wk + o.in_e:
            dense_rows(o, P, a_in, Wk + o.a_e, c)
            op_tail(o, &cx, Wk, P, 0, c, slot)
        else:
            op_forward(o, &cx, Wk, P, 0, c, slot)
    link_rows(Wk + last.ad_e, c * ic.n_out // ic.link_n, ic.link_n, ic.link)
    memcpy(<floating*>ic.out + r0 * ic.n_out, Wk + last.ad_e, c * ic.n_out * sizeof(floating))


cdef void pack_block(Net* net, const int64_t* use, const float* P, float* pk, Py_ssize_t nw,
                     Py_ssize_t b) noexcept nogil:
    """Block b of the packed weights of every Dense op with use[k] >= 0, counted op after op in
    blocks of nw rows (fnn_pack_bt's layout, one block at a time)."""
    cdef Py_ssize_t k, n0, N, K
    cdef Op* o
    for k in range(net.n_ops):
        if use[k] < 0:
            continue
        o = &net.ops[k]
        N = o.n_out // o.groups
        K = o.n_in // o.groups
        if b * nw < N:
            n0 = b * nw
            fnn_pack_bt(min(nw, N - n0), K, P + o.w_off + n0 * K, K, pk + use[k] + n0 * K)
            return
        b -= (N + nw - 1) // nw


cdef class InferRunner:
    """The forward ops of a plan (inference mode: running statistics, no dropout) for units of at
    most ``cap`` rows, with a work buffer and scratch area per thread; see ``run``."""
    cdef Net* net
    cdef readonly Py_ssize_t cap
    cdef readonly object dtype
    cdef Py_ssize_t n_in0, n_out, n_slots
    cdef readonly Py_ssize_t slot_size, scratch_stride      # elements per thread's work buffer and scratch area
    cdef bint dbl, own, direct
    cdef readonly object work, scratch
    cdef object stats, ident, bad, pk, pk_off, pk_use, lock

    def __cinit__(self, const int64_t[:, ::1] ops, const double[:, ::1] opsf, Py_ssize_t cap,
                  Py_ssize_t n_in0, Py_ssize_t n_out, Py_ssize_t row_width, Py_ssize_t scratch_stride,
                  Py_ssize_t n_stats, dtype):
        cdef Py_ssize_t k, total = 0, g
        if cap < 1:
            raise ValueError("cap must be >= 1")
        phases = np.array([[PH_CHUNK, -1, 0, 1, -1, 0, ops.shape[0], 0, 0, 0, -1, -1, -1]], dtype=np.int64)
        self.net = net_new(ops, opsf, phases, np.zeros((0, 3), dtype=np.int64), cap, cap, n_in0)
        self.cap = cap
        self.dtype = np.dtype(dtype)
        self.dbl = self.dtype == np.float64
        self.own = FNN_SMALL_GEMM != 0 and not self.dbl
        self.direct = True
        for k in range(ops.shape[0]):
            if (ops[k, 7] == 0 and ops[k, 0] != OP_DENSE) or ops[k, 8] == 0:
                self.direct = False
        self.n_in0 = n_in0
        self.n_out = n_out
        self.slot_size = (row_width * cap + 15) // 16 * 16     # every slot on a 64-byte boundary
        self.scratch_stride = scratch_stride     # the plan's: whole cache lines, so each thread's area starts on one
        self.stats = np.zeros(max(n_stats, 1))
        self.ident = np.arange(cap, dtype=np.intp)
        self.n_slots = 0
        self.lock = threading.Lock()
        self._slots(1)
        # where each float32 Dense op's weights go when a call packs them (fnn_pack_bt)
        self.pk_off = np.full(ops.shape[0], -1, dtype=np.int64)
        self.pk_use = np.full(ops.shape[0], -1, dtype=np.int64)
        if self.own:
            for k in range(ops.shape[0]):
                if ops[k, 0] == OP_DENSE:
                    g = ops[k, 19]
                    self.pk_off[k] = total
                    total += fnn_bt_packed_size(ops[k, 2] // g, ops[k, 1] // g)
        self.pk = aligned_empty(total, np.float32) if total > 0 else None

    def __dealloc__(self):
        net_free(self.net)

    cdef _slots(self, Py_ssize_t n):
        """Buffers for n threads (kept, grown when more are asked for)."""
        if n > self.n_slots:
            self.work = aligned_empty(n * self.slot_size, self.dtype)
            self.scratch = aligned_empty(max(n * self.scratch_stride, 1), self.dtype)
            self.bad = np.zeros(n, dtype=np.uint8)
            self.n_slots = n

    def run(self, cnp.ndarray params, cnp.ndarray running, cnp.ndarray X, cnp.ndarray out,
            Py_ssize_t unit, int n_threads, int link=LINK_IDENTITY, Py_ssize_t link_n=0,
            cnp.ndarray lengths=None):
        """out <- link(network(X)) in units of ``unit`` rows (at most cap) on up to n_threads threads.
        ``params``/``running``: the model's flat buffers; X: C-contiguous (N, n_features) of a type of
        X_CODES; out: C-contiguous (N, n_out) in the model's type; ``link_n``: the outputs each link
        row holds (a per-step output's classes; 0: all of them); ``lengths``: int64 sequence lengths.
        Returns False (out then undefined) when a float entry of X is NaN or Inf."""
        cdef int xcode
        cdef Py_ssize_t N, n_units, u, k
        cdef int nt, slot
        cdef Op* o
        cdef InferCall ic
        cdef Ctx cx
        for a, name in ((params, "params"), (running, "running"), (out, "out")):
            if a.dtype != self.dtype or not cnp.PyArray_IS_C_CONTIGUOUS(a):
                raise TypeError(f"{name} must be a C-contiguous {self.dtype} array")
        if (X.ndim != 2 or not cnp.PyArray_IS_C_CONTIGUOUS(X) or X.dtype not in X_CODES
                or X.shape[1] != self.n_in0 or X.shape[0] == 0):
            raise TypeError(f"X must be a C-contiguous (N, {self.n_in0}) array of a type the core reads")
        N = X.shape[0]
        if out.ndim != 2 or out.shape[0] != N or out.shape[1] != self.n_out:
            raise ValueError(f"out must be shaped ({N}, {self.n_out})")
        if unit < 1 or unit > self.cap:
            raise ValueError(f"unit must lie in [1, {self.cap}]")
        if link_n <= 0:
            link_n = self.n_out
        if self.n_out % link_n:
            raise ValueError("link_n must divide the outputs")
        if lengths is not None and (lengths.dtype != np.int64 or lengths.shape[0] != N
                                    or not cnp.PyArray_IS_C_CONTIGUOUS(lengths)):
            raise ValueError("lengths must be a contiguous int64 array of one length per row")
        n_units = (N + unit - 1) // unit
        nt = <int>max(1, min(n_threads, n_units))
        cdef int64_t* use = <int64_t*>cnp.PyArray_DATA(<cnp.ndarray>self.pk_use)
        cdef const int64_t* offs = <int64_t*>cnp.PyArray_DATA(<cnp.ndarray>self.pk_off)
        cdef bint pack = False
        cdef Py_ssize_t nw, n_blocks, b
        cdef Net* net = self.net
        cdef bint dbl = self.dbl
        cdef float* Pf = NULL
        # one call at a time per runner: its buffers are shared (a model served from several threads)
        with self.lock:
            self._slots(nt)
            xcode = X_CODES[X.dtype]
            ic.X = cnp.PyArray_DATA(X)
            ic.xcode = xcode
            ic.N = N
            ic.unit = unit
            ic.n_in0 = self.n_in0
            ic.n_out = self.n_out
            ic.link_n = link_n
            ic.out = cnp.PyArray_DATA(out)
            ic.work = cnp.PyArray_DATA(<cnp.ndarray>self.work)
            ic.slot_size = self.slot_size
            ic.link = link
            ic.gemv = self.own
            # X's rows are read in place only where they start on cache lines, as the work buffer's
            # do (a product reading rows that straddle two lines ran 13-25% slower than the copy)
            ic.direct = (self.direct and <size_t>cnp.PyArray_DATA(X) % 64 == 0
                         and (self.n_in0 * X.itemsize) % 64 == 0)
            ic.bad = <unsigned char*>cnp.PyArray_DATA(<cnp.ndarray>self.bad)
            memset(ic.bad, 0, nt)
            ic.pk = NULL
            ic.pk_off = NULL
            if self.pk is not None and n_units >= 2:
                # the units share one copy of each Dense layer's weights in the broadcast kernel's blocks
                for k in range(self.net.n_ops):
                    o = &self.net.ops[k]
                    use[k] = offs[k] if offs[k] >= 0 and fnn_fwd_uses_bt(unit * o.groups, o.n_out // o.groups) else -1
                    pack = pack or use[k] >= 0
                if pack:
                    ic.pk = <float*>cnp.PyArray_DATA(<cnp.ndarray>self.pk)
                    ic.pk_off = use
            cx.P = cnp.PyArray_DATA(params)
            cx.G = NULL
            cx.Wk = NULL
            cx.X = ic.X
            cx.xcode = xcode
            cx.R = cnp.PyArray_DATA(running) if running.shape[0] > 0 else NULL
            cx.st = <double*>cnp.PyArray_DATA(<cnp.ndarray>self.stats)
            cx.scratch = cnp.PyArray_DATA(<cnp.ndarray>self.scratch) if self.scratch_stride > 0 else NULL
            cx.scratch_stride = self.scratch_stride
            cx.ordp = <Py_ssize_t*>cnp.PyArray_DATA(<cnp.ndarray>self.ident)
            cx.b0 = 0
            cx.training = False
            cx.grad16 = False
            cx.seed = 0
            cx.epoch = 0
            cx.step = 0
            cx.dg = NULL
            cx.full = False
            cx.lens = <const int64_t*>cnp.PyArray_DATA(lengths) if lengths is not None else NULL
            cx.steps = 1
            cx.ssw = NULL
            Pf = <float*>cx.P
            with nogil:
                if ic.pk != NULL:
                    # the copy's blocks of rows are independent: with several threads each packs some
                    nw = fnn_bt_block_rows()
                    n_blocks = 0
                    for k in range(net.n_ops):
                        if use[k] >= 0:
                            n_blocks = n_blocks + (net.ops[k].n_out // net.ops[k].groups + nw - 1) // nw
                    if nt == 1:
                        for b in range(n_blocks):
                            pack_block(net, use, Pf, ic.pk, nw, b)
                    else:
                        for b in prange(n_blocks, schedule='dynamic', num_threads=nt):
                            pack_block(net, use, Pf, ic.pk, nw, b)
                for k in range(net.n_ops):
                    if net.ops[k].kind == OP_BN and net.ops[k].r_off >= 0:
                        if dbl:
                            bn_eval_prepare(&net.ops[k], <double*>cx.R, cx.st)
                        else:
                            bn_eval_prepare(&net.ops[k], <float*>cx.R, cx.st)
                if nt == 1:
                    for u in range(n_units):
                        if dbl:
                            infer_unit(net, &cx, &ic, u, 0, <double*>NULL)
                        else:
                            infer_unit(net, &cx, &ic, u, 0, <float*>NULL)
                else:
                    for u in prange(n_units, schedule='dynamic', num_threads=nt):
                        slot = threadid()
                        if dbl:
                            infer_unit(net, &cx, &ic, u, slot, <double*>NULL)
                        else:
                            infer_unit(net, &cx, &ic, u, slot, <float*>NULL)
            for k in range(nt):
                if ic.bad[k]:
                    return False
            return True
