"""Vanishing gradients: the first layers of a deep sigmoid net hardly learn.

The experiment: measure the "speed of learning" of each layer, the mean |∂L/∂w|
over its parameters, in a net with 4 sigmoid hidden layers of 30 units (64 -> 30 -> 30 ->
30 -> 30 -> 10, cross-entropy, plain SGD) on the bundled digits. Backpropagation multiplies
the error by Wᵀ and by σ'(z) ≤ 1/4 once per layer, so the speed shrinks layer by layer
toward the input: hidden layer 1 learns about 100x slower than hidden layer 4, and the
net stays near chance for many epochs.

fastnn measures this inside the compiled step: ``fit(..., diagnostics=True)`` fills
``history.diagnostics["grad_mean_abs"]`` (one list per epoch, one value per Dense layer;
``history.diagnostic_layers`` names them). The same net with ReLU and He initialisation
(``fn.Dense(..., init="he")``) keeps the speeds of all layers within a small factor.

Hidden layers are numbered 1..4; the output Dense is layer 5.

    python examples/vanishing_gradients.py               # full mode
    python examples/vanishing_gradients.py --small       # fewer examples and epochs
    python examples/vanishing_gradients.py --plot docs/img/vanishing_gradients.png
"""
import warnings

import numpy as np

import fastnn as fn

HIDDEN, WIDTH = 4, 30
LR, BATCH = 0.1, 10          # Nielsen's mini-batch SGD settings
SETTINGS = {False: dict(n_train=1500, epochs=10), True: dict(n_train=500, epochs=2)}
NETS = ("sigmoid", "relu_he")
LABELS = {"sigmoid": "sigmoid, Xavier init", "relu_he": "ReLU, He init"}


def make_net(kind, seed):
    layers, d = [], 64
    for _ in range(HIDDEN):
        if kind == "sigmoid":
            layers += [fn.Dense(d, WIDTH), fn.Sigmoid()]           # the default init before a sigmoid: Xavier
        else:
            layers += [fn.Dense(d, WIDTH, init="he"), fn.ReLU()]
        d = WIDTH
    layers.append(fn.Dense(d, 10, init="he" if kind == "relu_he" else None))
    return fn.Sequential(*layers, seed=seed)


def split(n_train, seed):
    X, y = fn.data.load_digits()
    perm = np.random.default_rng(seed).permutation(y.size)
    tr, te = perm[:n_train], perm[n_train:]
    return X[tr], y[tr], X[te], y[te]


def train(kind, data, cfg, seed, threads=None):
    X_tr, y_tr, X_te, y_te = data
    model = make_net(kind, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fn.DiagnosticWarning)
        hist = model.fit(X_tr, y_tr, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=LR),
                         epochs=cfg["epochs"], batch_size=BATCH, seed=seed, diagnostics=True,
                         threads=threads)
    speed = np.array(hist.diagnostics["grad_mean_abs"])      # (epochs, 5 Dense layers)
    sat = np.array(hist.diagnostics["saturated"])
    dead = np.array(hist.diagnostics["dead"])
    first = speed[0]
    return {
        "speed_epoch1": [float(v) for v in first],            # hidden 1..4, then the output layer
        "ratio_epoch1": float(first[HIDDEN - 1] / first[0]),  # hidden layer 4 / hidden layer 1
        "ratio_last": float(speed[-1, HIDDEN - 1] / speed[-1, 0]),
        "saturated_epoch1": float(np.nanmean(sat[0, :HIDDEN])) if kind == "sigmoid" else None,
        "dead_epoch1": float(np.nanmean(dead[0, :HIDDEN])) if kind == "relu_he" else None,
        "train_loss": float(hist.history["loss"][-1]),
        "test_accuracy": float(model.evaluate(X_te, y_te, threads=threads)["accuracy"]),
        "warnings": [str(w.message) for w in caught if issubclass(w.category, fn.DiagnosticWarning)],
        "speed_per_epoch": speed[:, :HIDDEN].tolist(),
        "loss_per_epoch": list(hist.history["loss"]),
    }


def plot_speeds(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    lo = min(np.min(res[k]["speed_per_epoch"]) for k in NETS)
    hi = max(np.max(res[k]["speed_per_epoch"]) for k in NETS)
    for ax, kind in zip(axes[:2], NETS):
        sp = np.array(res[kind]["speed_per_epoch"])
        ep = np.arange(1, sp.shape[0] + 1)
        for k in range(HIDDEN):
            ax.plot(ep, sp[:, k], marker="o", ms=3, label=f"hidden layer {k + 1}")
        ax.set_yscale("log")
        ax.set_ylim(lo / 2, hi * 2)
        ax.set_xlabel("epoch")
        ax.set_title(f"{LABELS[kind]}: learning speed mean |dL/dw|", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    for kind in NETS:
        c = res[kind]["loss_per_epoch"]
        axes[2].plot(np.arange(1, len(c) + 1), c, marker="o", ms=3, label=LABELS[kind])
    axes[2].set_xlabel("epoch")
    axes[2].set_title("training loss (cross-entropy)", fontsize=9)
    axes[2].set_ylim(bottom=0)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.suptitle("4 hidden layers of 30 on the digits, SGD: gradients vanish toward the input with "
                 "sigmoid, not with ReLU + He", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(small=False, seed=0, plot=None, verbose=True, threads=None):
    """Train both nets; print and return ``{"sigmoid": {...}, "relu_he": {...}}`` with, per net,
    ``speed_epoch1`` (mean |dL/dw| of hidden layers 1..4 and the output layer in the first
    epoch), ``ratio_epoch1`` (layer 4 / layer 1), ``ratio_last``, ``train_loss``,
    ``test_accuracy``, ``warnings`` (fastnn's DiagnosticWarning messages) and the curves.
    ``threads`` does not change the numbers (fastnn is bit-identical on any thread count)."""
    cfg = SETTINGS[bool(small)]
    data = split(cfg["n_train"], seed)
    res = {kind: train(kind, data, cfg, seed, threads) for kind in NETS}
    if verbose:
        s, r = res["sigmoid"], res["relu_he"]
        print(f"digits: {cfg['n_train']} training / {data[3].size} held-out examples; 64-30-30-30-30-10, "
              f"cross-entropy, SGD lr {LR:g}, batch {BATCH}, {cfg['epochs']} epochs, seed {seed}")
        print("learning speed (mean |dL/dw|) per layer in the first epoch:")
        print(f"{'layer':<10} {'sigmoid':>11} {'ReLU + He':>11}")
        for k in range(HIDDEN + 1):
            name = f"hidden {k + 1}" if k < HIDDEN else "output"
            print(f"{name:<10} {s['speed_epoch1'][k]:>11.3e} {r['speed_epoch1'][k]:>11.3e}")
        print(f"{'4 / 1':<10} {s['ratio_epoch1']:>10.1f}x {r['ratio_epoch1']:>10.2f}x   "
              f"(hidden layer 4's speed over hidden layer 1's)")
        print(f"in the last epoch: layer 4 / layer 1 = {s['ratio_last']:.1f}x (sigmoid), "
              f"{r['ratio_last']:.2f}x (ReLU + He)")
        print(f"sigmoid units saturated (|z| > 2) in epoch 1: {s['saturated_epoch1']:.1%} -- the gradient "
              "vanishes through sigmoid'(z) <= 1/4 per layer, not through saturation")
        print(f"dead ReLU units in epoch 1: {r['dead_epoch1']:.1%}")
        print(f"after {cfg['epochs']} epochs: sigmoid training loss {s['train_loss']:.3f}, held-out accuracy "
              f"{s['test_accuracy']:.1%}; ReLU + He training loss {r['train_loss']:.3f}, held-out accuracy "
              f"{r['test_accuracy']:.1%}")
        for kind in NETS:
            for msg in res[kind]["warnings"]:
                print(f"fastnn warned ({LABELS[kind]}): {msg}")
        if any(res[kind]["warnings"] for kind in NETS):
            print("(the warning names layers by their index in the Sequential: layer 0 is hidden layer 1, "
                  f"layer {2 * HIDDEN} the output layer; it compares the first layer with the last)")
    if plot:
        plot_speeds(res, plot)
        if verbose:
            print(f"learning-speed plot written to {plot}")
    return res


if __name__ == "__main__":
    from _cli import run_example

    run_example(main, __doc__, plot_help="write learning speed per layer over epochs (log scale) to this PNG",
                seed_help="seed of the split, initialisation and shuffling")
