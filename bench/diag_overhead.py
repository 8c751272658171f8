#!/usr/bin/env python3
"""Overhead of ``fit(diagnostics=True)`` on the core benchmark grid (784 -> H -> H -> 10 ReLU MLP,
softmax cross-entropy, SGD with momentum): median epoch time with and without, interleaved.

    python bench/diag_overhead.py                       # full grid, 20,000 examples, 5 repeats
    python bench/diag_overhead.py --batch 32 --hidden 64 --n 60000 --markdown
"""
import argparse
import time

import numpy as np

import fastnn as fn


def cell(X, y, B, H, repeats):
    m = fn.Sequential(fn.Dense(784, H), fn.ReLU(), fn.Dense(H, H), fn.ReLU(), fn.Dense(H, 10), seed=0)
    opt = fn.SGD(lr=0.01, momentum=0.9)
    kw = dict(loss=fn.CrossEntropy(), optimizer=opt, epochs=1, batch_size=B)
    m.fit(X[:2048], y[:2048], **kw)
    m.fit(X[:2048], y[:2048], diagnostics=True, **kw)
    off, on = [], []
    for _ in range(repeats):
        for d, out in ((False, off), (True, on)):
            t = time.perf_counter()
            m.fit(X, y, diagnostics=d, **kw)
            out.append(time.perf_counter() - t)
    return float(np.median(off)), float(np.median(on))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((a.n, 784)) * 0.1).astype(np.float32)
    y = rng.integers(0, 10, a.n)
    rows = []
    for B in a.batch:
        for H in a.hidden:
            off, on = cell(X, y, B, H, a.repeats)
            rows.append((B, H, off, on, on / off - 1))
            if not a.markdown:
                print(f"batch {B:4d}  H {H:5d}  off {off * 1e3:8.1f} ms  on {on * 1e3:8.1f} ms  "
                      f"overhead {100 * (on / off - 1):+.1f}%", flush=True)
    if a.markdown:
        print("| batch | H | epoch (ms) | with diagnostics (ms) | overhead |")
        print("|---|---|---|---|---|")
        for B, H, off, on, r in rows:
            print(f"| {B} | {H} | {off * 1e3:.1f} | {on * 1e3:.1f} | {100 * r:+.1f}% |")


if __name__ == "__main__":
    main()
