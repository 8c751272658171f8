"""Training diagnostics, measured inside the compiled step: the effects that make training fail
(saturated and dead units, vanishing and exploding gradients) as numbers, warnings and pictures.

Per layer (each Dense with its activation) and epoch:

- ``grad_mean_abs``: mean |∂L/∂w| over the layer's parameters and the epoch's steps — the
  "speed of learning" of the layer;
- ``grad_norm``: the layer's gradient L2 norm, root-mean-square over the epoch's steps;
- ``update_ratio``: ‖ΔW‖ / ‖W‖ of each step's update, root-mean-square over the steps
  (these over every k-th step, about ``gradient_samples`` per epoch);
- ``saturated``: fraction of sigmoid/tanh outputs whose pre-activation has |z| > threshold
  (NaN for other activations);
- ``dead``: fraction of ReLU/LeakyReLU units with no positive pre-activation on any example
  of the epoch (NaN for other activations);
- ``act_mean``, ``act_std``: mean and standard deviation of the layer's activations
  (saturation and activation statistics over the sampled steps too; the dead-unit
  flags over every step, since a dead unit must be silent on every example).

Every accumulator belongs to a fixed work unit (a chunk of examples or a gradient tile) and
is summed in a fixed order, so the numbers are the same on any thread count.
"""
import math
import warnings

import numpy as np

from . import _plan
from . import layers as L
from .callbacks import Callback
from .data.validation import check_input, resolve_loss

KEYS = ("grad_mean_abs", "grad_norm", "update_ratio", "saturated", "dead", "act_mean", "act_std")


class Diagnostics(Callback):
    """Measure per-layer statistics during ``fit`` and warn, once per cause, with advice.

    Args:
        saturation_threshold: |z| above which a sigmoid/tanh unit counts as saturated (at 2,
            σ'(z) is 0.10 against 0.25 at 0).
        vanishing_ratio: warn when the first layer learns this many times slower (mean |∂L/∂w|)
            than the last.
        exploding_factor: warn when a layer's gradient norm grows this many times over its
            first epoch's, or is not finite.
        saturated_warn: warn when a layer's fraction of saturated units exceeds this.
        dead_warn: warn when a layer's fraction of dead units exceeds this.
        gradient_samples: statistics are taken on about this many evenly spaced steps per
            epoch (every step of shorter epochs), which keeps their cost small; the dead-unit
            flags cover every step.
    """

    def __init__(self, saturation_threshold=2.0, vanishing_ratio=100.0, exploding_factor=100.0,
                 saturated_warn=0.5, dead_warn=0.5, gradient_samples=32):
        for name, v in (("saturation_threshold", saturation_threshold), ("vanishing_ratio", vanishing_ratio),
                        ("exploding_factor", exploding_factor)):
            if not (float(v) > 0 and math.isfinite(float(v))):
                raise ValueError(f"Diagnostics: {name} must be > 0, got {v}")
        for name, v in (("saturated_warn", saturated_warn), ("dead_warn", dead_warn)):
            if not 0 <= float(v) <= 1:
                raise ValueError(f"Diagnostics: {name} must be in [0, 1], got {v}")
        self.saturation_threshold = float(saturation_threshold)
        self.vanishing_ratio = float(vanishing_ratio)
        self.exploding_factor = float(exploding_factor)
        self.saturated_warn, self.dead_warn = float(saturated_warn), float(dead_warn)
        if int(gradient_samples) < 1:
            raise ValueError(f"Diagnostics: gradient_samples must be >= 1, got {gradient_samples}")
        self.gradient_samples = int(gradient_samples)
        self.buffers = None

    # ------------------------------------------------------------ called by fit
    def allocate(self, model, batch_size, n_steps=1):
        """Buffers for the compiled step; zeroed at every epoch by ``begin_epoch``."""
        plan = model.plan
        slots = plan.slots(batch_size)
        n_layers = len(plan.diag)
        self.n_units = int(plan.n_units)
        # the longest contiguous span a tile updates: a row of W, or a block of biases/features
        stride = int(max(max(max(op["n_in"], op["n_out"], op["g0"] // max(op["g12"], 1) * op["g4"] * op["g5"])
                             for op in plan.ops), plan.max_span))
        n_tiles = plan.tiles.shape[0]
        t = self.saturation_threshold
        self.buffers = {
            "act_acc": np.zeros(slots * n_layers * 3),
            "active": np.zeros(slots * self.n_units, dtype=np.uint8),
            "tile_acc": np.zeros(n_tiles * 4),
            "scratch": np.zeros(n_tiles * stride, dtype=model.dtype),
            "stride": stride, "n_units": self.n_units, "n_layers": n_layers, "slots": slots,
            "sat_sigmoid": 1.0 / (1.0 + math.exp(-t)), "sat_tanh": math.tanh(t),
            "every": max(1, int(n_steps) // self.gradient_samples),
        }
        self._slots, self._n_layers = slots, n_layers
        self._batch = int(batch_size)
        self._model = model
        self._first_norm = None
        self._warned = set()
        self.layer_names = [name for name, _, _, _ in plan.diag]
        return self.buffers

    def begin_epoch(self, first_step):
        for k in ("act_acc", "active", "tile_acc"):
            self.buffers[k].fill(0)
        self._first_step = int(first_step)

    def end_epoch(self, n_steps, n_examples):
        """Per-layer statistics of the finished epoch, as ``{key: [value per layer]}``."""
        m, b = self._model, self.buffers
        act = b["act_acc"].reshape(self._slots, self._n_layers, 3).sum(axis=0)
        active = b["active"].reshape(self._slots, self.n_units).max(axis=0)
        tiles = b["tile_acc"].reshape(-1, 4)
        every = b["every"]
        # the sampled steps are the global steps divisible by ``every``
        local = np.arange(n_steps)
        sampled = local[(self._first_step + local) % every == 0]
        sizes = np.full(n_steps, self._batch)
        sizes[-1] = n_examples - self._batch * (n_steps - 1)
        steps = max(1, sampled.size)
        sampled_examples = max(1, int(sizes[sampled].sum()))
        out = {k: [] for k in KEYS}
        unit0 = 0
        plan = m.plan
        for j, (name, k, n_par, n_units) in enumerate(plan.diag):
            t = tiles[plan.tiles[:, 0] == k].sum(axis=0)
            code = plan.ops[k]["act"]
            out["grad_mean_abs"].append(float(t[0] / (steps * n_par)))
            out["grad_norm"].append(float(math.sqrt(t[1] / steps)))
            out["update_ratio"].append(float(math.sqrt(t[2] / t[3])) if t[3] > 0 else math.nan)
            cells = sampled_examples * n_units
            mean = act[j, 0] / cells
            out["act_mean"].append(float(mean))
            out["act_std"].append(float(math.sqrt(max(act[j, 1] / cells - mean * mean, 0.0))))
            out["saturated"].append(float(act[j, 2] / cells) if code in (L.ACT_SIGMOID, L.ACT_TANH)
                                    else math.nan)
            units = active[unit0:unit0 + n_units]
            op = plan.ops[k]
            if op["kind"] == _plan.OP["conv"]:      # a convolution's unit is a channel (all positions)
                units = units.reshape(op["g3"], -1).max(axis=1)
            out["dead"].append(float(np.mean(units == 0)) if code in (L.ACT_RELU, L.ACT_LEAKY) else math.nan)
            unit0 += n_units
        self._advise(out)
        return out

    # ------------------------------------------------------------ advice
    def _warn(self, cause, msg):
        if cause not in self._warned:
            self._warned.add(cause)
            warnings.warn(msg, DiagnosticWarning, stacklevel=5)

    def _advise(self, s):
        norms = np.array(s["grad_norm"])
        if not np.all(np.isfinite(norms)):
            self._warn("exploding", "exploding gradients: a layer's gradient is not finite; clip gradients "
                                    "(fit(clip_norm=1.0)) or lower the learning rate")
        elif self._first_norm is None:
            self._first_norm = norms
        elif np.any(norms > self.exploding_factor * np.maximum(self._first_norm, 1e-30)):
            k = int(np.argmax(norms / np.maximum(self._first_norm, 1e-30)))
            self._warn("exploding", f"exploding gradients: layer {self.layer_names[k]}'s gradient norm grew "
                                    f"{norms[k] / self._first_norm[k]:.3g}x since the first epoch; clip "
                                    "gradients (fit(clip_norm=1.0)) or lower the learning rate")
        speed = s["grad_mean_abs"]
        if len(speed) > 1 and speed[-1] > 0 and speed[0] < speed[-1] / self.vanishing_ratio:
            self._warn("vanishing", f"vanishing gradients: layer {self.layer_names[0]} learns "
                                    f"{speed[-1] / max(speed[0], 1e-300):.3g}x slower than layer "
                                    f"{self.layer_names[-1]}; use ReLU with He initialisation, and "
                                    "cross-entropy rather than MSE for classification")
        for k, v in enumerate(s["saturated"]):
            if v == v and v > self.saturated_warn:
                self._warn(("saturated", k), f"{v:.0%} of layer {self.layer_names[k]}'s units are saturated "
                                             f"(|z| > {self.saturation_threshold:g}): they learn slowly; "
                                             "initialise smaller (init='xavier'), lower the learning rate, "
                                             "or use cross-entropy")
        for k, v in enumerate(s["dead"]):
            if v == v and v > self.dead_warn:
                self._warn(("dead", k), f"{v:.0%} of layer {self.layer_names[k]}'s ReLU units are dead (never "
                                        "positive this epoch); lower the learning rate, use He "
                                        "initialisation or LeakyReLU")


def gradient_norms_through_time(model, X, y, loss=None, sample_weight=None, threads=None, lengths=None):
    """The norm of the loss's gradient with respect to each recurrent layer's hidden state at every
    step, ``{layer name: array of T}``: entry t is ‖∂L/∂h_t‖ over the batch (the square root of
    the sum over examples of ‖∂L/∂h_t‖²), L the mean loss of (X, y) as one batch, as
    ``loss_and_grad`` computes it. A stacked layer's levels are named ``"name.l0"``, ``"name.l1"``...

    Vanishing gradients through time show as norms that fall by orders of magnitude from the
    last step back to the first; exploding gradients as norms that grow."""
    from ._core import _engine
    from ._plan import OP

    loss = resolve_loss(loss, model.loss)
    Xc = check_input(model.build_for(X), model.plan, model.dtype)
    model.loss_and_grad(Xc, y, loss, sample_weight=sample_weight, threads=threads, lengths=lengths)
    n, plan, work = Xc.shape[0], model.plan, model.work_buffer
    out = {}
    for name, k, _, _ in plan.diag:
        op = plan.ops[k]
        if op["kind"] != OP["rnn"]:
            continue
        T, H = op["steps"], op["hidden"]
        start = n * (op["s_col"] + _engine.rnn_block_offsets(op["cell"], T, op["n_in"] // T, H)["DS"])
        dh = work[start:start + n * T * H].reshape(n, T, H).astype(np.float64)
        out[name] = np.sqrt((dh * dh).sum(axis=(0, 2)))
    if not out:
        raise ValueError("the model has no recurrent layer (fn.RNN, fn.LSTM, fn.GRU)")
    return out


class DiagnosticWarning(UserWarning):
    """A training pathology seen by fastnn's diagnostics."""


def _plt(path):
    try:
        import matplotlib
        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fastnn-cpu[plot]'") from None
    return plt


def plot_history(history, path=None, metrics=None):
    """Loss and metrics per epoch, training against validation, the best epoch marked.
    Returns the matplotlib figure; ``path`` also saves it (PNG)."""
    plt = _plt(path)
    h = history.history
    if not h:
        raise ValueError("the History is empty: nothing was trained")
    keys = metrics or [k for k in ("loss", "accuracy", "balanced_accuracy", "f1_macro") if k in h]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    ep = np.array(history.epoch) + 1
    best = getattr(history, "best_epoch", None)
    for ax, k in zip(axes[0], keys):
        ax.plot(ep, h[k], label="training")
        if "val_" + k in h:
            ax.plot(ep, h["val_" + k], label="validation")
        if best is not None:
            ax.axvline(best + 1, color="k", ls="--", lw=0.8, label=f"best epoch ({best + 1})")
        ax.set_xlabel("epoch")
        ax.set_title(k)
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_diagnostics(history, path=None):
    """Per-layer learning speed (mean |∂L/∂w|, log scale), update ratio, and saturated and dead
    fractions over epochs. Needs a fit with ``diagnostics=True``. Returns the figure."""
    d = getattr(history, "diagnostics", None)
    if not d:
        raise ValueError("this History has no diagnostics: train with fit(..., diagnostics=True)")
    plt = _plt(path)
    names = history.diagnostic_layers
    ep = np.arange(1, len(d["grad_mean_abs"]) + 1)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    panels = [("grad_mean_abs", "learning speed: mean |dL/dw|", True),
              ("update_ratio", "update / weight ratio", True),
              ("saturated", "saturated fraction (|z| > threshold)", False),
              ("dead", "dead ReLU fraction", False)]
    for ax, (key, title, log) in zip(axes, panels):
        vals = np.array(d[key], dtype=float)
        for k, name in enumerate(names):
            if np.all(np.isnan(vals[:, k])):
                continue
            ax.plot(ep, vals[:, k], marker="o", ms=3, label=f"layer {name}")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
