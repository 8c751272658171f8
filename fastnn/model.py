"""Sequential: layers -> a plan for the core (fastnn/_plan.py); inference, single steps, fit.

The Python side validates input once (the functions of ``fastnn.data``), allocates buffers once
per fit (or per batch size), resolves the thread count, holds BLAS to one thread, and makes one
call into the compiled core per epoch (or per ~2% of an epoch when a progress bar is shown); no
Python code runs per example or per step.

The package-internal interface of a model: what training.py, distributed.py, diagnostics.py,
lr_finder.py and the optimizers, callbacks, files and scikit-learn wrappers use beyond the public
API (they use nothing private; tests/test_structure.py holds them to it):

- ``plan``: the compiled ``Plan`` (shapes, ops, tiles, the layers' places in the buffers);
- ``flat_params``, ``flat_grads``, ``flat_running``: the flat buffers of the parameters, their
  gradients and the running statistics, which the layers' arrays view;
- ``work_buffer``: the work buffer of the last call (every op's output and delta), or None;
- ``build_for(X)``: fix the input shape from the first data, if the model has none yet;
- ``run_steps(...)``: the step call, one call into the core for a run of training steps (``precision=``
  "bf16-mixed" for bfloat16 products);
- ``l2_spans(bias)``: the spans of ``flat_params`` that ``fit(l2=)`` penalises.

Input checks are not part of it: they are functions of ``fastnn.data`` taking the plan, the loss
and the dtype, which the model's own methods call as every other caller does.
"""
import math
from collections import OrderedDict

import numpy as np

from . import layers as L
from ._config import blas_single_thread, resolve_threads
from ._util import aligned_empty, aligned_zeros
from ._core import _engine
from ._plan import Plan
from .data import STREAM_DTYPES, rng_for
from .data.validation import (check_batch, check_dtype, check_input, check_int, check_lengths, check_number,
                              check_precision, check_seed, check_targets, input_shape_of, loss_steps,
                              resolve_loss)
from .losses import Loss, check_loss
from .metrics import scores
from .optim import OPT_NONE, check_optimizer
from .training import TrainingDiverged


def infer_input_shape(layers):
    """The per-example input shape the first shape-defining layer implies, or None."""
    for layer in layers:
        if isinstance(layer, L.Dense):
            return (layer.in_features,)
        if type(layer) is L.BatchNorm1d:
            return (layer.num_features,)
        if isinstance(layer, L.LayerNorm):
            return layer.normalized_shape
        if isinstance(layer, L.Residual):
            return infer_input_shape(layer.layers) or (
                (layer.projection.in_features,) if layer.projection is not None else None)
        if isinstance(layer, (L.RNNBase, L.Embedding)):
            return None
        if not isinstance(layer, (L.Activation, L.Dropout, L.Identity)):
            return None             # a convolution, pooling, Flatten: the data will tell
    return None


class Sequential:
    """A stack of layers trained by mini-batch backpropagation in the compiled core.

    Any layer may follow any other where the shapes fit: Dense, BatchNorm1d, LayerNorm,
    Residual blocks, activations, Dropout, Flatten, Identity, the recurrent RNN, LSTM and GRU,
    and (first) Embedding.

    Args:
        *layers: the layers, in order (or one list of them).
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seeds initialisation and, unless ``fit`` gets its own, shuffling and dropout.
        input_shape: the per-example input shape; by default the first Dense, BatchNorm1d or
            LayerNorm implies it (recurrent models and Embedding need it: ``(T, F)``, ``(T,)``).
    """

    def __init__(self, *layers, dtype="float32", seed=None, input_shape=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer, e.g. fn.Dense(n_in, n_out)")
        for i, layer in enumerate(layers):
            if not isinstance(layer, L.Layer):
                raise TypeError(f"layer {i} is {layer!r}, not a fastnn layer (fn.Dense, fn.ReLU, ...)")
        self.layers = list(layers)
        self.dtype = check_dtype(dtype)
        self.seed = check_seed(seed)
        self._work_buf = self._scratch_buf = None
        self._runners = None
        self.loss = None
        self.optimizer = None
        self.epochs_trained = 0
        self.steps_trained = 0
        self.stop_training = False
        self.input_shape = None
        if input_shape is None:
            input_shape = infer_input_shape(self.layers)
        elif isinstance(input_shape, (int, np.integer)):
            input_shape = (input_shape,)
        if input_shape is not None:
            self._build(input_shape)
        # else no layer implies it (a convolution first): the first data given fixes it

    _BUILT = ("_plan", "n_params", "n_features", "n_outputs", "_params", "_grads", "_running")

    def __getattr__(self, name):
        if name in self._BUILT:
            raise ValueError("the model is not built yet: its input shape is unknown until it sees data; "
                             "pass input_shape=, e.g. Sequential(..., input_shape=(1, 28, 28)), or call fit "
                             "or forward first")
        raise AttributeError(name)

    def _build(self, input_shape):
        try:
            input_shape = tuple(check_int(s, "input_shape entries") for s in input_shape)
        except TypeError:
            raise TypeError(f"input_shape must be a tuple of positive ints, got {input_shape!r}") from None
        self._plan = Plan(self.layers, input_shape)
        self._layer_ids = tuple(map(id, self.layers))
        self.input_shape = input_shape
        self.n_params = self._plan.n_params
        self.n_features = self._plan.n_features
        self.n_outputs = self._plan.n_outputs
        self._params = aligned_zeros(self.n_params, self.dtype)
        self._grads = aligned_zeros(self.n_params, self.dtype)
        self._running = aligned_zeros(max(self._plan.n_running, 0), self.dtype)
        self._bind_views()
        self.reset_parameters()

    # ------------------------------------------------------------ plan
    def _bind_views(self):
        for _, layer, attr, off, shape in self._plan.params:
            setattr(layer, attr, self._params[off:off + math.prod(shape)].reshape(shape))
        for _, layer, attr, off, shape in self._plan.buffers:
            setattr(layer, attr, self._running[off:off + math.prod(shape)].reshape(shape))
        for _, d, _ in self._plan.dense:
            if not d.use_bias:
                d.bias = None

    def reset_parameters(self, seed=None):
        """(Re)initialise every layer from ``seed`` (default: the model's seed): Dense weights by
        their scheme, norm layers to weight 1, bias 0, running mean 0 and variance 1."""
        seed = self.seed if seed is None else check_seed(seed)
        for k, (_, d, act) in enumerate(self._plan.dense):
            scheme = d.init or (act.default_init if act is not None else "xavier")
            # drawn in float64, so both dtypes start alike
            W, b = L.init_weights(d.weight.shape, d.bias.shape if d.use_bias else None, d.fans(),
                                  rng_for(seed, 0x1A17, k), scheme)
            d.weight[...] = W
            if d.use_bias:
                d.bias[...] = b
        for k, (_, layer) in enumerate(self._plan.embeddings):
            # torch's nn.Embedding: N(0, 1), the padding row zero
            layer.weight[...] = rng_for(seed, 0xE3B, k).standard_normal(layer.weight.shape)
            if layer.padding_idx is not None:
                layer.weight[layer.padding_idx] = 0
        for k, (_, layer) in enumerate(self._plan.recurrent):
            # torch's RNNBase.reset_parameters: every parameter U(-1/sqrt(hidden), 1/sqrt(hidden))
            init_rng = rng_for(seed, 0x2EC0, k)
            a = 1.0 / math.sqrt(layer.hidden_size)
            for pname, shape in layer.param_shapes():
                getattr(layer, pname)[...] = init_rng.uniform(-a, a, size=shape)
        for _, layer, attr, _, _ in self._plan.params:
            if isinstance(layer, (L.BatchNorm1d, L.LayerNorm)):
                getattr(layer, attr)[...] = 1 if attr == "weight" else 0
        for _, layer, attr, _, _ in self._plan.buffers:
            getattr(layer, attr)[...] = 1 if attr == "running_var" else 0
        for _, layer in self._plan.bn_layers:
            layer.num_batches_tracked = 0

    # ------------------------------------------------------------ parameters
    def parameters(self):
        """NumPy views of the trainable parameters, in ``named_parameters()`` order."""
        return [p for _, p in self.named_parameters()]

    def named_parameters(self):
        """``(name, view)`` pairs of the trainable parameters, named as the equivalent torch
        module's state dict names them (``"0.weight"``, ``"2.layers.0.bias"``, ...)."""
        return [(name, getattr(layer, attr)) for name, layer, attr, _, _ in self._plan.params]

    def named_buffers(self):
        """``(name, value)`` pairs of the running statistics: ``running_mean``/``running_var``
        views and ``num_batches_tracked`` as a 0-d int64 array."""
        out = []
        for name, layer in self._plan.bn_layers:
            if layer.track_running_stats:
                out.append((name + ".running_mean", layer.running_mean))
                out.append((name + ".running_var", layer.running_var))
                out.append((name + ".num_batches_tracked", np.array(layer.num_batches_tracked, dtype=np.int64)))
        return out

    def state_dict(self):
        """Copies of the parameters and buffers by name (torch's state-dict names)."""
        out = {k: v.copy() for k, v in self.named_parameters()}
        out.update((k, np.array(v, copy=True)) for k, v in self.named_buffers())
        return out

    def load_state_dict(self, state):
        """Copy parameters and buffers in by name; every name and shape must match."""
        names = dict(self.named_parameters())
        names.update(self.named_buffers())
        missing = set(names) - set(state)
        extra = set(state) - set(names)
        if missing or extra:
            raise ValueError(f"state dict does not match the model: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        for k, v in state.items():
            v = np.asarray(v)
            if v.shape != names[k].shape:
                raise ValueError(f"{k}: shape {v.shape} does not match the model's {names[k].shape}")
            if k.endswith(".num_batches_tracked"):
                if v.dtype.kind not in "iu" or int(v) < 0:
                    raise ValueError(f"{k} must be a non-negative integer, got {v!r}")
            elif not np.all(np.isfinite(v)):
                raise ValueError(f"{k} contains NaN or Inf")
            elif k.endswith(".running_var") and np.any(v < 0):
                raise ValueError(f"{k} has negative entries; a variance is >= 0")
        bn = dict(self._plan.bn_layers)
        for k, v in state.items():
            if k.endswith(".num_batches_tracked"):
                bn[k[:-len(".num_batches_tracked")]].num_batches_tracked = int(v)
            else:
                names[k][...] = v

    def zero_grad(self):
        self._grads.fill(0)

    @property
    def grads(self):
        """Views of the last computed gradients, in ``parameters()`` order."""
        return [self._grads[off:off + math.prod(shape)].reshape(shape)
                for _, _, _, off, shape in self._plan.params]

    def chunk_for(self, batch_size):
        """Examples per work unit of a training step (from the shapes and the batch size only)."""
        return self._plan.chunk_for(batch_size)

    # ------------------------------------------------------------ package-internal interface
    @property
    def plan(self):
        """The compiled ``Plan`` of the layers."""
        return self._plan

    @property
    def flat_params(self):
        """The one flat buffer of all parameters (``parameters()`` are views into it)."""
        return self._params

    @property
    def flat_grads(self):
        """The gradients, laid out as ``flat_params``."""
        return self._grads

    @property
    def flat_running(self):
        """The running statistics of the norm layers, in one flat buffer."""
        return self._running

    @property
    def work_buffer(self):
        """The work buffer of the last call into the core (every op's output and delta), or None."""
        return self._work_buf

    # ------------------------------------------------------------ buffers
    def _work(self, rows, size=None):
        size = int(self._plan.work_size(rows) if size is None else size)
        if self._work_buf is None or self._work_buf.size < size:
            self._work_buf = aligned_empty(size, self.dtype)
        return self._work_buf

    def _scratch(self, batch_size, chunk=None, stride=None):
        """Per-chunk scratch of the convolutions and recurrent layers (``stride`` elements each;
        empty without them)."""
        p = self._plan
        size = (p.scratch if stride is None else stride) * -(-batch_size // (chunk or p.chunk_for(batch_size)))
        if getattr(self, "_scratch_buf", None) is None or self._scratch_buf.size < max(size, 1):
            self._scratch_buf = aligned_empty(max(size, 1), self.dtype)
        return self._scratch_buf

    def _precision_args(self, precision, rows, chunk=None, threads=0):
        """(op table, phases' source, work buffer, the core's bf16 argument, scratch, scratch stride)
        for a call over ``rows`` rows in chunks of ``chunk`` (training: on ``threads`` threads)."""
        p = self._plan
        if precision is None:
            return p.op_table, p, self._work(rows), None, self._scratch(rows, chunk), p.scratch
        b = p.bf16()
        return (b.op_table, b, self._work(rows, b.work_size(rows, threads)), b.info(rows),
                self._scratch(rows, chunk, b.scratch), b.scratch)

    def build_for(self, X, name="X"):
        """Returns X, after fixing the model's input shape from it if the model has none yet
        (``fastnn.data.input_shape_of``: X may come back as an array)."""
        if self.input_shape is None:
            X, shape = input_shape_of(X, name)
            self._build(shape)
        return X

    def _check_X(self, X, name="X"):
        """``fastnn.data.check_input`` for this model, built from X if it was not."""
        return check_input(self.build_for(X, name), self._plan, self.dtype, name)

    def _targets(self, y, loss, n, sample_weight=None):
        """``fastnn.data.check_targets`` for this model."""
        return check_targets(y, loss, n, self._plan, self.dtype, sample_weight)

    # ------------------------------------------------------------ inference
    # Runners kept per model, one per bucket of rows per work unit (a power of 2): a model serving
    # every batch size from 1 to a chunk holds at most this many.
    INFER_CACHE = 8

    def _runner(self, unit):
        """The compiled inference runner for units of ``unit`` rows (cached, least recently used
        dropped); a runner holds the plan's records and per-thread buffers, never weights."""
        cache = self._runners
        if cache is None or cache[0] is not self._plan:
            cache = self._runners = (self._plan, OrderedDict())
        runners = cache[1]
        cap = 1 << max(0, unit - 1).bit_length()
        r = runners.get(cap)
        if r is None:
            p = self._plan
            r = runners[cap] = _engine.InferRunner(p.infer_op_table, p.opf_table, cap, p.n_features,
                                                   p.n_outputs, p.row_width, p.scratch, p.n_stats,
                                                   self.dtype)
            if len(runners) > self.INFER_CACHE:
                runners.popitem(last=False)
        else:
            runners.move_to_end(cap)
        return r

    def _infer_input(self, X):
        """X as the runner reads it, checked but for NaN/Inf (the core checks that as it reads
        each row): C-contiguous (N, n_features) in a type the core converts row by row. Arrays in
        that form pass without a copy or a pass over them; anything else goes through
        ``fastnn.data.check_input``, with its messages."""
        p = self._plan
        if type(X) is np.ndarray and X.ndim > 2 and X.shape[1:] == p.in_shape:
            X = X.reshape(X.shape[0], -1)
        if (type(X) is np.ndarray and X.ndim == 2 and X.shape[0] > 0 and X.shape[1] == p.n_features
                and (X.dtype == self.dtype or X.dtype in STREAM_DTYPES) and X.flags.c_contiguous
                and not p.embeddings):
            return X
        return check_input(X, p, self.dtype, finite=False)

    def _out_array(self, out, n, what):
        """A new output array, or the caller's ``out`` checked: C-contiguous, writeable, the
        model's dtype, shaped (N, n_outputs) or (N, *output shape)."""
        p = self._plan
        if out is None:
            return np.empty((n, self.n_outputs), dtype=self.dtype)
        shapes = {(n, self.n_outputs), (n,) + p.out_shape}
        if (not isinstance(out, np.ndarray) or out.dtype != self.dtype or out.shape not in shapes
                or not out.flags.c_contiguous or not out.flags.writeable):
            got = (f"a {type(out).__name__}" if not isinstance(out, np.ndarray) else
                   f"{out.dtype} shape {out.shape}"
                   + ("" if out.flags.c_contiguous else ", not C-contiguous")
                   + ("" if out.flags.writeable else ", read-only"))
            raise ValueError(f"out for {what} must be a writeable C-contiguous {self.dtype.name} array of "
                             f"shape {(n, self.n_outputs)}" + (f" or {(n,) + p.out_shape}" if len(p.out_shape) > 1
                                                                 else "") + f", got {got}")
        return out.reshape(n, self.n_outputs)

    def _infer(self, X, threads, lengths, out, link, what):
        """forward/predict in inference mode through a cached runner: out <- link(network(X))."""
        if self.input_shape is None:
            X = self.build_for(X)
        p = self._plan
        if self._layer_ids != tuple(map(id, self.layers)):
            raise ValueError("the model's layers changed after it was built (its parameters and plan are "
                             "laid out for the old ones); build a new fn.Sequential from the layers")
        X = self._infer_input(X)
        n = X.shape[0]
        lengths = check_lengths(lengths, n, p)
        res = self._out_array(out, n, what)
        unit = p.infer_unit(n, self.MIN_FLOP_PER_THREAD)
        n_units = -(-n // unit)
        n_threads = 1
        if n_units > 1:
            n_threads = self._threads_for(n // 3, resolve_threads(threads))
        runner = self._runner(unit)
        code, per = link
        if p.infer_uses_blas(self.dtype):
            # held to one thread even in a serial call: OpenBLAS would otherwise thread the larger
            # products (a recurrent layer's input projection) and spin its threads between them
            with blas_single_thread():
                ok = runner.run(self._params, self._running, X, res, unit, n_threads, code, per, lengths)
        else:
            ok = runner.run(self._params, self._running, X, res, unit, n_threads, code, per, lengths)
        if not ok:
            raise ValueError("X contains NaN or Inf; remove or impute those values before training")
        if out is not None:
            return out
        return res.reshape((n,) + p.out_shape) if len(p.out_shape) > 1 else res

    def forward(self, X, threads=None, training=False, lengths=None, out=None, precision=None):
        """Raw network output (logits) for X, shape ``(N, n_outputs)``, or ``(N, *shape)`` for a
        network whose output has several dimensions per example (a Dense on every step).

        Inference mode (dropout off, BatchNorm with its running statistics) unless
        ``training=True``: then dropout draws the masks the next training step would (keyed by
        the model's seed and step counters) and BatchNorm normalises by the statistics of all of
        X as one batch (running statistics unchanged). ``lengths``: each sequence's length (models
        with recurrent layers): its steps past that keep the state and output zeros. ``out``: a
        C-contiguous array of the model's dtype and the output's shape to write the result into
        (returned). ``precision``: ``"bf16-mixed"`` multiplies bfloat16 operands, as training in it
        does."""
        precision = check_precision(precision, self.dtype)
        if self.input_shape is None:
            X = self.build_for(X)
        if not training and not self._plan.batch_coupled_inference and precision is None:
            return self._infer(X, threads, lengths, out, (_engine.LINK_CODES["identity"], 0), "forward")
        return self._forward_batch(X, threads, training, lengths, out, precision)

    def _forward_batch(self, X, threads, training, lengths, out, precision=None):
        """forward through the training executor: BatchNorm with the statistics of X as one batch
        (training mode, or a BatchNorm without running statistics), training-mode dropout, and
        bfloat16 products."""
        p = self._plan
        X = check_input(X, p, self.dtype)
        n = X.shape[0]
        lengths = check_lengths(lengths, n, p)
        mode = "train_forward" if training else "infer"
        if training and p.has_bn and n < 2:
            raise ValueError("BatchNorm in training mode needs at least 2 examples; got 1")
        res = self._out_array(out, n, "forward")
        if (training and p.has_bn) or p.batch_coupled_inference:
            rows = n            # batch statistics over all of X
        else:
            rows = min(n, max(p.chunk, (1024 // p.chunk) * p.chunk))
        ops, ph, work, bf16, scratch, stride = self._precision_args(precision, rows, p.chunk)
        stats = np.zeros(max(p.n_stats, 1))
        with blas_single_thread():
            _engine.forward_rows(ops, p.opf_table, ph.phases(mode), p.chunk, self._params,
                                 self._running, stats, X, res, work, rows,
                                 self._threads_for(rows // 3, resolve_threads(threads)), bool(training),
                                 self.seed, self.epochs_trained, self.steps_trained, lengths=lengths,
                                 scratch=scratch, scratch_stride=stride, bf16=bf16)
        if out is not None:
            return out
        return res.reshape((n,) + p.out_shape) if len(p.out_shape) > 1 else res

    __call__ = forward

    def predict(self, X, threads=None, lengths=None, out=None, precision=None):
        """Output through the last loss's link: probabilities for classification losses
        (softmax / sigmoid / exp), the raw output for MSE or before any loss is known; the link
        runs in the compiled call, on each chunk of outputs while it is in cache. ``out`` and
        ``precision`` as in ``forward``."""
        precision = check_precision(precision, self.dtype)
        loss = self.loss
        if self.input_shape is None:
            X = self.build_for(X)
        p = self._plan
        per = p.out_shape[-1] if len(p.out_shape) > 1 else 0    # per-step outputs: the link over each step's row
        batch = p.batch_coupled_inference or precision is not None
        if loss is None or type(loss).link is Loss.link:
            code = loss.link_code if loss is not None else _engine.LINK_CODES["identity"]
            if not batch:
                return self._infer(X, threads, lengths, out, (code, per), "predict")
        res = self._forward_batch(X, threads, False, lengths, out, precision) if batch else \
            self._infer(X, threads, lengths, out, (_engine.LINK_CODES["identity"], 0), "predict")
        if loss is None:
            return res
        flat = res.reshape(res.shape[0], -1)
        flat[...] = loss.link(flat.reshape(-1, per) if per else flat).reshape(flat.shape)
        return res

    def evaluate(self, X, y, loss=None, sample_weight=None, threads=None, lengths=None, precision=None):
        """``{"loss": ...}``, plus ``accuracy``, ``balanced_accuracy`` and ``f1_macro`` for
        classification losses (elementwise accuracy alone for multi-label BCE), over all of X.
        Per-step outputs count the steps within ``lengths`` only. ``precision``: as in
        ``forward``."""
        loss = resolve_loss(loss, self.loss)
        X = self._check_X(X)
        targets = self._targets(y, loss, X.shape[0], sample_weight)
        lengths = check_lengths(lengths, X.shape[0], self._plan)
        out = self.forward(X, threads, lengths=lengths, precision=precision).reshape(X.shape[0], -1)
        return scores(out, targets, loss, self._plan, lengths)

    # ------------------------------------------------------------ training
    def run_steps(self, X, targets, loss, order, batch_size, n_steps, opt, lrs, seed, epoch, step0, n_threads,
                  step_loss, **kw):
        """The step call of the training code: ``n_steps`` steps of ``batch_size`` examples of the
        checked X and ``targets`` (a ``fastnn.data.Targets``), taken in ``order``, in one call into
        the core. ``opt`` None computes the gradients alone; ``lrs`` holds each step's rate and
        ``step_loss`` receives each step's loss; (seed, epoch, step0) key the dropout masks. ``kw``:
        the core's options (``l2``, ``l2_bias``, ``clip_norm``, ``clip_value``, ``pred``, ``lengths``,
        ``diag``, ``pos0``, ``norm_of_step``) and ``precision`` (None or "bf16-mixed", checked). Returns the steps done: fewer than ``n_steps`` when a
        step's loss is not finite (that step's update skipped)."""
        yi, yf, sw, pw = targets
        return self._run(X, yi, yf, sw, pw, loss, order, batch_size, n_steps, opt, lrs, seed, epoch, step0,
                         n_threads, step_loss, **kw)

    def _run(self, X, yi, yf, sw, pw, loss, order, batch_size, n_steps, opt, lrs, seed, epoch,
             step0, n_threads, step_loss, update_running=True, precision=None, **kw):
        p = self._plan
        n_threads = self._threads_for(batch_size, n_threads)
        state = opt.bind(self) if opt is not None else np.zeros((0, 1), dtype=self.dtype)
        if state.shape[0] == 0:
            state = np.zeros((0, 1), dtype=self.dtype)
        ops, ph, work, bf16, scratch, stride = self._precision_args(precision, batch_size, threads=n_threads)
        if p.has_bn:
            ops = ops.copy()
            nbt = _engine.OP_FIELDS.index("nbt")
            for (_, layer), k in zip(p.bn_layers, (k for k, op in enumerate(p.ops) if op["kind"] == 2)):
                ops[k, nbt] = layer.num_batches_tracked
        running = self._running if update_running else self._running.copy()
        steps = loss_steps(loss, yi, kw.get("lengths"), p)
        step_weight = None
        if sw.ndim == 2:        # per-step weights go step-major, as the labels
            step_weight, sw = np.ascontiguousarray(sw.T).reshape(-1), sw[:0, 0]
        done = _engine.run_steps(
            ops, p.opf_table, ph.phases("train", batch_size), p.tiles, p.chunk_for(batch_size), self._params,
            self._grads, state, running, np.zeros(max(p.n_stats, 1)), bool(update_running),
            X, np.ascontiguousarray(yi.T).reshape(-1), yf, sw, pw, order, batch_size, n_steps, loss.kernel_code(yf),
            self.n_outputs if steps == 1 else self._plan.out_shape[-1],
            loss.reduction_code, opt.code if opt is not None else OPT_NONE,
            opt.hyper() if opt is not None else np.zeros(1), lrs,
            opt.step_count if opt is not None else 0, seed, epoch, step0,
            work, step_loss, n_threads,
            scratch=scratch, scratch_stride=stride,
            loss_steps=steps, step_weight=step_weight, bf16=bf16, **kw)
        if update_running:
            for _, layer in p.bn_layers:
                if layer.track_running_stats:
                    layer.num_batches_tracked += done
        return done

    # Below this much arithmetic per step and thread, waking and joining a thread costs more than
    # it saves (and a busy machine turns every join into a wait for a descheduled thread).
    MIN_FLOP_PER_THREAD = 2e6

    def _threads_for(self, rows, n_threads):
        """Threads worth using for a step of ``rows`` examples; results do not depend on it."""
        work = 6.0 * rows * self._plan.n_applied
        return int(max(1, min(n_threads, work // self.MIN_FLOP_PER_THREAD)))

    def loss_and_grad(self, X, y, loss, sample_weight=None, l2=0.0, l2_bias=False, threads=None, lengths=None,
                      precision=None):
        """Loss of the whole of X as one batch and its gradient (mean over the batch, as the
        loss reduces), as a list shaped like ``parameters()``. Training mode: BatchNorm uses the
        batch's statistics and dropout the model's fixed training mask. With ``l2`` the loss
        includes β‖W‖² (the weights ``l2_penalty`` covers) and the gradient 2βW. ``lengths``: each
        sequence's length (recurrent layers). ``precision``: ``"bf16-mixed"`` multiplies bfloat16
        operands (see ``fit``). Nothing of the model changes, its running statistics included."""
        loss = check_loss(loss)
        precision = check_precision(precision, self.dtype)
        l2 = check_number(l2, "l2")
        X = self._check_X(X)
        yi, yf, sw, pw = self._targets(y, loss, X.shape[0], sample_weight)
        n = X.shape[0]
        check_batch(n, self._plan, "loss_and_grad")
        step_loss = np.empty(1)
        with blas_single_thread():
            self._run(X, yi, yf, sw, pw, loss, np.arange(n, dtype=np.intp), n, 1, None, np.zeros(1),
                      self.seed, 0, 0, resolve_threads(threads), step_loss, update_running=False,
                      l2=l2, l2_bias=bool(l2_bias), lengths=check_lengths(lengths, n, self._plan),
                      precision=precision)
        value = float(step_loss[0]) + (self.l2_penalty(l2, l2_bias) if l2 > 0 else 0.0)
        return value, [g.copy() for g in self.grads]

    def train_step(self, X, y, loss, optimizer, sample_weight=None, threads=None, lengths=None, precision=None):
        """One mini-batch step on all of (X, y): forward, backward, update (and BatchNorm's
        running statistics). ``lengths``: each sequence's length (recurrent layers).
        ``precision``: ``"bf16-mixed"`` multiplies bfloat16 operands (see ``fit``). Returns the
        loss."""
        loss, opt = check_loss(loss), check_optimizer(optimizer)
        precision = check_precision(precision, self.dtype)
        X = self._check_X(X)
        yi, yf, sw, pw = self._targets(y, loss, X.shape[0], sample_weight)
        n = X.shape[0]
        check_batch(n, self._plan, "train_step")
        step_loss = np.empty(1)
        with blas_single_thread():
            done = self._run(X, yi, yf, sw, pw, loss, np.arange(n, dtype=np.intp), n, 1, opt,
                             np.array([opt.lr]), self.seed, self.epochs_trained, self.steps_trained,
                             resolve_threads(threads), step_loss, lengths=check_lengths(lengths, n, self._plan),
                             precision=precision)
        if done < 1:
            raise TrainingDiverged(f"loss is {step_loss[0]} on this batch; the update was skipped. "
                                   "Lower the learning rate or check the data.", self.epochs_trained,
                                   0, step_loss[0])
        opt.step_count += 1
        self.steps_trained += 1
        self.loss, self.optimizer = loss, opt
        return float(step_loss[0])

    def fit(self, X, y, loss=None, optimizer=None, epochs=1, batch_size=32, shuffle=True, seed=None,
            threads=None, verbose=0, validation_split=0.0, validation_data=None, sample_weight=None,
            class_weight=None, l2=0.0, l2_bias=False, schedule=None, clip_norm=None, clip_value=None,
            diagnostics=None, callbacks=None, checkpoint=None, checkpoint_every=1, drop_last=False,
            comm=None, lengths=None, validation_lengths=None, precision=None):
        """Train by mini-batch backpropagation; returns a ``History``.

        Args:
            X: ``(N, n_features)`` numeric array (or ``(N, *input_shape)``), converted to the
                model's dtype once.
            y: targets as the loss expects (class labels, or rows shaped like the output).
            loss: a fastnn loss (default: the last one used).
            optimizer: a fastnn optimizer (default: the last one used, else ``Adam(lr=1e-3)``).
            epochs: passes over the data (0 trains nothing).
            batch_size: examples per step (the last batch of an epoch may be smaller).
            shuffle: reshuffle every epoch; the order is keyed by (seed, epoch).
            seed: shuffling, validation split and dropout seed (default: the model's seed).
            threads: threads for this fit (default ``fn.get_num_threads()``); the result is
                bit-for-bit the same for any value.
            verbose: 0 silent, 1 a progress bar per epoch and a summary line, 2 one line per epoch.
            validation_split: fraction of (X, y) held out for validation, stratified by class for
                classification losses, drawn from ``seed`` (``lengths`` and weights are split
                with it).
            validation_data: ``(X_val, y_val)`` or ``(X_val, y_val, sample_weight)``.
            sample_weight: per-example weights; the loss becomes sum w l / sum w. With per-step
                labels also ``(N, T)``, a weight per step.
            class_weight: ``"balanced"`` (n / (C n_c)) or ``{class: weight}``; multiplies
                ``sample_weight``. With per-step labels every step is weighted by its class
                (``"balanced"`` counts the steps within ``lengths``).
            l2: β of the L2 penalty β‖W‖² over the weights of Dense, convolutional and
                recurrent layers and the Embedding table (biases too with ``l2_bias``; norm
                layers' parameters and the Embedding's padding row are not penalised), fused
                into the compiled step; History's ``loss`` is the data loss, ``l2_penalty`` β‖W‖².
            schedule: a ``fn.schedules`` schedule of the step (or ``ReduceOnPlateau``).
            clip_norm: rescale each step's whole gradient to at most this L2 norm.
            clip_value: clamp each gradient entry to [-clip_value, clip_value].
            diagnostics: True or a ``fn.Diagnostics`` to measure per-layer learning speed,
                update ratio, saturated and dead units inside the compiled step; the numbers
                land in ``history.diagnostics`` (one list per layer per epoch).
            callbacks: ``Callback`` objects (e.g. ``fn.EarlyStopping``).
            checkpoint: a path; the model (with optimizer state) is saved there every
                ``checkpoint_every`` epochs, atomically, so training can resume exactly.
            drop_last: skip the incomplete last batch of every epoch (as torch's DataLoader
                does); BatchNorm needs it when the last batch would hold one example.
            comm: an mpi4py communicator (e.g. ``MPI.COMM_WORLD``) to train data-parallel across
                its ranks, each given the same arguments; ``batch_size`` stays the global batch.
                See ``fastnn.distributed`` (needs ``pip install "fastnn-cpu[mpi]"``).
            lengths: ``(N,)`` sequence lengths (models with recurrent layers): steps past an
                example's length leave its state unchanged (as torch's packed sequences) and
                carry no loss in a per-step loss.
            validation_lengths: ``(N_val,)`` lengths of ``validation_data``'s sequences; needed
                with ``lengths`` and ``validation_data`` (``validation_split`` splits ``lengths``).
            precision: ``None`` (the model's dtype) or ``"bf16-mixed"`` (float32 models): the
                operands of every product of Dense, convolutional and recurrent layers
                (activations, weights, deltas) are rounded to bfloat16 and multiplied with
                float32 sums, on AMX or AVX512-BF16 where the CPU has them; weights, optimizer
                state, the loss, norms and every other sum stay float32. Validation runs in it
                too. See the mixed-precision guide.
        """
        from .training import fit

        return fit(self, X, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
                   shuffle=shuffle, seed=seed, threads=threads, verbose=verbose,
                   validation_split=validation_split, validation_data=validation_data,
                   sample_weight=sample_weight, class_weight=class_weight, l2=l2, l2_bias=l2_bias,
                   schedule=schedule, clip_norm=clip_norm, clip_value=clip_value, diagnostics=diagnostics,
                   callbacks=callbacks, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                   drop_last=drop_last, comm=comm, lengths=lengths, validation_lengths=validation_lengths,
                   precision=precision)

    def l2_penalty(self, l2, bias=False):
        """β‖W‖² over the weights of Dense, convolutional and recurrent layers and the Embedding
        table (its padding row left out), and their biases with ``bias``, in float64."""
        P = self._params
        return l2 * sum(float(np.sum(np.square(P[off:off + n], dtype=np.float64)))
                        for off, n in self.l2_spans(bias))

    def l2_spans(self, bias=False):
        """(offset, size) spans of the flat buffer that ``fit(l2=)`` penalises, as the core does:
        Dense, conv and recurrent weights (biases with ``bias``) and the Embedding table except
        its padding row (never trained, as in torch); norm layers' parameters are not."""
        p = self._plan
        covered = [d for _, d, _ in p.dense] + [r for _, r in p.recurrent]
        spans = []
        for _, layer, attr, off, shape in p.params:
            n = math.prod(shape)
            if isinstance(layer, L.Embedding):
                pad, D = layer.padding_idx, layer.embedding_dim
                if pad is None:
                    spans.append((off, n))
                else:
                    spans += [(off, pad * D), (off + (pad + 1) * D, n - (pad + 1) * D)]
            elif any(layer is c for c in covered) and (attr.startswith("weight") or bias):
                spans.append((off, n))
        return [(o, n) for o, n in spans if n > 0]

    # ------------------------------------------------------------ persistence and interop
    def save(self, path, include_optimizer=False):
        """Write the model to ``path`` in the safetensors format (see ``fastnn.io``)."""
        from .io import save_model

        return save_model(self, path, include_optimizer=include_optimizer)

    def to_torch(self):
        """The equivalent ``torch.nn.Sequential`` with these weights and running statistics (needs
        torch); a Residual becomes ``fastnn.io.TorchResidual``."""
        from .io import to_torch

        return to_torch(self)

    def to_onnx(self, path, opset=None):
        """Write the model as ONNX computing ``forward`` (see ``fastnn.onnx.export``; needs
        ``pip install "fastnn-cpu[onnx]"``). Returns the checked ``onnx.ModelProto``."""
        from .onnx import export

        return export(self, path, opset=opset)

    # ------------------------------------------------------------ pickling (joblib, sklearn clone)
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_work_buf"] = state["_scratch_buf"] = state["_runners"] = None
        state.pop("_layer_ids", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        # the layers' views were pickled as separate arrays, and a memory-mapped load is read-only:
        # own writable buffers and point the views back into them
        for name in ("_params", "_grads", "_running"):
            a = np.asarray(state[name])
            setattr(self, name, aligned_empty(a.size, a.dtype))
            getattr(self, name)[...] = a
        self._runners = None
        if self.input_shape is not None:
            self._layer_ids = tuple(map(id, self.layers))
        self._bind_views()

    # ------------------------------------------------------------ misc
    def __repr__(self):
        params = self.n_params if self.input_shape is not None else "unknown until built"
        lines = [f"Sequential(dtype={self.dtype.name}, params={params}"]
        lines[0] += ")" if not self.layers else ","
        for i, layer in enumerate(self.layers):
            lines.append(f"  ({i}): {layer!r}")
        if self.layers:
            lines.append(")")
        return "\n".join(lines)
