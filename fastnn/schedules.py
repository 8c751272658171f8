"""Learning-rate schedules: closed-form functions of the optimizer step t (0-based).

``fit(schedule=...)`` evaluates an epoch's rates into one array that the compiled
core reads, so a per-iteration schedule costs no Python call per step.
``ReduceOnPlateau`` is the exception: it acts once per epoch on a monitored value.
"""
import math

import numpy as np


def _pos(name, v, strict=True):
    v = float(v)
    if not math.isfinite(v) or (v <= 0 if strict else v < 0):
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {v}")
    return v


def _steps(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int (steps), got {v!r}")
    return int(v)


class Schedule:
    """A learning rate as a function of the step t = 0, 1, 2, ..."""

    def rates(self, t0, n):
        """Rates of steps t0 .. t0 + n - 1 as a float64 array."""
        return self.rates_at(np.arange(t0, t0 + n, dtype=np.float64))

    def __call__(self, t):
        return float(self.rates_at(np.array([float(t)]))[0])

    def rates_at(self, t):
        """Rates at the steps ``t`` (a float64 array); what a schedule defines."""
        raise NotImplementedError


class Constant(Schedule):
    """λ_t = lr."""

    def __init__(self, lr):
        self.lr = _pos("lr", lr, strict=False)

    def rates_at(self, t):
        return np.full(t.shape, self.lr)

    def __repr__(self):
        return f"Constant({self.lr})"


class Linear(Schedule):
    """A linear schedule: λ_t = (1 − α_t) high + α_t low, α_t = min(t / t_max, 1).

    ``high`` need not exceed ``low``: Linear(low, high, n) is a linear warm-up.
    """

    def __init__(self, high, low, t_max):
        self.high = _pos("high", high, strict=False)
        self.low = _pos("low", low, strict=False)
        self.t_max = _steps("t_max", t_max)

    def rates_at(self, t):
        a = np.minimum(t / self.t_max, 1.0)
        return (1 - a) * self.high + a * self.low

    def __repr__(self):
        return f"Linear(high={self.high}, low={self.low}, t_max={self.t_max})"


class Step(Schedule):
    """λ_t = lr · gamma^floor(t / step_size) (torch's StepLR, counted in steps)."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = _pos("lr", lr, strict=False)
        self.step_size = _steps("step_size", step_size)
        self.gamma = _pos("gamma", gamma)

    def rates_at(self, t):
        return self.lr * self.gamma ** np.floor(t / self.step_size)


class Cosine(Schedule):
    """λ_t = lr_min + (lr_max − lr_min)(1 + cos(π min(t, t_max) / t_max)) / 2, then lr_min."""

    def __init__(self, lr_max, t_max, lr_min=0.0):
        self.lr_max = _pos("lr_max", lr_max, strict=False)
        self.lr_min = _pos("lr_min", lr_min, strict=False)
        self.t_max = _steps("t_max", t_max)

    def rates_at(self, t):
        tt = np.minimum(t, self.t_max)
        return self.lr_min + (self.lr_max - self.lr_min) * (1 + np.cos(np.pi * tt / self.t_max)) / 2


class OneCycle(Schedule):
    """torch.optim.lr_scheduler.OneCycleLR's rate: from max_lr/div_factor up to max_lr over
    pct_start of total_steps, then down to max_lr/(div_factor·final_div_factor)."""

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos", div_factor=25.0,
                 final_div_factor=1e4, three_phase=False):
        self.max_lr = _pos("max_lr", max_lr)
        self.total_steps = _steps("total_steps", total_steps)
        if not 0 < pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.pct_start, self.anneal_strategy = float(pct_start), anneal_strategy
        self.div_factor = _pos("div_factor", div_factor)
        self.final_div_factor = _pos("final_div_factor", final_div_factor)
        self.three_phase = bool(three_phase)

    def _phases(self):
        init = self.max_lr / self.div_factor
        low = init / self.final_div_factor
        up = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            return [(up, init, self.max_lr), (2 * up, self.max_lr, init), (self.total_steps - 1, init, low)]
        return [(up, init, self.max_lr), (self.total_steps - 1, self.max_lr, low)]

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (np.cos(np.pi * pct) + 1)
        return (end - start) * pct + start

    def rates_at(self, t):
        out = np.empty(t.shape)
        t = np.minimum(t, self.total_steps - 1)
        start_step = 0.0
        done = np.zeros(t.shape, bool)
        phases = self._phases()
        for i, (end_step, a, b) in enumerate(phases):
            sel = ~done & ((t <= end_step) | (i == len(phases) - 1))
            out[sel] = self._anneal(a, b, (t[sel] - start_step) / (end_step - start_step))
            done |= sel
            start_step = end_step
        return out


class Warmup(Schedule):
    """``schedule`` scaled by a linear ramp from start_factor to 1 over warmup_steps."""

    def __init__(self, schedule, warmup_steps, start_factor=0.0):
        if not isinstance(schedule, Schedule):
            raise TypeError("Warmup wraps a fastnn schedule, e.g. Warmup(Cosine(0.1, 1000), 100)")
        self.schedule = schedule
        self.warmup_steps = _steps("warmup_steps", warmup_steps)
        if not 0 <= start_factor <= 1:
            raise ValueError(f"start_factor must be in [0, 1], got {start_factor}")
        self.start_factor = float(start_factor)

    def rates_at(self, t):
        ramp = self.start_factor + (1 - self.start_factor) * np.minimum(t / self.warmup_steps, 1.0)
        return self.schedule.rates_at(t) * ramp


class Sequence(Schedule):
    """Schedules one after another: ``Sequence((s1, n1), (s2, n2), s3)`` runs s1 for n1 steps,
    then s2 for n2 (each from its own t = 0), then s3 for ever. A lower rate at the
    start and at the end is ``Sequence((Linear(lo, hi, n), n), (Constant(hi), m), Linear(hi, lo, k))``."""

    def __init__(self, *pieces):
        if not pieces:
            raise ValueError("Sequence needs at least one schedule")
        self.pieces = []
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if isinstance(piece, Schedule):
                if not last:
                    raise ValueError("every schedule but the last needs a length: (schedule, n_steps)")
                self.pieces.append((piece, None))
            else:
                sched, n = piece
                if not isinstance(sched, Schedule):
                    raise TypeError(f"piece {i} is not a fastnn schedule: {sched!r}")
                self.pieces.append((sched, _steps(f"length of piece {i}", n)))

    def rates_at(self, t):
        out = np.empty(t.shape)
        start = 0.0
        done = np.zeros(t.shape, bool)
        for sched, n in self.pieces:
            sel = ~done if n is None else ~done & (t < start + n)
            out[sel] = sched.rates_at(t[sel] - start)
            done |= sel
            if n is not None:
                start += n
        if not done.all():           # past the end of a fully bounded sequence: hold the last rate
            last, n = self.pieces[-1]
            out[~done] = last.rates_at(np.array([float(n - 1)]))[0]
        return out


class ReduceOnPlateau:
    """Multiply the optimizer's rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs (torch's ReduceLROnPlateau: threshold, cooldown, min_lr, eps)."""

    def __init__(self, monitor="val_loss", mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.monitor, self.mode, self.factor = monitor, mode, float(factor)
        self.patience, self.threshold, self.threshold_mode = int(patience), float(threshold), threshold_mode
        self.cooldown, self.min_lr, self.eps = int(cooldown), float(min_lr), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _better(self, a):
        if self.mode == "min":
            ref = self.best * (1 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold
            return a < ref
        ref = self.best * (1 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold
        return a > ref

    def step(self, value, optimizer):
        """Account one epoch's value; lower ``optimizer.lr`` when on a plateau."""
        value = float(value)
        if self._better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new = max(optimizer.lr * self.factor, self.min_lr)
            if optimizer.lr - new > self.eps:
                optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
