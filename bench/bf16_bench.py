#!/usr/bin/env python3
"""bf16-mixed training speed: fastnn's bfloat16 products against torch.autocast and both in float32.

Workloads (one training epoch of softmax cross-entropy, SGD lr 0.01 momentum 0.9, N synthetic
float32 examples shuffled every epoch):

- ``mlp``: 784-H-H-10 ReLU at the (batch, H) cells given (default 512/1024, 128/1024, 32/256);
- ``cifar`` and ``lstm`` from bench/layers_bench.py (3x32x32 conv net with BatchNorm; 50 steps of
  32 features into an LSTM of 128) at the batches given.

Variants: fastnn float32 (``fastnn``), fastnn ``precision="bf16-mixed"`` (``fastnn-bf16``), torch
float32 (``torch``) and torch under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (``torch-bf16``,
oneDNN's kernels). Every (variant, workload) run is its own process; the variants are interleaved
round by round and the median round reported; every variant gets the better of 1 and ``--threads``
threads (on a busy machine a team of threads waits for its slowest member at every barrier). Prints the CPU, its bfloat16 units and fastnn's bfloat16 kernel, ex/s and the ratios.

    python bench/bf16_bench.py --rounds 3
    python bench/bf16_bench.py --models mlp --cells 512/1024 --rounds 5 --json bf16.json
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import layers_bench as lb  # noqa: E402

LR, MOM = 0.01, 0.9
VARIANTS = ("fastnn", "fastnn-bf16", "torch", "torch-bf16")


def mlp_data(n):
    from fastnn.bench import make_data

    return make_data(n)


def worker(variant, model, batch, hidden, threads, n, repeats):
    if model == "mlp":
        X, y = mlp_data(n)
    else:
        X, y = lb.data(n, model)
    bf16 = variant.endswith("-bf16")
    if variant.startswith("fastnn"):
        import fastnn as fn

        if model == "mlp":
            m = fn.Sequential(fn.Dense(784, hidden), fn.ReLU(), fn.Dense(hidden, hidden), fn.ReLU(),
                              fn.Dense(hidden, 10), seed=0)
        else:
            m = lb.fastnn_model(model)
        opt = fn.SGD(lr=LR, momentum=MOM)

        def epoch():
            m.fit(X, y, loss=fn.CrossEntropy(), optimizer=opt, epochs=1, batch_size=batch, threads=threads,
                  drop_last=True, precision="bf16-mixed" if bf16 else None)
    else:
        import torch
        from torch import nn

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        if model == "mlp":
            m = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                              nn.Linear(hidden, 10))
        else:
            m = lb.torch_model(model)
        epoch = lb.torch_epoch(m, X, y, batch, autocast=bf16)
    epoch()                                   # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t)
    seen = n // batch * batch
    return {"ex_s": seen / statistics.median(times), "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def spawn(variant, model, batch, hidden, threads, a):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, model, str(batch), str(hidden),
           str(threads), "--repeats", str(a.repeats)] + (["--n", str(a.n)] if a.n else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def bf16_units():
    """The CPU's bfloat16 units as Linux reports them."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return "unknown"
    have = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return ", ".join(have) or "none"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["mlp", "cifar", "lstm"], choices=["mlp", "cifar", "lstm"])
    p.add_argument("--cells", nargs="+", default=["512/1024", "128/1024", "32/256"],
                   help="MLP batch/H cells")
    p.add_argument("--batch", type=int, nargs="+", default=[128], help="batches of cifar and lstm")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=None, help="examples per epoch (default 20480 MLP, 4096 others)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--json", metavar="PATH", help="write every run's numbers here")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        variant, model, b, h, t = a.worker
        n = a.n or (20480 if model == "mlp" else 4096)
        print(json.dumps(worker(variant, model, int(b), int(h), int(t), n, a.repeats)))
        return
    from fastnn._core import _engine
    from fastnn.bench import cpu_name

    jobs = [("mlp", int(c.split("/")[0]), int(c.split("/")[1])) for c in a.cells if "mlp" in a.models]
    jobs += [(m, b, 0) for m in a.models if m != "mlp" for b in a.batch]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"# {cpu_name()}; bfloat16 units: {bf16_units()}; fastnn's kernel: {_engine.bf16_kernel()}; "
          f"each the better of 1 and {a.threads} threads; median of {a.rounds} interleaved rounds; "
          f"1-min load at start {load:.1f}")
    names = [v for v in VARIANTS if v in a.variants]
    print("| workload | batch | " + " | ".join(f"{v} ex/s" for v in names)
          + " | bf16: fastnn/torch | fastnn bf16/f32 |")
    print("|---|---:|" + "---:|" * (len(names) + 2))
    record = []
    for model, batch, hidden in jobs:
        raw = {v: {} for v in names}
        for _ in range(a.rounds):
            for v in names:
                for t in sorted({1, a.threads}):
                    raw[v].setdefault(t, []).append(spawn(v, model, batch, hidden, t, a))
        med = {}
        for v in names:
            best = None
            for t, runs in raw[v].items():
                ok = [r["ex_s"] for r in runs if "ex_s" in r]
                if ok and (best is None or statistics.median(ok) > best[0]):
                    best = (statistics.median(ok), t)
            med[v] = best
        cols = [f"{med[v][0]:,.0f} ({med[v][1]}t)" if med[v] else "error" for v in names]
        r1 = (f"{med['fastnn-bf16'][0] / med['torch-bf16'][0]:.2f}x"
              if med.get("fastnn-bf16") and med.get("torch-bf16") else "-")
        r2 = (f"{med['fastnn-bf16'][0] / med['fastnn'][0]:.2f}x"
              if med.get("fastnn-bf16") and med.get("fastnn") else "-")
        label = f"mlp H={hidden}" if model == "mlp" else model
        print(f"| {label} | {batch} | " + " | ".join(cols) + f" | {r1} | {r2} |", flush=True)
        record.append({"model": model, "batch": batch, "hidden": hidden, "runs": raw,
                       "median": {v: med[v] for v in names}})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu_name(), "bf16_units": bf16_units(), "kernel": _engine.bf16_kernel(),
                       "threads": a.threads, "rounds": a.rounds, "load_at_start": load, "cells": record}, f, indent=1)


if __name__ == "__main__":
    main()
