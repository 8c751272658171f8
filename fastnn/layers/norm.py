"""Normalization layers: BatchNorm1d and LayerNorm, with PyTorch's arguments and names."""
import math

from .base import Layer, check_float, check_int


class BatchNorm1d(Layer):
    """Batch normalization over the batch, per feature (PyTorch's ``nn.BatchNorm1d``).

    In training, ``y = (x - mean_B) / sqrt(var_B + eps) * weight + bias`` with the batch's mean
    and biased variance; the running estimates move by ``momentum`` towards the batch mean and
    the *unbiased* batch variance (``momentum=None``: a cumulative average). In inference
    (``forward``/``predict``/``evaluate``) the running estimates are used instead, unless
    ``track_running_stats=False``, when every call normalises by its own batch.

    Args:
        num_features: features per example.
        eps: added to the variance.
        momentum: running-estimate update weight, or None for a cumulative average.
        affine: learn ``weight`` (γ, init 1) and ``bias`` (β, init 0).
        track_running_stats: keep ``running_mean`` (init 0), ``running_var`` (init 1) and
            ``num_batches_tracked``.

    Shape: input and output ``(N, C)`` or ``(N, C, L)`` (statistics per channel over the batch and L);
    training needs at least 2 examples per batch.
    """

    _views = ("weight", "bias", "running_mean", "running_var")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        self.num_features = check_int(num_features, "BatchNorm1d", "num_features")
        self.eps = check_float(eps, "BatchNorm1d", "eps", 0, lo_open=True)
        self.momentum = None if momentum is None else check_float(momentum, "BatchNorm1d", "momentum", 0, 1)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.weight = self.bias = self.running_mean = self.running_var = None
        self.num_batches_tracked = 0

    def param_shapes(self, in_shape=None):
        n = self.num_features
        return [("weight", (n,)), ("bias", (n,))] if self.affine else []

    def buffer_shapes(self, in_shape=None):
        n = self.num_features
        return [("running_mean", (n,)), ("running_var", (n,))] if self.track_running_stats else []

    def output_shape(self, in_shape):
        if len(in_shape) not in (1, 2) or in_shape[0] != self.num_features:
            raise ValueError(f"BatchNorm1d expects {self.num_features} features per example (shape (C,) or "
                             f"(C, L)), got shape {tuple(in_shape)}")
        return tuple(in_shape)

    def get_config(self):
        return {"type": type(self).__name__, "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine,
                "track_running_stats": self.track_running_stats}

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class LayerNorm(Layer):
    """Layer normalization over the last dimensions of each example (PyTorch's ``nn.LayerNorm``):
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, mean and biased variance over the last
    ``len(normalized_shape)`` dimensions, the same in training and inference.

    Args:
        normalized_shape: int or tuple, the trailing shape normalised over.
        eps: added to the variance.
        elementwise_affine: learn ``weight`` (init 1) and, with ``bias``, ``bias`` (init 0), each
            shaped ``normalized_shape``.
        bias: learn the additive bias (when ``elementwise_affine``).
    """

    _views = ("weight", "bias")

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        shape = (normalized_shape,) if not isinstance(normalized_shape, (tuple, list)) else normalized_shape
        self.normalized_shape = tuple(check_int(s, "LayerNorm", "normalized_shape") for s in shape)
        if not self.normalized_shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        self.eps = check_float(eps, "LayerNorm", "eps", 0, lo_open=True)
        self.elementwise_affine = bool(elementwise_affine)
        self.use_bias = bool(bias) and self.elementwise_affine
        self.weight = self.bias = None

    @property
    def size(self):
        return math.prod(self.normalized_shape)

    def param_shapes(self, in_shape=None):
        out = []
        if self.elementwise_affine:
            out.append(("weight", self.normalized_shape))
            if self.use_bias:
                out.append(("bias", self.normalized_shape))
        return out

    def output_shape(self, in_shape):
        k = len(self.normalized_shape)
        if tuple(in_shape[-k:]) != self.normalized_shape or len(in_shape) < k:
            raise ValueError(f"LayerNorm{self.normalized_shape} needs examples whose trailing shape is "
                             f"{self.normalized_shape}, got shape {tuple(in_shape)}")
        return tuple(in_shape)

    def get_config(self):
        return {"type": "LayerNorm", "normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.use_bias}

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
                + ("" if self.use_bias or not self.elementwise_affine else ", bias=False"))
