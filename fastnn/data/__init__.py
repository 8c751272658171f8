"""The data layer: input checks (``fastnn.data.validation``), the order of an epoch's examples,
class weights, the validation split, subsampling and the bundled digits.

Every check of X, targets, sample weights and sequence lengths lives in ``validation``;
``Sequential``, ``training``, ``distributed`` and the other callers all use it. Nothing in this
package imports the model or the training code.
"""
import numpy as np

from .validation import STREAM_DTYPES, check_seed, check_X  # noqa: F401 - fastnn.data's names too

_MASK64 = (1 << 64) - 1


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
