"""Exploding gradients through time, and clipping the gradient norm.

A tanh RNN whose recurrent weight matrix is an orthogonal matrix times ``scale``: backward
through time multiplies ∂L/∂h_t by W_hhᵀ·diag(tanh') once per step. At scale 1 the gradient
shrinks toward the first steps; at scale 1.5 it grows instead, ‖∂L/∂h_0‖ is tens of times
‖∂L/∂h_{T-1}‖ (``fn.gradient_norms_through_time``), the whole gradient is huge, and plain SGD
takes steps too long for the loss surface: for most seeds it diverges (fastnn stops with
``TrainingDiverged`` and keeps the weights from before the bad step) or ends far worse than the
trivial predictor. Which seeds diverge depends on the last bits of the CPU's sums, since the run is
chaotic. The same run with ``clip_norm=1.0`` (rescale the whole gradient to norm at most 1 before
each update, torch's ``clip_grad_norm_``) trains for every seed.

Task: the adding problem with T = 50 (examples/adding_problem.py); hidden 32, SGD lr 0.05,
batch 32.

    python examples/exploding_gradients.py
    python examples/exploding_gradients.py --small
"""
import math

import numpy as np

import fastnn as fn
from adding_problem import adding_data

T, HIDDEN, LR, BATCH = 50, 32, 0.05, 32
SCALES = (1.0, 1.5)
SETTINGS = {False: dict(n_train=5000, epochs=5), True: dict(n_train=1000, epochs=3)}


def make_model(scale, seed):
    m = fn.Sequential(fn.RNN(2, HIDDEN), fn.Dense(HIDDEN, 1), input_shape=(T, 2), seed=seed)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(HIDDEN, HIDDEN)))
    m.layers[0].weight_hh_l0[...] = scale * q
    return m


def train(scale, clip, data, cfg, seed, threads):
    X, y, Xv, yv = data
    m = make_model(scale, seed)
    try:
        h = m.fit(X, y, loss=fn.MSE(), optimizer=fn.SGD(lr=LR), epochs=cfg["epochs"], batch_size=BATCH,
                  clip_norm=clip, seed=seed, threads=threads, verbose=0)
        return {"diverged_at": None, "loss_per_epoch": [float(v) for v in h.history["loss"]],
                "val_mse": float(m.evaluate(Xv, yv, threads=threads)["loss"])}
    except fn.TrainingDiverged as e:
        return {"diverged_at": (e.epoch + 1, e.step + 1), "loss_per_epoch": None, "val_mse": math.nan}


def main(small=False, seed=0, plot=None, verbose=True, threads=None):
    """For each scale: the gradient norms through time and the whole gradient's norm at
    initialisation, and training without and with ``clip_norm=1``. Returns
    ``{scale: {"grad_norms", "first_over_last", "grad_norm", "plain", "clipped"}}``; "plain" and
    "clipped" hold ``diverged_at`` ((epoch, step) or None), ``loss_per_epoch`` and ``val_mse``."""
    cfg = SETTINGS[bool(small)]
    rng = np.random.default_rng(seed)
    X, y = adding_data(cfg["n_train"], T, rng)
    Xv, yv = adding_data(500, T, rng)
    res = {}
    for scale in SCALES:
        m = make_model(scale, seed)
        g = fn.gradient_norms_through_time(m, Xv[:256], yv[:256], fn.MSE(), threads=threads)["0"]
        _, grads = m.loss_and_grad(Xv[:256], yv[:256], fn.MSE(), threads=threads)
        res[scale] = {"grad_norms": g.tolist(), "first_over_last": float(g[0] / g[-1]),
                      "grad_norm": float(math.sqrt(sum(float((gr.astype(np.float64) ** 2).sum()) for gr in grads))),
                      "plain": train(scale, None, (X, y, Xv, yv), cfg, seed, threads),
                      "clipped": train(scale, 1.0, (X, y, Xv, yv), cfg, seed, threads)}
    if verbose:
        print(f"tanh RNN, W_hh = scale x orthogonal, adding problem T={T}, SGD lr {LR:g}, batch {BATCH}, "
              f"{cfg['epochs']} epochs")
        print(f"{'scale':>5} {'|dL/dh_0|/|dL/dh_T-1|':>22} {'|grad| at init':>15} {'plain SGD':>28} "
              f"{'clip_norm=1':>18}")
        for scale, r in res.items():
            def fmt(run):
                if run["diverged_at"] is not None:
                    return "diverged (epoch {}, step {})".format(*run["diverged_at"])
                return f"held-out MSE {run['val_mse']:.3g}"
            print(f"{scale:>5g} {r['first_over_last']:>22.3g} {r['grad_norm']:>15.3g} {fmt(r['plain']):>28} "
                  f"{fmt(r['clipped']):>18}")
    return res


if __name__ == "__main__":
    from _cli import run_example

    run_example(main, __doc__, plot_help="(no plot)")
