"""The core is built for baseline x86-64, x86-64-v3 (AVX2) and x86-64-v4 (AVX-512); the CPU's widest
build is picked at import, and every build trains to the same bits, except that float32 Dense
products over few rows run on the AVX2 and AVX-512 builds' own GEMMs (smallgemm.pxi): those agree
with BLAS to float32 rounding, not to the bit."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn._core as core

SCRIPT = r"""
import hashlib, sys, numpy as np, fastnn as fn, fastnn._core as c
rng = np.random.default_rng(0)
X, y = rng.normal(size=(300, 20)), rng.integers(0, 4, 300)
out = [c.ISA]
c._engine.count_gemm_calls(True)
for dt in ("float32", "float64"):
    h = hashlib.sha256()
    m = fn.Sequential(fn.Dense(20, 300), fn.Tanh(), fn.Dropout(0.1), fn.Dense(300, 256), fn.Sigmoid(),
                      fn.Dense(256, 40), fn.Sigmoid(),
                      fn.BatchNorm1d(40), fn.LeakyReLU(0.1), fn.Residual(fn.LayerNorm(40), fn.Dense(40, 40), fn.Softmax()),
                      fn.Dense(40, 4), dtype=dt, seed=0)
    hist = m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=2, batch_size=32, diagnostics=True)
    c1 = fn.Sequential(fn.Conv1d(2, 4, 3, padding=1), fn.BatchNorm1d(4), fn.ReLU(), fn.MaxPool1d(2), fn.Flatten(),
                       fn.Dense(20, 4), input_shape=(2, 10), dtype=dt, seed=0)
    c1.fit(X.reshape(300, 2, 10), y, loss=fn.CrossEntropy(), epochs=2, batch_size=32)
    for p in m.parameters() + c1.parameters():
        h.update(p.tobytes())
    h.update(repr(hist.diagnostics).encode())
    out.append(h.hexdigest())
    if dt == "float32":
        np.save(sys.argv[1], np.concatenate([p.ravel() for p in m.parameters()]))
        own = sum(v for (path, _), v in c._engine.gemm_calls().items() if path == "own")
        out[1:1] = [str(c._engine.SMALL_GEMM), str(own > 0)]
print(*out)
"""


def _run(isa, tmp_path):
    """(ISA name, whether float32 ran on the own GEMMs, float32 hash, float64 hash, float32 parameters)."""
    env = dict(os.environ, FASTNN_ISA=isa)
    path = tmp_path / f"{isa}.npy"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], capture_output=True, text=True, check=True,
                         env=env, cwd=tmp_path)  # outside the source tree: the installed build is imported
    *name, kernels, small, h32, h64 = out.stdout.strip().split(" ")
    assert small == kernels, out.stdout        # a build with own GEMMs runs this model's on them
    return " ".join(name), small == "True", h32, h64, np.load(path)


def _available(name):
    try:
        __import__(f"fastnn._core.{name}")
    except ImportError:
        return False
    return True


def test_the_widest_build_the_cpu_runs_is_picked():
    f = core.cpu_features()
    want = ("x86-64-v4 (AVX-512)" if all(f.get(k) for k in core._V4) and _available("_engine_v4") else
            "x86-64-v3 (AVX2)" if all(f.get(k) for k in core._V3) and _available("_engine_v3") else "baseline")
    if os.environ.get("FASTNN_ISA"):
        pytest.skip("FASTNN_ISA forces a build")
    assert core.ISA == want


def test_every_build_gives_the_same_bits(tmp_path):
    f = core.cpu_features()
    isas = ["baseline"]
    if all(f.get(k) for k in core._V3) and _available("_engine_v3"):
        isas.append("v3")
    if all(f.get(k) for k in core._V4) and _available("_engine_v4"):
        isas.append("v4")
    if len(isas) == 1:
        pytest.skip("this CPU (or build) has only the baseline core")
    results = [_run(isa, tmp_path) for isa in isas]
    assert [r[0] for r in results] == [{"baseline": "baseline", "v3": "x86-64-v3 (AVX2)",
                                        "v4": "x86-64-v4 (AVX-512)"}[i] for i in isas]
    assert len({r[3] for r in results}) == 1, results                    # float64: the same bits
    blas = [r for r in results if not r[1]]
    assert blas and len({r[2] for r in blas}) == 1, results             # float32 on BLAS: the same bits
    for r in results:
        if r[1]:                # float32 on the kernels: a 300x256 layer, batches of 32
            # 20 Adam steps of at most lr = 1e-2 each; its normalised step turns float32 rounding
            # in a near-zero gradient into up to ~1e-4, against weights of order 0.1
            np.testing.assert_allclose(r[4], blas[0][4], rtol=0, atol=1e-3)


def test_the_builds_this_cpu_runs_are_listed():
    f = core.cpu_features()
    builds = core.runnable_builds()
    assert builds == ["baseline"] + ["v3"] * all(f.get(k) for k in ("AVX2", "FMA3")) + \
        ["v4"] * all(f.get(k) for k in ("AVX512F", "AVX512BW", "AVX512VL"))
    assert core.BUILD == {"baseline": "baseline", "x86-64-v3 (AVX2)": "v3", "x86-64-v4 (AVX-512)": "v4"}[core.ISA]
    if not os.environ.get("FASTNN_ISA"):
        assert core.BUILD == builds[-1] or not _available(f"_engine_{builds[-1]}")
