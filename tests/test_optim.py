"""Optimizers: trajectories against float64 references written from the formulas
and against torch.optim; state round-trips; argument checks."""
import numpy as np
import pytest

import fastnn as fn
import reference as ref


class RefOpt:
    """The update rules of torch.optim, in float64 NumPy, one array per parameter."""

    def __init__(self, kind, **h):
        self.kind, self.h, self.t, self.s = kind, h, 0, {}

    def step(self, params, grads):
        self.t += 1
        t, h = self.t, self.h
        for i, (p, g) in enumerate(zip(params, grads)):
            st = self.s.setdefault(i, {})
            g = g + h.get("weight_decay", 0) * p if self.kind != "adamw" else g.copy()
            if self.kind == "sgd":
                mom = h.get("momentum", 0)
                if mom:
                    b = g.copy() if t == 1 else mom * st["b"] + (1 - h.get("dampening", 0)) * g
                    st["b"] = b
                    g = g + mom * b if h.get("nesterov") else b
                p -= h["lr"] * g
            elif self.kind in ("adam", "adamw"):
                b1, b2 = h.get("betas", (0.9, 0.999))
                if self.kind == "adamw":
                    p *= 1 - h["lr"] * h.get("weight_decay", 1e-2)
                m = st.get("m", 0) * b1 + (1 - b1) * g
                v = st.get("v", 0) * b2 + (1 - b2) * g * g
                st["m"], st["v"] = m, v
                if h.get("amsgrad"):
                    st["vmax"] = np.maximum(st.get("vmax", 0), v)
                    v = st["vmax"]
                mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
                p -= h["lr"] * mhat / (np.sqrt(vhat) + h.get("eps", 1e-8))
            elif self.kind == "adagrad":
                s = st.get("sum", h.get("initial_accumulator_value", 0.0)) + g * g
                st["sum"] = s
                clr = h["lr"] / (1 + (t - 1) * h.get("lr_decay", 0))
                p -= clr * g / (np.sqrt(s) + h.get("eps", 1e-10))
            elif self.kind == "rmsprop":
                a, eps = h.get("alpha", 0.99), h.get("eps", 1e-8)
                sq = st.get("sq", 0) * a + (1 - a) * g * g
                st["sq"] = sq
                if h.get("centered"):
                    ga = st.get("ga", 0) * a + (1 - a) * g
                    st["ga"] = ga
                    avg = np.sqrt(sq - ga * ga) + eps
                else:
                    avg = np.sqrt(sq) + eps
                if h.get("momentum", 0) > 0:
                    st["b"] = st.get("b", 0) * h["momentum"] + g / avg
                    p -= h["lr"] * st["b"]
                else:
                    p -= h["lr"] * g / avg


CASES = [
    ("sgd", fn.SGD, dict(lr=0.1)),
    ("sgd", fn.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd", fn.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    ("sgd", fn.SGD, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    ("adam", fn.Adam, dict(lr=1e-2)),
    ("adam", fn.Adam, dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True)),
    ("adamw", fn.AdamW, dict(lr=1e-2)),
    ("adamw", fn.AdamW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("adagrad", fn.Adagrad, dict(lr=0.1)),
    ("adagrad", fn.Adagrad, dict(lr=0.1, lr_decay=0.05, weight_decay=1e-2, initial_accumulator_value=0.1)),
    ("rmsprop", fn.RMSprop, dict(lr=1e-2)),
    ("rmsprop", fn.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True, weight_decay=1e-2)),
]
IDS = [f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)]


def _problem(dtype="float64"):
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(41, 9)), rng.integers(0, 4, 41)
    m = fn.Sequential(fn.Dense(9, 13), fn.Tanh(), fn.Dense(13, 4), dtype=dtype, seed=1)
    return m, X, y


@pytest.mark.parametrize("kind,cls,kw", CASES, ids=IDS)
def test_trajectory_matches_float64_reference(kind, cls, kw):
    m, X, y = _problem()
    spec = ref.model_spec(m)
    params = [p.copy() for w, b, _, _ in spec for p in (w, b)]
    opt, ropt = cls(**kw), RefOpt(kind, **kw)
    for _ in range(25):
        m.train_step(X, y, fn.CrossEntropy(), opt)
        cur = [(params[2 * i], params[2 * i + 1], a, s) for i, (_, _, a, s) in enumerate(spec)]
        _, grads = ref.loss_and_grad(cur, X, y, "ce")
        ropt.step(params, grads)
    for got, want in zip(m.parameters(), params):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind,cls,kw", CASES, ids=IDS)
def test_trajectory_matches_torch(kind, cls, kw):
    torch = pytest.importorskip("torch")
    m, X, y = _problem("float32")
    tm = torch.nn.Sequential(torch.nn.Linear(9, 13), torch.nn.Tanh(), torch.nn.Linear(13, 4))
    tm.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    topt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
            "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}[kind](tm.parameters(), **kw)
    opt = cls(**kw)
    Xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    for _ in range(20):
        m.train_step(X, y, fn.CrossEntropy(), opt)
        topt.zero_grad()
        torch.nn.functional.cross_entropy(tm(Xt), yt).backward()
        topt.step()
    for got, want in zip(m.parameters(), tm.parameters()):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("kind,cls,kw", CASES, ids=IDS)
def test_single_updates_match_torch_to_float32_rounding(kind, cls, kw):
    """Given the same gradients, float32 steps equal torch's up to its fused multiply-adds."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    m = fn.Sequential(fn.Dense(30, 20), seed=0)
    opt = cls(**kw)
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in m.parameters()]
    topt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
            "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}[kind](tp, **kw)
    for _ in range(3):
        grads = [rng.normal(size=p.shape).astype(np.float32) for p in m.parameters()]
        opt.step(m, grads)
        for p, g in zip(tp, grads):
            p.grad = torch.tensor(g)
        topt.step()
    for got, want in zip(m.parameters(), tp):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("kind,cls,kw", CASES, ids=IDS)
def test_state_dict_round_trip_resumes_exactly(kind, cls, kw):
    m, X, y = _problem("float32")
    opt = cls(**kw)
    for _ in range(5):
        m.train_step(X, y, fn.CrossEntropy(), opt)
    saved_params, saved_opt = m.state_dict(), opt.state_dict()
    for _ in range(5):
        m.train_step(X, y, fn.CrossEntropy(), opt)
    expect = m._params.copy()
    m2, _, _ = _problem("float32")
    m2.load_state_dict(saved_params)
    opt2 = cls(lr=999.0)
    opt2.load_state_dict(saved_opt)
    for _ in range(5):
        m2.train_step(X, y, fn.CrossEntropy(), opt2)
    np.testing.assert_array_equal(m2._params, expect)


@pytest.mark.parametrize("make,match", [
    (lambda: fn.SGD(lr=-1), "learning rate"),
    (lambda: fn.SGD(lr=0.1, momentum=-0.5), "momentum"),
    (lambda: fn.SGD(lr=0.1, nesterov=True), "Nesterov"),
    (lambda: fn.Adam(betas=(1.0, 0.999)), "beta parameter at index 0"),
    (lambda: fn.Adam(betas=(0.9, -0.1)), "beta parameter at index 1"),
    (lambda: fn.Adam(eps=-1), "epsilon"),
    (lambda: fn.AdamW(weight_decay=-1), "weight_decay"),
    (lambda: fn.Adagrad(lr_decay=-1), "lr_decay"),
    (lambda: fn.RMSprop(alpha=-0.1), "alpha"),
    (lambda: fn.SGD(lr=float("nan")), "learning rate"),
])
def test_invalid_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_optimizer_refuses_a_different_model():
    opt = fn.Adam()
    X, y = np.zeros((4, 3)), np.zeros(4, int)
    fn.Sequential(fn.Dense(3, 2)).train_step(X, y, fn.CrossEntropy(), opt)
    with pytest.raises(ValueError, match="another model"):
        fn.Sequential(fn.Dense(3, 5)).train_step(X, y, fn.CrossEntropy(), opt)
