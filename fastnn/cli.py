"""The ``fastnn`` command line: train an MLP on the bundled digits or on your CSV/NPZ."""
import argparse
import os
import sys
import time

import numpy as np


def _load(path, target):
    """(X, y) from a .npz (arrays X and y) or a CSV (numeric; the label in column ``target``)."""
    from .data import load_digits

    if path is None:
        return load_digits()
    if not os.path.exists(path):
        raise SystemExit(f"fastnn: no such file: {path}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f or "y" not in f:
                raise SystemExit(f"fastnn: {path} must hold arrays named 'X' and 'y' (has {list(f.keys())})")
            return f["X"], f["y"]
    with open(path) as f:
        first = f.readline()
    delim = "," if "," in first else None
    try:
        [float(v) for v in first.replace(",", " ").split()]
        header = None
    except ValueError:
        header = [h.strip() for h in first.strip().split(delim)]
    try:
        arr = np.loadtxt(path, delimiter=delim, skiprows=1 if header else 0, ndmin=2)
    except ValueError as e:
        raise SystemExit(f"fastnn: {path}: {e} (expected a numeric CSV)") from None
    col = -1
    if target is not None:
        if header and target in header:
            col = header.index(target)
        else:
            try:
                col = int(target)
            except ValueError:
                raise SystemExit(f"fastnn: --target {target!r} is neither a column name nor an index") from None
    y = arr[:, col]
    X = np.delete(arr, col if col >= 0 else arr.shape[1] + col, axis=1)
    return X, y


def _split(y, test_size, seed):
    """Stratified train/test indices keyed by seed."""
    from .data import rng_for

    rng = rng_for(seed, 0x5B17)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.extend(idx[:int(round(len(idx) * test_size))])
    mask = np.zeros(len(y), bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _train(args):
    import fastnn as fn

    X, y = _load(args.data, args.target)
    X = np.asarray(X, dtype=np.float64)
    classes, y_enc = np.unique(y, return_inverse=True)
    if args.task == "auto":
        task = "classify" if (len(classes) <= 100 and np.all(classes == np.round(classes))) else "regress"
    else:
        task = args.task
    if not 0 < args.test_size < 1:
        raise SystemExit("fastnn: --test-size must be in (0, 1)")
    tr, te = _split(y_enc if task == "classify" else np.zeros(len(y), int), args.test_size, args.seed)
    if not args.no_standardize:
        mu, sd = X[tr].mean(0), X[tr].std(0)
        sd[sd == 0] = 1
        X = (X - mu) / sd
    acts = {"relu": fn.ReLU, "tanh": fn.Tanh, "sigmoid": fn.Sigmoid, "leaky_relu": fn.LeakyReLU}
    sizes = [X.shape[1]] + args.hidden
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [fn.Dense(a, b), acts[args.activation]()]
        if args.dropout:
            layers.append(fn.Dropout(args.dropout))
    n_out = len(classes) if task == "classify" else 1
    layers.append(fn.Dense(sizes[-1], n_out))
    model = fn.Sequential(*layers, dtype=args.dtype, seed=args.seed)
    opts = {"sgd": lambda: fn.SGD(lr=args.lr, momentum=args.momentum),
            "nesterov": lambda: fn.SGD(lr=args.lr, momentum=args.momentum or 0.9, nesterov=True),
            "adam": lambda: fn.Adam(lr=args.lr), "adamw": lambda: fn.AdamW(lr=args.lr),
            "adagrad": lambda: fn.Adagrad(lr=args.lr), "rmsprop": lambda: fn.RMSprop(lr=args.lr)}
    loss = fn.CrossEntropy() if task == "classify" else fn.MSE()
    target = y_enc if task == "classify" else np.asarray(y, dtype=np.float64)
    name = args.data or "bundled digits (UCI optical digits, 1797 x 8x8)"
    print(f"data: {name}: {len(X)} examples, {X.shape[1]} features"
          + (f", {len(classes)} classes" if task == "classify" else "")
          + f"; training on {len(tr)}, holding out {len(te)}")
    print(f"model: {' -> '.join(map(str, sizes + [n_out]))} ({args.activation}), {model.n_params} parameters, "
          f"{args.optimizer} lr={args.lr}, batch {args.batch_size}, {fn.get_num_threads() if args.threads is None else args.threads} threads")

    class Line(fn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            parts = [f"epoch {epoch + 1:3d}/{args.epochs}", f"loss {logs['loss']:.4f}"]
            if "val_accuracy" in logs:
                parts.append(f"held-out accuracy {logs['val_accuracy']:.4f}")
            elif "val_loss" in logs:
                parts.append(f"held-out loss {logs['val_loss']:.4f}")
            parts.append(f"{logs['time'] * 1e3:.0f} ms")
            print("  ".join(parts), flush=True)

    t0 = time.perf_counter()
    model.fit(X[tr], target[tr], loss=loss, optimizer=opts[args.optimizer](), epochs=args.epochs,
              batch_size=args.batch_size, seed=args.seed, threads=args.threads,
              validation_data=(X[te], target[te]), callbacks=[] if args.quiet else [Line()])
    took = time.perf_counter() - t0
    res = model.evaluate(X[te], target[te])
    if task == "classify":
        print(f"held-out accuracy: {res['accuracy']:.4f} ({len(te)} examples), trained in {took:.2f} s")
    else:
        print(f"held-out MSE: {res['loss']:.6g} ({len(te)} examples), trained in {took:.2f} s")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="fastnn", description="Fast, deterministic neural-network training on the CPU.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train an MLP (default: on the bundled digits) and report held-out accuracy")
    t.add_argument("data", nargs="?", help="CSV (numeric, label in the last column) or NPZ (arrays X, y)")
    t.add_argument("--target", help="label column of a CSV: a header name or an index (default: last)")
    t.add_argument("--task", choices=["auto", "classify", "regress"], default="auto")
    t.add_argument("--hidden", type=int, nargs="+", default=[128], help="hidden layer sizes (default 128)")
    t.add_argument("--activation", choices=["relu", "tanh", "sigmoid", "leaky_relu"], default="relu")
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--optimizer", choices=["sgd", "nesterov", "adam", "adamw", "adagrad", "rmsprop"], default="sgd")
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (stratified)")
    t.add_argument("--no-standardize", action="store_true", help="skip feature standardisation")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    sub.add_parser("info", help="show the build: version, OpenMP, threads, BLAS")
    args = p.parse_args(argv)
    if args.cmd == "info":
        from . import show_config
        show_config()
        return 0
    try:
        return _train(args)
    except (ValueError, TypeError) as e:
        print(f"fastnn: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
