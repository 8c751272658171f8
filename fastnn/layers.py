"""Layers: configuration plus NumPy views of their parameters. No math here.

A ``Dense`` layer owns no storage until a ``Sequential`` places it: then its
``weight`` (``(out_features, in_features)``, as in PyTorch) and ``bias`` are
views into the model's one flat parameter buffer.
"""
import math

import numpy as np

INITS = ("xavier", "he", "lecun", "torch", "zeros")

# activation codes of the compiled core
ACT_IDENTITY, ACT_SIGMOID, ACT_TANH, ACT_RELU, ACT_LEAKY, ACT_SOFTMAX = range(6)
DROP_NONE, DROP_INVERTED, DROP_CLASSIC = range(3)


class Layer:
    """Base of all layers."""

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class Dense(Layer):
    """Fully connected layer: ``y = x @ weight.T + bias``.

    Args:
        in_features: size of each input example.
        out_features: size of each output example.
        bias: learn an additive bias (default True).
        init: ``"xavier"``, ``"he"``, ``"lecun"``, ``"torch"`` or ``"zeros"``; by default chosen
            from the activation that follows (He for ReLU/LeakyReLU, Xavier otherwise).

    Shape: input ``(N, in_features)``, output ``(N, out_features)``.

    Attributes:
        weight: ``(out_features, in_features)`` view into the model's parameters.
        bias: ``(out_features,)`` view, or None.
    """

    def __init__(self, in_features, out_features, bias=True, init=None):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"Dense: {name} must be a positive int, got {v!r}")
            if v < 1:
                raise ValueError(f"Dense: {name} must be >= 1, got {v}")
        if init is not None and init not in INITS:
            raise ValueError(f"Dense: init must be one of {INITS}, got {init!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.use_bias = bool(bias)
        self.init = init
        self.weight = None
        self.bias = None

    def __getstate__(self):
        # weight and bias are views into the owning model's buffer, which rebinds them
        state = self.__dict__.copy()
        state["weight"] = state["bias"] = None
        return state

    def n_params(self):
        return self.out_features * (self.in_features + (1 if self.use_bias else 0))

    def extra_repr(self):
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.use_bias}"
        return s + (f", init={self.init!r}" if self.init else "")


class Identity(Layer):
    """Passes its input through unchanged."""


class _Activation(Layer):
    code = ACT_IDENTITY
    param = 0.0
    default_init = "xavier"


class Sigmoid(_Activation):
    """Logistic sigmoid, 1 / (1 + exp(-x))."""
    code = ACT_SIGMOID


class Tanh(_Activation):
    """Hyperbolic tangent."""
    code = ACT_TANH


class ReLU(_Activation):
    """max(0, x)."""
    code = ACT_RELU
    default_init = "he"


class LeakyReLU(_Activation):
    """x for x > 0, negative_slope * x otherwise (0 <= negative_slope)."""
    code = ACT_LEAKY
    default_init = "he"

    def __init__(self, negative_slope=0.01):
        negative_slope = float(negative_slope)
        if not (0.0 <= negative_slope) or not math.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU: negative_slope must be finite and >= 0, got {negative_slope}")
        self.param = self.negative_slope = negative_slope

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Softmax(_Activation):
    """Softmax over the features of each example."""
    code = ACT_SOFTMAX


class Dropout(Layer):
    """Zero each input unit with probability ``p`` during training.

    ``mode="inverted"`` (PyTorch's): surviving units are scaled by 1/(1-p) in training,
    inference is the identity. ``mode="classic"`` (the lecture's): no scaling in training,
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

    def extra_repr(self):
        return f"p={self.p}" + (", mode='classic'" if self.mode == "classic" else "")


def init_dense(layer, rng, scheme):
    """Fill a placed Dense layer's weight and bias in place by ``scheme``."""
    fan_in, fan_out = layer.in_features, layer.out_features
    W, b = layer.weight, layer.bias
    shape = W.shape
    if scheme == "zeros":
        W[...] = 0
    elif scheme == "xavier":       # Glorot uniform, gain 1
        a = math.sqrt(6.0 / (fan_in + fan_out))
        W[...] = rng.uniform(-a, a, size=shape)
    elif scheme == "he":           # Kaiming normal, fan_in, gain sqrt(2)
        W[...] = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
    elif scheme == "lecun":        # LeCun normal
        W[...] = rng.normal(0.0, math.sqrt(1.0 / fan_in), size=shape)
    elif scheme == "torch":        # nn.Linear.reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        a = 1.0 / math.sqrt(fan_in)
        W[...] = rng.uniform(-a, a, size=shape)
    if b is not None:
        if scheme == "torch":
            a = 1.0 / math.sqrt(fan_in)
            b[...] = rng.uniform(-a, a, size=b.shape)
        else:
            b[...] = 0
