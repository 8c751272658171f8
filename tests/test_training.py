"""Training craft: validation, early stopping, class imbalance, L2, callbacks, NaN stops."""
import warnings

import numpy as np
import pytest

import fastnn as fn
from test_kernels import _fd_check


def blobs(n=300, d=5, c=3, seed=0, noise=1.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(c, d))
    y = rng.integers(0, c, n)
    return centers[y] + noise * rng.normal(size=(n, d)), y


def net(seed=0, d=5, c=3, h=32, dropout=0.0):
    layers = [fn.Dense(d, h), fn.ReLU()]
    if dropout:
        layers.append(fn.Dropout(dropout))
    return fn.Sequential(*layers, fn.Dense(h, c), seed=seed)


# ---------------------------------------------------------------- validation and history
def test_history_keys_and_lengths():
    X, y = blobs()
    h = net().fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=4,
                  validation_split=0.25, l2=1e-4)
    for k in ("loss", "accuracy", "balanced_accuracy", "f1_macro", "l2_penalty", "val_loss",
              "val_accuracy", "val_balanced_accuracy", "val_f1_macro", "lr", "time"):
        assert len(h.history[k]) == 4, k
    assert h.epoch == [0, 1, 2, 3]
    assert h.best_epoch == int(np.argmin(h.history["val_loss"]))


def test_training_metrics_match_sklearn_definitions():
    metrics = pytest.importorskip("sklearn.metrics")
    from fastnn.metrics import classification_metrics
    rng = np.random.default_rng(0)
    yt, yp = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    yp[yp == 3] = 2               # a class never predicted
    got = classification_metrics(yt, yp, 4)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(yt, yp))
    assert got["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(yt, yp))
    assert got["f1_macro"] == pytest.approx(metrics.f1_score(yt, yp, average="macro"))


def test_validation_split_is_stratified_and_seeded():
    from fastnn.data import split_indices
    y = np.array([0] * 90 + [1] * 10)
    tr, va = split_indices(y, 100, 0.2, seed=3)
    assert np.bincount(y[va]).tolist() == [18, 2]
    assert np.intersect1d(tr, va).size == 0 and tr.size + va.size == 100
    tr2, va2 = split_indices(y, 100, 0.2, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, split_indices(y, 100, 0.2, seed=4)[1])


def test_validation_split_equals_explicit_validation_data():
    from fastnn.data import split_indices
    X, y = blobs()
    tr, va = split_indices(y, len(y), 0.2, seed=7)
    a, b = net(), net()
    ha = a.fit(X, y, loss=fn.CrossEntropy(), epochs=3, validation_split=0.2, seed=7)
    hb = b.fit(X[tr], y[tr], loss=fn.CrossEntropy(), epochs=3, validation_data=(X[va], y[va]), seed=7)
    np.testing.assert_array_equal(a._params, b._params)
    assert ha.history["val_loss"] == hb.history["val_loss"]


# ---------------------------------------------------------------- early stopping
def _overfit_setup():
    X, y = blobs(n=120, noise=3.0, seed=1)
    Xv, yv = blobs(n=200, noise=3.0, seed=1)[0][:0], None
    rng = np.random.default_rng(2)
    Xv = X[:40] + rng.normal(scale=2.0, size=(40, 5))
    return X[40:], y[40:], Xv, y[:40]


def _fresh_run(epochs, opt_kw):
    X, y, Xv, yv = _overfit_setup()
    m = net(h=64)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(**opt_kw), epochs=epochs, batch_size=16)
    return m._params.copy()


@pytest.mark.parametrize("exit_path", ["patience", "epochs", "nan", "interrupt"])
def test_early_stopping_restores_best_epoch_on_every_exit(exit_path):
    X, y, Xv, yv = _overfit_setup()
    m = net(h=64)
    es = fn.EarlyStopping(patience=3)
    cbs = [es]
    epochs = 60 if exit_path == "patience" else 8

    class Saboteur(fn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 5 and exit_path == "nan":
                self.model._params[0] = np.nan          # the next step's loss is NaN
            if epoch == 5 and exit_path == "interrupt":
                raise KeyboardInterrupt

    if exit_path != "patience":
        es.patience = 100
    cbs.append(Saboteur())
    fit = lambda: m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=3e-2), epochs=epochs,
                        batch_size=16, validation_data=(Xv, yv), callbacks=cbs)
    if exit_path == "nan":
        with pytest.raises(fn.TrainingDiverged):
            fit()
    elif exit_path == "interrupt":
        with pytest.warns(UserWarning, match="interrupted"):
            h = fit()
        assert h.interrupted
    else:
        h = fit()
        if exit_path == "patience":
            assert es.stopped_epoch is not None and len(h.epoch) < epochs
            assert h.best_epoch == es.best_epoch
    assert es.best_epoch is not None
    expect = _fresh_run(es.best_epoch + 1, dict(lr=3e-2))
    np.testing.assert_array_equal(m._params, expect)


def test_early_stopping_monitor_and_mode():
    X, y = blobs()
    es = fn.EarlyStopping(monitor="val_accuracy", patience=2, restore_best=False)
    h = net().fit(X, y, loss=fn.CrossEntropy(), epochs=5, validation_split=0.2, callbacks=[es])
    accs = h.history["val_accuracy"]
    assert es.best_value == max(accs)                       # "auto" maximises accuracies
    assert es.best_epoch == h.epoch[int(np.argmax(accs))]
    assert h.best_epoch == es.best_epoch
    with pytest.raises(ValueError, match="monitor"):
        net().fit(X, y, loss=fn.CrossEntropy(), epochs=1, callbacks=[fn.EarlyStopping(monitor="val_f2")])
    with pytest.raises(ValueError, match="mode"):
        fn.EarlyStopping(mode="up")


def test_early_stopping_start_from_epoch_and_min_delta():
    X, y = blobs()
    es = fn.EarlyStopping(monitor="loss", patience=0, min_delta=10.0, start_from_epoch=3)
    h = net().fit(X, y, loss=fn.CrossEntropy(), epochs=10, callbacks=[es])
    # nothing watched for 3 epochs; the 4th sets the best; the 5th cannot beat it by 10
    assert len(h.epoch) == 5 and es.best_epoch == 3


# ---------------------------------------------------------------- imbalance
def imbalanced(n_major=1500, ratio=50, seed=0):
    rng = np.random.default_rng(seed)
    n_minor = n_major // ratio
    Xa = rng.normal(size=(n_major, 4))
    Xb = rng.normal(size=(n_minor, 4)) + np.array([1.2, 1.2, 0.0, 0.0])
    X = np.vstack([Xa, Xb])
    y = np.r_[np.zeros(n_major, int), np.ones(n_minor, int)]
    return X, y


def _minority_recall(m, X, y):
    pred = m.predict(X).argmax(1)
    return np.mean(pred[y == 1] == 1)


def test_balanced_class_weight_raises_minority_recall():
    X, y = imbalanced()
    Xt, yt = imbalanced(seed=1)
    kw = dict(loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=15, batch_size=64)
    plain = fn.Sequential(fn.Dense(4, 16), fn.ReLU(), fn.Dense(16, 2), seed=0)
    with pytest.warns(UserWarning, match="below 1:10"):
        plain.fit(X, y, **kw)
    weighted = fn.Sequential(fn.Dense(4, 16), fn.ReLU(), fn.Dense(16, 2), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weighted.fit(X, y, class_weight="balanced", **kw)
    r0, r1 = _minority_recall(plain, Xt, yt), _minority_recall(weighted, Xt, yt)
    assert r1 > r0 + 0.3, (r0, r1)


def test_class_weight_equals_sample_weight_and_loss_weight(rng):
    X, y = blobs()
    w = {0: 1.0, 1: 3.0, 2: 0.5}
    a, b, c = net(), net(), net()
    a.fit(X, y, loss=fn.CrossEntropy(), epochs=2, class_weight=w)
    b.fit(X, y, loss=fn.CrossEntropy(), epochs=2, sample_weight=np.array([w[k] for k in y]))
    c.fit(X, y, loss=fn.CrossEntropy(weight=[1.0, 3.0, 0.5]), epochs=2)
    np.testing.assert_array_equal(a._params, b._params)
    np.testing.assert_allclose(a._params, c._params, rtol=1e-5, atol=1e-6)


def test_balanced_weights_are_inverse_frequency():
    from fastnn.data import class_weights
    y = np.array([0] * 80 + [1] * 15 + [2] * 5)
    w = class_weights("balanced", y, 3)
    np.testing.assert_allclose(w, 100 / (3 * np.array([80, 15, 5])))
    np.testing.assert_allclose(np.sum(w[y]), len(y))
    with pytest.raises(ValueError, match="class index"):
        class_weights({5: 1.0}, y, 3)


@pytest.mark.parametrize("ratio", [0.1, 0.25, 1.0])
def test_subsample_hits_ratio(ratio):
    X, y = imbalanced(n_major=2000, ratio=40)
    Xs, ys = fn.data.subsample(X, y, ratio=ratio, seed=0)
    counts = np.bincount(ys)
    assert counts[1] == 50
    assert counts[0] == int(np.ceil(50 / ratio))
    assert counts.min() / counts.max() >= ratio - 1e-12
    assert Xs.shape[0] == ys.shape[0]
    # kept rows are original rows, unchanged, in order
    idx = [np.flatnonzero((X == row).all(1))[0] for row in Xs[:20]]
    assert idx == sorted(idx)
    a = fn.data.subsample(X, y, ratio=ratio, seed=0)[1]
    assert np.array_equal(a, ys)


def test_bce_pos_weight_raises_recall():
    X, y = imbalanced()
    Xt, yt = imbalanced(seed=1)
    kw = dict(optimizer=fn.Adam(lr=1e-2), epochs=15, batch_size=64)
    a = fn.Sequential(fn.Dense(4, 16), fn.ReLU(), fn.Dense(16, 1), seed=0)
    b = fn.Sequential(fn.Dense(4, 16), fn.ReLU(), fn.Dense(16, 1), seed=0)
    with pytest.warns(UserWarning):
        a.fit(X, y.astype(float), loss=fn.BinaryCrossEntropy(), **kw)
    b.fit(X, y.astype(float), loss=fn.BinaryCrossEntropy(pos_weight=50.0), **kw)
    ra = np.mean(a.predict(Xt)[yt == 1, 0] > 0.5)
    rb = np.mean(b.predict(Xt)[yt == 1, 0] > 0.5)
    assert rb > ra + 0.3, (ra, rb)


# ---------------------------------------------------------------- L2
@pytest.mark.parametrize("l2_bias", [False, True])
def test_l2_gradient_finite_differences(l2_bias, rng):
    m = fn.Sequential(fn.Dense(4, 6), fn.Tanh(), fn.Dense(6, 3), dtype="float64", seed=0)
    X, y = rng.normal(size=(9, 4)), rng.integers(0, 3, 9)
    L0, g0 = m.loss_and_grad(X, y, fn.CrossEntropy())
    L1, g1 = m.loss_and_grad(X, y, fn.CrossEntropy(), l2=0.3, l2_bias=l2_bias)
    pen = 0.3 * sum(np.sum(p ** 2) for k, p in m.named_parameters() if l2_bias or k.endswith("weight"))
    assert L1 == pytest.approx(L0 + pen, rel=1e-12)
    for (k, p), a, b in zip(m.named_parameters(), g0, g1):
        expect = a + (0.6 * p if (l2_bias or k.endswith("weight")) else 0)
        np.testing.assert_allclose(b, expect, rtol=1e-12, atol=1e-15)
    # finite differences of the penalised loss
    P, eps, worst = m._params, 1e-6, 0.0
    flat = np.concatenate([g.ravel() for g in g1])
    for i in range(P.size):
        old = P[i]
        P[i] = old + eps
        lp, _ = m.loss_and_grad(X, y, fn.CrossEntropy(), l2=0.3, l2_bias=l2_bias)
        P[i] = old - eps
        lm, _ = m.loss_and_grad(X, y, fn.CrossEntropy(), l2=0.3, l2_bias=l2_bias)
        P[i] = old
        worst = max(worst, abs((lp - lm) / (2 * eps) - flat[i]))
    assert worst / np.abs(flat).max() < 1e-6


def test_l2_in_fit_equals_coupled_weight_decay_on_weights():
    """fit(l2=b) with SGD is SGD with weight_decay=2b applied to the weights only: check by
    making biases absent."""
    X, y = blobs()
    mk = lambda: fn.Sequential(fn.Dense(5, 8, bias=False), fn.ReLU(), fn.Dense(8, 3, bias=False),
                               dtype="float64", seed=0)
    a, b = mk(), mk()
    a.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=2, l2=0.01)
    b.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1, weight_decay=0.02), epochs=2)
    np.testing.assert_allclose(a._params, b._params, rtol=1e-12)


def test_l2_shrinks_weights_and_is_reported():
    X, y = blobs()
    m0, m1 = net(), net()
    h0 = m0.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=10)
    h1 = m1.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=10, l2=0.05)
    assert "l2_penalty" not in h0.history
    assert h1.history["l2_penalty"][-1] == pytest.approx(m1.l2_penalty(0.05), rel=1e-12)
    assert m1.l2_penalty(1.0) < 0.9 * m0.l2_penalty(1.0)


# ---------------------------------------------------------------- callbacks, progress, NaN
def test_callback_protocol_and_stop_request():
    X, y = blobs()
    events = []

    class Recorder(fn.Callback):
        def on_train_begin(self, logs=None):
            events.append("begin")

        def on_epoch_end(self, epoch, logs=None):
            events.append(("epoch", epoch, round(logs["loss"], 6)))
            if epoch == 2:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            events.append("end")

    h = net().fit(X, y, loss=fn.CrossEntropy(), epochs=10, callbacks=[Recorder()])
    assert events[0] == "begin" and events[-1] == "end"
    assert [e[1] for e in events[1:-1]] == [0, 1, 2]
    assert len(h.epoch) == 3


def test_verbose_outputs(capsys):
    X, y = blobs()
    net().fit(X, y, loss=fn.CrossEntropy(), epochs=2, verbose=2, validation_split=0.2)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "val_accuracy" in lines[0] and "loss" in lines[0]
    net().fit(X, y, loss=fn.CrossEntropy(), epochs=1, verbose=1)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "step" in err
    net().fit(X, y, loss=fn.CrossEntropy(), epochs=1, verbose=0)
    assert capsys.readouterr().err == ""


def test_nan_stop_names_epoch_and_step_and_restores_best():
    X, y = blobs()
    m = net()
    es = fn.EarlyStopping(monitor="loss", patience=100)

    class Poison(fn.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                self.model._params[3] = np.inf

    with pytest.raises(fn.TrainingDiverged, match=r"epoch 4, step 1") as e:
        m.fit(X, y, loss=fn.CrossEntropy(), epochs=6, callbacks=[es, Poison()])
    assert e.value.epoch == 3 and e.value.step == 0
    assert np.all(np.isfinite(m._params))
    ref = net()
    ref.fit(X, y, loss=fn.CrossEntropy(), epochs=es.best_epoch + 1)
    np.testing.assert_array_equal(m._params, ref._params)


def test_dropout_fit_identical_across_threads_and_learns():
    X, y = blobs(n=400)
    ps = []
    for t in (1, 2, 3):
        m = net(dropout=0.3)
        h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=8,
                  threads=t)
        ps.append(m._params.copy())
    assert h.history["loss"][-1] < h.history["loss"][0]
    np.testing.assert_array_equal(ps[0], ps[1])
    np.testing.assert_array_equal(ps[0], ps[2])
