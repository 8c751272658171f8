"""The ``fastnn`` command line: train an MLP on the bundled digits or on your CSV/NPZ, save it,
evaluate it and predict with it."""
import argparse
import json
import os
import sys
import time

import numpy as np


def _need_file(path):
    if not os.path.isfile(path):
        raise SystemExit(f"fastnn: no such file: {path}")


def _read_csv(path):
    """(numeric array, header names or None) of a CSV (comma- or whitespace-separated)."""
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
    return arr, header


def _target_column(target, header, n_cols):
    """Index of the label column: ``target`` as a header name or an index, else the last."""
    if target is None:
        return n_cols - 1
    if header and target in header:
        return header.index(target)
    try:
        col = int(target)
    except ValueError:
        raise SystemExit(f"fastnn: --target {target!r} is neither a column name nor an index") from None
    if not -n_cols <= col < n_cols:
        raise SystemExit(f"fastnn: --target {col} is out of range for {n_cols} columns")
    return col % n_cols


def _load(path, target):
    """(X, y) from a .npz (arrays X and y) or a CSV (numeric; the label in column ``target``)."""
    from .data import load_digits

    if path is None:
        return load_digits()
    _need_file(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f or "y" not in f:
                raise SystemExit(f"fastnn: {path} must hold arrays named 'X' and 'y' (has {list(f.keys())})")
            return f["X"], f["y"]
    arr, header = _read_csv(path)
    col = _target_column(target, header, arr.shape[1])
    return np.delete(arr, col, axis=1), arr[:, col]


def _load_for(path, target, n_features, need_y):
    """(X, y or None) for a trained model: an NPZ with X (and y), or a CSV with the model's
    ``n_features`` columns, or those plus the label column (``target``)."""
    _need_file(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f or (need_y and "y" not in f):
                need = "'X' and 'y'" if need_y else "'X'"
                raise SystemExit(f"fastnn: {path} must hold arrays named {need} (has {list(f.keys())})")
            X, y = f["X"], (f["y"] if "y" in f else None)
        if X.ndim != 2 or X.shape[1] != n_features:
            raise SystemExit(f"fastnn: {path}: X has shape {X.shape}; the model takes {n_features} features")
        return X, y
    arr, header = _read_csv(path)
    if arr.shape[1] == n_features + 1:
        col = _target_column(target, header, arr.shape[1])
        return np.delete(arr, col, axis=1), arr[:, col]
    if arr.shape[1] == n_features and not need_y:
        return arr, None
    want = f"{n_features + 1} (the model's {n_features} features and the label)" if need_y else \
        f"{n_features} (the model's features) or {n_features + 1} (with the label column)"
    raise SystemExit(f"fastnn: {path} has {arr.shape[1]} columns; expected {want}")


def _image_shape(spec, n_features):
    """(C, H, W) from ``--cnn`` values (none: a square one-channel image)."""
    if not spec:
        side = int(round(n_features ** 0.5))
        if side * side != n_features:
            raise SystemExit(f"fastnn: --cnn without C H W needs a square number of features; {n_features} "
                             "is not: pass --cnn C H W")
        return (1, side, side)
    if len(spec) != 3 or min(spec) < 1 or spec[0] * spec[1] * spec[2] != n_features:
        raise SystemExit(f"fastnn: --cnn C H W must be three positive ints with C*H*W = {n_features} (the "
                         f"number of features), got {' '.join(map(str, spec))}")
    return tuple(spec)


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

    comm, say = None, print
    if args.distributed:
        from ._util import mpi
        from .distributed import threads_per_rank

        if args.diagnostics or args.plot:
            raise ValueError("--diagnostics and --plot are not available with --distributed")
        comm = mpi().COMM_WORLD
        if args.threads is None:
            args.threads = threads_per_rank(comm)
        if comm.Get_rank() != 0:        # rank 0 alone prints and saves
            args.save = None

            def say(*a, **k):
                pass
    if args.save is not None:
        from ._util import check_write_path

        check_write_path(args.save)      # before training, not after it
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
    mu = sd = None
    if not args.no_standardize:
        mu, sd = X[tr].mean(0), X[tr].std(0)
        sd[sd == 0] = 1
        X = (X - mu) / sd
    acts = {"relu": fn.ReLU, "tanh": fn.Tanh, "sigmoid": fn.Sigmoid, "leaky_relu": fn.LeakyReLU}
    n_out = len(classes) if task == "classify" else 1
    layers, input_shape, sizes = [], None, [X.shape[1]] + args.hidden
    if args.cnn is not None:
        input_shape = _image_shape(args.cnn, X.shape[1])
        c, h, w = input_shape
        for width in (16, 32):          # two conv blocks, each halving the image while it is >= 4 wide
            layers += [fn.Conv2d(c, width, 3, padding=1), fn.BatchNorm2d(width), acts[args.activation]()]
            if h >= 4 and w >= 4:
                layers.append(fn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = width
        layers.append(fn.Flatten())
        sizes = [c * h * w] + args.hidden
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [fn.Dense(a, b), acts[args.activation]()]
        if args.dropout:
            layers.append(fn.Dropout(args.dropout))
    layers.append(fn.Dense(sizes[-1], n_out))
    model = fn.Sequential(*layers, dtype=args.dtype, seed=args.seed, input_shape=input_shape)
    opts = {"sgd": lambda: fn.SGD(lr=args.lr, momentum=args.momentum),
            "nesterov": lambda: fn.SGD(lr=args.lr, momentum=args.momentum or 0.9, nesterov=True),
            "adam": lambda: fn.Adam(lr=args.lr), "adamw": lambda: fn.AdamW(lr=args.lr),
            "adagrad": lambda: fn.Adagrad(lr=args.lr), "rmsprop": lambda: fn.RMSprop(lr=args.lr)}
    loss = fn.CrossEntropy() if task == "classify" else fn.MSE()
    target = y_enc if task == "classify" else np.asarray(y, dtype=np.float64)
    name = args.data or "bundled digits (UCI optical digits, 1797 x 8x8)"
    say(f"data: {name}: {len(X)} examples, {X.shape[1]} features"
        + (f", {len(classes)} classes" if task == "classify" else "")
        + f"; training on {len(tr)}, holding out {len(te)}")
    arch = ' -> '.join(map(str, sizes + [n_out]))
    if input_shape is not None:
        arch = f"image {'x'.join(map(str, input_shape))} -> conv 16 + BN -> conv 32 + BN -> " + arch
    say(f"model: {arch} ({args.activation}), {model.n_params} parameters, "
        f"{args.optimizer} lr={args.lr}, batch {args.batch_size}, {fn.get_num_threads() if args.threads is None else args.threads} threads"
        + (f", precision {args.precision}" if args.precision else "")
        + (f" x {comm.Get_size()} ranks" if comm is not None else ""))

    class Line(fn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            parts = [f"epoch {epoch + 1:3d}/{args.epochs}", f"loss {logs['loss']:.4f}"]
            if "val_accuracy" in logs:
                parts.append(f"held-out accuracy {logs['val_accuracy']:.4f}")
            elif "val_loss" in logs:
                parts.append(f"held-out loss {logs['val_loss']:.4f}")
            parts.append(f"{logs['time'] * 1e3:.0f} ms")
            say("  ".join(parts), flush=True)

    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise SystemExit("fastnn: --plot needs matplotlib: pip install 'fastnn-cpu[plot]'") from None
    t0 = time.perf_counter()
    hist = model.fit(X[tr], target[tr], loss=loss, optimizer=opts[args.optimizer](), epochs=args.epochs,
                     batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                     validation_data=(X[te], target[te]), callbacks=[] if args.quiet else [Line()],
                     diagnostics=True if args.diagnostics or args.plot else None, comm=comm,
                     drop_last=args.cnn is not None and len(tr) > args.batch_size, precision=args.precision)
    took = time.perf_counter() - t0
    if args.diagnostics:
        d = hist.diagnostics
        say("per-layer diagnostics of the last epoch (layer: learning speed mean|dL/dw|, "
            "update/weight ratio, saturated, dead):")
        for k, name in enumerate(hist.diagnostic_layers):
            say(f"  layer {name}: {d['grad_mean_abs'][-1][k]:.3e}  {d['update_ratio'][-1][k]:.3e}  "
                f"{d['saturated'][-1][k]:.3f}  {d['dead'][-1][k]:.3f}")
    if args.plot is not None:
        import os

        from .diagnostics import plot_diagnostics

        hist.plot(path=args.plot)
        root, ext = os.path.splitext(args.plot)
        plot_diagnostics(hist, path=root + "-diagnostics" + (ext or ".png"))
        say(f"wrote {args.plot} (loss and accuracy) and {root}-diagnostics{ext or '.png'} (per-layer diagnostics)")
    res = model.evaluate(X[te], target[te], precision=args.precision)
    if task == "classify":
        say(f"held-out accuracy: {res['accuracy']:.4f} ({len(te)} examples), trained in {took:.2f} s")
    else:
        say(f"held-out MSE: {res['loss']:.6g} ({len(te)} examples), trained in {took:.2f} s")
    if args.save is not None:
        from .io import save_model

        pre = {"task": task, "mean": None if mu is None else mu.tolist(),
               "std": None if sd is None else sd.tolist(),
               "classes": _label_list(classes) if task == "classify" else None, "target": args.target}
        save_model(model, args.save, metadata={"preprocess": json.dumps(pre)})
        say(f"saved the model and its preprocessing to {args.save}")
    return 0


def _label_list(classes):
    # integral labels (read from a CSV as floats) come back out as 3, not 3.0
    if np.all(classes == np.round(classes)):
        return [int(c) for c in classes]
    return [float(c) for c in classes]


def _open_model(path):
    """(model, preprocessing dict or None) from a file written by ``fastnn train --save`` or
    ``model.save``; the preprocessing entry is checked against the model."""
    from .io import load_model, read_metadata

    _need_file(path)
    model = load_model(path)
    raw = read_metadata(path).get("preprocess")
    if raw is None:
        return model, None
    try:
        pre = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError(f"{path}: the preprocess metadata is not valid JSON") from None
    keys = {"task", "mean", "std", "classes", "target"}
    if not isinstance(pre, dict) or set(pre) != keys or pre["task"] not in ("classify", "regress"):
        raise ValueError(f"{path}: the preprocess metadata must be an object with {sorted(keys)}")

    def numbers(v, n):
        return isinstance(v, list) and len(v) == n and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)

    if (pre["mean"] is None) != (pre["std"] is None) or pre["mean"] is not None and not (
            numbers(pre["mean"], model.n_features) and numbers(pre["std"], model.n_features)
            and min(pre["std"]) > 0):
        raise ValueError(f"{path}: preprocess mean and std must both be null or lists of "
                         f"{model.n_features} finite numbers (std > 0)")
    if pre["task"] == "classify" and not (numbers(pre["classes"], model.n_outputs)
                                          and np.all(np.diff(pre["classes"]) > 0)):
        raise ValueError(f"{path}: preprocess classes must list the model's {model.n_outputs} class "
                         "labels in increasing order")
    if pre["target"] is not None and not isinstance(pre["target"], str):
        raise ValueError(f"{path}: preprocess target must be a string or null")
    return model, pre


def _apply(model, pre, path, target, need_y):
    """Features (standardised as in training) and labels (as class indices for classifiers)."""
    if target is None and pre is not None:
        target = pre["target"]
    X, y = _load_for(path, target, model.n_features, need_y)
    X = np.asarray(X, dtype=np.float64)
    if pre is not None and pre["mean"] is not None:
        X = (X - np.array(pre["mean"])) / np.array(pre["std"])
    if y is not None and pre is not None and pre["task"] == "classify":
        classes = np.array(pre["classes"])
        idx = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
        unknown = classes[idx] != y
        if np.any(unknown):
            raise ValueError(f"{path}: label {y[unknown][0].item()} is not one of the model's classes "
                             f"{pre['classes']}")
        y = idx
    return X, y


def _evaluate(args):
    model, pre = _open_model(args.model)
    if model.loss is None:
        raise SystemExit(f"fastnn: {args.model} holds no loss (it was saved before training), "
                         "so there is nothing to evaluate against")
    X, y = _apply(model, pre, args.data, args.target, need_y=True)
    res = model.evaluate(X, y, threads=args.threads)
    print(f"examples: {len(X)}")
    print(f"loss: {res['loss']:.6g}")
    if "accuracy" in res:
        print(f"accuracy: {res['accuracy']:.4f}")
    return 0


def _predict(args):
    import fastnn as fn

    model, pre = _open_model(args.model)
    X, _ = _apply(model, pre, args.data, args.target, need_y=False)
    out = model.predict(X, threads=args.threads)
    fmt = "%.9g" if model.dtype == np.float32 else "%.17g"      # enough digits to round-trip
    classifier = pre["task"] == "classify" if pre is not None else (
        model.loss is not None and model.loss.classification)
    if args.proba and not classifier:
        raise SystemExit(f"fastnn: --proba needs a classifier; {args.model} is a regressor")
    if classifier and not args.proba:
        if pre is None and isinstance(model.loss, fn.BinaryCrossEntropy):
            out, fmt = (out > 0.5).astype(np.int64), "%d"          # one 0/1 decision per output
        else:
            idx = out.argmax(axis=1)
            labels = np.array(pre["classes"])[idx] if pre is not None else idx
            sys.stdout.write("".join(f"{v}\n" for v in labels.tolist()))
            return 0
    np.savetxt(sys.stdout, out, fmt=fmt, delimiter=",")
    return 0


def _export(args):
    from .onnx import export

    model, pre = _open_model(args.model)
    std = None
    if pre is not None and pre["mean"] is not None:
        std = (pre["mean"], pre["std"])
    meta = {"preprocess": json.dumps(pre)} if pre is not None else None
    export(model, args.out, opset=args.opset, standardize=std, metadata=meta)
    what = "standardised inside the graph" if std is not None else "as given"
    print(f"wrote {args.out}: input 'input' (N, {model.n_features}) {model.dtype.name}, {what}; "
          f"output 'output' (N, {model.n_outputs}), the raw outputs (logits) of model.forward")
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
    t.add_argument("--cnn", nargs="*", type=int, metavar="C H W",
                   help="a small CNN (two blocks of 3x3 conv, BatchNorm2d and max pooling, then the hidden layers; "
                        "the incomplete last batch of an epoch is skipped) over each "
                        "row read as a C x H x W image; without values, a square 1 x s x s image (the bundled "
                        "digits: 1 8 8)")
    t.add_argument("--optimizer", choices=["sgd", "nesterov", "adam", "adamw", "adagrad", "rmsprop"], default="sgd")
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--test-size", type=float, default=0.2, help="held-out fraction (stratified)")
    t.add_argument("--no-standardize", action="store_true", help="skip feature standardisation")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--precision", choices=["float32", "float64", "bf16-mixed"], default=None,
                   help="bf16-mixed: products on bfloat16 operands with float32 sums (AMX or AVX512-BF16 where "
                        "the CPU has them; float32 models); default: the --dtype")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.add_argument("--diagnostics", action="store_true",
                   help="measure per-layer learning speed, update ratio, saturated and dead units")
    t.add_argument("--plot", metavar="PNG", help="write training curves to PNG, and per-layer "
                   "diagnostics to PNG's name with '-diagnostics' (needs matplotlib)")
    t.add_argument("--distributed", action="store_true", help="train data-parallel across the ranks of "
                   "an MPI launch (mpiexec -n 4 fastnn train ... --distributed; needs pip install "
                   "'fastnn-cpu[mpi]'); --batch-size is the global batch")
    t.add_argument("--save", metavar="PATH", help="write the trained model and its preprocessing "
                   "(standardisation, class labels) to PATH, e.g. model.safetensors")
    e = sub.add_parser("evaluate", help="print the loss and accuracy of a saved model on labelled data")
    e.add_argument("model", help="a model file written by 'fastnn train --save' or model.save")
    e.add_argument("data", help="CSV (the model's features and the label column) or NPZ (arrays X, y)")
    pr = sub.add_parser("predict", help="print one prediction per line: the class label, or the value")
    pr.add_argument("model", help="a model file written by 'fastnn train --save' or model.save")
    pr.add_argument("data", help="CSV (the model's features, with or without the label column) or NPZ (X)")
    pr.add_argument("--proba", action="store_true", help="print class probabilities as CSV rows instead")
    for q in (e, pr):
        q.add_argument("--target", help="label column of a CSV: a header name or an index "
                       "(default: as in training, else the last)")
        q.add_argument("--threads", type=int, default=None)
    x = sub.add_parser("export", help="write a saved model as ONNX (needs pip install 'fastnn-cpu[onnx]')")
    x.add_argument("model", help="a model file written by 'fastnn train --save' or model.save")
    x.add_argument("out", help="the ONNX file to write, e.g. model.onnx")
    x.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    sub.add_parser("bench", help="compare training speed with the installed peers (torch, jax, "
                   "scikit-learn) on this machine; --quick: under a minute; --inference: predict's "
                   "speed against torch and onnxruntime", add_help=False)
    sub.add_parser("info", help="show the build: version, OpenMP, threads, BLAS")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        # the benchmark owns its options (fastnn bench --help lists them)
        from .bench import main as bench_main
        return bench_main(argv[1:], prog="fastnn bench")
    args = p.parse_args(argv)
    if args.cmd == "info":
        from . import show_config
        show_config()
        return 0
    try:
        return {"train": _train, "evaluate": _evaluate, "predict": _predict,
                "export": _export}[args.cmd](args)
    except (ValueError, TypeError, NotImplementedError, ImportError) as e:
        print(f"fastnn: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
