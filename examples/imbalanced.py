"""Imbalanced classes, fraud-detection style.

A generated binary problem: 1 "fraud" example for every 50 normal ones, with overlapping
classes. Normal transactions are N(0, I) in 10 features; fraud comes from two clusters
N(+mu, I) and N(-mu, I), so the classes overlap and the boundary is not linear. The same
MLP is trained four ways:

  * (a) plainly: the network can reach 98% accuracy by (nearly) always saying "normal";
    ``fit`` warns that the imbalance is below 1:10 and no weighting is used,
  * (b) with ``class_weight="balanced"`` (weights n / (2 n_c); the loss becomes
    sum(w l) / sum(w)),
  * (c) on ``fn.data.subsample(X, y, ratio=0.1)``: normal examples randomly dropped until
    the ratio is 1:10 (a common rule of thumb; training data is lost),
  * (d) as a single-logit model with ``fn.BinaryCrossEntropy(pos_weight=n_neg / n_pos)``.

For each it prints, on a held-out test set with the same 1:50 imbalance, the recall and
precision of the fraud class, the balanced accuracy and the macro F1. Weighting or
subsampling raises fraud recall far above the plain run's, at the price of precision:
the trade-off every fraud detector has to choose on.

    python examples/imbalanced.py               # full mode, a few seconds
    python examples/imbalanced.py --small       # well under 2 s
    python examples/imbalanced.py --plot pr.png # recall/precision bars (needs matplotlib)
"""
import sys
import time
import warnings

import numpy as np

import fastnn as fn
from fastnn.metrics import classification_metrics

SETTINGS = {
    False: dict(n_train=25500, n_test=10200, epochs=20, hidden=32),
    True: dict(n_train=7650, n_test=5100, epochs=12, hidden=32),
}
IMBALANCE = 50        # normal examples per fraud example
N_FEATURES = 10
SEPARATION = 2.5      # |mu|: distance of each fraud cluster from the normal class's centre
BATCH_SIZE = 64
LR = 3e-3

RUNS = ("plain", "balanced", "subsample", "pos_weight")
LABELS = {"plain": "(a) plain", "balanced": "(b) class_weight='balanced'",
          "subsample": "(c) subsample(ratio=0.1)", "pos_weight": "(d) BCE(pos_weight=n_neg/n_pos)"}


def make_data(n, seed, stream):
    """``n`` examples, exactly one in IMBALANCE + 1 of them fraud (label 1), shuffled."""
    rng = np.random.default_rng([seed, stream])
    n_pos = n // (IMBALANCE + 1)
    n_neg = n - n_pos
    mu = np.zeros(N_FEATURES)
    mu[:4] = SEPARATION / 2.0                       # |mu| = SEPARATION
    sign = np.where(rng.random(n_pos) < 0.5, -1.0, 1.0)[:, None]
    X = np.vstack([rng.normal(size=(n_neg, N_FEATURES)),
                   sign * mu + rng.normal(size=(n_pos, N_FEATURES))]).astype(np.float32)
    y = np.concatenate([np.zeros(n_neg, np.int64), np.ones(n_pos, np.int64)])
    perm = rng.permutation(n)
    return X[perm], y[perm]


def make_model(hidden, n_out, seed):
    return fn.Sequential(fn.Dense(N_FEATURES, hidden), fn.ReLU(), fn.Dense(hidden, hidden), fn.ReLU(),
                         fn.Dense(hidden, n_out), seed=seed)


def scores(y_true, y_pred):
    """Fraud-class recall and precision, balanced accuracy and macro F1 (NumPy)."""
    tp = int(np.sum((y_pred == 1) & (y_true == 1)))
    fp = int(np.sum((y_pred == 1) & (y_true == 0)))
    fn_ = int(np.sum((y_pred == 0) & (y_true == 1)))
    m = classification_metrics(y_true, y_pred, 2)
    return {
        "recall": tp / (tp + fn_) if tp + fn_ else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "balanced_accuracy": m["balanced_accuracy"],
        "f1_macro": m["f1_macro"],
        "accuracy": m["accuracy"],
        "flagged": tp + fp,
    }


def train(run, X, y, X_test, y_test, cfg, seed, threads=None):
    """Train one variant; returns (row of numbers, the warnings fit gave)."""
    kw = dict(epochs=cfg["epochs"], batch_size=BATCH_SIZE, seed=seed, threads=threads,
              optimizer=fn.Adam(lr=LR))
    if run == "subsample":
        X, y = fn.data.subsample(X, y, ratio=0.1, seed=seed)
    if run == "pos_weight":
        n_pos = int(y.sum())
        model = make_model(cfg["hidden"], 1, seed)
        loss = fn.BinaryCrossEntropy(pos_weight=(y.size - n_pos) / n_pos)
        target = y.astype(np.float32).reshape(-1, 1)
    else:
        model = make_model(cfg["hidden"], 2, seed)
        loss = fn.CrossEntropy()
        target = y
        if run == "balanced":
            kw["class_weight"] = "balanced"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, target, loss=loss, **kw)
    out = model.forward(X_test, threads=threads)
    pred = (out[:, 0] > 0).astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)
    row = scores(y_test, pred)
    row["n_train"] = int(y.size)
    row["n_fraud_train"] = int(y.sum())
    return row, [str(w.message) for w in caught]


def format_table(results):
    head = (f"{'run':<33} {'train n':>7} {'fraud recall':>12} {'fraud precision':>15} "
            f"{'balanced acc':>12} {'macro F1':>8} {'accuracy':>8}")
    lines = [head, "-" * len(head)]
    for run in RUNS:
        r = results[run]
        lines.append(f"{LABELS[run]:<33} {r['n_train']:>7d} {r['recall']:>12.3f} {r['precision']:>15.3f} "
                     f"{r['balanced_accuracy']:>12.3f} {r['f1_macro']:>8.3f} {r['accuracy']:>8.3f}")
    return "\n".join(lines)


def plot_bars(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("recall", "precision", "balanced_accuracy", "f1_macro")
    names = {"recall": "fraud recall", "precision": "fraud precision",
             "balanced_accuracy": "balanced accuracy", "f1_macro": "macro F1"}
    x = np.arange(len(RUNS))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    w = 0.2
    for i, k in enumerate(keys):
        ax.bar(x + (i - 1.5) * w, [results[r][k] for r in RUNS], w, label=names[k])
    ax.set_xticks(x, [LABELS[r] for r in RUNS], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score on the test set")
    ax.set_title(f"1:{IMBALANCE} imbalance: plain training vs weighting and subsampling")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(small=False, seed=0, plot=None, threads=None, verbose=True):
    """Run the four trainings; print and return ``{run: {recall, precision, balanced_accuracy,
    f1_macro, accuracy, flagged, n_train, n_fraud_train}}`` for runs plain, balanced,
    subsample, pos_weight, plus ``"warning"``: the imbalance warning of the plain fit.

    ``plot``: a path for a bar chart of the scores (needs matplotlib). ``threads`` does not
    change the numbers (fastnn is bit-identical on any thread count)."""
    cfg = SETTINGS[bool(small)]
    X, y = make_data(cfg["n_train"], seed, 0)
    X_test, y_test = make_data(cfg["n_test"], seed, 1)
    t0 = time.perf_counter()
    results, caught = {}, {}
    for run in RUNS:
        results[run], caught[run] = train(run, X, y, X_test, y_test, cfg, seed, threads)
    elapsed = time.perf_counter() - t0
    imbalance_warnings = [m for m in caught["plain"] if "imbalance" in m]
    results["warning"] = imbalance_warnings[0] if imbalance_warnings else None
    if verbose:
        print(f"training set: {y.size} examples, {int(y.sum())} fraud (1:{IMBALANCE}); test set: "
              f"{y_test.size} examples, {int(y_test.sum())} fraud; MLP {N_FEATURES}-{cfg['hidden']}-"
              f"{cfg['hidden']}-2 (1 output for BCE), Adam(lr={LR:g}), {cfg['epochs']} epochs, seed {seed}")
        print(f"plain fit warned: {results['warning']}")
        for run in RUNS[1:]:
            for m in caught[run]:
                print(f"{run} fit warned: {m}")
        print(format_table(results))
        print("fraud recall / precision: of the fraud cases, the share flagged / of the flagged cases, "
              "the share that is fraud")
        # the time goes to stderr: stdout is the same on every machine and thread count
        print(f"({elapsed:.1f} s of training)", file=sys.stderr)
    if plot:
        plot_bars(results, plot)
        if verbose:
            print(f"bar chart written to {plot}")
    return results


if __name__ == "__main__":
    from _cli import run_example

    run_example(main, __doc__, plot_help="write a bar chart of the test scores to this PNG",
                seed_help="seed of the data, initialisation, shuffling and subsampling (default 0)")
