"""The planner: layers -> ops, buffer layout, phases and gradient tiles for the compiled core.

Runs once per model (and per batch size for the phases), on shapes alone: no unit size here
depends on the thread count, which is what makes training bit-identical on any number of
threads. See fastnn/_core/_engine.pyx for what the executor does with the tables.

Choices, each measured on the benchmark grid:
- An activation and a dropout that follow an op are fused into it (its tail), unless the op's
  output is also read elsewhere (a residual block's input), where the activation must stay apart.
- A Dense layer whose output is at least ``WIDE_MIN_OUT`` wide and whose weights have at least
  ``WIDE_MIN_WEIGHTS`` entries runs in training as whole-batch GEMMs split by output neurons
  (forward) and input features (backward), so its weights are packed once per step rather than
  once per chunk of examples.
- In float32 (AVX-512 and AVX2 builds), a Dense layer of at least ``SMALL_MIN_WEIGHTS`` weights
  and ``SMALL_MIN_OUT`` outputs multiplies products over at most ``SMALL_MAX_ROWS`` rows with
  fastnn/_core/smallgemm.pxi's kernels, which do not pack both operands on every call as BLAS does
  (AVX-512: 784x256 layers at batch 32: +30% per epoch; 1024-wide layers at batch 512: +2-6%); longer
  products and float64 stay on BLAS. Smaller Dense layers sum their weight gradients there over
  ``SMALL_GRAD_MIN_ROWS`` to ``SMALL_MAX_GRAD_ROWS`` rows (AVX-512, 64/64: +14-19% per epoch). The
  limits differ by build (``SMALL_LIMITS``).
- Gradient tiles are whole rows of dW in blocks of at most 128 rows (at least two per layer of
  32+ rows); norm parameters in blocks of 64 features.
"""
import math

import numpy as np

from . import layers as L
from ._core import _engine

OP = _engine.OP_KINDS
PH = _engine.PHASE_KINDS
N_OPF = len(_engine.OP_FIELDS)
COL = {name: i for i, name in enumerate(_engine.OP_FIELDS)}

WIDE_MIN_OUT = 256
WIDE_MIN_WEIGHTS = 256 * 256
WIDE_MAX_BATCH = 128    # an MLP with a 256-wide layer runs at most 2 chunks here: as many units
WIDE_BIG_WEIGHTS = 512 * 512
BN_UNIT = 32            # features per BatchNorm work unit
WIDE_UNIT = 128         # neurons (forward) or input features (backward) per wide-Dense work unit
NORM_TILE = 64          # features per norm-parameter gradient tile
CONV_CHUNK_BYTES = 2 << 20    # a convolutional net's chunk of rows, at most (measured: LeNet 1.05x)
CONV_MIN_POSITIONS = 128    # a convolution's positions per sub-block, at least (LeNet-5's 10x10 layer:
                            # 2 examples, not 1; Intel Xeon, batch 128: +3.6%, as an AVX2 machine +3.3%)
CONV_SUB_ELEMS = 1 << 14     # a convolution's columns per sub-block of examples, at most (measured: larger is slower)
TILE_ROWS = 128         # most rows of dW per gradient tile
INFER_SEQ_UNIT = 64     # rows per inference unit, at least, of nets with a GRU or plain RNN layer
# Where the own float32 GEMMs of smallgemm.pxi run, by the build's kernels (measured against OpenBLAS
# end to end on the MLP grid): float32 Dense layers with SMALL_MIN_WEIGHTS weights or more and
# SMALL_MIN_OUT outputs or more multiply at most SMALL_MAX_ROWS rows (a chunk, or the batch) there,
# and every float32 Dense layer sums its weight gradients there over SMALL_GRAD_MIN_ROWS (layers whose
# products stay on BLAS) to SMALL_MAX_GRAD_ROWS rows. AVX2 (Intel Xeon held to AVX2, OpenBLAS's
# Haswell kernels, 1 thread, CPU time): against BLAS alone 1.28x / 1.29x / 1.16x at H = 64 (batch
# 32 / 128 / 512), 1.16x at 32/256, level (0.99-1.04x) at 128 and 512 rows of 256- and 1024-wide
# layers; with at most 64 rows of products 128/256 lost 8%. Every AVX2 layer multiplies there,
# the 10-wide output layers too (no SMALL_MIN_OUT: the tiles are only as wide as the columns; 2
# threads, MLP grid +1-3% in every cell, BatchNorm MLP +3.5%, the conv nets +1-2.5%). Weight
# gradients over up to 512 rows there (not 128): at 2 threads OpenBLAS packs the batch's inputs once
# per gradient tile (AVX2, batch 512: H = 64 / 256 / 1024 +5% / +7.5% / +5%; 1 thread +7% / +7% / +3%).
# Layers of WIDE_BIG_WEIGHTS weights or more multiply up to SMALL_BIG_MAX_ROWS rows there (AVX2, batch
# 512, H = 1024, with the kernels' row blocks: +4-6% against BLAS).
SMALL_LIMITS = {"avx512": (256 * 256, 512, 512, 64, 512, 16), "avx2": (0, 256, 512, 0, 512, 1),
                None: (0, 0, 0, 0, 0, 16)}
(SMALL_MIN_WEIGHTS, SMALL_MAX_ROWS, SMALL_MAX_GRAD_ROWS, SMALL_GRAD_MIN_ROWS,
 SMALL_BIG_MAX_ROWS, SMALL_MIN_OUT) = SMALL_LIMITS[_engine.SMALL_GEMM_ISA]


def _next_pow2(n):
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _op_rows(op_dicts):
    """The core's op table (int64, the OP_FIELDS columns) of a list of op dicts."""
    ops = np.zeros((len(op_dicts), len(_engine.OP_FIELDS)), dtype=np.int64)
    for k, op in enumerate(op_dicts):
        for j, f in enumerate(_engine.OP_FIELDS):
            ops[k, j] = op[f]
    return ops


class _Buf:
    """A block of work-buffer columns holding one tensor of every example of the batch."""

    __slots__ = ("op", "col", "shape", "readers")

    def __init__(self, op, col, shape):
        self.op, self.col, self.shape, self.readers = op, col, tuple(shape), 0

    @property
    def width(self):
        return math.prod(self.shape)


class Plan:
    """Everything the core needs to run a model, derived from its layers and input shape."""

    def __init__(self, layers, in_shape):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.n_features = math.prod(self.in_shape)
        self.ops = []              # dicts with the OP_FIELDS keys (+ act_param, drop_p, eps, momentum)
        self.params = []           # (name, layer, attr, offset, shape)
        self.buffers = []          # (name, layer, attr, offset, shape): running statistics
        self.bn_layers = []        # (name, layer)
        self.dense = []            # (name, layer, activation that follows or None)
        self.recurrent = []        # (name, layer)
        self.embeddings = []       # (name, layer)
        self.diag = []             # (name, op index, n_params, units)
        self.n_params = 0
        self.n_applied = 0         # parameters x the times each example applies them (steps)
        self.n_running = 0
        self.n_stats = 0
        self.scratch = 0           # per chunk: convolutions' columns, recurrent weights transposed (elements)
        self._col = self.n_features
        self._seen = set()
        out = self._emit(layers, "", _Buf(-1, 0, self.in_shape))
        self.scratch = _rup(self.scratch, 16)     # each chunk's scratch on a 64-byte boundary, as the first's
        self.n_applied += self.n_params
        if not self.ops:
            raise ValueError("the model has no layer that computes anything (add a fn.Dense)")
        if out.op != len(self.ops) - 1:
            # the output must be the last op's (a trailing Identity or Flatten is fine: no op)
            raise ValueError("the network's output must come from its last layer")
        self.out_shape = out.shape
        self.n_outputs = out.width
        self.row_width = self._col
        self._link_deltas()
        self.op_table, self.opf_table = self._tables()
        # chunks serve the per-row GEMMs of Dense layers (wide ones want long chunks); a convolution
        # multiplies example by example, so it asks for nothing and short chunks spread it over threads
        widest = max([op["n_out"] for op in self.ops if op["kind"] == OP["dense"]] or [16])
        self.chunk = int(min(256, max(16, _next_pow2(-(-widest // 4)))))
        self.tiles = self._make_tiles()
        self.has_bn = bool(self.bn_layers)
        self.has_conv = any(op["kind"] == OP["conv"] for op in self.ops)
        # a GRU or plain RNN: every step's input projection of a unit is one product
        self.has_seq_projection = any(op["kind"] == OP["rnn"] and op["cell"] != L.CELL_LSTM for op in self.ops)
        self.batch_coupled_inference = any(not layer.track_running_stats for _, layer in self.bn_layers)
        self._phase_cache = {}
        self._bf16 = None
        self._infer_ops = None
        self._infer_blas = {}

    # ------------------------------------------------------------ walking the layers
    def _alloc(self, width):
        c = self._col
        self._col += width
        return c

    def _param(self, prefix, layer, shapes):
        offs = {}
        for name, shape in shapes:
            offs[name] = self.n_params
            self.params.append((prefix + name, layer, name, self.n_params, tuple(shape)))
            self.n_params += math.prod(shape)
        return offs

    def _new_op(self, kind, src, n_out, **kw):
        op = dict.fromkeys(_engine.OP_FIELDS, -1)
        op.update(kind=OP[kind], n_in=src.width, n_out=n_out, act=L.ACT_IDENTITY, drop=L.DROP_NONE,
                  in_col=src.col, din_acc=0, din2_acc=0, groups=1, nbt=0, dper=1, act_param=0.0, drop_p=0.0,
                  eps=0.0, momentum=-1.0, src=src, src2=None, sg_rows=0, sg_grad_rows=0, sg_grad_min=0, prec=0,
                  **{f"g{i}": 0 for i in range(_engine.N_GEOM)})
        op.update(kw)
        if kind == "dense":
            op["sg_grad_rows"] = SMALL_MAX_GRAD_ROWS
            weights = (op["n_in"] // op["groups"]) * (n_out // op["groups"])
            if n_out // op["groups"] >= SMALL_MIN_OUT and weights >= SMALL_MIN_WEIGHTS:
                op["sg_rows"] = SMALL_BIG_MAX_ROWS if weights >= WIDE_BIG_WEIGHTS else SMALL_MAX_ROWS
            else:
                op["sg_grad_min"] = SMALL_GRAD_MIN_ROWS
        k = len(self.ops)
        op["key"] = k
        op["a_col"] = op["ad_col"] = self._alloc(n_out)
        op["d_col"] = self._alloc(n_out)
        self.ops.append(op)
        src.readers += 1
        return k

    def _emit(self, layers, prefix, src):
        prev = None
        for i, layer in enumerate(layers):
            if isinstance(layer, L.Activation) and isinstance(prev, L.Dense):
                self.dense[-1][2] = layer      # picks the Dense's default init
            prev = layer
            name = f"{prefix}{i}"
            if not isinstance(layer, L.Layer):
                raise TypeError(f"layer {name} is {layer!r}, not a fastnn layer (fn.Dense, fn.ReLU, ...)")
            if id(layer) in self._seen and not isinstance(layer, (L.Activation, L.Dropout, L.Identity,
                                                                  L.Flatten)):
                raise ValueError(f"layer {name}: the same {type(layer).__name__} object appears twice; "
                                 "create a new one")
            self._seen.add(id(layer))
            try:
                out_shape = layer.output_shape(src.shape) if not isinstance(layer, L.Residual) else None
            except ValueError as e:
                raise ValueError(f"layer {name} ({layer!r}): {e}") from None
            if isinstance(layer, (L.Identity, L.Flatten)):
                src = _Buf(src.op, src.col, out_shape)
            elif isinstance(layer, L.Dense):
                offs = self._param(name + ".", layer, layer.param_shapes())
                groups = math.prod(out_shape[:-1])
                self.n_applied += (groups - 1) * layer.n_params()
                k = self._new_op("dense", src, math.prod(out_shape), w_off=offs["weight"],
                                 b_off=offs.get("bias", -1), groups=groups)
                self.dense.append([name, layer, None])
                self.diag.append((name, k, layer.n_params(), math.prod(out_shape)))
                src = _Buf(k, self.ops[k]["a_col"], out_shape)
            elif isinstance(layer, (L.Activation, L.Dropout, L.Dropout2d)):
                src = self._activation(name, layer, src)
            elif isinstance(layer, L.Conv1d) or isinstance(layer, L.Conv2d):
                offs = self._param(name + ".", layer, layer.param_shapes())
                geo = layer.geometry(src.shape)
                k = self._new_op("conv", src, math.prod(out_shape), w_off=offs["weight"], b_off=offs.get("bias", -1),
                                 **{f"g{i}": v for i, v in enumerate(geo)})
                # the im2col columns of every example, kept for backward
                self.ops[k]["s_col"] = self._alloc(layer.in_channels * geo[4] * geo[5] * geo[13] * geo[14])
                k_len = layer.in_channels // layer.groups * geo[4] * geo[5]
                L_out = geo[13] * geo[14]
                self.n_applied += (L_out - 1) * layer.n_params()      # at every output position
                # examples per sub-block (a power of 2, at most 16, so that it divides every chunk): the
                # most whose columns of one group fit in CONV_SUB_ELEMS
                sub = 1
                while sub < 16 and 2 * sub * k_len * L_out <= CONV_SUB_ELEMS:
                    sub *= 2
                # ... and enough that the partial filter gradient (out channels x k_len per
                # sub-block, written and summed every step) is at most half the sub-block's columns
                while sub < 16 and sub * L_out < 2 * layer.out_channels:
                    sub *= 2
                # ... and enough positions that the products are not all edge (columns of 100: the
                # filter gradient's dot products, 16 x 150 of them per example, were short)
                while sub < 16 and sub * L_out < CONV_MIN_POSITIONS:
                    sub *= 2
                self.ops[k]["sub"] = sub
                # each sub-block's partial filter and bias gradient, at its first row
                self.ops[k]["p_col"] = self._alloc(layer.out_channels * (k_len + 1))
                # per chunk: the gathered output delta (also the forward GEMM's result), then the
                # column delta, of one group and sub-block
                og = layer.out_channels // layer.groups
                self.scratch = max(self.scratch, (og + k_len) * sub * L_out)
                self.dense.append([name, layer, None])
                self.diag.append((name, k, layer.n_params(), math.prod(out_shape)))
                src = _Buf(k, self.ops[k]["a_col"], out_shape)
            elif isinstance(layer, (L.MaxPool1d, L.MaxPool2d, L.AvgPool1d, L.AvgPool2d, L.AdaptiveAvgPool1d,
                                    L.AdaptiveAvgPool2d)):
                geo = layer.geometry(src.shape)
                k = self._new_op("pool", src, math.prod(out_shape), **{f"g{i}": v for i, v in enumerate(geo)})
                if geo[15] == 0:            # max: each output's argmax, for backward
                    # argmax kept as a float (exact below 2**24); positions as C ints in the kernel
                    if geo[1] * geo[2] >= 1 << 24 or geo[0] * geo[1] * geo[2] >= 1 << 31:
                        raise ValueError(f"layer {name} ({layer!r}): max pooling over planes of 2**24 or more "
                                         "values (or inputs of 2**31) is not supported")
                    self.ops[k]["s_col"] = self._alloc(math.prod(out_shape))
                src = _Buf(k, self.ops[k]["a_col"], out_shape)
            elif isinstance(layer, L.BatchNorm1d):
                offs = self._param(name + ".", layer, layer.param_shapes())
                n = layer.num_features
                r_off = -1
                if layer.track_running_stats:
                    r_off = self.n_running
                    for bname, shape in layer.buffer_shapes():
                        self.buffers.append((name + "." + bname, layer, bname, self.n_running, shape))
                        self.n_running += math.prod(shape)
                k = self._new_op("bn", src, src.width, w_off=offs.get("weight", -1), b_off=offs.get("bias", -1),
                                 s_off=self.n_stats, r_off=r_off, eps=layer.eps, groups=src.width // n,
                                 momentum=-1.0 if layer.momentum is None else layer.momentum)
                self.n_stats += 4 * n
                self.bn_layers.append((name, layer))
                if layer.affine:
                    self.diag.append((name, k, 2 * n, src.width))
                src = _Buf(k, self.ops[k]["a_col"], out_shape)
            elif isinstance(layer, L.LayerNorm):
                offs = self._param(name + ".", layer, layer.param_shapes())
                groups = src.width // layer.size
                k = self._new_op("ln", src, src.width, w_off=offs.get("weight", -1), b_off=offs.get("bias", -1),
                                 groups=groups, eps=layer.eps)
                self.ops[k]["s_col"] = self._alloc(2 * groups)
                if layer.elementwise_affine:
                    self.diag.append((name, k, layer.size * (2 if layer.use_bias else 1), src.width))
                src = _Buf(k, self.ops[k]["a_col"], out_shape)
            elif isinstance(layer, L.Residual):
                src = self._residual(name, layer, src)
            elif isinstance(layer, L.Embedding):
                if src.op != -1 or src.col != 0:
                    raise ValueError(f"layer {name} (Embedding) reads token ids: it must be the model's first layer")
                offs = self._param(name + ".", layer, layer.param_shapes())
                pad = -1 if layer.padding_idx is None else layer.padding_idx
                k = self._new_op("emb", src, math.prod(out_shape), w_off=offs["weight"], steps=src.width,
                                 hidden=layer.embedding_dim, cell=pad, vocab=layer.num_embeddings)
                self.embeddings.append((name, layer))
                self.diag.append((name, k, layer.n_params(), math.prod(out_shape)))
                src = _Buf(k, self.ops[k]["a_col"], out_shape)
            elif isinstance(layer, L.RNNBase):
                src = self._recurrent(name, layer, src)
            else:
                raise TypeError(f"layer {name} ({layer!r}) is not supported by Sequential")
        return src

    def _activation(self, name, layer, src):
        is_act = isinstance(layer, L.Activation)
        if is_act and layer.code == L.ACT_IDENTITY:
            return src
        if isinstance(layer, (L.Dropout, L.Dropout2d)) and layer.p == 0:
            return src
        prod = self.ops[src.op] if src.op >= 0 else None
        fusable = (prod is not None and src.readers == 0 and src.col == prod["ad_col"]
                   and prod["drop"] == L.DROP_NONE and (not is_act or prod["act"] == L.ACT_IDENTITY))
        if not fusable:
            k = self._new_op("act", src, src.width)
            prod = self.ops[k]
        if is_act:
            prod["act"], prod["act_param"] = layer.code, float(layer.param)
            return _Buf(src.op if fusable else len(self.ops) - 1, prod["a_col"], src.shape)
        prod["drop"], prod["drop_p"] = layer.code, layer.p
        prod["dper"] = math.prod(src.shape[1:]) if isinstance(layer, L.Dropout2d) else 1
        prod["ad_col"] = self._alloc(prod["n_out"])
        return _Buf(src.op if fusable else len(self.ops) - 1, prod["ad_col"], src.shape)

    def _recurrent(self, name, layer, src):
        """One op per layer of the stack; the layers below the top output every step (with
        inverted dropout between layers in training)."""
        offs = self._param(name + ".", layer, layer.param_shapes())
        T, H = src.shape[0], layer.hidden_size
        self.recurrent.append((name, layer))
        for l in range(layer.num_layers):
            top = l == layer.num_layers - 1
            n_out = H if top and not layer.return_sequences else T * H
            w_ih, w_hh, *b = (offs[p] for p in layer.layer_params(l))
            k = self._new_op("rnn", src, n_out, w_off=w_ih, w2_off=w_hh, b_off=b[0] if b else -1,
                             b2_off=b[1] if b else -1, cell=layer.cell, steps=T, hidden=H)
            F = self.ops[k]["n_in"] // T
            self.ops[k]["s_col"] = self._alloc(_engine.rnn_state_width(layer.cell, T, F, H))
            self.scratch = max(self.scratch, _engine.rnn_scratch(layer.cell, F, H))
            n_par = sum(math.prod(s) for p, s in layer.param_shapes() if p.endswith(f"_l{l}"))
            self.n_applied += (T - 1) * n_par
            self.diag.append((f"{name}.l{l}" if layer.num_layers > 1 else name, k, n_par, n_out))
            src = _Buf(k, self.ops[k]["a_col"], (H,) if n_out == H else (T, H))
            if not top and layer.dropout > 0:
                src = self._activation(name, L.Dropout(layer.dropout), src)
        return src

    def _residual(self, name, layer, src):
        src.readers += 1                          # the skip reads it: nothing may fuse into it
        f_out = self._emit(layer.layers, f"{name}.layers.", src)
        skip = src
        if layer.projection is not None:
            p = layer.projection
            try:
                p_shape = p.output_shape(src.shape)
            except ValueError as e:
                raise ValueError(f"layer {name} ({type(layer).__name__}) projection: {e}") from None
            offs = self._param(f"{name}.projection.", p, p.param_shapes())
            k = self._new_op("dense", src, math.prod(p_shape), w_off=offs["weight"], b_off=offs.get("bias", -1),
                             groups=math.prod(p_shape[:-1]))
            self.dense.append([f"{name}.projection", p, None])
            self.diag.append((f"{name}.projection", k, p.n_params(), math.prod(p_shape)))
            skip = _Buf(k, self.ops[k]["a_col"], p_shape)
        if f_out.shape != skip.shape:
            raise ValueError(f"layer {name} (Residual): its layers map shape {src.shape} to {f_out.shape}, "
                             f"but the skip connection gives {skip.shape}; "
                             + ("pass projection=fn.Dense(...) to map the input to the output shape"
                                if layer.projection is None else "the projection must output the same shape"))
        if f_out.op == -1 and skip.op == -1:
            raise ValueError(f"layer {name} (Residual) computes nothing; give it a layer")
        k = self._new_op("add", f_out, f_out.width, src2=skip, in2_col=skip.col)
        skip.readers += 1
        return _Buf(k, self.ops[k]["a_col"], f_out.shape)

    # ------------------------------------------------------------ deltas
    def _link_deltas(self):
        """Where each op's backward writes its input deltas, and whether it overwrites (the first
        writer in backward order) or adds."""
        written = set()
        for k in range(len(self.ops) - 1, -1, -1):
            op = self.ops[k]
            for key, src in (("din", op["src"]), ("din2", op["src2"])):
                if src is None:
                    continue
                if src.op < 0:
                    op[key + "_col"] = -1
                    continue
                prod = self.ops[src.op]
                if src.col != prod["ad_col"]:
                    raise AssertionError("an op reads a buffer that is not its producer's output")
                op[key + "_col"] = prod["d_col"]
                op[key + "_acc"] = 1 if src.op in written else 0
                written.add(src.op)

    def _tables(self):
        ops = _op_rows(self.ops)
        opf = np.zeros((len(self.ops), len(_engine.OPF_FIELDS)), dtype=np.float64)
        for k, op in enumerate(self.ops):
            for j, f in enumerate(_engine.OPF_FIELDS):
                opf[k, j] = op[f]
        for j, (name, k, _, _) in enumerate(self.diag):
            ops[k, COL["diag"]] = j
            self.ops[k]["diag"] = j
        unit = 0
        for name, k, _, units in self.diag:
            ops[k, COL["unit_off"]] = unit
            unit += units
        self.n_units = unit
        return ops, opf

    # ------------------------------------------------------------ tiles and phases
    def _make_tiles(self):
        self.max_span = 0          # the longest parameter span of a tile beyond a row of an op's in/out
        tiles = []
        for k, op in enumerate(self.ops):
            if op["kind"] == OP["dense"]:
                n = op["n_out"] // op["groups"]
                rb = min(TILE_ROWS, max(16, n // 2))
                for r0 in range(0, n, rb):
                    tiles.append((k, r0, min(rb, n - r0), op["n_in"] // op["groups"]))
            elif op["kind"] == OP["conv"]:
                og = op["g3"] // op["g12"]            # a tile never straddles two groups
                rb = min(TILE_ROWS, max(16, og // 2))
                k_len = op["g0"] // op["g12"] * op["g4"] * op["g5"]
                for g0 in range(0, op["g3"], og):
                    for r0 in range(g0, g0 + og, rb):
                        tiles.append((k, r0, min(rb, g0 + og - r0), k_len * op["g13"] * op["g14"]))
            elif op["kind"] == OP["emb"]:
                n = op["vocab"]
                rb = max(16, -(-n // 8))
                for r0 in range(0, n, rb):
                    tiles.append((k, r0, min(rb, n - r0), op["hidden"]))
            elif op["kind"] == OP["rnn"]:
                # rows of the gates: weight_ih, weight_hh and both biases, summed over batch x steps
                n = 4 * op["hidden"] if op["cell"] == L.CELL_LSTM else (
                    3 * op["hidden"] if op["cell"] == L.CELL_GRU else op["hidden"])
                # halves: each tile packs every step's inputs and states again for its GEMMs
                rb = max(16, -(-n // 2))
                for r0 in range(0, n, rb):
                    tiles.append((k, r0, min(rb, n - r0), op["n_in"] // op["steps"] + op["hidden"]))
                self.max_span = max(self.max_span, rb)
            elif op["kind"] in (OP["bn"], OP["ln"]) and (op["w_off"] >= 0 or op["b_off"] >= 0):
                n = op["n_out"] // op["groups"]
                for r0 in range(0, n, NORM_TILE):
                    tiles.append((k, r0, min(NORM_TILE, n - r0), 2))
        # big tiles first, so dynamic scheduling balances the tail
        tiles.sort(key=lambda t: -t[2] * t[3])
        return np.array([t[:3] for t in tiles], dtype=np.int64).reshape(-1, 3)

    def is_wide(self, k, batch_size, bf16=False):
        """Whether Dense op k runs split by neurons in a training step of ``batch_size``: layers of
        WIDE_MIN_OUT+ outputs at small batches (where chunks are short and re-pack the weights
        for few rows), and layers of WIDE_BIG_WEIGHTS+ weights at any batch. Not with bfloat16
        products (``bf16``): their weights are packed once per step anyway, and chunks keep the
        elementwise passes on whole rows (512/1024 and 128/1024: +6%)."""
        op = self.ops[k]
        if (bf16 or op["kind"] != OP["dense"] or op["act"] == L.ACT_SOFTMAX or op["n_out"] < WIDE_MIN_OUT
                or op["groups"] != 1):
            return False
        weights = op["n_in"] * op["n_out"]
        return weights >= WIDE_BIG_WEIGHTS or (weights >= WIDE_MIN_WEIGHTS and batch_size <= WIDE_MAX_BATCH)

    def phases(self, mode, batch_size=0, bf16=False):
        """The phase table for ``mode``: "train" (forward, loss, backward, for ``batch_size``),
        "infer" (forward with running statistics) or "train_forward" (forward with batch
        statistics); ``bf16``: of the plan with bfloat16 products."""
        key = (mode, batch_size if mode == "train" else 0, bf16)
        if key in self._phase_cache:
            return self._phase_cache[key]
        n = len(self.ops)

        def coupled(k):
            op = self.ops[k]
            if op["kind"] == OP["bn"]:
                return mode != "infer" or op["r_off"] < 0
            return mode == "train" and self.is_wide(k, batch_size, bf16)

        def chunk(gather=0, pro=-1, f0=0, f1=0, loss=0, b0=0, b1=0, epi=-1, bst=-1, bdx=-1):
            return [PH["chunk"], -1, 0, gather, pro, f0, f1, loss, b0, b1, epi, bst, bdx]

        def batch(kind, k, fuse=False):
            # BatchNorm units: BN_UNIT values per example, at least one channel
            unit = max(1, BN_UNIT // self.ops[k]["groups"]) if kind.startswith("bn") else WIDE_UNIT
            return [PH[kind], k, unit, int(fuse), -1, 0, 0, 0, 0, 0, -1, -1, -1]

        cpl = [k for k in range(n) if coupled(k)]
        is_bn = {k: self.ops[k]["kind"] == OP["bn"] for k in cpl}
        # a wide phase runs its op's tail over its block of units, except for softmax, which needs
        # whole rows: then the next chunk phase does it. BatchNorm's passes over the batch all run
        # in the chunk phases around it (norm.pxi): partials after the chunk that makes its input,
        # normalisation and tail before the next; in backward, head and partials after the chunk
        # that makes its delta, the input delta before the next.
        fused = {k: not is_bn[k] and self.ops[k]["act"] != L.ACT_SOFTMAX for k in cpl}
        out = []

        def emit(ph):
            if ph[0] != PH["chunk"] or self._chunk_has_work(ph):
                out.append(ph)

        start, pro, gather = 0, -1, 1
        for c in cpl:
            emit(chunk(gather, pro, start, c, bst=c if is_bn[c] else -1))
            emit(batch("bn_fwd" if is_bn[c] else "wide_fwd", c, fused[c]))
            start, pro, gather = c + 1, (-1 if fused[c] else c), 0
        if mode != "train":
            emit(chunk(gather, pro, start, n))
        else:
            emit(chunk(gather, pro, start, n, 1, start, n, cpl[-1] if cpl else -1))
            for idx in range(len(cpl) - 1, -1, -1):
                c = cpl[idx]
                prev = cpl[idx - 1] if idx > 0 else -1
                epi, bdx = prev, -1
                if is_bn[c]:
                    emit(batch("bn_bwd", c))
                    bdx = c if self.ops[c]["din_col"] >= 0 else -1
                elif self.ops[c]["din_col"] >= 0:
                    ph = batch("wide_bwd", c)
                    # the op just before writes nothing else: its head (whole columns of its delta,
                    # which this phase writes last) runs here, on each block as it is written
                    if epi >= 0 and prev == c - 1 and self.ops[c]["src"].op == prev and fused[prev]:
                        ph[4], epi = prev, -1
                    emit(ph)
                emit(chunk(0, -1, 0, 0, 0, prev + 1, c, epi, bdx=bdx))
        table = np.array(out, dtype=np.int64).reshape(-1, len(_engine.PHASE_FIELDS))
        self._phase_cache[key] = table
        return table

    def _has_tail(self, k):
        op = self.ops[k]
        return (op["act"] != L.ACT_IDENTITY or op["drop"] != L.DROP_NONE or op["diag"] >= 0
                or (op["kind"] == OP["dense"] and op["b_off"] >= 0))

    def _has_head(self, k):
        op = self.ops[k]
        return op["act"] != L.ACT_IDENTITY or op["drop"] != L.DROP_NONE

    def _chunk_has_work(self, ph):
        _, _, _, gather, pro, f0, f1, loss, b0, b1, epi, bst, bdx = ph
        def bn(k):
            return self.ops[k]["kind"] == OP["bn"]
        return bool(gather or loss or f1 > f0 or b1 > b0 or bst >= 0 or bdx >= 0
                    or (pro >= 0 and (bn(pro) or self._has_tail(pro)))
                    or (epi >= 0 and (bn(epi) or self._has_head(epi))))

    def slots(self, batch_size):
        """Work units of the widest phase of a step: chunks, or blocks of a batch-coupled op (the
        diagnostics keep one accumulator per unit)."""
        n = -(-batch_size // self.chunk_for(batch_size))
        for k, op in enumerate(self.ops):
            if op["kind"] == OP["bn"]:
                n = max(n, -(-(op["n_out"] // op["groups"]) // max(1, BN_UNIT // op["groups"])))
            elif self.is_wide(k, batch_size):
                n = max(n, -(-op["n_out"] // WIDE_UNIT), -(-op["n_in"] // WIDE_UNIT))
        return n

    def chunk_for(self, batch_size):
        """Examples per work unit of a step: wide layers want long chunks (efficient GEMMs), and a
        batch wants at least two chunks to share. A function of the shapes and the batch size
        alone, never of the thread count."""
        chunk = int(min(self.chunk, max(16, _next_pow2(-(-batch_size // 2)))))
        # a convolutional net's rows are wide (columns, activations and deltas of every layer):
        # shorter chunks keep a chunk's rows within CONV_CHUNK_BYTES (counted at 4 bytes an element,
        # so the plan does not depend on the dtype), nearer the core's cache
        while self.has_conv and chunk > 8 and chunk * self.row_width * 4 > CONV_CHUNK_BYTES:
            chunk //= 2
        return chunk

    def work_size(self, rows):
        return self.row_width * rows

    # ------------------------------------------------------------ inference
    @property
    def infer_op_table(self):
        """The op table of inference: in a build with the own float32 kernels every Dense product
        runs on them (at inference a unit's rows never exceed a chunk), so a float32 MLP calls no
        BLAS and needs no limit on BLAS's threads."""
        if self._infer_ops is None:
            ops = self.op_table.copy()
            if _engine.SMALL_GEMM:
                dense = ops[:, COL["kind"]] == OP["dense"]
                ops[dense, COL["sg_rows"]] = 1 << 40
            self._infer_ops = ops
        return self._infer_ops

    def infer_uses_blas(self, dtype):
        """Whether inference in ``dtype`` calls BLAS (then its threads are held to one)."""
        key = np.dtype(dtype)
        if key not in self._infer_blas:
            own = _engine.SMALL_GEMM and key == np.float32
            self._infer_blas[key] = any(op["kind"] in (OP["conv"], OP["rnn"]) or (op["kind"] == OP["dense"] and not own)
                                        for op in self.ops)
        return self._infer_blas[key]

    def infer_unit(self, n, min_flop):
        """Rows per work unit of inference on n rows: the training chunk (so the products run on
        the kernels they always did), shortened for convolutional nets so a unit's rows stay near the
        core's cache and lengthened for GRU and RNN layers; a batch of at most one unit is one unit,
        or (not for those recurrent layers) two where each has ``min_flop`` of work to pay a second
        thread. From the shapes and n alone, never the thread count."""
        unit = self.chunk
        while self.has_conv and unit > 8 and unit * self.row_width * 4 > CONV_CHUNK_BYTES:
            unit //= 2
        seq = self.has_seq_projection
        if seq:
            # a GRU or plain RNN multiplies every step's input of a unit in one product: longer
            # units pay (GRU 32-128, batch 32 and 256, one thread: 64 rows 1.5x and 2.8x faster than 16)
            unit = max(unit, INFER_SEQ_UNIT)
        if n > unit:
            return unit
        if n >= 2 and not seq and 2 * n * self.n_applied >= 2 * min_flop:
            return -(-n // 2)
        return n

    def bf16(self):
        """The plan with bfloat16 products (precision="bf16-mixed"): ``Bf16Plan``, made once."""
        if self._bf16 is None:
            self._bf16 = Bf16Plan(self)
        return self._bf16


def _rup(n, m):
    return -(-n // m) * m


class Bf16Plan:
    """The op table and work-buffer layout of a plan whose products take bfloat16 operands
    (precision="bf16-mixed", fastnn/_core/bf16.pxi). A Dense op reads bfloat16 copies of its input
    (rows, and panels of pairs of rows for its weight gradient) and of its output delta (rows, and
    transposed), in columns after the float32 plan's; convolutions and recurrent layers round their
    operands as they pack them for each product, in a larger per-chunk scratch (and, for recurrent
    weight gradients, a per-thread one). Every op's weight panels lie at the end of the work buffer.
    The float32 buffers, the phases and the tiles are the float32 plan's."""

    def __init__(self, plan):
        ops = [dict(op) for op in plan.ops]
        self._plan = plan
        self._col = plan.row_width
        self.pb_size = 0            # bfloat16 values of the weight panels
        self.input = (-1, -1, 0)    # the input's copies (rows, pairs) and their row width
        self.scratch = plan.scratch     # per chunk, floats
        self._rnn = []              # (steps, most gate rows of a tile, widest of F and H) per recurrent op
        tile_rows = {}
        for k, _, nr in plan.tiles:
            tile_rows[k] = max(tile_rows.get(k, 0), nr)
        copies = {}
        for k, op in enumerate(ops):
            if op["kind"] == OP["conv"]:
                self._conv(op)
                continue
            if op["kind"] == OP["rnn"]:
                self._recurrent(op, tile_rows.get(k, 0))
                continue
            if op["kind"] != OP["dense"]:
                continue
            g = op["groups"]
            K, N = op["n_in"] // g, op["n_out"] // g
            Kpi, Kpo = _rup(K, 32), _rup(N, 32)
            src = op["src"]
            key = (src.op, src.col)
            if key not in copies:
                copies[key] = (self._alloc(g * Kpi // 2), self._alloc(-(-K // 16) * g * 8), K)
                if src.op >= 0:
                    prod = ops[src.op]
                    prod["ob_col"], prod["ov_col"], prod["ob_k"] = copies[key]
                else:
                    self.input = copies[key]
            op["prec"] = 1
            op["xb_col"], op["xv_col"] = copies[key][:2]
            op["db_col"] = self._alloc(g * Kpo // 2)
            op["dt_col"] = self._alloc(-(-(N * g) // 2))
            op["wf_off"] = self.pb_size
            self.pb_size += -(-N // 16) * 16 * Kpi
            op["wb_off"] = self.pb_size
            self.pb_size += -(-K // 16) * 16 * Kpo
        self.row_width = self._col
        self.ops = ops
        self.op_table = _op_rows(ops)
        # each chunk's scratch starts on a 64-byte boundary (the kernels' tile rows are cache lines)
        self.scratch = _rup(self.scratch, 16)

    def _alloc(self, width):
        c = self._col
        self._col += width
        return c

    def phases(self, mode, batch_size=0):
        """The phase table (see ``Plan.phases``): no Dense layer is split by neurons."""
        return self._plan.phases(mode, batch_size, bf16=True)

    def _panels(self, size):
        off = self.pb_size
        self.pb_size += size
        return off

    def _conv(self, op):
        G = op["g12"]
        Og, K, M = op["g3"] // G, op["g0"] // G * op["g4"] * op["g5"], op["sub"] * op["g13"] * op["g14"]
        Kp, Ogp, Mp = _rup(K, 32), _rup(Og, 32), _rup(M, 32)
        op["prec"] = 1
        op["wf_off"] = self._panels(op["g3"] * Kp)              # filters as rows
        op["wb_off"] = self._panels(G * K * Ogp)                # each group's filters transposed
        # the columns in bfloat16, kept for the filter gradient: each sub-block's K rows of every group
        # padded to 32 (at most 31 more per row: fits in a sub-block of one example's L + 31)
        op["xb_col"] = self._alloc(_rup(-(-G * K * (op["g13"] * op["g14"] + 31) // 2), 16))
        # the largest packing of one product: the columns' pairs (forward), the delta transposed and
        # the transposed result (filter gradient), the delta (column delta); after the op's float32
        # scratch (which holds im2col's columns in forward)
        pack = max(Kp * _rup(M, 16), Mp * _rup(Og, 16) + 2 * K * Og, Ogp * _rup(M, 16))
        self.scratch = max(self.scratch, _rup((Og + K) * M, 16) + -(-pack // 2))

    def _recurrent(self, op, tile_rows):
        T, H = op["steps"], op["hidden"]
        F = op["n_in"] // T
        GH = H * (4 if op["cell"] == L.CELL_LSTM else 3 if op["cell"] == L.CELL_GRU else 1)
        op["prec"] = 1
        if op["cell"] == L.CELL_LSTM:
            op["wf_off"] = self._panels(_rup(GH, 16) * _rup(F + H, 32))
        else:
            op["wf_off"] = self._panels(_rup(GH, 16) * (_rup(F, 32) + _rup(H, 32)))
        op["wb_off"] = self._panels((_rup(F, 16) + _rup(H, 16)) * _rup(GH, 32))
        widest = max(_rup(F + H, 32), _rup(GH, 32))
        self.scratch = max(self.scratch, _engine.RNN_MM_ROWS_ * widest // 2)
        self._rnn.append((T, tile_rows, _rup(max(F, H), 16)))

    def thread_scratch(self, rows):
        """bfloat16 values of a gradient tile's packing space (recurrent weights) per thread."""
        out = 0
        for T, nr, width in self._rnn:
            Rp = _rup(rows * T, 32)
            out = max(out, nr * Rp + Rp * width)
        return _rup(out, 32)

    @staticmethod
    def block_rows(rows):
        """Rows of a work-buffer block for a call over ``rows`` rows (a multiple of 32)."""
        return _rup(max(rows, 1), 32)

    def work_size(self, rows, threads=0):
        """Floats of the work buffer of a call over ``rows`` rows on ``threads`` threads (training)."""
        return _engine.bf16_work_size(self.block_rows(rows), self.row_width, self.pb_size,
                                      self.thread_scratch(rows), threads)

    def info(self, rows):
        """The core's ``bf16`` argument for a call over ``rows`` rows."""
        return np.array([self.block_rows(rows), *self.input, self.pb_size, self.row_width,
                         self.thread_scratch(rows)], dtype=np.int64)
