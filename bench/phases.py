#!/usr/bin/env python3
"""Chunk phases against neuron-split (wide) phases for the Dense layers of the MLP grid.

The planner (fastnn/_plan.py) runs a Dense layer as whole-batch GEMMs split by output neurons
when it is at least ``WIDE_MIN_OUT`` wide with ``WIDE_MIN_WEIGHTS`` weights; otherwise chunks of
examples carry it. This script measures one training epoch (784-H-H-10 ReLU, SGD momentum) with
every Dense in chunks, every Dense split, and the planner's rule; every run in its own process,
the schemes interleaved; it prints the median ex/s of each and the ratios, with the CPU model.

    python bench/phases.py --batch 32 128 512 --hidden 256 1024 --rounds 3
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def worker(batch, hidden, wide, n, repeats):
    import numpy as np

    import fastnn as fn
    from fastnn import _plan

    if wide < 2:            # 2: the planner's own rule
        _plan.WIDE_MIN_OUT = 1 if wide else 10 ** 9
        _plan.WIDE_MIN_WEIGHTS = _plan.WIDE_BIG_WEIGHTS = 1
    rng = np.random.default_rng(0)
    X = (0.1 * rng.standard_normal((n, 784))).astype(np.float32)
    y = np.argmax(X @ rng.standard_normal((784, 10)).astype(np.float32), axis=1)
    m = fn.Sequential(fn.Dense(784, hidden), fn.ReLU(), fn.Dense(hidden, hidden), fn.ReLU(), fn.Dense(hidden, 10),
                      seed=0)
    opt = fn.SGD(lr=0.01, momentum=0.9)
    m.fit(X[:batch * 4], y[:batch * 4], loss=fn.CrossEntropy(), optimizer=opt, epochs=1, batch_size=batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        m.fit(X, y, loss=fn.CrossEntropy(), optimizer=opt, epochs=1, batch_size=batch)
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", nargs=3, type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker, a.n, a.repeats)))
        return
    import fastnn as fn
    from fastnn.bench import cpu_name

    print(f"# {cpu_name()}, {fn.get_num_threads()} threads, N={a.n}, median of {a.rounds} rounds")
    print("| batch | H | chunks ex/s | all split ex/s | rule ex/s | split/chunks | rule/chunks |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for b in a.batch:
        for h in a.hidden:
            res = {0: [], 1: [], 2: []}
            for _ in range(a.rounds):
                for wide in (0, 1, 2):
                    out = subprocess.run([sys.executable, __file__, "--worker", str(b), str(h), str(wide),
                                          "--n", str(a.n), "--repeats", str(a.repeats)],
                                         capture_output=True, text=True, check=True, env=os.environ.copy())
                    res[wide].append(json.loads(out.stdout.strip().splitlines()[-1]))
            c, w, r = (statistics.median(res[k]) for k in (0, 1, 2))
            print(f"| {b} | {h} | {c:,.0f} | {w:,.0f} | {r:,.0f} | {w / c:.2f}x | {r / c:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
