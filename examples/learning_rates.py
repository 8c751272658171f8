"""The learning rate: too small crawls, too large oscillates or diverges.

"If you have time to tune only one hyperparameter, tune the learning rate." An MLP
(64 -> 64 -> 10, LeakyReLU, cross-entropy, plain SGD, batch 32) is trained on the bundled
digits from the same initial weights and batches with four rates:

  * good: the rate ``fn.find_lr`` recommends (a search by factors of 3: short runs
    at lr0·3^j, keeping the rate whose loss falls fastest);
  * too small: good / 100 -- the loss falls, but slowly: after the same number of epochs it
    is far above the good run's;
  * too large: the edge of find_lr's own scan -- the first rate above the recommended one
    whose loss fell less than half as much as the best (3 x the largest rate tried if the
    scan has none). The first steps overshoot: the first epoch's loss is above the untrained
    net's (ln 10 = 2.30 for 10 classes), single steps jump up and down, and the run ends far
    above the good one;
  * far too large: 10 x that -- the weights blow up until the loss is Inf/NaN; ``fit`` stops
    with ``fn.TrainingDiverged`` (keeping the weights from before that step), which we catch
    and report.

The training loss per epoch is recorded with a small ``fn.Callback`` so that the epochs
before a divergence are kept.

    python examples/learning_rates.py               # full mode
    python examples/learning_rates.py --small       # fewer examples and epochs
    python examples/learning_rates.py --plot out.png
"""
import math

import numpy as np

import fastnn as fn

HIDDEN, BATCH = 64, 32
FINDER_STEPS = 50
SETTINGS = {False: dict(n_train=1000, epochs=15, plot_steps=80),
            True: dict(n_train=500, epochs=8, plot_steps=40)}
RUNS = ("too small", "good", "too large", "far too large")


def make_net(seed):
    return fn.Sequential(fn.Dense(64, HIDDEN), fn.LeakyReLU(), fn.Dense(HIDDEN, 10), seed=seed)


class LossLog(fn.Callback):
    """Keeps the per-epoch training loss, also when fit stops with TrainingDiverged."""

    def __init__(self):
        self.losses = []

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(float(logs["loss"]))


def cliff_rate(finder):
    """The first rate of find_lr's scan above the recommended one whose score (relative loss
    drop) is below half the best score; 3 x the largest rate tried if there is none."""
    best = max(row["score"] for row in finder.table)
    for row in sorted(finder.table, key=lambda r: r["lr"]):
        if row["lr"] > finder.lr and not row["score"] >= best / 2:
            return float(row["lr"])
    return 3.0 * max(row["lr"] for row in finder.table)


def split(n_train, seed):
    X, y = fn.data.load_digits()
    perm = np.random.default_rng(seed).permutation(y.size)
    tr, te = perm[:n_train], perm[n_train:]
    return X[tr], y[tr], X[te], y[te]


def train(lr, data, cfg, seed, threads=None):
    X_tr, y_tr, X_te, y_te = data
    model = make_net(seed)
    log = LossLog()
    diverged = None
    try:
        model.fit(X_tr, y_tr, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=lr), epochs=cfg["epochs"],
                  batch_size=BATCH, seed=seed, callbacks=[log], threads=threads)
    except fn.TrainingDiverged as e:
        diverged = {"epoch": e.epoch + 1, "step": e.step + 1, "value": float(e.value)}
    losses = log.losses
    return {"lr": lr, "losses": losses, "diverged": diverged,
            "final_loss": losses[-1] if losses and diverged is None else math.inf,
            "epochs_done": len(losses),
            "test_accuracy": (None if diverged else
                              float(model.evaluate(X_te, y_te, threads=threads)["accuracy"]))}


def first_steps(lr, data, seed, n_steps, threads=None):
    """The loss of each of the first ``n_steps`` SGD steps, by ``train_step`` on batches of a
    seeded permutation: where per-epoch means hide the oscillation, single steps show it."""
    X_tr, y_tr = data[0], data[1]
    model = make_net(seed)
    opt = fn.SGD(lr=lr)
    order = np.random.default_rng(seed).permutation(y_tr.size)
    losses = []
    for k in range(n_steps):
        idx = order[(k * BATCH) % y_tr.size:][:BATCH]
        try:
            losses.append(model.train_step(X_tr[idx], y_tr[idx], loss=fn.CrossEntropy(), optimizer=opt,
                                           threads=threads))
        except fn.TrainingDiverged:
            losses.append(math.inf)
            break
    return losses


def plot_runs(res, finder, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax3, ax2) = plt.subplots(1, 3, figsize=(14, 3.6), gridspec_kw={"width_ratios": [3, 3, 2]})
    for name in RUNS:
        r = res[name]
        c = r["losses"]
        ep = np.arange(1, len(c) + 1)
        label = f"{name}: lr {r['lr']:.3g}"
        if r["diverged"]:
            label += f" (diverged, epoch {r['diverged']['epoch']})"
        (line,) = ax.plot(ep, c, marker="o", ms=3, label=label)
        if r["diverged"]:
            top = max(max(res[n]["losses"] or [1.0]) for n in RUNS)
            ax.plot([len(c) + 1], [c[-1] if c else top], marker="x", ms=10, mew=2, color=line.get_color())
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title("training loss per epoch, plain SGD", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    for name in RUNS:
        c = np.array(res[name]["first_steps"], dtype=float)
        finite = np.isfinite(c)
        (line,) = ax3.plot(np.arange(1, len(c) + 1)[finite], c[finite], lw=1, label=name)
        if not finite.all():
            where = int(np.argmax(~np.isfinite(c) | (c > 6)))
            ax3.annotate(f"{name}: off the top from step {where + 1},\nInf/NaN at step {len(c)}",
                         xy=(where + 1, 6), xytext=(0.3, 0.62), textcoords="axes fraction",
                         fontsize=7, color=line.get_color(),
                         arrowprops=dict(arrowstyle="->", color=line.get_color()))
    ax3.set_ylim(0, 6)
    ax3.set_xlabel("step (batch of 32)")
    ax3.set_title("loss of each of the first steps", fontsize=10)
    ax3.grid(alpha=0.3, which="both")
    ax3.legend(fontsize=7)
    lrs = [row["lr"] for row in finder.table]
    scores = [max(row["score"], -0.1) for row in finder.table]
    ax2.plot(lrs, scores, marker="o")
    ax2.axvline(finder.lr, color="k", ls="--", lw=1, label=f"recommended lr {finder.lr:.3g}")
    ax2.set_xscale("log")
    ax2.set_xlabel("learning rate")
    ax2.set_ylabel("relative loss drop (score)")
    ax2.set_title("fn.find_lr: short runs at lr0 * 3^j", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(small=False, seed=0, plot=None, verbose=True, threads=None):
    """Find a good rate and train with the four rates; print and return ``{"recommended_lr",
    "finder": [(lr, score)], run name: {"lr", "losses", "final_loss" (inf if diverged),
    "diverged" (None or {"epoch", "step", "value"}, 1-based), "epochs_done",
    "test_accuracy"}}`` for runs "too small", "good", "too large", "far too large".
    ``threads`` does not change the numbers."""
    cfg = SETTINGS[bool(small)]
    data = split(cfg["n_train"], seed)
    finder = fn.find_lr(make_net(seed), data[0], data[1], loss=fn.CrossEntropy(),
                        optimizer=fn.SGD(lr=0.01), lr0=0.01, steps=FINDER_STEPS, batch_size=BATCH, seed=seed,
                        threads=threads)
    good, cliff = finder.lr, cliff_rate(finder)
    rates = {"too small": good / 100, "good": good, "too large": cliff, "far too large": 10 * cliff}
    res = {"recommended_lr": good, "finder": [(row["lr"], row["score"]) for row in finder.table]}
    for name in RUNS:
        res[name] = train(rates[name], data, cfg, seed, threads)
        if plot:
            res[name]["first_steps"] = first_steps(rates[name], data, seed, cfg["plot_steps"], threads)
    if verbose:
        print(f"digits: {cfg['n_train']} training / {data[3].size} held-out examples; MLP 64-{HIDDEN}-10 "
              f"LeakyReLU, cross-entropy, plain SGD, batch {BATCH}, {cfg['epochs']} epochs, seed {seed}")
        print(f"fn.find_lr (factor 3, {FINDER_STEPS} steps each), rate -> relative loss drop: " +
              ", ".join(f"{lr:.3g} -> {s:.3f}" for lr, s in res["finder"]))
        print(f"recommended (good) lr = {good:.3g}; too small = good / 100 = {good / 100:.3g}; too large = "
              f"the scan's edge, {cliff:.3g}; far too large = 10 x that = {10 * cliff:.3g}")
        print(f"{'run':<14} {'lr':>8} {'epoch 1':>9} {'final loss':>11} {'held-out acc':>13}")
        for name in RUNS:
            r = res[name]
            first = f"{r['losses'][0]:.4g}" if r["losses"] else "-"
            if r["diverged"]:
                d = r["diverged"]
                print(f"{name:<14} {r['lr']:>8.3g} {first:>9} {'diverged':>11}   loss {d['value']} at epoch "
                      f"{d['epoch']}, step {d['step']}: fn.TrainingDiverged")
            else:
                print(f"{name:<14} {r['lr']:>8.3g} {first:>9} {r['final_loss']:>11.4f} "
                      f"{r['test_accuracy']:>13.1%}")
        print(f"(the untrained net's loss is about ln 10 = {math.log(10):.2f}; 'epoch 1' is the mean "
              "training loss over the first epoch)")
        for name in RUNS:
            print(f"{name} losses: " + (" ".join(f"{v:.3g}" for v in res[name]["losses"]) or "(none)"))
    if plot:
        plot_runs(res, finder, plot)
        if verbose:
            print(f"loss curves written to {plot}")
    return res


if __name__ == "__main__":
    from _cli import run_example

    run_example(main, __doc__, plot_help="write the loss curves of all rates to this PNG",
                seed_help="seed of the split, initialisation and shuffling")
