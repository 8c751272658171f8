"""Fully connected layers."""
import math

import numpy as np

from .base import INITS, Layer, check_int


class Dense(Layer):
    """Fully connected layer: ``y = x @ weight.T + bias``.

    Args:
        in_features: size of each input example.
        out_features: size of each output example.
        bias: learn an additive bias (default True).
        init: ``"xavier"``, ``"he"``, ``"lecun"``, ``"torch"`` or ``"zeros"``; by default chosen
            from the activation that follows (He for ReLU/LeakyReLU, Xavier otherwise).

    Shape: input ``(N, *, in_features)``, output ``(N, *, out_features)``: like torch's Linear it
    acts on the last dimension, e.g. on every step of a recurrent layer's ``(N, T, H)`` output.

    Attributes:
        weight: ``(out_features, in_features)`` view into the model's parameters.
        bias: ``(out_features,)`` view, or None.
    """

    _views = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True, init=None):
        self.in_features = check_int(in_features, "Dense", "in_features")
        self.out_features = check_int(out_features, "Dense", "out_features")
        if init is not None and init not in INITS:
            raise ValueError(f"Dense: init must be one of {INITS}, got {init!r}")
        self.use_bias = bool(bias)
        self.init = init
        self.weight = None
        self.bias = None

    def param_shapes(self, in_shape=None):
        out = [("weight", (self.out_features, self.in_features))]
        if self.use_bias:
            out.append(("bias", (self.out_features,)))
        return out

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if not in_shape or in_shape[-1] != self.in_features:
            raise ValueError(f"Dense expects {self.in_features} input features per example, "
                             f"got shape {in_shape}" +
                             ("; put fn.Flatten() before it" if len(in_shape) > 1 else ""))
        return in_shape[:-1] + (self.out_features,)

    def n_params(self):
        return self.out_features * (self.in_features + (1 if self.use_bias else 0))

    def fans(self):
        return self.in_features, self.out_features

    def get_config(self):
        return {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.use_bias, "init": self.init}

    def extra_repr(self):
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.use_bias}"
        return s + (f", init={self.init!r}" if self.init else "")


def init_weights(w_shape, b_shape, fans, rng, scheme):
    """Initial (weight, bias) in float64 by ``scheme``, for fans ``(fan_in, fan_out)``; bias None
    when ``b_shape`` is None."""
    fan_in, fan_out = fans
    W = np.zeros(w_shape)
    if scheme == "xavier":         # Glorot uniform, gain 1
        a = math.sqrt(6.0 / (fan_in + fan_out))
        W[...] = rng.uniform(-a, a, size=w_shape)
    elif scheme == "he":           # Kaiming normal, fan_in, gain sqrt(2)
        W[...] = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=w_shape)
    elif scheme == "lecun":        # LeCun normal
        W[...] = rng.normal(0.0, math.sqrt(1.0 / fan_in), size=w_shape)
    elif scheme == "torch":        # nn.Linear / nn.ConvNd.reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        a = 1.0 / math.sqrt(fan_in)
        W[...] = rng.uniform(-a, a, size=w_shape)
    b = None
    if b_shape is not None:
        b = np.zeros(b_shape)
        if scheme == "torch":
            a = 1.0 / math.sqrt(fan_in)
            b[...] = rng.uniform(-a, a, size=b_shape)
    return W, b
