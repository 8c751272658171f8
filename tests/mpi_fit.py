"""Run by tests/test_distributed.py under ``mpiexec -n 2``: distributed fits whose results every
rank writes to OUT/<case>.<rank>.npz (weights, history, or the error raised).

    mpiexec -n 2 python tests/mpi_fit.py OUT case [case ...]
"""
import json
import os
import sys

import numpy as np

import fastnn as fn


def data(n=203, d=12, k=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(dtype)
    y = (X[:, :k].argmax(axis=1) + (rng.random(n) < 0.1)) % k
    w = rng.uniform(0.5, 2.0, size=n)
    return X, y, w


def mlp(dtype="float64", seed=1):
    return fn.Sequential(fn.Dense(12, 32), fn.Tanh(), fn.Dropout(0.2), fn.Dense(32, 16), fn.ReLU(),
                         fn.Dense(16, 3), dtype=dtype, seed=seed)


def fit_args(case, out):
    """(model, X, y, kwargs) of a case; the single-process side of the test calls it too."""
    X, y, w = data(dtype=np.float32 if case == "float32" else np.float64)
    kw = dict(loss=fn.CrossEntropy(), epochs=3, batch_size=25, seed=5, threads=1)
    if case in ("full", "float32"):
        model = mlp("float32" if case == "float32" else "float64")
        kw.update(optimizer=fn.Adam(lr=3e-3), sample_weight=w, validation_split=0.2, l2=1e-3, clip_norm=0.5,
                  clip_value=0.2, schedule=fn.schedules.ReduceOnPlateau(factor=0.5, patience=0,
                                                                     threshold=0.3),
                  callbacks=[fn.EarlyStopping(monitor="val_loss", patience=1)],
                  checkpoint=os.path.join(out, f"{case}.ckpt.safetensors"))
    elif case == "idle_rank":      # 203 = 2 * 101 + 1: the last batch leaves rank 1 without examples
        model = mlp()
        kw.update(optimizer=fn.RMSprop(lr=1e-3), batch_size=101, epochs=2, l2=1e-2, l2_bias=True)
    elif case == "conv":
        model = fn.Sequential(fn.Conv2d(1, 4, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2), fn.Dropout2d(0.2),
                              fn.Flatten(), fn.Dense(4 * 2 * 1, 3), input_shape=(1, 4, 3), dtype="float64",
                              seed=2)
        kw.update(optimizer=fn.Adam(lr=1e-2), batch_size=33, epochs=2)
    elif case in ("sgd", "sgd_again"):
        model = mlp()
        kw.update(optimizer=fn.SGD(lr=0.05, momentum=0.9, nesterov=True), batch_size=7, epochs=2,
                  shuffle=False)
    elif case == "resume":
        model = fn.load(os.path.join(out, "resume.start.safetensors"))
        kw.update(epochs=2, batch_size=32)
        del kw["loss"]
    elif case in ("recurrent", "recurrent_mse"):     # per-step losses over sequences of several lengths
        rng = np.random.default_rng(7)
        X, lens = rng.normal(size=(203, 6, 3)), rng.integers(1, 7, 203)
        C = 3 if case == "recurrent" else 2
        model = fn.Sequential(fn.GRU(3, 8, return_sequences=True), fn.Dense(8, C), input_shape=(6, 3),
                              dtype="float64", seed=2)
        kw.update(optimizer=fn.Adam(lr=1e-2), epochs=2, lengths=lens, l2=1e-3)
        if case == "recurrent":
            y = rng.integers(0, 3, (203, 6))
            kw.update(class_weight="balanced", validation_split=0.2)
        else:
            y = rng.normal(size=(203, 6, 2))
            kw.update(loss=fn.MSE(), sample_weight=w, validation_data=(X[:50], y[:50]), validation_lengths=lens[:50])
    elif case == "diverge":
        model = mlp()
        kw.update(optimizer=fn.SGD(lr=1e200), epochs=1)
    else:
        model = mlp()
        kw.update(optimizer=fn.SGD(lr=0.1), epochs=1)
    return model, X, y, kw


def run(case, out, comm):
    model, X, y, kw = fit_args(case, out)
    if case == "mismatch" and comm.Get_rank() == 1:
        X = X.copy()
        X[100, 3] += 1.0
    if case == "fails_on_one":
        if comm.Get_rank() == 1:
            def broken(*a, **k):
                raise OSError("disk on fire")
            model._run = broken
    if case == "batchnorm":
        model = fn.Sequential(fn.Dense(12, 8), fn.BatchNorm1d(8), fn.ReLU(), fn.Dense(8, 3), dtype="float64")
    if case == "batchnorm2d":
        model = fn.Sequential(fn.Conv2d(1, 2, 3), fn.BatchNorm2d(2), fn.Flatten(), fn.Dense(4, 3),
                              input_shape=(1, 4, 3), dtype="float64")
    hist = model.fit(X, y, comm=comm, **kw)
    return model, hist


def main():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = sys.argv[1]
    for case in sys.argv[2:]:
        res = {}
        try:
            model, hist = run(case, out, comm)
            res["params"] = model._params
            res["history"] = np.array(json.dumps(hist.history))
            res["steps"] = np.array(model.steps_trained)
        except Exception as e:      # noqa: BLE001 - the test compares the errors
            res["error"] = np.array(f"{type(e).__name__}: {e}")
        np.savez(os.path.join(out, f"{case}.{comm.Get_rank()}.npz"), **res)


if __name__ == "__main__":
    main()
