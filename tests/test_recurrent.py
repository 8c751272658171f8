"""RNN (tanh, relu), LSTM and GRU: finite differences, PyTorch autograd (when installed), float32
against float64, odd sizes, thread-count invariance, shape errors, model files and torch interop."""
import numpy as np
import pytest

import fastnn as fn
from reference import check_finite_differences

F, H = 3, 5


def _cell(kind, **kw):
    if kind == "relu":
        return fn.RNN(F, H, nonlinearity="relu", **kw)
    return {"tanh": fn.RNN, "lstm": fn.LSTM, "gru": fn.GRU}[kind](F, H, **kw)


def _model(kind, dtype="float64", T=4, layers=1, seq=False, bias=True, seed=1, n_out=2):
    rec = _cell(kind, num_layers=layers, return_sequences=seq, bias=bias)
    head = [fn.Flatten(), fn.Dense(T * H, n_out)] if seq else [fn.Dense(H, n_out)]
    return fn.Sequential(rec, *head, dtype=dtype, seed=seed, input_shape=(T, F))


CASES = [(k, layers, seq) for k in ("tanh", "relu", "lstm", "gru") for layers in (1, 2) for seq in (False, True)]


def _data(rng, n=6, T=4, n_out=2):
    return rng.normal(size=(n, T, F)), rng.normal(size=(n, n_out))


@pytest.mark.parametrize("kind,layers,seq", CASES)
def test_gradients_match_finite_differences(kind, layers, seq, rng):
    m = _model(kind, layers=layers, seq=seq)
    X, y = _data(rng)
    check_finite_differences(m, X, y, fn.MSE(), rng)


@pytest.mark.parametrize("kind,layers,seq", CASES)
def test_gradients_match_torch(kind, layers, seq, rng, bias=True):
    torch = pytest.importorskip("torch")
    m = _model(kind, layers=layers, seq=seq, bias=bias, T=6)
    X, y = _data(rng, n=7, T=6)
    L, grads = m.loss_and_grad(X, y, fn.MSE())
    tm = fn.io.to_torch(m)
    out = tm(torch.tensor(X))
    tl = ((out - torch.tensor(y)) ** 2).mean()
    tl.backward()
    assert abs(L - tl.item()) <= 1e-12 * abs(L)
    np.testing.assert_allclose(m.forward(X), out.detach().numpy(), rtol=1e-12, atol=1e-14)
    tp = dict(tm.named_parameters())
    assert [k for k, _ in m.named_parameters()] == list(tp)
    for (k, _), g in zip(m.named_parameters(), grads):
        t = tp[k].grad.numpy()
        assert np.abs(g - t).max() <= 1e-9 * np.abs(t).max(), k


def test_gradients_without_bias_match_torch(rng):
    for kind in ("tanh", "lstm", "gru"):
        test_gradients_match_torch(kind, 2, True, rng, bias=False)


def test_parameters_follow_torch_names_shapes_and_init():
    m = fn.Sequential(fn.LSTM(7, 16, num_layers=2), fn.Dense(16, 1), input_shape=(3, 7), seed=0)
    shapes = {k: v.shape for k, v in m.named_parameters()}
    assert shapes == {"0.weight_ih_l0": (64, 7), "0.weight_hh_l0": (64, 16), "0.bias_ih_l0": (64,),
                      "0.bias_hh_l0": (64,), "0.weight_ih_l1": (64, 16), "0.weight_hh_l1": (64, 16),
                      "0.bias_ih_l1": (64,), "0.bias_hh_l1": (64,), "1.weight": (1, 16), "1.bias": (1,)}
    w = np.concatenate([v.ravel() for k, v in m.named_parameters() if k.startswith("0.")])
    assert np.abs(w).max() <= 0.25 and w.std() > 0.1        # U(-1/sqrt(16), 1/sqrt(16))
    assert fn.GRU(2, 3).n_params() == 2 * 9 + 2 * 9 + 9 * 3 + 0 and fn.RNN(2, 3, bias=False).n_params() == 15


@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
def test_float32_agrees_with_float64(kind, rng):
    X, y = _data(rng, n=9, T=11)
    X = 2 * X
    _, g64 = _model(kind, "float64", T=11, layers=2).loss_and_grad(X, y, fn.MSE())
    _, g32 = _model(kind, "float32", T=11, layers=2).loss_and_grad(X, y, fn.MSE())
    for a, b in zip(g32, g64):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5 * max(1.0, np.abs(b).max()))


def test_float32_sigmoid_and_tanh_are_accurate_everywhere():
    x = np.concatenate([np.linspace(-100, 100, 400001), [0.0, -0.0, 1e-30, -1e-30, 0.6249, 0.6251]])
    m = fn.Sequential(fn.RNN(1, 1, bias=False), input_shape=(1, 1), dtype="float32")
    m.layers[0].weight_ih_l0[...] = 1
    t = m.forward(x.astype(np.float32).reshape(-1, 1, 1)).ravel().astype(np.float64)
    ref = np.tanh(x.astype(np.float32).astype(np.float64))
    assert np.all(np.abs(t - ref) <= 4e-7 * np.maximum(np.abs(ref), 1e-30) + 1e-45)


@pytest.mark.parametrize("n,T", [(1, 1), (97, 1), (1, 37), (97, 37)])
def test_odd_sizes_match_a_numpy_reference(n, T, rng):
    m = fn.Sequential(fn.GRU(F, H, return_sequences=True), fn.Flatten(), fn.Dense(T * H, 2), input_shape=(T, F),
                      dtype="float64", seed=2)
    X = rng.normal(size=(n, T, F))
    g = m.layers[0]
    h = np.zeros((n, H))
    hs = []
    sig = lambda v: 1 / (1 + np.exp(-v))
    for t in range(T):
        gi = X[:, t] @ g.weight_ih_l0.T + g.bias_ih_l0
        gh = h @ g.weight_hh_l0.T + g.bias_hh_l0
        r, z = sig(gi[:, :H] + gh[:, :H]), sig(gi[:, H:2 * H] + gh[:, H:2 * H])
        nn_ = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * nn_ + z * h
        hs.append(h)
    ref = np.stack(hs, 1).reshape(n, -1) @ m.layers[2].weight.T + m.layers[2].bias
    np.testing.assert_allclose(m.forward(X), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
def test_training_is_bit_identical_on_any_thread_count(kind, dtype, rng):
    X = rng.normal(size=(53, 7, F))
    y = rng.integers(0, 3, 53)
    results = []
    for threads in (1, 2, 3):
        m = fn.Sequential(_cell(kind, num_layers=2, dropout=0.2), fn.Dense(H, 3), input_shape=(7, F),
                          dtype=dtype, seed=5)
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1, momentum=0.9), epochs=2, batch_size=16,
              threads=threads)
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=1, batch_size=40,
              threads=threads, clip_norm=0.5)
        results.append(m.state_dict())
    for other in results[1:]:
        for k in results[0]:
            np.testing.assert_array_equal(results[0][k], other[k], err_msg=k)


def test_bad_shapes_and_arguments_raise_naming_the_layer():
    with pytest.raises(ValueError, match=r"layer 0 .*LSTM expects per-example input \(T, 3\).*\(4, 2\)"):
        fn.Sequential(fn.LSTM(3, 5), fn.Dense(5, 1), input_shape=(4, 2))
    with pytest.raises(ValueError, match=r"LSTM expects.*\(12,\)"):
        fn.Sequential(fn.LSTM(3, 5), fn.Dense(5, 1), input_shape=(12,))
    deferred = fn.Sequential(fn.GRU(3, 5), fn.Dense(5, 1))      # the first data fixes T
    with pytest.raises(ValueError, match="input_shape"):
        deferred.named_parameters()
    deferred.forward(np.zeros((2, 6, 3)))
    assert deferred.input_shape == (6, 3)
    with pytest.raises(ValueError, match="nonlinearity"):
        fn.RNN(3, 5, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        fn.GRU(3, 5, dropout=1.0)
    with pytest.raises(TypeError, match="hidden_size"):
        fn.LSTM(3, 2.5)
    m = fn.Sequential(fn.GRU(3, 5), fn.Dense(5, 1), input_shape=(4, 3))
    with pytest.raises(ValueError):
        m.forward(np.zeros((2, 4, 2)))


@pytest.mark.parametrize("kind", ["relu", "lstm", "gru"])
def test_save_load_round_trip(kind, tmp_path, rng):
    m = fn.Sequential(_cell(kind, num_layers=2, dropout=0.1, return_sequences=True), fn.Flatten(),
                      fn.Dense(4 * H, 2), input_shape=(4, F), seed=3)
    X = rng.normal(size=(5, 4, F))
    m.save(tmp_path / "m.fnn")
    m2 = fn.io.load_model(tmp_path / "m.fnn")
    assert repr(m2.layers[0]) == repr(m.layers[0])
    np.testing.assert_array_equal(m2.forward(X), m.forward(X))


def test_to_torch_and_from_torch(rng):
    torch = pytest.importorskip("torch")
    for kind in ("relu", "lstm", "gru"):
        for seq in (False, True):
            m = fn.Sequential(_cell(kind, num_layers=2, return_sequences=seq), *([fn.Flatten()] if seq else []),
                              fn.Dense(4 * H if seq else H, 2), input_shape=(4, F), dtype="float64", seed=4)
            X = rng.normal(size=(5, 4, F))
            tm = fn.io.to_torch(m)
            assert isinstance(tm[0], (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)) and tm[0].batch_first
            assert isinstance(tm[0], fn.io.TorchRecurrent)
            np.testing.assert_allclose(tm(torch.tensor(X)).detach().numpy(), m.forward(X), rtol=1e-12, atol=1e-14)
            back = fn.io.from_torch(tm, input_shape=(4, F))
            assert repr(back.layers[0]) == repr(m.layers[0])
            np.testing.assert_array_equal(back.forward(X), m.forward(X))
    # a plain nn.LSTM state dict loads the layer's parameters
    m = fn.Sequential(fn.LSTM(F, H, num_layers=2), fn.Dense(H, 1), input_shape=(4, F), dtype="float64")
    lstm = torch.nn.LSTM(F, H, num_layers=2, batch_first=True).double()
    lstm.load_state_dict({k.split(".", 1)[1]: torch.tensor(v) for k, v in m.state_dict().items()
                          if k.startswith("0.")})
    X = rng.normal(size=(3, 4, F))
    last = lstm(torch.tensor(X))[0][:, -1].detach().numpy()
    np.testing.assert_allclose(last @ m.layers[1].weight.T + m.layers[1].bias, m.forward(X), rtol=1e-12)


def test_following_activation_fuses_and_matches_torch(rng):
    torch = pytest.importorskip("torch")
    m = fn.Sequential(fn.GRU(F, H), fn.Tanh(), fn.Dense(H, 2), input_shape=(4, F), dtype="float64", seed=2)
    X, y = _data(rng, n=5)
    L, grads = m.loss_and_grad(X, y, fn.MSE())
    tm = fn.io.to_torch(m)
    tl = ((tm(torch.tensor(X)) - torch.tensor(y)) ** 2).mean()
    tl.backward()
    for (k, p), g in zip(tm.named_parameters(), grads):
        assert np.abs(g - p.grad.numpy()).max() <= 1e-9 * np.abs(p.grad.numpy()).max(), k


# ---------------------------------------------------------------- Embedding
@pytest.mark.parametrize("pad", [None, 3])
def test_embedding_gradients_match_torch_and_finite_differences(pad, rng):
    torch = pytest.importorskip("torch")
    V, D, T = 11, 4, 6
    m = fn.Sequential(fn.Embedding(V, D, padding_idx=pad), fn.LSTM(D, H), fn.Dense(H, 3), input_shape=(T,),
                      dtype="float64", seed=0)
    if pad is not None:
        assert not m.layers[0].weight[pad].any()
    X = rng.integers(0, V, (9, T))
    X[0, :3] = 3
    y = rng.integers(0, 3, 9)
    L, grads = m.loss_and_grad(X, y, fn.CrossEntropy(), threads=2)
    tm = fn.io.to_torch(m)
    tl = torch.nn.functional.cross_entropy(tm(torch.tensor(X)), torch.tensor(y))
    tl.backward()
    assert abs(L - tl.item()) <= 1e-12 * L
    for (k, p), g in zip(tm.named_parameters(), grads):
        assert np.abs(g - p.grad.numpy()).max() <= 1e-9 * np.abs(p.grad.numpy()).max(), k
    W, gW = m.layers[0].weight, grads[0]
    h = 1e-6
    if pad is not None:          # torch's rule: the padding row is used in forward, never trained
        assert not gW[pad].any()
    for r, c in [(r, c) for r, c in [(3, 1), (int(X[1, 2]), 0), (int(X[5, 5]), 3)] if r != pad]:
        old = W[r, c]
        W[r, c] = old + h
        lp, _ = m.loss_and_grad(X, y, fn.CrossEntropy())
        W[r, c] = old - h
        lm, _ = m.loss_and_grad(X, y, fn.CrossEntropy())
        W[r, c] = old
        assert abs((lp - lm) / (2 * h) - gW[r, c]) <= 1e-6 * max(1.0, abs(gW[r, c]))
    back = fn.io.from_torch(tm, input_shape=(T,))
    np.testing.assert_array_equal(back.forward(X), m.forward(X))


def test_embedding_training_is_thread_invariant_and_checks_token_ids(rng, tmp_path):
    X = rng.integers(0, 50, (61, 9)).astype(np.float32)
    y = rng.integers(0, 2, 61)
    states = []
    for threads in (1, 2, 3):
        m = fn.Sequential(fn.Embedding(50, 6, padding_idx=0), fn.GRU(6, 7), fn.Dense(7, 2), input_shape=(9,), seed=1)
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=0.01), epochs=2, batch_size=16, threads=threads)
        states.append(m.state_dict())
    for other in states[1:]:
        for k in states[0]:
            np.testing.assert_array_equal(states[0][k], other[k], err_msg=k)
    assert not states[0]["0.weight"][0].any()
    m.save(tmp_path / "e.fnn")
    np.testing.assert_array_equal(fn.io.load_model(tmp_path / "e.fnn").forward(X), m.forward(X))
    for bad in (50, -1, 2.5):
        Xb = X.copy()
        Xb[3, 4] = bad
        with pytest.raises(ValueError, match=r"token ids.*\[0, 50\)"):
            m.predict(Xb)
    with pytest.raises(ValueError, match="first layer"):
        fn.Sequential(fn.Dense(4, 4), fn.Embedding(5, 2), input_shape=(4,))
    with pytest.raises(ValueError, match="padding_idx"):
        fn.Embedding(5, 2, padding_idx=5)


# ---------------------------------------------------------------- gradient norms through time
@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
def test_gradient_norms_through_time_match_an_unrolled_torch_loop(kind, rng):
    torch = pytest.importorskip("torch")
    T = 9
    m = fn.Sequential(_cell(kind), fn.Dense(H, 1), input_shape=(T, F), dtype="float64", seed=3)
    X, y = rng.normal(size=(8, T, F)), rng.normal(size=(8, 1))
    norms = fn.gradient_norms_through_time(m, X, y, fn.MSE())
    cell = {"tanh": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind](F, H).double()
    cell.load_state_dict({k.split(".")[1][:-3]: torch.tensor(v) for k, v in m.state_dict().items()
                          if k.startswith("0.")})
    h = torch.zeros(8, H, dtype=torch.float64)
    c = torch.zeros(8, H, dtype=torch.float64)
    hs = []
    for t in range(T):
        if kind == "lstm":
            h, c = cell(torch.tensor(X[:, t]), (h, c))
        else:
            h = cell(torch.tensor(X[:, t]), h)
        h.retain_grad()
        hs.append(h)
    out = h @ torch.tensor(m.layers[1].weight).T + torch.tensor(m.layers[1].bias)
    ((out - torch.tensor(y)) ** 2).mean().backward()
    ref = np.array([float(v.grad.norm()) for v in hs])
    np.testing.assert_allclose(norms["0"], ref, rtol=1e-10)
    with pytest.raises(ValueError, match="no recurrent layer"):
        fn.gradient_norms_through_time(fn.Sequential(fn.Dense(2, 1)), np.zeros((2, 2)), np.zeros((2, 1)), fn.MSE())


# ---------------------------------------------------------------- a Dense on every step
@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
def test_dense_on_every_step_matches_torch_linear(kind, rng):
    torch = pytest.importorskip("torch")
    T = 5
    m = fn.Sequential(_cell(kind, return_sequences=True, num_layers=2), fn.Dense(H, 4), fn.Tanh(), fn.Dense(4, 2),
                      input_shape=(T, F), dtype="float64", seed=2)
    X, y = rng.normal(size=(7, T, F)), rng.normal(size=(7, T, 2))
    L, grads = m.loss_and_grad(X, y, fn.MSE(), threads=2)
    tm = fn.io.to_torch(m)
    out = tm(torch.tensor(X))
    tl = ((out - torch.tensor(y)) ** 2).mean()
    tl.backward()
    assert m.forward(X).shape == (7, T, 2)
    np.testing.assert_allclose(m.forward(X), out.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert abs(L - tl.item()) <= 1e-12 * L
    for (k, p), g in zip(tm.named_parameters(), grads):
        assert np.abs(g - p.grad.numpy()).max() <= 1e-9 * np.abs(p.grad.numpy()).max(), k
    h = m.fit(X, y, loss=fn.MSE(), optimizer=fn.Adam(lr=0.01), epochs=3, batch_size=4, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert m.evaluate(X, y)["loss"] >= 0
    with pytest.raises(ValueError, match="per-step labels"):
        m.evaluate(X, rng.integers(0, 2, (7, T, 2)), loss=fn.BinaryCrossEntropy())


@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
@pytest.mark.parametrize("use_lengths", [False, True])
def test_per_step_cross_entropy_matches_torch_over_labelled_steps(kind, use_lengths, rng):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, C, N = 6, 4, 9
    m = fn.Sequential(_cell(kind, return_sequences=True), fn.Dense(H, C), input_shape=(T, F), dtype="float64",
                      seed=0)
    X, y = rng.normal(size=(N, T, F)), rng.integers(0, C, (N, T))
    lens = rng.integers(1, T + 1, N) if use_lengths else np.full(N, T)
    kw = {"lengths": lens} if use_lengths else {}
    L, grads = m.loss_and_grad(X, y, fn.CrossEntropy(), threads=2, **kw)
    tm = fn.io.to_torch(m)
    packed = pack_padded_sequence(torch.tensor(X), torch.tensor(lens), batch_first=True, enforce_sorted=False)
    o = pad_packed_sequence(type(tm[0]).__mro__[2].forward(tm[0], packed)[0], batch_first=True, total_length=T)[0]
    yt = torch.tensor(y).clone()
    yt[torch.arange(T)[None, :] >= torch.tensor(lens)[:, None]] = -100       # torch's ignore_index
    tl = torch.nn.functional.cross_entropy(tm[1](o).reshape(-1, C), yt.reshape(-1))
    tl.backward()
    assert abs(L - tl.item()) <= 1e-12 * L
    assert abs(m.evaluate(X, y, loss=fn.CrossEntropy(), **kw)["loss"] - tl.item()) <= 1e-12 * L
    for (k, p), g in zip(tm.named_parameters(), grads):
        assert np.abs(g - p.grad.numpy()).max() <= 1e-9 * np.abs(p.grad.numpy()).max(), k
    m.loss = fn.CrossEntropy()                  # predict's link: a softmax over every step's row
    np.testing.assert_allclose(m.predict(X, **kw).sum(axis=-1), 1.0, rtol=1e-12)


def test_per_step_labels_train_bit_identically_and_are_checked(rng):
    X, y = rng.normal(size=(37, 6, F)), rng.integers(0, 3, (37, 6))
    lens = rng.integers(1, 7, 37)
    states = []
    for threads in (1, 2, 3):
        m = fn.Sequential(fn.GRU(F, H, return_sequences=True), fn.Dense(H, 3), input_shape=(6, F), seed=1)
        h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=0.02), epochs=3, batch_size=8, threads=threads,
                  lengths=lens)
        states.append(m.state_dict())
    assert h.history["loss"][-1] < h.history["loss"][0]
    for other in states[1:]:
        for k in states[0]:
            np.testing.assert_array_equal(states[0][k], other[k], err_msg=k)
    assert 0 <= m.evaluate(X, y, lengths=lens)["accuracy"] <= 1
    with pytest.raises(ValueError, match=r"shape \(37, 6\)"):
        m.evaluate(X, y[:, :3])
    with pytest.raises(ValueError, match=r"weight has 2 entries"):
        m.evaluate(X, y, loss=fn.CrossEntropy(weight=[1, 2]))
    with pytest.raises(ValueError, match=r"sample_weight with per-step labels .*\(N, 6\)"):
        m.evaluate(X, y, sample_weight=np.ones((37, 5)))


# ---------------------------------------------------------------- lengths
@pytest.mark.parametrize("kind,layers,seq", [(k, 2, s) for k in ("tanh", "relu", "lstm", "gru") for s in (False, True)])
def test_lengths_match_torch_packed_sequences(kind, layers, seq, rng):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, N = 7, 9
    m = _model(kind, T=T, layers=layers, seq=seq)
    X, y = rng.normal(size=(N, T, F)), rng.normal(size=(N, 2))
    lens = rng.integers(1, T + 1, N)
    lens[0] = T
    lens[1] = 1
    L, grads = m.loss_and_grad(X, y, fn.MSE(), lengths=lens, threads=2)
    tm = fn.io.to_torch(m)
    rec = tm[0]
    packed = pack_padded_sequence(torch.tensor(X), torch.tensor(lens), batch_first=True, enforce_sorted=False)
    out, hid = type(rec).__mro__[2].forward(rec, packed)          # torch's own nn.RNN/LSTM/GRU forward
    if seq:
        z = tm[2](tm[1](pad_packed_sequence(out, batch_first=True, total_length=T)[0]))
    else:
        z = tm[1]((hid[0] if kind == "lstm" else hid)[-1])
    tl = ((z - torch.tensor(y)) ** 2).mean()
    tl.backward()
    assert abs(L - tl.item()) <= 1e-12 * L
    np.testing.assert_allclose(m.forward(X, lengths=lens), z.detach().numpy(), rtol=1e-12, atol=1e-14)
    for (k, p), g in zip(tm.named_parameters(), grads):
        assert np.abs(g - p.grad.numpy()).max() <= 1e-9 * np.abs(p.grad.numpy()).max(), k
    # full lengths change nothing
    np.testing.assert_array_equal(m.forward(X, lengths=np.full(N, T)), m.forward(X))


def test_train_step_takes_lengths_as_fit_does(rng):
    X = rng.normal(size=(21, 8, F))
    y = rng.integers(0, 3, 21)
    lens = rng.integers(1, 9, 21)

    def model():
        return fn.Sequential(fn.GRU(F, H), fn.Dense(H, 3), input_shape=(8, F), seed=5)

    a, b, c = model(), model(), model()
    la = a.train_step(X, y, fn.CrossEntropy(), fn.SGD(lr=0.1), lengths=lens)
    hb = b.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=1, batch_size=21, shuffle=False,
               lengths=lens)
    c.train_step(X, y, fn.CrossEntropy(), fn.SGD(lr=0.1))
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k], err_msg=k)
    assert la == hb.history["loss"][0]
    assert not np.array_equal(a.layers[0].weight_hh_l0, c.layers[0].weight_hh_l0)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 8\]"):
        a.train_step(X, y, fn.CrossEntropy(), fn.SGD(lr=0.1), lengths=np.full(21, 0))


def test_lengths_in_fit_are_thread_invariant_and_checked(rng):
    X = rng.normal(size=(45, 8, F))
    y = rng.integers(0, 3, 45)
    lens = rng.integers(1, 9, 45)
    states = []
    for threads in (1, 2, 3):
        m = fn.Sequential(fn.LSTM(F, H), fn.Dense(H, 3), input_shape=(8, F), seed=2)
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=0.01), epochs=2, batch_size=16, threads=threads,
              lengths=lens)
        states.append(m.state_dict())
    for other in states[1:]:
        for k in states[0]:
            np.testing.assert_array_equal(states[0][k], other[k], err_msg=k)
    assert 0 <= m.evaluate(X, y, lengths=lens)["accuracy"] <= 1
    assert m.predict(X, lengths=lens).shape == (45, 3)
    # padding past an example's length does not matter
    X2 = X.copy()
    X2[np.arange(8)[None, :] >= lens[:, None]] = 99.0
    np.testing.assert_array_equal(m.forward(X2, lengths=lens), m.forward(X, lengths=lens))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 8\]"):
        m.forward(X, lengths=np.full(45, 9))
    with pytest.raises(ValueError, match=r"shape \(45,\)"):
        m.forward(X, lengths=lens[:3])
    with pytest.raises(TypeError, match="whole numbers"):
        m.forward(X, lengths=lens + 0.5)
    with pytest.raises(ValueError, match="validation_lengths"):
        m.fit(X, y, lengths=lens, validation_data=(X, y))
    with pytest.raises(ValueError, match="recurrent layer"):
        fn.Sequential(fn.Dense(2, 1)).forward(np.zeros((2, 2)), lengths=[1, 1])


# ---------------------------------------------------------------- per-step losses with lengths, weights
def _seq_model(kind="lstm", C=2, T=6, seed=0, dtype="float64", **kw):
    return fn.Sequential(_cell(kind, return_sequences=True, **kw), fn.Dense(H, C), input_shape=(T, F), dtype=dtype,
                         seed=seed)


def _real(lens, T):
    """(N, T) mask of the steps within each sequence's length."""
    return np.arange(T)[None, :] < np.asarray(lens)[:, None]


def _lens(rng, N, T):
    lens = rng.integers(1, T + 1, N)
    lens[0], lens[1] = T, 1
    return lens


def _torch_steps(torch, m, X, lens):
    """torch's outputs of a (recurrent, Dense) model on packed sequences, padded back to (N, T, C)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    tm = fn.io.to_torch(m)
    packed = pack_padded_sequence(torch.tensor(X), torch.tensor(lens), batch_first=True, enforce_sorted=False)
    o = pad_packed_sequence(type(tm[0]).__mro__[2].forward(tm[0], packed)[0], batch_first=True,
                            total_length=X.shape[1])[0]
    return tm, tm[1](o)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
def test_per_step_mse_with_lengths_leaves_padded_steps_out(kind, rng):
    T, C, N = 6, 2, 9
    m = _seq_model(kind, C, T)
    X, y = rng.normal(size=(N, T, F)), rng.normal(size=(N, T, C))
    lens, w = _lens(rng, N, T), rng.uniform(0.5, 2.0, N)
    real = _real(lens, T)
    se = ((m.forward(X, lengths=lens) - y) ** 2).sum(axis=-1)
    for sw in (None, w):
        ws = (np.ones(N) if sw is None else sw)[:, None] * real
        ref = (se * ws).sum() / (C * ws.sum())           # the mean over real steps x outputs
        L, _ = m.loss_and_grad(X, y, fn.MSE(), sample_weight=sw, lengths=lens, threads=2)
        assert abs(L - ref) <= 1e-12 * ref
        assert abs(m.evaluate(X, y, fn.MSE(), sample_weight=sw, lengths=lens)["loss"] - ref) <= 1e-12 * ref
    Ls, _ = m.loss_and_grad(X, y, fn.MSE(reduction="sum"), lengths=lens)
    assert abs(Ls - (se * real).sum()) <= 1e-12 * Ls
    # targets at padded steps change nothing, bit for bit
    L, g = m.loss_and_grad(X, y, fn.MSE(), lengths=lens)
    L2, g2 = m.loss_and_grad(X, np.where(real[..., None], y, 1e3), fn.MSE(), lengths=lens)
    assert L == L2
    for a, b in zip(g, g2):
        np.testing.assert_array_equal(a, b)
    # full lengths: every step counts, the same gradient as without lengths
    Lf, gf = m.loss_and_grad(X, y, fn.MSE(), lengths=np.full(N, T))
    L0, g0 = m.loss_and_grad(X, y, fn.MSE())
    assert abs(Lf - L0) <= 1e-14 * L0
    for a, b in zip(gf, g0):
        np.testing.assert_array_equal(a, b)
    # central finite differences of the masked loss
    P, h = m._params, 1e-6
    flat = np.concatenate([v.ravel() for v in g])
    for i in rng.choice(P.size, 12, replace=False):
        old = P[i]
        P[i] = old + h
        lp, _ = m.loss_and_grad(X, y, fn.MSE(), lengths=lens)
        P[i] = old - h
        lm, _ = m.loss_and_grad(X, y, fn.MSE(), lengths=lens)
        P[i] = old
        assert abs((lp - lm) / (2 * h) - flat[i]) <= 1e-6 * max(1.0, np.abs(flat).max())


@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
def test_per_step_mse_with_lengths_matches_torch_masked_mean(kind, rng):
    torch = pytest.importorskip("torch")
    T, C, N = 7, 3, 10
    m = _seq_model(kind, C, T, num_layers=2)
    X, y = rng.normal(size=(N, T, F)), rng.normal(size=(N, T, C))
    lens, w = _lens(rng, N, T), rng.uniform(0.5, 2.0, N)
    L, grads = m.loss_and_grad(X, y, fn.MSE(), sample_weight=w, lengths=lens, threads=2)
    tm, z = _torch_steps(torch, m, X, lens)
    mask = torch.tensor(_real(lens, T)[..., None] * w[:, None, None])
    tl = (mask * (z - torch.tensor(y)) ** 2).sum() / (mask.sum() * C)
    tl.backward()
    assert abs(L - tl.item()) <= 1e-12 * L
    for (k, p), g in zip(tm.named_parameters(), grads):
        assert np.abs(g - p.grad.numpy()).max() <= 1e-9 * np.abs(p.grad.numpy()).max(), k


@pytest.mark.parametrize("loss_cls", [fn.CrossEntropy, fn.NLLLoss])
def test_per_step_class_weights_match_torch_weighted_mean(loss_cls, rng):
    T, C, N = 6, 4, 11
    m = _seq_model("lstm", C, T)
    X, y = rng.normal(size=(N, T, F)), rng.integers(0, C, (N, T))
    lens, cw, s = _lens(rng, N, T), np.array([0.5, 2.0, 1.0, 3.0]), rng.uniform(0.5, 2.0, N)
    real = _real(lens, T)
    out = m.forward(X, lengths=lens)
    lp = _log_softmax(out) if loss_cls is fn.CrossEntropy else out
    per = -np.take_along_axis(lp, y[..., None], axis=-1)[..., 0]
    for sw in (None, s):
        # NumPy: sum w l / sum w over the real steps, w = the step's class weight x its example's weight
        wt = cw[y] * real * (1.0 if sw is None else sw[:, None])
        ref = (wt * per).sum() / wt.sum()
        L, _ = m.loss_and_grad(X, y, loss_cls(weight=cw), sample_weight=sw, lengths=lens, threads=2)
        assert abs(L - ref) <= 1e-12 * abs(ref)
        ev = m.evaluate(X, y, loss_cls(weight=cw), sample_weight=sw, lengths=lens)
        assert abs(ev["loss"] - ref) <= 1e-12 * abs(ref)
    torch = pytest.importorskip("torch")
    L, grads = m.loss_and_grad(X, y, loss_cls(weight=cw), lengths=lens, threads=2)
    tm, z = _torch_steps(torch, m, X, lens)
    yt = torch.tensor(np.where(real, y, -100))           # torch's ignore_index at the padded steps
    f = torch.nn.functional.cross_entropy if loss_cls is fn.CrossEntropy else torch.nn.functional.nll_loss
    tl = f(z.reshape(-1, C), yt.reshape(-1), weight=torch.tensor(cw))
    tl.backward()
    assert abs(L - tl.item()) <= 1e-12 * abs(L)
    for (k, p), g in zip(tm.named_parameters(), grads):
        assert np.abs(g - p.grad.numpy()).max() <= 1e-9 * np.abs(p.grad.numpy()).max(), k


def test_per_step_class_weight_in_fit_is_step_weights_and_the_loss_weight(rng):
    from fastnn.data import class_weights

    T, C, N = 5, 3, 40
    X, y = rng.normal(size=(N, T, F)), rng.integers(0, C, (N, T))
    y[:, :2] = 0                                         # imbalanced: class 0 in the first steps
    lens = _lens(rng, N, T)
    real = _real(lens, T)
    cw = np.array([0.3, 2.0, 1.5])
    kw = dict(optimizer=fn.Adam(lr=0.01), epochs=2, batch_size=8, lengths=lens)

    def fit(**k):
        m = _seq_model("gru", C, T, dtype="float32", seed=2)
        k = {**kw, **k}
        k["optimizer"] = fn.Adam(lr=0.01)
        h = m.fit(X, y, **{"loss": fn.CrossEntropy(), **k})
        return m._params.copy(), h.history["loss"]

    a = fit(class_weight={0: 0.3, 1: 2.0, 2: 1.5})
    for other in (fit(sample_weight=cw[y]), fit(loss=fn.CrossEntropy(weight=cw))):
        np.testing.assert_array_equal(a[0], other[0])
        assert a[1] == other[1]
    # "balanced" counts the real steps only: n_real / (C n_c)
    counts = np.bincount(y[real], minlength=C)
    bal = real.sum() / (C * counts)
    np.testing.assert_allclose(class_weights("balanced", y[real], C), bal, rtol=1e-15)
    np.testing.assert_array_equal(fit(class_weight="balanced")[0], fit(sample_weight=bal[y])[0])
    # and multiplies per-example weights (a product in the model's float32)
    s = rng.uniform(0.5, 2.0, N).astype(np.float32)
    np.testing.assert_array_equal(fit(class_weight="balanced", sample_weight=s)[0],
                                  fit(sample_weight=s[:, None] * bal.astype(np.float32)[y])[0])
    with pytest.raises(ValueError, match="class index"):
        fit(class_weight={3: 1.0})


def test_per_step_features_train_bit_identically_on_any_thread_count(rng, monkeypatch):
    monkeypatch.setattr(fn.Sequential, "MIN_FLOP_PER_THREAD", 1e-9)   # tiny steps still use every thread
    T, C, N = 6, 3, 45
    X, lens = rng.normal(size=(N, T, F)), _lens(rng, N, T)
    ycls, yreg, w = rng.integers(0, C, (N, T)), rng.normal(size=(N, T, C)), rng.uniform(0.5, 2.0, N)
    runs = []
    for threads in (1, 2, 3):
        out = []
        for y, kw in ((ycls, dict(loss=fn.CrossEntropy(), class_weight="balanced", validation_split=0.2)),
                      (yreg, dict(loss=fn.MSE(), sample_weight=w))):
            m = fn.Sequential(fn.LSTM(F, H, return_sequences=True, num_layers=2, dropout=0.1), fn.Dense(H, C),
                              input_shape=(T, F), seed=7)
            h = m.fit(X, y, optimizer=fn.Adam(lr=0.01), epochs=2, batch_size=20, threads=threads, lengths=lens,
                      l2=1e-3, l2_bias=True, **kw)
            h.history.pop("time")
            out.append((m._params.copy(), h.history))
        runs.append(out)
    for other in runs[1:]:
        for (pa, ha), (pb, hb) in zip(runs[0], other):
            np.testing.assert_array_equal(pa, pb)
            assert ha == hb


# ---------------------------------------------------------------- validation with lengths
def test_validation_split_splits_lengths_and_scores_as_evaluate(rng):
    from fastnn.data import split_indices

    T, C, N = 7, 3, 60
    X, lens = rng.normal(size=(N, T, F)), _lens(rng, N, T)
    cases = [("steps", fn.CrossEntropy(), rng.integers(0, C, (N, T)), ("loss", "accuracy", "balanced_accuracy")),
             ("mse", fn.MSE(), rng.normal(size=(N, T, C)), ("loss",)),
             ("last", fn.CrossEntropy(), rng.integers(0, C, N), ("loss", "accuracy", "f1_macro"))]
    for name, loss, y, keys in cases:
        def mk():
            if name == "last":
                return fn.Sequential(fn.GRU(F, H), fn.Dense(H, C), input_shape=(T, F), seed=3, dtype="float64")
            return _seq_model("gru", C, T, seed=3)
        kw = dict(loss=loss, epochs=2, batch_size=8, seed=4)
        a = mk()
        h = a.fit(X, y, lengths=lens, validation_split=0.25, optimizer=fn.SGD(lr=0.05, momentum=0.9), **kw)
        tr, va = split_indices(y if name == "last" else None, N, 0.25, 4)
        ev = a.evaluate(X[va], y[va], lengths=lens[va])
        for k in keys:
            assert h.history["val_" + k][-1] == ev[k], (name, k)
        b = mk()                          # training saw the other examples, with their lengths
        b.fit(X[tr], y[tr], lengths=lens[tr], optimizer=fn.SGD(lr=0.05, momentum=0.9), **kw)
        np.testing.assert_array_equal(a._params, b._params)


def test_validation_data_takes_validation_lengths(rng):
    T, C, N = 6, 3, 30
    X, y, lens = rng.normal(size=(N, T, F)), rng.integers(0, C, (N, T)), _lens(rng, N, T)
    Xv, yv, lv, wv = rng.normal(size=(12, T, F)), rng.integers(0, C, (12, T)), _lens(rng, 12, T), rng.random(12)
    m = _seq_model("lstm", C, T)
    kw = dict(loss=fn.CrossEntropy(), epochs=2, batch_size=8)
    h = m.fit(X, y, lengths=lens, validation_data=(Xv, yv), validation_lengths=lv, **kw)
    ev = m.evaluate(Xv, yv, lengths=lv)
    assert h.history["val_loss"][-1] == ev["loss"] and h.history["val_accuracy"][-1] == ev["accuracy"]
    h = m.fit(X, y, lengths=lens, validation_data=(Xv, yv, wv), validation_lengths=lv, **kw)
    assert h.history["val_loss"][-1] == m.evaluate(Xv, yv, sample_weight=wv, lengths=lv)["loss"]
    # full-length training, packed validation
    h = m.fit(X, y, validation_data=(Xv, yv), validation_lengths=lv, **kw)
    assert h.history["val_loss"][-1] == m.evaluate(Xv, yv, lengths=lv)["loss"]
    with pytest.raises(ValueError, match=r"needs validation_lengths=, the lengths of the 12 validation"):
        m.fit(X, y, lengths=lens, validation_data=(Xv, yv), **kw)
    with pytest.raises(ValueError, match=r"validation_lengths: lengths must have shape \(12,\)"):
        m.fit(X, y, lengths=lens, validation_data=(Xv, yv), validation_lengths=lv[:5], **kw)
    with pytest.raises(ValueError, match=r"validation_lengths: lengths must lie in \[1, 6\]"):
        m.fit(X, y, lengths=lens, validation_data=(Xv, yv), validation_lengths=lv + 6, **kw)
    with pytest.raises(ValueError, match="validation_split splits lengths= itself"):
        m.fit(X, y, lengths=lens, validation_split=0.2, validation_lengths=lv, **kw)
    with pytest.raises(ValueError, match="sequence lengths go to validation_lengths="):
        m.fit(X, y, lengths=lens, validation_data=(Xv, yv, wv, lv), **kw)


# ---------------------------------------------------------------- training accuracy over real steps
def test_training_accuracy_of_per_step_labels_counts_real_steps(rng):
    T, C, N = 6, 3, 40
    m = _seq_model("gru", C, T, seed=5)
    X, y, lens = rng.normal(size=(N, T, F)), rng.integers(0, C, (N, T)), _lens(rng, N, T)
    real = _real(lens, T)
    pred = m.forward(X, lengths=lens).argmax(axis=-1)

    def history(y, lengths=lens):
        # lr 0 keeps the weights, so the predictions made while training are forward's
        return m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.0), epochs=1, batch_size=7,
                     lengths=lengths).history

    h = history(y)
    right = pred[real] == y[real]
    assert h["accuracy"][0] == right.sum() / right.size
    recall = [np.mean(right[y[real] == c]) for c in range(C) if np.any(y[real] == c)]
    assert h["balanced_accuracy"][0] == pytest.approx(np.mean(recall), rel=1e-14)
    # what stands at the padded steps does not count
    for pad in (pred, (pred + 1) % C):
        assert history(np.where(real, y, pad))["accuracy"][0] == h["accuracy"][0]
    assert history(y, None)["accuracy"][0] == np.mean(m.forward(X).argmax(axis=-1) == y)


# ---------------------------------------------------------------- L2 on recurrent weights and embeddings
@pytest.mark.parametrize("kind", ["tanh", "lstm", "gru"])
@pytest.mark.parametrize("l2_bias", [False, True])
def test_l2_covers_recurrent_weights_and_the_embedding_table(kind, l2_bias, rng):
    V, D, T = 9, 4, 5
    rec = {"tanh": fn.RNN, "lstm": fn.LSTM, "gru": fn.GRU}[kind](D, H, num_layers=2, return_sequences=True)
    m = fn.Sequential(fn.Embedding(V, D, padding_idx=2), rec, fn.Dense(H, 3), input_shape=(T,), dtype="float64",
                      seed=1)
    m.layers[0].weight[2] = 0.7         # a non-zero padding row: used, but never trained nor penalised
    X, y, lens = rng.integers(0, V, (8, T)), rng.integers(0, 3, (8, T)), _lens(rng, 8, T)
    X[0, :2] = 2
    L0, g0 = m.loss_and_grad(X, y, fn.CrossEntropy(), lengths=lens)
    L1, g1 = m.loss_and_grad(X, y, fn.CrossEntropy(), l2=0.3, l2_bias=l2_bias, lengths=lens, threads=2)
    pen = 0.0
    for (k, p), a, b in zip(m.named_parameters(), g0, g1):
        covered = k.split(".")[-1].startswith("weight") or l2_bias
        keep = np.ones_like(p)
        if k == "0.weight":
            keep[2] = 0
        np.testing.assert_allclose(b, a + (0.6 * p * keep if covered else 0), rtol=1e-12, atol=1e-15, err_msg=k)
        pen += 0.3 * np.sum((p * keep) ** 2) if covered else 0.0
    assert not g1[0][2].any()
    assert m.l2_penalty(0.3, l2_bias) == pytest.approx(pen, rel=1e-12)
    assert L1 == pytest.approx(L0 + pen, rel=1e-12)


def test_l2_in_fit_is_weight_decay_on_recurrent_weights_and_the_embedding(rng):
    """Without biases or a padding row every parameter is a weight: fit(l2=b) with SGD is SGD with
    weight_decay=2b."""
    X, y, lens = rng.integers(0, 9, (30, 5)), rng.integers(0, 3, 30), _lens(rng, 30, 5)
    mk = lambda: fn.Sequential(fn.Embedding(9, 4), fn.GRU(4, H, bias=False, num_layers=2), fn.Dense(H, 3, bias=False),
                               input_shape=(5,), dtype="float64", seed=0)
    a, b = mk(), mk()
    h = a.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=2, batch_size=8, l2=0.01, lengths=lens)
    b.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1, weight_decay=0.02), epochs=2, batch_size=8,
          lengths=lens)
    np.testing.assert_allclose(a._params, b._params, rtol=1e-12)
    assert h.history["l2_penalty"][-1] == pytest.approx(0.01 * np.sum(a._params ** 2), rel=1e-12)
