"""Weight sharing: a small CNN against an MLP of the same size on the bundled 8x8 digits.

A convolution applies the same few filters at every position of the image, so its weights are
shared across the picture; a Dense layer gives every pixel its own weights. With the same
number of parameters (about 1,900 here) the CNN spends them on local feature detectors and
the MLP on one big pixel-to-unit map (its first layer alone has 1,625 weights; the CNN's first
convolution has 80). Both are trained with Adam on the same split, batches and epochs; the
script prints their parameter counts and held-out accuracies, and the accuracy per epoch with
--plot. On seeds 0-4 (full mode) the CNN averages 97.7% held-out accuracy against the MLP's
97.1% and is ahead on four of the five; these 8x8 digits are small enough that the MLP is
close behind.

    CNN: Conv2d(1, 8, 3, pad 1), ReLU, MaxPool2d(2), Conv2d(8, 16, 3, pad 1), ReLU, MaxPool2d(2),
         Flatten, Dense(64, 10)
    MLP: Dense(64, 25), ReLU, Dense(25, 10)

    python examples/cnn_digits.py                 # full mode, a few seconds
    python examples/cnn_digits.py --small         # fewer epochs
    python examples/cnn_digits.py --plot acc.png
"""
import sys

import numpy as np

import fastnn as fn

SETTINGS = {False: dict(epochs=40), True: dict(epochs=12)}
LR, BATCH, HIDDEN = 3e-3, 32, 25


def models(seed):
    cnn = fn.Sequential(fn.Conv2d(1, 8, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2),
                        fn.Conv2d(8, 16, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2),
                        fn.Flatten(), fn.Dense(64, 10), input_shape=(1, 8, 8), seed=seed)
    mlp = fn.Sequential(fn.Dense(64, HIDDEN), fn.ReLU(), fn.Dense(HIDDEN, 10), seed=seed)
    return {"cnn": cnn, "mlp": mlp}


def main(small=False, seed=0, plot=None, verbose=True, threads=None):
    """Train both; return ``{name: {"params", "test_accuracy", "val_accuracy" (per epoch)}}``."""
    X, y = fn.data.load_digits()
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = perm[:1200], perm[1200:]
    out = {}
    for name, model in models(seed).items():
        h = model.fit(X[tr].reshape(-1, 1, 8, 8) if name == "cnn" else X[tr], y[tr], loss=fn.CrossEntropy(),
                      optimizer=fn.Adam(lr=LR), epochs=SETTINGS[bool(small)]["epochs"], batch_size=BATCH,
                      validation_data=(X[te].reshape(-1, 1, 8, 8) if name == "cnn" else X[te], y[te]),
                      seed=seed, threads=threads)
        out[name] = {"params": model.n_params, "test_accuracy": h.history["val_accuracy"][-1],
                     "val_accuracy": h.history["val_accuracy"]}
    if verbose:
        print(f"digits: {len(tr)} training / {len(te)} held-out images (8x8), Adam lr {LR:g}, batch {BATCH}, "
              f"{SETTINGS[bool(small)]['epochs']} epochs, seed {seed}")
        for name, r in out.items():
            print(f"{name}: {r['params']:>5d} parameters, held-out accuracy {r['test_accuracy']:.1%}")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, r in out.items():
            ax.plot(np.arange(1, len(r["val_accuracy"]) + 1), r["val_accuracy"],
                    label=f"{name} ({r['params']} parameters)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("held-out accuracy")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=80)
        plt.close(fig)
    return out


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from _cli import run_example

    run_example(main, __doc__, "plot held-out accuracy per epoch")
