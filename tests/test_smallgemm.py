"""The float32 GEMMs of fastnn/_core/smallgemm.pxi (AVX-512 and AVX2 builds): a Dense layer's products over a
batch's or a chunk's rows. Odd shapes against float64 (the same weights, rounded to float32), on both
forward kernels (below 64 rows and from there on: 131 rows), in the chunk phases and the neuron-split
(wide) ones, with input deltas that overwrite and that add, on several rows per example; thread-count
invariance; and the planner's choice of layers."""
import os

import numpy as np
import pytest

import fastnn as fn
from conftest import counting_gemm_calls
from fastnn import _plan
from fastnn._core import _engine

needs_kernels = pytest.mark.skipif(not _engine.SMALL_GEMM, reason="this build multiplies on BLAS only")


@pytest.fixture
def everywhere(monkeypatch):
    """Every Dense layer, however small, on the kernels at any row count."""
    monkeypatch.setattr(_plan, "SMALL_MIN_WEIGHTS", 1)
    monkeypatch.setattr(_plan, "SMALL_MIN_OUT", 1)
    monkeypatch.setattr(_plan, "SMALL_MAX_ROWS", 10 ** 6)
    monkeypatch.setattr(_plan, "SMALL_BIG_MAX_ROWS", 10 ** 6)
    monkeypatch.setattr(_plan, "SMALL_MAX_GRAD_ROWS", 10 ** 6)


def _chunked(dt):
    # a Residual: the first Dense's delta is written by the skip and added to by the block's Dense
    return fn.Sequential(fn.Dense(37, 45), fn.Tanh(),
                         fn.Residual(fn.Dense(45, 45), fn.ReLU(), fn.Dense(45, 45)),
                         fn.Dense(45, 5), dtype=dt, seed=1)


def _wide(dt):
    return fn.Sequential(fn.Dense(70, 150), fn.ReLU(), fn.Dense(150, 131), fn.Sigmoid(), fn.Dense(131, 3),
                         dtype=dt, seed=2)


def _grouped(dt):
    # a Dense on (steps, features): 5 rows per example in every product
    return fn.Sequential(fn.Dense(19, 33), fn.Tanh(), fn.Flatten(), fn.Dense(165, 4), input_shape=(5, 19),
                         dtype=dt, seed=3)


def _packed(dt):
    # 1024 inputs: rows of W and of the layer input 4 KB apart, which the kernel copies to a block
    # first (48+ rows); the first Dense's delta is written by the skip and added to
    return fn.Sequential(fn.Dense(20, 1024), fn.Tanh(),
                         fn.Residual(fn.Dense(1024, 100), fn.ReLU(), fn.Dense(100, 1024)),
                         fn.Dense(1024, 3), dtype=dt, seed=4)


CASES = {"chunked": (_chunked, (37,)), "wide": (_wide, (70,)), "wide_residual": (_chunked, (37,)),
         "wide_packed": (_packed, (20,)), "grouped": (_grouped, (5, 19))}


def _pair(build):
    """A float32 model and a float64 one with the float32 model's weights."""
    m32, m64 = build("float32"), build("float64")
    m64.load_state_dict({k: v.astype(np.float64) for k, v in m32.state_dict().items()})
    return m32, m64


def _wide_everywhere(monkeypatch):
    monkeypatch.setattr(_plan, "WIDE_MIN_OUT", 1)
    monkeypatch.setattr(_plan, "WIDE_MIN_WEIGHTS", 1)
    monkeypatch.setattr(_plan, "WIDE_MAX_BATCH", 10 ** 6)


@needs_kernels
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n", [29, 1, 6, 53, 131])
def test_gradients_and_outputs_match_float64(case, n, everywhere, monkeypatch, rng):
    build, shape = CASES[case]
    if case.startswith("wide"):
        _wide_everywhere(monkeypatch)
    m32, m64 = _pair(build)
    ops = m32._plan.ops
    assert all(op["sg_rows"] > 0 and op["sg_grad_rows"] > 0 for op in ops if op["kind"] == _plan.OP["dense"])
    if case.startswith("wide"):
        assert (m32._plan.phases("train", n)[:, 0] == _plan.PH["wide_fwd"]).sum() >= 2
    X = rng.normal(size=(n,) + shape)
    y = rng.integers(0, m32._plan.n_outputs, n)
    l32, g32 = m32.loss_and_grad(X.astype(np.float32), y, fn.CrossEntropy(), threads=2)
    l64, g64 = m64.loss_and_grad(X, y, fn.CrossEntropy(), threads=2)
    assert abs(l32 - l64) <= 1e-5 * max(1.0, abs(l64))
    for (name, _), a, b in zip(m64.named_parameters(), g32, g64):
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(scale, 1e-3), err_msg=name)
    np.testing.assert_allclose(m32.predict(X.astype(np.float32)), m64.predict(X), rtol=0, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("batch_size", [61, 130])
def test_training_on_the_kernels_is_thread_count_invariant(case, batch_size, everywhere, monkeypatch, rng):
    build, shape = CASES[case]
    if case.startswith("wide"):
        _wide_everywhere(monkeypatch)
    X = rng.normal(size=(203,) + shape).astype(np.float32)
    y = rng.integers(0, 3, 203)
    outs = []
    for threads in (1, 2, 3):
        m = build("float32")
        m.MIN_FLOP_PER_THREAD = 1            # every step on every thread asked for
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=batch_size,
              threads=threads)
        outs.append(np.concatenate([p.ravel() for p in m.parameters()]))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@needs_kernels
@pytest.mark.parametrize("n", [41, 97])
def test_the_kernels_agree_with_blas(n, everywhere, monkeypatch, rng):
    """The same float32 step on the kernels and on BLAS: equal to float32 rounding."""
    X = rng.normal(size=(n, 70)).astype(np.float32)
    y = rng.integers(0, 3, n)
    with counting_gemm_calls() as calls:
        _, g_sg = _wide("float32").loss_and_grad(X, y, fn.CrossEntropy())
    assert sum(v for (path, _), v in calls.items() if path == "blas") == 0
    assert all(calls["own", kind] > 0 for kind in ("forward", "input_delta", "weight_grad"))
    monkeypatch.setattr(_plan, "SMALL_MAX_ROWS", 0)
    monkeypatch.setattr(_plan, "SMALL_MAX_GRAD_ROWS", 0)
    m = _wide("float32")
    assert all(op["sg_rows"] == 0 and op["sg_grad_rows"] == 0 for op in m._plan.ops)
    with counting_gemm_calls() as calls:
        _, g_blas = m.loss_and_grad(X, y, fn.CrossEntropy())
    assert sum(v for (path, _), v in calls.items() if path == "own") == 0
    assert all(calls["blas", kind] > 0 for kind in ("forward", "input_delta", "weight_grad"))
    for a, b in zip(g_sg, g_blas):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


LIMIT_NAMES = ("SMALL_MIN_WEIGHTS", "SMALL_MAX_ROWS", "SMALL_MAX_GRAD_ROWS", "SMALL_GRAD_MIN_ROWS",
               "SMALL_BIG_MAX_ROWS", "SMALL_MIN_OUT")


def _limits(monkeypatch, isa):
    for name, v in zip(LIMIT_NAMES, _plan.SMALL_LIMITS[isa], strict=True):
        monkeypatch.setattr(_plan, name, v)


@pytest.fixture
def avx512_limits(monkeypatch):
    """The planner's limits for the AVX-512 kernels, whatever this build is."""
    _limits(monkeypatch, "avx512")


@pytest.fixture
def avx2_limits(monkeypatch):
    """The planner's limits for the AVX2 kernels, whatever this build is."""
    _limits(monkeypatch, "avx2")


def test_the_planner_takes_the_limits_of_the_build():
    assert tuple(getattr(_plan, name) for name in LIMIT_NAMES) == _plan.SMALL_LIMITS[_engine.SMALL_GEMM_ISA]
    assert _engine.SMALL_GEMM == (_engine.SMALL_GEMM_ISA is not None)
    m = fn.Sequential(fn.Dense(64, 1024), fn.ReLU(), fn.Dense(1024, 10), seed=0)
    want = (_plan.SMALL_MAX_ROWS, _plan.SMALL_MAX_GRAD_ROWS, 0)
    assert [(op["sg_rows"], op["sg_grad_rows"], op["sg_grad_min"]) for op in m._plan.ops][0] == want
    # a layer of WIDE_BIG_WEIGHTS weights or more takes the big layers' row limit
    big = fn.Sequential(fn.Dense(512, 512), fn.ReLU(), fn.Dense(512, 10), seed=0)
    want = (_plan.SMALL_BIG_MAX_ROWS, _plan.SMALL_MAX_GRAD_ROWS, 0)
    assert 512 * 512 >= _plan.WIDE_BIG_WEIGHTS
    assert [(op["sg_rows"], op["sg_grad_rows"], op["sg_grad_min"]) for op in big._plan.ops][0] == want


def test_the_planner_picks_big_dense_layers(avx512_limits):
    m = fn.Sequential(fn.Dense(784, 256), fn.ReLU(), fn.Dense(256, 64), fn.ReLU(), fn.Dense(64, 1024),
                      fn.Dense(1024, 10), fn.Residual(fn.Dense(10, 10), projection=None), seed=0)
    rows = [(op["sg_rows"], op["sg_grad_rows"], op["sg_grad_min"]) for op in m._plan.ops
            if op["kind"] == _plan.OP["dense"]]
    # 784x256 >= 256x256 > 256x64; 64x1024 has 256x256 weights, 1024x10 fewer: smaller layers keep
    # their products on BLAS and sum their weight gradients on the kernels over 64 to 512 rows
    assert rows == [(512, 512, 0), (0, 512, 64), (512, 512, 0), (0, 512, 64), (0, 512, 64)]
    big = fn.Sequential(fn.Dense(784, 1024), fn.ReLU(), fn.Dense(1024, 1024), seed=0)
    assert [(op["sg_rows"], op["sg_grad_rows"], op["sg_grad_min"]) for op in big._plan.ops] == [
        (512, 512, 0), (512, 512, 0)]


def _chunked_grads_match_float64(n, rng):
    """_chunked's float32 gradients on n random rows, held against float64; the model and the
    products it ran, by path."""
    X = rng.normal(size=(n, 37))
    y = rng.integers(0, 5, n)
    m32, m64 = _pair(_chunked)
    with counting_gemm_calls() as calls:
        _, g32 = m32.loss_and_grad(X.astype(np.float32), y, fn.CrossEntropy(), threads=2)
    _, g64 = m64.loss_and_grad(X, y, fn.CrossEntropy(), threads=2)
    for (name, _), a, b in zip(m64.named_parameters(), g32, g64):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(np.abs(b).max(), 1e-3), err_msg=name)
    return m32, calls


@needs_kernels
@pytest.mark.parametrize("n, on_kernels", [(131, True), (64, True), (40, False)])
def test_small_layers_sum_weight_gradients_on_the_kernels_from_64_rows(n, on_kernels, avx512_limits, rng):
    """Layers under SMALL_MIN_WEIGHTS keep their products on BLAS; their weight gradients over 64+
    rows go to the kernels, and come out close to float64."""
    m32, calls = _chunked_grads_match_float64(n, rng)
    assert all(op["sg_rows"] == 0 and op["sg_grad_min"] == _plan.SMALL_GRAD_MIN_ROWS == 64
               for op in m32._plan.ops if op["kind"] == _plan.OP["dense"])
    n_dense = sum(op["kind"] == _plan.OP["dense"] for op in m32._plan.ops)
    assert calls["own", "forward"] == calls["own", "input_delta"] == 0
    # one weight-gradient product per gradient tile, on one path or the other
    assert calls["own", "weight_grad"] + calls["blas", "weight_grad"] >= n_dense
    if on_kernels:
        assert calls["blas", "weight_grad"] == 0
    else:
        assert calls["own", "weight_grad"] == 0


@needs_kernels
def test_with_the_avx2_limits_every_dense_layer_multiplies_on_the_kernels(avx2_limits, rng):
    """The AVX2 limits put every float32 Dense layer's products on the kernels, a 5-wide output
    layer too, and they come out close to float64."""
    m32, calls = _chunked_grads_match_float64(70, rng)
    n_dense = sum(op["kind"] == _plan.OP["dense"] for op in m32._plan.ops)
    assert min(op["n_out"] for op in m32._plan.ops if op["kind"] == _plan.OP["dense"]) == 5
    assert calls["own", "forward"] >= n_dense
    assert calls["blas", "forward"] == calls["blas", "input_delta"] == calls["blas", "weight_grad"] == 0


@needs_kernels
def test_small_layers_on_the_kernels_train_thread_count_invariant(rng):
    X = rng.normal(size=(203, 37)).astype(np.float32)
    y = rng.integers(0, 5, 203)
    outs = []
    for threads in (1, 2, 3):
        m = _chunked("float32")
        m.MIN_FLOP_PER_THREAD = 1
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=130,
              threads=threads)
        outs.append(np.concatenate([p.ravel() for p in m.parameters()]))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@needs_kernels
@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (3, 5, 7), (16, 784, 64), (29, 97, 101), (64, 1024, 24),
                                     (131, 257, 45), (6, 300, 130)])
def test_each_kernel_matches_float64(M, K, N, rng):
    """The kernels alone, on odd shapes: the forward product, and the broadcast one with op(A) = A or
    A^T, overwriting and accumulating."""
    A = rng.normal(size=(M, K)).astype(np.float32)
    W = rng.normal(size=(N, K)).astype(np.float32)
    D = rng.normal(size=(M, N)).astype(np.float32)
    A64, W64, D64 = (x.astype(np.float64) for x in (A, W, D))
    tol = lambda k: 1e-5 * np.sqrt(k) * 4

    C = np.full((M, N), np.nan, np.float32)
    _engine.own_gemm("fwd", A, W, C)
    np.testing.assert_allclose(C, A64 @ W64.T, rtol=0, atol=tol(K))
    Ci = np.full((M, K), np.nan, np.float32)
    _engine.own_gemm("bc", D, W, Ci)
    np.testing.assert_allclose(Ci, D64 @ W64, rtol=0, atol=tol(N))
    G = rng.normal(size=(N, K)).astype(np.float32)
    G0 = G.astype(np.float64)
    _engine.own_gemm("bc", D.T, A, G, accumulate=True)
    np.testing.assert_allclose(G, G0 + D64.T @ A64, rtol=0, atol=tol(M))


@needs_kernels
@pytest.mark.parametrize("M", [1, 4, 7])
def test_an_entry_has_the_same_bits_whatever_the_width_of_its_tile(M, rng):
    """A product's last block of columns runs on a tile only as wide as it needs: every column of
    C = A B (and C = A W^T) has the bits it has in a wider product, and matches float64."""
    K, N = 97, 2 * 64 + 24 + 3
    A = rng.normal(size=(M, K)).astype(np.float32)
    B = rng.normal(size=(K, N)).astype(np.float32)
    W = np.ascontiguousarray(B.T)
    wide, wide_fwd = np.empty((M, N), np.float32), np.empty((M, N), np.float32)
    _engine.own_gemm("bc", A, B, wide)
    _engine.own_gemm("fwd", A, W, wide_fwd)
    np.testing.assert_allclose(wide, A.astype(np.float64) @ B, rtol=0, atol=4e-5 * np.sqrt(K))
    for n in list(range(1, 26)) + [31, 33, 47, 49, 63, 65, 71, 73, 100, N - 1]:
        C, Cf = np.empty((M, n), np.float32), np.empty((M, n), np.float32)
        _engine.own_gemm("bc", A, np.ascontiguousarray(B[:, :n]), C)
        _engine.own_gemm("fwd", A, W[:n], Cf)
        np.testing.assert_array_equal(C, wide[:, :n])
        np.testing.assert_array_equal(Cf, wide_fwd[:, :n])


@needs_kernels
@pytest.mark.parametrize("M", [16, 21, 32, 47, 48, 64])
def test_an_entry_has_the_same_bits_whatever_the_rows_of_its_product(M, rng):
    """A weight gradient's tile of M rows copies B's long blocks and packs D^T from a number of rows
    on (the build's); a row of it has the bits of that row's product alone, and matches float64."""
    K, N = 600, 8 * 64 + 9
    D = rng.normal(size=(K, M + 3)).astype(np.float32)[:, 1:M + 1]      # strided, as dW's D^T
    B = rng.normal(size=(K, N)).astype(np.float32)
    C = np.empty((M, N), np.float32)
    _engine.own_gemm("bc", D.T, B, C)
    np.testing.assert_allclose(C, D.T.astype(np.float64) @ B, rtol=0, atol=4e-5 * np.sqrt(K))
    for i in range(M):
        row = np.empty((1, N), np.float32)
        _engine.own_gemm("bc", D.T[i:i + 1], B, row)
        np.testing.assert_array_equal(row[0], C[i])


@needs_kernels
@pytest.mark.parametrize("M", [63, 64, 65, 130])
@pytest.mark.parametrize("accumulate", [False, True])
def test_an_input_delta_row_has_the_same_bits_whatever_the_rows_of_its_product(M, accumulate, rng):
    """An input delta D W over M rows of D read in place, B's blocks short (K within one block) and
    its rows not 4 KB apart: from a number of rows on (the build's) B's blocks are copied; a row has
    the bits of that row's product alone, and matches float64."""
    K, N = 256, 3 * 24 + 5 + 64
    D = rng.normal(size=(M, K)).astype(np.float32)
    W = rng.normal(size=(K, N)).astype(np.float32)
    C0 = rng.normal(size=(M, N)).astype(np.float32)
    C = C0.copy()
    _engine.own_gemm("bc", D, W, C, accumulate=accumulate)
    want = D.astype(np.float64) @ W + (C0 if accumulate else 0)
    np.testing.assert_allclose(C, want, rtol=0, atol=4e-5 * np.sqrt(K))
    for i in range(M):
        row = C0[i:i + 1].copy()
        _engine.own_gemm("bc", D[i:i + 1], W, row, accumulate=accumulate)
        np.testing.assert_array_equal(row[0], C[i])


@needs_kernels
def test_own_gemm_checks_shapes():
    a = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        _engine.own_gemm("fwd", a.T, a.T, np.zeros((5, 5), np.float32))
    with pytest.raises(ValueError, match="fwd"):
        _engine.own_gemm("fwd", a, np.zeros((3, 6), np.float32), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="kind"):
        _engine.own_gemm("nt", a, a, a)


@needs_kernels
def test_the_kernels_sum_in_the_same_order_whatever_the_cache_size(rng):
    """The blocks of B are sized to the CPU's L1 (fastnn._core.l1_data_cache_bytes); each entry's
    FMA chain goes on across blocks, so every cache size gives the same bits."""
    from fastnn import _core
    A = rng.normal(size=(131, 700)).astype(np.float32)
    W = rng.normal(size=(300, 700)).astype(np.float32)
    D = rng.normal(size=(131, 300)).astype(np.float32)
    outs = []
    try:
        for l1 in (16 << 10, 32 << 10, 48 << 10, 1 << 20):
            kb = _engine.set_l1_cache(l1)
            C, Ci, G = np.empty((131, 300), np.float32), np.empty((131, 700), np.float32), np.empty((300, 700), np.float32)
            _engine.own_gemm("fwd", A, W, C)
            _engine.own_gemm("bc", D, W, Ci)
            _engine.own_gemm("bc", D.T, A, G)
            outs.append((kb, C, Ci, G))
    finally:
        _engine.set_l1_cache(_core.l1_data_cache_bytes() or 48 << 10)
    assert len({o[0] for o in outs}) >= 3            # the blocks did change size
    for o in outs[1:]:
        for a, b in zip(o[1:], outs[0][1:]):
            np.testing.assert_array_equal(a, b)


@needs_kernels
def test_the_kernels_sum_in_the_same_order_whatever_the_l2_size(rng):
    """Where A and a copy of B would not stay in the L2 cache together (fastnn._core.l2_cache_bytes),
    A's rows go in blocks; each entry's sum is the same, so every L2 size gives the same bits, and
    they agree with float64."""
    from fastnn import _core
    A = rng.normal(size=(131, 300)).astype(np.float32)
    W = rng.normal(size=(40, 300)).astype(np.float32)
    Wf = rng.normal(size=(300, 1024)).astype(np.float32)
    Wi = Wf[:, :40]                 # rows 4 KB apart: the input delta's kernel copies B first
    outs, blocks = [], []
    try:
        for l2 in (256 << 10, 512 << 10, 64 << 20):
            assert _engine.set_l2_cache(l2) == l2
            blocks.append(_engine.own_row_block(131, 40, 300))
            C, Ci = np.empty((131, 40), np.float32), np.empty((131, 40), np.float32)
            _engine.own_gemm("fwd", A, W, C)
            _engine.own_gemm("bc", A, Wi, Ci)
            outs.append((C, Ci))
    finally:
        _engine.set_l2_cache(_core.l2_cache_bytes() or 1 << 20)
    assert blocks[0] < 131 and blocks[-1] == 131      # the small L2 did split the rows
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):
            np.testing.assert_array_equal(a, b)
    A64 = A.astype(np.float64)
    for got, ref in zip(outs[0], (A64 @ W.T.astype(np.float64), A64 @ Wi.astype(np.float64))):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@needs_kernels
def test_training_has_the_same_bits_whatever_the_l2_size(rng):
    """301 rows against the 512-wide layer's units of 128 neurons go in blocks of rows with a 1 MB L2
    and in one pass with a 64 MB one: the same bits on 1, 2 and 3 threads."""
    from fastnn import _core
    X = rng.normal(size=(602, 64)).astype(np.float32)
    y = rng.integers(0, 10, 602)
    outs = []
    try:
        for l2 in (1 << 20, 64 << 20):
            _engine.set_l2_cache(l2)
            if l2 == 1 << 20:
                assert _engine.own_row_block(301, 128, 512) < 301
            for threads in (1, 2, 3):
                m = fn.Sequential(fn.Dense(64, 512), fn.ReLU(), fn.Dense(512, 512), fn.ReLU(), fn.Dense(512, 10), seed=3)
                with counting_gemm_calls() as calls:
                    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=2,
                          batch_size=301, threads=threads, seed=0, verbose=0)
                assert calls["own", "forward"] > 0 and calls["own", "input_delta"] > 0
                outs.append(m._params.copy())
    finally:
        _engine.set_l2_cache(_core.l2_cache_bytes() or 1 << 20)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


@needs_kernels
def test_chunks_share_one_copy_of_the_weights_with_the_same_bits(rng):
    """At batch 1031 the 200-wide and 333-wide layers run in 9 chunks of up to 128 rows, whose forward
    products share one copy of each layer's weights in the kernel's blocks, renewed by the optimizer's
    tiles after every step: the same bits as every chunk copying its own, on 1, 2 and 3 threads."""
    X = rng.normal(size=(2062, 333)).astype(np.float32)
    y = rng.integers(0, 10, 2062)
    outs = {}
    try:
        for on in (True, False):
            _engine.shared_weight_copies_on(on)
            for threads in (1, 2, 3):
                m = fn.Sequential(fn.Dense(333, 200), fn.ReLU(), fn.Dense(200, 333), fn.Tanh(), fn.Dense(333, 10),
                                  seed=3)
                m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-3), epochs=2, batch_size=1031,
                      threads=threads, seed=0, verbose=0)
                # and the 10-wide output layer where the build multiplies it on the kernels (AVX2)
                n_own = sum(op["kind"] == _plan.OP["dense"] and op["sg_rows"] > 0 for op in m._plan.ops)
                assert n_own >= 2
                assert _engine.last_shared_weight_copies() == (n_own if on else 0)
                outs[on, threads] = m._params.copy()
    finally:
        _engine.shared_weight_copies_on(True)
    for key, params in outs.items():
        np.testing.assert_array_equal(params, outs[True, 1], err_msg=str(key))


def test_the_l2_size_is_read_from_the_machine():
    from fastnn import _core
    n = _core.l2_cache_bytes()
    assert isinstance(n, int) and n >= 0
    if os.path.exists("/sys/devices/system/cpu/cpu0/cache/index2/size"):
        assert n >= 64 << 10


def test_the_l1_size_is_read_from_the_machine():
    from fastnn import _core
    n = _core.l1_data_cache_bytes()
    assert isinstance(n, int) and n >= 0
    if os.path.exists("/sys/devices/system/cpu/cpu0/cache/index0/size"):
        assert n >= 8 << 10


def _conv(channels):
    def build(dt):
        # the second convolution has an input delta; 'groups' splits its products per group
        return fn.Sequential(fn.Conv2d(3, channels, 3, padding=1), fn.ReLU(), fn.MaxPool2d(2),
                             fn.Conv2d(channels, channels, 3, groups=2), fn.ReLU(), fn.Flatten(),
                             fn.Dense(channels * 16, 3), input_shape=(3, 12, 12), dtype=dt, seed=5)
    return build


@needs_kernels
@pytest.mark.parametrize("channels", [6, 16, 64])
def test_convolutions_run_on_the_kernels_the_build_picks_and_match_float64(channels, rng):
    """The AVX2 build multiplies every convolution's output, and the column delta of those with fewer
    than 32 channels per group, on the own kernels (OpenBLAS's Haswell kernels pack even tiny
    operands); the AVX-512 build the output from 24 channels per group, the column delta on BLAS.
    Both form every filter gradient on the kernels. Whichever path runs matches float64."""
    m32, m64 = _pair(_conv(channels))
    X = rng.normal(size=(37, 3, 12, 12))
    y = rng.integers(0, 3, 37)
    with counting_gemm_calls("conv") as calls:
        l32, g32 = m32.loss_and_grad(X.astype(np.float32), y, fn.CrossEntropy(), threads=2)
    l64, g64 = m64.loss_and_grad(X, y, fn.CrossEntropy(), threads=2)
    per_group = [channels, channels // 2]
    avx2 = _engine.SMALL_GEMM_ISA == "avx2"
    own_fwd = sum(c >= (1 if avx2 else 24) for c in per_group)
    own_din = per_group[1] < 32 if avx2 else 0
    assert (calls["own", "forward"] > 0) + (calls["blas", "forward"] > 0) == (2 if 0 < own_fwd < 2 else 1)
    assert (calls["own", "forward"] > 0) == (own_fwd > 0)
    assert (calls["own", "input_delta"] > 0) == own_din
    assert (calls["blas", "input_delta"] > 0) == (not own_din)
    assert calls["own", "weight_grad"] > 0 and calls["blas", "weight_grad"] == 0
    assert abs(l32 - l64) <= 1e-5 * max(1.0, abs(l64))
    for (name, _), a, b in zip(m64.named_parameters(), g32, g64):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * max(np.abs(b).max(), 1e-3), err_msg=name)


def test_gemm_calls_names_the_layer():
    with pytest.raises(ValueError, match="'dense' or 'conv'"):
        _engine.gemm_calls("lstm")
