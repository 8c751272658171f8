"""Classification metrics computed from class labels (float64, NumPy)."""
import numpy as np


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
