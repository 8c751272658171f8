"""``fit``: prepare the data once, then the epoch loop, one core call per epoch.

``prepare`` checks and converts everything a fit needs (X, targets, weights, sequence lengths, the
validation split, class weights, drop_last) into a ``FitData``, with the checks of ``fastnn.data``.
``Fit.run`` is then the loop, in llm.c's manner: ``start``, and per epoch ``epoch`` (the order and
the learning rates of its steps, ``steps``, the training logs, ``validate``) and ``end_epoch`` (the
callbacks), each a short named function. ``steps`` hands runs of steps to ``step``, one call into
the compiled core per epoch (or per ~2% of the epoch with a progress bar).

A distributed fit (``comm=``, fastnn/distributed.py) is this same loop with another ``step``: each
rank's share of one batch, an Allreduce of the gradients, then the update.

Of the model this uses the package-internal interface that fastnn/model.py documents (``plan``,
``build_for``, ``run_steps``, ``l2_spans``, ...) and nothing private; training.py never imports model.py.
"""
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._config import blas_single_thread, resolve_threads
from .callbacks import Callback, History
from .data import class_weights, epoch_order, split_indices
from .data.validation import (Targets, check_data, check_input, check_int, check_lengths, check_number,
                              check_precision, check_seed, check_targets, loss_steps, resolve_loss)
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

    @property
    def targets(self):
        return Targets(self.yi, self.yf, self.sw, self.pw)


def prepare(model, X, y, loss, batch_size, seed, validation_split, validation_data, sample_weight,
            class_weight, drop_last, lengths=None, validation_lengths=None):
    """Check and convert the data of a fit; nothing is trained."""
    X = model.build_for(X)
    plan, dtype = model.plan, model.dtype
    X, (yi, yf, sw, pw), lengths = check_data(X, y, loss, plan, dtype, sample_weight, lengths)
    loss_steps(loss, yi, lengths, plan)      # a per-step loss with lengths needs outputs (T, C)
    labels = yi if yi.size else (yf.argmax(axis=1) if yf.shape[1] > 1 else
                                  (yf[:, 0] > 0.5).astype(np.int64) if loss.classification else None)
    if yi.ndim == 2:                # per-step labels: no per-example class to stratify or track
        labels = None
    if class_weight is not None and yi.ndim == 2:
        # every step weighted by its class; "balanced" counts the steps that carry a loss
        real = yi if lengths is None else yi[np.arange(yi.shape[1])[None, :] < lengths[:, None]]
        cw = class_weights(class_weight, real.reshape(-1), plan.out_shape[-1]).astype(dtype)[yi]
        sw = cw if sw.size == 0 else np.ascontiguousarray((sw if sw.ndim == 2 else sw[:, None]) * cw)
    elif class_weight is not None:
        if labels is None or (yf.size and yf.shape[1] > 1 and not yi.size):
            raise ValueError("class_weight needs class labels (CrossEntropy/NLLLoss with integer labels, "
                             "or BinaryCrossEntropy with one output)")
        cw = class_weights(class_weight, labels, max(plan.n_outputs, 2)).astype(dtype)[labels]
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
        Xv = check_input(validation_data[0], plan, dtype, name="validation_data X")
        if lengths is not None and validation_lengths is None:
            raise ValueError("fit(lengths=) with validation_data needs validation_lengths=, the lengths of the "
                             f"{Xv.shape[0]} validation sequences (np.full({Xv.shape[0]}, T) if all are "
                             "full length)")
        try:
            lv = check_lengths(validation_lengths, Xv.shape[0], plan)
        except (TypeError, ValueError) as e:
            raise type(e)(f"validation_lengths: {e}") from None
        val = (Xv, validation_data[1], validation_data[2] if len(validation_data) == 3 else None, lv)
        check_targets(val[1], loss, Xv.shape[0], plan, dtype, val[2])   # fail now, not after an epoch
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
    if plan.has_bn and int(sizes.min()) < 2:
        raise ValueError(f"BatchNorm needs at least 2 examples per training batch, but batch_size="
                         f"{batch_size} leaves a last batch of 1 of the {n} training examples; pass "
                         "drop_last=True (skip the incomplete last batch of each epoch) or a batch_size "
                         "that does not leave 1 over" if n > 1 else
                         "BatchNorm needs at least 2 examples per training batch; got 1 example")
    return FitData(X, yi, yf, sw, pw, labels, val, bs, n_steps, sizes, lengths)


class Fit:
    """One call of ``Sequential.fit``: the prepared data, the options, and the epoch loop.

    A subclass changes how the loop runs, not the loop: ``step`` (a run of steps), ``validate``,
    ``everywhere`` (how callbacks run) and ``stop_requested``, as ``DistributedFit`` does.
    """

    #: Ctrl-C ends the fit and returns the History so far (False: it propagates)
    interruptible = True
    #: the most steps ``steps`` hands to one ``step`` (None: a whole epoch)
    max_steps_per_call = None

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

            callbacks.append(Checkpoint(checkpoint, every=check_int(checkpoint_every, "checkpoint_every")))
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

    # ------------------------------------------------------------ the loop
    def run(self):
        """Start, then per epoch: steps, validation, callbacks. Returns the History."""
        m, h = self.model, self.history
        cbs = self.start()
        try:
            with blas_single_thread():
                for _ in range(self.epochs):
                    logs = self.epoch()
                    if self.end_epoch(cbs, logs):
                        break
        except KeyboardInterrupt:
            if not self.interruptible:
                raise
            h.interrupted = True
            warnings.warn(f"training interrupted at epoch {m.epochs_trained + 1}; the History so far is "
                          "returned" + (" and the best weights restored" if any(
                              getattr(cb, "restore_best", False) for cb in cbs) else ""), stacklevel=3)
        finally:
            for cb in cbs:
                cb.on_train_end()
        h.best_epoch = self.best_epoch()
        return h

    def start(self):
        """Bind the model to this fit's loss and optimizer and start the callbacks; returns them,
        the History first."""
        m = self.model
        cbs = [self.history] + self.callbacks
        for cb in cbs:
            cb.set_model(m)
        m.loss, m.optimizer = self.loss, self.opt
        m.stop_training = False
        self.opt.bind(m)
        self.everywhere(lambda: [cb.on_train_begin() for cb in cbs], "starting the callbacks")
        return cbs

    def epoch(self):
        """One epoch: its steps, the training logs, validation; returns the logs."""
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
        self.steps(order, lrs, ep, step_loss)
        m.epochs_trained += 1
        seen = int(d.sizes.sum())
        if self.diag is not None:
            for k, v in self.diag.end_epoch(d.n_steps, seen).items():
                self.history.diagnostics[k].append(v)
        logs = self.train_logs(order[:seen], step_loss, seen)
        if d.val is not None:
            for k, v in self.validate().items():
                logs["val_" + k] = v
        logs["lr"] = float(lrs[-1])
        if self.plateau is not None:
            key = self.plateau.monitor if self.plateau.monitor in logs else "loss"
            self.plateau.step(logs[key], opt)
        logs["time"] = time.perf_counter() - t_start
        if self.verbose:
            print(_epoch_line(ep, self.epochs, logs), file=sys.stderr, flush=True)
        return logs

    def end_epoch(self, cbs, logs):
        """The callbacks of the epoch just run; True when training should stop."""
        ep = self.model.epochs_trained - 1
        self.everywhere(lambda: [cb.on_epoch_end(ep, logs) for cb in cbs],
                        f"running the callbacks of epoch {ep + 1}")
        return self.stop_requested(ep)

    def everywhere(self, fn, what):
        """Run ``fn``, a part of the loop that ``what`` describes (a distributed fit runs it on
        every rank and fails on all when one fails)."""
        fn()

    def stop_requested(self, ep):
        """Whether a callback stopped training after epoch ``ep``."""
        return self.model.stop_training

    # ------------------------------------------------------------ the parts
    def steps(self, order, lrs, ep, step_loss):
        """The epoch's steps, handed to ``step`` in runs: the whole epoch, or ~2% of it with a
        progress bar. The split does not change the result: every step is keyed by its global
        (epoch, step) counters."""
        m, opt, n_steps = self.model, self.opt, self.data.n_steps
        seg = min(n_steps, self.max_steps_per_call or n_steps)
        pbar = None
        if self.verbose == 1:
            from tqdm.auto import tqdm

            seg = min(seg, max(1, -(-n_steps // 50)))
            pbar = tqdm(total=n_steps, desc=f"epoch {ep + 1}", unit="step", leave=False,
                        file=sys.stderr, dynamic_ncols=True)
        try:
            for s0 in range(0, n_steps, seg):
                k = min(seg, n_steps - s0)
                done = self.step(order, lrs, ep, s0, k, step_loss)
                opt.step_count += done
                m.steps_trained += done
                if done < k:
                    raise _diverged(ep, s0 + done, step_loss, lrs)
                if pbar is not None:
                    pbar.update(k)
                    pbar.set_postfix(loss=f"{np.mean(step_loss[:s0 + k]):.4f}")
        finally:
            if pbar is not None:
                pbar.close()

    def step(self, order, lrs, ep, s0, k, step_loss):
        """Steps s0 .. s0 + k - 1 of the epoch in one call into the core; returns the steps done
        (fewer when a loss is not finite: that step's update is skipped)."""
        m, d, bs = self.model, self.data, self.data.batch_size
        return m.run_steps(d.X, d.targets, self.loss, order[s0 * bs:(s0 + k) * bs], bs, k, self.opt,
                           lrs[s0:s0 + k], self.seed, ep, m.steps_trained, self.n_threads,
                           step_loss[s0:s0 + k], **self.run_kw)

    def train_logs(self, idx, step_loss, seen):
        """The epoch's training loss (mean over the ``seen`` examples ``idx``), metrics and L2
        penalty."""
        d = self.data
        logs = {"loss": float(np.dot(step_loss, d.sizes) / seen)}
        if self.track:
            logs.update(self.train_metrics(idx))
        if self.l2 > 0:
            logs["l2_penalty"] = self.model.l2_penalty(self.l2, self.l2_bias)
        return logs

    def train_metrics(self, idx):
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
            return classification_metrics(truth.reshape(-1), pred.reshape(-1), self.model.plan.out_shape[-1])
        return classification_metrics(d.labels[idx], self.pred[idx], self.model.n_outputs)

    def validate(self):
        """``evaluate`` on the validation data."""
        d = self.data
        return self.model.evaluate(d.val[0], d.val[1], self.loss, d.val[2], self.n_threads, lengths=d.val[3],
                                   precision=self.precision)

    def best_epoch(self):
        for cb in self.callbacks:
            if getattr(cb, "best_epoch", None) is not None:
                return cb.best_epoch
        h = self.history
        for key in ("val_loss", "loss"):
            vals = h.history.get(key)
            if vals:
                return h.epoch[int(np.nanargmin(vals))] if np.any(np.isfinite(vals)) else None
        return None


def _diverged(ep, s, step_loss, lrs):
    v = step_loss[s]
    return TrainingDiverged(
        f"training loss became {v} at epoch {ep + 1}, step {s + 1}; training stopped and the weights from "
        f"before that step were kept. Lower the learning rate (now {lrs[s]:g}), clip gradients "
        "(clip_norm=1.0), or check the data and targets.", ep, s, v)


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
    from .schedules import ReduceOnPlateau, Schedule

    loss = resolve_loss(loss, model.loss)
    precision = check_precision(precision, model.dtype)
    opt = optimizer if optimizer is not None else (model.optimizer or Adam(lr=1e-3))
    opt = check_optimizer(opt)
    epochs = check_int(epochs, "epochs", 0)
    batch_size = check_int(batch_size, "batch_size", 1)
    if verbose not in (0, 1, 2, True, False):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    seed = model.seed if seed is None else check_seed(seed)
    n_threads = resolve_threads(threads)
    l2 = check_number(l2, "l2")
    clip_norm = check_number(clip_norm, "clip_norm", positive=True) if clip_norm is not None else 0.0
    clip_value = check_number(clip_value, "clip_value", positive=True) if clip_value is not None else 0.0
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
