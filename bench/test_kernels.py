"""pytest-benchmark micro-benchmarks of fastnn's hot paths.

Run explicitly with ``pytest bench/`` (the main suite only collects ``tests/``).
Compare runs with ``pytest bench/ --benchmark-autosave`` then
``pytest-benchmark compare``.
"""

import importlib.util
import os
import sys

import numpy as np
import pytest

if importlib.util.find_spec("fastnn") is None:
    # Not installed: use an in-place build in this checkout, if there is one.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
fn = pytest.importorskip("fastnn")
if not hasattr(fn, "Sequential"):
    # The unbuilt source tree imports as an empty namespace package.
    pytest.skip("fastnn is not built", allow_module_level=True)

from fastnn.bench import N_CLASSES, N_FEATURES, make_data  # noqa: E402  (the peer benchmark's data)


def make_mlp(hidden):
    return fn.Sequential(fn.Dense(N_FEATURES, hidden), fn.ReLU(), fn.Dense(hidden, hidden),
                         fn.ReLU(), fn.Dense(hidden, N_CLASSES), seed=0)


def test_forward_4096_h256(benchmark):
    X, _ = make_data(4096)
    model = make_mlp(256)
    benchmark.extra_info["examples"] = len(X)
    out = benchmark(model.forward, X)
    assert out.shape == (len(X), N_CLASSES)


def test_train_step_b128_h256(benchmark):
    X, y = make_data(128)
    model = make_mlp(256)
    opt = fn.SGD(lr=0.01, momentum=0.9)
    loss = fn.CrossEntropy()
    benchmark.extra_info["examples"] = len(X)
    benchmark(model.train_step, X, y, loss=loss, optimizer=opt)


def test_fit_epoch_8192_b32_h64(benchmark):
    X, y = make_data(8192)
    model = make_mlp(64)
    opt = fn.SGD(lr=0.01, momentum=0.9)
    loss = fn.CrossEntropy()

    def epoch():
        model.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=32,
                  shuffle=True, seed=0, verbose=0)

    benchmark.extra_info["examples"] = len(X)
    # A whole epoch is long enough to time directly; a fixed round count keeps
    # pytest-benchmark's calibration from running it dozens of times.
    benchmark.pedantic(epoch, rounds=5, iterations=1, warmup_rounds=1)
