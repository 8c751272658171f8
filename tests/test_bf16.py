"""precision="bf16-mixed": the operands of every product are rounded to bfloat16, the sums stay float32.

The references round the same operands to bfloat16 (round to nearest even, written here from the
definition) and compute in float64: NumPy (reference.py) for the MLP, torch in float64 with
rounding autograd functions for convolutions, recurrent layers and norm/residual nets. fastnn agrees
with them to float32 rounding (plus the rare operand whose float32 value lies so close to a bfloat16
tie that float32 and float64 round it apart), far closer than fastnn's float32 products do. Every
kernel this CPU and build can run is checked (AMX tiles, AVX512-BF16, emulation); the others skip.
"""
import os
import sys

import numpy as np
import pytest

import fastnn as fn
import reference as ref
from conftest import counting_gemm_calls
from fastnn._core import _engine

KERNELS = ["emulate", "avx512bf16", "amx"]


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Runs the test on one bfloat16 kernel (skipped where this CPU or build lacks it)."""
    if request.param not in _engine.bf16_kernels():
        pytest.skip(f"no {request.param} here: this CPU and build run {_engine.bf16_kernels()} (AMX needs "
                    "AMX-BF16 and Linux's tile permission, AVX512-BF16 the CPU flag; both the x86-64-v4 build)")
    before = _engine.bf16_kernel()
    _engine.bf16_use(request.param)
    yield request.param
    _engine.bf16_use(before)


def bf16(x):
    """x (as float32) rounded to bfloat16, round to nearest even, NaN kept, float32 denormals to
    zero; returned as float64."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r[nan] = (u[nan] >> 16) | 0x40
    tiny = (u & 0x7F800000) == 0
    r[tiny] = (u[tiny] >> 16) & 0x8000
    return (r.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def flat(arrays):
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def assert_bf16_reference(g16, g32, gref):
    """fastnn's bfloat16 gradients agree with the reference's; its float32 ones are a bfloat16-sized
    step away from it (so the bfloat16 path ran)."""
    g16, g32, gref = flat(g16), flat(g32), flat(gref)
    scale = np.abs(gref).max()
    err = np.abs(g16 - gref).max() / scale
    off = np.abs(g32 - gref).max() / scale
    assert err < 1e-3, (err, off)
    assert off > 1e-4 and off > 20 * err, (err, off)


# ---------------------------------------------------------------- rounding and kernels
def test_rounding_is_round_to_nearest_even():
    one = np.float32(1)
    # bfloat16 keeps 7 fraction bits: 1 + 2^-8 is a tie between 1 (even) and 1 + 2^-7 (odd)
    # ... and the largest finite bfloat16 is (2 - 2^-7) 2^127: the tie above it rounds to infinity
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -(1 + 2 ** -8), (2 - 2 ** -8) * 2.0 ** 127,
                  -(2 - 2 ** -7) * 2.0 ** 127, np.inf, -np.inf, 0.0, -0.0, 1e-39, -1e-39, 2.0 ** -126],
                 dtype=np.float32)
    want = np.array([1, 1 + 2 ** -6, 1 + 2 ** -7, -1, np.inf, -(2 - 2 ** -7) * 2.0 ** 127, np.inf, -np.inf, 0,
                     -0.0, 0, -0.0, 2.0 ** -126], dtype=np.float64)
    got = (_engine.bf16_round(x).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert np.signbit(got[9]) and np.signbit(got[11]) and not np.signbit(got[8])
    nan = (_engine.bf16_round(np.array([np.nan, -np.nan], dtype=np.float32)).astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(nan).all()
    rng = np.random.default_rng(0)
    r = (rng.standard_normal(20000) * np.exp2(rng.integers(-130, 120, 20000))).astype(np.float32)
    ties = (rng.integers(0, 2 ** 31, 5000, dtype=np.uint32) & 0xFFFF0000 | 0x8000).view(np.float32)
    for v in (r, ties, one * np.float32(rng.random(1000))):
        v = v[np.isfinite(v)]
        np.testing.assert_array_equal((_engine.bf16_round(v).astype(np.uint32) << 16).view(np.float32),
                                      bf16(v).astype(np.float32))


@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (3, 5, 7), (17, 33, 45), (97, 101, 67), (40, 50, 600),
                                     (64, 64, 64)])
def test_kernel_products_match_float64_of_rounded_operands(kernel, M, N, K):
    rng = np.random.default_rng(M * N + K)
    A = rng.standard_normal((M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    want = bf16(A) @ bf16(B)
    bound = 4e-7 * K * (np.abs(bf16(A)) @ np.abs(bf16(B)))      # float32 sums of K exact products
    C = np.full((M, N), np.nan, dtype=np.float32)
    _engine.bf16_matmul(A, B, C)
    assert np.all(np.abs(C - want) <= bound)
    C2 = np.full((M, N), 0.5, dtype=np.float32)
    _engine.bf16_matmul(A, B, C2, accumulate=True)
    assert np.all(np.abs(C2 - 0.5 - want) <= bound + 1e-6)


def test_emulation_gives_the_avx512bf16_kernels_bits():
    if "avx512bf16" not in _engine.bf16_kernels():
        pytest.skip("no AVX512-BF16 on this CPU (or not the x86-64-v4 build)")
    rng = np.random.default_rng(1)
    A = rng.standard_normal((37, 300)).astype(np.float32)
    B = rng.standard_normal((300, 45)).astype(np.float32)
    out = {}
    before = _engine.bf16_kernel()
    try:
        for k in ("emulate", "avx512bf16"):
            _engine.bf16_use(k)
            out[k] = np.empty((37, 45), dtype=np.float32)
            _engine.bf16_matmul(A, B, out[k])
    finally:
        _engine.bf16_use(before)
    # the same float32 operations in the same order (VDPBF16PS adds each pair's odd product first)
    np.testing.assert_array_equal(out["emulate"], out["avx512bf16"])


# ---------------------------------------------------------------- gradients against references
def mlp(seed=0):
    return fn.Sequential(fn.Dense(30, 300), fn.Tanh(), fn.Dense(300, 300), fn.ReLU(), fn.Dense(300, 7),
                         seed=seed)


@pytest.mark.parametrize("n", [37, 128])        # chunks; 300-wide layers split by neurons (n <= 128)
def test_mlp_gradients_match_a_numpy_bfloat16_reference(kernel, n):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 30)).astype(np.float32)
    y = rng.integers(0, 7, n)
    m = mlp()
    with counting_gemm_calls() as calls:
        _, g16 = m.loss_and_grad(X, y, fn.CrossEntropy(), precision="bf16-mixed", threads=2)
    _, g32 = m.loss_and_grad(X, y, fn.CrossEntropy(), threads=2)
    _, gref = ref.loss_and_grad(ref.model_spec(m), X, y, "ce", operand=bf16)
    assert_bf16_reference(g16, g32, gref)
    # every Dense product ran on the bfloat16 kernels, none in float32
    assert all(v > 0 for (path, _), v in calls.items() if path == "bf16")
    assert all(v == 0 for (path, _), v in calls.items() if path != "bf16")
    assert [op["prec"] for op in m.plan.bf16().ops if op["kind"] == _engine.OP_KINDS["dense"]] == [1, 1, 1]


def test_loss_and_forward_match_the_reference(kernel):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((50, 30)).astype(np.float32)
    y = rng.integers(0, 7, 50)
    m = mlp(seed=3)
    spec = ref.model_spec(m)
    zs, acts = ref.forward(spec, X, operand=bf16)
    out = m.forward(X, precision="bf16-mixed")
    np.testing.assert_allclose(out, zs[-1], rtol=0, atol=1e-3 * np.abs(zs[-1]).max())
    assert np.abs(m.forward(X) - zs[-1]).max() > 10 * np.abs(out - zs[-1]).max()
    loss, _ = m.loss_and_grad(X, y, fn.CrossEntropy(), precision="bf16-mixed")
    assert loss == pytest.approx(ref.loss("ce", zs[-1], y)[0], rel=1e-4)
    np.testing.assert_array_equal(m.predict(X, precision="bf16-mixed"), out)     # no loss known: the raw output
    buf = np.empty_like(out)
    assert m.forward(X, precision="bf16-mixed", out=buf) is buf
    np.testing.assert_array_equal(buf, out)
    m.fit(X, y, loss=fn.CrossEntropy(), epochs=1)
    probs = m.predict(X, precision="bf16-mixed")
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    buf = np.empty_like(probs)
    assert m.predict(X, precision="bf16-mixed", out=buf) is buf
    np.testing.assert_array_equal(buf, probs)
    assert np.abs(probs - m.predict(X)).max() > 0       # the bfloat16 products, not inference's float32 runner


# torch in float64 with every product's operands rounded: forward and backward
torch = None


def _torch():
    global torch
    torch = pytest.importorskip("torch")
    return torch


def rnd(t):
    return torch.from_numpy(bf16(t.detach().numpy()))


def rounded_linear(x, W, b):
    class Linear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W):
            xr, Wr = rnd(x), rnd(W)
            ctx.save_for_backward(xr, Wr)
            return xr @ Wr.T

        @staticmethod
        def backward(ctx, g):
            xr, Wr = ctx.saved_tensors
            gr = rnd(g)
            return gr @ Wr, (gr.reshape(-1, gr.shape[-1]).T @ xr.reshape(-1, xr.shape[-1]))

    z = Linear.apply(x, W)
    return z if b is None else z + b


def rounded_conv(mod, x):
    nd = 1 if isinstance(mod, torch.nn.Conv1d) else 2
    F = torch.nn.functional
    conv = F.conv1d if nd == 1 else F.conv2d
    grad_in = torch.nn.grad.conv1d_input if nd == 1 else torch.nn.grad.conv2d_input
    grad_w = torch.nn.grad.conv1d_weight if nd == 1 else torch.nn.grad.conv2d_weight
    args = (mod.stride, mod.padding, mod.dilation, mod.groups)

    class Conv(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, W):
            xr, Wr = rnd(x), rnd(W)
            ctx.save_for_backward(xr, Wr)
            return conv(xr, Wr, None, *args)

        @staticmethod
        def backward(ctx, g):
            xr, Wr = ctx.saved_tensors
            gr = rnd(g)
            return grad_in(xr.shape, Wr, gr, *args), grad_w(xr, Wr.shape, gr, *args)

    z = Conv.apply(x, mod.weight)
    return z if mod.bias is None else z + mod.bias.view(1, -1, *([1] * nd))


def rounded_recurrent(mod, x):
    """torch's RNN/LSTM/GRU equations, batch-first, with rounded products."""
    sig, H = torch.sigmoid, mod.hidden_size
    for layer in range(mod.num_layers):
        Wih, Whh = getattr(mod, f"weight_ih_l{layer}"), getattr(mod, f"weight_hh_l{layer}")
        bih = getattr(mod, f"bias_ih_l{layer}") if mod.bias else None
        bhh = getattr(mod, f"bias_hh_l{layer}") if mod.bias else None
        h = x.new_zeros(x.shape[0], H)
        c = x.new_zeros(x.shape[0], H)
        outs = []
        for t in range(x.shape[1]):
            a, b = rounded_linear(x[:, t], Wih, bih), rounded_linear(h, Whh, bhh)
            if isinstance(mod, torch.nn.LSTM):
                i, f, g, o = (a + b).chunk(4, 1)
                c = sig(f) * c + sig(i) * torch.tanh(g)
                h = sig(o) * torch.tanh(c)
            elif isinstance(mod, torch.nn.GRU):
                r = sig(a[:, :H] + b[:, :H])
                z = sig(a[:, H:2 * H] + b[:, H:2 * H])
                n = torch.tanh(a[:, 2 * H:] + r * b[:, 2 * H:])
                h = (1 - z) * n + z * h
            else:
                h = torch.tanh(a + b) if mod.nonlinearity == "tanh" else torch.relu(a + b)
            outs.append(h)
        x = torch.stack(outs, 1)
    return x if mod.return_sequences else x[:, -1]


def rounded_torch(model):
    """model as a float64 torch module whose products round their operands."""
    t = model.to_torch().double().train()
    for mod in t.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.forward = lambda x, m=mod: rounded_linear(x, m.weight, m.bias)
        elif isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d)):
            mod.forward = lambda x, m=mod: rounded_conv(m, x)
        elif isinstance(mod, (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)):
            mod.forward = lambda x, m=mod: rounded_recurrent(m, x)
    return t


def torch_grads(model, X, y):
    t = rounded_torch(model)
    out = t(torch.from_numpy(np.asarray(X, dtype=np.float64)))
    if out.ndim == 3:
        out = out.reshape(-1, out.shape[-1])
        y = np.asarray(y).reshape(-1)
    torch.nn.functional.cross_entropy(out, torch.from_numpy(np.asarray(y))).backward()
    params = dict(t.named_parameters())
    return [params[name].grad.numpy() for name, _ in model.named_parameters()]


FAMILIES = {
    "conv2d": (lambda: fn.Sequential(fn.Conv2d(2, 8, 3, padding=1), fn.ReLU(), fn.AvgPool2d(2),
                                     fn.Conv2d(8, 12, 3, stride=2, groups=4), fn.Tanh(), fn.Flatten(),
                                     fn.Dense(12, 5), input_shape=(2, 8, 8), seed=0), (2, 8, 8), 5),
    "conv1d": (lambda: fn.Sequential(fn.Conv1d(3, 6, 5, padding=2, dilation=2), fn.ReLU(),
                                     fn.Conv1d(6, 4, 3, stride=2), fn.Flatten(), fn.Dense(28, 4),
                                     input_shape=(3, 20), seed=0), (3, 20), 4),
    "lstm": (lambda: fn.Sequential(fn.LSTM(7, 24, num_layers=2), fn.Dense(24, 3), input_shape=(9, 7), seed=0),
             (9, 7), 3),
    "gru": (lambda: fn.Sequential(fn.GRU(7, 20), fn.Dense(20, 3), input_shape=(6, 7), seed=0), (6, 7), 3),
    "rnn": (lambda: fn.Sequential(fn.RNN(7, 20, num_layers=2), fn.Dense(20, 3), input_shape=(6, 7), seed=0),
            (6, 7), 3),
    "seq-dense": (lambda: fn.Sequential(fn.GRU(5, 16, return_sequences=True), fn.Dense(16, 4),
                                        input_shape=(5, 5), seed=0), (5, 5), 4),
    "norm-residual": (lambda: fn.Sequential(fn.Dense(20, 64), fn.LayerNorm(64), fn.ReLU(),
                                            fn.Residual(fn.Dense(64, 64), fn.ReLU(), fn.Dense(64, 64)),
                                            fn.BatchNorm1d(64), fn.Dense(64, 5), seed=0), (20,), 5),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradients_match_a_torch_float64_bfloat16_reference(kernel, family):
    _torch()
    make, shape, classes = FAMILIES[family]
    rng = np.random.default_rng(len(family))
    X = rng.standard_normal((37,) + shape).astype(np.float32)
    m = make()
    y = rng.integers(0, classes, (37,) + m._plan.out_shape[:-1])
    _, g16 = m.loss_and_grad(X, y, fn.CrossEntropy(), precision="bf16-mixed", threads=2)
    _, g32 = m.loss_and_grad(X, y, fn.CrossEntropy(), threads=2)
    assert_bf16_reference(g16, g32, torch_grads(m, X, y))


# ---------------------------------------------------------------- the same bits on any thread count
THREAD_FAMILIES = dict(FAMILIES, mlp=(lambda: fn.Sequential(fn.Dense(12, 300), fn.ReLU(), fn.Dropout(0.2),
                                                            fn.Dense(300, 300), fn.ReLU(), fn.Dense(300, 5),
                                                            seed=0), (12,), 5))
THREAD_FAMILIES["cnn-maxpool-bn"] = (lambda: fn.Sequential(fn.Conv2d(1, 8, 3, padding=1), fn.BatchNorm2d(8),
                                                           fn.ReLU(), fn.MaxPool2d(2), fn.Flatten(),
                                                           fn.Dense(8 * 4 * 4, 5), input_shape=(1, 8, 8),
                                                           seed=0), (1, 8, 8), 5)


@pytest.mark.parametrize("family", sorted(THREAD_FAMILIES))
def test_training_is_bit_identical_on_1_2_3_16_threads(kernel, family):
    make, shape, classes = THREAD_FAMILIES[family]
    rng = np.random.default_rng(7)
    X = rng.standard_normal((203,) + shape).astype(np.float32)
    y = rng.integers(0, classes, (203,) + make()._plan.out_shape[:-1])
    outs = []
    for threads in (1, 2, 3, 16):
        m = make()
        m.MIN_FLOP_PER_THREAD = 1          # every thread takes work, however small the net
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=64,
              threads=threads, precision="bf16-mixed")
        outs.append(np.concatenate([p.ravel() for p in m.parameters()] + [b.ravel() for _, b in m.named_buffers()]))
    for out in outs[1:]:
        np.testing.assert_array_equal(outs[0], out)


# ---------------------------------------------------------------- training
def digits_split():
    X, y = fn.data.load_digits()
    idx = np.random.default_rng(0).permutation(len(y))
    return X[idx[:1400]], y[idx[:1400]], X[idx[1400:]], y[idx[1400:]]


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_digits_train_to_float32_accuracy_within_a_point(net):
    X, y, Xt, yt = digits_split()
    acc = {}
    for precision in (None, "bf16-mixed"):
        if net == "mlp":
            m = fn.Sequential(fn.Dense(64, 256), fn.ReLU(), fn.Dense(256, 256), fn.ReLU(), fn.Dense(256, 10), seed=1)
        else:
            m = fn.Sequential(fn.Conv2d(1, 16, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2),
                              fn.Conv2d(16, 32, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2), fn.Flatten(),
                              fn.Dense(32 * 2 * 2, 10), input_shape=(1, 8, 8), seed=1)
        m.fit(X if net == "mlp" else X.reshape(-1, 1, 8, 8), y, loss=fn.CrossEntropy(),
              optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=15, batch_size=32, precision=precision)
        acc[precision] = m.evaluate(Xt if net == "mlp" else Xt.reshape(-1, 1, 8, 8), yt,
                                    precision=precision)["accuracy"]
    assert acc[None] > 0.95
    assert acc["bf16-mixed"] >= acc[None] - 0.01, acc


def test_lstm_solves_the_adding_problem_in_bfloat16():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
    from adding_problem import TRIVIAL_MSE, adding_data
    rng = np.random.default_rng([0, 50])
    X, y = adding_data(5000, 50, rng)
    Xv, yv = adding_data(1000, 50, rng)
    m = fn.Sequential(fn.LSTM(2, 32), fn.Dense(32, 1), input_shape=(50, 2), seed=0)
    # one thread: the result is the same on any number, and a busy machine makes two crawl
    m.fit(X, y, loss=fn.MSE(), optimizer=fn.Adam(lr=3e-3), epochs=10, batch_size=32, clip_norm=1.0,
          precision="bf16-mixed", threads=1)
    assert m.evaluate(Xv, yv, precision="bf16-mixed")["loss"] < 0.05 * TRIVIAL_MSE


def test_resumed_bf16_fit_is_bit_identical_to_uninterrupted(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((150, 12)).astype(np.float32)
    y = rng.integers(0, 3, 150)

    def model():
        return fn.Sequential(fn.Dense(12, 64), fn.ReLU(), fn.Dense(64, 3), seed=4)

    full = model()
    full.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=4, batch_size=16,
             precision="bf16-mixed")
    part = model()
    part.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=2, batch_size=16,
             precision="bf16-mixed")
    path = tmp_path / "ckpt.safetensors"
    part.save(path, include_optimizer=True)
    resumed = fn.load(path)
    assert resumed.dtype == np.float32          # the file holds the float32 master weights
    resumed.fit(X, y, epochs=2, batch_size=16, precision="bf16-mixed")
    np.testing.assert_array_equal(resumed._params, full._params)


def test_validation_runs_in_the_fits_precision():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((120, 12)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    m = fn.Sequential(fn.Dense(12, 64), fn.ReLU(), fn.Dense(64, 3), seed=0)
    h = m.fit(X[:80], y[:80], loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=1, batch_size=16,
              validation_data=(X[80:], y[80:]), precision="bf16-mixed")
    assert h.history["val_loss"][0] == m.evaluate(X[80:], y[80:], precision="bf16-mixed")["loss"]
    assert h.history["val_loss"][0] != m.evaluate(X[80:], y[80:])["loss"]


def test_train_step_in_bf16_updates_with_the_bf16_gradient():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 12)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    a = fn.Sequential(fn.Dense(12, 32), fn.ReLU(), fn.Dense(32, 3), seed=0)
    b = fn.Sequential(fn.Dense(12, 32), fn.ReLU(), fn.Dense(32, 3), seed=0)
    _, g = a.loss_and_grad(X, y, fn.CrossEntropy(), precision="bf16-mixed")
    b.train_step(X, y, fn.CrossEntropy(), fn.SGD(lr=0.1), precision="bf16-mixed")
    p32 = np.concatenate([p.ravel() for p in a.parameters()])
    g32 = np.concatenate([x.ravel() for x in g])
    np.testing.assert_array_equal(np.concatenate([p.ravel() for p in b.parameters()]), p32 - np.float32(0.1) * g32)


# ---------------------------------------------------------------- bad input
def test_precision_is_checked():
    X = np.ones((4, 3), dtype=np.float32)
    y = np.array([0, 1, 0, 1])
    m64 = fn.Sequential(fn.Dense(3, 2), dtype="float64")
    for call in (lambda: m64.fit(X, y, loss=fn.CrossEntropy(), precision="bf16-mixed"),
                 lambda: m64.forward(X, precision="bf16-mixed"),
                 lambda: m64.loss_and_grad(X, y, fn.CrossEntropy(), precision="bf16-mixed")):
        with pytest.raises(ValueError, match="precision='bf16-mixed'.*float32 model"):
            call()
    m = fn.Sequential(fn.Dense(3, 2))
    for bad in ("bf16", "float16", "float64", 16, "BF16-MIXED"):
        with pytest.raises(ValueError, match=r"precision must be None, 'float32' .* or 'bf16-mixed'"):
            m.fit(X, y, loss=fn.CrossEntropy(), precision=bad)
        with pytest.raises(ValueError, match="precision must be"):
            m.train_step(X, y, fn.CrossEntropy(), fn.SGD(lr=0.1), precision=bad)
        with pytest.raises(ValueError, match="precision must be"):
            m.predict(X, precision=bad)
    # the model's own dtype is the default
    np.testing.assert_array_equal(m.forward(X, precision="float32"), m.forward(X))
    np.testing.assert_array_equal(m64.forward(X, precision="float64"), m64.forward(X))


def test_forced_kernel_that_is_missing_falls_back_with_a_warning(tmp_path):
    import subprocess
    code = "import fastnn._core as c; print(c.BF16)"
    env = dict(os.environ, FASTNN_BF16="no-such-kernel")
    # from an empty folder: the installed fastnn, not a checkout's sources in the working directory
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == _engine.bf16_kernels()[-1]
    assert "FASTNN_BF16='no-such-kernel'" in out.stderr
    with pytest.raises(ValueError, match="not available"):
        _engine.bf16_use("no-such-kernel")
