"""Classification metrics computed from class labels (float64, NumPy), and ``scores``: a loss
and its metrics from a network's outputs, as ``evaluate`` and a distributed validation report them."""
import numpy as np

from ._core import _engine
from .data.validation import loss_steps
from .losses import BinaryCrossEntropy, reduce_loss


def confusion(y_true, y_pred, n_classes):
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(y_true, y_pred, n_classes, sample_weight=None):
    """accuracy, balanced accuracy (mean recall over classes present) and macro F1 (over
    classes present in either), as scikit-learn defines them."""
    n_classes = max(int(n_classes), 2)
    cm = confusion(np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64), n_classes).astype(np.float64)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    labels = present | (predicted > 0)
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "balanced_accuracy": float(recall[present].mean()),
        "f1_macro": float(f1[labels].mean()),
    }


def _with_classification(res, out, yi, yf, loss, n_classes):
    """``res`` with the classification metrics of ``out`` against the targets added."""
    if loss.classification:
        if yi.size or yf.shape[1] == 1 or not isinstance(loss, BinaryCrossEntropy):
            truth = yi if yi.size else (yf.argmax(1) if yf.shape[1] > 1 else (yf[:, 0] > 0.5).astype(np.int64))
            pred = out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0).astype(np.int64)
            res.update(classification_metrics(truth, pred, n_classes))
        else:
            res["accuracy"] = loss.accuracy(out, yi, yf)
    return res


def scores(out, targets, loss, plan, lengths=None):
    """``Sequential.evaluate``'s numbers from the network's outputs ``out`` (one row per example)
    for prepared ``targets`` (``fastnn.data.Targets``); with per-step losses, over the steps
    within ``lengths``."""
    yi, yf, sw, pw = targets
    steps = loss_steps(loss, yi, lengths, plan)
    if steps > 1:
        # a loss per step: torch's mean over every real (example, step), steps past a
        # sequence's length left out (for MSE over real steps x outputs)
        n, C = out.shape[0], plan.out_shape[-1]
        lens = lengths if lengths is not None else np.full(n, steps)
        valid = np.arange(steps)[None, :] < lens[:, None]
        rows = out.reshape(-1, C)
        if yi.ndim == 2:
            per = np.empty(yi.size)
            _engine.loss_per_example(rows, yi.reshape(-1), yf, pw, loss.kernel_code(yf), per)
        else:
            diff = rows.astype(np.float64) - yf.reshape(-1, C)
            per = np.sum(diff * diff, axis=1)
        w = sw if sw.ndim == 2 else (sw[:, None] if sw.size else np.ones((n, 1)))
        w = w * valid
        total = float((per.reshape(n, steps) * w).sum())
        norm = float(w.sum()) * (C if loss.reduction_code == 1 else 1)
        res = {"loss": total if loss.reduction_code == 2 else total / max(norm, 1e-300)}
        if yi.ndim != 2:
            return res
        return _with_classification(res, rows[valid.ravel()], yi[valid], yf, loss, C)
    per = np.empty(out.shape[0])
    _engine.loss_per_example(out, yi, yf, pw, loss.kernel_code(yf), per)
    res = {"loss": reduce_loss(per, sw if sw.size else None, loss.reduction_code, plan.n_outputs)}
    return _with_classification(res, out, yi, yf, loss, plan.n_outputs)
