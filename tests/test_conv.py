"""Conv1d/Conv2d, pooling, BatchNorm2d and Dropout2d: a naive NumPy reference, finite differences,
PyTorch (when installed), thread-count invariance, odd sizes, files and clear errors."""
import numpy as np
import pytest

import fastnn as fn
from reference import check_finite_differences


def _cases():
    return {
        "lenet": (lambda: [fn.Conv2d(1, 6, 5, padding=2), fn.ReLU(), fn.MaxPool2d(2), fn.Conv2d(6, 16, 5), fn.Tanh(),
                           fn.AvgPool2d(2), fn.Flatten(), fn.Dense(16, 5)], (1, 13, 14)),
        "strided_groups": (lambda: [fn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
                                    fn.BatchNorm2d(6), fn.ReLU(), fn.MaxPool2d(3, stride=2, padding=1),
                                    fn.AdaptiveAvgPool2d((2, 3)), fn.Flatten(), fn.Dense(36, 5)], (4, 7, 9)),
        "conv1d": (lambda: [fn.Conv1d(3, 5, 5, padding="same"), fn.ReLU(), fn.Conv1d(5, 5, 3, padding=1, bias=False),
                            fn.BatchNorm1d(5), fn.ReLU(), fn.AvgPool1d(3, stride=2, padding=1), fn.MaxPool1d(2),
                            fn.AdaptiveAvgPool1d(1), fn.Flatten(), fn.Dense(5, 5)], (3, 37)),
        "valid_avg_nopad": (lambda: [fn.Conv2d(2, 3, 2, padding="valid"), fn.Sigmoid(),
                                     fn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False),
                                     fn.AdaptiveAvgPool2d((3, 2)), fn.Flatten(), fn.Dense(18, 5)], (2, 6, 5)),
    }


CASES = _cases()


def _model(name, dtype="float64", seed=0):
    layers, shape = CASES[name]
    return fn.Sequential(*layers(), dtype=dtype, seed=seed, input_shape=shape)


def _data(rng, shape, n=7, c=5):
    return rng.normal(size=(n,) + shape), rng.integers(0, c, n)


# ---------------------------------------------------------------- references
def _conv2d_ref(x, W, b, stride, pad, dil, groups):
    N, C, H, Wd = x.shape
    O, Cg, kh, kw = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    Ho = (H + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (Wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((N, O, Ho, Wo))
    og = O // groups
    for o in range(O):
        g = o // og
        for i in range(Ho):
            for j in range(Wo):
                patch = xp[:, g * Cg:(g + 1) * Cg, i * stride[0]:i * stride[0] + dil[0] * (kh - 1) + 1:dil[0],
                           j * stride[1]:j * stride[1] + dil[1] * (kw - 1) + 1:dil[1]]
                out[:, o, i, j] = (patch * W[o]).sum(axis=(1, 2, 3)) + (b[o] if b is not None else 0)
    return out


def test_conv2d_forward_matches_naive_reference(rng):
    m = fn.Sequential(fn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2),
                      input_shape=(4, 7, 9), dtype="float64", seed=1)
    X = rng.normal(size=(3, 4, 7, 9))
    c = m.layers[0]
    ref = _conv2d_ref(X, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
    np.testing.assert_allclose(m.forward(X), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel, padding, dilation, hw", [
    ((3, 5), (1, 2), (2, 1), (7, 9)),    # same width, shorter height
    ((3, 3), (3, 1), (1, 1), (4, 6)),    # rows of padding only
    ((1, 5), (0, 2), (1, 1), (3, 2)),    # columns of padding only (a width of 2, a reach of 5)
])
def test_same_width_stride_one_convolutions(kernel, padding, dilation, hw, rng):
    # these im2col/col2im run as one shifted copy per kernel offset (conv.pxi); a 1x1 convolution
    # before it makes its input delta (col2im) reach a gradient
    ho = hw[0] + 2 * padding[0] - dilation[0] * (kernel[0] - 1)
    m = fn.Sequential(fn.Conv2d(2, 3, 1), fn.Conv2d(3, 4, kernel, padding=padding, dilation=dilation), fn.Tanh(),
                      fn.Flatten(), fn.Dense(4 * ho * hw[1], 3), input_shape=(2,) + hw, dtype="float64", seed=1)
    X, y = rng.normal(size=(5, 2) + hw), rng.integers(0, 3, 5)
    c1, c, d = m.layers[0], m.layers[1], m.layers[4]
    h = _conv2d_ref(X, c1.weight, c1.bias, c1.stride, c1.padding, c1.dilation, c1.groups)
    ref = _conv2d_ref(h, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
    assert ref.shape[3] == hw[1]
    np.testing.assert_allclose(m.forward(X), np.tanh(ref).reshape(5, -1) @ d.weight.T + d.bias, rtol=1e-12,
                               atol=1e-12)
    check_finite_differences(m, X, y, fn.CrossEntropy(), rng, per_param=9)


@pytest.mark.parametrize("kernel, padding, hw", [
    ((5, 5), (0, 0), (14, 14)),     # LeNet-5's second convolution: rows of 14 -> 10
    ((5, 5), (2, 1), (9, 20)),      # padding on the left of some rows, 20 -> 18
    ((3, 5), (1, 1), (6, 37)),      # rows of 37 -> 35: several vectors
    ((2, 5), (0, 1), (5, 70)),      # rows of 70 -> 68: col2im past the row accumulators
])
def test_stride_one_convolutions_with_shorter_output_rows(kernel, padding, hw, rng):
    # these im2col/col2im run row by row in conv.pxi's C; a 1x1 convolution before it makes its
    # input delta (col2im) reach a gradient. float64 against the naive reference and finite
    # differences; float32 (vector code where the build has it) against float64.
    ho = hw[0] + 2 * padding[0] - kernel[0] + 1
    wo = hw[1] + 2 * padding[1] - kernel[1] + 1
    assert wo < hw[1]

    def build(dt):
        return fn.Sequential(fn.Conv2d(2, 3, 1), fn.Conv2d(3, 4, kernel, padding=padding), fn.Tanh(), fn.Flatten(),
                             fn.Dense(4 * ho * wo, 3), input_shape=(2,) + hw, dtype=dt, seed=1)
    m, m32 = build("float64"), build("float32")
    m32.load_state_dict({k: v.astype(np.float32) for k, v in m.state_dict().items()})
    X, y = rng.normal(size=(5, 2) + hw), rng.integers(0, 3, 5)
    c1, c, d = m.layers[0], m.layers[1], m.layers[4]
    h = _conv2d_ref(X, c1.weight, c1.bias, c1.stride, c1.padding, c1.dilation, c1.groups)
    ref = _conv2d_ref(h, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
    np.testing.assert_allclose(m.forward(X), np.tanh(ref).reshape(5, -1) @ d.weight.T + d.bias, rtol=1e-12,
                               atol=1e-12)
    check_finite_differences(m, X, y, fn.CrossEntropy(), rng, per_param=9)
    _, g64 = m.loss_and_grad(X, y, fn.CrossEntropy())
    _, g32 = m32.loss_and_grad(X.astype(np.float32), y, fn.CrossEntropy(), threads=2)
    for (name, _), a, b in zip(m.named_parameters(), g32, g64):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(np.abs(b).max(), 1e-3), err_msg=name)


def test_pools_match_naive_reference(rng):
    X = rng.normal(size=(2, 3, 5, 7))
    mx = fn.Sequential(fn.MaxPool2d(2, stride=2, padding=1), input_shape=(3, 5, 7), dtype="float64")
    xp = np.pad(X, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    ref = np.array([[[[xp[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max() for j in range(4)] for i in range(3)]
                     for c in range(3)] for n in range(2)])
    np.testing.assert_array_equal(mx.forward(X), ref)
    ad = fn.Sequential(fn.AdaptiveAvgPool2d((2, 3)), input_shape=(3, 5, 7), dtype="float64")
    rows, cols = [(0, 3), (2, 5)], [(0, 3), (2, 5), (4, 7)]
    ref = np.array([[[[X[n, c, r0:r1, c0:c1].mean() for c0, c1 in cols] for r0, r1 in rows] for c in range(3)]
                    for n in range(2)])
    np.testing.assert_allclose(ad.forward(X), ref, rtol=1e-13)


def _maxpool_ref(z, k, s, p):
    """Max over each window (padding never wins) and the first maximum's flat position per plane."""
    N, C, H, W = z.shape
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    y, pos = np.empty((N, C, Ho, Wo)), np.empty((N, C, Ho, Wo), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    r0, c0 = i * s - p, j * s - p
                    cells = [(r, q) for r in range(max(r0, 0), min(r0 + k, H)) for q in range(max(c0, 0), min(c0 + k, W))]
                    vals = [z[n, c, r, q] for r, q in cells]
                    nan = [t for t, v in enumerate(vals) if v != v]
                    best = nan[0] if nan else int(np.argmax(vals))      # first maximum; a NaN wins
                    y[n, c, i, j] = vals[best]
                    pos[n, c, i, j] = cells[best][0] * W + cells[best][1]
    return y, pos


@pytest.mark.parametrize("k,s,p,hw", [(2, 2, 0, (7, 9)), (3, 2, 1, (7, 9)), (3, 1, 0, (7, 9)),
                                      (2, 2, 0, (8, 10)), (3, 3, 0, (6, 9))])   # the last two tile the input
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_max_pool_ties_route_to_the_first_maximum(k, s, p, hw, dtype, rng):
    # z = x0 + x1 ties often while x0, x1 differ, so the filter gradient shows which tied input won
    N, (H, W) = 5, hw
    X = rng.integers(0, 3, size=(N, 2, H, W)).astype(dtype)
    z = X.astype(np.float64).sum(axis=1, keepdims=True)
    y, pos = _maxpool_ref(z, k, s, p)
    m = fn.Sequential(fn.Conv2d(2, 1, 1), fn.MaxPool2d(k, stride=s, padding=p), fn.Flatten(),
                      fn.Dense(y[0].size, 3), input_shape=(2, H, W), dtype=dtype, seed=0)
    m.layers[0].weight[...] = 1.0
    m.layers[0].bias[...] = 0.0
    V, c = m.layers[3].weight.astype(np.float64), m.layers[3].bias.astype(np.float64)
    T = rng.normal(size=(N, 3))
    L, grads = m.loss_and_grad(X, T.astype(dtype), fn.MSE())
    out = y.reshape(N, -1) @ V.T + c
    dy = ((2 * (out - T) / out.size) @ V).reshape(y.shape)
    dz = np.zeros(z.shape)
    for idx in np.ndindex(y.shape):
        dz[idx[0], idx[1]].flat[pos[idx]] += dy[idx]
    dW = np.array([(dz[:, 0] * X[:, ci]).sum() for ci in range(2)])
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(m.forward(X), out, rtol=tol, atol=tol)
    np.testing.assert_allclose(grads[0].ravel(), dW, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind, hw", [("2d", (5, 9)), ("2d", (4, 70)), ("1d", (1, 37))])
def test_pools_of_two_pick_the_first_maximum_and_let_nan_win(kind, hw, dtype, rng):
    # max pools of 2 (x 2) with their stride (a vector path in conv.pxi): z = inf * x - inf is NaN
    # where x > 0 and -inf where x < 0, and ties of small integers elsewhere; the routed gradient
    # shows which of the tied inputs won
    H, W = hw
    X = rng.integers(-2, 3, size=(4, 2, H, W)).astype(np.float64)
    pool = fn.MaxPool2d(2) if kind == "2d" else fn.MaxPool1d(2)
    shape = (2,) + hw if kind == "2d" else (2, W)
    kh = 2 if kind == "2d" else 1

    def ref(z):
        Ho, Wo = H // kh, W // 2
        y, pos = np.empty(z.shape[:2] + (Ho, Wo)), np.empty(z.shape[:2] + (Ho, Wo), dtype=np.int64)
        for idx in np.ndindex(y.shape):
            n, c, i, j = idx
            cells = [(r, q) for r in range(i * kh, i * kh + kh) for q in range(2 * j, 2 * j + 2)]
            vals = [z[n, c, r, q] for r, q in cells]
            nan = [t for t, v in enumerate(vals) if v != v]
            best = nan[0] if nan else int(np.argmax(vals))
            y[idx], pos[idx] = vals[best], cells[best][0] * W + cells[best][1]
        return y, pos

    m = fn.Sequential(fn.Conv2d(2, 1, 1) if kind == "2d" else fn.Conv1d(2, 1, 1), pool, fn.Flatten(),
                      input_shape=shape, dtype=dtype, seed=0)
    conv = m.layers[0]
    conv.weight[...], conv.bias[...] = np.inf, -np.inf
    Xn = -np.ones_like(X)
    Xn[:, 0][rng.random(Xn[:, 0].shape) < 0.15] = 1.0
    with np.errstate(invalid="ignore"):
        z = np.inf * Xn[:, :1] + np.inf * Xn[:, 1:] - np.inf
    assert np.isnan(z).any() and np.isneginf(z).any()
    np.testing.assert_array_equal(m.forward(Xn.reshape((4,) + shape).astype(dtype)), ref(z)[0].reshape(4, -1))
    # ties: z = x0 + x1, the gradient of x0's weight sums x0 at the winning positions
    conv.weight[...], conv.bias[...] = 1.0, 0.0
    z = X.sum(axis=1, keepdims=True)
    y, pos = ref(z)
    np.testing.assert_array_equal(m.forward(X.reshape((4,) + shape).astype(dtype)), y.reshape(4, -1))
    T = rng.normal(size=y.reshape(4, -1).shape)
    _, grads = m.loss_and_grad(X.reshape((4,) + shape).astype(dtype), T.astype(dtype), fn.MSE(), threads=2)
    dy = 2 * (y.reshape(4, -1) - T) / T.size
    want = [sum(dy[n, f] * X[n, ci].ravel()[pos.reshape(4, -1)[n, f]] for n in range(4) for f in range(dy.shape[1]))
            for ci in range(2)]
    np.testing.assert_allclose(grads[0].ravel(), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_finite_differences(name, rng):
    m = _model(name)
    X, y = _data(rng, m.input_shape)
    check_finite_differences(m, X, y, fn.CrossEntropy(), rng)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_and_inference_match_torch(name, rng):
    torch = pytest.importorskip("torch")
    m = _model(name)
    X, y = _data(rng, m.input_shape)
    L, grads = m.loss_and_grad(X, y, fn.CrossEntropy())
    tm = m.to_torch()
    tm.train()
    tl = torch.nn.functional.cross_entropy(tm(torch.tensor(X)), torch.tensor(y))
    tl.backward()
    assert abs(L - tl.item()) <= 1e-12 * abs(L)
    tp = dict(tm.named_parameters())
    gmax = max(float(p.grad.abs().max()) for p in tp.values())
    for (k, _), g in zip(m.named_parameters(), grads):
        t = tp[k].grad.numpy()
        assert np.abs(g - t).max() <= 1e-9 * max(np.abs(t).max(), 1e-5 * gmax), k
    # a training step moves the running statistics as torch's does; inference then agrees
    m.train_step(X, y, fn.CrossEntropy(), fn.SGD(lr=0.0))
    tm.eval()
    np.testing.assert_allclose(m.forward(X), tm(torch.tensor(X)).detach().numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- threads, dtypes, odd sizes
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_thread_count_invariance(dtype, rng):
    X, y = rng.normal(size=(98, 2, 7, 9)), rng.integers(0, 4, 98)
    states = []
    for threads in (1, 2, 3):
        m = fn.Sequential(fn.Conv2d(2, 8, 3, padding=1), fn.BatchNorm2d(8), fn.ReLU(), fn.Dropout2d(0.25),
                          fn.MaxPool2d(2), fn.Conv2d(8, 6, 2, groups=2), fn.ReLU(), fn.AdaptiveAvgPool2d(1),
                          fn.Flatten(), fn.Dropout(0.1), fn.Dense(6, 4), dtype=dtype, seed=3)
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=2, batch_size=16, threads=threads,
              clip_norm=1.0)
        states.append(m.state_dict())
    for other in states[1:]:
        for k in states[0]:
            np.testing.assert_array_equal(states[0][k], other[k], err_msg=k)


@pytest.mark.parametrize("n", [50, 97])
def test_batch_gradient_is_the_mean_of_example_gradients(n, rng):
    # several chunks per batch, each in sub-blocks of examples with a ragged last one: the filter
    # gradients summed block by block must equal the mean of one-example gradients
    m = fn.Sequential(fn.Conv2d(2, 4, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2), fn.Conv2d(4, 3, 2, dilation=2),
                      fn.Tanh(), fn.Flatten(), fn.Dense(6, 5), input_shape=(2, 7, 9), dtype="float64", seed=2)
    X, y = rng.normal(size=(n, 2, 7, 9)), rng.integers(0, 5, n)
    _, grads = m.loss_and_grad(X, y, fn.CrossEntropy())
    mean = [np.zeros_like(g) for g in grads]
    for i in range(n):
        for acc, g in zip(mean, m.loss_and_grad(X[i:i + 1], y[i:i + 1], fn.CrossEntropy())[1]):
            acc += g / n
    for (k, _), g, ref in zip(m.named_parameters(), grads, mean):
        np.testing.assert_allclose(g, ref, rtol=1e-11, atol=1e-13, err_msg=k)


def test_batchnorm2d_over_ragged_chunks_matches_numpy_reference(rng):
    # the batch statistics are merged from per-chunk partials (norm.pxi): several chunks with a
    # ragged last one, channel means far from zero, against one float64 pass over the whole batch
    m = fn.Sequential(fn.Conv2d(2, 3, 3, padding=1), fn.BatchNorm2d(3, momentum=0.3), fn.ReLU(), fn.Flatten(),
                      fn.Dense(60, 3), input_shape=(2, 5, 4), dtype="float64", seed=2)
    c, bn, d = m.layers[0], m.layers[1], m.layers[4]
    c.bias[...] = [300.0, -50.0, 7.0]
    bn.weight[...] = 1 + 0.5 * rng.normal(size=3)
    bn.bias[...] = 0.5 * rng.normal(size=3)
    n = 97
    X, y = rng.normal(size=(n, 2, 5, 4)), rng.integers(0, 3, n)
    chunk = m._plan.chunk_for(n)
    assert n // chunk >= 2 and n % chunk, chunk
    z = _conv2d_ref(X, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
    mu, var, var_u = z.mean((0, 2, 3)), z.var((0, 2, 3)), z.var((0, 2, 3), ddof=1)
    h = (z - mu[:, None, None]) / np.sqrt(var[:, None, None] + bn.eps) * bn.weight[:, None, None] \
        + bn.bias[:, None, None]
    ref = np.maximum(h, 0).reshape(n, -1) @ d.weight.T + d.bias
    np.testing.assert_allclose(m.forward(X, training=True), ref, rtol=1e-11, atol=1e-11)
    check_finite_differences(m, X, y, fn.CrossEntropy(), rng, per_param=4)
    m.train_step(X, y, fn.CrossEntropy(), fn.SGD(lr=0.0))
    np.testing.assert_allclose(bn.running_mean, 0.3 * mu, rtol=1e-13)
    np.testing.assert_allclose(bn.running_var, 0.7 + 0.3 * var_u, rtol=1e-13)


def test_float32_agrees_with_float64(rng):
    X, y = _data(rng, (3, 37), n=11)
    _, g64 = _model("conv1d", "float64").loss_and_grad(X, y, fn.CrossEntropy())
    _, g32 = _model("conv1d", "float32").loss_and_grad(X, y, fn.CrossEntropy())
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * max(1.0, np.abs(b).max()))


def test_batch_of_one_and_odd_batches(rng):
    m = _model("lenet", "float32")
    X, y = _data(rng, m.input_shape, n=97)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=10)
    out = m.forward(X)
    np.testing.assert_allclose(m.forward(X[5:6]), out[5:6], rtol=1e-5, atol=1e-6)
    assert m.predict(X[:1]).shape == (1, 5)


def test_dropout2d_drops_whole_channels(rng):
    m = fn.Sequential(fn.Conv2d(1, 8, 1, bias=False, init="zeros"), fn.Dropout2d(0.5), input_shape=(1, 3, 4),
                      dtype="float64", seed=0)
    m.layers[0].weight[...] = 1
    X = rng.random((6, 1, 3, 4)) + 1
    out = m.forward(X, training=True).reshape(6, 8, 12)
    assert m.forward(X).shape == (6, 8, 3, 4)
    kept = (out != 0).all(axis=2)
    dropped = (out == 0).all(axis=2)
    assert np.all(kept | dropped) and dropped.any() and kept.any()
    np.testing.assert_allclose(out[kept], 2 * np.repeat(X.reshape(6, 1, 12), 8, axis=1)[kept])
    np.testing.assert_array_equal(m.forward(X).reshape(6, 8, 12), np.repeat(X.reshape(6, 1, 12), 8, axis=1))


# ---------------------------------------------------------------- building, files, errors
def test_input_shape_comes_from_the_first_data(rng):
    m = fn.Sequential(fn.Conv1d(2, 4, 3), fn.ReLU(), fn.Flatten(), fn.Dense(4 * 8, 3), seed=0)
    with pytest.raises(ValueError, match="input_shape="):
        m.named_parameters()
    X, y = rng.normal(size=(12, 2, 10)), rng.integers(0, 3, 12)
    m.fit(X, y, loss=fn.CrossEntropy(), epochs=1, batch_size=4)
    assert m.input_shape == (2, 10) and m.layers[0].weight.shape == (4, 2, 3)


def test_save_load_and_torch_round_trip(tmp_path, rng):
    m = _model("strided_groups", "float32")
    X, y = _data(rng, m.input_shape, n=16)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05), epochs=2, batch_size=8)
    m.save(tmp_path / "m.safetensors")
    m2 = fn.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(m2.forward(X), m.forward(X))
    assert m2.layers[1].num_batches_tracked == 4
    pytest.importorskip("torch")
    m3 = fn.from_torch(m.to_torch(), input_shape=m.input_shape)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(np.asarray(m3.state_dict()[k]), np.asarray(v))


@pytest.mark.parametrize("make, match", [
    (lambda: fn.Sequential(fn.Conv2d(3, 4, 3), input_shape=(2, 8, 8)),
     r"layer 0 .*Conv2d expects examples shaped \(C, H, W\) with C = 3, got shape \(2, 8, 8\)"),
    (lambda: fn.Sequential(fn.Conv2d(1, 4, 5), input_shape=(1, 3, 3)), r"layer 0 .*smaller than the kernel"),
    (lambda: fn.Sequential(fn.Conv2d(1, 4, 3), fn.Dense(10, 2), input_shape=(1, 6, 6)),
     r"layer 1 .*Dense expects 10 input features per example, got shape \(4, 4, 4\); put fn.Flatten\(\)"),
    (lambda: fn.Conv2d(3, 4, 3, groups=2), "divisible by groups"),
    (lambda: fn.Conv1d(3, 4, 3, stride=2, padding="same"), "padding='same' needs stride 1"),
    (lambda: fn.Conv2d(3, 4, (3, 3, 3)), "kernel_size"),
    (lambda: fn.MaxPool2d(2, padding=2), "at most half"),
    (lambda: fn.Sequential(fn.MaxPool1d(2), input_shape=(8,)), r"MaxPool1d expects examples shaped \(C, L\)"),
    (lambda: fn.Sequential(fn.BatchNorm2d(3), input_shape=(3, 4)), r"BatchNorm2d expects examples shaped"),
])
def test_bad_configurations_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_examples_of_the_wrong_shape_are_refused(rng):
    m = _model("lenet", "float32")
    with pytest.raises(ValueError, match="features"):
        m.forward(rng.normal(size=(2, 1, 12, 14)))


def test_diagnostics_count_dead_channels(rng):
    m = fn.Sequential(fn.Conv2d(1, 4, 3), fn.ReLU(), fn.Flatten(), fn.Dense(4 * 4 * 4, 2), input_shape=(1, 6, 6),
                      dtype="float64", seed=0)
    m.layers[0].bias[:2] = -100.0       # channels 0 and 1 never fire
    X, y = rng.random((32, 1, 6, 6)), rng.integers(0, 2, 32)
    h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.01), epochs=1, batch_size=8, diagnostics=True)
    assert h.diagnostic_layers == ["0", "3"]
    assert h.diagnostics["dead"][0][0] == 0.5
