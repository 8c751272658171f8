"""Shape-preserving layers: activations, dropout, Identity, and Flatten."""
import math

from .base import (ACT_IDENTITY, ACT_LEAKY, ACT_RELU, ACT_SIGMOID, ACT_SOFTMAX, ACT_TANH, DROP_CLASSIC,
                   DROP_INVERTED, Layer)


class Identity(Layer):
    """Passes its input through unchanged."""


class Flatten(Layer):
    """Flattens each example to one dimension: ``(N, *shape) -> (N, prod(shape))``.

    Examples are stored as contiguous rows, so this moves no data."""

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)


class Activation(Layer):
    """Base of the elementwise activations: the core's code and parameter, the preferred init."""

    code = ACT_IDENTITY
    param = 0.0
    default_init = "xavier"


class Sigmoid(Activation):
    """Logistic sigmoid, 1 / (1 + exp(-x))."""
    code = ACT_SIGMOID


class Tanh(Activation):
    """Hyperbolic tangent."""
    code = ACT_TANH


class ReLU(Activation):
    """max(0, x)."""
    code = ACT_RELU
    default_init = "he"


class LeakyReLU(Activation):
    """x for x > 0, negative_slope * x otherwise (0 <= negative_slope)."""
    code = ACT_LEAKY
    default_init = "he"

    def __init__(self, negative_slope=0.01):
        negative_slope = float(negative_slope)
        if not (0.0 <= negative_slope) or not math.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU: negative_slope must be finite and >= 0, got {negative_slope}")
        self.param = self.negative_slope = negative_slope

    def get_config(self):
        return {"type": "LeakyReLU", "negative_slope": self.negative_slope}

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(Activation):
    """Softmax over the features of each example."""
    code = ACT_SOFTMAX

    def output_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(f"Softmax works on 1-D examples, got shape {tuple(in_shape)}; "
                             "put fn.Flatten() before it")
        return tuple(in_shape)


class Dropout(Layer):
    """Zero each input unit with probability ``p`` during training.

    ``mode="inverted"`` (PyTorch's): surviving units are scaled by 1/(1-p) in training,
    inference is the identity. ``mode="classic"``: no scaling in training,
    inference multiplies by (1-p). Both keep the expected input of the next layer.
    """

    def __init__(self, p=0.5, mode="inverted"):
        try:
            p = float(p)
        except (TypeError, ValueError):
            raise TypeError(f"Dropout: p must be a number in [0, 1), got {p!r}") from None
        if not (0.0 <= p < 1.0):
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        if mode not in ("inverted", "classic"):
            raise ValueError(f"Dropout: mode must be 'inverted' or 'classic', got {mode!r}")
        self.p = p
        self.mode = mode

    @property
    def code(self):
        return DROP_INVERTED if self.mode == "inverted" else DROP_CLASSIC

    def get_config(self):
        return {"type": "Dropout", "p": self.p, "mode": self.mode}

    def extra_repr(self):
        return f"p={self.p}" + (", mode='classic'" if self.mode == "classic" else "")
