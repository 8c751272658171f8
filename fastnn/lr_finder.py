"""Learning-rate search: rates a factor of 3 apart, and the exponential range test.

"If you have time to tune only one hyperparameter, tune the learning rate." Both
methods train briefly from the model's current weights, then restore them (and the
optimizer's state) exactly.
"""
import copy
import math

import numpy as np

from ._config import blas_single_thread, resolve_threads
from .data import rng_for
from .data.validation import Targets, check_seed, check_targets, check_X
from .losses import check_loss
from .optim import check_optimizer


class LRFinderResult:
    """``lr``: the recommended rate; ``table``: one dict per rate tried; ``method``."""

    def __init__(self, lr, table, method):
        self.lr, self.table, self.method = lr, table, method

    def plot(self, ax=None, path=None):
        """Loss against rate (log scale); returns the matplotlib figure."""
        try:
            import matplotlib
            if path is not None and ax is None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("plotting needs matplotlib: pip install 'fastnn-cpu[plot]'") from None
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 4))
        else:
            fig = ax.figure
        if self.method == "factor":
            for row in self.table:
                ax.plot(np.arange(len(row["losses"])), row["losses"], label=f"lr={row['lr']:.3g}")
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            ax.legend(fontsize=7)
        else:
            lrs = [r["lr"] for r in self.table]
            ax.plot(lrs, [r["smoothed_loss"] for r in self.table])
            ax.set_xscale("log")
            ax.set_xlabel("learning rate")
            ax.set_ylabel("smoothed loss")
        ax.axvline(self.lr, color="k", ls="--") if self.method == "range" else None
        ax.set_title(f"find_lr ({self.method}): suggested lr = {self.lr:.3g}")
        if path is not None:
            fig.savefig(path, dpi=100, bbox_inches="tight")
        return fig

    def __repr__(self):
        return f"LRFinderResult(lr={self.lr:.4g}, method={self.method!r}, tried={len(self.table)})"


def _steps_order(n, steps, batch_size, seed):
    """Example order for ``steps`` batches: successive keyed permutations."""
    reps = -(-steps * batch_size // n)
    return np.concatenate([rng_for(seed, 0xF1D, r).permutation(n) for r in range(reps)]).astype(np.intp)


def _train_steps(model, X, yi, yf, sw, pw, loss, opt, lrs, batch_size, order, seed, n_threads):
    step_loss = np.full(len(lrs), np.nan)
    done = model.run_steps(X, Targets(yi, yf, sw, pw), loss, order, batch_size, len(lrs), opt, lrs, seed, 0, 0,
                           n_threads, step_loss)
    return step_loss, done


def find_lr(model, X, y, loss, optimizer, lr0=0.01, factor=3.0, steps=50, batch_size=32, k=2,
            max_widen=4, method="factor", lr_min=1e-6, lr_max=10.0, seed=0, threads=None):
    """Recommend a learning rate for ``model`` with ``optimizer``'s rule.

    ``method="factor"`` (the default): from the same initial weights, train ``steps`` steps with
    each rate lr0 · factor^j, j = -k..k, and score how fast the loss falls (the relative drop
    from the initial loss to the mean of the last tenth of the steps; a run that reaches a
    non-finite loss scores -inf). While the best rate sits at
    an edge of the range, widen the range on that side (at most ``max_widen`` times). The
    recommendation is the best-scoring rate.

    ``method="range"`` (fastai / Lightning): one run whose rate grows exponentially from lr_min
    to lr_max over ``steps`` steps, stopped when the smoothed loss exceeds 4x its minimum; the
    suggestion is the rate of steepest descent of the smoothed loss against log(rate).

    The model's weights and counters and the optimizer's state are restored afterwards.
    Returns an ``LRFinderResult`` (``.lr``, ``.table``, ``.plot()``).
    """
    loss, optimizer = check_loss(loss), check_optimizer(optimizer)
    if method not in ("factor", "range"):
        raise ValueError(f"method must be 'factor' or 'range', got {method!r}")
    lr0, factor = float(lr0), float(factor)
    if not (lr0 > 0 and math.isfinite(lr0)):
        raise ValueError(f"lr0 must be > 0, got {lr0}")
    if not factor > 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    if int(steps) < 5:
        raise ValueError(f"steps must be >= 5, got {steps}")
    steps, batch_size, seed = int(steps), int(batch_size), check_seed(seed)
    X = check_X(X, model.n_features, model.dtype)
    yi, yf, sw, pw = check_targets(y, loss, X.shape[0], model.plan, model.dtype)
    n_threads = resolve_threads(threads)
    bs = min(batch_size, X.shape[0])
    order = _steps_order(X.shape[0], steps, bs, seed)
    params = model.flat_params
    saved = params.copy()
    counters = (model.epochs_trained, model.steps_trained)

    def trial(lrs):
        params[...] = saved
        opt = copy.deepcopy(optimizer)
        opt.reset()
        return _train_steps(model, X, yi, yf, sw, pw, loss, opt, lrs, bs, order, seed, n_threads)

    try:
        with blas_single_thread():
            if method == "range":
                return _range_test(trial, steps, float(lr_min), float(lr_max))
            results = {}

            def run(j):
                if j not in results:
                    lr = lr0 * factor ** j
                    losses, done = trial(np.full(steps, lr))
                    results[j] = _score(lr, losses, done, steps)
                return results[j]

            lo, hi = -int(k), int(k)
            for j in range(lo, hi + 1):
                run(j)
            for _ in range(int(max_widen)):
                best = max(results, key=lambda j: results[j]["score"])
                if best == lo:
                    lo -= 1
                    run(lo)
                elif best == hi:
                    hi += 1
                    run(hi)
                else:
                    break
            table = [results[j] for j in sorted(results)]
            best = max(table, key=lambda r: r["score"])
            return LRFinderResult(best["lr"], table, "factor")
    finally:
        params[...] = saved
        model.epochs_trained, model.steps_trained = counters


def _score(lr, losses, done, steps):
    """How far the loss fell: the initial loss (step 0 is measured before any update, so it is
    the same for every rate) against the mean of the last tenth of the steps, relative."""
    w = max(1, steps // 10)
    losses = losses.copy()
    start = float(losses[0])
    if done < steps or not np.all(np.isfinite(losses)):
        return {"lr": lr, "score": -math.inf, "start_loss": start, "end_loss": math.nan,
                "diverged": True, "losses": losses}
    end = float(np.mean(losses[-w:]))
    return {"lr": lr, "score": (start - end) / max(abs(start), 1e-12), "start_loss": start,
            "end_loss": end, "diverged": end > start, "losses": losses}


def _range_test(trial, steps, lr_min, lr_max):
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got {lr_min}, {lr_max}")
    lrs = lr_min * (lr_max / lr_min) ** (np.arange(steps) / (steps - 1))
    losses, done = trial(lrs)
    table, avg, best = [], 0.0, math.inf
    for i in range(min(done + 1, steps)):
        v = losses[i]
        if not np.isfinite(v):
            break
        avg = 0.98 * avg + 0.02 * v
        sm = avg / (1 - 0.98 ** (i + 1))
        table.append({"lr": float(lrs[i]), "loss": float(v), "smoothed_loss": float(sm)})
        best = min(best, sm)
        if sm > 4 * best:
            break
    # the first points (smoothing still warming up) and the last (divergence) are no evidence
    lo, hi = max(1, len(table) // 10), len(table) - max(1, len(table) // 20)
    if hi - lo < 3:
        return LRFinderResult(float(table[len(table) // 2]["lr"]) if table else float(lrs[0]), table, "range")
    sm = np.array([r["smoothed_loss"] for r in table])
    grad = np.gradient(sm, np.log([r["lr"] for r in table]))
    return LRFinderResult(float(table[lo + int(np.argmin(grad[lo:hi]))]["lr"]), table, "range")
