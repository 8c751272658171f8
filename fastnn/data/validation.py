"""Every input check of fastnn, in one place: arrays, targets, weights, sequence lengths, the loss
(the one given, or the model's last) and whether it fits the network's output.

The functions take what they need (a model's ``Plan`` for the shapes, the loss, the dtype) and
return the data as the compiled core reads it, or raise a ValueError/TypeError that names the
argument and the fix. ``Sequential``'s methods, ``training``, ``distributed``, ``diagnostics``,
``lr_finder``, ``sklearn`` and the command line all call these same functions (as scikit-learn's
estimators call ``sklearn.utils.validation``), so a check is written once.

The data path runs one way: model -> training -> data -> plan -> core. Nothing here imports the
model or the training code.
"""
import math
import sys
from typing import NamedTuple

import numpy as np

from .._config import get_num_threads
from .._core import _engine
from ..losses import CrossEntropy, NLLLoss, check_loss

_MASK64 = (1 << 64) - 1

#: element types the compiled core reads directly, converting each row as it gathers it
STREAM_DTYPES = tuple(_engine.X_CODES)


class Targets(NamedTuple):
    """The targets of N examples as the core reads them; empty arrays where unused."""
    yi: np.ndarray      # int64 class labels (N,), or (N, steps) for per-step labels
    yf: np.ndarray      # float targets (N, n_outputs)
    sw: np.ndarray      # example weights (N,), or step weights (N, steps)
    pw: np.ndarray      # BinaryCrossEntropy's positive weights per output


# ---------------------------------------------------------------- scalars
def check_precision(precision, dtype):
    """``precision`` as the core runs it for a model of ``dtype``: None (products in the model's
    dtype, also for the dtype's own name) or "bf16-mixed" (float32 models only)."""
    dtype = np.dtype(dtype)
    if precision is None or (isinstance(precision, str) and precision == dtype.name):
        return None
    if isinstance(precision, str) and precision == "bf16-mixed":
        if dtype != np.float32:
            raise ValueError(f"precision='bf16-mixed' keeps float32 master weights: it needs a float32 model, "
                             f"this one is {dtype.name} (build it with dtype='float32')")
        return precision
    raise ValueError(f"precision must be None, {dtype.name!r} (the model's dtype) or 'bf16-mixed', got {precision!r}")


def check_dtype(dtype):
    """``dtype`` as np.float32 or np.float64."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dt


def check_int(v, name, minimum=1):
    """``v`` as an int >= ``minimum`` (bools refused)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def check_number(v, name, positive=False):
    """``v`` as a finite float >= 0 (> 0 with ``positive``)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite, got {v}")
    return v


def check_seed(seed, name="seed"):
    """A non-negative int seed; None draws a fresh one from the OS."""
    if seed is None:
        return int(np.random.SeedSequence().entropy) & _MASK64
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be a non-negative int or None, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be >= 0, got {seed}")
    return int(seed) & _MASK64


def resolve_loss(loss, last):
    """``loss`` checked, or, when it is None, ``last`` (the loss the model last trained with);
    a ValueError when there is neither."""
    if loss is None:
        if last is None:
            raise ValueError("no loss given and the model has not been trained; pass loss=, "
                             "e.g. loss=fn.CrossEntropy()")
        loss = last
    return check_loss(loss)


# ---------------------------------------------------------------- X
def _frame_values(X, dtype, name):
    """A pandas DataFrame's values in ``dtype``; every column must be numeric (or bool)."""
    pd = sys.modules["pandas"]
    for col, dt in X.dtypes.items():
        if isinstance(dt, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(dt):
            raise ValueError(f"{name} column {col!r} has dtype {dt}, not numeric; encode it first "
                             "(e.g. pd.get_dummies or .cat.codes) or drop it")
    # missing values of nullable columns become NaN, which the finite check below reports
    return X.to_numpy(dtype=dtype, na_value=np.nan)


def _is_frame(X):
    # pandas is never imported here: an object can only be a DataFrame if pandas already is
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(X, pd.DataFrame)


def check_X(X, n_features, dtype, name="X", stream=False, finite=True):
    """Validate X once and return it C-contiguous in ``dtype`` (copied only if needed).

    X may be a NumPy array (or anything ``np.asarray`` takes) or a pandas DataFrame of
    numeric columns. With ``stream``, a C-contiguous array of another ``STREAM_DTYPES`` type
    (a memory-mapped uint8 or float64 data set, say) comes back as it is: the core converts
    each row as it reads it, so X is never copied whole. ``finite=False`` leaves the NaN/Inf
    check to the caller (inference checks each row as the core reads it)."""
    if hasattr(X, "toarray") and not isinstance(X, np.ndarray):
        raise TypeError(f"{name} is a sparse matrix; pass a dense array (X.toarray())")
    if _is_frame(X):
        a = _frame_values(X, dtype, name)
    else:
        try:
            a = np.asarray(X)
        except Exception as e:
            raise TypeError(f"{name} must be a 2-D numeric array: {e}") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric (float or int), got dtype {a.dtype}; "
                        "convert it with np.asarray(X, dtype=np.float32)")
    if a.ndim != 2:
        hint = (" Use X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single example."
                if a.ndim == 1 else "")
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {a.ndim}-D shape {a.shape}.{hint}")
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 examples); pass at least one example")
    if a.shape[1] != n_features:
        raise ValueError(f"{name} has {a.shape[1]} features but the model's first Dense layer expects "
                         f"{n_features}; check the data or the model's in_features")
    if not (stream and a.dtype in STREAM_DTYPES and a.flags.c_contiguous):
        a = np.ascontiguousarray(a, dtype=dtype)
    # one parallel pass, no full-size temporary (integers hold no NaN or Inf); a is C-contiguous
    # float32/float64 here: converted above, or a streamed float array
    if finite and a.size and a.dtype.kind == "f" and not _engine.all_finite(a, get_num_threads()):
        raise ValueError(f"{name} contains NaN or Inf; remove or impute those values before training")
    return a


def input_shape_of(X, name="X"):
    """``(X, shape)``: the per-example shape of the first data given to a model built without an
    input shape, which fixes it; X without a shape of two or more dimensions comes back as an array."""
    shape = getattr(X, "shape", None)
    if shape is None or len(shape) < 2:
        X = np.asarray(X)
        shape = X.shape
    if len(shape) < 2 or shape[0] == 0:
        raise ValueError(f"{name} must be shaped (N, ...) with N >= 1 to fix the model's input shape, "
                         f"got shape {tuple(shape)}")
    return X, tuple(shape[1:])


def check_input(X, plan, dtype, name="X", finite=True):
    """X for a model of ``plan``: a C-contiguous (N, n_features) array in ``dtype`` (or a streamed
    one, see ``check_X``); examples shaped like the plan's input are flattened (a view). With an
    Embedding first, every entry must be a token id. ``finite`` as in ``check_X``."""
    if isinstance(X, np.ndarray) and X.ndim > 2 and X.shape[1:] == plan.in_shape:
        X = X.reshape(X.shape[0], -1)
    X = check_X(X, plan.n_features, dtype, name=name, stream=not plan.embeddings,
                finite=finite or bool(plan.embeddings))
    if plan.embeddings:
        n = plan.embeddings[0][1].num_embeddings
        bad = (X < 0) | (X >= n) | (X != np.floor(X))
        if bad.any():
            v = float(X[bad].flat[0])
            raise ValueError(f"{name} holds token ids for the Embedding: whole numbers in [0, {n}); "
                             f"got {v!r}")
        if dtype == np.float32 and n > 2 ** 24:
            raise ValueError(f"Embedding with {n} rows: float32 inputs hold token ids exactly only "
                             "below 2**24; use dtype='float64'")
    return X


def _recurrent_steps(plan):
    """Steps T of the plan's first recurrent layer, or None."""
    rnn = _engine.OP_KINDS["rnn"]
    return next((op["steps"] for op in plan.ops if op["kind"] == rnn), None)


def check_lengths(lengths, n, plan):
    """``lengths`` as an int64 array of n sequence lengths in [1, T], or None."""
    if lengths is None:
        return None
    T = _recurrent_steps(plan)
    if T is None:
        raise ValueError("lengths= is for models with a recurrent layer (fn.RNN, fn.LSTM, fn.GRU)")
    a = np.asarray(lengths)
    if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.all(a == np.floor(a))):
        raise TypeError(f"lengths must hold whole numbers, got dtype {a.dtype}")
    if a.shape != (n,):
        raise ValueError(f"lengths must have shape ({n},), one per example, got {a.shape}")
    if n and (a.min() < 1 or a.max() > T):
        raise ValueError(f"lengths must lie in [1, {T}] (the sequences' steps), got {a.min()} .. {a.max()}")
    return np.ascontiguousarray(a, dtype=np.int64)


def check_batch(n, plan, what):
    """A training batch of ``n`` examples; BatchNorm needs two."""
    if plan.has_bn and n < 2:
        raise ValueError(f"{what}: BatchNorm in training mode needs at least 2 examples per batch, "
                         f"got {n}")


# ---------------------------------------------------------------- targets and weights
def check_sample_weight(sample_weight, n, dtype, loss_weights=None):
    """Per-example weights: the loss's ``loss_weights`` (or None) times ``sample_weight``; an
    empty array when there are none."""
    sw = loss_weights
    if sample_weight is not None:
        s = np.asarray(sample_weight)
        if s.dtype.kind not in "biuf":
            raise TypeError(f"sample_weight must be numeric, got dtype {s.dtype}")
        s = np.ascontiguousarray(s, dtype=dtype).reshape(-1)
        if s.shape[0] != n:
            raise ValueError(f"sample_weight has {s.shape[0]} entries but X has {n} examples")
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise ValueError("sample_weight must be finite and non-negative")
        sw = s if sw is None else np.ascontiguousarray(sw * s, dtype=dtype)
    if sw is None:
        sw = np.zeros(0, dtype=dtype)
    return sw


def _step_targets(y, loss, n, sample_weight, shape, dtype):
    """Per-step class labels for an output of ``shape`` (..., C) per example: yi of shape
    (n, steps), every step a row of C classes. The weights are per example (n,), or per step
    (n, steps) when the loss has class weights or ``sample_weight`` is (n, steps)."""
    steps, C = math.prod(shape[:-1]), shape[-1]
    step_dims = ", ".join(map(str, shape[:-1]))
    if not isinstance(loss, (CrossEntropy, NLLLoss)):
        raise ValueError(f"the network outputs shape {shape} per example (a Dense on every step); of the "
                         "classification losses only CrossEntropy and NLLLoss take per-step labels of shape "
                         f"(N, {step_dims}); otherwise end with fn.Flatten() and a fn.Dense")
    a = np.asarray(y)
    if a.shape != (n,) + tuple(shape[:-1]):
        raise ValueError(f"y must hold one class label per example and step, shape "
                         f"({n}, {step_dims}), got {a.shape}")
    yi = loss.prepare(a.reshape(-1), n * steps, C, dtype)[0].reshape(n, steps)
    cw = loss.example_weights(yi.reshape(-1), dtype)     # the loss's class weight of every step
    s = None if sample_weight is None else np.asarray(sample_weight)
    if s is not None and s.ndim > 1 and s.size != n:
        # one weight per step (Keras's temporal sample weights)
        if s.shape != (n,) + tuple(shape[:-1]):
            raise ValueError(f"sample_weight with per-step labels is (N,) per example or (N, {step_dims}) "
                             f"per step, got shape {s.shape}")
        sw = check_sample_weight(s.reshape(-1), n * steps, dtype).reshape(n, steps)
        if cw is not None:
            sw = np.ascontiguousarray(cw.reshape(n, steps) * sw)
    else:
        sw = check_sample_weight(sample_weight, n, dtype)
        if cw is not None:
            cw = cw.reshape(n, steps)
            sw = cw if sw.size == 0 else np.ascontiguousarray(cw * sw[:, None])
    return Targets(yi, np.zeros((0, C), dtype=dtype), sw, np.zeros(0, dtype))


def check_targets(y, loss, n, plan, dtype, sample_weight=None):
    """The targets ``y`` of n examples for ``loss`` and a network of ``plan``, with their weights,
    as a ``Targets``."""
    shape = plan.out_shape
    if len(shape) > 1:
        if loss.classification:
            return _step_targets(y, loss, n, sample_weight, shape, dtype)
        if isinstance(y, np.ndarray) and y.ndim == len(shape) + 1 and y.shape[1:] == shape:
            y = y.reshape(y.shape[0], -1)
    n_out = plan.n_outputs
    yi, yf = loss.prepare(y, n, n_out, dtype)
    if yf.size == 0:
        yf = np.zeros((0, n_out), dtype=dtype)
    sw = check_sample_weight(sample_weight, n, dtype, loss.example_weights(yi, dtype))
    return Targets(yi, yf, sw, loss.pos_weight_array(n_out, dtype))


def check_data(X, y, loss, plan, dtype, sample_weight=None, lengths=None, name="X"):
    """``check_input``, ``check_targets`` and ``check_lengths`` in one call (scikit-learn's
    ``check_X_y``): returns ``(X, Targets, lengths)``."""
    X = check_input(X, plan, dtype, name)
    targets = check_targets(y, loss, X.shape[0], plan, dtype, sample_weight)
    return X, targets, check_lengths(lengths, X.shape[0], plan)


def loss_steps(loss, yi, lengths, plan):
    """Steps with a loss of their own per example: those of per-step class labels, or of a
    per-step MSE given ``lengths``; 1 otherwise (one loss row per example). Refuses ``lengths``
    with an output whose steps are not the recurrent layer's."""
    shape = plan.out_shape
    if len(shape) < 2 or (yi.ndim != 2 and (lengths is None or loss.classification)):
        return 1
    if lengths is not None:
        T = _recurrent_steps(plan)
        if len(shape) != 2 or shape[0] != T:
            raise ValueError(f"lengths= with an output of shape {shape} per example: steps past a length "
                             f"are left out of a per-step loss only for outputs (T, C) = ({T}, C), a Dense "
                             "on every step of the recurrent layer")
    return math.prod(shape[:-1])
