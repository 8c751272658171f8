"""Sequential: compiles layers into a plan for the core, trains and predicts.

The Python side validates input once, allocates buffers once per fit (or per
batch size), resolves the thread count, holds BLAS to one thread, and makes one
call into the compiled core per epoch (or per ~2% of an epoch when a progress
bar is shown); no Python code runs per example or per step.
"""
import math
import sys
import time
import warnings

import numpy as np

from . import layers as L
from ._config import blas_single_thread, resolve_threads
from ._core import _engine
from .callbacks import Callback, History
from .data import check_seed, check_X, class_weights, epoch_order, rng_for, split_indices
from .losses import BinaryCrossEntropy, check_loss, reduce_loss
from .metrics import classification_metrics
from .optim import OPT_NONE, Adam, check_optimizer


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or Inf; the weights from before that step are kept."""

    def __init__(self, msg, epoch, step, value):
        super().__init__(msg)
        self.epoch, self.step, self.value = epoch, step, value


def _dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def _next_pow2(n):
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _nonneg(v, name, positive=False):
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {v}")
    return v


def _pos_int(v, name, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


class Sequential:
    """A stack of layers trained by mini-batch backpropagation in the compiled core.

    Each ``Dense`` may be followed by one activation and then one ``Dropout``;
    ``Identity`` layers are skipped.

    Args:
        *layers: the layers, in order (or one list of them).
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seeds initialisation and, unless ``fit`` gets its own, shuffling and dropout.
    """

    def __init__(self, *layers, dtype="float32", seed=None):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one Dense layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, L.Layer):
                raise TypeError(f"layer {i} is {layer!r}, not a fastnn layer (fn.Dense, fn.ReLU, ...)")
        self.layers = list(layers)
        self.dtype = _dtype(dtype)
        self.seed = check_seed(seed)
        self._build_plan()
        self._params = np.zeros(self.n_params, dtype=self.dtype)
        self._grads = np.zeros(self.n_params, dtype=self.dtype)
        self._bind_views()
        self._work_buf = None
        self.loss = None
        self.optimizer = None
        self.epochs_trained = 0
        self.steps_trained = 0
        self.stop_training = False
        self.reset_parameters()

    # ------------------------------------------------------------ plan
    def _build_plan(self):
        stages = []      # [dense index, dense, activation, dropout]
        seen = set()
        for i, layer in enumerate(self.layers):
            if isinstance(layer, L.Identity):
                continue
            if isinstance(layer, L.Dense):
                if id(layer) in seen:
                    raise ValueError(f"layer {i}: the same Dense object appears twice; create a new one")
                seen.add(id(layer))
                if stages and stages[-1][1].out_features != layer.in_features:
                    raise ValueError(f"layer {i} ({layer!r}) expects {layer.in_features} inputs but the "
                                     f"previous Dense gives {stages[-1][1].out_features}")
                stages.append([i, layer, None, None])
                continue
            if not stages:
                raise ValueError(f"layer {i} ({layer!r}) comes before any Dense layer; "
                                 "a Sequential must start with fn.Dense")
            st = stages[-1]
            if isinstance(layer, L._Activation):
                if st[2] is not None or st[3] is not None:
                    raise ValueError(f"layer {i} ({layer!r}): only one activation per Dense, placed before "
                                     "any Dropout")
                st[2] = layer
            elif isinstance(layer, L.Dropout):
                if st[3] is not None:
                    raise ValueError(f"layer {i}: two Dropout layers in a row; use one")
                st[3] = layer
            else:
                raise TypeError(f"layer {i} ({layer!r}) is not supported by Sequential")
        self._stages = stages
        n = len(stages)
        plan = np.zeros((n, _engine.PLAN_FIELDS), dtype=np.int64)
        planf = np.zeros((n, _engine.PLANF_FIELDS), dtype=np.float64)
        off = 0
        for k, (_, d, act, drop) in enumerate(stages):
            plan[k, 0], plan[k, 1], plan[k, 2] = d.in_features, d.out_features, off
            off += d.in_features * d.out_features
            if d.use_bias:
                plan[k, 3] = off
                off += d.out_features
            else:
                plan[k, 3] = -1
            plan[k, 4] = act.code if act is not None else L.ACT_IDENTITY
            planf[k, 0] = act.param if act is not None else 0.0
            if drop is not None and drop.p > 0:
                plan[k, 5] = drop.code
                planf[k, 1] = drop.p
        self.n_params = off
        self._plan, self._planf = plan, planf
        self.n_features = stages[0][1].in_features
        self.n_outputs = stages[-1][1].out_features
        # Work sizes follow the shapes, never the thread count (bit-identical results on any count).
        widest = max(d.out_features for _, d, _, _ in stages)
        self._chunk = int(min(256, max(16, _next_pow2(-(-widest // 4)))))
        # Gradient tiles: whole rows of dW (measured: splitting columns only adds traffic), in blocks
        # of at most 128 rows, and at least two blocks per layer wherever a layer has 32+ rows.
        tiles = []
        for k, (_, d, _, _) in enumerate(stages):
            rb = min(128, max(16, d.out_features // 2))
            for r0 in range(0, d.out_features, rb):
                tiles.append((k, r0, min(rb, d.out_features - r0), 0, d.in_features))
        # big tiles first, so dynamic scheduling balances the tail
        tiles.sort(key=lambda t: -t[2] * t[4])
        self._tiles = np.array(tiles, dtype=np.int64).reshape(-1, 5)

    def _bind_views(self):
        for k, (_, d, _, _) in enumerate(self._stages):
            w0 = int(self._plan[k, 2])
            d.weight = self._params[w0:w0 + d.in_features * d.out_features].reshape(d.out_features, d.in_features)
            b0 = int(self._plan[k, 3])
            d.bias = self._params[b0:b0 + d.out_features] if b0 >= 0 else None

    def reset_parameters(self, seed=None):
        """(Re)initialise every Dense layer from ``seed`` (default: the model's seed)."""
        seed = self.seed if seed is None else check_seed(seed)
        for k, (i, d, act, _) in enumerate(self._stages):
            scheme = d.init or (act.default_init if act is not None else "xavier")
            init_rng = rng_for(seed, 0x1A17, k)
            tmp_w = np.empty((d.out_features, d.in_features))
            tmp_b = np.empty(d.out_features) if d.use_bias else None
            holder = L.Dense(d.in_features, d.out_features, d.use_bias)
            holder.weight, holder.bias = tmp_w, tmp_b
            L.init_dense(holder, init_rng, scheme)     # drawn in float64, so both dtypes start alike
            d.weight[...] = tmp_w
            if tmp_b is not None:
                d.bias[...] = tmp_b

    # ------------------------------------------------------------ parameters
    def parameters(self):
        """NumPy views of the parameters, layer by layer, weight then bias."""
        return [p for _, p in self.named_parameters()]

    def named_parameters(self):
        """``(name, view)`` pairs named as torch.nn.Sequential's state dict (``"0.weight"``, ...)."""
        out = []
        for i, d, _, _ in self._stages:
            out.append((f"{i}.weight", d.weight))
            if d.bias is not None:
                out.append((f"{i}.bias", d.bias))
        return out

    def state_dict(self):
        """Copies of the parameters by name."""
        return {k: v.copy() for k, v in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy parameters in by name; every name and shape must match."""
        names = dict(self.named_parameters())
        missing = set(names) - set(state)
        extra = set(state) - set(names)
        if missing or extra:
            raise ValueError(f"state dict does not match the model: missing {sorted(missing)}, "
                             f"unexpected {sorted(extra)}")
        for k, v in state.items():
            v = np.asarray(v)
            if v.shape != names[k].shape:
                raise ValueError(f"{k}: shape {v.shape} does not match the model's {names[k].shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{k} contains NaN or Inf")
        for k, v in state.items():
            names[k][...] = v

    def zero_grad(self):
        self._grads.fill(0)

    @property
    def grads(self):
        """Views of the last computed gradients, in ``parameters()`` order."""
        out = []
        for k, (_, d, _, _) in enumerate(self._stages):
            w0 = int(self._plan[k, 2])
            out.append(self._grads[w0:w0 + d.in_features * d.out_features].reshape(d.out_features, d.in_features))
            b0 = int(self._plan[k, 3])
            if b0 >= 0:
                out.append(self._grads[b0:b0 + d.out_features])
        return out

    # ------------------------------------------------------------ buffers
    def _work(self, rows):
        size = int(_engine.work_size(self._plan, rows))
        if self._work_buf is None or self._work_buf.size < size:
            self._work_buf = np.empty(size, dtype=self.dtype)
        return self._work_buf

    def _targets(self, y, loss, n, sample_weight=None):
        yi, yf = loss.prepare(y, n, self.n_outputs, self.dtype)
        if yf.size == 0:
            yf = np.zeros((0, self.n_outputs), dtype=self.dtype)
        sw = loss.example_weights(yi, self.dtype)
        if sample_weight is not None:
            s = np.asarray(sample_weight)
            if s.dtype.kind not in "biuf":
                raise TypeError(f"sample_weight must be numeric, got dtype {s.dtype}")
            s = np.ascontiguousarray(s, dtype=self.dtype).reshape(-1)
            if s.shape[0] != n:
                raise ValueError(f"sample_weight has {s.shape[0]} entries but X has {n} examples")
            if not np.all(np.isfinite(s)) or np.any(s < 0):
                raise ValueError("sample_weight must be finite and non-negative")
            sw = s if sw is None else np.ascontiguousarray(sw * s, dtype=self.dtype)
        if sw is None:
            sw = np.zeros(0, dtype=self.dtype)
        pw = loss.pos_weight_array(self.n_outputs, self.dtype)
        return yi, yf, sw, pw

    # ------------------------------------------------------------ inference
    def forward(self, X, threads=None, training=False):
        """Raw network output (logits) for X, shape ``(N, n_outputs)``.

        Dropout is in inference mode unless ``training=True``, which draws the masks the
        next training step would (keyed by the model's seed and step counters)."""
        X = check_X(X, self.n_features, self.dtype)
        n = X.shape[0]
        out = np.empty((n, self.n_outputs), dtype=self.dtype)
        rows = min(n, max(self._chunk, (1024 // self._chunk) * self._chunk))
        work = self._work(rows)
        with blas_single_thread():
            _engine.forward_rows(self._plan, self._planf, self._chunk, self._params, X, out, work,
                                 rows, self._threads_for(rows // 3, resolve_threads(threads)), bool(training), self.seed,
                                 self.epochs_trained, self.steps_trained)
        return out

    __call__ = forward

    def predict(self, X, threads=None):
        """Output through the last loss's link: probabilities for classification losses
        (softmax / sigmoid / exp), the raw output for MSE or before any loss is known."""
        out = self.forward(X, threads)
        return self.loss.link(out) if self.loss is not None else out

    def evaluate(self, X, y, loss=None, sample_weight=None, threads=None):
        """``{"loss": ...}``, plus ``accuracy``, ``balanced_accuracy`` and ``f1_macro`` for
        classification losses (elementwise accuracy alone for multi-label BCE), over all of X."""
        loss = check_loss(loss if loss is not None else self._need_loss())
        X = check_X(X, self.n_features, self.dtype)
        yi, yf, sw, pw = self._targets(y, loss, X.shape[0], sample_weight)
        out = self.forward(X, threads)
        per = np.empty(X.shape[0])
        _engine.loss_per_example(out, yi, yf, pw, loss.kernel_code(yf), per)
        res = {"loss": reduce_loss(per, sw if sw.size else None, loss.reduction_code, self.n_outputs)}
        if loss.classification:
            if yi.size or yf.shape[1] == 1 or not isinstance(loss, BinaryCrossEntropy):
                truth = yi if yi.size else (yf.argmax(1) if yf.shape[1] > 1 else (yf[:, 0] > 0.5).astype(np.int64))
                pred = out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0).astype(np.int64)
                res.update(classification_metrics(truth, pred, self.n_outputs))
            else:
                res["accuracy"] = loss.accuracy(out, yi, yf)
        return res

    def _need_loss(self):
        if self.loss is None:
            raise ValueError("no loss given and the model has not been trained; pass loss=, "
                             "e.g. loss=fn.CrossEntropy()")
        return self.loss

    # ------------------------------------------------------------ training
    def _run(self, X, yi, yf, sw, pw, loss, order, batch_size, n_steps, opt, lrs, seed, epoch,
             step0, n_threads, step_loss, **kw):
        n_threads = self._threads_for(batch_size, n_threads)
        state = opt.bind(self) if opt is not None else np.zeros((0, 1), dtype=self.dtype)
        if state.shape[0] == 0:
            state = np.zeros((0, 1), dtype=self.dtype)
        return _engine.run_steps(
            self._plan, self._planf, self.chunk_for(batch_size), self._tiles, self._params, self._grads, state,
            X, yi, yf, sw, pw, order, batch_size, n_steps, loss.kernel_code(yf), self.n_outputs,
            loss.reduction_code, opt.code if opt is not None else OPT_NONE,
            opt.hyper() if opt is not None else np.zeros(1), lrs,
            opt.step_count if opt is not None else 0, seed, epoch, step0, True,
            self._work(batch_size), step_loss, n_threads, **kw)

    def chunk_for(self, batch_size):
        """Examples per work unit of a step: wide layers want long chunks (efficient GEMMs), and a
        batch wants at least two chunks to share. A function of the shapes and the batch size
        alone, never of the thread count."""
        return int(min(self._chunk, max(16, _next_pow2(-(-batch_size // 2)))))

    # Below this much arithmetic per step and thread, waking and joining a thread costs more than
    # it saves (and a busy machine turns every join into a wait for a descheduled thread).
    MIN_FLOP_PER_THREAD = 2e6

    def _threads_for(self, rows, n_threads):
        """Threads worth using for a step of ``rows`` examples; results do not depend on it."""
        work = 6.0 * rows * self.n_params
        return int(max(1, min(n_threads, work // self.MIN_FLOP_PER_THREAD)))

    def loss_and_grad(self, X, y, loss, sample_weight=None, l2=0.0, l2_bias=False, threads=None):
        """Loss of the whole of X as one batch and its gradient (mean over the batch, as the
        loss reduces), as a list shaped like ``parameters()``. With ``l2`` the loss includes
        β‖W‖² and the gradient 2βW. Parameters are not changed; dropout draws the model's
        fixed training mask."""
        loss = check_loss(loss)
        l2 = _nonneg(l2, "l2")
        X = check_X(X, self.n_features, self.dtype)
        yi, yf, sw, pw = self._targets(y, loss, X.shape[0], sample_weight)
        n = X.shape[0]
        step_loss = np.empty(1)
        with blas_single_thread():
            self._run(X, yi, yf, sw, pw, loss, np.arange(n, dtype=np.intp), n, 1, None, np.zeros(1),
                      self.seed, 0, 0, resolve_threads(threads), step_loss, l2=l2, l2_bias=bool(l2_bias))
        value = float(step_loss[0]) + (self.l2_penalty(l2, l2_bias) if l2 > 0 else 0.0)
        return value, [g.copy() for g in self.grads]

    def train_step(self, X, y, loss, optimizer, sample_weight=None, threads=None):
        """One mini-batch step on all of (X, y): forward, backward, update. Returns the loss."""
        loss, opt = check_loss(loss), check_optimizer(optimizer)
        X = check_X(X, self.n_features, self.dtype)
        yi, yf, sw, pw = self._targets(y, loss, X.shape[0], sample_weight)
        n = X.shape[0]
        step_loss = np.empty(1)
        with blas_single_thread():
            done = self._run(X, yi, yf, sw, pw, loss, np.arange(n, dtype=np.intp), n, 1, opt,
                             np.array([opt.lr]), self.seed, self.epochs_trained, self.steps_trained,
                             resolve_threads(threads), step_loss)
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
            diagnostics=None, callbacks=None, checkpoint=None, checkpoint_every=1):
        """Train by mini-batch backpropagation; returns a ``History``.

        Args:
            X: ``(N, n_features)`` numeric array (converted to the model's dtype once).
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
                classification losses, drawn from ``seed``.
            validation_data: ``(X_val, y_val)`` or ``(X_val, y_val, sample_weight)``.
            sample_weight: per-example weights; the loss becomes sum w l / sum w.
            class_weight: ``"balanced"`` (n / (C n_c)) or ``{class: weight}``; multiplies
                ``sample_weight``.
            l2: β of the L2 penalty β‖W‖² over all weights (biases too with ``l2_bias``), fused
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
        """
        from .schedules import ReduceOnPlateau, Schedule

        loss = check_loss(loss if loss is not None else self._need_loss())
        opt = optimizer if optimizer is not None else (self.optimizer or Adam(lr=1e-3))
        opt = check_optimizer(opt)
        epochs = _pos_int(epochs, "epochs", 0)
        batch_size = _pos_int(batch_size, "batch_size", 1)
        if verbose not in (0, 1, 2, True, False):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        seed = self.seed if seed is None else check_seed(seed)
        n_threads = resolve_threads(threads)
        l2 = _nonneg(l2, "l2")
        clip_norm = _nonneg(clip_norm, "clip_norm", positive=True) if clip_norm is not None else 0.0
        clip_value = _nonneg(clip_value, "clip_value", positive=True) if clip_value is not None else 0.0
        if schedule is not None and not isinstance(schedule, (Schedule, ReduceOnPlateau)):
            raise TypeError(f"schedule must be a fn.schedules schedule, got {schedule!r}")
        X = check_X(X, self.n_features, self.dtype)
        yi, yf, sw, pw = self._targets(y, loss, X.shape[0], sample_weight)
        labels = yi if yi.size else (yf.argmax(axis=1) if yf.shape[1] > 1 else
                                      (yf[:, 0] > 0.5).astype(np.int64) if loss.classification else None)
        if class_weight is not None:
            if labels is None or (yf.size and yf.shape[1] > 1 and not yi.size):
                raise ValueError("class_weight needs class labels (CrossEntropy/NLLLoss with integer labels, "
                                 "or BinaryCrossEntropy with one output)")
            cw = class_weights(class_weight, labels, max(self.n_outputs, 2)).astype(self.dtype)[labels]
            sw = cw if sw.size == 0 else np.ascontiguousarray(sw * cw)
        if sw.size and not np.any(sw > 0):
            raise ValueError("all example weights are zero; nothing to learn from")
        val = None
        if validation_data is not None and validation_split:
            raise ValueError("pass validation_data or validation_split, not both")
        if validation_split:
            vs = float(validation_split)
            if not 0.0 < vs < 1.0:
                raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
            tr, va = split_indices(labels if loss.classification else None, X.shape[0], vs, seed)
            if tr.size == 0 or va.size == 0:
                raise ValueError(f"validation_split={vs} leaves no training or no validation examples")
            val = (X[va], yi[va] if yi.size else yf[va], sw[va] if sw.size else None)
            X = np.ascontiguousarray(X[tr])
            yi = yi[tr] if yi.size else yi
            yf = np.ascontiguousarray(yf[tr]) if yf.size else yf
            sw = np.ascontiguousarray(sw[tr]) if sw.size else sw
            labels = labels[tr] if labels is not None else None
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight)")
            Xv = check_X(validation_data[0], self.n_features, self.dtype, name="validation_data X")
            val = (Xv, validation_data[1], validation_data[2] if len(validation_data) == 3 else None)
            self._targets(val[1], loss, Xv.shape[0], val[2])   # fail now, not after an epoch
        if (labels is not None and class_weight is None and sample_weight is None
                and getattr(loss, "weight", None) is None and getattr(loss, "pos_weight", None) is None):
            counts = np.bincount(labels)
            counts = counts[counts > 0]
            if counts.size > 1 and counts.min() < counts.max() / 10:
                warnings.warn(f"class imbalance {counts.min()}:{counts.max()} is below 1:10 and no weighting "
                              "is used; consider class_weight='balanced' or fn.data.subsample",
                              stacklevel=2)
        n = X.shape[0]
        callbacks = list(callbacks or [])
        if checkpoint is not None:
            from .io import Checkpoint

            callbacks.append(Checkpoint(checkpoint, every=_pos_int(checkpoint_every, "checkpoint_every")))
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fn.Callback objects, got {cb!r}")
        history = History()
        history.params = {"epochs": epochs, "batch_size": batch_size, "n_samples": n,
                          "threads": n_threads, "seed": seed}
        cbs = [history] + callbacks
        for cb in cbs:
            cb.set_model(self)
        self.loss, self.optimizer = loss, opt
        self.stop_training = False
        bs = min(batch_size, n)
        n_steps = -(-n // bs)
        sizes = np.full(n_steps, bs, dtype=np.float64)
        sizes[-1] = n - bs * (n_steps - 1)
        track = labels is not None and (yi.size or yf.shape[1] > 1 or loss.classification)
        pred = np.zeros(n if track else 0, dtype=np.int64)
        opt.bind(self)
        run_kw = dict(l2=l2, l2_bias=bool(l2_bias), clip_value=clip_value, clip_norm=clip_norm,
                      pred=pred)
        diag = None
        if diagnostics is not None and diagnostics is not False:
            from .diagnostics import KEYS, Diagnostics

            diag = Diagnostics() if diagnostics is True else diagnostics
            if not isinstance(diag, Diagnostics):
                raise TypeError(f"diagnostics must be True or a fn.Diagnostics, got {diagnostics!r}")
            run_kw["diag"] = diag.allocate(self, bs, n_steps)
            history.diagnostics = {k: [] for k in KEYS}
            history.diagnostic_layers = list(diag.layer_names)
        for cb in cbs:
            cb.on_train_begin()
        try:
            with blas_single_thread():
                for _ in range(epochs):
                    t_start = time.perf_counter()
                    ep = self.epochs_trained
                    order = epoch_order(n, seed, ep, shuffle)
                    step_loss = np.empty(n_steps)
                    if isinstance(schedule, Schedule):
                        lrs = schedule.rates(opt.step_count, n_steps)
                    else:
                        lrs = np.full(n_steps, opt.lr)
                    if diag is not None:
                        diag.begin_epoch(self.steps_trained)
                    self._epoch(X, yi, yf, sw, pw, loss, order, bs, n_steps, opt, lrs, seed, ep,
                                n_threads, step_loss, verbose == 1, run_kw)
                    self.epochs_trained += 1
                    if diag is not None:
                        for k, v in diag.end_epoch(n_steps, n).items():
                            history.diagnostics[k].append(v)
                    logs = {"loss": float(np.dot(step_loss, sizes) / n)}
                    if track:
                        logs.update(classification_metrics(labels, pred, self.n_outputs))
                    if l2 > 0:
                        logs["l2_penalty"] = self.l2_penalty(l2, l2_bias)
                    if val is not None:
                        for k, v in self.evaluate(val[0], val[1], loss, val[2], n_threads).items():
                            logs["val_" + k] = v
                    logs["lr"] = float(lrs[-1])
                    if isinstance(schedule, ReduceOnPlateau):
                        key = schedule.monitor if schedule.monitor in logs else "loss"
                        schedule.step(logs[key], opt)
                    logs["time"] = time.perf_counter() - t_start
                    if verbose:
                        print(self._epoch_line(ep, epochs, logs), file=sys.stderr, flush=True)
                    for cb in cbs:
                        cb.on_epoch_end(ep, logs)
                    if self.stop_training:
                        break
        except KeyboardInterrupt:
            history.interrupted = True
            warnings.warn(f"training interrupted at epoch {self.epochs_trained + 1}; the History so far is "
                          "returned" + (" and the best weights restored" if any(
                              getattr(cb, "restore_best", False) for cb in cbs) else ""), stacklevel=2)
        finally:
            for cb in cbs:
                cb.on_train_end()
        history.best_epoch = self._best_epoch(history, callbacks)
        return history

    @staticmethod
    def _best_epoch(history, callbacks):
        for cb in callbacks:
            if getattr(cb, "best_epoch", None) is not None:
                return cb.best_epoch
        for key in ("val_loss", "loss"):
            vals = history.history.get(key)
            if vals:
                return history.epoch[int(np.nanargmin(vals))] if np.any(np.isfinite(vals)) else None
        return None

    def l2_penalty(self, l2, bias=False):
        """β‖W‖² over the weights (and biases with ``bias``), in float64."""
        tot = 0.0
        for k, (_, d, _, _) in enumerate(self._stages):
            tot += float(np.sum(np.square(d.weight, dtype=np.float64)))
            if bias and d.bias is not None:
                tot += float(np.sum(np.square(d.bias, dtype=np.float64)))
        return l2 * tot

    def _epoch(self, X, yi, yf, sw, pw, loss, order, bs, n_steps, opt, lrs, seed, ep, n_threads,
               step_loss, bar, run_kw):
        # One core call per epoch; with a progress bar, one per ~2% of the epoch. The split does not
        # change the result: every step is keyed by its global (epoch, step) counters.
        seg = max(1, -(-n_steps // 50)) if bar else n_steps
        pbar = None
        if bar:
            from tqdm.auto import tqdm

            pbar = tqdm(total=n_steps, desc=f"epoch {ep + 1}", unit="step", leave=False,
                        file=sys.stderr, dynamic_ncols=True)
        try:
            for s0 in range(0, n_steps, seg):
                k = min(seg, n_steps - s0)
                done = self._run(X, yi, yf, sw, pw, loss, order[s0 * bs:], bs, k, opt, lrs[s0:s0 + k],
                                 seed, ep, self.steps_trained, n_threads, step_loss[s0:s0 + k], **run_kw)
                opt.step_count += done
                self.steps_trained += done
                if done < k:
                    v = step_loss[s0 + done]
                    raise TrainingDiverged(
                        f"training loss became {v} at epoch {ep + 1}, step {s0 + done + 1}; training "
                        f"stopped and the weights from before that step were kept. Lower the learning "
                        f"rate (now {lrs[s0 + done]:g}), clip gradients (clip_norm=1.0), or check the "
                        "data and targets.", ep, s0 + done, v)
                if pbar is not None:
                    pbar.update(k)
                    pbar.set_postfix(loss=f"{np.mean(step_loss[:s0 + k]):.4f}")
        finally:
            if pbar is not None:
                pbar.close()

    @staticmethod
    def _epoch_line(ep, epochs, logs):
        parts = [f"epoch {ep + 1}/{epochs}"]
        for k, v in logs.items():
            if k == "time":
                continue
            parts.append(f"{k} {v:.3g}" if k == "lr" else f"{k} {v:.4f}")
        parts.append(f"{logs['time']:.2f}s")
        return " - ".join(parts)

    # ------------------------------------------------------------ persistence and interop
    def save(self, path, include_optimizer=False):
        """Write the model to ``path`` in the safetensors format (see ``fastnn.io``)."""
        from .io import save_model

        return save_model(self, path, include_optimizer=include_optimizer)

    def to_torch(self):
        """The equivalent ``torch.nn.Sequential``, with these weights (needs torch)."""
        from .io import to_torch

        return to_torch(self)

    # ------------------------------------------------------------ pickling (joblib, sklearn clone)
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_work_buf"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        # the layers' views were pickled as separate arrays, and a memory-mapped load is read-only:
        # own writable buffers and point the views back into them
        self._params = np.array(self._params)
        self._grads = np.array(self._grads)
        self._bind_views()

    # ------------------------------------------------------------ misc
    def __repr__(self):
        lines = [f"Sequential(dtype={self.dtype.name}, params={self.n_params}"]
        lines[0] += ")" if not self.layers else ","
        for i, layer in enumerate(self.layers):
            lines.append(f"  ({i}): {layer!r}")
        if self.layers:
            lines.append(")")
        return "\n".join(lines)
