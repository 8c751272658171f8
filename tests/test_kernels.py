"""Every kernel against the naive float64 reference and finite differences."""
import numpy as np
import pytest

import fastnn as fn
import reference as ref
from conftest import ACTS, make_act, make_loss, make_targets

LOSSES = ["mse", "bce", "ce", "nll", "kl"]


def build(acts, sizes, dtype="float64", seed=0, bias=True, out_act=None):
    layers = []
    for k in range(len(sizes) - 1):
        layers.append(fn.Dense(sizes[k], sizes[k + 1], bias=bias))
        a = acts[k] if k < len(sizes) - 2 else out_act
        if a is not None:
            layers.append(make_act(a))
    return fn.Sequential(*layers, dtype=dtype, seed=seed)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n", [1, 97, 101])
def test_forward_matches_reference(dtype, act, n, rng):
    m = build([act, act], [13, 19, 7, 5], dtype=dtype, out_act=act)
    X = rng.normal(size=(n, 13))
    _, acts = ref.forward(ref.model_spec(m), X)
    tol = 1e-5 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(m.forward(X), acts[-1], rtol=tol, atol=tol)
    assert m.forward(X).dtype == np.dtype(dtype)


def test_forward_without_bias_and_read_only_input(rng):
    m = build(["relu"], [9, 11, 3], bias=False)
    assert all(d.bias is None for _, d, _ in m._plan.dense)
    X = rng.normal(size=(21, 9))
    X.setflags(write=False)
    _, acts = ref.forward(ref.model_spec(m), X)
    np.testing.assert_allclose(m.forward(X), acts[-1], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("loss_name", LOSSES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss_value_matches_reference(loss_name, dtype, rng):
    out = rng.normal(size=(37, 6)).astype(dtype)
    y = make_targets(loss_name, 37, 6, rng)
    expect, _ = ref.loss(loss_name, out, y)
    got = make_loss(loss_name)(out, y)
    assert got == pytest.approx(expect, rel=1e-5 if dtype == "float32" else 1e-13)


@pytest.mark.parametrize("loss_name", ["bce", "ce"])
def test_losses_stay_finite_for_huge_logits(loss_name, rng):
    out = np.array([[1e30, -1e30, 0.0], [-3e4, 3e4, 5e3]])
    y = make_targets(loss_name, 2, 3, rng)
    for dtype in (np.float32, np.float64):
        assert np.isfinite(make_loss(loss_name)(out.astype(dtype), y))
    m = fn.Sequential(fn.Dense(3, 3), dtype="float64", seed=0)
    m.load_state_dict({"0.weight": np.eye(3) * 1e6, "0.bias": np.zeros(3)})
    val, grads = m.loss_and_grad(np.array([[50.0, -50.0, 3.0]]), y[:1], make_loss(loss_name))
    assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in grads)


def test_bce_matches_reference_with_pos_weight(rng):
    out = rng.normal(size=(23, 4))
    y = make_targets("bce", 23, 4, rng)
    pw = np.array([0.5, 2.0, 3.0, 1.0])
    expect, _ = ref.loss("bce", out, y, pos_weight=pw)
    assert fn.BinaryCrossEntropy(pos_weight=pw)(out, y) == pytest.approx(expect, rel=1e-13)


def test_class_weighted_cross_entropy_divides_by_weight_sum(rng):
    out = rng.normal(size=(31, 4))
    y = rng.integers(0, 4, 31)
    w = np.array([1.0, 5.0, 0.5, 2.0])
    expect, _ = ref.loss("ce", out, y, weight=w)
    assert fn.CrossEntropy(weight=w)(out, y) == pytest.approx(expect, rel=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "batchmean", "sum"])
def test_kldiv_reductions(reduction, rng):
    out = np.log(make_targets("kl", 9, 5, rng))
    y = make_targets("kl", 9, 5, rng)
    y[0, 0] = 0.0                     # 0 log 0 counts as 0
    expect, _ = ref.loss("kl", out, y, reduction=reduction)
    assert fn.KLDiv(reduction=reduction)(out, y) == pytest.approx(expect, rel=1e-13)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("loss_name", LOSSES)
def test_gradient_matches_reference(act, loss_name, rng):
    m = build([act, act], [11, 9, 7, 4], out_act=None, seed=3)
    X = rng.normal(size=(29, 11))
    y = make_targets(loss_name, 29, 4, rng)
    L, grads = m.loss_and_grad(X, y, make_loss(loss_name))
    eL, egrads = ref.loss_and_grad(ref.model_spec(m), X, y, loss_name)
    assert L == pytest.approx(eL, rel=1e-12)
    for g, e in zip(grads, egrads):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-13)


def _fd_check(m, X, y, loss, eps=1e-6):
    """Central finite differences on every parameter; returns the worst relative error."""
    _, grads = m.loss_and_grad(X, y, loss)
    g = np.concatenate([x.ravel() for x in grads])
    P = m._params
    num = np.empty_like(g)
    for i in range(P.size):
        old = P[i]
        P[i] = old + eps
        lp, _ = m.loss_and_grad(X, y, loss)
        P[i] = old - eps
        lm, _ = m.loss_and_grad(X, y, loss)
        P[i] = old
        num[i] = (lp - lm) / (2 * eps)
    return np.max(np.abs(num - g)) / max(np.max(np.abs(g)), 1e-12)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("loss_name", LOSSES)
def test_gradient_matches_finite_differences(act, loss_name, rng):
    """Every layer x loss combination, float64, relative error < 1e-6."""
    m = build([act], [5, 6, 3], seed=7, out_act=act if loss_name == "mse" else None)
    X = rng.normal(size=(7, 5))
    y = make_targets(loss_name, 7, 3, rng)
    assert _fd_check(m, X, y, make_loss(loss_name)) < 1e-6


@pytest.mark.parametrize("loss_name", ["ce", "kl"])
def test_probability_targets_gradient_finite_differences(loss_name, rng):
    m = build(["tanh"], [5, 6, 4], seed=1)
    X = rng.normal(size=(9, 5))
    y = make_targets(loss_name, 9, 4, rng, probs=True)
    assert _fd_check(m, X, y, make_loss(loss_name)) < 1e-6


def test_weighted_losses_finite_differences(rng):
    m = build(["relu"], [5, 6, 4], seed=2)
    X = rng.normal(size=(11, 5))
    assert _fd_check(m, X, rng.integers(0, 4, 11), fn.CrossEntropy(weight=[1.0, 3.0, 0.5, 2.0])) < 1e-6
    yb = make_targets("bce", 11, 4, rng)
    assert _fd_check(m, X, yb, fn.BinaryCrossEntropy(pos_weight=[2.0, 1.0, 0.3, 4.0])) < 1e-6
    assert _fd_check(m, X, rng.normal(size=(11, 4)), fn.MSE(reduction="sum")) < 1e-6


def test_sample_weight_gradient_is_weighted_mean(rng):
    m = build(["tanh"], [4, 5, 3], seed=0)
    X = rng.normal(size=(6, 4))
    y = rng.integers(0, 3, 6)
    w = np.array([1.0, 0.0, 2.0, 1.0, 3.0, 0.5])
    L, grads = m.loss_and_grad(X, y, fn.CrossEntropy(), sample_weight=w)
    # the same as repeating examples by integer weights (x2 to make them integers)
    reps = (w * 2).astype(int)
    L2, grads2 = m.loss_and_grad(np.repeat(X, reps, 0), np.repeat(y, reps), fn.CrossEntropy())
    assert L == pytest.approx(L2, rel=1e-12)
    for a, b in zip(grads, grads2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("act", ["relu", "sigmoid", "softmax"])
def test_float32_close_to_float64(act, rng):
    m64 = build([act], [13, 21, 5], dtype="float64", seed=5)
    m32 = build([act], [13, 21, 5], dtype="float32", seed=5)
    X = rng.normal(size=(97, 13))
    y = rng.integers(0, 5, 97)
    for p32, p64 in zip(m32.parameters(), m64.parameters()):
        np.testing.assert_array_equal(p32, p64.astype(np.float32))
    L64, g64 = m64.loss_and_grad(X, y, fn.CrossEntropy())
    L32, g32 = m32.loss_and_grad(X, y, fn.CrossEntropy())
    assert L32 == pytest.approx(L64, rel=1e-5)
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * np.abs(b).max())


def _dropout_net(h, p, mode, dtype="float64"):
    m = fn.Sequential(fn.Dense(h, h), fn.Dropout(p, mode=mode), dtype=dtype, seed=0)
    m.load_state_dict({"0.weight": np.eye(h), "0.bias": np.zeros(h)})
    return m


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_dropout_keeps_fraction_and_expectation(mode):
    p, n, h = 0.3, 300, 64
    m = _dropout_net(h, p, mode)
    X = np.ones((n, h))
    train = m.forward(X, training=True)
    scale = 1 / (1 - p) if mode == "inverted" else 1.0
    kept = train != 0
    assert set(np.unique(train)) == {0.0, scale}
    sigma = np.sqrt(p * (1 - p) / kept.size)
    assert abs(kept.mean() - (1 - p)) < 4 * sigma
    # inference: deterministic, and equal to the training expectation
    inf = m.forward(X)
    np.testing.assert_array_equal(inf, m.forward(X))
    expect = 1.0 if mode == "inverted" else 1 - p
    np.testing.assert_allclose(inf, expect, rtol=1e-15)
    assert abs(train.mean() - expect) < 4 * sigma * scale
    # masks differ between examples and units
    assert not np.all(kept == kept[:1])
    assert not np.all(kept == kept[:, :1])


def test_dropout_gradient_finite_differences(rng):
    m = fn.Sequential(fn.Dense(5, 8), fn.ReLU(), fn.Dropout(0.4), fn.Dense(8, 3), fn.Tanh(),
                      fn.Dropout(0.25, mode="classic"), dtype="float64", seed=4)
    X = rng.normal(size=(9, 5))
    assert _fd_check(m, X, rng.integers(0, 3, 9), fn.CrossEntropy()) < 1e-6


def test_dropout_zero_is_identity(rng):
    a = fn.Sequential(fn.Dense(6, 4), fn.ReLU(), fn.Dropout(0.0), fn.Dense(4, 2), dtype="float64", seed=1)
    b = fn.Sequential(fn.Dense(6, 4), fn.ReLU(), fn.Dense(4, 2), dtype="float64", seed=1)
    X = rng.normal(size=(10, 6))
    np.testing.assert_array_equal(a.forward(X, training=True), b.forward(X))
