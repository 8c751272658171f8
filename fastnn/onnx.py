"""Export a ``Sequential`` to ONNX, for serving with onnxruntime or any other ONNX runtime.

The graph computes ``model.forward`` (raw outputs, in inference mode) in the model's dtype,
with a dynamic batch dimension: input ``"input"`` of shape ``(N, n_features)``, output
``"output"`` of shape ``(N, n_outputs)``; weights are initializers named as in
``model.state_dict()``.

Each layer class has one exporter, a function ``f(layer, g, x, name)`` that appends the
layer's nodes to ``g`` (a ``GraphBuilder``) and returns the name of its output tensor; ``x`` is
the name of its input and ``name`` the layer's index in the model. ``register`` adds one
for a new layer kind; a layer without one makes ``export`` raise ``NotImplementedError``
naming it. Lookup is by exact class, so a subclass that changes the math is never exported
as its parent.

Needs ``onnx`` (``pip install "fastnn-cpu[onnx]"``, which also brings onnxruntime);
``import fastnn`` does not import it.
"""
import math

import numpy as np

from . import layers as L
from ._core import _engine

__all__ = ["export", "register", "GraphBuilder", "DEFAULT_OPSET", "MIN_OPSET"]

# 17 is read by every onnxruntime since 1.11; 13 is the first with Softmax over one axis
DEFAULT_OPSET = 17
MIN_OPSET = 13

EXPORTERS = {}


def register(*layer_classes):
    """Decorator: make ``f(layer, g, x, name) -> output name`` the exporter of these classes."""
    def deco(f):
        for cls in layer_classes:
            EXPORTERS[cls] = f
        return f
    return deco


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package; install it with "
                          "pip install 'fastnn-cpu[onnx]'") from e
    return onnx


class GraphBuilder:
    """Nodes and initializers of the graph being built, in the model's dtype."""

    def __init__(self, onnx, dtype):
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.nodes = []
        self.initializers = []
        self.shape = None           # per-example shape of the tensor the current layer reads
        self._names = {"input", "output"}     # the graph's own input and output

    def fresh(self, base):
        """A tensor or node name not used yet in the graph: ``base``, else ``base_1``, ``base_2``..."""
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def constant(self, name, value, dtype=None):
        """Add an initializer holding ``value`` (in the model's dtype unless ``dtype``); returns
        its name."""
        arr = np.ascontiguousarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.fresh(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def node(self, op, inputs, name, **attrs):
        """Append one node of ONNX operator ``op``; returns the name of its (single) output."""
        out = self.fresh(name)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


# ---------------------------------------------------------------- exporters, one per layer kind
@register(L.Dense)
def _dense(layer, g, x, name):
    if g.shape is not None and len(g.shape) > 1:     # on every row of an example (every step)
        rows = g.node("Reshape", [x, g.constant(f"{name}.rows", [0, -1, layer.in_features], np.int64)],
                      f"{name}.split")
        y = g.node("MatMul", [rows, g.constant(f"{name}.weight", np.ascontiguousarray(layer.weight.T))],
                   f"{name}.matmul")
        if layer.bias is not None:
            y = g.node("Add", [y, g.constant(f"{name}.bias", layer.bias)], f"{name}.bias_add")
        return _rows(g, y, name)
    # Gemm with transB=1 is x @ weight.T + bias with PyTorch's (out, in) weight layout
    inputs = [x, g.constant(f"{name}.weight", layer.weight)]
    if layer.bias is not None:
        inputs.append(g.constant(f"{name}.bias", layer.bias))
    return g.node("Gemm", inputs, f"{name}.gemm", transB=1)


@register(L.Identity)
def _identity(layer, g, x, name):
    return x


def _unary(op):
    def f(layer, g, x, name):
        return g.node(op, [x], f"{name}.{op.lower()}")
    return f


register(L.Sigmoid)(_unary("Sigmoid"))
register(L.Tanh)(_unary("Tanh"))
register(L.ReLU)(_unary("Relu"))


@register(L.LeakyReLU)
def _leaky_relu(layer, g, x, name):
    # PRelu takes the slope as a tensor in the model's dtype; LeakyRelu's alpha attribute is
    # float32, which would round a float64 model's slope
    slope = g.constant(f"{name}.negative_slope", np.array(layer.negative_slope))
    return g.node("PRelu", [x, slope], f"{name}.leakyrelu")


@register(L.Softmax)
def _softmax(layer, g, x, name):
    return g.node("Softmax", [x], f"{name}.softmax", axis=-1)


@register(L.Dropout)
def _dropout(layer, g, x, name):
    # inference: inverted dropout is the identity, classic dropout scales by the keep rate
    if layer.mode == "inverted" or layer.p == 0.0:
        return x
    return g.node("Mul", [x, g.constant(f"{name}.keep", np.array(1.0 - layer.p))], f"{name}.scale")


@register(L.Flatten)
def _flatten(layer, g, x, name):
    # tensors in the graph are (N, features) rows already: the per-example shape is implicit
    return x


@register(L.BatchNorm1d, L.BatchNorm2d)
def _batchnorm(layer, g, x, name):
    n = layer.num_features
    spatial = len(g.shape) > 1      # (C, L) or (C, H, W) examples: statistics per channel
    if spatial:
        x = g.node("Reshape", [x, g.constant(f"{name}.shape", [0, n, -1], np.int64)], f"{name}.unflatten")
    scale = layer.weight if layer.affine else np.ones(n)
    shift = layer.bias if layer.affine else np.zeros(n)
    if layer.track_running_stats:
        y = g.node("BatchNormalization", [x, g.constant(f"{name}.weight", scale),
                                          g.constant(f"{name}.bias", shift),
                                          g.constant(f"{name}.running_mean", layer.running_mean),
                                          g.constant(f"{name}.running_var", layer.running_var)],
                   f"{name}.batchnorm", epsilon=layer.eps)
        return _rows(g, y, name) if spatial else y
    # without running statistics inference normalises by the batch itself
    axes = [0, 2] if spatial else [0]
    if spatial:                     # per-channel constants broadcast as (C, 1)
        scale, shift = np.reshape(scale, (-1, 1)), np.reshape(shift, (-1, 1))
    mean = g.node("ReduceMean", [x], f"{name}.mean", axes=axes, keepdims=1)
    xc = g.node("Sub", [x, mean], f"{name}.center")
    var = g.node("ReduceMean", [g.node("Mul", [xc, xc], f"{name}.square")], f"{name}.var", axes=axes, keepdims=1)
    std = g.node("Sqrt", [g.node("Add", [var, g.constant(f"{name}.eps", np.array(layer.eps))], f"{name}.vareps")],
                 f"{name}.std")
    y = g.node("Div", [xc, std], f"{name}.normalize")
    y = g.node("Mul", [y, g.constant(f"{name}.weight", scale)], f"{name}.scale")
    y = g.node("Add", [y, g.constant(f"{name}.bias", shift)], f"{name}.shift")
    return _rows(g, y, name) if spatial else y


@register(L.LayerNorm)
def _layernorm(layer, g, x, name):
    m = layer.size
    scale = layer.weight.reshape(-1) if layer.elementwise_affine else np.ones(m)
    inputs = [g.constant(f"{name}.weight", scale)]
    if layer.use_bias:
        inputs.append(g.constant(f"{name}.bias", layer.bias.reshape(-1)))
    # rows of m features: one example holds width / m of them (LayerNorm over trailing dims)
    rows = g.node("Reshape", [x, g.constant(f"{name}.rows", [0, -1, m], np.int64)], f"{name}.split")
    y = g.node("LayerNormalization", [rows] + inputs, f"{name}.layernorm", axis=-1, epsilon=layer.eps)
    return g.node("Reshape", [y, g.constant(f"{name}.flat", [0, -1], np.int64)], f"{name}.join")


def _export(layer, f, g, x, name):
    """Append ``layer``'s nodes and move ``g.shape`` to its output shape."""
    shape = g.shape
    y = f(layer, g, x, name)
    if not isinstance(layer, L.Residual):
        g.shape = layer.output_shape(shape)
    return y


@register(L.Residual)
def _residual(layer, g, x, name):
    y, shape = x, g.shape
    for j, child in enumerate(layer.layers):
        path = f"{name}.layers.{j}"
        y = _export(child, _exporter(child, path), g, y, path)
    out_shape = g.shape
    g.shape = shape
    skip = x if layer.projection is None else _dense(layer.projection, g, x, f"{name}.projection")
    g.shape = out_shape
    return g.node("Add", [y, skip], f"{name}.add")


def _spatial(g, x, name):
    """Rows (N, features) as (N, C, ...) for an operator over channels."""
    return g.node("Reshape", [x, g.constant(f"{name}.shape", [0] + list(g.shape), np.int64)], f"{name}.unflatten")


def _rows(g, y, name):
    return g.node("Reshape", [y, g.constant(f"{name}.flat", [0, -1], np.int64)], f"{name}.flatten")


@register(L.Conv1d, L.Conv2d)
def _conv(layer, g, x, name):
    pads = list(layer.pads())
    ends = pads
    if layer.padding == "same":     # the odd one out of an odd total goes after, as in PyTorch
        ends = [d * (k - 1) - p for k, d, p in zip(layer.kernel_size, layer.dilation, pads)]
    inputs = [_spatial(g, x, name), g.constant(f"{name}.weight", layer.weight)]
    if layer.use_bias:
        inputs.append(g.constant(f"{name}.bias", layer.bias))
    y = g.node("Conv", inputs, f"{name}.conv", kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
               pads=pads + ends, dilations=list(layer.dilation), group=layer.groups)
    return _rows(g, y, name)


@register(L.MaxPool1d, L.MaxPool2d, L.AvgPool1d, L.AvgPool2d)
def _pool(layer, g, x, name):
    kw = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=list(layer.padding) * 2)
    if isinstance(layer, (L.AvgPool1d, L.AvgPool2d)):
        y = g.node("AveragePool", [_spatial(g, x, name)], f"{name}.avgpool",
                   count_include_pad=int(layer.count_include_pad), **kw)
    else:
        y = g.node("MaxPool", [_spatial(g, x, name)], f"{name}.maxpool", **kw)
    return _rows(g, y, name)


@register(L.AdaptiveAvgPool1d, L.AdaptiveAvgPool2d)
def _adaptive_pool(layer, g, x, name):
    size, out = g.shape[1:], layer.output_size
    if all(o == 1 for o in out):
        y = g.node("GlobalAveragePool", [_spatial(g, x, name)], f"{name}.gap")
    elif all(s % o == 0 for s, o in zip(size, out)):    # equal windows: a plain average pool
        k = [s // o for s, o in zip(size, out)]
        y = g.node("AveragePool", [_spatial(g, x, name)], f"{name}.avgpool", kernel_shape=k, strides=k)
    else:
        raise NotImplementedError(f"layer {name} ({type(layer).__name__}): ONNX has no adaptive pooling; an "
                                  f"output size {out} that divides the input {size} (or 1) exports")
    return _rows(g, y, name)


# ONNX's gate order against torch's: LSTM i, o, f, c from i, f, g, o; GRU z, r, h from r, z, n
_GATES = {L.LSTM: ("LSTM", [0, 3, 1, 2]), L.GRU: ("GRU", [1, 0, 2]), L.RNN: ("RNN", [0])}


@register(L.RNN, L.LSTM, L.GRU)
def _recurrent(layer, g, x, name):
    op, order = _GATES[type(layer)]
    H, T = layer.hidden_size, g.shape[0]
    onnx = g.onnx

    def gates(a):                   # rows of a torch parameter in ONNX's gate order, with a direction axis
        return np.concatenate([a[k * H:(k + 1) * H] for k in order])[None]

    seq = g.node("Reshape", [x, g.constant(f"{name}.shape", [0, T, g.shape[1]], np.int64)], f"{name}.unflatten")
    seq = g.node("Transpose", [seq], f"{name}.time_major", perm=[1, 0, 2])       # (T, N, F)
    for lay in range(layer.num_layers):
        p = f"{name}.l{lay}"
        inputs = [seq, g.constant(f"{p}.W", gates(getattr(layer, f"weight_ih_l{lay}"))),
                  g.constant(f"{p}.R", gates(getattr(layer, f"weight_hh_l{lay}")))]
        if layer.use_bias:
            inputs.append(g.constant(f"{p}.B", np.concatenate([gates(getattr(layer, f"bias_ih_l{lay}")),
                                                                gates(getattr(layer, f"bias_hh_l{lay}"))], axis=1)))
        attrs = {"hidden_size": H}
        if op == "GRU":
            attrs["linear_before_reset"] = 1       # torch applies r after W_hn h + b_hn
        if op == "RNN":
            attrs["activations"] = ["Relu" if layer.nonlinearity == "relu" else "Tanh"]
        y, yh = g.fresh(f"{p}.Y"), g.fresh(f"{p}.Y_h")
        outs = [y, yh] + ([g.fresh(f"{p}.Y_c")] if op == "LSTM" else [])
        g.nodes.append(onnx.helper.make_node(op, inputs, outs, name=g.fresh(f"{p}.{op.lower()}"), **attrs))
        seq = g.node("Squeeze", [y, g.constant(f"{p}.dir", [1], np.int64)], f"{p}.squeeze")   # (T, N, H)
    if layer.return_sequences:
        y = g.node("Transpose", [seq], f"{name}.batch_major", perm=[1, 0, 2])
        return _rows(g, y, name)
    return g.node("Squeeze", [yh, g.constant(f"{name}.dir", [0], np.int64)], f"{name}.last")   # (N, H)


@register(L.Embedding)
def _embedding(layer, g, x, name):
    ids = g.node("Cast", [x], f"{name}.ids", to=onnx_int64(g))
    return _rows(g, g.node("Gather", [g.constant(f"{name}.weight", layer.weight), ids], f"{name}.gather"), name)


def onnx_int64(g):
    return g.onnx.TensorProto.INT64


@register(L.Dropout2d)
def _dropout2d(layer, g, x, name):
    return x


# ---------------------------------------------------------------- the model
def _exporter(layer, i):
    f = EXPORTERS.get(type(layer))
    if f is None:
        have = ", ".join(sorted(c.__name__ for c in EXPORTERS))
        raise NotImplementedError(
            f"layer {i} ({type(layer).__name__}) has no ONNX exporter; exportable layers are {have}. "
            "Add one with fastnn.onnx.register")
    return f


def _check_opset(onnx, opset):
    if opset is None:
        return DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"opset must be an int or None, got {opset!r}")
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be in [{MIN_OPSET}, {newest}] (this onnx package's newest), "
                         f"got {opset}; pass opset=None for {DEFAULT_OPSET}")
    return int(opset)


def to_model_proto(model, opset=None, *, standardize=None, metadata=None):
    """The ONNX ``ModelProto`` of ``model`` (see ``export``), checked by ``onnx.checker``."""
    onnx = _onnx()
    from . import __version__
    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastnn.Sequential, got {type(model).__name__}")
    opset = _check_opset(onnx, opset)
    exporters = [_exporter(layer, i) for i, layer in enumerate(model.layers)]   # fail before building
    g = GraphBuilder(onnx, model.dtype)
    x = "input"
    if standardize is not None:
        mean, std = (np.asarray(v, dtype=np.float64).reshape(-1) for v in standardize)
        if mean.shape != (model.n_features,) or std.shape != (model.n_features,) or not np.all(std > 0):
            raise ValueError(f"standardize must be (mean, std), each of {model.n_features} values, "
                             "std > 0")
        x = g.node("Sub", [x, g.constant("standardize.mean", mean)], "standardize.sub")
        x = g.node("Div", [x, g.constant("standardize.std", std)], "standardize.div")
    g.shape = model.input_shape
    for i, (layer, f) in enumerate(zip(model.layers, exporters)):
        x = _export(layer, f, g, x, str(i))
    if g.nodes and g.nodes[-1].output[0] == x:
        g.nodes[-1].output[0] = "output"
    else:
        g.nodes.append(onnx.helper.make_node("Identity", [x], ["output"], name="output"))
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(model.dtype))
    graph = onnx.helper.make_graph(
        g.nodes, "fastnn.Sequential",
        [onnx.helper.make_tensor_value_info("input", elem, ["N", model.n_features])],
        [onnx.helper.make_tensor_value_info("output", elem, ["N", model.n_outputs])],
        initializer=g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(
        graph, opset_imports=opsets, producer_name="fastnn", producer_version=__version__,
        # the oldest IR version that carries this opset, so older runtimes read the file
        ir_version=onnx.helper.find_min_ir_version_for(opsets),
        doc_string="model.forward of a fastnn.Sequential (raw outputs, inference mode)")
    if metadata:
        onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export(model, path, opset=None, *, standardize=None, metadata=None):
    """Write ``model`` to ``path`` as an ONNX file computing ``model.forward``.

    Args:
        model: a ``fastnn.Sequential`` (float32 or float64).
        path: the ``.onnx`` file to write (replaced atomically).
        opset: ONNX operator set version; None for ``DEFAULT_OPSET`` (17).
        standardize: optional ``(mean, std)`` of the features, applied to the input first
            (``fastnn export`` passes a ``fastnn train --save`` model's).
        metadata: optional ``{key: value}`` strings stored in the file's metadata_props.

    Returns:
        The ``onnx.ModelProto`` written, already checked by ``onnx.checker``.

    Raises:
        NotImplementedError: a layer has no exporter (the message names it).
    """
    from ._util import atomic_write, check_write_path

    path = check_write_path(path)
    proto = to_model_proto(model, opset, standardize=standardize, metadata=metadata)
    atomic_write(path, proto.SerializeToString())
    return proto
