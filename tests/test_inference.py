"""Inference through the cached runners (``forward``/``predict`` in eval mode): the same results as the
training executor's forward where the same kernels run and float32 rounding where a new one does
(one-row products, the narrow layers now on the own kernels), exactly the same on 1, 2 and 3 threads,
one row alone as in a batch, ``out=``, the cache (bounded, rebuilt with the plan, never holding
weights), every layer family in eval mode against PyTorch, and the input errors of before."""
import pickle

import numpy as np
import pytest

import fastnn as fn
from fastnn._core import _engine


def _mlp(dt="float32", narrow=True, seed=0):
    """784-256-256-(10 | 256): with ``narrow=False`` every Dense is one the training executor also
    multiplies on the own kernels (256x256 weights and more), so both executors run the same kernels."""
    return fn.Sequential(fn.Dense(300, 256), fn.ReLU(), fn.Dense(256, 256), fn.Tanh(),
                         fn.Dense(256, 10 if narrow else 256), dtype=dt, seed=seed)


def _x(n, f=300, seed=1, dt=np.float32):
    return np.random.default_rng(seed).standard_normal((n, f)).astype(dt)


def _reference(m, X):
    """The MLP in float64 from its float32 weights."""
    a = X.astype(np.float64)
    for layer in m.layers:
        if isinstance(layer, fn.Dense):
            a = a @ layer.weight.astype(np.float64).T + layer.bias.astype(np.float64)
        elif isinstance(layer, fn.ReLU):
            a = np.maximum(a, 0)
        elif isinstance(layer, fn.Tanh):
            a = np.tanh(a)
    return a


# batch sizes whose units have the rows of the training executor's chunks (64 rows would be two
# units of 32 here, one chunk there)
@pytest.mark.parametrize("n", [2, 5, 32, 63, 100, 128, 301])
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_forward_equals_the_training_executor_where_the_same_kernels_run(n, dt):
    m = _mlp(dt, narrow=False)
    X = _x(n, dt=dt)
    ref = m.forward(X, training=True)        # no dropout, no BatchNorm: the same ops, chunk by chunk
    for t in (1, 2, 3):
        np.testing.assert_array_equal(m.forward(X, threads=t), ref)


def test_weights_packed_by_several_threads_give_one_threads_bits():
    # widths that are not whole blocks of the packed copy (shared out among the threads) and a batch
    # of several units
    def model():
        return fn.Sequential(fn.Dense(300, 200), fn.ReLU(), fn.Dense(200, 70), fn.ReLU(), fn.Dense(70, 130), seed=3)

    X = _x(517)
    out = {t: model().forward(X, threads=t) for t in (3, 2, 1)}    # each a new model: nothing packed before
    np.testing.assert_allclose(out[1], _reference(model(), X), rtol=1e-4, atol=1e-5)
    for t in (2, 3):
        np.testing.assert_array_equal(out[t], out[1])


@pytest.mark.parametrize("n", [1, 2, 17, 64, 97, 1000])
def test_forward_agrees_to_float32_rounding_where_new_kernels_run(n):
    m = _mlp("float32")                      # the 10-wide layer: BLAS in training, the own kernels here
    X = _x(n)
    out = m.forward(X)
    np.testing.assert_allclose(out, m.forward(X, training=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, _reference(m, X), rtol=1e-4, atol=1e-5)
    for t in (2, 3):
        np.testing.assert_array_equal(m.forward(X, threads=t), out)


def test_one_row_agrees_with_the_same_row_in_a_batch():
    m = _mlp("float32")
    X = _x(300)
    batch = m.forward(X)
    for i in (0, 7, 131, 299):
        np.testing.assert_allclose(m.forward(X[i:i + 1]), batch[i:i + 1], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(m.forward(X[i:i + 1], threads=1), m.forward(X[i:i + 1], threads=2))


@pytest.mark.skipif(_engine.SMALL_GEMM_ISA != "avx512", reason="the one-row kernel shares the batch kernel's "
                    "sum order only in the AVX-512 build")
def test_one_row_has_the_bits_of_a_small_batch_with_avx512():
    m = _mlp("float32")
    X = _x(40)
    batch = m.forward(X)                     # 2 units of 20 rows: the dot-product kernel of small batches
    for i in (0, 13, 39):
        np.testing.assert_array_equal(m.forward(X[i:i + 1]), batch[i:i + 1])


@pytest.mark.parametrize("loss,ref", [
    (fn.CrossEntropy(), lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)),
    (fn.BinaryCrossEntropy(), lambda z: 1 / (1 + np.exp(-z))),
    (fn.NLLLoss(), np.exp),
    (fn.MSE(), lambda z: z),
])
@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_predict_applies_the_link_in_the_compiled_call(loss, ref, dt):
    m = _mlp(dt)
    m.loss = loss
    X = _x(77, dt=dt)
    p = m.predict(X)
    z = m.forward(X)
    np.testing.assert_array_equal(p, loss.link(z))
    np.testing.assert_allclose(p, ref(z.astype(np.float64)), rtol=1e-5 if dt == "float32" else 1e-12, atol=1e-7)
    for t in (1, 3):
        np.testing.assert_array_equal(m.predict(X, threads=t), p)


def test_a_custom_link_is_still_applied():
    class Halved(fn.MSE):
        def link(self, out):
            return out / 2

    m = _mlp()
    m.loss = Halved()
    X = _x(9)
    np.testing.assert_array_equal(m.predict(X), m.forward(X) / 2)
    out = np.empty((9, 10), np.float32)
    assert m.predict(X, out=out) is out
    np.testing.assert_array_equal(out, m.forward(X) / 2)


# ---------------------------------------------------------------- out=
@pytest.mark.parametrize("n", [1, 50, 300])
def test_out_receives_the_result(n):
    m = _mlp()
    m.loss = fn.CrossEntropy()
    X = _x(n)
    out = np.full((n, 10), np.nan, np.float32)
    assert m.forward(X, out=out) is out
    np.testing.assert_array_equal(out, m.forward(X))
    assert m.predict(X, out=out) is out
    np.testing.assert_array_equal(out, m.predict(X))


def test_out_may_have_the_output_shape_per_step():
    m = fn.Sequential(fn.LSTM(4, 6, return_sequences=True), fn.Dense(6, 3), input_shape=(5, 4), seed=0)
    X = np.random.default_rng(0).standard_normal((7, 5, 4)).astype(np.float32)
    out = np.empty((7, 5, 3), np.float32)
    assert m.forward(X, out=out) is out
    np.testing.assert_array_equal(out, m.forward(X))
    flat = np.empty((7, 15), np.float32)
    np.testing.assert_array_equal(m.forward(X, out=flat), out.reshape(7, 15))


@pytest.mark.parametrize("bad", [
    np.empty((5, 10), np.float64),                      # the wrong dtype
    np.empty((4, 10), np.float32),                      # the wrong shape
    np.empty((5, 11), np.float32),
    np.empty((10, 5), np.float32).T,                    # not C-contiguous
    [[0.0] * 10] * 5,                                   # not an array
])
def test_out_rejects_arrays_it_cannot_write_into(bad):
    m = _mlp()
    with pytest.raises(ValueError, match="out"):
        m.forward(_x(5), out=bad)
    with pytest.raises(ValueError, match="out"):
        m.predict(_x(5), out=bad)


def test_out_rejects_a_read_only_array():
    m = _mlp()
    out = np.empty((5, 10), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out.*read-only"):
        m.forward(_x(5), out=out)


# ---------------------------------------------------------------- the cache
def test_the_cache_is_bounded_and_results_do_not_depend_on_it():
    m = _mlp()
    X = _x(200)
    full = m.forward(X)
    for n in range(1, 130, 3):
        np.testing.assert_allclose(m.forward(X[:n]), full[:n], rtol=1e-5, atol=1e-6)
    assert len(m._runners[1]) <= m.INFER_CACHE


def test_weights_changed_in_place_and_loaded_state_are_seen():
    m, other = _mlp(seed=0), _mlp(seed=5)
    X = _x(33)
    before = m.forward(X)
    m.layers[0].weight[...] *= 2
    changed = m.forward(X)
    assert not np.allclose(changed, before)
    np.testing.assert_allclose(changed, _reference(m, X), rtol=1e-4, atol=1e-5)
    m.load_state_dict(other.state_dict())
    np.testing.assert_array_equal(m.forward(X), other.forward(X))
    np.testing.assert_array_equal(m.forward(X[:1]), other.forward(X[:1]))


def test_batchnorm_running_statistics_are_read_on_every_call():
    m = fn.Sequential(fn.Dense(6, 8), fn.BatchNorm1d(8), fn.ReLU(), fn.Dense(8, 2), seed=0)
    X = _x(12, 6)
    before = m.forward(X)
    m.fit(X, np.arange(12) % 2, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=2, batch_size=4)
    after = m.forward(X)
    assert not np.allclose(before, after)
    fresh = fn.Sequential(fn.Dense(6, 8), fn.BatchNorm1d(8), fn.ReLU(), fn.Dense(8, 2), seed=0)
    fresh.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(fresh.forward(X), after)


def test_a_pickled_model_builds_its_own_runners():
    m = _mlp()
    X = _x(21)
    ref = m.forward(X)
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m2.forward(X), ref)
    m2.layers[0].weight[...] = 0
    np.testing.assert_array_equal(m.forward(X), ref)       # the copy's buffers are its own


def test_a_model_built_by_its_first_data_gets_a_plan_for_that_shape():
    m = fn.Sequential(fn.Conv1d(1, 4, 3), fn.ReLU(), fn.Flatten(), fn.Dense(4 * 8, 3), seed=0)
    X = np.random.default_rng(0).standard_normal((5, 1, 10)).astype(np.float32)
    out = m.forward(X)
    assert out.shape == (5, 3)
    np.testing.assert_allclose(m.forward(X[:2]), out[:2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        m.forward(np.zeros((2, 1, 12), np.float32))


def test_layers_changed_after_building_are_refused_not_ignored():
    m = _mlp()
    m.forward(_x(3))
    m.layers.append(fn.ReLU())
    with pytest.raises(ValueError, match="layers changed"):
        m.forward(_x(3))


# ---------------------------------------------------------------- every family in eval mode
def _families():
    return {
        "bn_dropout": (fn.Sequential(fn.Dense(12, 16), fn.BatchNorm1d(16), fn.ReLU(), fn.Dropout(0.3),
                                     fn.Dense(16, 4), seed=1), (12,)),
        "residual_ln": (fn.Sequential(fn.Dense(12, 16), fn.Residual(fn.LayerNorm(16), fn.Dense(16, 16), fn.ReLU(),
                                                                    fn.Dense(16, 16)),
                                      fn.LayerNorm(16), fn.Dense(16, 4), seed=2), (12,)),
        "conv2d": (fn.Sequential(fn.Conv2d(2, 5, 3, padding=1), fn.BatchNorm2d(5), fn.ReLU(), fn.MaxPool2d(2),
                                 fn.Conv2d(5, 6, 3), fn.ReLU(), fn.AdaptiveAvgPool2d(1), fn.Flatten(),
                                 fn.Dense(6, 4), input_shape=(2, 9, 9), seed=3), (2, 9, 9)),
        "conv1d": (fn.Sequential(fn.Conv1d(1, 25, 5, padding=2), fn.ReLU(), fn.AvgPool1d(2), fn.Flatten(),
                                 fn.Dense(25 * 10, 4), input_shape=(1, 20), seed=4), (1, 20)),
        "lstm": (fn.Sequential(fn.LSTM(5, 12, num_layers=2), fn.Dense(12, 4), input_shape=(7, 5), seed=5), (7, 5)),
        "gru": (fn.Sequential(fn.GRU(5, 12), fn.Dense(12, 4), input_shape=(7, 5), seed=6), (7, 5)),
        "rnn": (fn.Sequential(fn.RNN(5, 12), fn.Dense(12, 4), input_shape=(7, 5), seed=7), (7, 5)),
    }


@pytest.mark.parametrize("family", sorted(_families()))
def test_every_family_in_eval_mode_matches_torch_and_any_thread_count(family):
    torch = pytest.importorskip("torch")
    m, shape = _families()[family]
    rng = np.random.default_rng(8)
    if m.plan.has_bn:            # running statistics away from 0 and 1
        m.fit(rng.standard_normal((64,) + shape).astype(np.float32), rng.integers(0, 4, 64),
              loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05), epochs=1, batch_size=16, seed=0)
    m.loss = fn.CrossEntropy()
    X = rng.standard_normal((45,) + shape).astype(np.float32)
    p = m.predict(X)
    for t in (1, 2, 3):
        np.testing.assert_array_equal(m.predict(X, threads=t), p)
    for i in (0, 44):
        np.testing.assert_allclose(m.predict(X[i:i + 1]), p[i:i + 1], rtol=1e-5, atol=1e-6)
    tm = m.to_torch().eval()
    with torch.inference_mode():
        ref = torch.softmax(tm(torch.from_numpy(X)).double(), 1).numpy()
    np.testing.assert_allclose(p, ref, rtol=1e-4, atol=1e-5)


def test_lengths_reach_the_recurrent_layers():
    m = fn.Sequential(fn.GRU(3, 8), fn.Dense(8, 2), input_shape=(6, 3), seed=0)
    X = np.random.default_rng(0).standard_normal((9, 6, 3)).astype(np.float32)
    lengths = np.array([6, 1, 2, 3, 4, 5, 6, 2, 3])
    out = m.forward(X, lengths=lengths)
    for i, n in enumerate(lengths):
        short = fn.Sequential(fn.GRU(3, 8), fn.Dense(8, 2), input_shape=(int(n), 3), seed=0)
        short.load_state_dict(m.state_dict())
        np.testing.assert_allclose(out[i], short.forward(X[i:i + 1, :n])[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- input errors, as before
@pytest.mark.parametrize("bad,err,msg", [
    (np.full((3, 300), np.nan, np.float32), ValueError, "X contains NaN or Inf"),
    (np.zeros((3, 299), np.float32), ValueError, "X has 299 features but the model's first Dense layer expects 300"),
    (np.zeros(300, np.float32), ValueError, "X must be 2-D"),
    (np.zeros((0, 300), np.float32), ValueError, "X is empty"),
    (np.array([["a"] * 300]), TypeError, "X must be numeric"),
])
def test_bad_input_gets_the_same_errors(bad, err, msg):
    m = _mlp()
    m.loss = fn.CrossEntropy()
    for f in (m.forward, m.predict):
        with pytest.raises(err, match=msg):
            f(bad)


def test_nan_is_found_in_any_row_and_in_float64_input():
    m = _mlp()
    for dt in (np.float32, np.float64):
        X = _x(200, dt=dt)
        X[157, 3] = np.inf
        with pytest.raises(ValueError, match="NaN or Inf"):
            m.forward(X)
        with pytest.raises(ValueError, match="NaN or Inf"):
            m.forward(X, threads=3)


def _placed(X, shift):
    """A C-contiguous copy of X starting ``shift`` elements past a 64-byte boundary."""
    raw = np.empty(X.size + 64, dtype=X.dtype)
    start = (-raw.ctypes.data % 64) // X.itemsize + shift
    out = raw[start:start + X.size].reshape(X.shape)
    out[...] = X
    return out


@pytest.mark.parametrize("n", [1, 40, 300])
def test_input_read_in_place_or_copied_by_alignment_gives_the_same_bits(n):
    # rows of 320 float32 are whole cache lines: read in place where X starts on one, copied where not
    m = fn.Sequential(fn.Dense(320, 256), fn.ReLU(), fn.Dense(256, 10), seed=4)
    X = _x(n, f=320)
    outs = [m.forward(_placed(X, shift), threads=t) for shift in (0, 1, 3) for t in (1, 2)]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    np.testing.assert_allclose(outs[0], _reference(m, X), rtol=1e-4, atol=1e-5)
    X[n // 2, 7] = np.nan
    for shift in (0, 1):
        with pytest.raises(ValueError, match="NaN or Inf"):
            m.forward(_placed(X, shift))


def test_parameters_gradients_and_optimizer_state_start_on_cache_lines():
    m = fn.Sequential(fn.Dense(30, 16), fn.BatchNorm1d(16), fn.ReLU(), fn.Dense(16, 3), seed=0)
    opt = fn.Adam(lr=1e-3)
    m.fit(_x(64, f=30), np.arange(64) % 3, loss=fn.CrossEntropy(), optimizer=opt, epochs=1, verbose=0)
    for a in (m._params, m._grads, m._running, opt.state):
        assert a.ctypes.data % 64 == 0
    assert m.parameters()[0].ctypes.data % 64 == 0
    m2 = pickle.loads(pickle.dumps(m))
    assert m2._params.ctypes.data % 64 == 0 and m2.parameters()[0].ctypes.data % 64 == 0
    np.testing.assert_array_equal(m2.forward(_x(5, f=30)), m.forward(_x(5, f=30)))


@pytest.mark.parametrize("kind", ["lstm", "conv", "mlp"])
def test_every_threads_work_buffer_and_scratch_start_on_cache_lines(kind):
    # a product whose operand rows straddle cache lines runs slower (an LSTM step's transposed
    # weights live in the scratch area), so every thread's areas start on 64-byte boundaries
    if kind == "lstm":
        m = fn.Sequential(fn.LSTM(5, 7), fn.Dense(7, 3), input_shape=(6, 5), seed=0)
    elif kind == "conv":
        m = fn.Sequential(fn.Conv2d(1, 3, 3), fn.ReLU(), fn.Flatten(), fn.Dense(75, 3), input_shape=(1, 7, 7),
                          seed=0)
    else:
        m = fn.Sequential(fn.Dense(9, 13), fn.ReLU(), fn.Dense(13, 3), seed=0)
    m.MIN_FLOP_PER_THREAD = 1
    X = np.random.default_rng(0).standard_normal((300,) + m.input_shape).astype(np.float32)
    outs = [m.forward(X, threads=t) for t in (1, 2, 3)]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])
    runners = list(m._runners[1].values())
    assert runners
    for r in runners:
        for buf, stride in ((r.work, r.slot_size), (r.scratch, r.scratch_stride)):
            assert buf.ctypes.data % 64 == 0 and (stride * buf.itemsize) % 64 == 0


def test_work_per_example_counts_a_convolution_at_every_output_position():
    # the thread and unit choices weigh a call by multiply-adds per example: LeNet-5's convolutions
    # apply their weights at 28x28 and 10x10 positions (counted once, batch 32 ran on one thread)
    m = fn.Sequential(fn.Conv2d(1, 6, 5, padding=2), fn.ReLU(), fn.MaxPool2d(2), fn.Conv2d(6, 16, 5), fn.ReLU(),
                      fn.MaxPool2d(2), fn.Flatten(), fn.Dense(400, 120), fn.ReLU(), fn.Dense(120, 10),
                      input_shape=(1, 28, 28), seed=0)
    m.predict(np.zeros((1, 1, 28, 28), np.float32))
    expected = (6 * 25 + 6) * 28 * 28 + (16 * 6 * 25 + 16) * 10 * 10 + (400 * 120 + 120) + (120 * 10 + 10)
    assert m._plan.n_applied == expected
    assert m._threads_for(32 // 3, 2) == 2


def test_training_scratch_of_every_chunk_starts_on_a_cache_line():
    # a GRU of 5 units: its transposed weights (75 floats) are not a whole number of cache lines
    m = fn.Sequential(fn.GRU(3, 5), fn.Dense(5, 3), input_shape=(4, 3), seed=0)
    X = np.random.default_rng(0).standard_normal((64, 4, 3)).astype(np.float32)
    m.fit(X, np.arange(64) % 3, loss=fn.CrossEntropy(), optimizer=fn.SGD(0.01), epochs=1, batch_size=32,
          verbose=0)
    assert m._scratch_buf.ctypes.data % 64 == 0 and (m._plan.scratch * 4) % 64 == 0


def test_other_input_types_convert_as_before():
    m = _mlp()
    X = _x(11)
    ref = m.forward(X)
    np.testing.assert_array_equal(m.forward(X.astype(np.float64)), m.forward(X.astype(np.float64).astype(np.float32)))
    np.testing.assert_array_equal(m.forward(X.tolist()), ref)
    np.testing.assert_array_equal(m.forward(np.asfortranarray(X)), ref)
    Xi = (X * 10).astype(np.int16)
    np.testing.assert_array_equal(m.forward(Xi), m.forward(Xi.astype(np.float32)))


def test_calls_from_several_python_threads_get_their_own_results():
    from concurrent.futures import ThreadPoolExecutor

    m = _mlp()
    m.loss = fn.CrossEntropy()
    inputs = [_x(n, seed=n) for n in (1, 3, 40, 200, 1, 40, 3, 200) * 3]
    expected = [m.predict(X) for X in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda X: m.predict(X, threads=2), inputs))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
