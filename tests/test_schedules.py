"""Schedules against their closed forms and torch; clipping; the learning-rate search."""
import math

import numpy as np
import pytest

import fastnn as fn
from fastnn import schedules as S


def test_linear_is_the_lecture_formula():
    s = S.Linear(high=0.1, low=0.01, t_max=40)
    for t in range(0, 60):
        a = min(t / 40, 1.0)
        assert s(t) == pytest.approx((1 - a) * 0.1 + a * 0.01, rel=1e-15)
    np.testing.assert_allclose(s.rates(5, 50), [s(t) for t in range(5, 55)], rtol=1e-15)


def test_constant_step_cosine_closed_forms():
    assert np.all(S.Constant(0.3).rates(0, 7) == 0.3)
    st = S.Step(0.1, step_size=10, gamma=0.5)
    assert [st(t) for t in (0, 9, 10, 25)] == [0.1, 0.1, 0.05, 0.025]
    c = S.Cosine(0.1, t_max=100, lr_min=0.001)
    for t in (0, 13, 50, 100, 150):
        tt = min(t, 100)
        assert c(t) == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi * tt / 100)) / 2, rel=1e-14)


def test_warmup_and_sequence_compose():
    w = S.Warmup(S.Constant(0.1), warmup_steps=10, start_factor=0.0)
    assert w(0) == 0 and w(5) == pytest.approx(0.05) and w(10) == 0.1 and w(99) == 0.1
    seq = S.Sequence((S.Linear(0.001, 0.01, 10), 10), (S.Constant(0.01), 80), S.Linear(0.01, 0.001, 10))
    r = seq.rates(0, 110)
    assert r[0] == pytest.approx(0.001) and r[10] == 0.01 and r[89] == 0.01
    assert r[90] == 0.01 and r[95] == pytest.approx(0.0055) and r[100] == pytest.approx(0.001)
    assert r[105] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="length"):
        S.Sequence(S.Constant(1.0), S.Constant(2.0))


def _torch_rates(sched_fn, n, lr=0.1):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sch = sched_fn(torch.optim.lr_scheduler, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return np.array(out)


@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_matches_torch(three_phase, anneal):
    want = _torch_rates(lambda L, o: L.OneCycleLR(o, max_lr=0.5, total_steps=97, anneal_strategy=anneal,
                                                  three_phase=three_phase), 97)
    got = S.OneCycle(0.5, 97, anneal_strategy=anneal, three_phase=three_phase).rates(0, 97)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_step_and_cosine_match_torch():
    np.testing.assert_allclose(S.Step(0.1, 7, 0.3).rates(0, 40),
                               _torch_rates(lambda L, o: L.StepLR(o, 7, 0.3), 40), rtol=1e-12)
    np.testing.assert_allclose(S.Cosine(0.1, 30, 0.002).rates(0, 31),
                               _torch_rates(lambda L, o: L.CosineAnnealingLR(o, 30, 0.002), 31), rtol=1e-10)
    np.testing.assert_allclose(S.Linear(0.1 * 0.25, 0.1, 20).rates(0, 30),
                               _torch_rates(lambda L, o: L.LinearLR(o, 0.25, 1.0, 20), 30), rtol=1e-12)


def test_reduce_on_plateau_matches_torch():
    torch = pytest.importorskip("torch")
    vals = [1.0, 0.9, 0.95, 0.97, 0.99, 0.89, 0.9, 0.91, 0.92, 0.93, 0.5, 0.6, 0.7, 0.8, 0.9]
    p = torch.nn.Parameter(torch.zeros(1))
    topt = torch.optim.SGD([p], lr=0.1)
    tsch = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    opt = fn.SGD(lr=0.1)
    sch = S.ReduceOnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    for v in vals:
        tsch.step(v)
        sch.step(v, opt)
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-15)


def test_fit_uses_the_schedule_per_step_and_records_it():
    X, y = fn.data.load_digits()
    X, y = X[:320], y[:320]
    lin = S.Linear(0.1, 0.0, 20)
    m = fn.Sequential(fn.Dense(64, 10), seed=0)
    h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=99.0), epochs=3, batch_size=32,
              schedule=lin)
    assert h.history["lr"] == [lin(9), lin(19), lin(29)]
    # the same steps by hand, one train_step per batch with the scheduled rate
    m2 = fn.Sequential(fn.Dense(64, 10), seed=0)
    opt = fn.SGD(lr=0.0)
    from fastnn.data import epoch_order
    for ep in range(3):
        order = epoch_order(320, m2.seed, ep)
        for b in range(10):
            opt.lr = lin(ep * 10 + b)
            idx = order[b * 32:(b + 1) * 32]
            m2.train_step(X[idx], y[idx], fn.CrossEntropy(), opt)
    np.testing.assert_array_equal(m._params, m2._params)


def test_reduce_on_plateau_in_fit():
    X, y = fn.data.load_digits()
    opt = fn.SGD(lr=0.5)
    sch = S.ReduceOnPlateau(monitor="loss", factor=0.5, patience=0, threshold=10.0)   # never "improves"
    h = fn.Sequential(fn.Dense(64, 10), seed=0).fit(X, y, loss=fn.CrossEntropy(), optimizer=opt,
                                                     epochs=3, schedule=sch)
    assert h.history["lr"] == [0.5, 0.25, 0.125]
    assert opt.lr == 0.0625


# ---------------------------------------------------------------- clipping
def test_clip_grad_norm_matches_reference_and_torch():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(30, 20)), rng.normal(size=20)]
    ref = [g.copy() for g in grads]
    total = math.sqrt(sum(float(np.sum(g ** 2)) for g in ref))
    norm = fn.clip_grad_norm(grads, 2.0)
    assert norm == pytest.approx(total, rel=1e-14)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r * 2.0 / (total + 1e-6), rtol=1e-14)
    flat = np.concatenate([r.ravel() for r in ref]).astype(np.float32)
    assert fn.clip_grad_norm(flat, 2.0) == pytest.approx(total, rel=1e-6)
    np.testing.assert_allclose(np.linalg.norm(flat), 2.0, rtol=1e-5)
    small = [r * 1e-3 for r in ref]
    keep = [s.copy() for s in small]
    fn.clip_grad_norm(small, 2.0)
    for s, k in zip(small, keep):
        np.testing.assert_array_equal(s, k)
    torch = pytest.importorskip("torch")
    tp = [torch.nn.Parameter(torch.zeros(r.shape, dtype=torch.float64)) for r in ref]
    for p, r in zip(tp, ref):
        p.grad = torch.tensor(r)
    tn = torch.nn.utils.clip_grad_norm_(tp, 2.0)
    assert float(tn) == pytest.approx(total, rel=1e-12)
    mine = [r.copy() for r in ref]
    fn.clip_grad_norm(mine, 2.0)
    for p, g in zip(tp, mine):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("clip", [dict(clip_norm=0.5), dict(clip_value=0.01)])
def test_clipping_in_fit_equals_manual_steps(clip):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(64, 6)), rng.integers(0, 3, 64)
    mk = lambda: fn.Sequential(fn.Dense(6, 7), fn.Tanh(), fn.Dense(7, 3), dtype="float64", seed=0)
    a, b = mk(), mk()
    oa, ob = fn.SGD(lr=0.5, momentum=0.9), fn.SGD(lr=0.5, momentum=0.9)
    a.fit(X, y, loss=fn.CrossEntropy(), optimizer=oa, epochs=1, batch_size=64, shuffle=False, **clip)
    for _ in range(1):
        _, g = b.loss_and_grad(X, y, fn.CrossEntropy())
        if "clip_norm" in clip:
            fn.clip_grad_norm(g, clip["clip_norm"])
        else:
            g = [np.clip(x, -clip["clip_value"], clip["clip_value"]) for x in g]
        ob.step(b, g)
    np.testing.assert_allclose(a._params, b._params, rtol=1e-13, atol=1e-15)


def test_clipping_is_thread_invariant():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(500, 300)), rng.integers(0, 10, 500)
    out = []
    for t in (1, 2, 3):
        m = fn.Sequential(fn.Dense(300, 200), fn.ReLU(), fn.Dense(200, 10), seed=0)
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=2, batch_size=50,
              clip_norm=0.1, threads=t)
        out.append(m._params.copy())
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


# ---------------------------------------------------------------- find_lr
def _sweep_best(rates, steps=40):
    X, y = fn.data.load_digits()
    scores = []
    for lr in rates:
        m = fn.Sequential(fn.Dense(64, 32), fn.ReLU(), fn.Dense(32, 10), seed=0)
        from fastnn.lr_finder import _score, _steps_order, _train_steps
        yi, yf, sw, pw = m._targets(y, fn.CrossEntropy(), len(y))
        order = _steps_order(len(y), steps, 32, 0)
        losses, done = _train_steps(m, X, yi, yf, sw, pw, fn.CrossEntropy(), fn.SGD(lr=lr),
                                    np.full(steps, lr), 32, order, 0, 1)
        scores.append(_score(lr, losses, done, steps)["score"])
    return rates[int(np.argmax(scores))]


def test_find_lr_factor_within_factor_3_of_exhaustive_sweep():
    X, y = fn.data.load_digits()
    m = fn.Sequential(fn.Dense(64, 32), fn.ReLU(), fn.Dense(32, 10), seed=0)
    before = m._params.copy()
    res = fn.find_lr(m, X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1.0), lr0=1e-3, steps=40)
    np.testing.assert_array_equal(m._params, before)           # weights restored
    assert m.epochs_trained == 0 and m.steps_trained == 0
    fine = list(np.geomspace(1e-4, 10.0, 31))                  # factor ~1.47 apart
    best = _sweep_best(fine)
    assert best / 3 <= res.lr <= best * 3, (res.lr, best)
    # it widened upward from lr0=1e-3, since the best rate lay above the initial range
    assert max(r["lr"] for r in res.table) > 1e-3 * 9


def test_find_lr_range_method_and_errors():
    X, y = fn.data.load_digits()
    m = fn.Sequential(fn.Dense(64, 32), fn.ReLU(), fn.Dense(32, 10), seed=0)
    res = fn.find_lr(m, X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1.0), method="range", steps=100)
    assert 1e-3 < res.lr < 10
    lrs = [r["lr"] for r in res.table]
    assert lrs == sorted(lrs)
    with pytest.raises(ValueError, match="method"):
        fn.find_lr(m, X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1.0), method="grid")
    with pytest.raises(ValueError, match="factor"):
        fn.find_lr(m, X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1.0), factor=1.0)


def test_find_lr_plot(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = fn.data.load_digits()
    m = fn.Sequential(fn.Dense(64, 10), seed=0)
    res = fn.find_lr(m, X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1.0), steps=20)
    res.plot(path=tmp_path / "lr.png")
    assert (tmp_path / "lr.png").stat().st_size > 1000
