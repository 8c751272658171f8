"""Model files (safetensors) and PyTorch interop.

A model file is a safetensors file whose tensors are the model's
``named_parameters()`` (``"0.weight"``, ``"0.bias"``, ...), so
``safetensors.torch.load_file`` feeds it straight into the equivalent
``torch.nn.Sequential``. Its ``__metadata__`` holds JSON strings:

- ``"format"``: ``"fastnn"``; ``"format_version"``: ``"1"``;
- ``"model"``: dtype, seed, ``epochs_trained``, ``steps_trained`` and the layers
  (type and constructor arguments);
- ``"loss"``: type, reduction and class / positive weights, when the model has a loss;
- ``"optimizer"``: type, lr, step count, hyper-parameters and the names of its state
  buffers, stored as the tensors ``"optimizer.<name>"`` (``include_optimizer=True``);
- any extra entries given to ``save_model`` (the CLI keeps its preprocessing there).

Loading trusts nothing in the file: the header length is checked against the file
size before the header is read, every tensor's byte range before any data is read,
and names, shapes and dtypes against the declared architecture before the model is
built, so a hostile file is refused with a ValueError and never makes fastnn
allocate more than a small multiple of its size. Nothing is unpickled or executed.
"""
import json
import math
import os
import uuid

import numpy as np

from . import layers as L
from . import losses as LS
from . import optim as O
from .callbacks import Callback

FORMAT = "fastnn"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 100_000_000      # safetensors' own limit
MAX_LAYERS = 10_000                 # far beyond any MLP; bounds the work a header can ask for
MAX_DIMS = 8
MAX_COUNT = 2 ** 62                 # epoch / step counters: the core keeps them in 64-bit ints
_RESERVED = ("format", "format_version", "model", "loss", "optimizer")
_OPT_PREFIX = "optimizer."

_DTYPE_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}
# every safetensors dtype, so a well-formed file of another dtype is refused as the wrong dtype
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}

_SIMPLE_LAYERS = {c.__name__: c for c in (L.Identity, L.Sigmoid, L.Tanh, L.ReLU, L.Softmax)}
_LAYER_ARGS = {"Dense": ("in_features", "out_features", "bias", "init"),
               "LeakyReLU": ("negative_slope",), "Dropout": ("p", "mode"),
               **{name: () for name in _SIMPLE_LAYERS}}
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
    path = _check_write_path(path)
    if include_optimizer and (model.optimizer is None or model.loss is None):
        raise ValueError("include_optimizer=True needs a model that has been trained (model.optimizer "
                         "and model.loss are None); train it first or pass include_optimizer=False")
    if not np.all(np.isfinite(model._params)):
        raise ValueError("the model's parameters contain NaN or Inf; such a file could not be loaded")
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
            "model": json.dumps(_model_config(model))}
    if model.loss is not None:
        cfg = _loss_config(model.loss, required=include_optimizer)
        if cfg is not None:
            meta["loss"] = json.dumps(cfg)
    tensors = {name: np.ascontiguousarray(v) for name, v in model.named_parameters()}
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
    _atomic_write(path, save(tensors, metadata=meta))


def _check_write_path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory; give a file name such as model.safetensors")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"path {path!r}: directory {parent!r} does not exist; create it first")
    return path


def _atomic_write(path, data):
    """Write to a new file in the same directory, fsync it, rename it over ``path``, fsync the
    directory: readers see the old file or the new one, never a partial one."""
    d, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(d, f".{base}.{uuid.uuid4().hex}.tmp")
    # O_EXCL: never follow or clobber anything already there; mode 0o666 lets the umask decide,
    # as for any file the user creates
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def _fsync_dir(d):
    # makes the rename itself durable; some platforms (Windows) cannot open a directory
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _model_config(model):
    layers = []
    for i, layer in enumerate(model.layers):
        t = type(layer)
        if t is L.Dense:
            layers.append({"type": "Dense", "in_features": layer.in_features,
                           "out_features": layer.out_features, "bias": layer.use_bias, "init": layer.init})
        elif t is L.LeakyReLU:
            layers.append({"type": "LeakyReLU", "negative_slope": layer.negative_slope})
        elif t is L.Dropout:
            layers.append({"type": "Dropout", "p": layer.p, "mode": layer.mode})
        elif t in _SIMPLE_LAYERS.values():
            layers.append({"type": t.__name__})
        else:
            raise ValueError(f"layer {i} ({layer!r}) cannot be saved: only fastnn's own layer types "
                             f"({', '.join(_LAYER_ARGS)}) can")
    return {"dtype": model.dtype.name, "seed": int(model.seed), "epochs_trained": int(model.epochs_trained),
            "steps_trained": int(model.steps_trained), "layers": layers}


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
        _, expected, build = _parse_metadata(header, path)
        _match_tensors(header, expected, path)
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
        meta, expected, _ = _parse_metadata(header, path)
        _match_tensors(header, expected, path)
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


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_key(v, table):
    # a JSON list or object is unhashable: test the type before the membership
    return isinstance(v, str) and v in table


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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


def _parse_metadata(header, path):
    """Check the metadata; return it, the expected tensors ``{name: (dtype code, shape)}`` and a
    function building the model from the tensors."""
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
    cfg = _obj(_json_entry(meta, "model", path), ("dtype", "seed", "epochs_trained", "steps_trained",
                                                  "layers"), "model", path)
    if cfg["dtype"] not in ("float32", "float64"):
        raise ValueError(f"{path}: model dtype must be 'float32' or 'float64', got {_short(cfg['dtype'])!r}")
    dtype = np.dtype(cfg["dtype"])
    for k, top in (("seed", 2 ** 64), ("epochs_trained", MAX_COUNT), ("steps_trained", MAX_COUNT)):
        if not _is_int(cfg[k]) or not 0 <= cfg[k] < top:
            raise ValueError(f"{path}: model {k} must be an int in [0, {top}), got {_short(cfg[k])}")
    specs = cfg["layers"]
    if not isinstance(specs, list) or not 1 <= len(specs) <= MAX_LAYERS:
        raise ValueError(f"{path}: model layers must be a list of 1 to {MAX_LAYERS} layers")
    for i, spec in enumerate(specs):
        _check_layer_spec(spec, i, path)

    # the parameter tensors the architecture implies, named as Sequential.named_parameters does
    code = _DTYPE_CODES[dtype]
    expected = {}
    n_params = 0
    for i, spec in enumerate(specs):
        if spec["type"] == "Dense":
            fi, fo = spec["in_features"], spec["out_features"]
            expected[f"{i}.weight"] = (code, [fo, fi])
            n_params += fi * fo
            if spec["bias"]:
                expected[f"{i}.bias"] = (code, [fo])
                n_params += fo
    if not expected:
        raise ValueError(f"{path}: the architecture has no Dense layer")

    loss = None
    if "loss" in meta:
        loss = _build_loss(_json_entry(meta, "loss", path), specs, path)
    opt_cfg = None
    if "optimizer" in meta:
        opt_cfg, opt = _check_optimizer_config(_json_entry(meta, "optimizer", path), path)
        for name in opt_cfg["state"]:
            expected[_OPT_PREFIX + name] = (code, [n_params])

    def build(arrays):
        from .model import Sequential

        try:
            layers = [_build_layer(spec) for spec in specs]
            model = Sequential(*layers, dtype=dtype, seed=cfg["seed"])
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: the architecture is invalid: {e}") from None
        params = {k: v for k, v in arrays.items() if not k.startswith(_OPT_PREFIX)}
        try:
            model.load_state_dict(params)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        model.epochs_trained = cfg["epochs_trained"]
        model.steps_trained = cfg["steps_trained"]
        model.loss = loss
        if opt_cfg is not None:
            model.optimizer = _restore_optimizer(opt, opt_cfg, arrays, model, path)
        return model

    return meta, expected, build


def _check_layer_spec(spec, i, path):
    if not isinstance(spec, dict) or not _is_key(spec.get("type"), _LAYER_ARGS):
        raise ValueError(f"{path}: layer {i} must be an object whose type is one of "
                         f"{', '.join(_LAYER_ARGS)}, got {_short(spec)}")
    t = spec["type"]
    _obj(spec, ("type",) + _LAYER_ARGS[t], f"layer {i} ({t})", path)
    bad = None
    if t == "Dense":
        if not all(_is_int(spec[k]) and spec[k] >= 1 for k in ("in_features", "out_features")):
            bad = "in_features and out_features must be positive ints"
        elif not isinstance(spec["bias"], bool) or not (spec["init"] is None or isinstance(spec["init"], str)):
            bad = "bias must be true/false and init a string or null"
    elif t == "LeakyReLU" and not _is_num(spec["negative_slope"]):
        bad = "negative_slope must be a number"
    elif t == "Dropout" and not (_is_num(spec["p"]) and isinstance(spec["mode"], str)):
        bad = "p must be a number and mode a string"
    if bad:
        raise ValueError(f"{path}: layer {i} ({t}): {bad}, got {_short(spec)}")


def _build_layer(spec):
    t = spec["type"]
    if t == "Dense":
        return L.Dense(spec["in_features"], spec["out_features"], spec["bias"], spec["init"])
    if t == "LeakyReLU":
        return L.LeakyReLU(spec["negative_slope"])
    if t == "Dropout":
        return L.Dropout(spec["p"], spec["mode"])
    return _SIMPLE_LAYERS[t]()


def _build_loss(cfg, specs, path):
    if not isinstance(cfg, dict) or not _is_key(cfg.get("type"), _LOSSES):
        raise ValueError(f"{path}: loss type must be one of {', '.join(_LOSSES)}, got {_short(cfg)}")
    t = cfg["type"]
    _obj(cfg, ("type",) + _LOSS_ARGS[t], f"loss ({t})", path)
    kw = {k: cfg[k] for k in _LOSS_ARGS[t]}
    if not isinstance(kw["reduction"], str):
        raise ValueError(f"{path}: loss reduction must be a string, got {_short(kw['reduction'])}")
    n_out = next(s["out_features"] for s in reversed(specs) if s["type"] == "Dense")
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
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: the loss is invalid: {e}") from None


def _check_optimizer_config(cfg, path):
    if not isinstance(cfg, dict) or not _is_key(cfg.get("type"), _OPTIMIZERS):
        raise ValueError(f"{path}: optimizer type must be one of {', '.join(_OPTIMIZERS)}, got {_short(cfg)}")
    _obj(cfg, ("type", "lr", "step", "hyper", "state"), "optimizer", path)
    if not _is_num(cfg["lr"]) or not _is_int(cfg["step"]) or not 0 <= cfg["step"] < MAX_COUNT:
        raise ValueError(f"{path}: optimizer lr must be a number and step an int in [0, {MAX_COUNT})")
    defaults = _OPTIMIZERS[cfg["type"]](lr=1.0)._hyper_dict()
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
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: the optimizer is invalid: {e}") from None
    names = list(opt._state_names[:opt.n_state])
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
                         "hyper": opt._hyper_dict(), **buffers})
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
            raise ValueError(f"{path}: tensor {name!r} is {info['dtype']}, the model's dtype needs {code}")
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
        _check_write_path(self.path)
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


def to_torch(model):
    """The equivalent ``torch.nn.Sequential`` with copies of the weights, in the model's dtype.

    Module indices equal layer indices, so state-dict names match. The module is in training
    mode, as torch builds it; call ``.eval()`` for inference. Classic-mode dropout has no
    torch equivalent and raises ValueError.
    """
    torch = _torch()
    nn = torch.nn
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[model.dtype.type]
    mods = []
    for i, layer in enumerate(model.layers):
        t = type(layer)
        if t is L.Dense:
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias, dtype=tdtype)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.array(layer.weight)))
                if layer.use_bias:
                    m.bias.copy_(torch.from_numpy(np.array(layer.bias)))
        elif t is L.LeakyReLU:
            m = nn.LeakyReLU(layer.negative_slope)
        elif t is L.Softmax:
            m = nn.Softmax(dim=1)
        elif t is L.Dropout:
            if layer.mode == "classic" and layer.p > 0:
                raise ValueError(f"layer {i}: Dropout(mode='classic') has no PyTorch equivalent (torch's "
                                 "dropout is inverted: it scales kept units by 1/(1-p) in training); "
                                 "train with mode='inverted' to move the model to torch")
            m = nn.Dropout(layer.p)
        elif t in _SIMPLE_LAYERS.values():
            m = getattr(nn, t.__name__)()
        else:
            raise ValueError(f"layer {i} ({layer!r}) has no PyTorch equivalent")
        mods.append(m)
    return nn.Sequential(*mods)


def from_torch(module, dtype=None):
    """A fastnn ``Sequential`` equivalent to ``module``, a ``torch.nn.Sequential`` of Linear,
    Identity, Sigmoid, Tanh, ReLU, LeakyReLU, Softmax(dim=1) and Dropout.

    ``dtype``: ``"float32"`` or ``"float64"``; by default float64 if the first Linear is,
    else float32. Weights are copied.
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Sequential, got {type(module).__name__}")
    simple = {nn.Identity: L.Identity, nn.Sigmoid: L.Sigmoid, nn.Tanh: L.Tanh, nn.ReLU: L.ReLU}
    layers, state, first = [], {}, None
    for i, m in enumerate(module):
        t = type(m)
        # exact types: a subclass may override forward, which we could not reproduce
        if t is nn.Linear:
            first = first or m.weight.dtype
            layers.append(L.Dense(m.in_features, m.out_features, bias=m.bias is not None))
            state[f"{i}.weight"] = m.weight.detach().to("cpu", torch.float64).numpy()
            if m.bias is not None:
                state[f"{i}.bias"] = m.bias.detach().to("cpu", torch.float64).numpy()
        elif t in simple:
            layers.append(simple[t]())
        elif t is nn.LeakyReLU:
            layers.append(L.LeakyReLU(m.negative_slope))
        elif t is nn.Softmax and m.dim in (1, -1):
            layers.append(L.Softmax())
        elif t is nn.Dropout:
            if m.p >= 1:
                raise ValueError(f"module {i} ({m!r}): fastnn's Dropout needs p < 1")
            layers.append(L.Dropout(m.p))
        else:
            raise ValueError(f"module {i} ({m!r}) is not supported; from_torch converts Linear, Identity, "
                             "Sigmoid, Tanh, ReLU, LeakyReLU, Softmax(dim=1) and Dropout")
    if dtype is None:
        dtype = "float64" if first == torch.float64 else "float32"
    from .model import Sequential

    model = Sequential(*layers, dtype=dtype)
    model.load_state_dict(state)
    return model
