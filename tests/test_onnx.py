"""ONNX export: onnxruntime's outputs equal model.forward; the checker passes; clear errors."""
import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import fastnn as fn  # noqa: E402
from fastnn.onnx import EXPORTERS, export  # noqa: E402

RTOL = {"float32": 1e-5, "float64": 1e-12}


def _run(path, X):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": X})[0]


def _every_layer(dtype, mode):
    return fn.Sequential(
        fn.Dense(9, 16), fn.LeakyReLU(0.2), fn.Dropout(0.3, mode=mode),
        fn.Dense(16, 12), fn.Tanh(), fn.Identity(),
        fn.Dense(12, 10, bias=False), fn.Sigmoid(), fn.Dropout(0.5, mode=mode),
        fn.Dense(10, 8), fn.ReLU(),
        fn.Dense(8, 5), fn.Softmax(),
        dtype=dtype, seed=0)


def _trained(model, rng):
    # a few steps, so the weights and biases are not the initial ones
    X = rng.normal(size=(64, model.n_features))
    y = rng.integers(0, model.n_outputs, 64)
    model.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=2, batch_size=16)
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_runtime_output_equals_forward(tmp_path, rng, dtype, mode):
    model = _trained(_every_layer(dtype, mode), rng)
    path = tmp_path / "m.onnx"
    proto = export(model, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.opset_import[0].version == 17
    # dynamic batch: one model serves any number of rows
    for n in (1, 7, 97):
        X = (rng.normal(size=(n, 9)) * 2).astype(dtype)
        out = _run(path, X)
        assert out.dtype == np.dtype(dtype) and out.shape == (n, 5)
        np.testing.assert_allclose(out, model.forward(X), rtol=RTOL[dtype], atol=1e-7)


def test_classic_dropout_scales_in_inference(tmp_path):
    model = fn.Sequential(fn.Dense(3, 4), fn.Dropout(0.25, mode="classic"), dtype="float64", seed=0)
    plain = fn.Sequential(fn.Dense(3, 4), dtype="float64", seed=0)
    export(model, tmp_path / "c.onnx")
    export(plain, tmp_path / "p.onnx")
    X = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(_run(tmp_path / "c.onnx", X), 0.75 * _run(tmp_path / "p.onnx", X),
                               rtol=1e-15)
    np.testing.assert_allclose(_run(tmp_path / "c.onnx", X), model.forward(X), rtol=1e-15)


def test_graph_is_named_like_the_state_dict(tmp_path):
    model = fn.Sequential(fn.Dense(4, 3), fn.ReLU(), fn.Dense(3, 2, bias=False), seed=0)
    proto = export(model, tmp_path / "m.onnx", opset=13)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert set(inits) == set(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(inits[k], v)
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Relu", "Gemm"]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["N", 4]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 2]
    assert proto.producer_name == "fastnn" and proto.opset_import[0].version == 13


def test_unsupported_layer_raises_naming_it(tmp_path):
    class MyReLU(fn.ReLU):      # a subclass may change the math: never exported as its parent
        pass

    model = fn.Sequential(fn.Dense(3, 2), MyReLU(), seed=0)
    with pytest.raises(NotImplementedError, match=r"layer 1 \(MyReLU\) has no ONNX exporter"):
        export(model, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_register_adds_a_layer_kind(tmp_path, monkeypatch):
    class MyReLU(fn.ReLU):
        pass

    monkeypatch.setitem(EXPORTERS, MyReLU, lambda layer, g, x, name: g.node("Relu", [x], f"{name}.relu"))
    model = fn.Sequential(fn.Dense(3, 2), MyReLU(), seed=0)
    export(model, tmp_path / "n.onnx")
    X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(_run(tmp_path / "n.onnx", X), model.forward(X), rtol=1e-6)


def test_bad_arguments(tmp_path):
    model = fn.Sequential(fn.Dense(3, 2), seed=0)
    with pytest.raises(ValueError, match="opset"):
        export(model, tmp_path / "m.onnx", opset=9)
    with pytest.raises(TypeError, match="opset"):
        export(model, tmp_path / "m.onnx", opset="17")
    with pytest.raises(TypeError, match="Sequential"):
        export(object(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="directory"):
        export(model, tmp_path / "no" / "m.onnx")
    with pytest.raises(ValueError, match="standardize"):
        export(model, tmp_path / "m.onnx", standardize=([0, 0], [1, 1]))


def test_import_fastnn_does_not_import_onnx(tmp_path):
    code = "import sys, fastnn; assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_cli_export_applies_the_saved_standardisation(tmp_path):
    from test_cli import fastnn_cli, shifted_classes, write_csv

    X, y = shifted_classes()
    write_csv(tmp_path / "train.csv", X, y)
    write_csv(tmp_path / "features.csv", X[:50], header=False)
    fastnn_cli("train", "train.csv", "--epochs", "5", "--quiet", "--save", "model.safetensors", cwd=tmp_path)
    out = fastnn_cli("export", "model.safetensors", "model.onnx", cwd=tmp_path).stdout
    assert "model.onnx" in out and "standardised" in out
    proba = np.loadtxt(fastnn_cli("predict", "model.safetensors", "features.csv", "--proba",
                                  cwd=tmp_path).stdout.splitlines(), delimiter=",")
    logits = _run(tmp_path / "model.onnx", X[:50].astype(np.float32))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), proba, rtol=1e-4, atol=1e-6)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(meta["preprocess"])["classes"] == [3, 7]
    err = fastnn_cli("export", "model.safetensors", "model.onnx", "--opset", "5", cwd=tmp_path, ok=False).stderr
    assert "opset" in err


def _norm_and_residual(dtype):
    return fn.Sequential(
        fn.LayerNorm(4), fn.Flatten(), fn.Dense(12, 16), fn.BatchNorm1d(16), fn.ReLU(),
        fn.Residual(fn.LayerNorm(16), fn.Dense(16, 16), fn.ReLU(), fn.Dense(16, 16)),
        fn.Residual(fn.Residual(fn.Dense(16, 16), fn.Tanh()), fn.Dense(16, 8), projection=fn.Dense(16, 8)),
        fn.BatchNorm1d(8, affine=False, momentum=None), fn.LayerNorm(8, bias=False), fn.Dense(8, 5),
        input_shape=(3, 4), dtype=dtype, seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_norm_and_residual_layers_export(tmp_path, rng, dtype):
    model = _norm_and_residual(dtype)
    X = rng.normal(size=(64, 3, 4))
    model.fit(X, rng.integers(0, 5, 64), loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=2,
              batch_size=16)
    assert model.layers[3].num_batches_tracked == 8        # running statistics are not the initial ones
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    for n in (1, 7, 97):
        Xn = (rng.normal(size=(n, 3, 4)) * 2).astype(dtype)
        np.testing.assert_allclose(_run(path, Xn.reshape(n, 12)), model.forward(Xn), rtol=RTOL[dtype] * 10,
                                   atol=1e-6 if dtype == "float32" else 1e-12)


def test_untracked_batchnorm_exports_batch_statistics(tmp_path, rng):
    model = fn.Sequential(fn.Dense(6, 4), fn.BatchNorm1d(4, track_running_stats=False), dtype="float64", seed=0)
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    X = rng.normal(size=(9, 6))
    np.testing.assert_allclose(_run(path, X), model.forward(X), rtol=1e-12, atol=1e-12)


def _convnet(dtype):
    return fn.Sequential(
        fn.Conv2d(2, 6, 3, padding="same"), fn.BatchNorm2d(6), fn.ReLU(), fn.MaxPool2d(2),
        fn.Conv2d(6, 8, (2, 3), stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=2), fn.Dropout2d(0.2),
        fn.AvgPool2d(2, stride=1, padding=1, count_include_pad=False), fn.Tanh(), fn.AdaptiveAvgPool2d((1, 3)),
        fn.Flatten(), fn.Dense(24, 3), input_shape=(2, 8, 10), dtype=dtype, seed=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_convolutional_layers_export(tmp_path, rng, dtype):
    model = _convnet(dtype)
    X = rng.normal(size=(24, 2, 8, 10))
    model.fit(X, rng.integers(0, 3, 24), loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=1, batch_size=8)
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    if dtype == "float64":
        pytest.skip("onnxruntime has no float64 Conv kernel; the float64 graph is checked, not run")
    one_d = fn.Sequential(fn.Conv1d(3, 4, 5, padding="same"), fn.BatchNorm1d(4, track_running_stats=False),
                          fn.MaxPool1d(3, stride=2, padding=1), fn.AdaptiveAvgPool1d(1), fn.Flatten(),
                          fn.Dense(4, 2), input_shape=(3, 12), dtype=dtype, seed=1)
    one_d.to_onnx(tmp_path / "c1.onnx")
    for n in (1, 7):
        Xn = rng.normal(size=(n, 2, 8, 10)).astype(dtype)
        np.testing.assert_allclose(_run(path, Xn.reshape(n, -1)), model.forward(Xn), rtol=RTOL[dtype] * 10,
                                   atol=1e-6 if dtype == "float32" else 1e-12)
        Xn = rng.normal(size=(max(n, 2), 3, 12)).astype(dtype)
        np.testing.assert_allclose(_run(tmp_path / "c1.onnx", Xn.reshape(len(Xn), -1)), one_d.forward(Xn),
                                   rtol=RTOL[dtype] * 10, atol=1e-6 if dtype == "float32" else 1e-12)


def test_adaptive_pool_without_an_onnx_form_is_named(tmp_path):
    model = fn.Sequential(fn.AdaptiveAvgPool2d((2, 2)), fn.Flatten(), fn.Dense(8, 2), input_shape=(2, 5, 5), seed=0)
    with pytest.raises(NotImplementedError, match=r"layer 0 \(AdaptiveAvgPool2d\)"):
        model.to_onnx(tmp_path / "x.onnx")


def _recurrent_models(dtype):
    return [fn.Sequential(fn.LSTM(3, 5), fn.Dense(5, 2), input_shape=(7, 3), dtype=dtype, seed=0),
            fn.Sequential(fn.GRU(3, 4, num_layers=2, return_sequences=True), fn.Dense(4, 2), input_shape=(6, 3),
                          dtype=dtype, seed=1),
            fn.Sequential(fn.RNN(3, 4, nonlinearity="relu", bias=False), fn.Tanh(), fn.Dense(4, 2),
                          input_shape=(5, 3), dtype=dtype, seed=2),
            fn.Sequential(fn.Embedding(11, 4, padding_idx=0), fn.LSTM(4, 6, return_sequences=True), fn.Flatten(),
                          fn.Dense(36, 2), input_shape=(6,), dtype=dtype, seed=3)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_recurrent_layers_export(tmp_path, rng, dtype):
    for k, model in enumerate(_recurrent_models(dtype)):
        emb = isinstance(model.layers[0], fn.Embedding)
        X = (rng.integers(0, 11, size=(13,) + model.input_shape) if emb else
             rng.normal(size=(13,) + model.input_shape)).astype(dtype)
        y = rng.integers(0, 2, (13,) + (model._plan.out_shape[:-1] if len(model._plan.out_shape) > 1 else ()))
        model.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=1, batch_size=4)
        path = tmp_path / f"r{k}.onnx"
        model.to_onnx(path)
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        if dtype == "float64":
            continue                # onnxruntime's recurrent kernels are float32 only; the graph is checked
        np.testing.assert_allclose(_run(path, X.reshape(len(X), -1)), model.forward(X).reshape(len(X), -1),
                                   rtol=1e-5, atol=1e-6)
