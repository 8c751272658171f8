"""fastnn bench: the peer comparison on a tiny configuration; absent peers are skipped."""
import importlib.util
import json
import os
import subprocess
import sys

import fastnn.bench as bench

TINY = ["--quick", "--n", "96", "--hidden", "8", "--batch", "16", "--rounds", "1", "--repeats", "1",
        "--sklearn-n", "96", "--gemm-size", "32", "--threads", "1"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_writes_the_ratio_table_and_json(tmp_path):
    # a user's run: the installed command, outside the source tree
    out = subprocess.run([sys.executable, "-m", "fastnn", "bench", *TINY, "--json", "r.json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    meta = res["meta"]
    assert meta["cpu"] == bench.cpu_name() and meta["cpu"] in out.stdout
    assert meta["threads"] == 1 and meta["rounds"] == 1 and meta["n"] == 96
    installed = [lib for lib in bench.LIBS if lib == "fastnn" or importlib.util.find_spec(bench.IMPORT_NAMES[lib])]
    assert meta["libs"] == installed
    assert meta["skipped"] == [lib for lib in bench.LIBS if lib not in installed]
    (cell,) = res["cells"]
    assert (cell["batch"], cell["hidden"], cell["n_params"]) == (16, 8, bench.n_params(8))
    assert set(cell["results"]) == set(installed)          # absent peers are not run at all
    fastnn = cell["results"]["fastnn"]
    assert fastnn["status"] == "ok" and fastnn["examples_per_s"] > 0 and fastnn["threads"] == 1
    assert len(fastnn["round_times"]) == 1 and fastnn["n"] == 96
    for lib in installed[1:]:
        assert cell["results"][lib]["status"] == "ok", cell["results"][lib]
    header, (row,) = res["table"]["header"], res["table"]["rows"]
    assert header[:3] == ["batch", "H", "fastnn ex/s"] and row[:2] == ["16", "8"]
    assert [h for h in header if h.startswith("fastnn/")] == [f"fastnn/{lib}" for lib in installed[1:]]
    assert "fastnn ex/s" in out.stdout and "threads: fastnn 1" in out.stdout
    assert res["sgemm_peak"]["status"] == "ok" and "gflops_1t" in res["sgemm_peak"]


def test_missing_peers_are_skipped(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "jax", "sklearn") else real(name, *a))
    assert bench.available_libs() == ["fastnn"]
    # asked for by name, a missing peer is a row that says so
    args = bench.parse_args([*TINY, "--libs", "fastnn", "torch"])
    monkeypatch.setattr(bench, "spawn", lambda worker, args, env=None, **kw: (
        {"status": "n/a", "error": "ModuleNotFoundError"} if worker == "torch" else
        {"status": "ok", "time": 0.5, "times": [0.5], "n": 96, "examples_per_s": 192.0, "threads": 1,
         "peak_rss_mib": 50.0, "round_times": [0.5]} if worker == "fastnn" else {"status": "error"}))
    res = bench.run(args)
    row = res["table"]["rows"][0]
    assert row[2] == "192" and row[3] == "n/a" and res["meta"]["skipped"] == []
    assert "sgemm peak: unavailable" in capsys.readouterr().out


def test_checkout_script_is_the_same_benchmark():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--quick" in out.stdout and "--json" in out.stdout


def test_bf16_mixed_compares_fastnn_with_torch_autocast(monkeypatch):
    args = bench.parse_args([*TINY, "--precision", "bf16-mixed"])
    assert args.precision == "bf16-mixed"
    ran = []

    def spawn(worker, args, env=None, **kw):
        ran.append(worker)
        if worker == "peak":
            return {"status": "error"}
        return {"status": "ok", "time": 0.5, "times": [0.5], "n": 96, "examples_per_s": 192.0, "threads": 1,
                "peak_rss_mib": 50.0, "round_times": [0.5]}

    monkeypatch.setattr(bench, "spawn", spawn)
    res = bench.run(args)
    # jax and scikit-learn have no bf16-mixed mode here
    assert set(res["meta"]["libs"]) <= {"fastnn", "torch"} and "fastnn" in res["meta"]["libs"]
    assert set(ran) - {"peak"} == set(res["meta"]["libs"]) and res["meta"]["precision"] == "bf16-mixed"
    # the worker itself trains in bf16-mixed
    w = bench.parse_args(["--worker", "fastnn", "--precision", "bf16-mixed", "--n", "64", "--hidden", "8",
                          "--batch", "16", "--repeats", "1"])
    out = bench.worker_fastnn(w)
    assert out["n"] == 64 and "bfloat16 products" in out["note"]


def test_isa_avx2_holds_every_library_and_leaves_jax_out(tmp_path):
    f = __import__("fastnn._core", fromlist=["cpu_features"]).cpu_features()
    if not (f.get("AVX2") and f.get("FMA3")):
        import pytest
        with pytest.raises(ValueError, match="--isa avx2 needs a CPU with AVX2"):
            bench.isa_env("avx2")
        return
    env = bench.isa_env("avx2")
    assert env["FASTNN_ISA"] == "v3" and env["OPENBLAS_CORETYPE"] == "Haswell"
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert bench.isa_env("native") == {}
    out = subprocess.run([sys.executable, "-m", "fastnn", "bench", *TINY, "--isa", "avx2", "--libs", "fastnn",
                          "--json", "r.json"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["meta"]["isa"] == "avx2" and res["meta"]["held"] == env
    assert res["cells"][0]["results"]["fastnn"]["isa"] == "x86-64-v3 (AVX2)"
    assert "held to AVX2" in out.stdout


def test_isa_avx2_says_why_jax_is_left_out(monkeypatch, capsys):
    monkeypatch.setattr(bench, "isa_env", lambda isa: {"FASTNN_ISA": "v3"})
    monkeypatch.setattr(bench, "spawn", lambda worker, args, env=None, **kw: {"status": "error"})
    args = bench.parse_args([*TINY, "--libs", "fastnn", "jax", "--isa", "avx2"])
    res = bench.run(args)
    assert res["meta"]["libs"] == ["fastnn"]
    assert "cannot be held to AVX2" in capsys.readouterr().out


def test_unknown_isa_is_refused():
    import pytest
    with pytest.raises(ValueError, match="isa must be"):
        bench.isa_env("sse2")


def test_bench_inference_writes_the_latency_table_and_json(tmp_path):
    # fastnn alone (the peers' processes take long to start), one round at batch 1 and 3
    out = subprocess.run([sys.executable, "-m", "fastnn", "bench", "--inference", "--batch", "1", "3", "--rounds",
                          "1", "--threads", "2", "--libs", "fastnn", "--json", "i.json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "i.json").read_text())
    assert res["cpu"] == bench.cpu_name() and res["cpu"] in out.stdout
    assert res["libs"] == ["fastnn"] and res["rounds"] == 1
    assert [(c["model"], c["batch"]) for c in res["cells"]] == [("mlp", 1), ("mlp", 3)]
    for c in res["cells"]:
        r = c["results"]["fastnn"]
        assert r["us"] > 0 and r["threads"] in (1, 2) and len(r["rounds"]) == 1
    assert "| mlp | 1 |" in out.stdout and "| mlp | 3 |" in out.stdout


def test_inference_checkout_script_adds_the_layer_nets():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "infer_bench.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for kind in ("mlp", "lenet", "cnn1d", "cifar", "lstm"):
        assert kind in out.stdout
