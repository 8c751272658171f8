"""Data-parallel fit (comm=) under ``mpiexec -n 2`` against one process (tests/mpi_fit.py)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpi_fit  # noqa: E402

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec") or shutil.which(os.path.join(os.path.dirname(sys.executable), "mpiexec"))
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")

CASES = ["full", "float32", "sgd", "sgd_again", "idle_rank", "conv", "diverge", "mismatch", "fails_on_one",
         "batchnorm", "batchnorm2d", "resume", "recurrent", "recurrent_mse"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case run once by ``mpiexec -n 2``; {case: [rank 0 result, rank 1 result]}."""
    out = str(tmp_path_factory.mktemp("mpi"))
    start, X, y, kw = mpi_fit.fit_args("sgd", out)
    start.fit(X, y, **kw)                         # a checkpoint written by one process
    start.save(os.path.join(out, "resume.start.safetensors"), include_optimizer=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "MPIR_"))}
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, os.path.join(HERE, "mpi_fit.py"), out, *CASES],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = {c: [dict(np.load(os.path.join(out, f"{c}.{r}.npz"))) for r in (0, 1)] for c in CASES}
    return out, res


def single(case, out):
    model, X, y, kw = mpi_fit.fit_args(case, out)
    if "checkpoint" in kw:
        kw["checkpoint"] = os.path.join(out, f"{case}.single.safetensors")
    hist = model.fit(X, y, **kw)
    return model, hist


def test_every_rank_ends_with_the_same_weights_and_history(results):
    _, res = results
    for case in ("full", "float32", "sgd", "idle_rank", "conv", "resume", "recurrent", "recurrent_mse"):
        r0, r1 = res[case]
        assert "error" not in r0, r0.get("error")
        np.testing.assert_array_equal(r0["params"], r1["params"])
        h0, h1 = json.loads(str(r0["history"])), json.loads(str(r1["history"]))
        h0.pop("time"), h1.pop("time")
        assert h0 == h1


def test_the_same_run_gives_the_same_bits(results):
    _, res = results
    np.testing.assert_array_equal(res["sgd"][0]["params"], res["sgd_again"][0]["params"])


@pytest.mark.parametrize("case", ["full", "sgd", "idle_rank", "conv", "resume", "recurrent", "recurrent_mse"])
def test_float64_matches_one_process_to_rounding(results, case):
    out, res = results
    model, hist = single(case, out)
    r0 = res[case][0]
    assert int(r0["steps"]) == model.steps_trained
    np.testing.assert_allclose(r0["params"], model._params, rtol=1e-12, atol=1e-14)
    h = json.loads(str(r0["history"]))
    for k, v in hist.history.items():
        if k != "time":
            np.testing.assert_allclose(h[k], v, rtol=1e-12, err_msg=k)
    if case == "full":      # ReduceOnPlateau lowered the rate on every rank alike
        assert h["lr"][-1] < h["lr"][0]


def test_float32_matches_one_process_closely(results):
    out, res = results
    model, _ = single("float32", out)
    np.testing.assert_allclose(res["float32"][0]["params"], model._params, rtol=2e-4, atol=2e-5)


def test_checkpoint_is_written_by_rank_0_and_loads(results):
    out, res = results
    path = os.path.join(out, "full.ckpt.safetensors")
    m = fn.load(path)
    np.testing.assert_array_equal(m._params, res["full"][0]["params"])
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_a_checkpoint_of_two_ranks_resumes_in_one_process(results):
    out, _ = results
    single("full", out)                         # writes full.single.safetensors
    X, y, _ = mpi_fit.data()
    more = []
    for name in ("full.ckpt", "full.single"):
        m = fn.load(os.path.join(out, name + ".safetensors"))
        m.fit(X, y, epochs=1, batch_size=25, seed=5, threads=1)
        more.append(m._params)
    np.testing.assert_allclose(more[0], more[1], rtol=1e-12, atol=1e-14)


def test_divergence_raises_the_same_error_on_every_rank(results):
    out, res = results
    with pytest.raises(fn.TrainingDiverged) as e:
        single("diverge", out)
    for r in (0, 1):
        assert str(res["diverge"][r]["error"]) == f"TrainingDiverged: {e.value}"


def test_an_exception_on_one_rank_is_raised_on_every_rank(results):
    _, res = results
    assert str(res["fails_on_one"][1]["error"]) == "OSError: disk on fire"
    assert str(res["fails_on_one"][0]["error"]) == ("RemoteError: rank 1 of 2 failed while computing step 1 "
                                                   "of epoch 1: OSError: disk on fire")


def test_mismatched_data_and_batchnorm_are_refused_on_every_rank(results):
    _, res = results
    for r in (0, 1):
        assert "rank 1 was given a different data X than rank 0" in str(res["mismatch"][r]["error"])
        for case in ("batchnorm", "batchnorm2d"):
            assert str(res[case][r]["error"]).startswith("ValueError: BatchNorm couples"), case


def test_comm_must_be_a_communicator():
    X, y, _ = mpi_fit.data()
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        mpi_fit.mlp().fit(X, y, loss=fn.CrossEntropy(), comm="world")


def test_one_rank_matches_one_process_bit_for_bit():
    """With one rank, each step's share is the whole batch: the same sums in the same order."""
    from mpi4py import MPI

    X, y, w = mpi_fit.data()
    kw = dict(loss=fn.CrossEntropy(), optimizer=fn.Adam(lr=1e-2), epochs=2, batch_size=16, seed=3,
              sample_weight=w, l2=1e-3, threads=1)
    a, b = mpi_fit.mlp(), mpi_fit.mlp()
    a.fit(X, y, **kw)
    kw["optimizer"] = fn.Adam(lr=1e-2)
    b.fit(X, y, comm=MPI.COMM_SELF, **kw)
    np.testing.assert_array_equal(a._params, b._params)


def test_cli_distributed_prints_once_and_saves_the_one_process_model(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    csv = tmp_path / "d.csv"
    np.savetxt(csv, np.c_[X, y], delimiter=",", fmt="%.6f")
    args = ["train", str(csv), "--epochs", "3", "--dtype", "float64", "--threads", "1", "--dropout", "0.1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "MPIR_"))}
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "fastnn", *args, "--distributed",
                           "--save", str(tmp_path / "d.safetensors")],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert sum(line.startswith("epoch") for line in lines) == 3
    assert "x 2 ranks" in lines[1] and lines[-1].startswith("saved the model")
    one = subprocess.run([sys.executable, "-m", "fastnn", *args, "--save", str(tmp_path / "s.safetensors")],
                         capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path)
    assert one.stdout.strip().splitlines()[-2].split(",")[0] == lines[-2].split(",")[0]
    a, b = fn.load(tmp_path / "d.safetensors"), fn.load(tmp_path / "s.safetensors")
    np.testing.assert_allclose(a._params, b._params, rtol=1e-12, atol=1e-14)


def test_import_fastnn_does_not_import_mpi4py(tmp_path):
    code = "import sys, fastnn, fastnn.distributed; assert 'mpi4py' not in sys.modules"
    # outside the source tree, so the installed (compiled) package is imported
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=tmp_path)


def test_example_runs_under_mpiexec(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "MPIR_"))}
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, os.path.join(os.path.dirname(HERE), "examples",
                           "distributed.py"), "--epochs", "2", "--dtype", "float64", "--check"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert sum(line.startswith("epoch") for line in proc.stderr.splitlines()) == 2    # rank 0 alone prints
    assert lines[-2].startswith("2 rank(s): val_accuracy")
    assert float(lines[-1].split(":")[1].split()[0]) < 1e-12
