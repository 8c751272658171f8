"""Input checks, batching order and bundled data sets."""
import sys

import numpy as np

from .._config import get_num_threads
from .._core import _engine

_MASK64 = (1 << 64) - 1


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


#: element types the compiled core reads directly, converting each row as it gathers it
STREAM_DTYPES = tuple(_engine.X_CODES)


def check_X(X, n_features, dtype, name="X", stream=False):
    """Validate X once and return it C-contiguous in ``dtype`` (copied only if needed).

    X may be a NumPy array (or anything ``np.asarray`` takes) or a pandas DataFrame of
    numeric columns. With ``stream``, a C-contiguous array of another ``STREAM_DTYPES`` type
    (a memory-mapped uint8 or float64 data set, say) comes back as it is: the core converts
    each row as it reads it, so X is never copied whole."""
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
    if a.size and a.dtype.kind == "f" and not _engine.all_finite(a, get_num_threads()):
        raise ValueError(f"{name} contains NaN or Inf; remove or impute those values before training")
    return a


def check_seed(seed, name="seed"):
    """A non-negative int seed; None draws a fresh one from the OS."""
    if seed is None:
        return int(np.random.SeedSequence().entropy) & _MASK64
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be a non-negative int or None, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{name} must be >= 0, got {seed}")
    return int(seed) & _MASK64


def rng_for(seed, *counters):
    """A counter-based (Philox) generator keyed by (seed, counters): no hidden state."""
    key = seed & _MASK64
    for c in counters:
        key = (key * 0x9E3779B97F4A7C15 + int(c) + 1) & _MASK64
    return np.random.Generator(np.random.Philox(key=[seed & _MASK64, key]))


def epoch_order(n, seed, epoch, shuffle=True):
    """The example order of one epoch: a permutation keyed by (seed, epoch)."""
    if not shuffle:
        return np.arange(n, dtype=np.intp)
    return rng_for(seed, 0x5EED, epoch).permutation(n).astype(np.intp)


def load_digits(return_X_y=True):
    """The bundled UCI optical-recognition digits: 1,797 8x8 images, classes 0-9.

    Returns ``(X, y)``: X float32 (1797, 64) with pixel values 0..16 scaled to [0, 1],
    y int64. Source: the UCI "Optical Recognition of Handwritten Digits" data set (E. Alpaydin,
    C. Kaynak, 1998; CC BY 4.0), as scikit-learn ships it.
    """
    import os

    path = os.path.join(os.path.dirname(__file__), "digits.npz")
    with np.load(path, allow_pickle=False) as f:
        X = f["X"].astype(np.float32) / np.float32(16.0)
        y = f["y"].astype(np.int64)
    return X, y


def class_weights(class_weight, labels, n_classes):
    """Per-class weights: "balanced" is n / (C n_c) (scikit-learn's rule), or a {class: weight} dict."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be 'balanced' or a dict, got {class_weight!r}")
        present = counts > 0
        w = np.zeros(n_classes)
        w[present] = labels.size / (present.sum() * counts[present])
        return w
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be 'balanced' or a dict {{class: weight}}, got {class_weight!r}")
    w = np.ones(n_classes)
    for c, v in class_weight.items():
        if not isinstance(c, (int, np.integer)) or not 0 <= c < n_classes:
            raise ValueError(f"class_weight key {c!r} is not a class index in [0, {n_classes})")
        v = float(v)
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"class_weight[{c}] must be finite and >= 0, got {v}")
        w[c] = v
    return w


def split_indices(labels, n, fraction, seed):
    """(train, validation) indices; stratified by ``labels`` when given, drawn from ``seed``."""
    rng = rng_for(seed, 0x7A11D)
    if labels is None:
        perm = rng.permutation(n)
        k = int(round(n * fraction))
        return np.sort(perm[k:]), np.sort(perm[:k])
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        val.append(idx[:int(round(idx.size * fraction))])
    val = np.sort(np.concatenate(val))
    mask = np.ones(n, bool)
    mask[val] = False
    return np.flatnonzero(mask), val


def subsample(X, y, ratio=0.1, seed=None):
    """Randomly drop examples of over-represented classes until every class has at least
    ``ratio`` times as many examples as the largest remaining class (a 1:10 rule of thumb):
    each class keeps at most ceil(n_min / ratio) examples. Returns (X_sub, y_sub) in the
    original order."""
    ratio = float(ratio)
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise ValueError("y must be 1-D class labels")
    X_arr = np.asarray(X)
    if X_arr.shape[0] != y_arr.shape[0]:
        raise ValueError(f"X has {X_arr.shape[0]} rows but y has {y_arr.shape[0]}")
    classes, inv, counts = np.unique(y_arr, return_inverse=True, return_counts=True)
    cap = int(np.ceil(counts.min() / ratio))
    rng = rng_for(check_seed(seed), 0x5AB5)
    keep = []
    for k in range(classes.size):
        idx = np.flatnonzero(inv == k)
        if idx.size > cap:
            idx = rng.choice(idx, size=cap, replace=False)
        keep.append(idx)
    keep = np.sort(np.concatenate(keep))
    return X_arr[keep], y_arr[keep]
