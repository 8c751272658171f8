"""Model files (safetensors), exact resumption, PyTorch interop, and hostile files."""
import json
import os
import tracemalloc

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnn as fn
from fastnn import io


def data(n=120, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)


def every_layer(dtype="float32", seed=7):
    return fn.Sequential(fn.Dense(5, 8, init="torch"), fn.LeakyReLU(0.2), fn.Dropout(0.25),
                         fn.Dense(8, 6, bias=False), fn.Tanh(), fn.Identity(), fn.Dense(6, 4), fn.Sigmoid(),
                         fn.Dense(4, 4), fn.ReLU(), fn.Dense(4, 5), fn.Softmax(), fn.Dense(5, 3),
                         dtype=dtype, seed=seed)


def trained_file(path, include_optimizer=True):
    m = fn.Sequential(fn.Dense(5, 4), fn.ReLU(), fn.Dropout(0.2), fn.Dense(4, 3), seed=1)
    X, y = data()
    m.fit(X, y, loss=fn.CrossEntropy(weight=[1.0, 2.0, 0.5]), optimizer=fn.Adam(lr=1e-2), epochs=1)
    m.save(path, include_optimizer=include_optimizer)
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_keeps_architecture_weights_and_counters(tmp_path, dtype):
    m = every_layer(dtype)
    X, y = data()
    y_bce = np.eye(3)[y]
    m.fit(X, y_bce, loss=fn.BinaryCrossEntropy(pos_weight=[1.0, 2.0, 3.0]), optimizer=fn.SGD(lr=0.1),
          epochs=2, batch_size=50)
    path = tmp_path / "m.safetensors"
    m.save(path)
    m2 = fn.load(path)
    assert repr(m2) == repr(m) and m2.dtype == m.dtype and m2.seed == m.seed
    assert (m2.epochs_trained, m2.steps_trained) == (2, 6)
    for (k, v), (k2, v2) in zip(m.named_parameters(), m2.named_parameters()):
        assert k == k2 and v.dtype == v2.dtype
        np.testing.assert_array_equal(v, v2)
    assert m2.optimizer is None                       # not asked for
    assert isinstance(m2.loss, fn.BinaryCrossEntropy)   # kept, so predict applies the same link
    np.testing.assert_array_equal(m2.loss.pos_weight, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(m2.predict(X), m.predict(X))
    assert m2.evaluate(X, y_bce) == m.evaluate(X, y_bce)


def test_file_is_plain_safetensors_named_like_torch(tmp_path):
    m = every_layer()
    path = tmp_path / "m.safetensors"
    m.save(path)
    tensors = safetensors.numpy.load_file(path)
    assert set(tensors) == {k for k, _ in m.named_parameters()}
    meta = io.read_metadata(path)
    arch = json.loads(meta["model"])
    assert meta["format"] == "fastnn" and meta["format_version"] == "1"
    assert arch["layers"][0] == {"type": "Dense", "in_features": 5, "out_features": 8, "bias": True,
                                 "init": "torch"}
    assert arch["layers"][2] == {"type": "Dropout", "p": 0.25, "mode": "inverted"}
    assert arch["dtype"] == "float32" and arch["seed"] == 7 and "loss" not in meta   # never trained


OPTIMIZERS = [
    lambda: fn.SGD(lr=0.05, momentum=0.9),
    lambda: fn.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: fn.Adam(lr=1e-2),
    lambda: fn.AdamW(lr=1e-2, amsgrad=True),
    lambda: fn.Adagrad(lr=0.05, initial_accumulator_value=0.1),
    lambda: fn.RMSprop(lr=1e-2, momentum=0.5, centered=True),
]


@pytest.mark.parametrize("make_opt", OPTIMIZERS, ids=["sgd-momentum", "sgd-nesterov", "adam", "adamw-amsgrad",
                                                      "adagrad", "rmsprop-centered"])
def test_resumed_fit_is_bit_identical_to_uninterrupted(tmp_path, make_opt):
    X, y = data(150)

    def model():
        return fn.Sequential(fn.Dense(5, 16), fn.ReLU(), fn.Dropout(0.3), fn.Dense(16, 3), seed=11)

    full = model()
    full.fit(X, y, loss=fn.CrossEntropy(), optimizer=make_opt(), epochs=5, batch_size=16)
    part = model()
    part.fit(X, y, loss=fn.CrossEntropy(), optimizer=make_opt(), epochs=2, batch_size=16)
    path = tmp_path / "ckpt.safetensors"
    part.save(path, include_optimizer=True)
    resumed = fn.load(path)
    assert type(resumed.optimizer) is type(part.optimizer)
    assert resumed.optimizer.step_count == part.optimizer.step_count == resumed.steps_trained
    resumed.fit(X, y, epochs=3, batch_size=16)        # loss and optimizer come from the file
    np.testing.assert_array_equal(resumed._params, full._params)
    assert not np.array_equal(part._params, full._params)


def test_fit_checkpoint_resumes_exactly(tmp_path):
    X, y = data(150)

    def model():
        return fn.Sequential(fn.Dense(5, 12), fn.Tanh(), fn.Dropout(0.2), fn.Dense(12, 3), seed=5)

    path = tmp_path / "ckpt.safetensors"
    full = model()
    full.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=5, batch_size=20,
             checkpoint=path, checkpoint_every=2)
    resumed = fn.load(path)                           # written after epochs 2 and 4
    assert resumed.epochs_trained == 4
    resumed.fit(X, y, epochs=1, batch_size=20)
    np.testing.assert_array_equal(resumed._params, full._params)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]     # no temporary files left


def test_checkpoint_refuses_bad_arguments_before_training(tmp_path):
    X, y = data()
    m = fn.Sequential(fn.Dense(5, 3), seed=0)
    before = m._params.copy()
    with pytest.raises(ValueError, match="does not exist"):
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), checkpoint=tmp_path / "no" / "m.st")
    with pytest.raises(ValueError, match="directory"):
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), checkpoint=tmp_path)
    np.testing.assert_array_equal(m._params, before)
    assert m.epochs_trained == 0
    with pytest.raises(ValueError, match="every must be >= 1"):
        io.Checkpoint(tmp_path / "m.st", every=0)
    with pytest.raises(TypeError, match="every must be an int"):
        io.Checkpoint(tmp_path / "m.st", every=1.5)
    with pytest.raises(TypeError, match="path"):
        io.Checkpoint(3)


def test_save_refuses_bad_requests(tmp_path):
    m = fn.Sequential(fn.Dense(5, 3), seed=0)
    with pytest.raises(ValueError, match="include_optimizer=True needs a model that has been trained"):
        m.save(tmp_path / "m.st", include_optimizer=True)
    with pytest.raises(ValueError, match="is a directory"):
        m.save(tmp_path)
    with pytest.raises(ValueError, match="reserved"):
        io.save_model(m, tmp_path / "m.st", metadata={"model": "x"})
    with pytest.raises(TypeError, match="str to str"):
        io.save_model(m, tmp_path / "m.st", metadata={"note": 3})
    with pytest.raises(TypeError, match="Sequential"):
        io.save_model("model", tmp_path / "m.st")
    assert os.listdir(tmp_path) == []


def test_extra_metadata_is_kept(tmp_path):
    path = tmp_path / "m.st"
    io.save_model(fn.Sequential(fn.Dense(5, 3), seed=0), path, metadata={"note": "hello"})
    assert io.read_metadata(path)["note"] == "hello"


def test_crash_mid_save_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    old = fn.Sequential(fn.Dense(5, 3), seed=1)
    old.save(path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(io.os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        fn.Sequential(fn.Dense(5, 3), seed=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]
    np.testing.assert_array_equal(fn.load(path)._params, old._params)


def test_saved_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        fn.Sequential(fn.Dense(5, 3), seed=1).save(tmp_path / "m.st")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.st").st_mode & 0o777 == 0o640


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        fn.load(tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="path"):
        fn.load(42)


# ---------------------------------------------------------------- PyTorch
def test_torch_loads_a_fastnn_file_into_the_same_network(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    m = every_layer()
    path = tmp_path / "m.safetensors"
    m.save(path)
    nn = torch.nn
    tm = nn.Sequential(nn.Linear(5, 8), nn.LeakyReLU(0.2), nn.Dropout(0.25), nn.Linear(8, 6, bias=False),
                       nn.Tanh(), nn.Identity(), nn.Linear(6, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.ReLU(),
                       nn.Linear(4, 5), nn.Softmax(dim=1), nn.Linear(5, 3))
    tm.load_state_dict(safetensors.torch.load_file(path))
    X, _ = data()
    np.testing.assert_allclose(tm.eval()(torch.from_numpy(X)).detach().numpy(), m.forward(X),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_to_torch_computes_the_same_function(dtype):
    torch = pytest.importorskip("torch")
    m = every_layer(dtype)
    tm = fn.io.to_torch(m)
    assert isinstance(tm, torch.nn.Sequential) and len(tm) == len(m.layers)
    assert tm.training          # torch's default; dropout acts until .eval()
    assert list(tm.state_dict()) == [k for k, _ in m.named_parameters()]
    assert tm[0].weight.dtype == {"float32": torch.float32, "float64": torch.float64}[dtype]
    X, _ = data()
    out = tm.eval()(torch.from_numpy(X.astype(dtype))).detach().numpy()
    tol = {"float32": 1e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(out, m.forward(X), rtol=tol, atol=tol)
    tm[0].weight.data.fill_(0)                        # a copy, not a view
    assert np.any(m.layers[0].weight != 0)


def test_to_torch_refuses_classic_dropout():
    pytest.importorskip("torch")
    m = fn.Sequential(fn.Dense(5, 4), fn.ReLU(), fn.Dropout(0.5, mode="classic"), fn.Dense(4, 2))
    with pytest.raises(ValueError, match="layer 2: Dropout\\(mode='classic'\\) has no PyTorch equivalent"):
        m.to_torch()


def test_from_torch_computes_the_same_function_and_trains():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    tm = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 6, bias=False),
                       nn.LeakyReLU(0.3), nn.Linear(6, 4), nn.Softmax(dim=-1), nn.Linear(4, 3)).eval()
    m = fn.from_torch(tm)
    assert m.dtype == np.float32
    assert [type(x).__name__ for x in m.layers] == ["Dense", "ReLU", "Dropout", "Dense", "LeakyReLU",
                                                     "Dense", "Softmax", "Dense"]
    X, y = data()
    np.testing.assert_allclose(m.forward(X), tm(torch.from_numpy(X)).detach().numpy(), rtol=1e-5, atol=1e-6)
    back = fn.io.to_torch(m)
    for (k, v), (k2, v2) in zip(tm.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert fn.from_torch(tm.double()).dtype == np.float64
    assert fn.from_torch(tm, dtype="float64").dtype == np.float64
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=1)


def test_from_torch_names_the_unsupported_module():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    with pytest.raises(ValueError, match=r"module 1 \(GELU.*is not supported"):
        fn.from_torch(nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="module 1 .*Softmax"):
        fn.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0)))
    with pytest.raises(TypeError, match="torch.nn.Sequential"):
        fn.from_torch(nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"module 0 \(Conv3d.*is not supported; from_torch converts Linear"):
        fn.from_torch(nn.Sequential(nn.Conv3d(2, 3, 1), nn.Flatten(), nn.Linear(3, 4)))
    with pytest.raises(ValueError, match="input_shape="):
        fn.from_torch(nn.Sequential(nn.Conv1d(2, 3, 1), nn.Flatten(), nn.Linear(3, 4)))
    residual = fn.io.TorchResidual([nn.Linear(3, 3), nn.GELU()])
    with pytest.raises(ValueError, match=r"module 1.layers.1 \(GELU"):
        fn.from_torch(nn.Sequential(nn.Linear(3, 3), residual))


# ---------------------------------------------------------------- hostile files
def split(blob):
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header, body, n=None):
    h = json.dumps(header).encode()
    return (len(h) if n is None else n).to_bytes(8, "little") + h + body


def edit_meta(key, fn_):
    def f(blob):
        header, body = split(blob)
        cfg = json.loads(header["__metadata__"][key])
        fn_(cfg)
        header["__metadata__"][key] = json.dumps(cfg)
        return join(header, body)
    return f


def edit_header(fn_):
    def f(blob):
        header, body = split(blob)
        fn_(header)
        return join(header, body)
    return f


def set_meta(key, value):
    return edit_header(lambda h: h["__metadata__"].__setitem__(key, value))


def add_tensor(header, name="extra"):
    header[name] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 0]}


def extra_tensor(blob):
    header, body = split(blob)
    header["extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(body), len(body) + 4]}
    return join(header, body + b"\0" * 4)


def retyped(blob):
    # a self-consistent file whose tensors are F64 while the architecture says float32
    header, _ = split(blob)
    tensors = safetensors.numpy.load(blob)
    return safetensors.numpy.save({k: v.astype(np.float64) for k, v in tensors.items()},
                                  metadata=header["__metadata__"])


def nan_weights(blob):
    header, _ = split(blob)
    tensors = safetensors.numpy.load(blob)
    tensors["0.weight"][0, 0] = np.nan
    return safetensors.numpy.save(tensors, metadata=header["__metadata__"])


def broken_chain(blob):
    # consistent names and shapes, but the second Dense takes 7 inputs after a Dense giving 4
    header, _ = split(blob)
    meta = dict(header["__metadata__"])
    del meta["optimizer"]
    cfg = json.loads(meta["model"])
    cfg["layers"][3]["in_features"] = 7
    meta["model"] = json.dumps(cfg)
    tensors = {k: v for k, v in safetensors.numpy.load(blob).items() if not k.startswith("optimizer.")}
    tensors["3.weight"] = np.zeros((3, 7), np.float32)
    return safetensors.numpy.save(tensors, metadata=meta)


def set_layer(i, spec):
    return edit_meta("model", lambda c: c["layers"].__setitem__(i, spec))


def huge_tensor(h):
    h["0.weight"].update(shape=[10 ** 9, 10 ** 9], data_offsets=[0, 4 * 10 ** 18])


def wrong_size(h):
    h["0.weight"]["shape"] = [2 ** 40, 2 ** 40]


def swapped_shape(h):
    h["0.weight"]["shape"] = h["0.weight"]["shape"][::-1]


def gap(h):
    for info in h.values():
        if isinstance(info, dict) and "data_offsets" in info and info["data_offsets"][0] == 0:
            info["data_offsets"] = [4, info["data_offsets"][1] + 4]


HOSTILE = {
    "empty file": (lambda b: b"", "too short"),
    "seven bytes": (lambda b: b[:7], "too short"),
    "truncated in the header": (lambda b: b[:60], "runs past the end"),
    "truncated in the data": (lambda b: b[:-6], "declares bytes|truncated"),
    "header length past the end": (lambda b: (len(b) - 7).to_bytes(8, "little") + b[8:], "runs past the end"),
    "header length 2**64-1": (lambda b: b"\xff" * 8 + b[8:], "runs past the end"),
    "huge declared tensor": (edit_header(huge_tensor), "declares bytes"),
    "shape too big for its bytes": (edit_header(wrong_size), "declares shape"),
    "gap between tensors": (edit_header(gap), "declares bytes|tile"),
    "header not JSON": (lambda b: join({}, b"")[:8] + b"{not json", "not valid JSON"),
    "header a JSON list": (lambda b: (2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    "header with a NaN": (lambda b: (5).to_bytes(8, "little") + b"{NaN}", "not valid JSON"),
    "duplicate tensor name": (lambda b: (lambda h: (len(h)).to_bytes(8, "little") + h)(
        b'{"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}, '
        b'"a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}') + b"\0" * 4, "duplicate key"),
    "bad tensor entry": (edit_header(lambda h: h["0.bias"].__setitem__("shape", "4")), "shape must be"),
    "unknown dtype": (edit_header(lambda h: h["0.bias"].__setitem__("dtype", "Q7")), "unknown dtype"),
    "renamed tensor": (edit_header(lambda h: h.__setitem__("0.weights", h.pop("0.weight"))),
                       r"missing \['0.weight'\], unexpected \['0.weights'\]"),
    "extra tensor": (extra_tensor, r"unexpected \['extra'\]"),
    "transposed weight": (edit_header(swapped_shape), r"shape \[5, 4\], the architecture needs \[4, 5\]"),
    "F64 tensors in a float32 model": (retyped, "is F64, the model's dtype needs F32"),
    "NaN weight": (nan_weights, "NaN"),
    "no metadata": (edit_header(lambda h: h.pop("__metadata__")), "not a fastnn model file"),
    "other format": (set_meta("format", "pt"), "not a fastnn model file"),
    "newer format version": (set_meta("format_version", "2"), "format version '2'"),
    "metadata value not a string": (set_meta("model", {"layers": []}), "strings to strings"),
    "non-JSON model metadata": (set_meta("model", "{oops"), "'model' is not valid JSON"),
    "deeply nested metadata": (set_meta("model", "[" * 100_000), "'model' is not valid JSON"),
    "absurd Dense": (set_layer(0, {"type": "Dense", "in_features": 10 ** 9, "out_features": 10 ** 9,
                                   "bias": True, "init": None}), r"needs \[1000000000, 1000000000\]"),
    "unknown layer type": (set_layer(1, {"type": "Lambda", "code": "__import__('os')"}), "type is one of"),
    "layer with extra argument": (set_layer(1, {"type": "ReLU", "inplace": True}), "unexpected"),
    "Dense with a float size": (set_layer(0, {"type": "Dense", "in_features": 5.0, "out_features": 4,
                                              "bias": True, "init": None}), "positive ints"),
    "Dropout p out of range": (set_layer(2, {"type": "Dropout", "p": 1.5, "mode": "inverted"}),
                               "architecture is invalid: Dropout: p must be in"),
    "architecture that does not chain": (broken_chain, "architecture is invalid: layer 3"),
    "negative seed": (edit_meta("model", lambda c: c.__setitem__("seed", -1)), "seed must be"),
    "no layers": (edit_meta("model", lambda c: c.__setitem__("layers", [])), "1 to"),
    "unknown loss": (set_meta("loss", json.dumps({"type": "os.system", "reduction": "mean"})), "loss type"),
    "class weights of the wrong length": (edit_meta("loss", lambda c: c.__setitem__("weight", [1.0])),
                                          "weight must be null or a list of 3"),
    "unknown optimizer": (edit_meta("optimizer", lambda c: c.__setitem__("type", "Lion")), "optimizer type"),
    "bad optimizer hyper-parameter": (edit_meta("optimizer", lambda c: c["hyper"].__setitem__("betas", [2, 3])),
                                      "optimizer is invalid"),
    "wrong optimizer buffers": (edit_meta("optimizer", lambda c: c.__setitem__("state", ["exp_avg"])),
                                "state buffers must be"),
    "optimizer state of the wrong length": (
        edit_header(lambda h: h["optimizer.exp_avg"].__setitem__("shape", [1, 39])), r"needs \[39\]"),
}


def assert_refused(path, match):
    """Loading raises ValueError matching ``match`` and allocates under 1 MiB on the way."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            fn.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 ** 20


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_refused_with_value_error(tmp_path, case):
    mutate, match = HOSTILE[case]
    path = tmp_path / "m.safetensors"
    blob = trained_file(path)
    fn.load(path)                                     # the unmutated file is fine
    path.write_bytes(mutate(blob))
    assert_refused(path, match)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_refused(tmp_path, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "r.bin"
    path.write_bytes(rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8).tobytes())
    assert_refused(path, None)


def test_read_metadata_checks_the_header(tmp_path):
    path = tmp_path / "m.safetensors"
    blob = trained_file(path)
    assert json.loads(io.read_metadata(path)["model"])["epochs_trained"] == 1
    path.write_bytes(edit_header(swapped_shape)(blob))
    with pytest.raises(ValueError, match="the architecture needs"):
        io.read_metadata(path)


def test_directory_is_refused(tmp_path):
    assert_refused(tmp_path, "is a directory")


def test_plain_torch_style_file_gets_a_hint(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file({"0.weight": np.zeros((2, 3), np.float32)}, path)
    assert_refused(path, "load_state_dict")


MUTATIONS = st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]),
                               st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=8)),
                     min_size=1, max_size=3)


def _mutate(blob, ops):
    b = bytearray(blob)
    for op, where, payload in ops:
        i = int(where * len(b)) if b else 0
        if op == "flip" and b:
            b[i] ^= payload[0] or 1
        elif op == "truncate":
            del b[i:]
        elif op == "insert":
            b[i:i] = payload
        elif op == "delete":
            del b[i:i + len(payload)]
    return bytes(b)


@pytest.fixture(scope="module")
def valid_blob(tmp_path_factory):
    return trained_file(tmp_path_factory.mktemp("valid") / "m.safetensors")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=MUTATIONS)
def test_mutated_files_load_or_raise_value_error(tmp_path, valid_blob, ops):
    blob = _mutate(valid_blob, ops)
    path = tmp_path / "mutant.safetensors"
    path.write_bytes(blob)
    try:
        m = fn.load(path)
    except ValueError:
        return
    assert isinstance(m, fn.Sequential)
    assert m.n_params * m.dtype.itemsize <= len(blob)
    assert all(np.all(np.isfinite(p)) for p in m.parameters())
    m.forward(np.zeros((2, m.n_features)))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
    | st.sampled_from(["Dense", "ReLU", "Dropout", "classic", "he", "mean", "F32", "F64", "exp_avg"])
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _paths(obj, prefix=()):
    if prefix:
        yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_files_with_rewritten_header_values_load_or_raise_value_error(tmp_path, valid_blob, data):
    # structure-aware: replace or delete values deep inside the header and its JSON metadata
    header, body = split(valid_blob)
    meta = header.pop("__metadata__")
    doc = {"tensors": header, **{k: json.loads(meta[k]) for k in ("model", "loss", "optimizer")}}
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p != ("tensors",)]
        where = paths[data.draw(st.integers(0, len(paths) - 1))]
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[where[-1]]
        else:
            parent[where[-1]] = data.draw(JSON_VALUES)
    header = dict(doc.pop("tensors"))
    header["__metadata__"] = {**meta, **{k: json.dumps(v) for k, v in doc.items()}}
    path = tmp_path / "mutant.safetensors"
    path.write_bytes(join(header, body))
    try:
        m = fn.load(path)
    except ValueError:
        return
    assert m.n_params * m.dtype.itemsize <= path.stat().st_size
    m.forward(np.zeros((2, m.n_features)))
