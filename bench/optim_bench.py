#!/usr/bin/env python3
"""Optimizer step time: fastnn's fused compiled step against torch.optim (foreach and fused)
and against the memory-bandwidth bound (a NumPy pass reading and writing the same bytes).

Each library runs in its own process (two OpenMP runtimes in one process distort timings).

    python bench/optim_bench.py                      # 1M and 10M float32 parameters, 2 threads
    python bench/optim_bench.py --sizes 1000000 --repeats 50 --threads 2 --markdown
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# name: (fastnn constructor, torch constructor, state buffers read+written besides p and g)
OPTS = {
    "SGD": ("SGD(lr=0.01)", "SGD(lr=0.01)", 0),
    "SGD-momentum": ("SGD(lr=0.01, momentum=0.9)", "SGD(lr=0.01, momentum=0.9)", 1),
    "Adam": ("Adam(lr=1e-3)", "Adam(lr=1e-3)", 2),
    "AdamW": ("AdamW(lr=1e-3)", "AdamW(lr=1e-3)", 2),
    "Adagrad": ("Adagrad(lr=1e-2)", "Adagrad(lr=1e-2)", 1),
    "RMSprop": ("RMSprop(lr=1e-2)", "RMSprop(lr=1e-2)", 1),
}


def _median_time(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def worker_fastnn(name, n, repeats, threads):
    import fastnn as fn

    rows = n // 1000
    model = fn.Sequential(fn.Dense(1000, rows, bias=False), seed=0)
    model._grads[...] = np.random.default_rng(0).normal(size=model.n_params).astype(np.float32)
    opt = eval("fn." + OPTS[name][0])
    fn.set_num_threads(threads)
    return {"fastnn": _median_time(lambda: opt.step(model), repeats)}


def worker_torch(name, n, repeats, threads):
    import torch

    torch.set_num_threads(threads)
    out = {}
    for variant in ("foreach", "fused"):
        p = torch.nn.Parameter(torch.zeros(n))
        p.grad = torch.randn(n)
        ctor = OPTS[name][1].replace(")", f", {variant}=True)")
        try:
            opt = eval("torch.optim." + ctor.replace("(", "([p], ", 1))
            opt.step()
        except (RuntimeError, TypeError, ValueError) as e:
            out["torch_" + variant] = None
            out["torch_" + variant + "_error"] = str(e).splitlines()[0][:120]
            continue
        out["torch_" + variant] = _median_time(opt.step, repeats)
    return out


def worker_bound(name, n, repeats, threads):
    """A NumPy pass over the bytes the update must move: p and g read, p written, plus each state
    buffer read and written."""
    k = OPTS[name][2]
    p, g = np.zeros(n, np.float32), np.ones(n, np.float32)
    bufs = [np.zeros(n, np.float32) for _ in range(k)]

    def run():
        np.add(p, g, out=p)
        for b in bufs:
            np.multiply(b, b, out=b)

    return {"bound": _median_time(run, repeats), "bytes": 4 * n * (3 + 2 * k)}


def run_worker(lib, name, n, repeats, threads):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--opt", name, "--sizes", str(n),
           "--repeats", str(repeats), "--threads", str(threads)]
    env = dict(os.environ)
    if lib == "bound":
        for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
            env.pop(v, None)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--opts", nargs="+", default=list(OPTS), choices=list(OPTS))
    ap.add_argument("--opt", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.worker:
        f = {"fastnn": worker_fastnn, "torch": worker_torch, "bound": worker_bound}[a.worker]
        print(json.dumps(f(a.opt, a.sizes[0], a.repeats, a.threads)))
        return
    rows = []
    for n in a.sizes:
        for name in a.opts:
            r = {"opt": name, "n": n}
            for lib in ("fastnn", "torch", "bound"):
                r.update(run_worker(lib, name, n, a.repeats, a.threads))
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    ms = lambda v: "n/a" if v is None else f"{v * 1e3:.3f}"
    hdr = ["optimizer", "params", "fastnn ms", "torch fused ms", "torch foreach ms",
           "fused/fastnn", "bound ms", "fastnn/bound", "fastnn GB/s"]
    lines = [hdr]
    for r in rows:
        f, tf, te, b = r.get("fastnn"), r.get("torch_fused"), r.get("torch_foreach"), r.get("bound")
        lines.append([r["opt"], f"{r['n'] / 1e6:g}M", ms(f), ms(tf), ms(te),
                      "n/a" if not (f and tf) else f"{tf / f:.2f}x", ms(b),
                      "n/a" if not (f and b) else f"{f / b:.2f}", "n/a" if not f else f"{r['bytes'] / f / 1e9:.1f}"])
    if a.markdown:
        print("| " + " | ".join(hdr) + " |")
        print("|" + "---|" * len(hdr))
        for l in lines[1:]:
            print("| " + " | ".join(l) + " |")
    else:
        w = [max(len(l[i]) for l in lines) for i in range(len(hdr))]
        for l in lines:
            print("  ".join(s.rjust(w[i]) for i, s in enumerate(l)))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
