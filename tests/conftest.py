import contextlib
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

ACTS = ["identity", "sigmoid", "tanh", "relu", "leaky", "softmax"]


def make_act(name):
    import fastnn as fn
    return {"identity": fn.Identity(), "sigmoid": fn.Sigmoid(), "tanh": fn.Tanh(), "relu": fn.ReLU(),
            "leaky": fn.LeakyReLU(0.1), "softmax": fn.Softmax()}[name]


def make_targets(loss_name, n, c, rng, probs=False):
    """Targets for a loss: labels, probability rows, 0/1 matrix, or reals."""
    if loss_name in ("ce", "nll") and not probs:
        return rng.integers(0, c, n)
    if loss_name in ("ce", "kl"):
        p = rng.random((n, c)) + 0.05
        return p / p.sum(axis=1, keepdims=True)
    if loss_name == "bce":
        return (rng.random((n, c)) > 0.5).astype(np.float64)
    return rng.normal(size=(n, c))


def make_loss(name, **kw):
    import fastnn as fn
    return {"mse": fn.MSE, "bce": fn.BinaryCrossEntropy, "ce": fn.CrossEntropy, "nll": fn.NLLLoss,
            "kl": fn.KLDiv}[name](**kw)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@contextlib.contextmanager
def counting_gemm_calls(layer="dense"):
    """Yields a dict that holds, on exit, the Dense (or, with layer="conv", convolution) products run
    inside the block: {(path, kind): calls}, path "own" (the own GEMM kernels) or "blas", kind
    "forward"/"input_delta"/"weight_grad"."""
    from fastnn._core import _engine
    calls = {}
    _engine.count_gemm_calls(True)
    try:
        yield calls
    finally:
        calls.update(_engine.gemm_calls(layer))
        _engine.count_gemm_calls(False)
