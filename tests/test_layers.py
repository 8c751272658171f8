"""BatchNorm1d, LayerNorm, Residual, Flatten and standalone activations in the plan of phases:
finite differences, a float64 NumPy reference, PyTorch (when installed), thread-count
invariance, running statistics, batch-coupling errors, and wide (neuron-split) Dense phases."""
import numpy as np
import pytest

import fastnn as fn
from fastnn import _plan
from reference import check_finite_differences


def _randomize(model, rng, scale=0.5):
    """Non-trivial norm parameters (weight near 1, bias near 0), so their gradients matter."""
    for name, p in model.named_parameters():
        if p.ndim == 1 and name.endswith("weight"):
            p[...] = 1 + scale * rng.normal(size=p.shape)
        elif p.ndim == 1:
            p[...] = scale * rng.normal(size=p.shape)


MODELS = {
    "dense_bn_relu": lambda dt, drop=0.0: fn.Sequential(
        fn.Dense(7, 9), fn.BatchNorm1d(9), fn.ReLU(), fn.Dense(9, 6), fn.BatchNorm1d(6), fn.Tanh(),
        fn.Dense(6, 3), dtype=dt, seed=3),
    "pre_ln_residual": lambda dt, drop=0.0: fn.Sequential(
        fn.Dense(7, 8),
        fn.Residual(fn.LayerNorm(8), fn.Dense(8, 8), fn.ReLU(), fn.Dropout(drop), fn.Dense(8, 8)),
        fn.Residual(fn.LayerNorm(8), fn.Dense(8, 8), fn.ReLU(), fn.Dense(8, 8)),
        fn.LayerNorm(8), fn.Dense(8, 3), dtype=dt, seed=4),
    "projection": lambda dt, drop=0.0: fn.Sequential(
        fn.Residual(fn.Dense(7, 5), fn.Sigmoid(), fn.Dense(5, 5), projection=fn.Dense(7, 5)), fn.ReLU(),
        fn.Dense(5, 3), dtype=dt, seed=5),
    "nested": lambda dt, drop=0.0: fn.Sequential(
        fn.Dense(7, 6), fn.Tanh(),
        fn.Residual(fn.Residual(fn.LayerNorm(6), fn.Dense(6, 6)), fn.ReLU(), fn.Dense(6, 6), fn.BatchNorm1d(6)),
        fn.Residual(fn.LeakyReLU(0.1), fn.Dense(6, 6)), fn.Dropout(drop),
        fn.Dense(6, 3), dtype=dt, seed=6),
    "norm_first": lambda dt, drop=0.0: fn.Sequential(
        fn.BatchNorm1d(7), fn.LayerNorm(7, elementwise_affine=False), fn.Sigmoid(), fn.Dense(7, 4),
        fn.BatchNorm1d(4, affine=False), fn.Dense(4, 3), dtype=dt, seed=7),
}


def _data(rng, n=13, f=7, c=3):
    return rng.normal(size=(n, f)), rng.integers(0, c, n)


# ---------------------------------------------------------------- finite differences
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_match_finite_differences(name, rng):
    m = MODELS[name]("float64", 0.3)
    _randomize(m, rng)
    X, y = _data(rng)
    check_finite_differences(m, X, y, fn.CrossEntropy(), rng, per_param=6)


# ---------------------------------------------------------------- NumPy float64 reference
def _bn(x, g, b, eps):
    mu = x.mean(0)
    var = x.var(0)
    return (x - mu) / np.sqrt(var + eps) * g + b, mu, x.var(0, ddof=1)


def test_batchnorm_forward_matches_numpy_reference(rng):
    m = fn.Sequential(fn.Dense(5, 4), fn.BatchNorm1d(4, momentum=0.2), dtype="float64", seed=0)
    _randomize(m, rng)
    X = rng.normal(size=(11, 5))
    W, b = m.layers[0].weight, m.layers[0].bias
    bn = m.layers[1]
    z = X @ W.T + b
    ref, mu, var_u = _bn(z, bn.weight, bn.bias, bn.eps)
    np.testing.assert_allclose(m.forward(X, training=True), ref, rtol=1e-13, atol=1e-13)
    # inference: running statistics (still 0 and 1)
    np.testing.assert_allclose(m.forward(X), z / np.sqrt(1 + bn.eps) * bn.weight + bn.bias, rtol=1e-13)
    # one training step moves the running estimates by momentum towards mean and unbiased variance
    y = rng.normal(size=(11, 4))
    m.train_step(X, y, fn.MSE(), fn.SGD(lr=0.0))
    np.testing.assert_allclose(bn.running_mean, 0.2 * mu, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var_u, rtol=1e-13)
    assert bn.num_batches_tracked == 1


def test_layernorm_forward_matches_numpy_reference(rng):
    m = fn.Sequential(fn.LayerNorm(4), fn.Flatten(), fn.Dense(12, 2), input_shape=(3, 4), dtype="float64",
                      seed=0)
    _randomize(m, rng)
    X = rng.normal(size=(5, 3, 4)) * 3 + 1
    ln, d = m.layers[0], m.layers[2]
    mu = X.mean(-1, keepdims=True)
    y = (X - mu) / np.sqrt(X.var(-1, keepdims=True) + ln.eps) * ln.weight + ln.bias
    np.testing.assert_allclose(m.forward(X), y.reshape(5, 12) @ d.weight.T + d.bias, rtol=1e-12)


def test_residual_forward_matches_numpy_reference(rng):
    m = fn.Sequential(fn.Dense(4, 6), fn.Residual(fn.Dense(6, 5), fn.Tanh(), projection=fn.Dense(6, 5)),
                      fn.ReLU(), fn.Residual(fn.Dense(5, 5)), dtype="float64", seed=1)
    X = rng.normal(size=(9, 4))
    d0, r1, r3 = m.layers[0], m.layers[1], m.layers[3]
    h = X @ d0.weight.T + d0.bias
    f = np.tanh(h @ r1.layers[0].weight.T + r1.layers[0].bias)
    h = np.maximum(f + h @ r1.projection.weight.T + r1.projection.bias, 0)
    out = h + h @ r3.layers[0].weight.T + r3.layers[0].bias
    np.testing.assert_allclose(m.forward(X), out, rtol=1e-12)


def test_parameter_and_buffer_names_follow_torch():
    m = MODELS["nested"]("float32")
    names = [k for k, _ in m.named_parameters()]
    assert names[:2] == ["0.weight", "0.bias"]
    assert "2.layers.0.layers.0.weight" in names and "2.layers.0.layers.1.bias" in names
    assert "2.layers.3.weight" in names and "3.layers.1.weight" in names
    sd = m.state_dict()
    assert {"2.layers.3.running_mean", "2.layers.3.running_var", "2.layers.3.num_batches_tracked"} <= set(sd)
    assert sd["2.layers.3.num_batches_tracked"].dtype == np.int64
    assert not any("running" in k for k in names)
    m2 = fn.Sequential(fn.Dense(7, 6), fn.Residual(fn.Dense(6, 4), projection=fn.Dense(6, 4)), seed=0)
    assert [k for k, _ in m2.named_parameters()] == ["0.weight", "0.bias", "1.layers.0.weight", "1.layers.0.bias",
                                                     "1.projection.weight", "1.projection.bias"]


# ---------------------------------------------------------------- state: what changes and what does not
def test_loss_and_grad_changes_nothing(rng):
    m = MODELS["dense_bn_relu"]("float64", 0.0)
    X, y = _data(rng)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=2, batch_size=5)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    steps = m.steps_trained
    m.loss_and_grad(X, y, fn.CrossEntropy())
    m.forward(X, training=True)
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert m.steps_trained == steps


def test_train_step_and_fit_update_running_statistics(rng):
    m = MODELS["dense_bn_relu"]("float64")
    X, y = _data(rng, n=40)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05), epochs=2, batch_size=8)
    bn = m.layers[1]
    assert bn.num_batches_tracked == 10
    assert not np.allclose(bn.running_var, 1) and not np.allclose(bn.running_mean, 0)
    # inference uses them: a batch of one is fine, and rows are independent of each other (to the
    # rounding of a one-row GEMM, which BLAS may run as a GEMV)
    out = m.forward(X)
    np.testing.assert_allclose(m.forward(X[3:4]), out[3:4], rtol=1e-14)


def test_momentum_none_is_a_cumulative_average(rng):
    m = fn.Sequential(fn.BatchNorm1d(3, momentum=None), dtype="float64", seed=0)
    batches = [rng.normal(size=(6, 3)) * (k + 1) + k for k in range(3)]
    for xb in batches:
        m.train_step(xb, xb, fn.MSE(), fn.SGD(lr=0.0))
    bn = m.layers[0]
    np.testing.assert_allclose(bn.running_mean, np.mean([b.mean(0) for b in batches], axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean([b.var(0, ddof=1) for b in batches], axis=0), rtol=1e-12)


def test_untracked_batchnorm_normalises_by_the_batch_in_inference(rng):
    m = fn.Sequential(fn.BatchNorm1d(3, track_running_stats=False, affine=False), dtype="float64", seed=0)
    X = rng.normal(size=(10, 3)) * 4 + 2
    np.testing.assert_allclose(m.forward(X), (X - X.mean(0)) / np.sqrt(X.var(0) + 1e-5), rtol=1e-12)
    assert m.state_dict() == {}


def test_batchnorm_batch_of_one_is_a_clear_error(rng):
    m = MODELS["dense_bn_relu"]("float32")
    X, y = _data(rng, n=9)
    with pytest.raises(ValueError, match="at least 2 examples"):
        m.train_step(X[:1], y[:1], fn.CrossEntropy(), fn.SGD(lr=0.1))
    with pytest.raises(ValueError, match="at least 2 examples"):
        m.loss_and_grad(X[:1], y[:1], fn.CrossEntropy())
    with pytest.raises(ValueError, match="last batch of 1.*drop_last=True"):
        m.fit(X, y, loss=fn.CrossEntropy(), epochs=1, batch_size=4)
    before = m.state_dict()
    assert all(np.array_equal(v, m.state_dict()[k]) for k, v in before.items())
    h = m.fit(X, y, loss=fn.CrossEntropy(), epochs=1, batch_size=4, drop_last=True)
    assert m.layers[1].num_batches_tracked == 2 and m.steps_trained == 2
    assert np.isfinite(h.history["loss"][0])


def test_drop_last_without_batchnorm_skips_the_partial_batch(rng):
    X, y = _data(rng, n=10)
    m = fn.Sequential(fn.Dense(7, 3), seed=0)
    m.fit(X, y, loss=fn.CrossEntropy(), epochs=2, batch_size=4, drop_last=True)
    assert m.steps_trained == 4
    with pytest.raises(ValueError, match="no full batch"):
        m.fit(X, y, loss=fn.CrossEntropy(), epochs=1, batch_size=11, drop_last=True)


# ---------------------------------------------------------------- threads, dtypes, odd sizes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_thread_count_invariance_with_norms_residuals_and_dropout(dtype, rng):
    X, y = _data(rng, n=98, f=7)
    results = []
    for threads in (1, 2, 3):
        m = fn.Sequential(fn.Dense(7, 40), fn.BatchNorm1d(40), fn.ReLU(), fn.Dropout(0.2),
                          fn.Residual(fn.LayerNorm(40), fn.Dense(40, 40), fn.ReLU(), fn.Dropout(0.1),
                                      fn.Dense(40, 40)),
                          fn.Residual(fn.Dense(40, 24), fn.BatchNorm1d(24), projection=fn.Dense(40, 24)),
                          fn.Tanh(), fn.Dense(24, 3), dtype=dtype, seed=11)
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=3, batch_size=16,
              threads=threads, clip_norm=1.0)
        results.append(m.state_dict())
    for other in results[1:]:
        assert results[0].keys() == other.keys()
        for k in results[0]:
            np.testing.assert_array_equal(results[0][k], other[k], err_msg=k)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_float32_agrees_with_float64(name, rng):
    X, y = _data(rng, n=21)
    m64 = MODELS[name]("float64")
    m32 = MODELS[name]("float32")
    _, g64 = m64.loss_and_grad(X, y, fn.CrossEntropy())
    _, g32 = m32.loss_and_grad(X, y, fn.CrossEntropy())
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * max(1.0, np.abs(b).max()))


# ---------------------------------------------------------------- wide Dense: neuron-split phases
def test_wide_layers_run_split_by_neurons_and_agree_with_chunks(rng, monkeypatch):
    def build():
        return fn.Sequential(fn.Dense(300, 600), fn.ReLU(), fn.Dropout(0.1), fn.Dense(600, 520), fn.Tanh(),
                             fn.Dense(520, 4), dtype="float64", seed=2)
    X, y = rng.normal(size=(37, 300)), rng.integers(0, 4, 37)
    monkeypatch.setattr(_plan, "WIDE_MIN_OUT", 512)
    monkeypatch.setattr(_plan, "WIDE_MIN_WEIGHTS", 1)
    wide = build()
    kinds = wide._plan.phases("train", 37)[:, 0]
    assert (kinds == _plan.PH["wide_fwd"]).sum() == 2 and (kinds == _plan.PH["wide_bwd"]).sum() == 1
    _, gw = wide.loss_and_grad(X, y, fn.CrossEntropy(), threads=2)
    monkeypatch.setattr(_plan, "WIDE_MIN_OUT", 10 ** 9)
    narrow = build()
    assert not (narrow._plan.phases("train", 37)[:, 0] == _plan.PH["wide_fwd"]).any()
    _, gn = narrow.loss_and_grad(X, y, fn.CrossEntropy(), threads=2)
    for a, b in zip(gw, gn):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    # and the wide plan is thread-count invariant
    monkeypatch.setattr(_plan, "WIDE_MIN_OUT", 512)
    outs = []
    for threads in (1, 3):
        m = build()
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1, momentum=0.9), epochs=2, batch_size=16,
              threads=threads)
        outs.append(np.concatenate([p.ravel() for p in m.parameters()]))
    np.testing.assert_array_equal(outs[0], outs[1])


# ---------------------------------------------------------------- training, diagnostics
def test_batchnorm_mlp_learns_digits():
    X, y = fn.data.load_digits()
    m = fn.Sequential(fn.Dense(64, 64), fn.BatchNorm1d(64), fn.ReLU(),
                      fn.Residual(fn.LayerNorm(64), fn.Dense(64, 64), fn.ReLU(), fn.Dense(64, 64)),
                      fn.Dense(64, 10), seed=0)
    m.fit(X[:1400], y[:1400], loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=8,
          batch_size=32, drop_last=True)
    assert m.evaluate(X[1400:], y[1400:])["accuracy"] > 0.93


def test_diagnostics_cover_every_parametrised_layer(rng):
    X, y = _data(rng, n=64)
    m = MODELS["nested"]("float64")
    h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05), epochs=2, batch_size=16,
              diagnostics=True)
    assert h.diagnostic_layers == ["0", "2.layers.0.layers.0", "2.layers.0.layers.1", "2.layers.2",
                                   "2.layers.3", "3.layers.1", "5"]
    for key in ("grad_norm", "update_ratio", "grad_mean_abs"):
        vals = np.array(h.diagnostics[key][-1])
        assert vals.shape == (7,) and np.all(np.isfinite(vals)) and np.all(vals > 0), key
    # the tanh after layer 0 is fused into it, so its saturation is measured
    assert np.isfinite(h.diagnostics["saturated"][-1][0])


# ---------------------------------------------------------------- PyTorch
def _torch_model(m, torch):
    return fn.io.to_torch(m)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gradients_match_torch(name, rng):
    torch = pytest.importorskip("torch")
    m = MODELS[name]("float64")
    _randomize(m, rng)
    X, y = _data(rng, n=17)
    L, grads = m.loss_and_grad(X, y, fn.CrossEntropy())
    tm = _torch_model(m, torch)
    tm.train()
    out = tm(torch.tensor(X))
    tl = torch.nn.functional.cross_entropy(out, torch.tensor(y))
    tl.backward()
    assert abs(L - tl.item()) <= 1e-12 * abs(L)
    tp = dict(tm.named_parameters())
    gmax = max(float(np.abs(p.grad.numpy()).max()) for p in tp.values())
    for (k, _), g in zip(m.named_parameters(), grads):
        t = tp[k].grad.numpy()
        # a Dense bias before a BatchNorm has a zero gradient: there both sides are rounding noise
        scale = max(np.abs(t).max(), 1e-5 * gmax)
        assert np.abs(g - t).max() <= 1e-9 * scale, k


def test_running_statistics_and_inference_match_torch_after_20_steps(rng):
    torch = pytest.importorskip("torch")
    m = fn.Sequential(fn.Dense(7, 9), fn.BatchNorm1d(9), fn.ReLU(),
                      fn.Residual(fn.Dense(9, 9), fn.BatchNorm1d(9, momentum=0.3)), fn.Dense(9, 3),
                      dtype="float64", seed=8)
    tm = _torch_model(m, torch)
    opt = torch.optim.SGD(tm.parameters(), lr=0.05, momentum=0.9)
    X, y = rng.normal(size=(200, 7)), rng.integers(0, 3, 200)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=1, batch_size=10,
          shuffle=False)
    tm.train()
    for s in range(20):
        opt.zero_grad()
        xb, yb = torch.tensor(X[s * 10:(s + 1) * 10]), torch.tensor(y[s * 10:(s + 1) * 10])
        torch.nn.functional.cross_entropy(tm(xb), yb).backward()
        opt.step()
    tsd = tm.state_dict()
    for k, v in m.state_dict().items():
        np.testing.assert_allclose(v, tsd[k].numpy(), rtol=1e-12, atol=1e-12, err_msg=k)
    tm.eval()
    np.testing.assert_allclose(m.forward(X), tm(torch.tensor(X)).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_wide_and_batchnorm_tails_run_inside_their_phases(rng, monkeypatch):
    """Diagnostics and a softmax after a BatchNorm (which needs whole rows, so it runs in the next
    chunk phase) give the same numbers on the neuron-split plan as on the chunk plan."""
    def build():
        return fn.Sequential(fn.Dense(20, 300), fn.Sigmoid(), fn.Dropout(0.2), fn.Dense(300, 6), fn.BatchNorm1d(6),
                             fn.Softmax(), fn.Dense(6, 3), dtype="float64", seed=4)
    X, y = rng.normal(size=(50, 20)), rng.integers(0, 3, 50)
    hist = {}
    monkeypatch.setattr(_plan, "WIDE_MIN_WEIGHTS", 1)
    for wide in (256, 10 ** 9):
        monkeypatch.setattr(_plan, "WIDE_MIN_OUT", wide)
        m = build()
        h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=2, batch_size=25,
                  diagnostics=fn.Diagnostics(gradient_samples=100))
        hist[wide] = (h, np.concatenate([p.ravel() for p in m.parameters()]))
    (hw, pw), (hc, pc) = hist[256], hist[10 ** 9]
    np.testing.assert_allclose(pw, pc, rtol=1e-10, atol=1e-12)
    for key in ("grad_norm", "act_mean", "act_std", "saturated", "update_ratio"):
        np.testing.assert_allclose(hw.diagnostics[key], hc.diagnostics[key], rtol=1e-9, err_msg=key)
