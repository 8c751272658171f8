#!/usr/bin/env python3
"""One training epoch of recurrent classifiers: fastnn against PyTorch.

Model: 32 input features, 50 time steps, one recurrent layer of hidden size 128 (LSTM, GRU or tanh
RNN), the last step's hidden state -> Dense -> 10 classes, softmax cross-entropy, SGD lr 0.01
momentum 0.9, N synthetic float32 sequences shuffled every epoch.

Every (library, cell, batch, threads) run is its own process; the libraries are interleaved
round by round; torch gets its better thread setting (1 or 2). Prints ex/s, the ratio, GFLOP/s of
fastnn (forward + backward matrix products: 3x the forward's 2*T*(F+H)*G*H per example) and peak
RSS, with the CPU model.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/rnn_bench.py --batch 32 128 --markdown
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from fastnn.bench import cpu_name

F, T, H, N_CLASSES, LR, MOM = 32, 50, 128, 10, 0.01, 0.9
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def data(n):
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, T, F)).astype(np.float32)
    y = np.argmax(X.sum(axis=1) @ rng.standard_normal((F, N_CLASSES)).astype(np.float32), axis=1).astype(np.int64)
    return X, y


def flops_per_example(cell):
    return 3 * 2 * T * (F + H) * GATES[cell] * H


def worker(lib, cell, batch, threads, n, repeats):
    X, y = data(n)
    if lib == "fastnn":
        import fastnn as fn

        rec = {"lstm": fn.LSTM, "gru": fn.GRU, "rnn": fn.RNN}[cell](F, H)
        m = fn.Sequential(rec, fn.Dense(H, N_CLASSES), input_shape=(T, F), seed=0)
        opt = fn.SGD(lr=LR, momentum=MOM)

        def epoch():
            m.fit(X, y, loss=fn.CrossEntropy(), optimizer=opt, epochs=1, batch_size=batch, threads=threads,
                  drop_last=True)
    else:
        import torch
        import torch.nn as nn

        torch.set_num_threads(threads)

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rec = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](F, H, batch_first=True)
                self.fc = nn.Linear(H, N_CLASSES)

            def forward(self, x):
                return self.fc(self.rec(x)[0][:, -1])

        m = Net()
        opt = torch.optim.SGD(m.parameters(), lr=LR, momentum=MOM)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        lossf = torch.nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(0)

        def epoch():
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - batch + 1, batch):
                idx = perm[i:i + batch]
                opt.zero_grad(set_to_none=True)
                lossf(m(Xt[idx]), yt[idx]).backward()
                opt.step()
    epoch()                                   # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ex_s": n / statistics.median(times), "rss_mib": rss}


def spawn(lib, cell, batch, threads, a):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", lib, cell, str(batch), str(threads),
                          "--n", str(a.n), "--repeats", str(a.repeats)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=list(GATES))
    p.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        lib, cell, b, t = a.worker
        print(json.dumps(worker(lib, cell, int(b), int(t), a.n, a.repeats)))
        return
    print(f"# {cpu_name()}, fastnn {a.threads} threads, torch best of 1/{a.threads} threads, N={a.n}, "
          f"median of {a.rounds} rounds")
    print("| cell | batch | fastnn ex/s | torch ex/s | fastnn/torch | fastnn GFLOP/s | RSS fastnn/torch MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cell in a.cells:
        for b in a.batch:
            fa, to = [], {1: [], a.threads: []}
            for _ in range(a.rounds):
                fa.append(spawn("fastnn", cell, b, a.threads, a))
                for t in sorted(to):
                    to[t].append(spawn("torch", cell, b, t, a))
            f = statistics.median(r["ex_s"] for r in fa)
            best = max(to, key=lambda t: statistics.median(r["ex_s"] for r in to[t]))
            tv = statistics.median(r["ex_s"] for r in to[best])
            frss = max(r["rss_mib"] for r in fa)
            trss = max(r["rss_mib"] for r in to[best])
            gf = f * flops_per_example(cell) / 1e9
            print(f"| {cell.upper()} | {b} | {f:,.0f} | {tv:,.0f} ({best} thr) | {f / tv:.2f}x | {gf:.1f} | "
                  f"{frss:.0f}/{trss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
