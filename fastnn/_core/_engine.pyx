# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastnn's compiled training core: the executor of a plan of phases.

Design
------
A network is a list of *ops* (C records ``Op``) made by the planner (fastnn/_plan.py) from the
layers: Dense, BatchNorm, LayerNorm, a standalone activation/dropout, and the add that closes a
residual block. An activation and a dropout that follow an op are fused into it as its *tail*
(bias, activation, dropout, in place over the op's output rows); their derivatives are its
*head* in backward. Parameters live in one flat buffer ``P`` (gradients ``G`` mirror it), running
statistics in one buffer ``R``, and every op's input, output and delta are blocks of ``B`` rows
(one per example) in one work buffer.

One training step is a list of *phases*, each one parallel loop over fixed work units with a
barrier after it:

- ``PH_CHUNK``: a chunk of examples through a run of per-example ops: the gather of the chunk's
  shuffled rows, the tail of a batch-coupled op before, forward ops [f0, f1), the loss, backward
  ops [b0, b1) in reverse, and the head of the batch-coupled op before them. Consecutive
  per-example ops run back to back on a chunk while it is in cache.
- ``PH_BN_FWD`` / ``PH_BN_BWD``: BatchNorm in training, over blocks of channels: the merge, in
  chunk order, of per-chunk partial sums that the chunk phases before it form while their rows are
  in cache; the chunk phase after it normalises its rows (forward) or forms their input delta
  (backward) just before its own ops read them. Each pass over a BatchNorm's rows thus touches a
  chunk already in cache instead of sweeping the batch through memory.
- ``PH_WIDE_FWD`` / ``PH_WIDE_BWD``: a wide Dense over the whole batch, split by output neurons
  (forward) or input features (backward), so its weights are packed once per step.
- the gradient tiles: rows of dW (Dense) or blocks of features (norm gamma/beta), each owned by
  one thread and summed over the whole batch in a fixed order, with the optimizer update fused
  while the tile is in cache. Global-norm clipping needs every gradient first, so then a norm
  pass over fixed blocks comes between the tiles' gradients and their updates.

Backward *accumulates* into an input's delta where that input has several consumers (a residual
block's input): the planner marks the first writer in backward order to overwrite and the others
to add, so no separate zeroing pass is needed.

Every unit size comes from the shapes and the batch size (planner), never from the thread count,
and every sum runs in a fixed order, so the result is bit-for-bit the same on any number of
threads. GEMMs are single-threaded BLAS calls (``scipy.linalg.cython_blas``) made from inside the
parallel loops; the Python side holds BLAS to one thread. In the AVX-512 and AVX2 builds, float32
Dense products over few rows (up to 512 with AVX-512, 256 with AVX2) run on own kernels instead
(smallgemm.pxi), which do not pack both operands on every call as BLAS does; the planner chooses per
layer and build (``sg_rows``, ``sg_grad_rows``, ``sg_grad_min``). Random numbers (dropout masks) come from a counter-based hash keyed by (seed,
epoch, step, op, example, unit).

The families live in .pxi files (common, smallgemm, activation, loss, optim, dense, norm, conv,
recurrent, embedding): a new layer family
is a new file plus its op code here and in the planner.
"""

from cython.parallel cimport prange, parallel, threadid
from libc.math cimport exp, expf, log, logf, log1p, log1pf, tanh, tanhf, sqrt, sqrtf, fabs, isfinite, pow
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset
from libc.stdint cimport uint64_t, int64_t
from scipy.linalg.cython_blas cimport sgemm, dgemm

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)

import numpy as np

# ---------------------------------------------------------------- codes (shared with the Python side)
cdef enum:
    ACT_IDENTITY = 0
    ACT_SIGMOID = 1
    ACT_TANH = 2
    ACT_RELU = 3
    ACT_LEAKY = 4
    ACT_SOFTMAX = 5

cdef enum:
    DROP_NONE = 0
    DROP_INVERTED = 1
    DROP_CLASSIC = 2

cdef enum:
    LOSS_MSE = 0
    LOSS_BCE = 1
    LOSS_CE = 2          # integer labels
    LOSS_CE_PROB = 3     # probability rows
    LOSS_NLL = 4
    LOSS_KLDIV = 5

cdef enum:
    OPT_NONE = 0
    OPT_SGD = 1
    OPT_ADAM = 2
    OPT_ADAGRAD = 3
    OPT_RMSPROP = 4

# op kinds
cdef enum:
    OP_DENSE = 0
    OP_ACT = 1           # copy, then the tail: a standalone activation and/or dropout
    OP_BN = 2
    OP_LN = 3
    OP_ADD = 4           # residual join: out = in + in2
    OP_CONV = 5
    OP_POOL = 6
    OP_RNN = 7           # one layer of a recurrent stack (recurrent.pxi)
    OP_EMB = 8           # token ids -> table rows (embedding.pxi)

# phase kinds
cdef enum:
    PH_CHUNK = 0
    PH_BN_FWD = 1
    PH_BN_BWD = 2
    PH_WIDE_FWD = 3
    PH_WIDE_BWD = 4

cdef enum:
    UPDATE_BLOCK = 16384     # optimizer work unit (elements); fixed, so updates are thread-count invariant

OP_KINDS = {"dense": OP_DENSE, "act": OP_ACT, "bn": OP_BN, "ln": OP_LN, "add": OP_ADD, "conv": OP_CONV,
            "pool": OP_POOL, "rnn": OP_RNN, "emb": OP_EMB}
N_GEOM = 17
PHASE_KINDS = {"chunk": PH_CHUNK, "bn_fwd": PH_BN_FWD, "bn_bwd": PH_BN_BWD, "wide_fwd": PH_WIDE_FWD,
               "wide_bwd": PH_WIDE_BWD}
# columns of the op table (int64) and of its float table
OP_FIELDS = ("kind", "n_in", "n_out", "w_off", "b_off", "act", "drop", "in_col", "in2_col", "a_col",
             "ad_col", "d_col", "din_col", "din2_col", "din_acc", "din2_acc", "s_col", "s_off", "r_off",
             "groups", "key", "diag", "unit_off", "nbt", "dper") + tuple(f"g{i}" for i in range(17)) + (
             "cell", "steps", "hidden", "w2_off", "b2_off", "sub", "p_col", "sg_rows", "sg_grad_rows",
             "sg_grad_min", "prec", "xb_col", "xv_col", "db_col", "dt_col", "ob_col", "ov_col", "ob_k",
             "wf_off", "wb_off")
OPF_FIELDS = ("act_param", "drop_p", "eps", "momentum")
PHASE_FIELDS = ("kind", "op", "unit", "gather", "pro", "f0", "f1", "loss", "b0", "b1", "epi", "bst", "bdx")
TILE_FIELDS = ("op", "r0", "nr")

include "common.pxi"
include "smallgemm.pxi"
include "activation.pxi"
include "loss.pxi"
include "optim.pxi"


OPENMP = bool(FASTNN_OPENMP)
#: whether float32 Dense products over few rows use the kernels of smallgemm.pxi (AVX-512 and AVX2 builds)
SMALL_GEMM = bool(FNN_SMALL_GEMM)
#: which of them: "avx512", "avx2", or None
SMALL_GEMM_ISA = {1: "avx512", 2: "avx2"}.get(FNN_SMALL_GEMM)


def count_gemm_calls(bint on):
    """Start (and zero) or stop counting the Dense and convolutional layers' matrix products by path;
    see gemm_calls."""
    global fnn_counting
    if on:
        memset(fnn_counts, 0, sizeof(fnn_counts))
    fnn_counting = on


def gemm_calls(str layer="dense"):
    """The products of the Dense (layer "dense") or convolutional ("conv") layers counted since
    count_gemm_calls(True): {(path, kind): calls}, path "own" (smallgemm.pxi's kernels), "blas" or
    "bf16" (bfloat16 operands, bf16.pxi), kind "forward", "input_delta" or "weight_grad"."""
    if layer not in ("dense", "conv"):
        raise ValueError(f"layer must be 'dense' or 'conv', not {layer!r}")
    cdef int base = 9 if layer == "conv" else 0
    return {(path, kind): int(fnn_counts[base + p * 3 + k])
            for p, path in enumerate(("own", "blas", "bf16"))
            for k, kind in enumerate(("forward", "input_delta", "weight_grad"))}


def omp_max_threads():
    """OpenMP's own default team size (1 in a serial build)."""
    return fastnn_omp_max_threads()


cdef struct Op:
    int kind, act, drop
    Py_ssize_t n_in, n_out, w_off, b_off
    double act_param, drop_p, eps, momentum
    # element offsets into the work buffer (each a block of B rows); -1: none
    Py_ssize_t in_e, in2_e, a_e, ad_e, d_e, din_e, din2_e, s_e
    int din_acc, din2_acc
    Py_ssize_t s_off          # BatchNorm: offset of (mean, istd, s1, s2) in the statistics array
    Py_ssize_t r_off          # BatchNorm: offset of (running_mean, running_var) in R; -1 none
    Py_ssize_t groups         # LayerNorm: normalised groups per example
    int64_t key               # dropout stream
    int diag                  # diagnostics layer, -1 none
    Py_ssize_t unit_off       # first unit of this op among the diagnostics layers' units
    int64_t nbt               # BatchNorm: batches tracked before this run (momentum=None)
    Py_ssize_t dper           # dropout: consecutive units sharing one draw (a channel for Dropout2d)
    Py_ssize_t g[17]          # convolution / pooling geometry (see conv.pxi)
    # recurrent layers: cell, time steps, hidden size, weight_hh / bias_hh offsets, block offsets;
    # Embedding: cell is the padding row (-1 none), steps the tokens per example, hidden the row size
    int cell
    Py_ssize_t steps, hidden, w2_off, b2_off
    Py_ssize_t sub            # convolution: examples per sub-block
    Py_ssize_t p_e            # convolution: partial filter/bias gradients, at each sub-block's first row
    Py_ssize_t pt_off         # BatchNorm in training: offset of its 2C partials in a chunk's record
    Py_ssize_t sg_rows        # Dense, float32: products over at most this many rows use smallgemm.pxi,
    Py_ssize_t sg_grad_rows   # ... and its weight gradient, summed over at most this many rows
    Py_ssize_t sg_grad_min    # ... and at least this many
    Py_ssize_t ga_e, xh_e, cs_e, tc_e, hn_e, di_e, dh_e, sc_e, ds_e
    # bfloat16 products (bf16.pxi): the op's operand type and its bfloat16 copies
    int prec                  # PREC_F32 or PREC_BF16
    Py_ssize_t xb_e, xv_e     # its input: rows, and VNNI panels over pairs of rows (weight gradient)
    Py_ssize_t db_e, dt_e     # its output delta: rows (input delta), transposed (weight gradient)
    Py_ssize_t ob_e, ov_e     # where its own output's copies go (for the products that read it); -1 none
    Py_ssize_t ob_k           # ... the width of a row of those products
    Py_ssize_t wf_e, wb_e     # its weights' panels (forward, backward), at the work buffer's end
    Py_ssize_t bw             # rows of a work-buffer block (the batch, rounded up to 32)
    float* wt                 # Dense, float32 training: its weights in fnn_pack_bt's copy, shared by the
                              # step's chunks (Net.wt); NULL: each product copies its own blocks


cdef struct Phase:
    int kind, op
    Py_ssize_t unit
    int gather, pro, f0, f1, loss, b0, b1, epi
    int bst, bdx              # chunk: BatchNorm op whose partials it forms after forward / whose
                              # input delta it forms before backward (-1 none)


cdef struct Tile:
    int op
    Py_ssize_t r0, nr


cdef struct Net:
    Op* ops
    int n_ops
    Phase* ph
    int n_ph
    Tile* tiles
    Py_ssize_t n_tiles
    Py_ssize_t B              # rows in the work buffer
    Py_ssize_t chunk
    Py_ssize_t n_in0          # input features per example
    int last                  # the output op
    double* part              # BatchNorm partials: n_part doubles per chunk
    Py_ssize_t n_part
    Py_ssize_t pb_e, pb_n     # bfloat16 weight panels: their first float and their count (bf16.pxi)
    Py_ssize_t ib_e, iv_e, ib_k   # the input's bfloat16 copies (as Op.ob_e, ov_e, ob_k); -1 none
    void* tsc                 # per-thread scratch of the gradient tiles (bfloat16 packing, after the
    Py_ssize_t tsc_n          # panels), or NULL; bfloat16 values per thread
    float* wt                 # the Dense ops' shared copies of their weights (Op.wt), or NULL


include "bf16.pxi"
include "dense.pxi"
include "norm.pxi"
include "conv.pxi"


# ---------------------------------------------------------------- diagnostics
cdef struct Diag:
    # Accumulators over an epoch, each owned by a fixed work unit (a chunk slot or a tile),
    # so their sums are the same on any thread count.
    double* act_acc          # [slot][diag layer][3]: sum a, sum a^2, saturated units
    unsigned char* active    # [slot][unit]: the unit was > 0 on some example
    Py_ssize_t n_units
    int n_layers
    double sat_sigmoid       # sigmoid(threshold): a beyond [1 - s, s] means |z| > threshold
    double sat_tanh          # tanh(threshold)
    double* tile_acc         # [tile][4]: sum |g|, sum g^2, sum (dW)^2, sum W^2 (before the update)
    void* scratch            # [tile][max span] old parameters
    Py_ssize_t scratch_stride


cdef void diag_activations(Diag* dg, Op* o, floating* a, Py_ssize_t c, Py_ssize_t nb, Py_ssize_t ld,
                           Py_ssize_t j0, Py_ssize_t slot, bint full) noexcept nogil:
    """Over c rows (stride ld) of units [j0, j0+nb) starting at ``a``: dead-unit flags on every
    step; sums, squares and saturation counts when ``full``."""
    cdef double* acc = dg.act_acc + (slot * dg.n_layers + o.diag) * 3
    cdef unsigned char* act = dg.active + slot * dg.n_units + o.unit_off + j0
    cdef Py_ssize_t i, j
    cdef int64_t sat = 0
    cdef floating hi = <floating>dg.sat_sigmoid, lo = <floating>(1.0 - dg.sat_sigmoid)
    cdef floating th = <floating>dg.sat_tanh
    cdef floating* row
    if o.act == ACT_RELU or o.act == ACT_LEAKY:
        for i in range(c):
            row = a + i * ld
            for j in range(nb):
                act[j] = act[j] | (row[j] > 0)
    if not full:
        return
    if ld == nb:
        red_sum(a, c * nb, acc)
        red_sumsq(a, c * nb, acc + 1)
    else:
        for i in range(c):
            red_sum(a + i * ld, nb, acc)
            red_sumsq(a + i * ld, nb, acc + 1)
    for i in range(c):
        row = a + i * ld
        if o.act == ACT_SIGMOID:
            for j in range(nb):
                sat += (row[j] > hi) | (row[j] < lo)
        elif o.act == ACT_TANH:
            for j in range(nb):
                sat += (row[j] > th) | (row[j] < -th)
    acc[2] += sat


# ---------------------------------------------------------------- per-chunk ops
cdef struct Ctx:
    # what every unit of a step reads: pointers and the step's keys
    void* P
    void* G
    void* Wk
    void* X
    void* R
    double* st
    int xcode                 # X's element type (X_CODES): rows are converted as they are gathered
    void* scratch             # per chunk: convolutions' columns, a recurrent layer's weights transposed
    Py_ssize_t scratch_stride
    Py_ssize_t* ordp
    Py_ssize_t b0             # first position of the batch in ordp
    Py_ssize_t pos0           # row key offset (forward_rows: the batch start)
    Py_ssize_t bsz
    bint training
    bint grad16               # a training step: the bfloat16 copies weight gradients read, too
    uint64_t seed, epoch, step
    Diag* dg                  # dead-unit flags (every step)
    bint full                 # ... and statistics on this step
    # the loss
    LossRec lr
    void* yi
    void* yf
    void* sw
    void* pw
    double inv_norm
    double* exl
    int64_t* predp
    const int64_t* lens       # sequence length of every example (recurrent layers), or NULL
    Py_ssize_t steps          # > 1: a loss per step (loss_steps): class labels (yi step-major) or MSE
    Py_ssize_t n_ex           # ... over this many examples
    void* ssw                 # ... per-step weights (step-major, as yi), or NULL


include "recurrent.pxi"
include "embedding.pxi"


cdef inline void op_tail(Op* o, Ctx* cx, floating* Wk, floating* P, Py_ssize_t r0, Py_ssize_t c,
                         Py_ssize_t slot) noexcept nogil:
    """Bias (Dense), activation, diagnostics and dropout over the op's output rows."""
    cdef floating* a = Wk + o.a_e + r0 * o.n_out
    cdef floating* bias = (P + o.b_off) if (o.kind == OP_DENSE and o.b_off >= 0) else <floating*>NULL
    cdef Py_ssize_t g = o.groups if o.kind == OP_DENSE else 1      # a Dense's rows per example
    if bias != NULL or o.act != ACT_IDENTITY:
        act_forward_rows(a, c * g, o.n_out // g, bias, o.act, o.act_param)
    if cx.dg != NULL and o.diag >= 0:
        diag_activations(cx.dg, o, a, c, o.n_out, o.n_out, 0, slot, cx.full)
    if o.drop != DROP_NONE:
        dropout_rows(Wk + o.ad_e + r0 * o.n_out, a, c, o.n_out, o.drop, o.drop_p, cx.training,
                     dropout_key(cx.seed, cx.epoch, cx.step, <uint64_t>o.key), cx.pos0 + r0, 0, o.dper)
    if floating is float and o.ob_e >= 0:
        bf16_out_rows(Wk + o.ad_e, o.n_out, o.ob_k, o.ob_e, o.ov_e, o.bw, cx.grad16, r0, c, cx.bsz, Wk)


cdef void op_tail_block(Op* o, Ctx* cx, floating* Wk, floating* P, Py_ssize_t j0, Py_ssize_t nb,
                        Py_ssize_t slot) noexcept nogil:
    """The tail over units [j0, j0+nb) of every row of the batch (a batch-coupled op's unit)."""
    cdef Py_ssize_t i, n = o.n_out
    cdef floating* a = Wk + o.a_e + j0
    cdef floating* bias = (P + o.b_off + j0) if (o.kind == OP_DENSE and o.b_off >= 0) else <floating*>NULL
    cdef uint64_t key
    if bias != NULL or o.act != ACT_IDENTITY:
        for i in range(cx.bsz):
            act_forward_rows(a + i * n, 1, nb, bias, o.act, o.act_param)
    if cx.dg != NULL and o.diag >= 0:
        diag_activations(cx.dg, o, a, cx.bsz, nb, n, j0, slot, cx.full)
    if o.drop != DROP_NONE:
        key = dropout_key(cx.seed, cx.epoch, cx.step, <uint64_t>o.key)
        for i in range(cx.bsz):
            dropout_rows(Wk + o.ad_e + i * n + j0, a + i * n, 1, nb, o.drop, o.drop_p, cx.training, key,
                         cx.pos0 + i, j0, o.dper)
    if floating is float and o.ob_e >= 0:
        bf16_out_block(Wk + o.ad_e, n, o.ob_e, o.ov_e, o.bw, cx.grad16, j0, nb, cx.bsz, Wk)


cdef void op_head_block(Op* o, Ctx* cx, floating* Wk, Py_ssize_t j0, Py_ssize_t nb) noexcept nogil:
    """The head over units [j0, j0+nb) of every row of the batch."""
    cdef Py_ssize_t i, n = o.n_out
    cdef floating* d
    cdef uint64_t key = dropout_key(cx.seed, cx.epoch, cx.step, <uint64_t>o.key)
    for i in range(cx.bsz):
        d = Wk + o.d_e + i * n + j0
        if o.drop != DROP_NONE:
            dropout_backward_rows(d, 1, nb, o.drop, o.drop_p, key, cx.pos0 + i, j0, o.dper)
        if o.act != ACT_IDENTITY:
            act_backward_rows(d, Wk + o.a_e + i * n + j0, 1, nb, o.act, o.act_param)
    if floating is float and o.prec == PREC_BF16 and o.kind == OP_DENSE:
        bf16_delta_block(o, Wk, j0, nb, cx.bsz)


cdef inline void op_head(Op* o, Ctx* cx, floating* Wk, Py_ssize_t r0, Py_ssize_t c) noexcept nogil:
    """In place: the op's output delta through dropout and activation."""
    cdef floating* d = Wk + o.d_e + r0 * o.n_out
    cdef Py_ssize_t g = o.groups if o.kind == OP_DENSE else 1
    if o.drop != DROP_NONE:
        dropout_backward_rows(d, c, o.n_out, o.drop, o.drop_p,
                              dropout_key(cx.seed, cx.epoch, cx.step, <uint64_t>o.key), cx.pos0 + r0, 0, o.dper)
    if o.act != ACT_IDENTITY:
        act_backward_rows(d, Wk + o.a_e + r0 * o.n_out, c * g, o.n_out // g, o.act, o.act_param)
    if floating is float and o.prec == PREC_BF16 and o.kind == OP_DENSE:
        bf16_delta_rows(o, Wk, r0, c, cx.bsz)


cdef inline void put_delta(floating* dst, floating* src, Py_ssize_t n, int acc) noexcept nogil:
    cdef Py_ssize_t i
    if acc:
        for i in range(n):
            dst[i] = dst[i] + src[i]
    else:
        memcpy(dst, src, n * sizeof(floating))


cdef void op_forward(Op* o, Ctx* cx, floating* Wk, floating* P, Py_ssize_t r0, Py_ssize_t c,
                     Py_ssize_t slot) noexcept nogil:
    cdef Py_ssize_t i, n = o.n_out
    cdef floating* a = Wk + o.a_e + r0 * n
    cdef floating* x
    cdef floating* x2
    if o.kind == OP_DENSE:
        dense_forward(o, P, Wk, r0, c)
    elif o.kind == OP_ACT:
        memcpy(a, Wk + o.in_e + r0 * n, c * n * sizeof(floating))
    elif o.kind == OP_BN:          # inference: running statistics (prepared in cx.st)
        bn_normalize(o, P, Wk + o.in_e + r0 * n, a, cx.st, c, 0, n // o.groups)
    elif o.kind == OP_LN:
        ln_forward(o, P, Wk, r0, c)
    elif o.kind == OP_RNN:
        rnn_forward(o, cx, P, Wk, r0, c, <floating*>cx.scratch + slot * cx.scratch_stride)
    elif o.kind == OP_EMB:
        emb_forward(o, P, Wk, r0, c)
    elif o.kind == OP_ADD:
        x = Wk + o.in_e + r0 * n
        x2 = Wk + o.in2_e + r0 * n
        for i in range(c * n):
            a[i] = x[i] + x2[i]
    elif o.kind == OP_CONV:
        conv_forward(o, P, Wk, r0, c, <floating*>cx.scratch + slot * cx.scratch_stride)
    elif o.kind == OP_POOL:
        pool_forward(o, Wk, r0, c)
    op_tail(o, cx, Wk, P, r0, c, slot)


cdef void op_backward(Op* o, Ctx* cx, floating* Wk, floating* P, Py_ssize_t r0, Py_ssize_t c,
                      Py_ssize_t slot) noexcept nogil:
    cdef Py_ssize_t n = o.n_out
    op_head(o, cx, Wk, r0, c)
    if o.kind == OP_DENSE:
        dense_backward(o, P, Wk, r0, c)
    elif o.kind == OP_CONV:
        conv_backward(o, P, Wk, r0, c, <floating*>cx.scratch + slot * cx.scratch_stride)
    elif o.kind == OP_POOL:
        pool_backward(o, Wk, r0, c)
    elif o.kind == OP_LN:
        ln_backward(o, P, Wk, r0, c)
    elif o.kind == OP_RNN:
        rnn_backward(o, cx, P, Wk, r0, c, <floating*>cx.scratch + slot * cx.scratch_stride)
    elif o.kind == OP_ACT or o.kind == OP_ADD:
        if o.din_e >= 0:
            put_delta(Wk + o.din_e + r0 * o.n_in, Wk + o.d_e + r0 * n, c * n, o.din_acc)
        if o.kind == OP_ADD and o.din2_e >= 0:
            put_delta(Wk + o.din2_e + r0 * o.n_in, Wk + o.d_e + r0 * n, c * n, o.din2_acc)


# element types X may have: a memory-mapped data set of any of them streams, converted row by row
cdef enum:
    X_F32 = 0
    X_F64 = 1
    X_U8 = 2
    X_I8 = 3
    X_U16 = 4
    X_I16 = 5
    X_I32 = 6
    X_I64 = 7

X_CODES = {np.dtype(np.float32): X_F32, np.dtype(np.float64): X_F64, np.dtype(np.uint8): X_U8,
           np.dtype(np.int8): X_I8, np.dtype(np.uint16): X_U16, np.dtype(np.int16): X_I16,
           np.dtype(np.int32): X_I32, np.dtype(np.int64): X_I64}


cdef inline void gather_row(floating* dst, void* X, int code, Py_ssize_t row, Py_ssize_t n) noexcept nogil:
    """dst <- row ``row`` of X (n values of type ``code``) in the model's type."""
    cdef Py_ssize_t j, o = row * n
    if (floating is float and code == X_F32) or (floating is double and code == X_F64):
        memcpy(dst, <floating*>X + o, n * sizeof(floating))
    elif code == X_F32:
        for j in range(n):
            dst[j] = <floating>(<float*>X)[o + j]
    elif code == X_F64:
        for j in range(n):
            dst[j] = <floating>(<double*>X)[o + j]
    elif code == X_U8:
        for j in range(n):
            dst[j] = <floating>(<unsigned char*>X)[o + j]
    elif code == X_I8:
        for j in range(n):
            dst[j] = <floating>(<signed char*>X)[o + j]
    elif code == X_U16:
        for j in range(n):
            dst[j] = <floating>(<unsigned short*>X)[o + j]
    elif code == X_I16:
        for j in range(n):
            dst[j] = <floating>(<short*>X)[o + j]
    elif code == X_I32:
        for j in range(n):
            dst[j] = <floating>(<int*>X)[o + j]
    else:
        for j in range(n):
            dst[j] = <floating>(<int64_t*>X)[o + j]


cdef void* raw_rows(object X, int* code, Py_ssize_t* n_rows, Py_ssize_t* n_cols) except NULL:
    """The data pointer, element type and shape of a C-contiguous 2-D array X."""
    if not isinstance(X, np.ndarray) or X.ndim != 2 or not X.flags.c_contiguous or X.dtype not in X_CODES:
        raise TypeError("X must be a C-contiguous 2-D array of float32/64 or (u)int8/16, int32/64")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError("X is empty")
    code[0] = X_CODES[X.dtype]
    n_rows[0] = X.shape[0]
    n_cols[0] = X.shape[1]
    return <void*><size_t>X.ctypes.data


cdef void chunk_task(Net* net, Phase* ph, Ctx* cx, Py_ssize_t ci, floating* tag) noexcept nogil:
    cdef Py_ssize_t r0 = ci * net.chunk
    cdef Py_ssize_t c = net.chunk if r0 + net.chunk <= cx.bsz else cx.bsz - r0
    cdef floating* Wk = <floating*>cx.Wk
    cdef floating* P = <floating*>cx.P
    cdef Py_ssize_t i, n0 = net.n_in0
    cdef int k
    cdef Op* last = &net.ops[net.last]
    if ph.bdx >= 0:
        bn_dx(&net.ops[ph.bdx], P, Wk, cx.st, r0, c)
    if ph.gather:
        for i in range(c):
            gather_row(Wk + (r0 + i) * n0, cx.X, cx.xcode, cx.ordp[cx.b0 + r0 + i], n0)
        if floating is float and net.ib_e >= 0:
            bf16_out_rows(Wk, n0, net.ib_k, net.ib_e, net.iv_e, net.B, cx.grad16, r0, c, cx.bsz, Wk)
    cdef Op* o
    if ph.pro >= 0:
        o = &net.ops[ph.pro]
        if o.kind == OP_BN:
            bn_normalize(o, P, Wk + o.in_e + r0 * o.n_out, Wk + o.a_e + r0 * o.n_out, cx.st, c, 0,
                         o.n_out // o.groups)
        op_tail(o, cx, Wk, P, r0, c, ci)
    for k in range(ph.f0, ph.f1):
        op_forward(&net.ops[k], cx, Wk, P, r0, c, ci)
    if ph.bst >= 0:
        o = &net.ops[ph.bst]
        bn_part_forward(o, Wk, net.part + ci * net.n_part + o.pt_off, r0, c)
    if ph.loss and cx.steps > 1:
        loss_steps(cx, Wk + last.ad_e + r0 * last.n_out, Wk + last.d_e + r0 * last.n_out, c, r0)
    elif ph.loss:
        loss_rows(&cx.lr, Wk + last.ad_e + r0 * last.n_out, Wk + last.d_e + r0 * last.n_out, c,
                  cx.ordp + cx.b0 + r0, <int64_t*>cx.yi, <floating*>cx.yf, <floating*>cx.sw,
                  <floating*>cx.pw, cx.inv_norm, cx.exl + r0, cx.predp)
    for k in range(ph.b1 - 1, ph.b0 - 1, -1):
        op_backward(&net.ops[k], cx, Wk, P, r0, c, ci)
    if ph.epi >= 0:
        o = &net.ops[ph.epi]
        op_head(o, cx, Wk, r0, c)
        if o.kind == OP_BN:
            bn_part_backward(o, Wk, cx.st, net.part + ci * net.n_part + o.pt_off, r0, c)


cdef inline Py_ssize_t phase_width(Phase* ph, Op* o) noexcept nogil:
    """What a batch phase's units split: input features (wide backward), channels (BatchNorm) or
    output neurons (wide forward)."""
    if ph.kind == PH_WIDE_BWD:
        return o.n_in
    if ph.kind == PH_BN_FWD or ph.kind == PH_BN_BWD:
        return o.n_out // o.groups
    return o.n_out


cdef void batch_task(Net* net, Phase* ph, Ctx* cx, Py_ssize_t u, bint update, double factor,
                     floating* tag) noexcept nogil:
    """Unit u of a batch-coupled phase: a block of features or of neurons over the whole batch."""
    cdef Op* o = &net.ops[ph.op]
    cdef Py_ssize_t n = phase_width(ph, o)
    cdef Py_ssize_t j0 = u * ph.unit
    cdef Py_ssize_t nb = ph.unit if j0 + ph.unit <= n else n - j0
    # ``gather`` marks a wide phase that also runs the op's tail
    if ph.kind == PH_BN_FWD:
        bn_forward_batch(o, net.part, net.n_part, net.chunk, cx.st, <floating*>cx.R, cx.bsz, j0, nb,
                         update, factor)
    elif ph.kind == PH_BN_BWD:
        bn_backward_batch(o, net.part, net.n_part, net.chunk, <floating*>cx.G, cx.st, cx.bsz, j0, nb)
    elif ph.kind == PH_WIDE_FWD:
        dense_wide_forward(o, <floating*>cx.P, <floating*>cx.Wk, cx.bsz, j0, nb)
        if ph.gather:
            op_tail_block(o, cx, <floating*>cx.Wk, <floating*>cx.P, j0, nb, u)
    elif ph.kind == PH_WIDE_BWD:
        dense_wide_backward(o, <floating*>cx.P, <floating*>cx.Wk, cx.bsz, j0, nb)
        if ph.pro >= 0:         # the producer's head, on the columns of its delta just written
            op_head_block(&net.ops[ph.pro], cx, <floating*>cx.Wk, j0, nb)


cdef void run_phases(Net* net, Ctx* cx, int n_threads, bint update, floating* tag) noexcept nogil:
    """Every phase of the plan over the batch in cx (``tag`` only selects the float type)."""
    cdef int p
    cdef Phase* ph
    cdef Op* o
    cdef Py_ssize_t n_units, u, ci, n
    cdef double factor = 0
    for p in range(net.n_ph):
        ph = &net.ph[p]
        if ph.kind == PH_CHUNK:
            n_units = (cx.bsz + net.chunk - 1) // net.chunk
            for ci in prange(n_units, schedule='dynamic', num_threads=n_threads):
                chunk_task(net, ph, cx, ci, tag)
        else:
            o = &net.ops[ph.op]
            n = phase_width(ph, o)
            n_units = (n + ph.unit - 1) // ph.unit
            if ph.kind == PH_BN_FWD:
                factor = o.momentum if o.momentum >= 0 else 1.0 / (o.nbt + 1)
            for u in prange(n_units, schedule='dynamic', num_threads=n_threads):
                batch_task(net, ph, cx, u, update, factor, tag)


# ---------------------------------------------------------------- gradient tiles
cdef struct GradOpts:
    double l2            # > 0: the loss has l2 * ||W||^2, so dW += 2 l2 W (Dense, conv, recurrent
                         # and Embedding weights)
    bint l2_bias         # ... and their biases too
    double clip_value    # > 0: clamp every gradient entry to [-clip_value, clip_value]


cdef inline bint tile_span(Op* o, Tile* T, Py_ssize_t i, Py_ssize_t* off, Py_ssize_t* n, bint* weight) noexcept nogil:
    """The i-th contiguous parameter span of a tile; False past the last."""
    if o.kind == OP_RNN:
        return rnn_tile_span(o, T, i, off, n, weight)
    if o.kind == OP_EMB:           # rows of the table
        if i < T.nr:
            off[0] = o.w_off + (T.r0 + i) * o.hidden
            n[0] = o.hidden
            weight[0] = True
            return True
        return False
    cdef Py_ssize_t row = o.n_in // o.groups
    if o.kind == OP_CONV:
        row = (o.g[0] // o.g[12]) * o.g[4] * o.g[5]
    if o.kind == OP_DENSE or o.kind == OP_CONV:
        if i < T.nr:
            off[0] = o.w_off + (T.r0 + i) * row
            n[0] = row
            weight[0] = True
            return True
        if i == T.nr and o.b_off >= 0:
            off[0] = o.b_off + T.r0
            n[0] = T.nr
            weight[0] = False
            return True
        return False
    # norm layers: gamma then beta, features [r0, r0 + nr)
    if i == 0 and o.w_off >= 0:
        off[0] = o.w_off + T.r0
        n[0] = T.nr
        weight[0] = True
        return True
    if i <= 1 and o.b_off >= 0:
        off[0] = o.b_off + T.r0
        n[0] = T.nr
        weight[0] = False
        return True
    return False


cdef inline bint l2_covers(Op* o, Py_ssize_t off, bint weight, bint l2_bias) noexcept nogil:
    """Whether the L2 term covers a span: weights (and, with l2_bias, biases) of Dense, conv and
    recurrent layers and the Embedding's table, except its padding row, which torch never trains
    (Model.l2_spans lists the same)."""
    if o.kind == OP_EMB:
        return o.cell < 0 or off != o.w_off + o.cell * o.hidden
    if o.kind == OP_DENSE or o.kind == OP_CONV or o.kind == OP_RNN:
        return weight or l2_bias
    return False


cdef void grad_tile(Net* net, Tile* T, floating* Wk, floating* P, floating* G, Py_ssize_t B,
                    OptRun* opt, GradOpts* go, Diag* dg, Py_ssize_t ti) noexcept nogil:
    """The tile's gradient (summed over the batch in example order), the L2 term and value
    clipping; with ``opt`` the tile's parameters are updated at once, while their gradient is
    in cache. BatchNorm's gradients were formed by its backward phase."""
    cdef Op* o = &net.ops[T.op]
    cdef Py_ssize_t i = 0, off = 0, n = 0
    cdef bint w = False
    if o.kind == OP_DENSE:
        dense_grad(o, T, Wk, G, B)
    elif o.kind == OP_CONV:
        conv_grad(o, T, Wk, G, B, net.chunk)
    elif o.kind == OP_LN:
        ln_grad(o, T, Wk, G, B)
    elif o.kind == OP_RNN:
        rnn_grad(o, T, Wk, G, B, bf16_thread_scratch(net))
    elif o.kind == OP_EMB:
        emb_grad(o, T, Wk, G, B)
    if go.l2 > 0 or go.clip_value > 0:
        while tile_span(o, T, i, &off, &n, &w):
            if l2_covers(o, off, w, go.l2_bias):
                grad_post(G + off, P + off, n, go.l2, go.clip_value)
            else:
                grad_post(G + off, P + off, n, 0.0, go.clip_value)
            i += 1
    if opt != NULL:
        tile_update(net, T, Wk, P, G, opt, 1.0, dg, ti)


cdef void tile_update(Net* net, Tile* T, floating* Wk, floating* P, floating* G, OptRun* opt, double coef,
                      Diag* dg, Py_ssize_t ti) noexcept nogil:
    """Scale the tile's gradient by coef (< 1: clipping) and apply the optimizer to its
    parameters; with diagnostics, accumulate |g|, g^2, the update's and the weights' squares. A
    bfloat16 op's weight panels of the tile's rows are made anew while the rows are in cache."""
    cdef Op* o = &net.ops[T.op]
    cdef Py_ssize_t i = 0, off = 0, n = 0
    cdef bint w = False
    cdef floating* old = NULL
    cdef double* acc = NULL
    cdef double sa = 0, s2 = 0, du = 0, w2 = 0
    if dg != NULL:
        acc = dg.tile_acc + ti * 4
        old = <floating*>dg.scratch + ti * dg.scratch_stride
    while tile_span(o, T, i, &off, &n, &w):
        i += 1
        if coef < 1.0:
            scale_span(G + off, n, coef)
        if dg != NULL:
            memcpy(old, P + off, n * sizeof(floating))
            red_sumabs(G + off, n, &sa)
            red_sumsq(G + off, n, &s2)
        update_at(opt, P, G, off, n)
        if dg != NULL and w:          # the update-to-weight ratio is over weights
            red_sumdiffsq(P + off, old, n, &du)
            red_sumsq(old, n, &w2)
    if floating is float and o.prec == PREC_BF16:
        bf16_pack_op(o, P, Wk, T.r0, T.nr)
    if floating is float and o.wt != NULL:
        fnn_pack_bt_rows(T.r0, T.nr, o.n_in, P + o.w_off, o.n_in, o.wt)
    if dg != NULL:
        acc[0] += sa
        acc[1] += s2
        acc[2] += du
        acc[3] += w2


# ---------------------------------------------------------------- plan building
cdef Net* net_new(const int64_t[:, ::1] ops, const double[:, ::1] opsf, const int64_t[:, ::1] phases,
                  const int64_t[:, ::1] tiles, Py_ssize_t B, Py_ssize_t chunk, Py_ssize_t n_in0,
                  const int64_t[::1] bf16=None) except NULL:
    """C records for a plan whose work buffer holds B rows (column offsets times B). ``bf16`` (plans
    with bfloat16 products, see bf16.pxi): the rows of a block (replacing B), the columns of the
    input's copies (rows, pairs) and their row width, the weight panels' size (bfloat16 values)
    and the plan's columns (the panels start after them)."""
    if bf16 is not None:
        B = bf16[0]
    cdef Py_ssize_t pb_e = B * bf16[5] if bf16 is not None else 0
    cdef Net* net = <Net*>malloc(sizeof(Net))
    if net == NULL:
        raise MemoryError()
    cdef int k, n = <int>ops.shape[0]
    cdef Py_ssize_t t
    net.n_ops = n
    net.n_ph = <int>phases.shape[0]
    net.n_tiles = tiles.shape[0]
    net.B = B
    net.chunk = chunk
    net.n_in0 = n_in0
    net.last = n - 1
    net.part = NULL
    net.pb_e = pb_e
    net.pb_n = bf16[4] if bf16 is not None else 0
    net.ib_e = B * bf16[1] if bf16 is not None and bf16[1] >= 0 else -1
    net.iv_e = B * bf16[2] if bf16 is not None and bf16[2] >= 0 else -1
    net.ib_k = bf16[3] if bf16 is not None else 0
    net.tsc = NULL
    net.tsc_n = bf16[6] if bf16 is not None else 0
    net.wt = NULL
    net.ops = <Op*>malloc((n + 1) * sizeof(Op))
    net.ph = <Phase*>malloc((net.n_ph + 1) * sizeof(Phase))
    net.tiles = <Tile*>malloc((net.n_tiles + 1) * sizeof(Tile))
    if net.ops == NULL or net.ph == NULL or net.tiles == NULL:
        net_free(net)
        raise MemoryError()
    for k in range(n):
        net.ops[k].kind = <int>ops[k, 0]
        net.ops[k].n_in = ops[k, 1]
        net.ops[k].n_out = ops[k, 2]
        net.ops[k].w_off = ops[k, 3]
        net.ops[k].b_off = ops[k, 4]
        net.ops[k].act = <int>ops[k, 5]
        net.ops[k].drop = <int>ops[k, 6]
        net.ops[k].in_e = B * ops[k, 7]
        net.ops[k].in2_e = B * ops[k, 8] if ops[k, 8] >= 0 else -1
        net.ops[k].a_e = B * ops[k, 9]
        net.ops[k].ad_e = B * ops[k, 10]
        net.ops[k].d_e = B * ops[k, 11]
        net.ops[k].din_e = B * ops[k, 12] if ops[k, 12] >= 0 else -1
        net.ops[k].din2_e = B * ops[k, 13] if ops[k, 13] >= 0 else -1
        net.ops[k].din_acc = <int>ops[k, 14]
        net.ops[k].din2_acc = <int>ops[k, 15]
        net.ops[k].s_e = B * ops[k, 16] if ops[k, 16] >= 0 else -1
        net.ops[k].s_off = ops[k, 17]
        net.ops[k].r_off = ops[k, 18]
        net.ops[k].groups = ops[k, 19]
        net.ops[k].key = ops[k, 20]
        net.ops[k].diag = <int>ops[k, 21]
        net.ops[k].unit_off = ops[k, 22]
        net.ops[k].nbt = ops[k, 23]
        net.ops[k].dper = ops[k, 24]
        for t in range(N_GEOM):
            net.ops[k].g[t] = ops[k, 25 + t]
        net.ops[k].cell = <int>ops[k, 42]
        net.ops[k].steps = ops[k, 43]
        net.ops[k].hidden = ops[k, 44]
        net.ops[k].w2_off = ops[k, 45]
        net.ops[k].b2_off = ops[k, 46]
        net.ops[k].sub = ops[k, 47]
        net.ops[k].p_e = B * ops[k, 48] if ops[k, 48] >= 0 else -1
        net.ops[k].sg_rows = ops[k, 49] if FNN_SMALL_GEMM else 0
        net.ops[k].sg_grad_rows = ops[k, 50] if FNN_SMALL_GEMM else 0
        net.ops[k].sg_grad_min = ops[k, 51]
        net.ops[k].prec = <int>ops[k, 52]
        net.ops[k].xb_e = B * ops[k, 53] if ops[k, 53] >= 0 else -1
        net.ops[k].xv_e = B * ops[k, 54] if ops[k, 54] >= 0 else -1
        net.ops[k].db_e = B * ops[k, 55] if ops[k, 55] >= 0 else -1
        net.ops[k].dt_e = B * ops[k, 56] if ops[k, 56] >= 0 else -1
        net.ops[k].ob_e = B * ops[k, 57] if ops[k, 57] >= 0 else -1
        net.ops[k].ov_e = B * ops[k, 58] if ops[k, 58] >= 0 else -1
        net.ops[k].ob_k = ops[k, 59]
        net.ops[k].wf_e = 2 * pb_e + ops[k, 60] if ops[k, 60] >= 0 else -1
        net.ops[k].wb_e = 2 * pb_e + ops[k, 61] if ops[k, 61] >= 0 else -1
        net.ops[k].bw = B
        net.ops[k].wt = NULL
        if net.ops[k].kind == OP_RNN:
            rnn_setup(&net.ops[k], B)
        net.ops[k].act_param = opsf[k, 0]
        net.ops[k].drop_p = opsf[k, 1]
        net.ops[k].eps = opsf[k, 2]
        net.ops[k].momentum = opsf[k, 3]
    for k in range(net.n_ph):
        net.ph[k].kind = <int>phases[k, 0]
        net.ph[k].op = <int>phases[k, 1]
        net.ph[k].unit = phases[k, 2]
        net.ph[k].gather = <int>phases[k, 3]
        net.ph[k].pro = <int>phases[k, 4]
        net.ph[k].f0 = <int>phases[k, 5]
        net.ph[k].f1 = <int>phases[k, 6]
        net.ph[k].loss = <int>phases[k, 7]
        net.ph[k].b0 = <int>phases[k, 8]
        net.ph[k].b1 = <int>phases[k, 9]
        net.ph[k].epi = <int>phases[k, 10]
        net.ph[k].bst = <int>phases[k, 11]
        net.ph[k].bdx = <int>phases[k, 12]
    for t in range(net.n_tiles):
        net.tiles[t].op = <int>tiles[t, 0]
        net.tiles[t].r0 = tiles[t, 1]
        net.tiles[t].nr = tiles[t, 2]
    net.n_part = 0
    for k in range(n):
        net.ops[k].pt_off = net.n_part
        if net.ops[k].kind == OP_BN:
            net.n_part += 2 * (net.ops[k].n_out // net.ops[k].groups)
    if net.n_part > 0:
        net.part = <double*>malloc(((B + chunk - 1) // chunk) * net.n_part * sizeof(double))
        if net.part == NULL:
            net_free(net)
            raise MemoryError()
    return net


cdef void net_free(Net* net) noexcept:
    if net != NULL:
        free(net.ops)
        free(net.ph)
        free(net.tiles)
        free(net.part)
        free(net.wt)
        free(net)


cdef bint share_weights_on = True
cdef Py_ssize_t last_shared = 0


def shared_weight_copies_on(bint on):
    """Turn the shared copies of shared_weight_copies on or off (for tests: the same bits either
    way); returns the previous setting."""
    global share_weights_on
    prev = share_weights_on
    share_weights_on = on
    return prev


def last_shared_weight_copies():
    """The Dense ops that shared one copy of their weights in the last run_steps call."""
    return last_shared


cdef bint shares_weights(Net* net, int k, Py_ssize_t batch_size) noexcept nogil:
    """Whether Dense op k's forward runs fnn_sgemm_bt over eight chunks a step or more (float32 plans)."""
    cdef Op* o = &net.ops[k]
    cdef int p
    # with fewer chunks the copy, read from L2 by few rows, costs more than the chunks' own copies
    # (Intel Xeon held to AVX2, MLP H = 64: batch 32 in 2 chunks -11%, 64 in 4 -4%, 128 in 8 +4%,
    # 512 in 32 +8%)
    if (not share_weights_on or not FNN_SMALL_GEMM or net.chunk <= 0 or batch_size < 8 * net.chunk
            or o.kind != OP_DENSE
            or o.prec == PREC_BF16 or o.groups != 1 or o.sg_rows < net.chunk
            or not fnn_fwd_uses_bt(net.chunk, o.n_out)):
        return False
    for p in range(net.n_ph):
        if net.ph[p].kind == PH_WIDE_FWD and net.ph[p].op == k:
            return False
    return True


cdef bint shared_weight_copies(Net* net, Py_ssize_t batch_size) noexcept:
    """Give each Dense op of shares_weights one copy of its weights in fnn_sgemm_bt's transposed
    blocks (Op.wt), made once per call and renewed by the optimizer's tiles, so that a step's chunks
    share it rather than each transposing every block again (the same bits). False: no memory."""
    global last_shared
    cdef Py_ssize_t total = 0
    cdef int k
    last_shared = 0
    for k in range(net.n_ops):
        if shares_weights(net, k, batch_size):
            total += fnn_bt_packed_size(net.ops[k].n_out, net.ops[k].n_in)
    if total == 0:
        return True
    net.wt = <float*>aligned_alloc(64, (total * sizeof(float) + 63) // 64 * 64)
    if net.wt == NULL:
        return False
    total = 0
    for k in range(net.n_ops):
        if shares_weights(net, k, batch_size):
            net.ops[k].wt = net.wt + total
            total += fnn_bt_packed_size(net.ops[k].n_out, net.ops[k].n_in)
            last_shared += 1
    return True


cdef void pack_shared_weights(Net* net, float* P, int n_threads) noexcept nogil:
    """Every Op.wt copy from P, a block of rows at a time (the blocks are independent)."""
    cdef Py_ssize_t nw = fnn_bt_block_rows(), b, N
    cdef int k
    cdef Op* o
    if net.wt == NULL:
        return
    for k in range(net.n_ops):
        o = &net.ops[k]
        if o.wt == NULL:
            continue
        N = o.n_out
        for b in prange((N + nw - 1) // nw, schedule='static', num_threads=n_threads):
            fnn_pack_bt_rows(b * nw, nw if (b + 1) * nw <= N else N - b * nw, o.n_in, P + o.w_off, o.n_in, o.wt)


# ---------------------------------------------------------------- drivers
def run_steps(const int64_t[:, ::1] ops, const double[:, ::1] opsf, const int64_t[:, ::1] phases,
              const int64_t[:, ::1] tiles, Py_ssize_t chunk,
              floating[::1] params, floating[::1] grads, floating[:, ::1] state, floating[::1] running,
              double[::1] stats, bint update_running,
              object X, const int64_t[::1] yi, const floating[:, ::1] yf,
              const floating[::1] sw, const floating[::1] pos_weight,
              const Py_ssize_t[::1] order, Py_ssize_t batch_size, Py_ssize_t n_steps,
              int loss_code, Py_ssize_t n_classes, int reduction,
              int opt_code, const double[::1] hp, const double[::1] lrs, int64_t t0,
              uint64_t seed, uint64_t epoch, uint64_t step0,
              floating[::1] work, double[::1] step_loss, int n_threads,
              double l2=0.0, bint l2_bias=False, double clip_value=0.0, double clip_norm=0.0,
              double[::1] grad_norms=None, int64_t[::1] pred=None, dict diag=None,
              floating[::1] scratch=None, Py_ssize_t scratch_stride=0,
              Py_ssize_t pos0=0, double norm_of_step=0.0,
              const int64_t[::1] lengths=None, Py_ssize_t loss_steps=1,
              const floating[::1] step_weight=None, const int64_t[::1] bf16=None):
    """Run n_steps mini-batch steps over examples X[order] (batch b holds
    order[b*batch_size : (b+1)*batch_size]). Each step runs the plan's phases (forward, loss,
    backward), the gradient tiles into ``grads``, and (opt_code != 0) the update of ``params``
    with rate lrs[b] as optimizer step t0 + b + 1. ``update_running``: BatchNorm's running
    statistics (in ``running``) move with every step.

    reduction: 0 mean over examples, 1 mean over elements, 2 sum.
    l2 adds l2 * ||W||^2 to the loss (Dense, conv, recurrent and Embedding weights, the padding
    row left out; biases too with l2_bias) through its gradient; clip_value clamps gradient entries; clip_norm rescales the whole gradient
    to at most that global L2 norm (torch.nn.utils.clip_grad_norm_'s rule), and
    grad_norms[s] receives step s's norm (before clipping). pred[example] receives the
    predicted class of every example seen. ``diag`` (arrays made by the caller:
    act_acc, active, tile_acc, scratch, and floats sat_sigmoid, sat_tanh) accumulates
    per-layer statistics; see fastnn/diagnostics.py. ``scratch`` holds ``scratch_stride``
    elements per chunk (convolutions' backward). ``lengths[example]``: the length of its
    sequence (recurrent layers; checked by the caller to lie in [1, T]). ``loss_steps`` > 1: the
    output holds that many rows of n_classes per example, and yi their labels, step-major
    (yi[s * n + e], n = X's rows), or (MSE) yf their targets, example-major; the mean is over the
    real steps (steps past ``lengths`` carry no loss), times n_classes for MSE.
    ``step_weight`` (with loss_steps > 1, sw then empty): a weight per step, step-major as yi;
    the mean becomes sum w l / sum w over the real steps (torch's class-weighted mean).
    Returns the number of steps completed; a step whose loss is not finite stops
    the run before its update (its loss is still written to step_loss).

    A share of a larger batch (data-parallel training): ``pos0`` is the position of the share's
    first example in the whole batch (its dropout row key), and ``norm_of_step`` > 0 replaces
    every step's loss normaliser (the whole batch's sum of weights), so ``grads`` and
    ``step_loss`` receive this share's part of the whole batch's mean.
    """
    cdef Py_ssize_t N = order.shape[0]
    cdef Py_ssize_t n_par = params.shape[0]
    cdef int xcode = 0
    cdef Py_ssize_t x_rows = 0, x_cols = 0
    cdef void* xptr = raw_rows(X, &xcode, &x_rows, &x_cols)
    check_bf16(bf16, work, n_threads)
    cdef Net* net = net_new(ops, opsf, phases, tiles, batch_size, chunk, x_cols, bf16)
    if net.tsc_n > 0:
        net.tsc = <void*>bf16_thread_space(net, <float*>&work[0])
    if floating is float and not shared_weight_copies(net, batch_size):
        net_free(net)
        raise MemoryError()
    cdef Ctx cx
    cdef Py_ssize_t s, b0, bsz, ti, i, blk, p0, pn, k
    cdef double norm, tot, inv_norm, sq, gnorm, coef
    cdef GradOpts go
    cdef bint split_update = clip_norm > 0 or grad_norms is not None
    cdef Py_ssize_t n_blocks = (n_par + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef double* blk_sq = NULL
    cdef double* gnp = &grad_norms[0] if grad_norms is not None and grad_norms.shape[0] > 0 else NULL
    cdef Diag dgs
    cdef Diag* dgp = NULL
    cdef int64_t every = 1
    cdef double[::1] d_act, d_tile
    cdef unsigned char[::1] d_active
    cdef floating[::1] d_scratch
    if diag is not None:
        d_act = diag["act_acc"]
        d_tile = diag["tile_acc"]
        d_active = diag["active"]
        d_scratch = diag["scratch"]
        if (d_act.shape[0] < <Py_ssize_t>diag["slots"] * diag["n_layers"] * 3
                or d_tile.shape[0] < tiles.shape[0] * 4 or d_scratch.shape[0] < tiles.shape[0] * diag["stride"]):
            net_free(net)
            raise ValueError("diagnostics buffers are too small for this plan")
        dgs.act_acc = &d_act[0]
        dgs.active = &d_active[0]
        dgs.n_units = diag["n_units"]
        dgs.n_layers = diag["n_layers"]
        dgs.sat_sigmoid = diag["sat_sigmoid"]
        dgs.sat_tanh = diag["sat_tanh"]
        dgs.tile_acc = &d_tile[0]
        dgs.scratch = <void*>&d_scratch[0]
        dgs.scratch_stride = diag["stride"]
        dgp = &dgs
        every = max(1, <int64_t>diag["every"])
    cdef OptRun orun
    cdef OptRun* optp = NULL
    cdef floating* P = &params[0]
    cdef floating* G = &grads[0]
    cdef floating* Wk = &work[0]
    cdef floating* S0 = NULL
    cdef floating* S1 = NULL
    cdef floating* S2 = NULL
    cdef double* hpp = <double*>&hp[0] if hp.shape[0] > 0 else NULL
    cdef Py_ssize_t done = 0
    cdef double* exl = <double*>malloc(batch_size * sizeof(double))
    if split_update:
        blk_sq = <double*>malloc(n_blocks * sizeof(double))
    if exl == NULL or (split_update and blk_sq == NULL):
        free(exl)
        free(blk_sq)
        net_free(net)
        raise MemoryError()
    go.l2 = l2
    go.l2_bias = l2_bias
    go.clip_value = clip_value
    if state.shape[0] > 0:
        S0 = &state[0, 0]
    if state.shape[0] > 1:
        S1 = &state[1, 0]
    if state.shape[0] > 2:
        S2 = &state[2, 0]
    cx.P = <void*>P
    cx.G = <void*>G
    cx.Wk = <void*>Wk
    cx.X = xptr
    cx.xcode = xcode
    cx.R = <void*>&running[0] if running.shape[0] > 0 else NULL
    cx.st = &stats[0] if stats.shape[0] > 0 else NULL
    cx.scratch = <void*>&scratch[0] if scratch is not None and scratch.shape[0] > 0 else NULL
    cx.scratch_stride = scratch_stride
    if scratch_stride > 0 and (scratch is None or
                               scratch.shape[0] < scratch_stride * ((batch_size + chunk - 1) // chunk)):
        free(exl)
        free(blk_sq)
        net_free(net)
        raise ValueError("scratch is too small for this plan")
    cx.ordp = <Py_ssize_t*>&order[0]
    cx.pos0 = pos0
    cx.training = True
    cx.grad16 = True
    cx.seed = seed
    cx.epoch = epoch
    cx.lr.code = loss_code
    cx.lr.n_classes = n_classes
    cx.lr.has_pos_weight = pos_weight.shape[0] > 0
    cx.yi = <void*>&yi[0] if yi.shape[0] > 0 else NULL
    cx.yf = <void*>&yf[0, 0] if yf.shape[0] > 0 else NULL
    cx.sw = <void*>&sw[0] if sw.shape[0] > 0 else NULL
    cx.pw = <void*>&pos_weight[0] if pos_weight.shape[0] > 0 else NULL
    cx.exl = exl
    cx.predp = &pred[0] if pred is not None and pred.shape[0] > 0 else NULL
    cx.lens = &lengths[0] if lengths is not None and lengths.shape[0] > 0 else NULL
    cx.steps = loss_steps
    cx.n_ex = x_rows
    cx.ssw = NULL
    if step_weight is not None and step_weight.shape[0] > 0:
        if loss_steps < 2 or step_weight.shape[0] != x_rows * loss_steps or sw.shape[0] > 0:
            free(exl)
            free(blk_sq)
            net_free(net)
            raise ValueError("step_weight needs loss_steps > 1, one weight per example and step, and no sw")
        cx.ssw = <void*>&step_weight[0]
    if loss_steps > 1 and yi.shape[0] > 0 and yi.shape[0] != x_rows * loss_steps:
        free(exl)
        free(blk_sq)
        net_free(net)
        raise ValueError("per-step labels need one label per example and step")
    orun.n_par = n_par
    orun.s0, orun.s1, orun.s2 = <void*>S0, <void*>S1, <void*>S2
    orun.eps = opt_eps(opt_code, hpp) if hpp != NULL else 0
    cdef floating* swp = <floating*>cx.sw
    cdef Py_ssize_t* ordp = cx.ordp
    try:
        with nogil:
            if floating is float:
                bf16_pack_all(net, P, Wk, n_threads)
                pack_shared_weights(net, P, n_threads)
            for s in range(n_steps):
                b0 = s * batch_size
                bsz = batch_size if b0 + batch_size <= N else N - b0
                if bsz <= 0:
                    break
                # loss normaliser: sum of example weights (x elements for elementwise means)
                if norm_of_step > 0:
                    norm = norm_of_step
                elif reduction == 2:
                    norm = 1
                else:
                    if swp != NULL:
                        norm = 0
                        for i in range(bsz):
                            norm += swp[ordp[b0 + i]]
                    else:
                        norm = bsz
                    if reduction == 1:
                        norm = norm * n_classes
                    if cx.steps > 1:
                        norm = steps_norm(&cx, swp, b0, bsz)
                        if reduction == 1:
                            norm = norm * n_classes
                # a batch whose weights are all zero contributes nothing
                inv_norm = 1.0 / norm if norm > 0 else 0.0
                cx.inv_norm = inv_norm
                cx.b0 = b0
                cx.bsz = bsz
                cx.step = step0 + s
                # statistics on every ``every``-th global step, but the dead-unit flags on every
                # step: a dead unit must be silent on every example
                cx.dg = dgp
                cx.full = dgp != NULL and (step0 + s) % every == 0
                run_phases(net, &cx, n_threads, update_running, P)
                if update_running:
                    for k in range(net.n_ops):
                        net.ops[k].nbt += 1
                tot = 0
                if swp != NULL:
                    for i in range(bsz):
                        tot += exl[i] * swp[ordp[b0 + i]]
                else:
                    for i in range(bsz):
                        tot += exl[i]
                tot = tot * inv_norm
                step_loss[s] = tot
                if not isfinite(tot):
                    break
                optp = NULL
                if opt_code != OPT_NONE:
                    orun.st = opt_step_consts(opt_code, hpp, lrs[s], t0 + s + 1)
                    optp = &orun
                if not split_update:
                    # gradient average and fused update: one tile per task, no shared writes
                    for ti in prange(net.n_tiles, schedule='dynamic', num_threads=n_threads):
                        grad_tile(net, &net.tiles[ti], Wk, P, G, bsz, optp, &go,
                                  dgp if cx.full else NULL, ti)
                else:
                    # the global norm needs every gradient first: gradient, norm, then update
                    for ti in prange(net.n_tiles, schedule='dynamic', num_threads=n_threads):
                        grad_tile(net, &net.tiles[ti], Wk, P, G, bsz, NULL, &go, NULL, ti)
                    for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
                        p0 = blk * UPDATE_BLOCK
                        pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n_par else n_par - p0
                        blk_sq[blk] = sum_sq(G + p0, pn)
                    sq = 0
                    for blk in range(n_blocks):
                        sq += blk_sq[blk]
                    gnorm = sqrt(sq)
                    if gnp != NULL:
                        gnp[s] = gnorm
                    coef = 1.0
                    if clip_norm > 0:
                        coef = clip_norm / (gnorm + 1e-6)
                    if optp != NULL:
                        for ti in prange(net.n_tiles, schedule='dynamic', num_threads=n_threads):
                            tile_update(net, &net.tiles[ti], Wk, P, G, optp, coef, dgp if cx.full else NULL, ti)
                    elif coef < 1.0:
                        for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
                            p0 = blk * UPDATE_BLOCK
                            pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n_par else n_par - p0
                            scale_span(G + p0, pn, coef)
                done = s + 1
    finally:
        free(blk_sq)
        free(exl)
        net_free(net)
    return done


def forward_rows(const int64_t[:, ::1] ops, const double[:, ::1] opsf, const int64_t[:, ::1] phases,
                 Py_ssize_t chunk, floating[::1] params, floating[::1] running, double[::1] stats,
                 object X, floating[:, ::1] out, floating[::1] work, Py_ssize_t batch_size,
                 int n_threads, bint training=False, uint64_t seed=0, uint64_t epoch=0, uint64_t step=0,
                 const int64_t[::1] lengths=None, floating[::1] scratch=None, Py_ssize_t scratch_stride=0,
                 const int64_t[::1] bf16=None):
    """out <- network(X), in batches of batch_size rows, through the forward phases given.
    Dropout is in inference mode unless ``training``; then row i of X draws the mask of
    example i of step ``step``. BatchNorm ops inside chunk phases use the running statistics.
    ``lengths[i]``: the length of row i's sequence (recurrent layers). ``scratch``:
    ``scratch_stride`` elements per chunk (convolutions)."""
    if scratch_stride > 0 and (scratch is None or
                               scratch.shape[0] < scratch_stride * ((batch_size + chunk - 1) // chunk)):
        raise ValueError("scratch is too small for this plan")
    cdef int xcode = 0
    cdef Py_ssize_t N = 0, x_cols = 0
    cdef void* xptr = raw_rows(X, &xcode, &N, &x_cols)
    check_bf16(bf16, work, 0)
    cdef Net* net = net_new(ops, opsf, phases, np.zeros((0, 3), dtype=np.int64), batch_size, chunk, x_cols, bf16)
    cdef Py_ssize_t b0, bsz, k
    cdef Ctx cx
    cdef floating* P = &params[0]
    cdef Op* last = &net.ops[net.last]
    cdef Py_ssize_t n_out = last.n_out
    cdef Py_ssize_t[::1] ident = np.arange(N, dtype=np.intp)
    cx.P = <void*>P
    cx.G = NULL
    cx.Wk = <void*>&work[0]
    cx.X = xptr
    cx.xcode = xcode
    cx.R = <void*>&running[0] if running.shape[0] > 0 else NULL
    cx.st = &stats[0] if stats.shape[0] > 0 else NULL
    cx.scratch = <void*>&scratch[0] if scratch_stride > 0 else NULL
    cx.scratch_stride = scratch_stride
    cx.ordp = &ident[0]
    cx.training = training
    cx.grad16 = False
    cx.seed = seed
    cx.epoch = epoch
    cx.step = step
    cx.dg = NULL
    cx.full = False
    cx.lens = &lengths[0] if lengths is not None and lengths.shape[0] > 0 else NULL
    cx.steps = 1
    cx.ssw = NULL
    try:
        with nogil:
            if floating is float:
                bf16_pack_all(net, P, <float*>cx.Wk, n_threads)
            for k in range(net.n_ops):
                if net.ops[k].kind == OP_BN and net.ops[k].r_off >= 0:
                    bn_eval_prepare(&net.ops[k], <floating*>cx.R, cx.st)
            b0 = 0
            while b0 < N:
                bsz = batch_size if b0 + batch_size <= N else N - b0
                cx.b0 = b0
                cx.pos0 = b0
                cx.bsz = bsz
                run_phases(net, &cx, n_threads, False, P)
                memcpy(&out[b0, 0], <floating*>cx.Wk + last.ad_e, bsz * n_out * sizeof(floating))
                b0 += bsz
    finally:
        net_free(net)


cdef extern from *:
    """
    /* Whether n floats are all finite: the largest magnitude's bits, an integer max that
       vectorizes, stays below the exponent field of Inf/NaN. */
    typedef uint32_t __attribute__((may_alias)) fastnn_u32a;
    typedef uint64_t __attribute__((may_alias)) fastnn_u64a;
    static int fastnn_finite_f(const float* x, Py_ssize_t n) {
        const fastnn_u32a* u = (const fastnn_u32a*)x; uint32_t m = 0; Py_ssize_t i;
        for (i = 0; i < n; i++) { uint32_t v = u[i] & 0x7fffffffu; m = v > m ? v : m; }
        return m < 0x7f800000u; }
    static int fastnn_finite_d(const double* x, Py_ssize_t n) {
        const fastnn_u64a* u = (const fastnn_u64a*)x; uint64_t m = 0; Py_ssize_t i;
        for (i = 0; i < n; i++) { uint64_t v = u[i] & 0x7fffffffffffffffull; m = v > m ? v : m; }
        return m < 0x7ff0000000000000ull; }
    /* dst <- x and fastnn_finite_* of x, in one pass over x */
    static int fastnn_copy_finite_f(float* dst, const float* x, Py_ssize_t n) {
        const fastnn_u32a* u = (const fastnn_u32a*)x; fastnn_u32a* d = (fastnn_u32a*)dst; uint32_t m = 0; Py_ssize_t i;
        for (i = 0; i < n; i++) { uint32_t w = u[i], v = w & 0x7fffffffu; d[i] = w; m = v > m ? v : m; }
        return m < 0x7f800000u; }
    static int fastnn_copy_finite_d(double* dst, const double* x, Py_ssize_t n) {
        const fastnn_u64a* u = (const fastnn_u64a*)x; fastnn_u64a* d = (fastnn_u64a*)dst; uint64_t m = 0; Py_ssize_t i;
        for (i = 0; i < n; i++) { uint64_t w = u[i], v = w & 0x7fffffffffffffffull; d[i] = w; m = v > m ? v : m; }
        return m < 0x7ff0000000000000ull; }
    """
    int fastnn_finite_f(const float* x, Py_ssize_t n) nogil
    int fastnn_finite_d(const double* x, Py_ssize_t n) nogil
    int fastnn_copy_finite_f(float* dst, const float* x, Py_ssize_t n) nogil
    int fastnn_copy_finite_d(double* dst, const double* x, Py_ssize_t n) nogil


def all_finite(object X, int n_threads):
    """Whether every entry of a C-contiguous float32/float64 array is finite: one pass over
    blocks in parallel (the input check of every fit, so it costs a fraction of an epoch)."""
    cdef Py_ssize_t n = X.size, blk = 1 << 16, nb = (n + blk - 1) // blk, b, k
    cdef unsigned char[::1] ok = np.ones(max(nb, 1), dtype=np.uint8)
    cdef const float[::1] xf
    cdef const double[::1] xd
    if nb == 1 or n_threads <= 1:
        # one block: no thread team to wake
        if X.dtype == np.float32:
            xf = X.reshape(-1)
            return n == 0 or bool(fastnn_finite_f(&xf[0], n))
        xd = X.reshape(-1)
        return n == 0 or bool(fastnn_finite_d(&xd[0], n))
    if X.dtype == np.float32:
        xf = X.reshape(-1)
        with nogil:
            for b in prange(nb, schedule='static', num_threads=n_threads):
                k = blk if (b + 1) * blk <= n else n - b * blk
                ok[b] = <unsigned char>fastnn_finite_f(&xf[b * blk], k)
    else:
        xd = X.reshape(-1)
        with nogil:
            for b in prange(nb, schedule='static', num_threads=n_threads):
                k = blk if (b + 1) * blk <= n else n - b * blk
                ok[b] = <unsigned char>fastnn_finite_d(&xd[b * blk], k)
    return bool(np.all(ok))


include "infer.pxi"


def loss_per_example(const floating[:, ::1] O, const int64_t[::1] yi, const floating[:, ::1] yf,
                     const floating[::1] pos_weight, int loss_code, double[::1] out):
    """Unweighted per-example loss of outputs O (the kernel behind evaluate)."""
    cdef LossRec lr
    cdef Py_ssize_t N = O.shape[0], i
    cdef Py_ssize_t* idx = <Py_ssize_t*>malloc(max(N, 1) * sizeof(Py_ssize_t))
    if idx == NULL:
        raise MemoryError()
    lr.code = loss_code
    lr.n_classes = O.shape[1]
    lr.has_pos_weight = pos_weight.shape[0] > 0
    try:
        for i in range(N):
            idx[i] = i
        with nogil:
            loss_rows(&lr, <floating*>&O[0, 0], <floating*>NULL, N, idx,
                      <int64_t*>&yi[0] if yi.shape[0] > 0 else NULL,
                      <floating*>&yf[0, 0] if yf.shape[0] > 0 else NULL, <floating*>NULL,
                      <floating*>&pos_weight[0] if pos_weight.shape[0] > 0 else NULL,
                      1.0, &out[0], NULL)
    finally:
        free(idx)


def optimizer_step(int opt_code, floating[::1] params, const floating[::1] grads,
                   floating[:, ::1] state, const double[::1] hp, double lr, int64_t t,
                   int n_threads):
    """One update (number t, 1-based) of the whole flat buffer, parallel over fixed blocks."""
    cdef Py_ssize_t n_par = params.shape[0], blk, p0, pn
    cdef Py_ssize_t n_blocks = (n_par + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef OptRun o
    o.st = opt_step_consts(opt_code, &hp[0], lr, t)
    o.eps = opt_eps(opt_code, &hp[0])
    o.n_par = n_par
    o.s0 = <void*>&state[0, 0] if state.shape[0] > 0 else NULL
    o.s1 = <void*>&state[1, 0] if state.shape[0] > 1 else NULL
    o.s2 = <void*>&state[2, 0] if state.shape[0] > 2 else NULL
    with nogil:
        for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
            p0 = blk * UPDATE_BLOCK
            pn = UPDATE_BLOCK if p0 + UPDATE_BLOCK <= n_par else n_par - p0
            update_at(&o, &params[0], <floating*>&grads[0], p0, pn)
