"""The layer base class, activation and dropout codes shared with the compiled core."""
import math

import numpy as np

INITS = ("xavier", "he", "lecun", "torch", "zeros")

# activation codes of the compiled core
ACT_IDENTITY, ACT_SIGMOID, ACT_TANH, ACT_RELU, ACT_LEAKY, ACT_SOFTMAX = range(6)
DROP_NONE, DROP_INVERTED, DROP_CLASSIC = range(3)


def check_int(v, owner, name, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{owner}: {name} must be an int >= {minimum}, got {v!r}")
    if v < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {v}")
    return int(v)


def check_float(v, owner, name, lo=None, hi=None, lo_open=False):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: {name} must be a number, got {v!r}") from None
    if not math.isfinite(f) or (lo is not None and (f <= lo if lo_open else f < lo)) or (hi is not None and f > hi):
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'}]"
        raise ValueError(f"{owner}: {name} must be finite and in {rng}, got {v!r}")
    return f


class Layer:
    """Base of all layers: configuration, shapes and (once placed in a model) parameter views.

    A layer holds no storage until a ``Sequential`` places it; then the arrays named by
    ``param_shapes`` (and ``buffer_shapes``) are attributes viewing the model's flat buffers.
    """

    #: attributes that are views into a model's buffers (not pickled with the layer)
    _views = ()

    def param_shapes(self, in_shape):
        """``[(name, shape)]`` of the trainable parameters, in order (PyTorch's names)."""
        return []

    def buffer_shapes(self, in_shape):
        """``[(name, shape)]`` of the float buffers (running statistics)."""
        return []

    def output_shape(self, in_shape):
        """Per-example output shape for a per-example input shape; ValueError if it does not fit."""
        return tuple(in_shape)

    def children(self):
        """``[(name, layer)]`` of the layers inside this one (containers)."""
        return []

    def get_config(self):
        """The constructor's arguments as JSON-ready data (``{"type": name, ...}``)."""
        return {"type": type(self).__name__}

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in self._views:
            state[k] = None
        return state
