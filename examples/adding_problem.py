"""Vanishing gradients through time: the adding problem (Hochreiter & Schmidhuber 1997).

Each example is a sequence of T steps of two inputs: a random number in [0, 1) and a marker,
1 at two positions (one in each half), 0 elsewhere. The target is the sum of the two marked
numbers. Predicting the mean, 1, scores the trivial MSE of 1/6 (about 0.167). To do better a
network must carry a number from the first half of the sequence to its end.

A tanh RNN's gradient ∂L/∂h_t shrinks by a factor of roughly |W_hh|·tanh' per step back in time:
at initialisation it is many orders of magnitude smaller at the first steps than at the last,
so the net never learns where the markers are and stays at the trivial MSE. At initialisation
LSTM's and GRU's gradients vanish too, but their gates open a path (an additive cell state, an
update gate near 1) along which the gradient from the end reaches the marked steps; they learn
it and solve the task (MSE far below 0.01), and after training their ‖∂L/∂h_0‖ / ‖∂L/∂h_{T-1}‖
is many orders of magnitude larger than the RNN's.
``fn.gradient_norms_through_time`` measures ‖∂L/∂h_t‖ for every step t.

Hidden size 32, Adam lr 3e-3, batch 32, gradients clipped to norm 1.

    python examples/adding_problem.py               # T = 50 and 150 (about a minute)
    python examples/adding_problem.py --small       # T = 50, fewer examples and epochs
    python examples/adding_problem.py --plot docs/img/adding_problem.png
"""
import numpy as np

import fastnn as fn

HIDDEN, LR, BATCH, CLIP = 32, 3e-3, 32, 1.0
SETTINGS = {False: dict(steps=(50, 150), n_train=10000, epochs=15),
            True: dict(steps=(50,), n_train=5000, epochs=10)}
CELLS = {"tanh RNN": fn.RNN, "LSTM": fn.LSTM, "GRU": fn.GRU}
TRIVIAL_MSE = 1 / 6


def adding_data(n, T, rng):
    """(X (n, T, 2), y (n, 1)): numbers and markers, and the sum of the two marked numbers."""
    v = rng.random((n, T))
    mark = np.zeros((n, T))
    rows = np.arange(n)
    mark[rows, rng.integers(0, T // 2, n)] = 1
    mark[rows, rng.integers(T // 2, T, n)] = 1
    return np.stack([v, mark], axis=-1), (v * mark).sum(axis=1, keepdims=True)


def run(name, T, cfg, seed, threads):
    rng = np.random.default_rng([seed, T])
    X, y = adding_data(cfg["n_train"], T, rng)
    Xv, yv = adding_data(1000, T, rng)
    model = fn.Sequential(CELLS[name](2, HIDDEN), fn.Dense(HIDDEN, 1), input_shape=(T, 2), seed=seed)
    g = fn.gradient_norms_through_time(model, Xv[:256], yv[:256], fn.MSE(), threads=threads)["0"]
    hist = model.fit(X, y, loss=fn.MSE(), optimizer=fn.Adam(lr=LR), epochs=cfg["epochs"], batch_size=BATCH,
                     clip_norm=CLIP, seed=seed, threads=threads, verbose=0)
    g2 = fn.gradient_norms_through_time(model, Xv[:256], yv[:256], fn.MSE(), threads=threads)["0"]
    return {"val_mse": float(model.evaluate(Xv, yv, threads=threads)["loss"]),
            "loss_per_epoch": [float(v) for v in hist.history["loss"]],
            "grad_norms_at_init": g.tolist(), "grad_norms_trained": g2.tolist(),
            "first_over_last": float(g[0] / g[-1]), "first_over_last_trained": float(g2[0] / g2[-1])}


def plot_results(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = sorted(res)
    fig, axes = plt.subplots(1, 2 * len(Ts), figsize=(6 * len(Ts), 3.5))
    for i, T in enumerate(Ts):
        ax, bx = axes[2 * i], axes[2 * i + 1]
        for name in CELLS:
            r = res[T][name]
            ax.semilogy(np.arange(T), r["grad_norms_at_init"], label=name)
            bx.plot(np.arange(1, len(r["loss_per_epoch"]) + 1), r["loss_per_epoch"], marker="o", ms=3, label=name)
        ax.set_xlabel("time step t")
        ax.set_title(f"T={T}: ||dL/dh_t|| at initialisation", fontsize=9)
        bx.axhline(TRIVIAL_MSE, color="gray", ls="--", lw=1, label="trivial MSE 1/6")
        bx.set_xlabel("epoch")
        bx.set_title(f"T={T}: training MSE", fontsize=9)
        for a in (ax, bx):
            a.grid(alpha=0.3, which="both")
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(small=False, seed=0, plot=None, verbose=True, threads=None):
    """Train a tanh RNN, an LSTM and a GRU on the adding problem for each T; print and return
    ``{T: {name: {"val_mse", "loss_per_epoch", "grad_norms_at_init", "grad_norms_trained",
    "first_over_last", "first_over_last_trained"}}}`` (``first_over_last``: ‖∂L/∂h_0‖ /
    ‖∂L/∂h_{T-1}‖ at initialisation; ``_trained`` after training). ``threads`` does not
    change the numbers."""
    cfg = SETTINGS[bool(small)]
    res = {}
    for T in cfg["steps"]:
        res[T] = {name: run(name, T, cfg, seed, threads) for name in CELLS}
        if verbose:
            print(f"adding problem, T={T}: {cfg['n_train']} training sequences, {cfg['epochs']} epochs, hidden "
                  f"{HIDDEN}, Adam lr {LR:g}, clip_norm {CLIP:g} (trivial MSE {TRIVIAL_MSE:.3f})")
            print(f"{'':<10} {'held-out MSE':>13}   |dL/dh_0| / |dL/dh_T-1|: at init   trained")
            for name, r in res[T].items():
                print(f"{name:<10} {r['val_mse']:>13.4f} {r['first_over_last']:>34.2e} "
                      f"{r['first_over_last_trained']:>9.2e}")
    if plot:
        plot_results(res, plot)
        if verbose:
            print(f"plot written to {plot}")
    return res


if __name__ == "__main__":
    from _cli import run_example

    run_example(main, __doc__, plot_help="write ||dL/dh_t|| per step and the training curves to this PNG")
