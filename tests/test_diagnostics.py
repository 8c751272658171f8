"""Diagnostics against a step-by-step float64 reference; warnings; pictures."""
import math
import warnings

import numpy as np
import pytest

import fastnn as fn
import reference as ref


def _reference_diagnostics(m, X, y, lr, batch, threshold=2.0, every=1):
    """Replay an unshuffled epoch of plain SGD with NumPy, measuring what Diagnostics measures."""
    spec = ref.model_spec(m)
    n_layers = len(spec)
    acc = {k: np.zeros(n_layers) for k in ("abs", "sq", "du", "w2", "a1", "a2", "sat")}
    active = [np.zeros(W.shape[0], bool) for W, _, _, _ in spec]
    steps = seen = 0
    for b0 in range(0, len(X), batch):
        Xb, yb = X[b0:b0 + batch], y[b0:b0 + batch]
        zs, acts = ref.forward(spec, Xb)
        sampled = (b0 // batch) % every == 0
        for k, (W, b, name, _) in enumerate(spec):
            a = acts[k + 1]
            if sampled:
                acc["a1"][k] += a.sum()
                acc["a2"][k] += (a ** 2).sum()
                if name in ("sigmoid", "tanh"):
                    acc["sat"][k] += np.sum(np.abs(zs[k]) > threshold)
            active[k] |= (a > 0).any(axis=0)
        seen += len(Xb) if sampled else 0
        _, grads = ref.loss_and_grad(spec, Xb, yb, "ce")
        new = []
        for k, (W, b, name, s) in enumerate(spec):
            gW, gb = grads[2 * k], grads[2 * k + 1]
            if sampled:
                acc["abs"][k] += np.abs(gW).sum() + np.abs(gb).sum()
                acc["sq"][k] += (gW ** 2).sum() + (gb ** 2).sum()
                acc["du"][k] += ((lr * gW) ** 2).sum()
                acc["w2"][k] += (W ** 2).sum()
            new.append((W - lr * gW, b - lr * gb, name, s))
        spec = new
        steps += sampled
    out = {"grad_mean_abs": [], "grad_norm": [], "update_ratio": [], "saturated": [], "dead": [],
           "act_mean": [], "act_std": []}
    for k, (W, b, name, _) in enumerate(spec):
        n_par = W.size + b.size
        out["grad_mean_abs"].append(acc["abs"][k] / (steps * n_par))
        out["grad_norm"].append(math.sqrt(acc["sq"][k] / steps))
        out["update_ratio"].append(math.sqrt(acc["du"][k] / acc["w2"][k]))
        cells = seen * W.shape[0]
        mean = acc["a1"][k] / cells
        out["act_mean"].append(mean)
        out["act_std"].append(math.sqrt(acc["a2"][k] / cells - mean ** 2))
        out["saturated"].append(acc["sat"][k] / cells if name in ("sigmoid", "tanh") else math.nan)
        out["dead"].append(float(np.mean(~active[k])) if name in ("relu", "leaky") else math.nan)
    return out


def test_diagnostics_match_reference():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(203, 9)) * 2, rng.integers(0, 4, 203)
    m = fn.Sequential(fn.Dense(9, 12), fn.Sigmoid(), fn.Dense(12, 11), fn.ReLU(), fn.Dense(11, 8),
                      fn.Tanh(), fn.Dense(8, 4), dtype="float64", seed=3)
    want = _reference_diagnostics(m, X, y, lr=0.3, batch=32)
    h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.3), epochs=1, batch_size=32,
              shuffle=False, diagnostics=True)
    assert h.diagnostic_layers == ["0", "2", "4", "6"]
    for k, v in want.items():
        np.testing.assert_allclose(h.diagnostics[k][0], v, rtol=1e-9, atol=1e-300, err_msg=k)


def test_sampled_gradient_statistics_match_reference():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(203, 9)), rng.integers(0, 4, 203)
    m = fn.Sequential(fn.Dense(9, 12), fn.Tanh(), fn.Dense(12, 4), dtype="float64", seed=0)
    want = _reference_diagnostics(m, X, y, lr=0.2, batch=16, every=4)      # 13 steps // 3 samples
    h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.2), epochs=1, batch_size=16,
              shuffle=False, diagnostics=fn.Diagnostics(gradient_samples=3))
    for k, v in want.items():
        np.testing.assert_allclose(h.diagnostics[k][0], v, rtol=1e-9, err_msg=k)


def test_dead_units_are_counted():
    m = fn.Sequential(fn.Dense(3, 6), fn.ReLU(), fn.Dense(6, 2), dtype="float64", seed=0)
    W, b = m.parameters()[:2]
    b[:3] = -100.0                 # three units can never fire on small inputs
    X = np.random.default_rng(1).normal(size=(50, 3))
    h = m.fit(X, np.zeros(50, int), loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1e-3), epochs=1,
              diagnostics=True)
    assert h.diagnostics["dead"][0][0] >= 0.5


def test_diagnostics_are_thread_invariant_and_do_not_change_training():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(400, 300)), rng.integers(0, 10, 400)
    runs = []
    for t, d in ((1, True), (2, True), (3, True), (2, False)):
        m = fn.Sequential(fn.Dense(300, 260), fn.Tanh(), fn.Dropout(0.2), fn.Dense(260, 10), seed=0)
        h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-3), epochs=2, batch_size=64,
                  threads=t, diagnostics=d, clip_norm=5.0)
        runs.append((m._params.copy(), getattr(h, "diagnostics", None)))
    for p, d in runs[1:3]:
        np.testing.assert_array_equal(p, runs[0][0])
        assert d == runs[0][1]
    np.testing.assert_array_equal(runs[3][0], runs[0][0])


def test_vanishing_gradient_warning_and_no_warning_with_relu():
    X, y = fn.data.load_digits()
    deep = [fn.Dense(64, 30), fn.Sigmoid()] + sum([[fn.Dense(30, 30), fn.Sigmoid()] for _ in range(4)], []) \
        + [fn.Dense(30, 10)]
    m = fn.Sequential(*deep, seed=0)
    with pytest.warns(fn.DiagnosticWarning, match="vanishing gradients"):
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=1, diagnostics=True)
    relu = fn.Sequential(fn.Dense(64, 30), fn.ReLU(), fn.Dense(30, 30), fn.ReLU(), fn.Dense(30, 10), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fn.DiagnosticWarning)
        relu.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05), epochs=1, diagnostics=True)


def test_saturation_warning():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 5)), rng.normal(size=(200, 1))
    m = fn.Sequential(fn.Dense(5, 16), fn.Tanh(), fn.Dense(16, 1), seed=0)
    m.parameters()[0][...] *= 50          # saturate the tanh layer
    with pytest.warns(fn.DiagnosticWarning, match="saturated"):
        h = m.fit(X, y, loss=fn.MSE(), optimizer=fn.SGD(lr=0.01), epochs=1, diagnostics=True)
    assert h.diagnostics["saturated"][0][0] > 0.5


def test_exploding_gradient_warning():
    """A rate just past the stable limit of a least-squares problem: the gradient grows
    geometrically, epoch after epoch, before anything overflows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = X @ rng.normal(size=(5, 1))
    m = fn.Sequential(fn.Dense(5, 1), dtype="float64", seed=0)
    with pytest.warns(fn.DiagnosticWarning, match="exploding gradients.*clip_norm"):
        h = m.fit(X, y, loss=fn.MSE(), optimizer=fn.SGD(lr=1.2), epochs=12, batch_size=200, diagnostics=True)
    norms = [v[0] for v in h.diagnostics["grad_norm"]]
    assert norms[-1] > 100 * norms[0]


def test_diagnostics_arguments():
    with pytest.raises(ValueError, match="saturation_threshold"):
        fn.Diagnostics(saturation_threshold=0)
    with pytest.raises(ValueError, match="dead_warn"):
        fn.Diagnostics(dead_warn=2)
    with pytest.raises(TypeError, match="diagnostics"):
        fn.Sequential(fn.Dense(2, 2)).fit(np.zeros((4, 2)), np.zeros(4, int), loss=fn.CrossEntropy(),
                                          diagnostics="yes")


def test_plots(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = fn.data.load_digits()
    m = fn.Sequential(fn.Dense(64, 32), fn.ReLU(), fn.Dense(32, 10), seed=0)
    h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05), epochs=3, validation_split=0.2,
              diagnostics=True, callbacks=[fn.EarlyStopping(patience=5)])
    f1 = h.plot(path=tmp_path / "h.png")
    f2 = fn.plot_diagnostics(h, path=tmp_path / "d.png")
    assert (tmp_path / "h.png").stat().st_size > 5000 and (tmp_path / "d.png").stat().st_size > 5000
    assert len(f1.axes) >= 2 and len(f2.axes) == 4
    h2 = m.fit(X, y, loss=fn.CrossEntropy(), epochs=1)
    with pytest.raises(ValueError, match="diagnostics=True"):
        fn.plot_diagnostics(h2)


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    h = fn.History()
    h.history = {"loss": [1.0]}
    h.epoch = [0]
    with pytest.raises(ImportError, match=r"fastnn-cpu\[plot\]"):
        h.plot()
