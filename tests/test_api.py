"""Public API: construction, names, training behaviour, and clear errors on bad input."""
import numpy as np
import pytest

import fastnn as fn


def small(dtype="float32", seed=0):
    return fn.Sequential(fn.Dense(4, 8), fn.ReLU(), fn.Dense(8, 3), dtype=dtype, seed=seed)


def data(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)), rng.integers(0, 3, n)


# ---------------------------------------------------------------- structure
def test_parameters_are_views_into_one_flat_buffer():
    m = small()
    names = [k for k, _ in m.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    ps = m.parameters()
    assert [p.shape for p in ps] == [(8, 4), (8,), (3, 8), (3,)]
    assert all(np.shares_memory(p, m._params) for p in ps)
    assert m.n_params == sum(p.size for p in ps)
    ps[0][0, 0] = 42.0
    assert m._params[0] == 42.0
    assert m.layers[0].weight is not None and m.layers[0].weight[0, 0] == 42.0


def test_state_dict_names_match_torch_sequential():
    torch = pytest.importorskip("torch")
    m = fn.Sequential(fn.Dense(4, 8), fn.Tanh(), fn.Dropout(0.1), fn.Dense(8, 3, bias=False), seed=0)
    tm = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(0.1),
                             torch.nn.Linear(8, 3, bias=False))
    assert list(m.state_dict()) == list(tm.state_dict())
    tm.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    tm.eval()
    X = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(m.forward(X), tm(torch.tensor(X)).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scheme,check", [
    ("zeros", lambda W, b, fi, fo: np.all(W == 0) and np.all(b == 0)),
    ("xavier", lambda W, b, fi, fo: np.abs(W).max() <= np.sqrt(6 / (fi + fo)) and np.all(b == 0)),
    ("torch", lambda W, b, fi, fo: np.abs(W).max() <= 1 / np.sqrt(fi) and np.abs(b).max() <= 1 / np.sqrt(fi)
     and np.any(b != 0)),
    ("he", lambda W, b, fi, fo: abs(W.std() - np.sqrt(2 / fi)) < 0.1 * np.sqrt(2 / fi)),
    ("lecun", lambda W, b, fi, fo: abs(W.std() - np.sqrt(1 / fi)) < 0.1 * np.sqrt(1 / fi)),
])
def test_init_schemes(scheme, check):
    m = fn.Sequential(fn.Dense(300, 200, init=scheme), dtype="float64", seed=0)
    W, b = m.parameters()
    assert check(W, b, 300, 200)


def test_default_init_follows_activation():
    m = fn.Sequential(fn.Dense(400, 300), fn.ReLU(), fn.Dense(300, 300), fn.Tanh(), fn.Dense(300, 2),
                      dtype="float64", seed=0)
    W0, _, W1, _, _, _ = m.parameters()
    assert abs(W0.std() - np.sqrt(2 / 400)) < 0.05 * np.sqrt(2 / 400)        # He after ReLU
    assert np.abs(W1).max() <= np.sqrt(6 / 600) and W1.std() > 0.8 * np.sqrt(2 / 600)  # Xavier after Tanh


def test_same_seed_same_init_different_seed_different():
    a, b, c = small(seed=1), small(seed=1), small(seed=2)
    np.testing.assert_array_equal(a._params, b._params)
    assert not np.array_equal(a._params, c._params)


def test_repr():
    r = repr(small())
    assert "Dense(in_features=4, out_features=8" in r and "ReLU()" in r


# ---------------------------------------------------------------- training
def test_fit_learns_and_returns_history():
    X, y = data(200)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    m = small()
    h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1, momentum=0.9), epochs=30,
              batch_size=16, validation_data=(X[:50], y[:50]))
    assert set(h.history) >= {"loss", "lr", "val_loss", "val_accuracy", "time"}
    assert len(h.history["loss"]) == 30
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]
    ev = m.evaluate(X, y)
    assert ev["accuracy"] > 0.9
    proba = m.predict(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert np.mean(proba.argmax(1) == y) == pytest.approx(ev["accuracy"])


def test_epochs_zero_trains_nothing():
    X, y = data()
    m = small()
    before = m._params.copy()
    h = m.fit(X, y, loss=fn.CrossEntropy(), epochs=0)
    np.testing.assert_array_equal(m._params, before)
    assert h.history == {}


def test_train_step_returns_loss_before_update():
    X, y = data()
    m = small(dtype="float64")
    L0, _ = m.loss_and_grad(X, y, fn.CrossEntropy())
    assert m.train_step(X, y, fn.CrossEntropy(), fn.SGD(lr=0.1)) == pytest.approx(L0, rel=1e-12)
    L1, _ = m.loss_and_grad(X, y, fn.CrossEntropy())
    assert L1 < L0


def test_evaluate_matches_loss_function():
    X, y = data()
    m = small(dtype="float64")
    assert m.evaluate(X, y, loss=fn.CrossEntropy())["loss"] == pytest.approx(
        fn.CrossEntropy()(m.forward(X), y), rel=1e-12)


@pytest.mark.parametrize("loss,link", [
    (fn.CrossEntropy(), lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)),
    (fn.BinaryCrossEntropy(), lambda z: 1 / (1 + np.exp(-z))),
    (fn.NLLLoss(), np.exp),
    (fn.MSE(), lambda z: z),
])
def test_predict_applies_the_loss_link(loss, link):
    X, _ = data()
    m = small(dtype="float64")
    m.loss = loss
    np.testing.assert_allclose(m.predict(X), link(m.forward(X)), rtol=1e-12)


def test_float64_and_noncontiguous_input_accepted_by_float32_model():
    X, y = data(60)
    Xf = np.asfortranarray(X)
    a, b = small(), small()
    a.fit(X.astype(np.float32), y, loss=fn.CrossEntropy(), epochs=2)
    b.fit(Xf, y, loss=fn.CrossEntropy(), epochs=2)
    np.testing.assert_array_equal(a._params, b._params)
    big = np.zeros((60, 8))
    big[:, ::2] = X
    c = small()
    c.fit(big[:, ::2], y.tolist(), loss=fn.CrossEntropy(), epochs=2)
    np.testing.assert_array_equal(a._params, c._params)


def test_nan_loss_stops_training_and_keeps_finite_weights():
    X, y = data(64)
    m = fn.Sequential(fn.Dense(4, 8), fn.ReLU(), fn.Dense(8, 1), seed=0)
    with pytest.raises(fn.TrainingDiverged, match=r"epoch \d+, step \d+.*learning rate") as e:
        m.fit(X * 1e3, y * 1e3, loss=fn.MSE(), optimizer=fn.SGD(lr=10.0), epochs=50, batch_size=8)
    assert np.all(np.isfinite(m._params))
    assert not np.isfinite(e.value.value)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("X,exc,match", [
    (np.zeros(4), ValueError, "2-D"),
    (np.zeros((2, 3, 4)), ValueError, "2-D"),
    (np.zeros((5, 3)), ValueError, "features"),
    (np.zeros((0, 4)), ValueError, "empty"),
    (np.array([[1, 2, 3, np.nan]] * 3), ValueError, "NaN"),
    (np.array([[1, 2, 3, np.inf]] * 3), ValueError, "NaN or Inf"),
    (np.array([["a", "b", "c", "d"]] * 3), TypeError, "numeric"),
    (np.zeros((3, 4), dtype=complex), TypeError, "numeric"),
])
def test_bad_X(X, exc, match):
    m = small()
    with pytest.raises(exc, match=match):
        m.fit(X, np.zeros(len(X), int), loss=fn.CrossEntropy())
    with pytest.raises(exc, match=match):
        m.forward(X)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_non_finite_X_is_found_anywhere(dtype, threads):
    # the check runs over blocks of 65536 entries in parallel: a bad entry in any block, at a
    # block's edges and in the ragged last block, is found on any thread count
    from fastnn._core import _engine
    X = np.linspace(-3e4, 3e4, 7 * 28100).astype(dtype).reshape(-1, 7)
    assert _engine.all_finite(X, threads)
    big = np.finfo(dtype).max
    X[0, 0], X[-1, -1] = big, -big
    assert _engine.all_finite(X, threads)
    for pos in (0, 65535, 65536, 2 * 65536 + 5, X.size - 1):
        for bad in (np.nan, np.inf, -np.inf):
            Y = X.copy()
            Y.flat[pos] = bad
            assert not _engine.all_finite(Y, threads), (pos, bad)
    X.flags.writeable = False            # read-only data (a memory map, say) is checked too
    assert _engine.all_finite(X, threads)
    m = fn.Sequential(fn.Dense(7, 2), dtype=dtype)
    Y = X.copy()
    Y.flat[-1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        m.fit(Y, np.zeros(len(Y), int), loss=fn.CrossEntropy(), epochs=1, threads=threads)


@pytest.mark.parametrize("y,exc,match", [
    (np.array([0, 1, 3, 0]), ValueError, r"outside \[0, 3\)"),
    (np.array([0, -1, 2, 0]), ValueError, r"outside \[0, 3\)"),
    (np.array([0, 1.5, 2, 0]), ValueError, "integer"),
    (np.array([0, np.nan, 2, 0]), ValueError, "NaN"),
    (np.array([0, 1, 2]), ValueError, "3 labels but X has 4"),
    (np.array(["a", "b", "c", "a"]), TypeError, "integer class labels"),
])
def test_bad_labels(y, exc, match):
    with pytest.raises(exc, match=match):
        small().fit(np.zeros((4, 4)), y, loss=fn.CrossEntropy())


def test_bad_float_targets():
    m = fn.Sequential(fn.Dense(4, 2), seed=0)
    X = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"shape \(n_samples, 2\)"):
        m.fit(X, np.zeros((3, 3)), loss=fn.MSE())
    with pytest.raises(ValueError, match="NaN"):
        m.fit(X, np.full((3, 2), np.nan), loss=fn.MSE())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.fit(X, np.full((3, 2), 2.0), loss=fn.BinaryCrossEntropy())


@pytest.mark.parametrize("kw,exc,match", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=2.5), TypeError, "batch_size"),
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(loss="mse"), TypeError, "loss"),
    (dict(optimizer="sgd"), TypeError, "optimizer"),
    (dict(verbose=3), ValueError, "verbose"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(validation_data=np.zeros((2, 4))), ValueError, "validation_data"),
    (dict(sample_weight=np.ones(3)), ValueError, "sample_weight"),
    (dict(sample_weight=-np.ones(4)), ValueError, "non-negative"),
])
def test_bad_fit_arguments(kw, exc, match):
    args = dict(loss=fn.CrossEntropy())
    args.update(kw)
    with pytest.raises(exc, match=match):
        small().fit(np.zeros((4, 4)), np.zeros(4, int), **args)


def test_bad_input_changes_nothing():
    m = small()
    before = m._params.copy()
    with pytest.raises(ValueError):
        m.fit(np.zeros((4, 4)), np.array([0, 1, 2, 9]), loss=fn.CrossEntropy())
    np.testing.assert_array_equal(m._params, before)
    assert m.epochs_trained == 0


@pytest.mark.parametrize("make,exc,match", [
    (lambda: fn.Sequential(), ValueError, "at least one layer"),
    (lambda: fn.Sequential(fn.ReLU()).named_parameters(), ValueError, "input_shape="),
    (lambda: fn.Sequential(fn.Dense(2, 3), fn.Dense(4, 2)), ValueError,
     r"layer 1 .*expects 4 input features per example, got shape \(3,\)"),
    (lambda: fn.Sequential(fn.Dense(2, 3), fn.Residual(fn.Dense(3, 4))), ValueError,
     r"layer 1 \(Residual\).*\(4,\).*skip connection gives \(3,\).*projection="),
    (lambda: fn.Sequential(fn.Dense(2, 3), fn.BatchNorm1d(4)), ValueError,
     r"layer 1 .*BatchNorm1d expects 4 features per example.*got shape \(3,\)"),
    (lambda: fn.Sequential(fn.Dense(2, 4), fn.LayerNorm(3)), ValueError, r"layer 1 .*LayerNorm\(3,\)"),
    (lambda: fn.Sequential(fn.Dense(2, 3), fn.Residual(fn.Dense(3, 4), projection=fn.Dense(2, 4))),
     ValueError, r"layer 1 \(Residual\) projection: Dense expects 2"),
    (lambda: fn.Residual(fn.Dense(2, 2), projection=fn.ReLU()), TypeError, "projection"),
    (lambda: fn.Residual(), ValueError, "at least one layer"),
    (lambda: fn.BatchNorm1d(0), ValueError, "num_features"),
    (lambda: fn.BatchNorm1d(3, momentum=1.5), ValueError, "momentum"),
    (lambda: fn.BatchNorm1d(3, eps=0), ValueError, "eps"),
    (lambda: fn.LayerNorm(0), ValueError, "normalized_shape"),
    (lambda: fn.Sequential(fn.Dense(2, 2), "relu"), TypeError, "not a fastnn layer"),
    (lambda: fn.Sequential(fn.Dense(2, 2), dtype="float16"), ValueError, "dtype"),
    (lambda: fn.Dense(0, 2), ValueError, "in_features"),
    (lambda: fn.Dense(2.0, 2), TypeError, "in_features"),
    (lambda: fn.Dense(2, 2, init="glorot"), ValueError, "init"),
    (lambda: fn.Dropout(1.0), ValueError, r"\[0, 1\)"),
    (lambda: fn.Dropout(0.5, mode="scaled"), ValueError, "mode"),
    (lambda: fn.LeakyReLU(-0.1), ValueError, "negative_slope"),
    (lambda: fn.CrossEntropy(reduction="none"), ValueError, "reduction"),
    (lambda: fn.CrossEntropy(weight=[1, -1]), ValueError, "weight"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_reused_dense_object_rejected():
    d = fn.Dense(3, 3)
    with pytest.raises(ValueError, match="twice"):
        fn.Sequential(d, fn.ReLU(), d)


def test_load_state_dict_checks_names_shapes_values():
    m = small()
    sd = m.state_dict()
    with pytest.raises(ValueError, match="missing"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "0.bias"})
    sd2 = dict(sd, **{"0.weight": np.zeros((4, 8))})
    with pytest.raises(ValueError, match="shape"):
        m.load_state_dict(sd2)
    sd3 = dict(sd, **{"0.bias": np.full(8, np.nan)})
    with pytest.raises(ValueError, match="NaN"):
        m.load_state_dict(sd3)


def test_loss_needed_before_evaluate():
    with pytest.raises(ValueError, match="loss="):
        small().evaluate(np.zeros((2, 4)), np.zeros(2, int))
