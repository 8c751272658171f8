"""Bit-for-bit the same result on any number of threads; OpenMP really on."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fn
from fastnn._core import _engine


def _train(threads, dtype, batch_size, dropout, opt, shape=(37, 67, 29, 7), n=301, epochs=2,
           verbose=0):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, shape[0]))
    y = rng.integers(0, shape[-1], n)
    layers = [fn.Dense(shape[0], shape[1]), fn.ReLU()]
    if dropout:
        layers.append(fn.Dropout(0.3))
    layers += [fn.Dense(shape[1], shape[2]), fn.Tanh(), fn.Dense(shape[2], shape[3])]
    m = fn.Sequential(*layers, dtype=dtype, seed=11)
    m.MIN_FLOP_PER_THREAD = 1                # every thread asked for takes work, however small the net
    h = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=opt(), epochs=epochs, batch_size=batch_size,
              seed=5, threads=threads, verbose=verbose)
    return m._params.copy(), h.history["loss"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_size", [1, 32, 97])
@pytest.mark.parametrize("dropout", [False, True])
def test_fit_is_identical_on_1_2_3_16_threads(dtype, batch_size, dropout):
    opt = lambda: fn.SGD(lr=0.05, momentum=0.9)
    p1, l1 = _train(1, dtype, batch_size, dropout, opt)
    for t in (2, 3, 16):
        pt, lt = _train(t, dtype, batch_size, dropout, opt)
        np.testing.assert_array_equal(pt, p1)
        assert lt == l1


@pytest.mark.parametrize("opt", [lambda: fn.Adam(lr=1e-2), lambda: fn.RMSprop(lr=1e-3, centered=True),
                                 lambda: fn.Adagrad(lr=0.05)])
def test_optimizers_identical_across_threads(opt):
    p1, _ = _train(1, "float32", 64, False, opt)
    p3, _ = _train(3, "float32", 64, False, opt)
    np.testing.assert_array_equal(p1, p3)


def test_wide_layers_identical_across_threads():
    """Shapes that make several chunks and gradient tiles per layer (rows > 128, cols > 256)."""
    opt = lambda: fn.SGD(lr=0.01, momentum=0.5)
    p1, _ = _train(1, "float32", 300, True, opt, shape=(300, 260, 140, 10), n=700, epochs=1)
    p2, _ = _train(2, "float32", 300, True, opt, shape=(300, 260, 140, 10), n=700, epochs=1)
    p3, _ = _train(3, "float32", 300, True, opt, shape=(300, 260, 140, 10), n=700, epochs=1)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(p1, p3)


def test_progress_bar_does_not_change_the_result(capsys):
    opt = lambda: fn.SGD(lr=0.05, momentum=0.9)
    p0, _ = _train(2, "float32", 8, True, opt, verbose=0)
    p1, _ = _train(2, "float32", 8, True, opt, verbose=1)
    np.testing.assert_array_equal(p0, p1)


def test_two_fits_equal_one_longer_fit():
    """Shuffling and dropout are keyed by the global epoch/step counters, so training resumes."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(90, 6)), rng.integers(0, 3, 90)
    def net():
        return fn.Sequential(fn.Dense(6, 10), fn.ReLU(), fn.Dropout(0.2), fn.Dense(10, 3), seed=2)
    a, b = net(), net()
    oa, ob = fn.SGD(lr=0.1, momentum=0.9), fn.SGD(lr=0.1, momentum=0.9)
    a.fit(X, y, loss=fn.CrossEntropy(), optimizer=oa, epochs=3, batch_size=16)
    for _ in range(3):
        b.fit(X, y, loss=fn.CrossEntropy(), optimizer=ob, epochs=1, batch_size=16)
    np.testing.assert_array_equal(a._params, b._params)


def test_forward_identical_across_threads():
    rng = np.random.default_rng(3)
    m = fn.Sequential(fn.Dense(50, 300), fn.Sigmoid(), fn.Dense(300, 4), seed=0)
    X = rng.normal(size=(2500, 50))
    np.testing.assert_array_equal(m.forward(X, threads=1), m.forward(X, threads=3))


@pytest.mark.skipif(os.environ.get("FASTNN_ALLOW_SERIAL") == "1",
                    reason="serial build allowed by FASTNN_ALLOW_SERIAL=1")
def test_openmp_is_compiled_in():
    """Fails when the build silently lost OpenMP (set FASTNN_ALLOW_SERIAL=1 for serial builds)."""
    assert _engine.OPENMP, "fastnn was built without OpenMP; rebuild with an OpenMP-capable compiler"
    assert _engine.omp_max_threads() >= 1


def test_thread_count_settings(monkeypatch):
    old = fn.get_num_threads()
    try:
        fn.set_num_threads(3)
        assert fn.get_num_threads() == 3
        fn.set_num_threads(None)
        monkeypatch.setenv("OMP_NUM_THREADS", "5")
        assert fn.get_num_threads() == (5 if _engine.OPENMP else 1)
        with pytest.raises(ValueError, match="threads"):
            fn.Sequential(fn.Dense(2, 2)).fit(np.zeros((2, 2)), np.zeros(2, int),
                                              loss=fn.CrossEntropy(), threads=0)
        with pytest.raises(TypeError):
            fn.set_num_threads("two")
    finally:
        fn.set_num_threads(None)
    assert fn.get_num_threads() == old or "OMP_NUM_THREADS" in os.environ


def test_omp_num_threads_respected_in_fresh_process(tmp_path):
    code = "import fastnn as fn; print(fn.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == ("3" if _engine.OPENMP else "1")


def test_show_config_reports_openmp_threads_and_blas(capsys):
    fn.show_config()
    out = capsys.readouterr().out
    assert "OpenMP" in out and "threads per fit" in out and "BLAS" in out
    assert fn.__version__ in out
