"""Optimizers: hyper-parameters and state buffers; each step is one compiled,
fused pass over the model's flat parameter buffer (parallel over fixed blocks,
so the same on any thread count). Update rules, defaults and argument checks are
those of ``torch.optim`` (single-tensor path), so a step can be checked against it.

An optimizer binds to the first model it steps and keeps its state (momentum,
moments) in buffers that mirror the model's parameter layout.
"""
import numpy as np

from ._core import _engine
from ._util import aligned_zeros

OPT_NONE, OPT_SGD, OPT_ADAM, OPT_ADAGRAD, OPT_RMSPROP = range(5)


def _check_lr(lr):
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise TypeError(f"Invalid learning rate: {lr!r} (a non-negative number)") from None
    if not lr >= 0.0 or not np.isfinite(lr):
        raise ValueError(f"Invalid learning rate: {lr}")
    return lr


def _check(name, value, ok):
    value = float(value)
    if not ok(value) or not np.isfinite(value):
        raise ValueError(f"Invalid {name} value: {value}")
    return value


class Optimizer:
    """Base: ``lr``, a step counter and state buffers mirroring the parameters."""

    code = OPT_NONE
    n_state = 0
    #: names of the state buffers (torch's), in the order of the rows of ``state``
    state_names = ()

    def __init__(self, lr):
        self.lr = _check_lr(lr)
        self.step_count = 0
        self.state = None
        self._model_key = None

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.state is not None:
            self.state = np.array(self.state)      # writable, even from a memory-mapped load
        self._model_key = None

    def hyper(self):
        """Hyper-parameters as the compiled kernel reads them."""
        return np.zeros(0)

    def reset(self):
        """Forget the state buffers and the step count: the next step starts afresh."""
        self.state, self._model_key, self.step_count = None, None, 0

    def _init_state(self, state):
        pass

    def bind(self, model):
        """Allocate (or check) state for ``model``; called by fit / train_step."""
        key = (id(model), model.n_params, model.dtype)
        if self.state is not None and self._model_key is None:
            # loaded from a state_dict: adopt it if it fits this model
            if self.state.shape != (self.n_state, model.n_params):
                raise ValueError(f"loaded optimizer state has shape {self.state.shape}, the model needs "
                                 f"{(self.n_state, model.n_params)}")
            self.state = np.ascontiguousarray(self.state, dtype=model.dtype)
            self._model_key = key
        if self.state is None:
            self.state = aligned_zeros((self.n_state, model.n_params), model.dtype)
            self._init_state(self.state)
            self._model_key = key
        elif self._model_key != key:
            if self.state.shape != (self.n_state, model.n_params) or self.state.dtype != model.dtype:
                raise ValueError(f"{type(self).__name__} holds state for another model "
                                 f"({self.state.shape[1]} parameters, {self.state.dtype}); "
                                 "create a new optimizer for this model")
            self._model_key = key
        return self.state

    def step(self, model, grads=None, threads=None):
        """Apply one update to ``model`` from ``grads`` (default: the model's last gradients)."""
        from ._config import resolve_threads

        state = self.bind(model)
        g = model.flat_grads if grads is None else np.ascontiguousarray(
            np.concatenate([np.ravel(x) for x in grads]) if isinstance(grads, (list, tuple)) else grads,
            dtype=model.dtype)
        if g.shape != (model.n_params,):
            raise ValueError(f"grads must hold {model.n_params} values (the model's parameters)")
        _engine.optimizer_step(self.code, model.flat_params, g, state, self.hyper(), self.lr,
                               self.step_count + 1, resolve_threads(threads))
        self.step_count += 1

    def state_dict(self):
        """Hyper-parameters, step count and state buffers (copies)."""
        d = {"type": type(self).__name__, "lr": self.lr, "step": self.step_count,
             "hyper": self.hyper_dict()}
        if self.state is not None:
            for i in range(self.state.shape[0]):
                d[self.state_names[i]] = self.state[i].copy()
        return d

    def load_state_dict(self, d):
        """Restore what ``state_dict`` returned; resumed steps then equal uninterrupted ones."""
        if d.get("type") != type(self).__name__:
            raise ValueError(f"state_dict is for {d.get('type')}, not {type(self).__name__}")
        self.lr = _check_lr(d["lr"])
        self.step_count = int(d["step"])
        for k, v in d.get("hyper", {}).items():
            setattr(self, k, v)
        names = self.state_names[:self.n_state]
        if names and all(n in d for n in names):
            arrs = [np.asarray(d[n]) for n in names]
            if len({a.shape for a in arrs}) != 1 or arrs[0].ndim != 1:
                raise ValueError("state_dict buffers must be 1-D arrays of one length")
            self.state = np.ascontiguousarray(np.stack(arrs))
            self._model_key = None
        elif names and any(n in d for n in names):
            raise ValueError(f"state_dict lacks some of {names}")
        else:
            self.state = None

    def hyper_dict(self):
        """The hyper-parameters beyond ``lr`` by name, as the constructor takes them."""
        return {}

    def __repr__(self):
        h = ", ".join(f"{k}={v!r}" for k, v in self.hyper_dict().items())
        return f"{type(self).__name__}(lr={self.lr}" + (f", {h})" if h else ")")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (v <- a v + g, W <- W - lr v).

    g = grad + weight_decay * W;  v = momentum * v + (1 - dampening) * g  (v = g on step 1);
    g = g + momentum * v if nesterov else v;  W = W - lr * g.
    """

    code = OPT_SGD

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = _check("momentum", momentum, lambda v: v >= 0)
        self.dampening = float(dampening)
        self.nesterov = bool(nesterov)
        self.weight_decay = _check("weight_decay", weight_decay, lambda v: v >= 0)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    @property
    def n_state(self):
        return 1 if self.momentum != 0 else 0

    state_names = ("momentum_buffer",)

    def hyper(self):
        return np.array([self.momentum, self.dampening, float(self.nesterov), self.weight_decay])

    def hyper_dict(self):
        return {"momentum": self.momentum, "dampening": self.dampening, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """Adam (Kingma & Ba), torch.optim.Adam's rule:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  (amsgrad: v_max = max(v_max, v))
    W = W - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps);  g includes weight_decay * W.
    """

    code = OPT_ADAM
    n_state = 3
    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(lr)
        b1, b2 = betas
        _check("beta parameter at index 0", b1, lambda v: 0 <= v < 1)
        _check("beta parameter at index 1", b2, lambda v: 0 <= v < 1)
        self.betas = (float(b1), float(b2))
        self.eps = _check("epsilon", eps, lambda v: v >= 0)
        self.weight_decay = _check("weight_decay", weight_decay, lambda v: v >= 0)
        self.amsgrad = bool(amsgrad)

    def hyper(self):
        return np.array([self.betas[0], self.betas[1], self.eps, self.weight_decay,
                         float(self.amsgrad), float(self._decoupled)])

    def hyper_dict(self):
        return {"betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                "amsgrad": self.amsgrad}


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): W = W (1 - lr wd) before the Adam step."""

    _decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(lr, betas, eps, weight_decay, amsgrad)


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad): s = s + g^2;  W = W - lr / (1 + (t-1) lr_decay) * g / (sqrt(s) + eps)."""

    code = OPT_ADAGRAD
    n_state = 1
    state_names = ("sum",)

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(lr)
        self.lr_decay = _check("lr_decay", lr_decay, lambda v: v >= 0)
        self.weight_decay = _check("weight_decay", weight_decay, lambda v: v >= 0)
        self.initial_accumulator_value = _check("initial_accumulator_value",
                                                initial_accumulator_value, lambda v: v >= 0)
        self.eps = _check("epsilon", eps, lambda v: v >= 0)

    def _init_state(self, state):
        state[0] = self.initial_accumulator_value

    def hyper(self):
        return np.array([self.lr_decay, self.eps, self.weight_decay, self.initial_accumulator_value])

    def hyper_dict(self):
        return {"lr_decay": self.lr_decay, "weight_decay": self.weight_decay,
                "initial_accumulator_value": self.initial_accumulator_value, "eps": self.eps}


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop): s = a s + (1 - a) g^2; centered subtracts the squared mean
    gradient; W = W - lr g / (sqrt(s) + eps), through a momentum buffer when momentum > 0."""

    code = OPT_RMSPROP
    n_state = 3
    state_names = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(lr)
        self.alpha = _check("alpha", alpha, lambda v: v >= 0)
        self.eps = _check("epsilon", eps, lambda v: v >= 0)
        self.weight_decay = _check("weight_decay", weight_decay, lambda v: v >= 0)
        self.momentum = _check("momentum", momentum, lambda v: v >= 0)
        self.centered = bool(centered)

    def hyper(self):
        return np.array([self.alpha, self.eps, self.momentum, float(self.centered), self.weight_decay])

    def hyper_dict(self):
        return {"alpha": self.alpha, "eps": self.eps, "weight_decay": self.weight_decay,
                "momentum": self.momentum, "centered": self.centered}


def check_optimizer(opt):
    if not isinstance(opt, Optimizer):
        raise TypeError(f"optimizer must be a fastnn optimizer such as fn.SGD(lr=0.01), got {opt!r}")
    return opt


def clip_grad_norm(grads, max_norm, threads=None):
    """Scale gradients in place so their global L2 norm is at most ``max_norm``; return the
    norm before clipping (torch.nn.utils.clip_grad_norm_'s rule: coef = max_norm / (norm + 1e-6),
    applied when below 1). ``grads`` is a list of arrays (as ``loss_and_grad`` returns) or one
    flat array."""
    from ._config import resolve_threads

    max_norm = float(max_norm)
    if not np.isfinite(max_norm) or max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    if (isinstance(grads, np.ndarray) and grads.ndim == 1 and grads.flags.c_contiguous
            and grads.dtype in (np.float32, np.float64) and grads.flags.writeable):
        return float(_engine.clip_grad_norm(grads, max_norm, resolve_threads(threads)))
    arrs = list(grads) if not isinstance(grads, np.ndarray) else [grads]
    for g in arrs:
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            raise TypeError("grads must be float NumPy arrays")
    norm = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in arrs)))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in arrs:
            g *= g.dtype.type(coef)
    return norm
