"""Overfitting and three remedies: L2, dropout, early stopping.

A wide MLP (64 -> H -> H -> 10, ReLU) is trained with Adam on a small subset of the
bundled digits in which 20% of the training labels are replaced by a wrong class. It
memorises the training set, noise included: the training loss keeps falling while the
validation loss (measured on clean, held-out digits) reaches its minimum after a few
epochs and then climbs. The same network is then trained three more times, from the
same initial weights and on the same batches:

  * with L2 regularisation, ``fit(l2=beta)`` (loss + beta * ||W||^2 over all weights),
  * with dropout, ``fn.Dropout(p)`` after each hidden activation,
  * with early stopping, ``fn.EarlyStopping(patience=...)`` on ``val_loss``, which stops
    once the validation loss has not improved for ``patience`` epochs and restores the
    weights of the best epoch.

For each run it prints the training loss of the final model, the best and the final
validation loss, the (1-based) epoch of the best validation loss and the final
validation accuracy. The plain run's final validation loss is well above its minimum;
each remedy ends lower.

    python examples/overfitting.py                  # full mode, a few seconds
    python examples/overfitting.py --small          # smaller and shorter, well under 2 s
    python examples/overfitting.py --plot curves.png
"""
import sys
import time

import numpy as np

import fastnn as fn

# Full and small settings. Small mode trains a narrower net on fewer examples for fewer
# epochs; the picture is the same.
SETTINGS = {
    False: dict(n_train=200, n_val=500, hidden=256, epochs=100, lr=3e-3),
    True: dict(n_train=150, n_val=300, hidden=128, epochs=60, lr=5e-3),
}
LABEL_NOISE = 0.2     # fraction of training labels replaced by a random other class
L2_BETA = 1e-2        # beta of fit(l2=beta)
DROPOUT_P = 0.5       # fn.Dropout(p) after each hidden ReLU
PATIENCE = 10         # fn.EarlyStopping(patience=...)
BATCH_SIZE = 32

RUNS = ("plain", "l2", "dropout", "early_stopping")
LABELS = {"plain": "plain", "l2": f"L2 (beta={L2_BETA:g})", "dropout": f"dropout (p={DROPOUT_P:g})",
          "early_stopping": f"early stopping (patience={PATIENCE})"}


def make_data(n_train, n_val, seed, noise=LABEL_NOISE):
    """A random training subset of the digits with ``noise`` of its labels corrupted, and a
    disjoint validation subset with clean labels."""
    X, y = fn.data.load_digits()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(y.size)
    tr, va = perm[:n_train], perm[n_train:n_train + n_val]
    y_tr = y[tr].copy()
    flip = rng.random(n_train) < noise
    y_tr[flip] = (y_tr[flip] + rng.integers(1, 10, int(flip.sum()))) % 10   # always a wrong class
    return X[tr], y_tr, X[va], y[va]


def make_model(hidden, seed, dropout=0.0):
    layers = [fn.Dense(64, hidden), fn.ReLU()]
    if dropout:
        layers.append(fn.Dropout(dropout))
    layers += [fn.Dense(hidden, hidden), fn.ReLU()]
    if dropout:
        layers.append(fn.Dropout(dropout))
    layers.append(fn.Dense(hidden, 10))
    return fn.Sequential(*layers, seed=seed)


def train(run, data, cfg, seed, threads=None):
    """Train one variant; returns (numbers for the table, per-epoch curves)."""
    X_tr, y_tr, X_va, y_va = data
    model = make_model(cfg["hidden"], seed, dropout=DROPOUT_P if run == "dropout" else 0.0)
    kw = {}
    if run == "l2":
        kw["l2"] = L2_BETA
    if run == "early_stopping":
        kw["callbacks"] = [fn.EarlyStopping(monitor="val_loss", patience=PATIENCE, restore_best=True)]
    hist = model.fit(X_tr, y_tr, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=cfg["lr"]),
                     epochs=cfg["epochs"], batch_size=BATCH_SIZE, validation_data=(X_va, y_va),
                     seed=seed, threads=threads, **kw)
    val_curve = hist.history["val_loss"]
    final_val = model.evaluate(X_va, y_va, threads=threads)   # the model fit leaves (restored for ES)
    row = {
        "epochs": len(hist.epoch),
        "train_loss": model.evaluate(X_tr, y_tr, threads=threads)["loss"],
        "best_val_loss": float(np.min(val_curve)),
        "final_val_loss": final_val["loss"],
        "best_epoch": int(hist.best_epoch) + 1,                  # 1-based, as fit's verbose lines
        "val_accuracy": final_val["accuracy"],
    }
    curves = {"loss": list(hist.history["loss"]), "val_loss": list(val_curve)}
    return row, curves


def format_table(results):
    head = (f"{'run':<28} {'epochs':>6} {'train loss':>10} {'best val loss':>13} "
            f"{'final val loss':>14} {'best epoch':>10} {'val acc':>7}")
    lines = [head, "-" * len(head)]
    for run in RUNS:
        r = results[run]
        lines.append(f"{LABELS[run]:<28} {r['epochs']:>6d} {r['train_loss']:>10.4f} "
                     f"{r['best_val_loss']:>13.4f} {r['final_val_loss']:>14.4f} "
                     f"{r['best_epoch']:>10d} {r['val_accuracy']:>7.3f}")
    return "\n".join(lines)


def plot_curves(curves, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, sharey=True)
    for ax, run in zip(axes.ravel(), RUNS):
        c = curves[run]
        ep = np.arange(1, len(c["loss"]) + 1)
        ax.plot(ep, c["loss"], label="training loss")
        ax.plot(ep, c["val_loss"], label="validation loss")
        ax.axvline(results[run]["best_epoch"], color="gray", ls=":", lw=1, label="best validation epoch")
        ax.set_title(LABELS[run])
        ax.set_ylim(0, 2.5)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("cross-entropy loss")
    axes[0, 0].legend()
    fig.suptitle("Digits, 20% label noise: overfitting and its remedies")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(small=False, seed=0, plot=None, threads=None, verbose=True):
    """Run the four trainings; print and return ``{run: {epochs, train_loss, best_val_loss,
    final_val_loss, best_epoch, val_accuracy}}`` for runs plain, l2, dropout, early_stopping.

    ``plot``: a path to write the loss curves to (needs matplotlib). ``threads`` does not
    change the numbers (fastnn is bit-identical on any thread count)."""
    cfg = SETTINGS[bool(small)]
    data = make_data(cfg["n_train"], cfg["n_val"], seed)
    t0 = time.perf_counter()
    results, curves = {}, {}
    for run in RUNS:
        results[run], curves[run] = train(run, data, cfg, seed, threads)
    elapsed = time.perf_counter() - t0
    if verbose:
        print(f"digits: {cfg['n_train']} training examples ({LABEL_NOISE:.0%} of labels corrupted), "
              f"{cfg['n_val']} clean validation examples; MLP 64-{cfg['hidden']}-{cfg['hidden']}-10, "
              f"Adam(lr={cfg['lr']:g}), up to {cfg['epochs']} epochs, seed {seed}")
        print(format_table(results))
        p = results["plain"]
        print(f"plain run: final validation loss {p['final_val_loss']:.4f} is "
              f"{p['final_val_loss'] / p['best_val_loss']:.2f}x its minimum {p['best_val_loss']:.4f} "
              f"(epoch {p['best_epoch']}): it overfits.")
        # the time goes to stderr: stdout is the same on every machine and thread count
        print(f"({elapsed:.1f} s of training)", file=sys.stderr)
    if plot:
        plot_curves(curves, results, plot)
        if verbose:
            print(f"loss curves written to {plot}")
    return results


if __name__ == "__main__":
    from _cli import run_example

    run_example(main, __doc__, plot_help="write the training/validation loss curves to this PNG",
                seed_help="seed of the data subset, label noise, initialisation, shuffling and dropout (default 0)")
