"""Model files and PyTorch interop for BatchNorm1d, LayerNorm, Flatten and Residual models."""
import json
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

import fastnn as fn
from fastnn import io
from test_io import assert_refused, join, split

DTYPES = ["float32", "float64"]


def data(n=96, shape=(5,), seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, *shape))
    flat = X.reshape(n, -1)
    return X, (flat[:, 0] > 0).astype(int) + (flat[:, 1] > 0.5)


# every model takes 5 features, or (3, 4) examples for "ln-grid"; all end in 3 logits
MODELS = {
    "bn": lambda: [fn.Dense(5, 16), fn.BatchNorm1d(16), fn.ReLU(), fn.Dropout(0.2), fn.Dense(16, 3)],
    "bn-cumulative": lambda: [fn.BatchNorm1d(5, momentum=None), fn.Dense(5, 8), fn.Tanh(),
                              fn.BatchNorm1d(8, affine=False), fn.Dense(8, 3)],
    "ln-grid": lambda: [fn.LayerNorm(4), fn.Flatten(), fn.Dense(12, 8), fn.Tanh(), fn.Dropout(0.1),
                        fn.Dense(8, 3)],
    "pre-ln-residual": lambda: [fn.Dense(5, 8),
                                fn.Residual(fn.LayerNorm(8), fn.Dense(8, 8), fn.ReLU(), fn.Dense(8, 8)),
                                fn.Residual(fn.LayerNorm(8, bias=False), fn.Dense(8, 8), fn.ReLU(), fn.Dense(8, 8)),
                                fn.LayerNorm(8), fn.Dense(8, 3)],
    "projection-residual": lambda: [fn.Dense(5, 8), fn.ReLU(),
                                    fn.Residual(fn.Dense(8, 6), fn.Tanh(), projection=fn.Dense(8, 6)),
                                    fn.Dropout(0.1), fn.Dense(6, 3)],
    "nested-residual": lambda: [fn.Dense(5, 8),
                                fn.Residual(fn.Residual(fn.BatchNorm1d(8), fn.Dense(8, 8)), fn.ReLU(),
                                            fn.Residual(fn.Dense(8, 4), projection=fn.Dense(8, 4, bias=False)),
                                            projection=fn.Dense(8, 4)),
                                fn.Residual(fn.LayerNorm(4), fn.Dense(4, 4)), fn.Dense(4, 3)],
}


def make(name, dtype="float64", seed=3):
    shape = (3, 4) if name == "ln-grid" else None
    return fn.Sequential(*MODELS[name](), dtype=dtype, seed=seed, input_shape=shape)


def X_for(name, n=96, seed=0):
    return data(n, (3, 4) if name == "ln-grid" else (5,), seed)


def trained(name, dtype="float64", epochs=2):
    m = make(name, dtype)
    X, y = X_for(name)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=epochs, batch_size=16)
    return m


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


# ---------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_is_exact(tmp_path, name, dtype):
    m = trained(name, dtype)
    for _, layer in m._plan.bn_layers:
        if layer.track_running_stats:     # the file must carry non-trivial statistics
            assert layer.num_batches_tracked == 12
            assert np.any(layer.running_mean != 0) and np.any(layer.running_var != 1)
    path = tmp_path / "m.safetensors"
    m.save(path)
    m2 = fn.load(path)
    assert repr(m2) == repr(m) and m2.dtype == m.dtype and m2.input_shape == m.input_shape
    assert json.loads(io.read_metadata(path)["model"])["input_shape"] == list(m.input_shape)
    assert_same_state(m, m2)
    X, y = X_for(name, seed=1)
    np.testing.assert_array_equal(m2.forward(X), m.forward(X))
    assert m2.evaluate(X, y) == m.evaluate(X, y)
    assert m2.loss_and_grad(X, y, fn.CrossEntropy())[0] == m.loss_and_grad(X, y, fn.CrossEntropy())[0]


def test_file_tensors_are_the_state_dict(tmp_path):
    m = trained("nested-residual")
    path = tmp_path / "m.safetensors"
    m.save(path)
    tensors = safetensors.numpy.load_file(path)
    assert set(tensors) == set(m.state_dict())
    assert {"1.layers.0.layers.0.running_var", "1.layers.2.projection.weight", "1.projection.bias"} <= set(tensors)
    nbt = tensors["1.layers.0.layers.0.num_batches_tracked"]
    assert nbt.dtype == np.int64 and nbt.shape == () and nbt == 12


def test_files_without_input_shape_still_load(tmp_path):
    # the model config of files written before Flatten/LayerNorm/Residual has no input_shape
    m = fn.Sequential(fn.Dense(5, 4), fn.ReLU(), fn.Dense(4, 3), seed=2)
    path = tmp_path / "m.safetensors"
    m.save(path)
    header, body = split(path.read_bytes())
    cfg = json.loads(header["__metadata__"]["model"])
    del cfg["input_shape"]
    header["__metadata__"]["model"] = json.dumps(cfg)
    path.write_bytes(join(header, body))
    m2 = fn.load(path)
    assert m2.input_shape == (5,)
    assert_same_state(m, m2)


def test_save_refuses_non_finite_running_statistics(tmp_path):
    m = make("bn")
    m.layers[1].running_var[0] = np.inf
    with pytest.raises(ValueError, match="running statistics contain NaN or Inf"):
        m.save(tmp_path / "m.st")


# ---------------------------------------------------------------- exact resumption
@pytest.mark.parametrize("make_opt", [lambda: fn.SGD(lr=0.05, momentum=0.9), lambda: fn.Adam(lr=1e-2)],
                         ids=["sgd-momentum", "adam"])
@pytest.mark.parametrize("name", list(MODELS))
def test_checkpoint_resume_is_bit_identical(tmp_path, name, make_opt):
    X, y = X_for(name, n=90)
    kw = dict(loss=fn.CrossEntropy(), batch_size=16)
    full = make(name)
    full.fit(X, y, optimizer=make_opt(), epochs=3, **kw)
    path = tmp_path / "ckpt.safetensors"
    part = make(name)
    part.fit(X, y, optimizer=make_opt(), epochs=2, checkpoint=path, **kw)
    resumed = fn.load(path)
    assert resumed.epochs_trained == 2 and resumed.optimizer.step_count == part.optimizer.step_count
    resumed.fit(X, y, epochs=1, batch_size=16)        # loss and optimizer come from the file
    assert_same_state(resumed, full)
    np.testing.assert_array_equal(resumed._params, full._params)
    np.testing.assert_array_equal(resumed._running, full._running)


# ---------------------------------------------------------------- hostile files
def with_model(edit):
    def f(blob):
        header, body = split(blob)
        cfg = json.loads(header["__metadata__"]["model"])
        edit(cfg)
        header["__metadata__"]["model"] = json.dumps(cfg)
        return join(header, body)
    return f


def with_layers(edit):
    return with_model(lambda cfg: edit(cfg["layers"]))


def with_tensors(edit):
    # a self-consistent file (valid safetensors) whose tensors ``edit`` changed
    def f(blob):
        header, _ = split(blob)
        tensors = safetensors.numpy.load(blob)
        edit(tensors)
        return safetensors.numpy.save(tensors, metadata=header["__metadata__"])
    return f


def nested(depth):
    spec = {"type": "ReLU"}
    for _ in range(depth):
        spec = {"type": "Residual", "layers": [spec], "projection": None}
    return spec


def many_layers(layers):
    layers[2]["layers"] = [{"type": "Identity"}] * (io.MAX_LAYERS + 1)


def put(key, value):
    return lambda t: t.__setitem__(key, value)


# the valid file: Dense(5, 8), Residual(BatchNorm1d(8), Dense(8, 8), ReLU), Residual(..., projection), Dense
HOSTILE = {
    "BatchNorm1d with negative num_features": (
        with_layers(lambda ls: ls[1]["layers"][0].__setitem__("num_features", -8)),
        r"layer 1.layers.0 \(BatchNorm1d\): num_features takes positive ints, got -8"),
    "BatchNorm1d momentum out of range": (
        with_layers(lambda ls: ls[1]["layers"][0].__setitem__("momentum", 2.0)),
        r"architecture is invalid: BatchNorm1d: momentum must be .* \(layer 1.layers.0\)"),
    "BatchNorm1d with an extra key": (
        with_layers(lambda ls: ls[1]["layers"][0].__setitem__("inplace", True)),
        r"layer 1.layers.0 \(BatchNorm1d\): missing \[\], unexpected \['inplace'\]"),
    "LayerNorm with an empty shape": (
        with_layers(lambda ls: ls[1]["layers"].__setitem__(0, {"type": "LayerNorm", "normalized_shape": [],
                                                               "eps": 1e-5, "elementwise_affine": True,
                                                               "bias": True})),
        r"layer 1.layers.0 \(LayerNorm\): normalized_shape takes lists of 1 to 8 positive ints"),
    "Residual nested beyond the limit": (
        with_layers(lambda ls: ls.__setitem__(1, nested(io.MAX_DEPTH + 1))),
        f"Residuals nest more than {io.MAX_DEPTH} deep"),
    "Residual with no layers": (with_layers(lambda ls: ls[1].__setitem__("layers", [])),
                                r"layer 1 \(Residual\): layers must be a non-empty list"),
    "projection that is not a Dense": (
        with_layers(lambda ls: ls[2].__setitem__("projection", {"type": "ReLU"})),
        r"layer 2 \(Residual\): projection must be a Dense spec or null"),
    "unknown nested layer": (with_layers(lambda ls: ls[2]["layers"].__setitem__(0, {"type": "Conv3d"})),
                             r"layer 2.layers.0 must be an object whose type is one of"),
    "running_var of the wrong shape": (with_tensors(put("1.layers.0.running_var", np.ones(7, np.float32))),
                                       r"'1.layers.0.running_var' has shape \[7\], the architecture needs \[8\]"),
    "float num_batches_tracked": (with_tensors(put("1.layers.0.num_batches_tracked", np.array(3.0))),
                                  r"'1.layers.0.num_batches_tracked' is F64, a batch count needs I64"),
    "num_batches_tracked with a shape": (with_tensors(put("1.layers.0.num_batches_tracked",
                                                          np.array([3], dtype=np.int64))),
                                         r"has shape \[1\], the architecture needs \[\]"),
    "negative num_batches_tracked": (with_tensors(put("1.layers.0.num_batches_tracked", np.array(-1))),
                                     "num_batches_tracked must be a non-negative integer"),
    "negative running_var": (with_tensors(lambda t: t["1.layers.0.running_var"].__setitem__(0, -1.0)),
                             "running_var has negative entries"),
    "NaN running_mean": (with_tensors(lambda t: t["1.layers.0.running_mean"].__setitem__(0, np.nan)),
                         "running_mean contains NaN"),
    "missing buffer": (with_tensors(lambda t: t.pop("1.layers.0.running_var")),
                       r"missing \['1.layers.0.running_var'\]"),
    "missing projection": (with_tensors(lambda t: t.pop("2.projection.weight")),
                           r"missing \['2.projection.weight'\]"),
    "bad input_shape": (with_model(put("input_shape", [0])), "input_shape takes lists of 1 to 8 positive ints"),
    "input_shape that does not chain": (with_model(put("input_shape", [6])),
                                        r"architecture is invalid: layer 0 \(Dense"),
}


@pytest.fixture(scope="module")
def valid_blob(tmp_path_factory):
    m = fn.Sequential(fn.Dense(5, 8), fn.Residual(fn.BatchNorm1d(8), fn.Dense(8, 8), fn.ReLU()),
                      fn.Residual(fn.Dense(8, 4), fn.Tanh(), projection=fn.Dense(8, 4)), fn.Dense(4, 3), seed=0)
    X, y = data()
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.05, momentum=0.9), epochs=1, batch_size=16)
    path = tmp_path_factory.mktemp("valid") / "m.safetensors"
    m.save(path, include_optimizer=True)
    return path.read_bytes()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_refused_with_value_error(tmp_path, valid_blob, case):
    mutate, match = HOSTILE[case]
    path = tmp_path / "m.safetensors"
    path.write_bytes(valid_blob)
    fn.load(path)                                     # the unmutated file is fine
    path.write_bytes(mutate(valid_blob))
    assert_refused(path, match)


def test_too_many_nested_layers_are_refused(tmp_path, valid_blob):
    # a 170 kB header of 10001 layers: parsing its JSON alone takes more than assert_refused's 1 MiB
    path = tmp_path / "m.safetensors"
    path.write_bytes(with_layers(many_layers)(valid_blob))
    with pytest.raises(ValueError, match=f"over {io.MAX_LAYERS} layers"):
        fn.load(path)


# ---------------------------------------------------------------- PyTorch
def test_importing_fastnn_io_does_not_import_torch():
    code = "import sys, fastnn, fastnn.io; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", list(MODELS))
def test_to_torch_matches_in_inference(name):
    torch = pytest.importorskip("torch")
    m = trained(name)
    tm = io.to_torch(m)
    assert tm.training
    sd = tm.state_dict()
    assert set(sd) == set(m.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(sd[k].numpy(), v, err_msg=k)
        assert sd[k].dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float64)
    X, _ = X_for(name, seed=1)
    out = tm.eval()(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(out, m.forward(X), rtol=1e-12, atol=1e-12)


def test_to_torch_maps_module_types_and_options():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    m = fn.Sequential(fn.BatchNorm1d(5, eps=1e-3, momentum=None), fn.Dense(5, 6),
                      fn.BatchNorm1d(6, affine=False, track_running_stats=False), fn.LayerNorm(6, bias=False),
                      fn.Residual(fn.LayerNorm(6, elementwise_affine=False), fn.Dense(6, 4), projection=fn.Dense(6, 4)),
                      fn.Dense(4, 2), dtype="float32")
    tm = m.to_torch()
    assert type(tm[0]) is nn.BatchNorm1d and tm[0].eps == 1e-3 and tm[0].momentum is None
    assert tm[2].affine is False and tm[2].track_running_stats is False and tm[2].running_mean is None
    assert type(tm[3]) is nn.LayerNorm and tm[3].weight is not None and tm[3].bias is None
    assert isinstance(tm[4], io.TorchResidual) and isinstance(tm[4].layers, nn.Sequential)
    assert type(tm[4].projection) is nn.Linear and tm[4].layers[0].weight is None
    assert tm[1].weight.dtype == torch.float32 and tm[0].num_batches_tracked.dtype == torch.int64
    back = fn.io.from_torch(tm)
    assert repr(back) == repr(m)
    assert_same_state(back, m)
    assert type(fn.io.from_torch(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), input_shape=(3, 4)).layers[0]) \
        is fn.Flatten


def test_torch_residual_forward():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    lin, proj = nn.Linear(3, 2), nn.Linear(3, 2)
    x = torch.randn(4, 3)
    torch.testing.assert_close(io.TorchResidual([lin], proj)(x), lin(x) + proj(x))
    block = io.TorchResidual(nn.Sequential(nn.Tanh()))
    assert block.projection is None
    torch.testing.assert_close(block(x), torch.tanh(x) + x)


GRAD_MODELS = {
    "dense-bn-relu": lambda: [fn.Dense(5, 12), fn.BatchNorm1d(12), fn.ReLU(), fn.Dense(12, 8),
                              fn.BatchNorm1d(8, momentum=None), fn.ReLU(), fn.Dense(8, 3)],
    "pre-ln-residual": MODELS["pre-ln-residual"],
    "projection-residual": lambda: [fn.Dense(5, 8), fn.ReLU(),
                                    fn.Residual(fn.Dense(8, 6), fn.Tanh(), projection=fn.Dense(8, 6)),
                                    fn.Residual(fn.LayerNorm(6), fn.Dense(6, 6)), fn.Dense(6, 3)],
}


@pytest.mark.parametrize("name", list(GRAD_MODELS))
def test_training_mode_gradients_match_torch(name):
    torch = pytest.importorskip("torch")
    m = fn.Sequential(*GRAD_MODELS[name](), dtype="float64", seed=4)
    X, y = data(40, seed=2)
    m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=1, batch_size=8)  # non-trivial weights
    tm = io.to_torch(m)
    assert tm.training
    before = {k: v.clone() for k, v in tm.state_dict().items()}
    loss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(X)), torch.from_numpy(y))
    loss.backward()
    value, grads = m.loss_and_grad(X, y, fn.CrossEntropy())
    assert value == pytest.approx(loss.item(), rel=1e-12)
    tgrads = dict(tm.named_parameters())
    assert list(tgrads) == [k for k, _ in m.named_parameters()]
    for (k, _), g in zip(m.named_parameters(), grads):
        np.testing.assert_allclose(g, tgrads[k].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
    # torch's training forward moved its running statistics; fastnn's loss_and_grad leaves them
    for k, v in m.named_buffers():
        np.testing.assert_array_equal(v, before[k].numpy(), err_msg=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_from_torch_of_to_torch_is_the_same_model(name, dtype):
    pytest.importorskip("torch")
    m = trained(name, dtype)
    back = io.from_torch(io.to_torch(m), input_shape=m.input_shape)
    assert back.dtype == m.dtype and repr(back) == repr(m)
    assert_same_state(back, m)
    X, _ = X_for(name, seed=1)
    np.testing.assert_array_equal(back.forward(X), m.forward(X))


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_loads_a_fastnn_file_strictly(tmp_path, name):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    m = trained(name)
    path = tmp_path / "m.safetensors"
    m.save(path)
    tm = io.to_torch(make(name, seed=99))            # same architecture, other weights
    tm.load_state_dict(safetensors.torch.load_file(path), strict=True)
    X, _ = X_for(name, seed=1)
    np.testing.assert_allclose(tm.eval()(torch.from_numpy(X)).detach().numpy(), m.forward(X),
                               rtol=1e-12, atol=1e-12)


def test_to_torch_names_the_classic_dropout_inside_a_residual():
    pytest.importorskip("torch")
    m = fn.Sequential(fn.Dense(5, 4), fn.Residual(fn.Dropout(0.5, mode="classic"), fn.Dense(4, 4)))
    with pytest.raises(ValueError, match=r"layer 1.layers.0: Dropout\(mode='classic'\)"):
        m.to_torch()
