"""Model files (safetensors) and PyTorch interop.

A model file is a safetensors file whose tensors are the model's ``state_dict()``
(``"0.weight"``, ``"2.layers.1.bias"``, ``"3.running_var"``, ``"3.num_batches_tracked"``
as an I64 scalar, ...), so ``safetensors.torch.load_file`` feeds it straight into
``to_torch(model)``. Its ``__metadata__`` holds JSON strings:

- ``"format"``: ``"fastnn"``; ``"format_version"``: ``"1"``;
- ``"model"``: dtype, seed, ``epochs_trained``, ``steps_trained``, ``input_shape`` (absent in
  files from before Flatten/LayerNorm/Residual: then the first layer implies it) and the layers,
  each its ``get_config()`` (type and constructor arguments; a Residual nests its layers' configs);
- ``"loss"``: type, reduction and class / positive weights, when the model has a loss;
- ``"optimizer"``: type, lr, step count, hyper-parameters and the names of its state
  buffers, stored as the tensors ``"optimizer.<name>"`` (``include_optimizer=True``);
- any extra entries given to ``save_model`` (the CLI keeps its preprocessing there).

Loading trusts nothing in the file: the header length is checked against the file
size before the header is read, every tensor's byte range before any data is read,
and names, shapes and dtypes against the declared architecture (checked spec by spec: at
most ``MAX_LAYERS`` layers, Residuals nested at most ``MAX_DEPTH`` deep) before any is read,
so a hostile file is refused with a ValueError and never makes fastnn allocate more than a
small multiple of its size. Nothing is unpickled or executed.
"""
import functools
import json
import math
import os

import numpy as np

from . import layers as L
from . import losses as LS
from . import optim as O
from ._util import atomic_write, check_write_path
from .callbacks import Callback

FORMAT = "fastnn"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000      # safetensors' own limit
MAX_LAYERS = 10_000                 # layers in all, nested ones included; bounds a header's work
MAX_DEPTH = 32                      # Residuals inside Residuals
MAX_DIMS = 8
MAX_COUNT = 2 ** 62                 # epoch / step counters: the core keeps them in 64-bit ints
_RESERVED = ("format", "format_version", "model", "loss", "optimizer")
_OPT_PREFIX = "optimizer."

_DTYPE_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
# every safetensors dtype, so a well-formed file of another dtype is refused as the wrong dtype
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_key(v, table):
    # a JSON list or object is unhashable: test the type before the membership
    return isinstance(v, str) and v in table


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_finite(v):
    try:
        return _is_num(v) and math.isfinite(v)
    except OverflowError:           # an int too big for a float
        return False


# what each argument of a layer spec may be: (test, what it takes); the constructors check ranges
_POS_INT = (lambda v: _is_int(v) and v >= 1, "positive ints")
_BOOL = (lambda v: isinstance(v, bool), "true or false")
_NUM = (_is_finite, "finite numbers")
_NUM_OR_NULL = (lambda v: v is None or _is_finite(v), "finite numbers or null")
_STR = (lambda v: isinstance(v, str), "strings")
_STR_OR_NULL = (lambda v: v is None or isinstance(v, str), "strings or null")
_SHAPE = (lambda v: isinstance(v, list) and 1 <= len(v) <= MAX_DIMS and all(_is_int(s) and s >= 1 for s in v),
          f"lists of 1 to {MAX_DIMS} positive ints")
_SUBLAYERS = "layer specs"          # Residual's layers: a non-empty list of specs
_PROJECTION = "Dense spec or null"  # Residual's projection
_LAYER_ARGS = {
    "Dense": {"in_features": _POS_INT, "out_features": _POS_INT, "bias": _BOOL, "init": _STR_OR_NULL},
    "LeakyReLU": {"negative_slope": _NUM},
    "Dropout": {"p": _NUM, "mode": _STR},
    "BatchNorm1d": {"num_features": _POS_INT, "eps": _NUM, "momentum": _NUM_OR_NULL, "affine": _BOOL,
                    "track_running_stats": _BOOL},
    "LayerNorm": {"normalized_shape": _SHAPE, "eps": _NUM, "elementwise_affine": _BOOL, "bias": _BOOL},
    "Residual": {"layers": _SUBLAYERS, "projection": _PROJECTION},
    "Dropout2d": {"p": _NUM},
}
_NONNEG = (lambda v: isinstance(v, list) and 1 <= len(v) <= 2 and all(_is_int(s) and s >= 0 for s in v),
           "lists of 1 or 2 non-negative ints")
_PADDING = (lambda v: v in ("same", "valid") or _NONNEG[0](v), "'same', 'valid' or lists of 1 or 2 non-negative ints")
_SIZES = (lambda v: isinstance(v, list) and 1 <= len(v) <= 2 and all(_is_int(s) and s >= 1 for s in v),
          "lists of 1 or 2 positive ints")
for _conv in ("Conv1d", "Conv2d"):
    _LAYER_ARGS[_conv] = {"in_channels": _POS_INT, "out_channels": _POS_INT, "kernel_size": _SIZES,
                          "stride": _SIZES, "padding": _PADDING, "dilation": _SIZES, "groups": _POS_INT,
                          "bias": _BOOL, "init": _STR_OR_NULL}
for _pool in ("MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d"):
    _LAYER_ARGS[_pool] = {"kernel_size": _SIZES, "stride": _SIZES, "padding": _NONNEG}
    if _pool.startswith("Avg"):
        _LAYER_ARGS[_pool]["count_include_pad"] = _BOOL
for _pool in ("AdaptiveAvgPool1d", "AdaptiveAvgPool2d"):
    _LAYER_ARGS[_pool] = {"output_size": _SIZES}
_LAYER_ARGS["BatchNorm2d"] = _LAYER_ARGS["BatchNorm1d"]
_RECURRENT_ARGS = {"input_size": _POS_INT, "hidden_size": _POS_INT, "num_layers": _POS_INT, "bias": _BOOL,
                   "dropout": _NUM, "return_sequences": _BOOL}
_LAYER_ARGS.update(RNN={**_RECURRENT_ARGS, "nonlinearity": _STR}, LSTM=_RECURRENT_ARGS, GRU=_RECURRENT_ARGS,
                   Embedding={"num_embeddings": _POS_INT, "embedding_dim": _POS_INT,
                              "padding_idx": (lambda v: v is None or _is_int(v), "ints or null")})
# every other layer type (Identity, Flatten, the activations) takes no arguments
_LAYER_ARGS = {name: _LAYER_ARGS.get(name, {}) for name in L.LAYER_TYPES}
_LOSSES = {c.__name__: c for c in (LS.MSE, LS.BinaryCrossEntropy, LS.CrossEntropy, LS.NLLLoss, LS.KLDiv)}
_LOSS_ARGS = {"MSE": ("reduction",), "KLDiv": ("reduction",),
              "BinaryCrossEntropy": ("reduction", "pos_weight"),
              "CrossEntropy": ("reduction", "weight"), "NLLLoss": ("reduction", "weight")}
_OPTIMIZERS = {c.__name__: c for c in (O.SGD, O.Adam, O.AdamW, O.Adagrad, O.RMSprop)}


# ================================================================ saving
def save_model(model, path, include_optimizer=False, metadata=None):
    """Write ``model`` to ``path`` as safetensors, atomically.

    The file holds the parameters, the architecture, dtype, seed, epoch and step counters,
    and the loss (when the model has one of fastnn's own).

    Args:
        model: a fastnn ``Sequential``.
        path: file to write (replaced whole; a crash mid-write leaves the old file).
        include_optimizer: also store ``model.optimizer`` (hyper-parameters, step count,
            state buffers), so ``fit`` resumes exactly after ``load``.
        metadata: extra ``{str: str}`` entries for the file's ``__metadata__``.
    """
    from safetensors.numpy import save

    from .model import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastnn Sequential, got {type(model).__name__}")
    path = check_write_path(path)
    if include_optimizer and (model.optimizer is None or model.loss is None):
        raise ValueError("include_optimizer=True needs a model that has been trained (model.optimizer "
                         "and model.loss are None); train it first or pass include_optimizer=False")
    if not (np.all(np.isfinite(model.flat_params)) and np.all(np.isfinite(model.flat_running))):
        raise ValueError("the model's parameters or running statistics contain NaN or Inf; such a file "
                         "could not be loaded")
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
            "model": json.dumps(_model_config(model))}
    if model.loss is not None:
        cfg = _loss_config(model.loss, required=include_optimizer)
        if cfg is not None:
            meta["loss"] = json.dumps(cfg)
    tensors = model.state_dict()        # C-contiguous copies (num_batches_tracked stays 0-d)
    if include_optimizer:
        cfg, buffers = _optimizer_config(model.optimizer, model)
        meta["optimizer"] = json.dumps(cfg)
        tensors.update({_OPT_PREFIX + k: v for k, v in buffers.items()})
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        if k in _RESERVED:
            raise ValueError(f"metadata key {k!r} is reserved by fastnn; use another name")
        meta[k] = v
    atomic_write(path, save(tensors, metadata=meta))


def _model_config(model):
    for name, layer in _named_layers(enumerate(model.layers)):
        if L.LAYER_TYPES.get(type(layer).__name__) is not type(layer):
            raise ValueError(f"layer {name} ({layer!r}) cannot be saved: only fastnn's own layer types "
                             f"({', '.join(L.LAYER_TYPES)}) can")
    return {"dtype": model.dtype.name, "seed": int(model.seed), "epochs_trained": int(model.epochs_trained),
            "steps_trained": int(model.steps_trained), "input_shape": list(model.input_shape),
            "layers": [layer.get_config() for layer in model.layers]}


def _named_layers(named):
    """``(name, layer)`` for ``named`` (``(name, layer)`` pairs, e.g. ``enumerate(layers)``) and every
    layer inside them, depth first, named as their tensors' state-dict prefixes (``"2"``,
    ``"2.layers.0"``, ``"2.projection"``)."""
    for name, layer in named:
        yield str(name), layer
        yield from _named_layers((f"{name}.{c}", child) for c, child in layer.children())


def _loss_config(loss, required=True):
    """The loss as JSON-ready data; None (or ValueError when ``required``) for unknown types."""
    t = type(loss)
    if _LOSSES.get(t.__name__) is not t:
        if required:
            raise ValueError(f"loss {loss!r} cannot be saved: only {', '.join(_LOSSES)} can")
        return None
    cfg = {"type": t.__name__, "reduction": loss.reduction}
    for arg in _LOSS_ARGS[t.__name__][1:]:
        v = getattr(loss, arg)
        cfg[arg] = None if v is None else [float(x) for x in np.ravel(v)]
    return cfg


def _optimizer_config(opt, model):
    t = type(opt)
    if _OPTIMIZERS.get(t.__name__) is not t:
        raise ValueError(f"optimizer {opt!r} cannot be saved: only {', '.join(_OPTIMIZERS)} can")
    sd = opt.state_dict()
    buffers = {k: v for k, v in sd.items() if k not in ("type", "lr", "step", "hyper")}
    for k, v in buffers.items():
        if v.shape != (model.n_params,):
            raise ValueError(f"model.optimizer holds state for another model ({k} has shape {v.shape}, "
                             f"the model has {model.n_params} parameters)")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"the optimizer's {k} contains NaN or Inf; such a file could not be loaded")
    hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in sd["hyper"].items()}
    cfg = {"type": t.__name__, "lr": float(sd["lr"]), "step": int(sd["step"]), "hyper": hyper,
           "state": list(buffers)}
    return cfg, {k: np.ascontiguousarray(v, dtype=model.dtype) for k, v in buffers.items()}


# ================================================================ loading
def load_model(path):
    """Read a model written by ``save_model``; refuses anything else with a ValueError.

    The model comes back with its dtype, seed, epoch and step counters, ``loss`` (when
    saved) and, for files saved with ``include_optimizer=True``, ``optimizer``: ``fit``
    then continues exactly where the saved run stopped.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    with _open(path) as f:
        size, header, prefix = _read_header(f, path)
        _, build = _parse(header, path)
        f.seek(0)
        blob = f.read(size)
    # the checks above were made on the first read; refuse a file rewritten since
    if len(blob) != size or blob[:len(prefix)] != prefix:
        raise ValueError(f"{path}: the file changed while it was being read")
    try:
        arrays = load(blob)
    except SafetensorError as e:     # our checks passed, so this should not happen
        raise ValueError(f"{path}: not a valid safetensors file: {e}") from None
    del blob
    return build(arrays)


def read_metadata(path):
    """The ``__metadata__`` of a fastnn model file, as ``{str: str}``, after checking the header
    as ``load_model`` does (tensor values are not read)."""
    with _open(path) as f:
        _, header, _ = _read_header(f, path)
        meta, _ = _parse(header, path)
    return dict(meta)


def _open(path):
    """``path`` opened for reading; a directory or a non-path is a clear error."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if os.path.isdir(path):
        raise ValueError(f"{os.fsdecode(path)} is a directory, not a model file; pass the .safetensors file")
    return open(path, "rb")


def _read_header(f, path):
    """(file size, parsed header, the header's raw bytes with their length prefix) after checking
    the header's bounds and every tensor's byte range."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise ValueError(f"{path}: {size} bytes is too short for a safetensors file (an 8-byte header "
                         "length, then the header); the file is empty or truncated")
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8:
        raise ValueError(f"{path}: the header length ({n} bytes) runs past the end of the file "
                         f"({size} bytes); the file is truncated or not safetensors")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"{path}: the header length ({n} bytes) is over the {MAX_HEADER_BYTES}-byte limit")
    raw = f.read(n)
    if len(raw) != n:
        raise ValueError(f"{path}: the file ended inside the header; it is truncated")
    if not raw.startswith(b"{"):
        raise ValueError(f"{path}: the header is not a JSON object; not a safetensors file")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: the header is not valid JSON: {_short(e)}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object; not a safetensors file")
    data_start = 8 + n
    data_size = size - data_start
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = _tensor_info(name, info, path)
        if not begin <= end <= data_size:
            raise ValueError(f"{path}: tensor {_short(name)!r} declares bytes [{begin}, {end}) but the data "
                             f"section holds {data_size} bytes; the file is truncated or corrupt")
        if end - begin != math.prod(shape) * _ITEMSIZE[dtype]:
            raise ValueError(f"{path}: tensor {_short(name)!r} declares shape {shape} of {dtype} "
                             f"({math.prod(shape) * _ITEMSIZE[dtype]} bytes) but a {end - begin}-byte range")
        spans.append((begin, end, name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            raise ValueError(f"{path}: tensor {_short(name)!r} starts at byte {begin} of the data, expected {pos} "
                             "(tensors must tile the data section without gaps or overlaps)")
        pos = end
    if pos != data_size:
        raise ValueError(f"{path}: the data section has {data_size} bytes but the tensors cover {pos}")
    return size, header, n.to_bytes(8, "little") + raw


def _unique_keys(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {_short(k)!r}")
        d[k] = v
    return d


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _short(x, n=80):
    s = str(x)
    return s if len(s) <= n else s[:n] + "..."


def _tensor_info(name, info, path):
    where = f"{path}: tensor {_short(name)!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"{where}: an entry must be an object with dtype, shape and data_offsets")
    dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
    if not _is_key(dtype, _ITEMSIZE):
        raise ValueError(f"{where}: unknown dtype {_short(dtype)!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(_is_int(s) and s >= 0 for s in shape):
        raise ValueError(f"{where}: shape must be a list of at most {MAX_DIMS} non-negative ints, "
                         f"got {_short(shape)}")
    if not isinstance(offs, list) or len(offs) != 2 or not all(_is_int(o) and o >= 0 for o in offs):
        raise ValueError(f"{where}: data_offsets must be two non-negative ints, got {_short(offs)}")
    return dtype, shape, offs


def _json_entry(meta, key, path):
    try:
        return json.loads(meta[key], object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: metadata {key!r} is not valid JSON: {_short(e)}") from None


def _obj(v, keys, what, path):
    """Check ``v`` is a JSON object with exactly ``keys``."""
    if not isinstance(v, dict):
        raise ValueError(f"{path}: {what} must be a JSON object, got {_short(v)}")
    missing = [k for k in keys if k not in v]
    extra = [k for k in v if k not in keys]
    if missing or extra:
        raise ValueError(f"{path}: {what}: missing {missing}, unexpected {[_short(k) for k in extra[:5]]}")
    return v


def _parse(header, path):
    """Check the metadata and the tensors' names, shapes and dtypes against it; return the metadata
    and a function building the model from the tensors."""
    meta = header.get("__metadata__")
    if meta is None:
        raise ValueError(f"{path}: no __metadata__, so not a fastnn model file; plain weights load with "
                         "model.load_state_dict(safetensors.numpy.load_file(path))")
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{path}: __metadata__ must map strings to strings")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastnn model file (format {_short(meta.get('format'))!r})")
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ValueError(f"{path}: format version {_short(version)!r}; this fastnn reads version "
                         f"{FORMAT_VERSION} (a newer fastnn may read it)")
    if "model" not in meta:
        raise ValueError(f"{path}: metadata has no 'model' entry (the architecture)")
    cfg = _json_entry(meta, "model", path)
    keys = ("dtype", "seed", "epochs_trained", "steps_trained", "layers")
    # files written before Flatten/LayerNorm/Residual have no input_shape: the first layer implies it
    _obj(cfg, keys + ("input_shape",) * (isinstance(cfg, dict) and "input_shape" in cfg), "model", path)
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"{path}: model dtype must be 'float32' or 'float64', got {_short(cfg['dtype'])!r}")
    dtype = np.dtype(cfg["dtype"])
    for k, top in (("seed", 2 ** 64), ("epochs_trained", MAX_COUNT), ("steps_trained", MAX_COUNT)):
        if not _is_int(cfg[k]) or not 0 <= cfg[k] < top:
            raise ValueError(f"{path}: model {k} must be an int in [0, {top}), got {_short(cfg[k])}")
    if "input_shape" in cfg and not _SHAPE[0](cfg["input_shape"]):
        raise ValueError(f"{path}: model input_shape takes {_SHAPE[1]}, got {_short(cfg['input_shape'])}")
    specs = cfg["layers"]
    if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_LAYERS:
        raise ValueError(f"{path}: model layers must be a list of 1 to {MAX_LAYERS} layers")
    layers = _layers_from_specs(specs, path)

    code = _DTYPE_CODES[dtype]
    expected, n_params = _expected_tensors(layers, code)
    if "optimizer" in meta:
        opt_cfg, opt = _check_optimizer_config(_json_entry(meta, "optimizer", path), path)
        for name in opt_cfg["state"]:
            expected[_OPT_PREFIX + name] = (code, [n_params])
    _match_tensors(header, expected, path)

    # every tensor now fits in the file, so planning (work ~ the sizes) is cheap; it checks the chain
    from ._plan import Plan
    from .model import Sequential, infer_input_shape

    input_shape = tuple(cfg["input_shape"]) if "input_shape" in cfg else infer_input_shape(layers)
    if input_shape is None:
        raise ValueError(f"{path}: the model has no input_shape and its first layers do not imply one")
    try:
        n_out = Plan(layers, input_shape).n_outputs
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{path}: the architecture is invalid: {e}") from None
    loss = _build_loss(_json_entry(meta, "loss", path), n_out, path) if "loss" in meta else None

    def build(arrays):
        try:
            model = Sequential(*layers, dtype=dtype, seed=cfg["seed"], input_shape=input_shape)
            model.load_state_dict({k: v for k, v in arrays.items() if not k.startswith(_OPT_PREFIX)})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        model.epochs_trained = cfg["epochs_trained"]
        model.steps_trained = cfg["steps_trained"]
        model.loss = loss
        if "optimizer" in meta:
            model.optimizer = _restore_optimizer(opt, opt_cfg, arrays, model, path)
        return model

    return meta, build


def _layers_from_specs(specs, path):
    """The layers built from their specs after checking each: exact keys, argument types (the
    constructors check ranges), at most ``MAX_LAYERS`` in all, Residuals at most ``MAX_DEPTH`` deep."""
    count = 0

    def build(spec, name, depth):
        nonlocal count
        count += 1
        if count > MAX_LAYERS:
            raise ValueError(f"{path}: the model has over {MAX_LAYERS} layers (nested ones included)")
        if not isinstance(spec, dict) or not _is_key(spec.get("type"), _LAYER_ARGS):
            raise ValueError(f"{path}: layer {name} must be an object whose type is one of "
                             f"{', '.join(_LAYER_ARGS)}, got {_short(spec)}")
        t = spec["type"]
        where = f"layer {name} ({t})"
        _obj(spec, ("type", *_LAYER_ARGS[t]), where, path)
        kw = {}
        for key, kind in _LAYER_ARGS[t].items():
            v = spec[key]
            if kind is _SUBLAYERS:
                if depth >= MAX_DEPTH:
                    raise ValueError(f"{path}: {where}: Residuals nest more than {MAX_DEPTH} deep")
                if not isinstance(v, list) or not v:
                    raise ValueError(f"{path}: {where}: {key} must be a non-empty list of layer specs, "
                                     f"got {_short(v)}")
                kw[key] = [build(s, f"{name}.{key}.{j}", depth + 1) for j, s in enumerate(v)]
            elif kind is _PROJECTION:
                if v is not None and not (isinstance(v, dict) and v.get("type") == "Dense"):
                    raise ValueError(f"{path}: {where}: {key} must be a Dense spec or null, got {_short(v)}")
                kw[key] = None if v is None else build(v, f"{name}.{key}", depth + 1)
            elif not kind[0](v):
                raise ValueError(f"{path}: {where}: {key} takes {kind[1]}, got {_short(v)}")
            else:
                kw[key] = v
        cls = L.LAYER_TYPES[t]
        try:
            return cls(*kw.pop("layers"), **kw) if cls is L.Residual else cls(**kw)
        except (ValueError, TypeError, OverflowError) as e:
            raise ValueError(f"{path}: the architecture is invalid: {e} (layer {name})") from None

    return [build(spec, str(i), 0) for i, spec in enumerate(specs)]


def _expected_tensors(layers, code):
    """``{name: (dtype code, shape)}`` of the tensors ``layers`` imply, named as
    ``Sequential.state_dict`` names them, and the number of parameters. Taken from the layers'
    own shapes, not a Plan: planning costs time in proportion to the declared sizes."""
    expected, n_params = {}, 0
    for name, layer in _named_layers(enumerate(layers)):
        for attr, shape in layer.param_shapes(None):
            expected[f"{name}.{attr}"] = (code, list(shape))
            n_params += math.prod(shape)
        for attr, shape in layer.buffer_shapes(None):
            expected[f"{name}.{attr}"] = (code, list(shape))
        if isinstance(layer, L.BatchNorm1d) and layer.track_running_stats:
            expected[f"{name}.num_batches_tracked"] = ("I64", [])
    return expected, n_params


def _build_loss(cfg, n_out, path):
    if not isinstance(cfg, dict) or not _is_key(cfg.get("type"), _LOSSES):
        raise ValueError(f"{path}: loss type must be one of {', '.join(_LOSSES)}, got {_short(cfg)}")
    t = cfg["type"]
    _obj(cfg, ("type",) + _LOSS_ARGS[t], f"loss ({t})", path)
    kw = {k: cfg[k] for k in _LOSS_ARGS[t]}
    if not isinstance(kw["reduction"], str):
        raise ValueError(f"{path}: loss reduction must be a string, got {_short(kw['reduction'])}")
    for k in _LOSS_ARGS[t][1:]:
        v = kw[k]
        if v is None:
            continue
        ok_sizes = (1, n_out) if k == "pos_weight" else (n_out,)
        if not isinstance(v, list) or len(v) not in ok_sizes or not all(_is_num(x) for x in v):
            raise ValueError(f"{path}: loss {k} must be null or a list of {' or '.join(map(str, ok_sizes))} "
                             f"numbers, got {_short(v)}")
    try:
        return _LOSSES[t](**kw)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{path}: the loss is invalid: {e}") from None


def _check_optimizer_config(cfg, path):
    if not isinstance(cfg, dict) or not _is_key(cfg.get("type"), _OPTIMIZERS):
        raise ValueError(f"{path}: optimizer type must be one of {', '.join(_OPTIMIZERS)}, got {_short(cfg)}")
    _obj(cfg, ("type", "lr", "step", "hyper", "state"), "optimizer", path)
    if not _is_num(cfg["lr"]) or not _is_int(cfg["step"]) or not 0 <= cfg["step"] < MAX_COUNT:
        raise ValueError(f"{path}: optimizer lr must be a number and step an int in [0, {MAX_COUNT})")
    defaults = _OPTIMIZERS[cfg["type"]](lr=1.0).hyper_dict()
    hyper = _obj(cfg["hyper"], tuple(defaults), "optimizer hyper", path)
    for k, d in defaults.items():
        v = hyper[k]
        if isinstance(d, bool):
            ok = isinstance(v, bool)
        elif isinstance(d, tuple):
            ok = isinstance(v, list) and len(v) == len(d) and all(_is_num(x) for x in v)
        else:
            ok = _is_num(v)
        if not ok:
            raise ValueError(f"{path}: optimizer hyper-parameter {k} has the wrong type: {_short(v)}")
    try:
        opt = _OPTIMIZERS[cfg["type"]](lr=cfg["lr"], **{k: tuple(v) if isinstance(v, list) else v
                                                        for k, v in hyper.items()})
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{path}: the optimizer is invalid: {e}") from None
    names = list(opt.state_names[:opt.n_state])
    if cfg["state"] not in (names, []):
        raise ValueError(f"{path}: {cfg['type']} state buffers must be {names} (or none), "
                         f"got {_short(cfg['state'])}")
    return cfg, opt


def _restore_optimizer(opt, cfg, arrays, model, path):
    buffers = {}
    for name in cfg["state"]:
        v = arrays[_OPT_PREFIX + name]
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{path}: optimizer state {name} contains NaN or Inf")
        buffers[name] = v
    opt.load_state_dict({"type": cfg["type"], "lr": cfg["lr"], "step": cfg["step"],
                         "hyper": opt.hyper_dict(), **buffers})
    opt.bind(model)
    return opt


def _match_tensors(header, expected, path):
    names = set(header) - {"__metadata__"}
    missing = sorted(set(expected) - names)
    extra = sorted(names - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: the tensors do not match the architecture: missing "
                         f"{[_short(k) for k in missing[:5]]}{' ...' if len(missing) > 5 else ''}, "
                         f"unexpected {[_short(k) for k in extra[:5]]}{' ...' if len(extra) > 5 else ''}")
    for name, (code, shape) in expected.items():
        info = header[name]
        if info["dtype"] != code:
            need = "a batch count" if code == "I64" else "the model's dtype"
            raise ValueError(f"{path}: tensor {name!r} is {info['dtype']}, {need} needs {code}")
        if info["shape"] != shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {_short(info['shape'])}, the architecture "
                             f"needs {shape}")


# ================================================================ checkpoints
class Checkpoint(Callback):
    """Save the model with its optimizer to ``path`` whenever the number of epochs trained
    is a multiple of ``every``; ``fn.load(path).fit(X, y, ...)`` then resumes exactly.

    Each save is atomic: a crash mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, path, every=1):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Checkpoint: path must be a str or os.PathLike, got {type(path).__name__}")
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)):
            raise TypeError(f"Checkpoint: every must be an int (epochs between saves), got {every!r}")
        if every < 1:
            raise ValueError(f"Checkpoint: every must be >= 1, got {every}")
        self.path = path
        self.every = int(every)

    def on_train_begin(self, logs=None):
        # fail before the first epoch, not after it
        check_write_path(self.path)
        _loss_config(self.model.loss)
        _optimizer_config(self.model.optimizer, self.model)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            save_model(self.model, self.path, include_optimizer=True)


# ================================================================ PyTorch
def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("this needs PyTorch: pip install torch") from None
    return torch


@functools.cache
def torch_residual_class():
    """``TorchResidual``, the torch module matching ``fn.Residual`` (defined on first use, so
    importing fastnn never imports torch); also reachable as ``fastnn.io.TorchResidual``."""
    nn = _torch().nn

    class TorchResidual(nn.Module):
        """``forward(x) = layers(x) + (projection(x) if projection is not None else x)``.

        Args:
            layers: an ``nn.Sequential`` or an iterable of modules (made into one).
            projection: an ``nn.Linear`` or None.
        """

        def __init__(self, layers, projection=None):
            super().__init__()
            self.layers = layers if isinstance(layers, nn.Sequential) else nn.Sequential(*layers)
            self.projection = projection

        def forward(self, x):
            return self.layers(x) + (x if self.projection is None else self.projection(x))

    TorchResidual.__module__, TorchResidual.__qualname__ = __name__, "TorchResidual"   # pickles by name
    return TorchResidual


@functools.cache
def torch_recurrent_classes():
    """``{"RNN": TorchRNN, "LSTM": TorchLSTM, "GRU": TorchGRU}``: torch's ``nn.RNN/LSTM/GRU`` with
    ``batch_first=True`` whose forward returns one tensor as ``fn.RNN/LSTM/GRU`` do: the last
    step's hidden state ``(N, H)`` of the top layer, or every step's ``(N, T, H)`` with
    ``return_sequences=True``. Subclasses of torch's modules (``TorchRecurrent`` is their common
    base), so parameters and state-dict keys are torch's; also ``fastnn.io.TorchLSTM`` etc.
    ``"Embedding"``: ``TorchEmbedding``, an ``nn.Embedding`` that takes float token ids."""
    nn = _torch().nn

    class TorchRecurrent(nn.Module):
        """Mixin: the recurrent module's output sequence, or its last step."""

        def __init__(self, *args, return_sequences=False, **kw):
            super().__init__(*args, batch_first=True, **kw)
            self.return_sequences = bool(return_sequences)

        def forward(self, x):
            out = super().forward(x)[0]
            return out if self.return_sequences else out[:, -1]

        def extra_repr(self):
            return super().extra_repr() + (", return_sequences=True" if self.return_sequences else "")

    class TorchEmbedding(nn.Embedding):
        """``nn.Embedding`` taking token ids of any dtype (fastnn passes them as floats)."""

        def forward(self, x):
            return super().forward(x.long())

    out = {"TorchRecurrent": TorchRecurrent, "Embedding": TorchEmbedding}
    for base in (nn.RNN, nn.LSTM, nn.GRU):
        cls = type("Torch" + base.__name__, (TorchRecurrent, base), {"__doc__": f"``nn.{base.__name__}`` "
                   "(batch first) returning the last step's hidden state, or every step's."})
        out[base.__name__] = cls
    for cls in out.values():
        cls.__module__, cls.__qualname__ = __name__, cls.__name__        # pickles by name
    return out


def __getattr__(name):
    if name == "TorchResidual":
        return torch_residual_class()
    if name in ("TorchRecurrent", "TorchRNN", "TorchLSTM", "TorchGRU", "TorchEmbedding"):
        return torch_recurrent_classes()[name.removeprefix("Torch") if name != "TorchRecurrent" else name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_torch(model):
    """The equivalent ``torch.nn.Sequential`` with copies of the weights and running statistics,
    in the model's dtype.

    Module names equal layer names (a Residual becomes a ``TorchResidual``, an RNN/LSTM/GRU a
    ``TorchRNN``/``TorchLSTM``/``TorchGRU``: see ``torch_recurrent_classes``), so the state dicts
    have the same keys. The module is in training mode, as torch builds it; call ``.eval()`` for
    inference. Classic-mode dropout has no torch equivalent and raises ValueError.
    """
    torch = _torch()
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[model.dtype.type]
    tm = torch.nn.Sequential(*(_torch_module(layer, str(i)) for i, layer in enumerate(model.layers)))
    tm.to(tdtype)                   # floating tensors only: num_batches_tracked stays int64
    tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}, strict=True)
    return tm


def _torch_module(layer, name):
    nn = _torch().nn
    t = type(layer)
    if t is L.Dense:
        return nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias)
    if t in (L.BatchNorm1d, L.BatchNorm2d):
        return getattr(nn, t.__name__)(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                                       affine=layer.affine, track_running_stats=layer.track_running_stats)
    if t in (L.Conv1d, L.Conv2d):
        return getattr(nn, t.__name__)(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                                       padding=layer.padding, dilation=layer.dilation, groups=layer.groups,
                                       bias=layer.use_bias)
    if t in (L.MaxPool1d, L.MaxPool2d):
        return getattr(nn, t.__name__)(layer.kernel_size, stride=layer.stride, padding=layer.padding)
    if t in (L.AvgPool1d, L.AvgPool2d):
        return getattr(nn, t.__name__)(layer.kernel_size, stride=layer.stride, padding=layer.padding,
                                       count_include_pad=layer.count_include_pad)
    if t in (L.AdaptiveAvgPool1d, L.AdaptiveAvgPool2d):
        return getattr(nn, t.__name__)(layer.output_size)
    if t is L.Dropout2d:
        return nn.Dropout2d(layer.p)
    if t is L.LayerNorm:
        kw = {} if layer.use_bias or not layer.elementwise_affine else {"bias": False}
        try:
            return nn.LayerNorm(layer.normalized_shape, eps=layer.eps,
                                elementwise_affine=layer.elementwise_affine, **kw)
        except TypeError:
            raise ValueError(f"layer {name}: LayerNorm(bias=False) needs torch >= 2.1") from None
    if t is L.Residual:
        return torch_residual_class()(
            [_torch_module(child, f"{name}.layers.{j}") for j, child in enumerate(layer.layers)],
            None if layer.projection is None else _torch_module(layer.projection, f"{name}.projection"))
    if t in (L.RNN, L.LSTM, L.GRU):
        kw = {"nonlinearity": layer.nonlinearity} if t is L.RNN else {}
        return torch_recurrent_classes()[t.__name__](layer.input_size, layer.hidden_size, layer.num_layers,
                                                     bias=layer.use_bias, dropout=layer.dropout,
                                                     return_sequences=layer.return_sequences, **kw)
    if t is L.Embedding:
        return torch_recurrent_classes()["Embedding"](layer.num_embeddings, layer.embedding_dim,
                                                      padding_idx=layer.padding_idx)
    if t is L.LeakyReLU:
        return nn.LeakyReLU(layer.negative_slope)
    if t is L.Softmax:
        return nn.Softmax(dim=1)
    if t is L.Dropout:
        if layer.mode == "classic" and layer.p > 0:
            raise ValueError(f"layer {name}: Dropout(mode='classic') has no PyTorch equivalent (torch's "
                             "dropout is inverted: it scales kept units by 1/(1-p) in training); "
                             "train with mode='inverted' to move the model to torch")
        return nn.Dropout(layer.p)
    if t in (L.Identity, L.Flatten, L.Sigmoid, L.Tanh, L.ReLU):
        return getattr(nn, t.__name__)()
    raise ValueError(f"layer {name} ({layer!r}) has no PyTorch equivalent")


_FROM_TORCH = ("Linear, Conv1d, Conv2d, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, BatchNorm1d, "
               "BatchNorm2d, LayerNorm, Flatten(start_dim=1), Identity, Sigmoid, Tanh, ReLU, LeakyReLU, "
               "Softmax(dim=1), Dropout, Dropout2d, fastnn.io.TorchResidual and fastnn.io.TorchRNN, TorchLSTM, "
               "TorchGRU (unidirectional, no projections), Embedding (no max_norm) and TorchEmbedding")


def from_torch(module, dtype=None, input_shape=None):
    """A fastnn ``Sequential`` equivalent to ``module``, a ``torch.nn.Sequential`` of Linear,
    BatchNorm1d, LayerNorm, Flatten(start_dim=1), Identity, Sigmoid, Tanh, ReLU, LeakyReLU,
    Softmax(dim=1), Dropout and ``TorchResidual`` (nested freely), with copies of its weights and
    running statistics.

    ``dtype``: ``"float32"`` or ``"float64"``; by default float64 if the first parameter is,
    else float32. ``input_shape``: the per-example input shape (by default the first layers
    imply it).
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Sequential, got {type(module).__name__}")
    layers = [_fastnn_layer(m, str(i)) for i, m in enumerate(module)]
    if dtype is None:
        first = next(module.parameters(), None)
        dtype = "float64" if first is not None and first.dtype == torch.float64 else "float32"
    from .model import Sequential

    model = Sequential(*layers, dtype=dtype, input_shape=input_shape)
    if model.input_shape is None:
        raise ValueError("the first modules do not imply the per-example input shape; pass input_shape=, "
                         "e.g. from_torch(module, input_shape=(1, 28, 28))")
    model.load_state_dict({k: v.detach().to("cpu", torch.float64 if v.is_floating_point() else v.dtype).numpy()
                           for k, v in module.state_dict().items()})
    return model


def _fastnn_layer(m, name):
    nn = _torch().nn
    t = type(m)                     # exact types: a subclass may override forward
    try:
        if t is nn.Linear:
            return L.Dense(m.in_features, m.out_features, bias=m.bias is not None)
        if t in (nn.BatchNorm1d, nn.BatchNorm2d):
            return getattr(L, t.__name__)(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                                          track_running_stats=m.track_running_stats)
        if t in (nn.Conv1d, nn.Conv2d) and m.padding_mode == "zeros":
            return getattr(L, t.__name__)(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                                          padding=m.padding, dilation=m.dilation, groups=m.groups,
                                          bias=m.bias is not None)
        if t in (nn.MaxPool1d, nn.MaxPool2d) and not m.ceil_mode and m.dilation in (1, (1, 1)) \
                and not m.return_indices:
            return getattr(L, t.__name__)(m.kernel_size, stride=m.stride, padding=m.padding)
        if t in (nn.AvgPool1d, nn.AvgPool2d) and not m.ceil_mode and getattr(m, "divisor_override", None) is None:
            return getattr(L, t.__name__)(m.kernel_size, stride=m.stride, padding=m.padding,
                                          count_include_pad=m.count_include_pad)
        if t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d):
            return getattr(L, t.__name__)(m.output_size)
        if t is nn.Dropout2d:
            return L.Dropout2d(m.p)
        if t is nn.LayerNorm:
            return L.LayerNorm(tuple(m.normalized_shape), eps=m.eps, elementwise_affine=m.elementwise_affine,
                               bias=m.bias is not None)
        if t is torch_residual_class() and (m.projection is None or type(m.projection) is nn.Linear):
            return L.Residual(*(_fastnn_layer(c, f"{name}.layers.{j}") for j, c in enumerate(m.layers)),
                              projection=None if m.projection is None
                              else _fastnn_layer(m.projection, f"{name}.projection"))
        rec = torch_recurrent_classes()
        if t in (rec["RNN"], rec["LSTM"], rec["GRU"]) and m.proj_size == 0 and not m.bidirectional:
            kw = {"nonlinearity": m.nonlinearity} if t is rec["RNN"] else {}
            return getattr(L, t.__name__.removeprefix("Torch"))(
                m.input_size, m.hidden_size, m.num_layers, bias=m.bias, dropout=m.dropout,
                return_sequences=m.return_sequences, **kw)
        if t in (nn.Embedding, rec["Embedding"]) and m.max_norm is None:
            return L.Embedding(m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx)
        if t is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            return L.Flatten()
        if t in (nn.Identity, nn.Sigmoid, nn.Tanh, nn.ReLU):
            return getattr(L, t.__name__)()
        if t is nn.LeakyReLU:
            return L.LeakyReLU(m.negative_slope)
        if t is nn.Softmax and m.dim in (1, -1):
            return L.Softmax()
        if t is nn.Dropout:
            return L.Dropout(m.p)
    except (ValueError, TypeError) as e:
        raise ValueError(f"module {name} ({m!r}): {e}") from None
    raise ValueError(f"module {name} ({m!r}) is not supported; from_torch converts {_FROM_TORCH}")
