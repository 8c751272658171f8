"""Losses on raw network outputs (logits), with PyTorch's default reductions.

The math (stable log-sum-exp and log1p(exp) forms, and the gradient fed to
backpropagation) lives in the compiled core; these objects hold configuration,
check targets and give the output link used by ``predict``.
"""
import numpy as np

from ._core import _engine

LOSS_MSE, LOSS_BCE, LOSS_CE, LOSS_CE_PROB, LOSS_NLL, LOSS_KLDIV = range(6)
RED_EXAMPLES, RED_ELEMENTS, RED_SUM = range(3)

_EMPTY_I = np.zeros(0, dtype=np.int64)


def _check_finite(a, name):
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf; remove or impute those values")


def _float_targets(y, n_samples, n_out, dtype, name="y"):
    try:
        a = np.asarray(y)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name} must be a numeric array: {e}") from None
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric (float targets), got dtype {a.dtype}")
    if a.ndim == 1 and n_out == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2 or a.shape[1] != n_out:
        raise ValueError(f"{name} must have shape (n_samples, {n_out}) to match the model's "
                         f"{n_out} outputs, got shape {a.shape}")
    if a.shape[0] != n_samples:
        raise ValueError(f"{name} has {a.shape[0]} rows but X has {n_samples}; pass one target per example")
    a = np.ascontiguousarray(a, dtype=dtype)
    _check_finite(a, name)
    return a


def _int_labels(y, n_samples, n_classes, name="y"):
    try:
        a = np.asarray(y)
    except Exception as e:
        raise TypeError(f"{name} must be an array of integer class labels: {e}") from None
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D integer class labels of shape (n_samples,), got shape {a.shape}")
    if a.shape[0] != n_samples:
        raise ValueError(f"{name} has {a.shape[0]} labels but X has {n_samples}; pass one label per example")
    if a.dtype.kind == "f":
        _check_finite(a, name)
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer class labels, got non-integer values; "
                             "encode classes as 0..C-1")
    elif a.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integer class labels 0..C-1, got dtype {a.dtype}; "
                        "encode string classes first (e.g. np.unique(y, return_inverse=True))")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise ValueError(f"{name} has labels outside [0, {n_classes}) (min {a.min()}, max {a.max()}); "
                         f"the model has {n_classes} outputs, one per class")
    return a


class Loss:
    """Base of all losses. ``reduction`` is ``"mean"`` or ``"sum"``."""

    code = None
    classification = False
    _reductions = ("mean", "sum")

    def __init__(self, reduction="mean"):
        if reduction not in self._reductions:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {self._reductions}, "
                             f"got {reduction!r}")
        self.reduction = reduction

    @property
    def reduction_code(self):
        return RED_SUM if self.reduction == "sum" else RED_EXAMPLES

    def kernel_code(self, yf):
        return self.code

    def prepare(self, y, n_samples, n_out, dtype):
        """Validate targets; return (int labels, float targets), one of them empty."""
        return _EMPTY_I, _float_targets(y, n_samples, n_out, dtype)

    def example_weights(self, yi, dtype):
        """Per-example weights this loss implies (class weights), or None."""
        return None

    def pos_weight_array(self, n_out, dtype):
        return np.zeros(0, dtype=dtype)

    #: the link as the compiled core applies it (``_engine.LINK_CODES``): ``predict`` runs it on each
    #: chunk of outputs while they are in cache
    link_code = _engine.LINK_CODES["identity"]

    def link(self, out):
        """Map raw outputs (rows of a 2-D float array) to predictions (probabilities for
        classification), in the compiled core: the same bits as ``predict`` gives."""
        out = np.array(out, dtype=out.dtype if out.dtype in (np.float32, np.float64) else np.float64,
                       order="C")
        if self.link_code != _engine.LINK_CODES["identity"]:
            _engine.apply_link(out.reshape(-1, out.shape[-1]) if out.ndim != 2 else out, self.link_code)
        return out

    def accuracy(self, out, yi, yf):
        return None

    def __call__(self, output, target):
        """The loss value of ``output`` (N, C) against ``target``, as a float."""
        output = np.asarray(output)
        if output.ndim == 1:
            output = output.reshape(-1, 1)
        dtype = output.dtype if output.dtype in (np.float32, np.float64) else np.float64
        output = np.ascontiguousarray(output, dtype=dtype)
        yi, yf = self.prepare(target, output.shape[0], output.shape[1], dtype)
        per = np.empty(output.shape[0])
        pw = self.pos_weight_array(output.shape[1], dtype)
        _engine.loss_per_example(output, yi, yf if yf.size else np.zeros((0, 1), dtype), pw,
                                 self.kernel_code(yf), per)
        w = self.example_weights(yi, dtype)
        return reduce_loss(per, w, self.reduction_code_for(output.shape[1]), output.shape[1])

    def reduction_code_for(self, n_out):
        return self.reduction_code

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


def reduce_loss(per, w, red, n_out):
    """Reduce per-example losses as the compiled step does (weights, elements, sum)."""
    if w is None:
        tot, norm = per.sum(), float(per.shape[0])
    else:
        tot, norm = float(np.dot(per, w)), float(np.sum(w, dtype=np.float64))
    if red == RED_SUM:
        return float(tot)
    if red == RED_ELEMENTS:
        norm *= n_out
    return float(tot / norm)


class MSE(Loss):
    """Mean squared error, mean over all elements: mean((output - target)^2). Link: identity."""

    code = LOSS_MSE

    @property
    def reduction_code(self):
        return RED_SUM if self.reduction == "sum" else RED_ELEMENTS


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits (PyTorch's BCEWithLogitsLoss), mean over elements.

    loss = -[pos_weight * t * log sigmoid(x) + (1 - t) * log(1 - sigmoid(x))], in the
    stable form (1 - t) x + (1 + (pos_weight - 1) t) (log1p(exp(-|x|)) + max(-x, 0)).
    Targets in [0, 1] of the output's shape. Link: sigmoid.
    """

    code = LOSS_BCE
    classification = True

    def __init__(self, pos_weight=None, reduction="mean"):
        super().__init__(reduction)
        if pos_weight is not None:
            pw = np.atleast_1d(np.asarray(pos_weight, dtype=np.float64))
            if pw.ndim != 1 or not np.all(np.isfinite(pw)) or np.any(pw < 0):
                raise ValueError("BinaryCrossEntropy: pos_weight must be finite, >= 0, "
                                 "a scalar or one value per output")
            pos_weight = pw
        self.pos_weight = pos_weight

    @property
    def reduction_code(self):
        return RED_SUM if self.reduction == "sum" else RED_ELEMENTS

    def prepare(self, y, n_samples, n_out, dtype):
        yi, yf = super().prepare(y, n_samples, n_out, dtype)
        if yf.size and (yf.min() < 0 or yf.max() > 1):
            raise ValueError("y for BinaryCrossEntropy must lie in [0, 1] (0/1 labels or probabilities)")
        return yi, yf

    def pos_weight_array(self, n_out, dtype):
        if self.pos_weight is None:
            return np.zeros(0, dtype=dtype)
        pw = self.pos_weight
        if pw.size == 1:
            pw = np.full(n_out, pw[0])
        if pw.size != n_out:
            raise ValueError(f"BinaryCrossEntropy: pos_weight has {pw.size} values, the model {n_out} outputs")
        return np.ascontiguousarray(pw, dtype=dtype)

    link_code = _engine.LINK_CODES["sigmoid"]

    def accuracy(self, out, yi, yf):
        return float(np.mean((out > 0) == (yf > 0.5)))


class _ClassLoss(Loss):
    """Shared by losses over integer class labels, with optional class weights."""

    classification = True

    def __init__(self, weight=None, reduction="mean"):
        super().__init__(reduction)
        if weight is not None:
            w = np.asarray(weight, dtype=np.float64)
            if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
                raise ValueError(f"{type(self).__name__}: weight must be a 1-D array of finite, "
                                 "non-negative class weights")
            weight = w
        self.weight = weight

    def _check_weight(self, n_out):
        if self.weight is not None and self.weight.size != n_out:
            raise ValueError(f"{type(self).__name__}: weight has {self.weight.size} entries but the "
                             f"model has {n_out} outputs (classes)")

    def prepare(self, y, n_samples, n_out, dtype):
        self._check_weight(n_out)
        return _int_labels(y, n_samples, n_out), np.zeros((0, n_out), dtype=dtype)

    def example_weights(self, yi, dtype):
        if self.weight is None or yi.size == 0:
            return None
        return np.ascontiguousarray(self.weight[yi], dtype=dtype)

    def accuracy(self, out, yi, yf):
        pred = out.argmax(axis=1)
        if yi.size:
            return float(np.mean(pred == yi))
        return float(np.mean(pred == yf.argmax(axis=1)))


class CrossEntropy(_ClassLoss):
    """Softmax cross-entropy on logits (PyTorch's CrossEntropyLoss).

    Targets: integer labels ``(N,)`` in [0, C), or probability rows ``(N, C)``.
    loss_i = logsumexp(x_i) - x_i[y_i]; with class ``weight`` the mean divides by
    sum_i weight[y_i], as PyTorch does. Link: softmax.
    """

    code = LOSS_CE

    def prepare(self, y, n_samples, n_out, dtype):
        a = np.asarray(y) if not isinstance(y, np.ndarray) else y
        if a.ndim == 2 and a.shape[1] == n_out and n_out > 1 and a.dtype.kind == "f":
            if self.weight is not None:
                raise ValueError("CrossEntropy: class weight is supported with integer labels only")
            yf = _float_targets(a, n_samples, n_out, dtype)
            if yf.size and yf.min() < 0:
                raise ValueError("y for CrossEntropy with probability rows must be non-negative")
            return _EMPTY_I, yf
        return super().prepare(y, n_samples, n_out, dtype)

    def kernel_code(self, yf):
        return LOSS_CE_PROB if yf.size else LOSS_CE

    link_code = _engine.LINK_CODES["softmax"]


class NLLLoss(_ClassLoss):
    """Negative log-likelihood on log-probabilities: loss_i = -x_i[y_i]. Link: exp."""

    code = LOSS_NLL

    link_code = _engine.LINK_CODES["exp"]


class KLDiv(Loss):
    """KL divergence (PyTorch's KLDivLoss): input log-probabilities, target probabilities.

    loss = sum t (log t - x) over elements (0 where t = 0); ``reduction="mean"`` divides by
    the number of elements (PyTorch's default), ``"batchmean"`` by the batch size (the true
    KL divergence per example), ``"sum"`` not at all. Link: exp.
    """

    code = LOSS_KLDIV
    classification = True
    _reductions = ("mean", "batchmean", "sum")

    @property
    def reduction_code(self):
        return {"mean": RED_ELEMENTS, "batchmean": RED_EXAMPLES, "sum": RED_SUM}[self.reduction]

    def prepare(self, y, n_samples, n_out, dtype):
        yi, yf = super().prepare(y, n_samples, n_out, dtype)
        if yf.size and yf.min() < 0:
            raise ValueError("y for KLDiv must be probabilities (non-negative)")
        return yi, yf

    link_code = _engine.LINK_CODES["exp"]

    def accuracy(self, out, yi, yf):
        return float(np.mean(out.argmax(axis=1) == yf.argmax(axis=1)))


def check_loss(loss):
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a fastnn loss such as fn.CrossEntropy() or fn.MSE(), got {loss!r}")
    return loss
