"""``fit``: prepare the data once, then run epochs (one core call each) and callbacks.

``prepare`` checks and converts everything a fit needs (targets, weights, sequence lengths, the
validation split, class weights, drop_last) into a ``FitData``; ``Fit`` then runs the epochs: per epoch the
order, the learning rates of its steps, one call into the compiled core (or one per ~2% of the
epoch with a progress bar), the metrics, validation and the callbacks. A distributed fit
(``comm=``, fastnn/distributed.py) makes one core call per step instead: every step ends in an
Allreduce.
"""
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._config import blas_single_thread, resolve_threads
from .callbacks import Callback, History
from .data import check_seed, class_weights, epoch_order, split_indices
from .losses import check_loss
from .metrics import classification_metrics
from .optim import Adam, check_optimizer


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or Inf; the weights from before that step are kept."""

    def __init__(self, msg, epoch, step, value):
        super().__init__(msg)
        self.epoch, self.step, self.value = epoch, step, value


@dataclass
class FitData:
    """The training data of one fit, converted once."""
    X: np.ndarray
    yi: np.ndarray
    yf: np.ndarray
    sw: np.ndarray
    pw: np.ndarray
    labels: object            # class labels (metrics, class weights), or None
    val: object               # (X_val, y_val, sample_weight, lengths) or None
    batch_size: int
    n_steps: int
    sizes: np.ndarray = field(repr=False)
    lengths: object = None    # sequence lengths of the training examples, or None

    @property
    def n(self):
        return self.X.shape[0]


def _pos_int(v, name, minimum=1):
    from .model import _pos_int as p

    return p(v, name, minimum)


def prepare(model, X, y, loss, batch_size, seed, validation_split, validation_data, sample_weight,
            class_weight, drop_last, lengths=None, validation_lengths=None):
    """Check and convert the data of a fit; nothing is trained."""
    X = model._check_X(X)
    yi, yf, sw, pw = model._targets(y, loss, X.shape[0], sample_weight)
    lengths = model._check_lengths(lengths, X.shape[0])
    model._loss_steps(loss, yi, lengths)     # a per-step loss with lengths needs outputs (T, C)
    labels = yi if yi.size else (yf.argmax(axis=1) if yf.shape[1] > 1 else
                                  (yf[:, 0] > 0.5).astype(np.int64) if loss.classification else None)
    if yi.ndim == 2:                # per-step labels: no per-example class to stratify or track
        labels = None
    if class_weight is not None and yi.ndim == 2:
        # every step weighted by its class; "balanced" counts the steps that carry a loss
        real = yi if lengths is None else yi[np.arange(yi.shape[1])[None, :] < lengths[:, None]]
        cw = class_weights(class_weight, real.reshape(-1), model._plan.out_shape[-1]).astype(model.dtype)[yi]
        sw = cw if sw.size == 0 else np.ascontiguousarray((sw if sw.ndim == 2 else sw[:, None]) * cw)
    elif class_weight is not None:
        if labels is None or (yf.size and yf.shape[1] > 1 and not yi.size):
            raise ValueError("class_weight needs class labels (CrossEntropy/NLLLoss with integer labels, "
                             "or BinaryCrossEntropy with one output)")
        cw = class_weights(class_weight, labels, max(model.n_outputs, 2)).astype(model.dtype)[labels]
        sw = cw if sw.size == 0 else np.ascontiguousarray(sw * cw)
    if sw.size and not np.any(sw > 0):
        raise ValueError("all example weights are zero; nothing to learn from")
    val = None
    if validation_data is not None and validation_split:
        raise ValueError("pass validation_data or validation_split, not both")
    if validation_lengths is not None and validation_data is None:
        raise ValueError("validation_lengths= gives the lengths of validation_data's sequences; pass "
                         "validation_data=(X_val, y_val) with it" + (" (validation_split splits lengths= "
                                                                      "itself)" if validation_split else ""))
    if validation_split:
        vs = float(validation_split)
        if not 0.0 < vs < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
        tr, va = split_indices(labels if loss.classification else None, X.shape[0], vs, seed)
        if tr.size == 0 or va.size == 0:
            raise ValueError(f"validation_split={vs} leaves no training or no validation examples")
        val = (X[va], yi[va] if yi.size else yf[va], sw[va] if sw.size else None,
               lengths[va] if lengths is not None else None)
        X = np.ascontiguousarray(X[tr])
        yi = yi[tr] if yi.size else yi
        yf = np.ascontiguousarray(yf[tr]) if yf.size else yf
        sw = np.ascontiguousarray(sw[tr]) if sw.size else sw
        labels = labels[tr] if labels is not None else None
        lengths = lengths[tr] if lengths is not None else None
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be (X_val, y_val) or (X_val, y_val, sample_weight); "
                             "sequence lengths go to validation_lengths=")
        Xv = model._check_X(validation_data[0], name="validation_data X")
        if lengths is not None and validation_lengths is None:
            raise ValueError("fit(lengths=) with validation_data needs validation_lengths=, the lengths of the "
                             f"{Xv.shape[0]} validation sequences (np.full({Xv.shape[0]}, T) if all are "
                             "full length)")
        try:
            lv = model._check_lengths(validation_lengths, Xv.shape[0])
        except (TypeError, ValueError) as e:
            raise type(e)(f"validation_lengths: {e}") from None
        val = (Xv, validation_data[1], validation_data[2] if len(validation_data) == 3 else None, lv)
        model._targets(val[1], loss, Xv.shape[0], val[2])   # fail now, not after an epoch
    if (labels is not None and class_weight is None and sample_weight is None
            and getattr(loss, "weight", None) is None and getattr(loss, "pos_weight", None) is None):
        counts = np.bincount(labels)
        counts = counts[counts > 0]
        if counts.size > 1 and counts.min() < counts.max() / 10:
            warnings.warn(f"class imbalance {counts.min()}:{counts.max()} is below 1:10 and no weighting "
                          "is used; consider class_weight='balanced' or fn.data.subsample",
                          stacklevel=3)
    n = X.shape[0]
    bs = batch_size if drop_last else min(batch_size, n)
    if drop_last:
        n_steps = n // bs
        if n_steps == 0:
            raise ValueError(f"drop_last=True with batch_size={batch_size} leaves no full batch of the "
                             f"{n} training examples")
        sizes = np.full(n_steps, bs, dtype=np.float64)
    else:
        n_steps = -(-n // bs)
        sizes = np.full(n_steps, bs, dtype=np.float64)
        sizes[-1] = n - bs * (n_steps - 1)
    if model._plan.has_bn and int(sizes.min()) < 2:
        raise ValueError(f"BatchNorm needs at least 2 examples per training batch, but batch_size="
                         f"{batch_size} leaves a last batch of 1 of the {n} training examples; pass "
                         "drop_last=True (skip the incomplete last batch of each epoch) or a batch_size "
                         "that does not leave 1 over" if n > 1 else
                         "BatchNorm needs at least 2 examples per training batch; got 1 example")
    return FitData(X, yi, yf, sw, pw, labels, val, bs, n_steps, sizes, lengths)


class Fit:
    """One call of ``Sequential.fit``: the prepared data, the options, and the epoch loop."""

    def __init__(self, model, loss, opt, data, epochs, shuffle, seed, n_threads, verbose, l2, l2_bias,
                 schedule, clip_norm, clip_value, diagnostics, callbacks, checkpoint, checkpoint_every):
        from .schedules import ReduceOnPlateau, Schedule

        self.model, self.loss, self.opt, self.data = model, loss, opt, data
        self.epochs, self.shuffle, self.seed, self.n_threads = epochs, shuffle, seed, n_threads
        self.verbose, self.l2, self.l2_bias, self.schedule = verbose, l2, l2_bias, schedule
        self.step_schedule = schedule if isinstance(schedule, Schedule) else None
        self.plateau = schedule if isinstance(schedule, ReduceOnPlateau) else None
        callbacks = list(callbacks or [])
        if checkpoint is not None:
            from .io import Checkpoint

            callbacks.append(Checkpoint(checkpoint, every=_pos_int(checkpoint_every, "checkpoint_every")))
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be fn.Callback objects, got {cb!r}")
        self.callbacks = callbacks
        self.history = History()
        self.history.params = {"epochs": epochs, "batch_size": data.batch_size, "n_samples": data.n,
                               "threads": n_threads, "seed": seed}
        self.track = data.yi.ndim == 2 or (data.labels is not None and (
            data.yi.size or data.yf.shape[1] > 1 or loss.classification))
        # per-step labels: a prediction per (step, example), step-major as the labels go to the core
        self.pred = np.zeros(data.yi.size if data.yi.ndim == 2 else data.n if self.track else 0, dtype=np.int64)
        self.run_kw = dict(l2=l2, l2_bias=bool(l2_bias), clip_value=clip_value, clip_norm=clip_norm,
                           pred=self.pred)
        self.precision = None         # "bf16-mixed": the core's products (set by make_fit)
        if data.lengths is not None:
            self.run_kw["lengths"] = data.lengths
        self.diag = None
        if diagnostics is not None and diagnostics is not False:
            from .diagnostics import KEYS, Diagnostics

            diag = Diagnostics() if diagnostics is True else diagnostics
            if not isinstance(diag, Diagnostics):
                raise TypeError(f"diagnostics must be True or a fn.Diagnostics, got {diagnostics!r}")
            self.run_kw["diag"] = diag.allocate(model, data.batch_size, data.n_steps)
            self.history.diagnostics = {k: [] for k in KEYS}
            self.history.diagnostic_layers = list(diag.layer_names)
            self.diag = diag

    def _bind(self):
        """Bind the model to this fit's loss and optimizer; returns History + callbacks, bound."""
        m = self.model
        cbs = [self.history] + self.callbacks
        for cb in cbs:
            cb.set_model(m)
        m.loss, m.optimizer = self.loss, self.opt
        m.stop_training = False
        self.opt.bind(m)
        return cbs

    def run(self):
        m, h = self.model, self.history
        cbs = self._bind()
        for cb in cbs:
            cb.on_train_begin()
        try:
            with blas_single_thread():
                for _ in range(self.epochs):
                    logs = self.epoch()
                    for cb in cbs:
                        cb.on_epoch_end(m.epochs_trained - 1, logs)
                    if m.stop_training:
                        break
        except KeyboardInterrupt:
            h.interrupted = True
            warnings.warn(f"training interrupted at epoch {m.epochs_trained + 1}; the History so far is "
                          "returned" + (" and the best weights restored" if any(
                              getattr(cb, "restore_best", False) for cb in cbs) else ""), stacklevel=3)
        finally:
            for cb in cbs:
                cb.on_train_end()
        h.best_epoch = self._best_epoch()
        return h

    def epoch(self):
        """One epoch; returns its logs."""
        m, d, opt = self.model, self.data, self.opt
        t_start = time.perf_counter()
        ep = m.epochs_trained
        order = epoch_order(d.n, self.seed, ep, self.shuffle)
        step_loss = np.empty(d.n_steps)
        if self.step_schedule is not None:
            lrs = self.step_schedule.rates(opt.step_count, d.n_steps)
        else:
            lrs = np.full(d.n_steps, opt.lr)
        if self.diag is not None:
            self.diag.begin_epoch(m.steps_trained)
        self._steps(order, lrs, ep, step_loss)
        m.epochs_trained += 1
        seen = int(d.sizes.sum())
        if self.diag is not None:
            for k, v in self.diag.end_epoch(d.n_steps, seen).items():
                self.history.diagnostics[k].append(v)
        logs = {"loss": float(np.dot(step_loss, d.sizes) / seen)}
        if self.track:
            logs.update(self._train_metrics(order[:seen]))
        if self.l2 > 0:
            logs["l2_penalty"] = m.l2_penalty(self.l2, self.l2_bias)
        if d.val is not None:
            for k, v in self._validate().items():
                logs["val_" + k] = v
        logs["lr"] = float(lrs[-1])
        if self.plateau is not None:
            key = self.plateau.monitor if self.plateau.monitor in logs else "loss"
            self.plateau.step(logs[key], opt)
        logs["time"] = time.perf_counter() - t_start
        if self.verbose:
            print(_epoch_line(ep, self.epochs, logs), file=sys.stderr, flush=True)
        return logs

    def _train_metrics(self, idx):
        """Classification metrics of the predictions made while training on examples ``idx``;
        per-step labels count the steps within the examples' lengths."""
        d = self.data
        if d.yi.ndim == 2:
            T = d.yi.shape[1]
            pred = self.pred.reshape(T, d.n).T[idx]
            truth = d.yi[idx]
            if d.lengths is not None:
                real = np.arange(T)[None, :] < d.lengths[idx][:, None]
                pred, truth = pred[real], truth[real]
            return classification_metrics(truth.reshape(-1), pred.reshape(-1), self.model._plan.out_shape[-1])
        return classification_metrics(d.labels[idx], self.pred[idx], self.model.n_outputs)

    def _validate(self):
        """``evaluate`` on the validation data."""
        d = self.data
        return self.model.evaluate(d.val[0], d.val[1], self.loss, d.val[2], self.n_threads, lengths=d.val[3],
                                   precision=self.precision)

    def _steps(self, order, lrs, ep, step_loss):
        # One core call per epoch; with a progress bar, one per ~2% of the epoch. The split does not
        # change the result: every step is keyed by its global (epoch, step) counters.
        m, d, opt = self.model, self.data, self.opt
        n_steps, bs = d.n_steps, d.batch_size
        bar = self.verbose == 1
        seg = max(1, -(-n_steps // 50)) if bar else n_steps
        pbar = None
        if bar:
            from tqdm.auto import tqdm

            pbar = tqdm(total=n_steps, desc=f"epoch {ep + 1}", unit="step", leave=False,
                        file=sys.stderr, dynamic_ncols=True)
        try:
            for s0 in range(0, n_steps, seg):
                k = min(seg, n_steps - s0)
                done = m._run(d.X, d.yi, d.yf, d.sw, d.pw, self.loss, order[s0 * bs:(s0 + k) * bs], bs, k,
                              opt, lrs[s0:s0 + k], self.seed, ep, m.steps_trained, self.n_threads,
                              step_loss[s0:s0 + k], **self.run_kw)
                opt.step_count += done
                m.steps_trained += done
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

    def _best_epoch(self):
        for cb in self.callbacks:
            if getattr(cb, "best_epoch", None) is not None:
                return cb.best_epoch
        h = self.history
        for key in ("val_loss", "loss"):
            vals = h.history.get(key)
            if vals:
                return h.epoch[int(np.nanargmin(vals))] if np.any(np.isfinite(vals)) else None
        return None


def _epoch_line(ep, epochs, logs):
    parts = [f"epoch {ep + 1}/{epochs}"]
    for k, v in logs.items():
        if k == "time":
            continue
        parts.append(f"{k} {v:.3g}" if k == "lr" else f"{k} {v:.4f}")
    parts.append(f"{logs['time']:.2f}s")
    return " - ".join(parts)


def fit(model, X, y, comm=None, **kw):
    """See ``Sequential.fit``."""
    if comm is not None:
        from .distributed import fit_distributed

        return fit_distributed(comm, model, X, y, **kw)
    return make_fit(model, X, y, **kw).run()


def make_fit(model, X, y, loss=None, optimizer=None, epochs=1, batch_size=32, shuffle=True, seed=None,
             threads=None, verbose=0, validation_split=0.0, validation_data=None, sample_weight=None,
             class_weight=None, l2=0.0, l2_bias=False, schedule=None, clip_norm=None, clip_value=None,
             diagnostics=None, callbacks=None, checkpoint=None, checkpoint_every=1, drop_last=False,
             lengths=None, validation_lengths=None, precision=None, fit_class=Fit, **fit_kw):
    """Check the arguments and prepare the data of a fit; returns the ``Fit`` to run."""
    from .model import _nonneg
    from .schedules import ReduceOnPlateau, Schedule

    loss = check_loss(loss if loss is not None else model._need_loss())
    precision = model._check_precision(precision)
    opt = optimizer if optimizer is not None else (model.optimizer or Adam(lr=1e-3))
    opt = check_optimizer(opt)
    epochs = _pos_int(epochs, "epochs", 0)
    batch_size = _pos_int(batch_size, "batch_size", 1)
    if verbose not in (0, 1, 2, True, False):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    seed = model.seed if seed is None else check_seed(seed)
    n_threads = resolve_threads(threads)
    l2 = _nonneg(l2, "l2")
    clip_norm = _nonneg(clip_norm, "clip_norm", positive=True) if clip_norm is not None else 0.0
    clip_value = _nonneg(clip_value, "clip_value", positive=True) if clip_value is not None else 0.0
    if schedule is not None and not isinstance(schedule, (Schedule, ReduceOnPlateau)):
        raise TypeError(f"schedule must be a fn.schedules schedule, got {schedule!r}")
    data = prepare(model, X, y, loss, batch_size, seed, validation_split, validation_data, sample_weight,
                   class_weight, bool(drop_last), lengths, validation_lengths)
    fit = fit_class(model, loss, opt, data, epochs, shuffle, seed, n_threads, int(verbose), l2, l2_bias,
                    schedule, clip_norm, clip_value, diagnostics, callbacks, checkpoint, checkpoint_every, **fit_kw)
    fit.precision = precision
    if precision is not None:
        fit.run_kw["precision"] = precision
    return fit
