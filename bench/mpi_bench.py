"""Data-parallel fit over MPI: measured step times, Allreduce times, and a cost model.

    python bench/mpi_bench.py [--hidden 1024] [--batch 512] [--ranks 2] [--json out.json]

runs (as subprocesses) one process x R threads against ``mpiexec -n R`` ranks x 1 thread on the MLP
784-H-H-10 at global batch B, ``mpiexec -n R`` Allreduce times for 64 KB - 64 MB, and one-thread
step times at the per-rank batches of the cost model; then prints the predicted scaling efficiency
at 4, 16 and 64 ranks over 10 GbE and 100 Gb/s InfiniBand (link figures in LINKS).
Time with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

# Assumed links: effective bandwidth (bytes/s) and per-message latency (s) of a ring Allreduce hop.
LINKS = {"10 GbE": (1.1e9, 30e-6), "100 Gb/s InfiniBand": (11e9, 2e-6)}
SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]


def mlp(hidden):
    import fastnn as fn

    return fn.Sequential(fn.Dense(784, hidden), fn.ReLU(), fn.Dense(hidden, hidden), fn.ReLU(),
                         fn.Dense(hidden, 10), seed=0)


def step_time(hidden, batch, threads, steps, comm=None):
    """Seconds per step of fit at ``batch``: the best of 3 timed epochs after a warm-up one (the
    least disturbed by other processes on the machine)."""
    import fastnn as fn

    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch * steps, 784)).astype(np.float32)
    y = rng.integers(0, 10, size=batch * steps)
    model = mlp(hidden)
    kw = dict(loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1e-3), batch_size=batch, threads=threads, epochs=1)
    if comm is not None:
        kw["comm"] = comm
    model.fit(X, y, **kw)
    times = []
    for _ in range(3):
        if comm is not None:
            comm.Barrier()
        t = time.perf_counter()
        model.fit(X, y, **kw)
        times.append((time.perf_counter() - t) / steps)
    return float(min(times))


def worker(args):
    """Inside mpiexec: the distributed step time, or the Allreduce times."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if args.worker == "fit":
        out = {"step_s": step_time(args.hidden, args.batch, 1, args.steps, comm)}
    else:
        out = {}
        for size in SIZES:
            buf = np.ones(size // 4, dtype=np.float32)
            reps = max(5, min(200, (64 << 20) // size))
            comm.Allreduce(MPI.IN_PLACE, buf)
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(reps):
                comm.Allreduce(MPI.IN_PLACE, buf)
            out[str(size)] = (time.perf_counter() - t) / reps
    if comm.Get_rank() == 0:
        print(json.dumps(out))


def mpirun(n, *argv):
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    res = subprocess.run([mpiexec, "-n", str(n), sys.executable, os.path.abspath(__file__), *argv],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def ring_allreduce(nbytes, ranks, bw, lat):
    """Seconds for a ring Allreduce (reduce-scatter + all-gather) of ``nbytes`` over ``ranks``."""
    return 2 * (ranks - 1) * (lat + nbytes / ranks / bw)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="steps per timed epoch")
    p.add_argument("--repeat", type=int, default=3, help="alternated runs of the comparison (best of each)")
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--worker", choices=["fit", "allreduce"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    R, B, H = args.ranks, args.batch, args.hidden
    res = {"hidden": H, "batch": B, "ranks": R}
    one, dist = [], []
    for _ in range(args.repeat):        # alternated, best of each: a busy machine disturbs both alike
        one.append(step_time(H, B, R, args.steps))
        dist.append(mpirun(R, "--worker", "fit", "--hidden", str(H), "--batch", str(B),
                           "--steps", str(args.steps))["step_s"])
    res["one_process_s"], res["distributed_s"] = min(one), min(dist)
    res["ratio"] = res["one_process_s"] / res["distributed_s"]
    print(f"MLP 784-{H}-{H}-10, global batch {B}: 1 process x {R} threads {res['one_process_s'] * 1e3:.1f} ms/step, "
          f"{R} ranks x 1 thread {res['distributed_s'] * 1e3:.1f} ms/step: {res['ratio']:.2f}x")
    ar = mpirun(R, "--worker", "allreduce")
    res["allreduce_s"] = ar
    print(f"Allreduce (float32 sum, in place) under mpiexec -n {R}:")
    for size in SIZES:
        print(f"  {size >> 10:>6} KB  {ar[str(size)] * 1e3:8.3f} ms  {size / ar[str(size)] / 1e9:6.2f} GB/s")
    # cost model: one thread per rank, each rank runs a step at B/R examples, then a ring Allreduce
    # and the update
    n_params = mlp(H).n_params
    nbytes = 4 * n_params
    local = sorted({b // r for b in (512, 4096) for r in (1, 4, 16, 64)} | {B // R})
    t1 = {b: step_time(H, b, 1, max(2, min(16, 4096 // b))) for b in local}
    res["one_thread_step_s"] = {str(b): t for b, t in t1.items()}
    # the distributed step's own cost beyond compute and communication (the separate update pass,
    # the per-step Python): one rank alone (COMM_SELF) against the plain fit, alternated, best of each
    from mpi4py import MPI

    plain, alone = [t1[B // R]], []
    for _ in range(args.repeat):
        alone.append(step_time(H, B // R, 1, args.steps, MPI.COMM_SELF))
        plain.append(step_time(H, B // R, 1, args.steps))
    overhead = max(0.0, min(alone) - min(plain))
    res["per_step_overhead_s"] = overhead
    print("one-thread step times: " + ", ".join(f"batch {b}: {t * 1e3:.1f} ms" for b, t in t1.items()))
    print(f"gradient {nbytes / 2**20:.1f} MB; a distributed step's own cost beyond compute and Allreduce "
          f"(one rank, COMM_SELF, at batch {B // R}): {overhead * 1e3:.2f} ms")
    res["model"] = {}
    per_example = t1[max(local)] / max(local)
    for link, (bw, lat) in LINKS.items():
        rows = {}
        for gb in (512, 4096):
            for r in (4, 16, 64):
                comm_s = ring_allreduce(nbytes, r, bw, lat) + overhead
                eff = t1[gb] / (r * (t1[gb // r] + comm_s))
                rows[f"{r} ranks, batch {gb}"] = eff
        c16 = ring_allreduce(nbytes, 16, bw, lat) + overhead
        rows["batch for 90% at 16 ranks"] = int(np.ceil(16 * 9 * c16 / per_example))
        res["model"][link] = rows
        print(f"{link} ({bw / 1e9:g} GB/s, {lat * 1e6:g} us per hop): " + ", ".join(
            f"{k} {v:.0%}" if isinstance(v, float) else f"{k}: {v}" for k, v in rows.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
