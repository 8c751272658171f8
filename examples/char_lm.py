"""A character-level language model: Embedding -> LSTM -> Dense on every step.

The text is the Python documentation's help topics that ship with the standard library
(``pydoc_data.topics``, about 465,000 characters). Every character is a token; the last 10% of
the text is held out. The training text is cut into windows of T characters, and at every step
of a window the network predicts the next character: labels (N, T), a Dense on every step of
``LSTM(return_sequences=True)`` and per-step ``CrossEntropy``. Each window starts from a zero
state, so the model sees at most T characters of context.

The score is bits per character on the held-out text (the mean cross-entropy in nats / ln 2).
The baseline is the unigram model, each character predicted by its frequency in the training
text: its cross-entropy on the held-out text is the unigram entropy, about 4.7 bits/char. After
each epoch the script prints both; at the end it samples a few strings from a prompt (the last
T characters of the growing text through ``forward``, the next character drawn from the
softmax at a temperature).

Training runs for a time budget (``--minutes``; the last epoch started finishes) or until the
held-out loss has not improved for 3 epochs; the weights of the best held-out epoch are kept.

    python examples/char_lm.py                  # 5 minutes
    python examples/char_lm.py --minutes 2
    python examples/char_lm.py --small          # a slice of the text, a small model, a few seconds
"""
import math
import sys
import time

import numpy as np

import fastnn as fn

SETTINGS = {False: dict(chars=None, T=100, emb=32, hidden=256, batch=32, minutes=5.0, max_epochs=1000),
            True: dict(chars=60000, T=32, emb=16, hidden=64, batch=32, minutes=None, max_epochs=6)}
LR, CLIP, DROPOUT, PATIENCE, VAL_FRACTION = 2e-3, 1.0, 0.2, 3, 0.1
PROMPTS = ("The ", "def ", "An object ")
TEMPERATURE, SAMPLE_CHARS = 0.7, 160


def load_text(n_chars=None):
    """The help topics of the Python documentation, joined (the first ``n_chars``, if given)."""
    from pydoc_data import topics

    text = "".join(topics.topics.values())
    return text[:n_chars] if n_chars else text


def windows(ids, T):
    """(X, y): non-overlapping windows of T ids and, for each step, the id that follows it."""
    n = (len(ids) - 1) // T
    X = ids[:n * T].reshape(n, T)
    y = ids[1:n * T + 1].reshape(n, T)
    return X, y


def unigram_bits(train_ids, val_ids, vocab):
    """Cross-entropy in bits/char of training-text frequencies (add-one smoothed) on the held-out text."""
    p = (np.bincount(train_ids, minlength=vocab) + 1.0) / (len(train_ids) + vocab)
    return float(-np.mean(np.log2(p[val_ids])))


class TimeBudget(fn.Callback):
    """Stop when the time left is less than the last epoch took."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        left = self.seconds - (time.perf_counter() - self.start)
        if left < logs["time"]:
            self.model.stop_training = True


class Progress(fn.Callback):
    """One line per epoch: training and held-out bits per character."""

    def __init__(self, verbose):
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        if self.verbose:
            print(f"epoch {epoch + 1:3d}  train {logs['loss'] / math.log(2):.3f} bits/char  held-out "
                  f"{logs['val_loss'] / math.log(2):.3f} bits/char  (next-char accuracy {logs['val_accuracy']:.3f})"
                  f"  {logs['time']:.1f} s", flush=True)


def sample(model, prompt, stoi, itos, T, n_chars, temperature, rng):
    """``prompt`` continued by ``n_chars`` characters drawn one at a time from the softmax of the
    last step at ``temperature``; the input is the last T characters (a shorter text is padded at
    the end and read at its length)."""
    ids = [stoi[c] for c in prompt if c in stoi]
    for _ in range(n_chars):
        ctx = ids[-T:]
        x = np.zeros((1, T), dtype=np.int64)
        x[0, :len(ctx)] = ctx
        logits = model.forward(x, lengths=[len(ctx)])[0, len(ctx) - 1].astype(np.float64) / temperature
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return "".join(itos[i] for i in ids)


def main(small=False, seed=0, plot=None, verbose=True, threads=None, minutes=None):
    """Train for ``minutes`` (default: the mode's); print and return ``{"unigram_bits",
    "train_bits", "val_bits" (per epoch), "epochs", "best_epoch" (1-based, the weights kept),
    "seconds", "samples", "chars", "vocab", "params"}``."""
    cfg = SETTINGS[bool(small)]
    minutes = cfg["minutes"] if minutes is None else float(minutes)
    text = load_text(cfg["chars"])
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    itos = np.array(chars)
    ids = np.array([stoi[c] for c in text], dtype=np.int64)
    cut = int(len(ids) * (1 - VAL_FRACTION))
    T, V = cfg["T"], len(chars)
    X, y = windows(ids[:cut], T)
    Xv, yv = windows(ids[cut:], T)
    base = unigram_bits(ids[:cut], ids[cut + 1:], V)
    model = fn.Sequential(fn.Embedding(V, cfg["emb"]), fn.LSTM(cfg["emb"], cfg["hidden"], return_sequences=True),
                          fn.Dropout(DROPOUT), fn.Dense(cfg["hidden"], V), input_shape=(T,), seed=seed)
    if verbose:
        print(f"char-level LM on pydoc_data.topics: {cut:,} training / {len(ids) - cut:,} held-out characters, "
              f"vocabulary {V}")
        print(f"Embedding({V}, {cfg['emb']}) -> LSTM({cfg['emb']}, {cfg['hidden']}) -> Dropout({DROPOUT:g}) -> "
              f"Dense({cfg['hidden']}, {V}) on every step: {model.n_params:,} parameters; windows of T={T}, batch "
              f"{cfg['batch']}, Adam lr {LR:g}, clip_norm {CLIP:g}, early stopping (patience {PATIENCE})"
              + (f", {minutes:g} minutes" if minutes else f", at most {cfg['max_epochs']} epochs"))
        print(f"unigram baseline (training frequencies on the held-out text): {base:.3f} bits/char", flush=True)
    # the best held-out epoch's weights are kept for sampling: the model overfits the 420k characters
    stop = fn.EarlyStopping(monitor="val_loss", patience=PATIENCE, restore_best=True)
    callbacks = [Progress(verbose), stop] + ([TimeBudget(60 * minutes)] if minutes else [])
    t0 = time.perf_counter()
    h = model.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=LR), epochs=cfg["max_epochs"],
                  batch_size=cfg["batch"], clip_norm=CLIP, validation_data=(Xv, yv), callbacks=callbacks,
                  seed=seed, threads=threads)
    seconds = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    samples = [sample(model, p, stoi, itos, T, SAMPLE_CHARS, TEMPERATURE, rng) for p in PROMPTS]
    res = {"unigram_bits": base, "train_bits": [v / math.log(2) for v in h.history["loss"]],
           "val_bits": [v / math.log(2) for v in h.history["val_loss"]], "epochs": len(h.epoch),
           "best_epoch": h.best_epoch + 1,
           "seconds": seconds, "samples": samples, "chars": len(ids), "vocab": V, "params": model.n_params}
    if verbose:
        print(f"{res['epochs']} epochs in {seconds:.0f} s; kept epoch {res['best_epoch']}: held-out "
              f"{min(res['val_bits']):.3f} bits/char against the unigram {base:.3f}")
        print(f"samples at temperature {TEMPERATURE:g}:")
        for s in samples:
            print("  " + repr(s))
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ep = np.arange(1, res["epochs"] + 1)
        ax.plot(ep, res["train_bits"], marker="o", ms=3, label="training")
        ax.plot(ep, res["val_bits"], marker="o", ms=3, label="held-out")
        ax.axhline(base, color="gray", ls="--", lw=1, label="unigram")
        ax.set_xlabel("epoch")
        ax.set_ylabel("bits per character")
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=80)
        plt.close(fig)
        if verbose:
            print(f"plot written to {plot}")
    return res


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from _cli import run_example

    run_example(main, __doc__, "plot bits per character per epoch",
                extra=[("--minutes", dict(type=float, default=None,
                                          help="training time budget in minutes (default 5; --small: 6 epochs)"))])
