"""Recurrent layers: RNN, LSTM and GRU with PyTorch's equations, gate order and parameter names."""
from .base import Layer, check_float, check_int

# cell codes of the compiled core
CELL_TANH, CELL_RELU, CELL_LSTM, CELL_GRU = range(4)


class RNNBase(Layer):
    """A stack of ``num_layers`` recurrent layers over inputs ``(N, T, input_size)``, batch first.

    Parameters are PyTorch's, per layer ``l``: ``weight_ih_l{l}`` ``(G*hidden, in)``,
    ``weight_hh_l{l}`` ``(G*hidden, hidden)``, ``bias_ih_l{l}`` and ``bias_hh_l{l}`` ``(G*hidden,)``,
    with G gates, so a state dict loads into ``torch.nn.RNN/LSTM/GRU(batch_first=True)``.
    Initial states are zero. Initialisation: every parameter U(-1/sqrt(hidden), 1/sqrt(hidden)).

    Shape: input ``(N, T, input_size)``; output ``(N, hidden_size)`` (the last step's hidden state
    of the top layer) or, with ``return_sequences=True``, ``(N, T, hidden_size)`` (every step's).
    """

    gates = 1
    _views = ()

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, dropout=0.0, return_sequences=False):
        name = type(self).__name__
        self.input_size = check_int(input_size, name, "input_size")
        self.hidden_size = check_int(hidden_size, name, "hidden_size")
        self.num_layers = check_int(num_layers, name, "num_layers")
        self.use_bias = bool(bias)
        self.dropout = check_float(dropout, name, "dropout", 0, 1)
        if self.dropout >= 1:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")
        self.return_sequences = bool(return_sequences)
        self._views = tuple(n for n, _ in self.param_shapes())
        for n in self._views:
            setattr(self, n, None)

    def param_shapes(self, in_shape=None):
        gh, h = self.gates * self.hidden_size, self.hidden_size
        out = []
        for l in range(self.num_layers):
            out += [(f"weight_ih_l{l}", (gh, self.input_size if l == 0 else h)), (f"weight_hh_l{l}", (gh, h))]
            if self.use_bias:
                out += [(f"bias_ih_l{l}", (gh,)), (f"bias_hh_l{l}", (gh,))]
        return out

    def layer_params(self, l):
        """The names of layer ``l``'s parameters, in order."""
        names = [f"weight_ih_l{l}", f"weight_hh_l{l}"]
        return names + ([f"bias_ih_l{l}", f"bias_hh_l{l}"] if self.use_bias else [])

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 2 or in_shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects per-example input (T, {self.input_size}) "
                             f"(steps, features), got shape {in_shape}")
        return (in_shape[0], self.hidden_size) if self.return_sequences else (self.hidden_size,)

    def n_params(self):
        return sum(int(s[0]) * (int(s[1]) if len(s) > 1 else 1) for _, s in self.param_shapes())

    def get_config(self):
        cfg = {"type": type(self).__name__, "input_size": self.input_size, "hidden_size": self.hidden_size,
               "num_layers": self.num_layers, "bias": self.use_bias, "dropout": self.dropout,
               "return_sequences": self.return_sequences}
        return cfg

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.use_bias:
            s += ", bias=False"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.return_sequences:
            s += ", return_sequences=True"
        return s


class RNN(RNNBase):
    """Elman RNN (``torch.nn.RNN``): ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``,
    ``act`` tanh or relu (``nonlinearity``). See ``RNNBase`` for shapes and parameters."""

    gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, dropout=0.0,
                 return_sequences=False):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, dropout, return_sequences)

    @property
    def cell(self):
        return CELL_TANH if self.nonlinearity == "tanh" else CELL_RELU

    def get_config(self):
        cfg = super().get_config()
        cfg["nonlinearity"] = self.nonlinearity
        return cfg

    def extra_repr(self):
        s = super().extra_repr()
        return s + (", nonlinearity='relu'" if self.nonlinearity == "relu" else "")


class LSTM(RNNBase):
    """LSTM (``torch.nn.LSTM``), gates (i, f, g, o) in that order of the weight rows:
    ``c_t = f*c_{t-1} + i*g``, ``h_t = o*tanh(c_t)``. See ``RNNBase`` for shapes and parameters."""

    gates = 4
    cell = CELL_LSTM


class GRU(RNNBase):
    """GRU (``torch.nn.GRU``), gates (r, z, n): ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``,
    ``h_t = (1-z)*n + z*h_{t-1}``. See ``RNNBase`` for shapes and parameters."""

    gates = 3
    cell = CELL_GRU
