"""Convolution, pooling, BatchNorm2d and Dropout2d with PyTorch's names, arguments and layouts.

Examples are ``(C, L)`` (1-D) or ``(C, H, W)`` (2-D) per row, as PyTorch's ``(N, C, L)`` and
``(N, C, H, W)``; the core runs 1-D layers as 2-D ones of height 1.
"""
import math

from .base import INITS, Layer, check_float, check_int
from .norm import BatchNorm1d


def _tuple(v, n, owner, name, minimum):
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(vals) != n:
        raise ValueError(f"{owner}: {name} must be an int or {n} ints, got {v!r}")
    return tuple(check_int(x, owner, name, minimum) for x in vals)


def _out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class _ConvNd(Layer):
    _views = ("weight", "bias")
    dims = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, init=None):
        owner, n = type(self).__name__, self.dims
        self.in_channels = check_int(in_channels, owner, "in_channels")
        self.out_channels = check_int(out_channels, owner, "out_channels")
        self.kernel_size = _tuple(kernel_size, n, owner, "kernel_size", 1)
        self.stride = _tuple(stride, n, owner, "stride", 1)
        self.dilation = _tuple(dilation, n, owner, "dilation", 1)
        self.groups = check_int(groups, owner, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{owner}: in_channels ({self.in_channels}) and out_channels ({self.out_channels}) "
                             f"must be divisible by groups ({self.groups})")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{owner}: padding must be an int, {n} ints, 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1,) * n:
                raise ValueError(f"{owner}: padding='same' needs stride 1 (as in PyTorch), got {self.stride}")
            self.padding = padding
        else:
            self.padding = _tuple(padding, n, owner, "padding", 0)
        if init is not None and init not in INITS:
            raise ValueError(f"{owner}: init must be one of {INITS}, got {init!r}")
        self.use_bias = bool(bias)
        self.init = init
        self.weight = self.bias = None

    # ------------------------------------------------------------ shapes
    def pads(self):
        """Leading padding per dimension (for 'same' the extra one of an odd total goes after, as
        PyTorch does)."""
        if self.padding == "valid":
            return (0,) * self.dims
        if self.padding == "same":
            return tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))
        return self.padding

    def _spatial(self, in_shape):
        owner = type(self).__name__
        if len(in_shape) != self.dims + 1 or in_shape[0] != self.in_channels:
            want = "(C, L)" if self.dims == 1 else "(C, H, W)"
            raise ValueError(f"{owner} expects examples shaped {want} with C = {self.in_channels}, got shape "
                             f"{tuple(in_shape)}" + ("; pass input_shape= to Sequential" if len(in_shape) == 1 else ""))
        size = tuple(in_shape[1:])
        if self.padding == "same":
            out = size
        else:
            out = tuple(_out_size(n, k, s, p, d) for n, k, s, p, d in
                        zip(size, self.kernel_size, self.stride, self.pads(), self.dilation))
        if min(out) < 1:
            raise ValueError(f"{owner}: input of spatial size {size} is smaller than the kernel "
                             f"{self.kernel_size} (dilation {self.dilation}, padding {self.padding})")
        return size, out

    def output_shape(self, in_shape):
        return (self.out_channels,) + self._spatial(in_shape)[1]

    def geometry(self, in_shape):
        """The core's 17 geometry values (see fastnn/_core/conv.pxi), 1-D as height 1."""
        size, out = self._spatial(in_shape)
        pad = self.pads()
        if self.dims == 1:
            size, out, pad = (1,) + size, (1,) + out, (0,) + pad
        k = self.kernel_size if self.dims == 2 else (1,) + self.kernel_size
        s = self.stride if self.dims == 2 else (1,) + self.stride
        d = self.dilation if self.dims == 2 else (1,) + self.dilation
        return [self.in_channels, size[0], size[1], self.out_channels, k[0], k[1], s[0], s[1], pad[0], pad[1],
                d[0], d[1], self.groups, out[0], out[1], 0, 0]

    def param_shapes(self, in_shape=None):
        out = [("weight", (self.out_channels, self.in_channels // self.groups) + self.kernel_size)]
        if self.use_bias:
            out.append(("bias", (self.out_channels,)))
        return out

    def fans(self):
        k = math.prod(self.kernel_size)
        return self.in_channels // self.groups * k, self.out_channels * k

    def n_params(self):
        return sum(math.prod(s) for _, s in self.param_shapes())

    def get_config(self):
        return {"type": type(self).__name__, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.use_bias, "init": self.init}

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding!r}")
        if self.dilation != (1,) * self.dims:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + ("" if self.use_bias else ", bias=False") + (f", init={self.init!r}" if self.init else "")


class Conv1d(_ConvNd):
    """1-D convolution (PyTorch's ``nn.Conv1d``): examples ``(C_in, L)`` -> ``(C_out, L_out)``;
    ``weight`` ``(C_out, C_in/groups, k)``, ``bias`` ``(C_out,)``. ``padding`` is an int, ``"same"``
    (stride 1) or ``"valid"``; ``init`` as for Dense with fan_in = C_in/groups x k."""
    dims = 1


class Conv2d(_ConvNd):
    """2-D convolution (PyTorch's ``nn.Conv2d``): examples ``(C_in, H, W)`` -> ``(C_out, H_out, W_out)``;
    ``weight`` ``(C_out, C_in/groups, kh, kw)``. ``kernel_size``, ``stride``, ``padding``, ``dilation``
    take an int or a pair; ``padding`` also ``"same"`` (stride 1) or ``"valid"``."""
    dims = 2


class _PoolNd(Layer):
    dims = 2
    mode = 0

    def __init__(self, kernel_size, stride=None, padding=0):
        owner, n = type(self).__name__, self.dims
        self.kernel_size = _tuple(kernel_size, n, owner, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _tuple(stride, n, owner, "stride", 1)
        self.padding = _tuple(padding, n, owner, "padding", 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{owner}: padding {self.padding} must be at most half of kernel_size "
                             f"{self.kernel_size} (as in PyTorch)")

    def _spatial(self, in_shape):
        owner = type(self).__name__
        if len(in_shape) != self.dims + 1:
            want = "(C, L)" if self.dims == 1 else "(C, H, W)"
            raise ValueError(f"{owner} expects examples shaped {want}, got shape {tuple(in_shape)}")
        size = tuple(in_shape[1:])
        out = tuple(_out_size(s, k, st, p, 1) for s, k, st, p in zip(size, self.kernel_size, self.stride,
                                                                       self.padding))
        if min(out) < 1:
            raise ValueError(f"{owner}: input of spatial size {size} is smaller than the window {self.kernel_size}")
        return size, out

    def output_shape(self, in_shape):
        return (in_shape[0],) + self._spatial(in_shape)[1]

    def geometry(self, in_shape):
        size, out = self._spatial(in_shape)
        k, s, p = self.kernel_size, self.stride, self.padding
        if self.dims == 1:
            size, out, k, s, p = (1,) + size, (1,) + out, (1,) + k, (1,) + s, (0,) + p
        return [in_shape[0], size[0], size[1], in_shape[0], k[0], k[1], s[0], s[1], p[0], p[1], 1, 1, 1,
                out[0], out[1], self.mode, int(getattr(self, "count_include_pad", False))]

    def get_config(self):
        return {"type": type(self).__name__, "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool1d(_PoolNd):
    """Max over windows of each channel (PyTorch's ``nn.MaxPool1d``; ``stride`` defaults to
    ``kernel_size``; padding counts as -inf)."""
    dims = 1


class MaxPool2d(_PoolNd):
    """Max over windows of each channel (PyTorch's ``nn.MaxPool2d``)."""


class _AvgPoolNd(_PoolNd):
    mode = 1

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def get_config(self):
        return dict(super().get_config(), count_include_pad=self.count_include_pad)


class AvgPool1d(_AvgPoolNd):
    """Mean over windows of each channel (PyTorch's ``nn.AvgPool1d``; ``count_include_pad=True``
    divides by the padded window size)."""
    dims = 1


class AvgPool2d(_AvgPoolNd):
    """Mean over windows of each channel (PyTorch's ``nn.AvgPool2d``)."""


class _AdaptiveAvgPoolNd(Layer):
    dims = 2

    def __init__(self, output_size):
        self.output_size = _tuple(output_size, self.dims, type(self).__name__, "output_size", 1)

    def output_shape(self, in_shape):
        if len(in_shape) != self.dims + 1:
            want = "(C, L)" if self.dims == 1 else "(C, H, W)"
            raise ValueError(f"{type(self).__name__} expects examples shaped {want}, got shape {tuple(in_shape)}")
        return (in_shape[0],) + self.output_size

    def geometry(self, in_shape):
        self.output_shape(in_shape)
        size, out = tuple(in_shape[1:]), self.output_size
        if self.dims == 1:
            size, out = (1,) + size, (1,) + out
        return [in_shape[0], size[0], size[1], in_shape[0], 1, 1, 1, 1, 0, 0, 1, 1, 1, out[0], out[1], 2, 0]

    def get_config(self):
        return {"type": type(self).__name__, "output_size": list(self.output_size)}

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Mean over ``output_size`` windows spanning each channel (PyTorch's ``nn.AdaptiveAvgPool1d``;
    ``1`` is global average pooling)."""
    dims = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Mean over an ``output_size`` grid of windows (PyTorch's ``nn.AdaptiveAvgPool2d``)."""


class BatchNorm2d(BatchNorm1d):
    """Batch normalization per channel over the batch and the spatial positions (PyTorch's
    ``nn.BatchNorm2d``): examples ``(C, H, W)``; otherwise as ``BatchNorm1d``."""

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.num_features:
            raise ValueError(f"BatchNorm2d expects examples shaped (C, H, W) with C = {self.num_features}, "
                             f"got shape {tuple(in_shape)}")
        return tuple(in_shape)


class Dropout2d(Layer):
    """Zero whole channels of each example with probability ``p`` in training, scaling the kept ones
    by 1/(1-p) (PyTorch's ``nn.Dropout2d``); the identity in inference. Examples ``(C, H, W)`` or
    ``(C, L)``."""

    def __init__(self, p=0.5):
        self.p = check_float(p, "Dropout2d", "p", 0, 1)
        if self.p >= 1:
            raise ValueError(f"Dropout2d: p must be in [0, 1), got {p}")
        self.mode = "inverted"

    @property
    def code(self):
        from .base import DROP_INVERTED

        return DROP_INVERTED

    def output_shape(self, in_shape):
        if len(in_shape) < 2:
            raise ValueError(f"Dropout2d expects examples shaped (C, H, W) or (C, L), got shape {tuple(in_shape)}")
        return tuple(in_shape)

    def get_config(self):
        return {"type": "Dropout2d", "p": self.p}

    def extra_repr(self):
        return f"p={self.p}"
