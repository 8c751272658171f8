"""Symmetry breaking: with all-zero initial weights every hidden unit stays a copy of the others.

"How do we initialise our net?" The same small MLP, 64 -> 32 -> 32 -> 10
with sigmoid hidden layers, cross-entropy and SGD with momentum on the bundled digits, is
trained twice from the same data and batches:

  * ``init="zeros"`` on every ``fn.Dense``: all units of a layer compute the same output,
    receive the same error signal and take the same update, forever. After training, the
    incoming weight rows of each hidden layer are still identical (their largest pairwise
    difference is 0): each layer of 32 units is in effect a layer of one unit;
  * ``init="xavier"`` (random, the default before a sigmoid): the units differ from the
    first step on and the net learns the digits.

A third run shows that zero initialisation is worse still before ReLU (or tanh): the hidden
outputs are all 0, so no weight gets a gradient and only the output bias learns.

    python examples/symmetry_breaking.py               # full mode
    python examples/symmetry_breaking.py --small       # fewer examples and epochs
    python examples/symmetry_breaking.py --plot out.png
"""

import numpy as np

import fastnn as fn

HIDDEN = 32
LR, MOMENTUM, BATCH = 0.5, 0.9, 32
SETTINGS = {False: dict(n_train=1200, epochs=30), True: dict(n_train=500, epochs=10)}
RUNS = ("zeros", "random", "zeros_relu")
LABELS = {"zeros": "sigmoid, init='zeros'", "random": "sigmoid, init='xavier'",
          "zeros_relu": "ReLU, init='zeros'"}


def make_net(run, seed):
    init = "xavier" if run == "random" else "zeros"
    act = fn.ReLU if run == "zeros_relu" else fn.Sigmoid
    return fn.Sequential(fn.Dense(64, HIDDEN, init=init), act(),
                         fn.Dense(HIDDEN, HIDDEN, init=init), act(),
                         fn.Dense(HIDDEN, 10, init=init), seed=seed)


def row_spread(W):
    """The largest difference between two rows of W (the incoming weights of two units),
    absolute and relative to the largest |weight|."""
    W = np.asarray(W, dtype=np.float64)
    spread = float(np.max(W.max(axis=0) - W.min(axis=0)))
    scale = float(np.max(np.abs(W)))
    return spread, (spread / scale if scale > 0 else 0.0)


def split(n_train, seed):
    X, y = fn.data.load_digits()
    perm = np.random.default_rng(seed).permutation(y.size)
    tr, te = perm[:n_train], perm[n_train:]
    return X[tr], y[tr], X[te], y[te]


def train(run, data, cfg, seed, threads=None):
    X_tr, y_tr, X_te, y_te = data
    model = make_net(run, seed)
    hist = model.fit(X_tr, y_tr, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=LR, momentum=MOMENTUM),
                     epochs=cfg["epochs"], batch_size=BATCH, seed=seed, threads=threads)
    dense = [layer for layer in model.layers if isinstance(layer, fn.Dense)]
    out = {"train_loss": float(hist.history["loss"][-1]),
           "test_accuracy": float(model.evaluate(X_te, y_te, threads=threads)["accuracy"]),
           "loss_per_epoch": list(hist.history["loss"]), "layers": []}
    for k, d in enumerate(dense[:2]):
        spread, rel = row_spread(d.weight)
        out["layers"].append({"layer": k + 1, "distinct_rows": int(np.unique(d.weight, axis=0).shape[0]),
                              "max_row_diff": spread, "max_row_diff_rel": rel,
                              "max_abs_weight": float(np.max(np.abs(d.weight)))})
    out["weights_1"] = dense[0].weight.copy()
    return out


def plot_runs(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, run in zip(axes[:2], ("zeros", "random")):
        W = res[run]["weights_1"]
        v = float(np.max(np.abs(W))) or 1.0
        im = ax.imshow(W, cmap="RdBu_r", vmin=-v, vmax=v, aspect="auto", interpolation="nearest")
        ax.set_title(f"{LABELS[run]}: hidden layer 1 weights\n(row = one unit's 64 incoming weights)",
                     fontsize=9)
        ax.set_xlabel("input pixel")
        ax.set_ylabel("hidden unit")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for run in RUNS:
        c = res[run]["loss_per_epoch"]
        axes[2].plot(np.arange(1, len(c) + 1), c, marker="o", ms=3, label=LABELS[run])
    axes[2].set_xlabel("epoch")
    axes[2].set_title("training loss (cross-entropy)", fontsize=9)
    axes[2].set_ylim(bottom=0)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(small=False, seed=0, plot=None, verbose=True, threads=None):
    """Train the three runs; print and return ``{run: {"train_loss", "test_accuracy",
    "layers": [{"layer", "distinct_rows", "max_row_diff", "max_row_diff_rel",
    "max_abs_weight"} for hidden layers 1, 2], "loss_per_epoch", "weights_1"}}`` for runs
    zeros, random and zeros_relu. ``threads`` does not change the numbers."""
    cfg = SETTINGS[bool(small)]
    data = split(cfg["n_train"], seed)
    res = {run: train(run, data, cfg, seed, threads) for run in RUNS}
    if verbose:
        print(f"digits: {cfg['n_train']} training / {data[3].size} held-out examples; MLP 64-{HIDDEN}-{HIDDEN}-10, "
              f"cross-entropy, SGD lr {LR:g} momentum {MOMENTUM:g}, batch {BATCH}, {cfg['epochs']} epochs, "
              f"seed {seed}")
        print(f"{'run':<22} {'layer':>5} {'distinct rows':>13} {'max row diff':>12} {'relative':>9} "
              f"{'max |w|':>8}")
        for run in RUNS:
            for L in res[run]["layers"]:
                print(f"{LABELS[run]:<22} {L['layer']:>5d} {L['distinct_rows']:>10d}/{HIDDEN:<2d} "
                      f"{L['max_row_diff']:>12.4g} {L['max_row_diff_rel']:>9.3g} {L['max_abs_weight']:>8.3f}")
        print(f"{'run':<22} {'train loss':>10} {'held-out accuracy':>18}")
        for run in RUNS:
            print(f"{LABELS[run]:<22} {res[run]['train_loss']:>10.4f} {res[run]['test_accuracy']:>18.1%}")
        z, r = res["zeros"], res["random"]
        print(f"zero init: every hidden unit of a layer is the same unit (1 distinct row of {HIDDEN}); "
              f"held-out accuracy {z['test_accuracy']:.1%} against {r['test_accuracy']:.1%} with random init")
    if plot:
        plot_runs(res, plot)
        if verbose:
            print(f"weights and loss curves written to {plot}")
    return res


if __name__ == "__main__":
    from _cli import run_example

    run_example(main, __doc__, plot_help="write hidden-layer weights and loss curves to this PNG",
                seed_help="seed of the split, initialisation and shuffling")
