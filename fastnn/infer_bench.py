"""Inference benchmark: ``model.predict`` latency and throughput against PyTorch and onnxruntime.

Workload: the MLP 784-256-256-10 (ReLU, float32) with a softmax output, on batches of 1, 32 and
4096 rows. Each library computes the same probabilities:

- fastnn: ``model.predict(X, threads=t)`` (CrossEntropy's link, softmax, in the compiled call), at
  1 and at its default thread count (the faster is compared: on a busy machine a second thread can
  cost more than it gives, for every library);
- PyTorch: ``torch.softmax(model(x), 1)`` under ``torch.inference_mode()``, at 1 and at fastnn's
  thread count (the faster is compared);
- onnxruntime: fastnn's own ONNX export (``model.to_onnx``) with a Softmax node appended, at 1 and
  at fastnn's thread count (the faster is compared).

Every (library, model, batch, threads) measurement is its own process, the libraries interleaved
round by round; a process warms up, then times loops of calls (each loop at least 20 ms) and reports
the median time per call; the table shows the median over the rounds. ``bench/infer_bench.py`` in a
checkout adds the convolutional and recurrent nets of ``bench/layers_bench.py``.

    fastnn bench --inference                      # the MLP at batch 1, 32 and 4096
    fastnn bench --inference --batch 1 32 --rounds 3 --json infer.json
"""
import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0] or ".") == \
        os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]        # run as a file: the package's onnx.py and sklearn.py would shadow the real ones

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

LIBS = ("fastnn", "torch", "onnxruntime")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_fastnn():
    import fastnn as fn

    return fn.Sequential(fn.Dense(784, 256), fn.ReLU(), fn.Dense(256, 256), fn.ReLU(), fn.Dense(256, 10), seed=0)


def mlp_torch():
    from torch import nn

    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


#: name -> (fastnn builder, torch builder, per-example input shape); bench/infer_bench.py adds more
MODELS = {"mlp": (mlp_fastnn, mlp_torch, (784,))}


def inputs(model, batch):
    import numpy as np

    shape = MODELS[model][2]
    return (0.1 * np.random.default_rng(1).standard_normal((batch,) + shape)).astype(np.float32)


def time_per_call(call, loops=7, min_loop=0.02):
    """Median seconds per call over ``loops`` loops of calls, each loop at least ``min_loop`` s."""
    call()
    call()
    k = 1
    while True:
        t = time.perf_counter()
        for _ in range(k):
            call()
        if time.perf_counter() - t >= min_loop:
            break
        k *= 2
    times = []
    for _ in range(loops):
        t = time.perf_counter()
        for _ in range(k):
            call()
        times.append((time.perf_counter() - t) / k)
    return statistics.median(times)


def worker(lib, model, batch, threads, onnx_path):
    X = inputs(model, batch)
    if lib == "fastnn":
        import fastnn as fn

        m = MODELS[model][0]()
        m.loss = fn.CrossEntropy()
        out = m.predict(X, threads=threads)
        t = time_per_call(lambda: m.predict(X, threads=threads))
        version = fn.__version__
    elif lib == "torch":
        import torch

        torch.set_num_threads(threads)
        m = MODELS[model][1]().eval()
        x = torch.from_numpy(X)

        def call():
            with torch.inference_mode():
                return torch.softmax(m(x), 1).numpy()

        out = call()
        t = time_per_call(call)
        version = torch.__version__
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: X.reshape(batch, -1)}
        out = sess.run(None, feed)[0]
        t = time_per_call(lambda: sess.run(None, feed))
        version = ort.__version__
    return {"us": t * 1e6, "threads": threads, "version": version, "rows_ok": int(out.shape[0]) == batch}


def export_onnx(model, path):
    """fastnn's export of ``model`` with a Softmax over the outputs appended (what predict gives)."""
    import onnx

    m = MODELS[model][0]()
    proto = m.to_onnx(path)
    g = proto.graph
    out = g.output[0].name
    g.node.append(onnx.helper.make_node("Softmax", [out], ["proba"], axis=1))
    g.output[0].name = "proba"
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def spawn(script, lib, model, batch, threads, onnx_path, timeout):
    cmd = [sys.executable, script, "--worker", lib, model, str(batch), str(threads), onnx_path or "-"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])}
    return json.loads(lines[-1])


def fmt_time(us):
    return f"{us:,.1f} µs" if us < 1000 else f"{us / 1000:,.2f} ms"


def run(args, script):
    import importlib.util

    from fastnn import get_num_threads
    from fastnn.bench import cpu_name

    threads = args.threads or get_num_threads()
    libs = [lib for lib in args.libs if lib == "fastnn" or importlib.util.find_spec(lib)]
    if "onnxruntime" in libs and not importlib.util.find_spec("onnx"):
        libs.remove("onnxruntime")
    tvals = {lib: sorted({1, threads}) for lib in LIBS}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"# CPU: {cpu_name()}; each library the better of {' and '.join(map(str, tvals['torch']))} "
          f"threads; median of {args.rounds} interleaved rounds"
          + (f"; load average {load:.2f} at the start: a busy machine" if load > 0.5 else ""), flush=True)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            path = None
            if "onnxruntime" in libs:
                path = os.path.join(tmp, f"{model}.onnx")
                export_onnx(model, path)
            for batch in args.batch:
                raw = {}
                for _ in range(args.rounds):
                    for lib in libs:
                        for t in tvals[lib]:
                            raw.setdefault((lib, t), []).append(
                                spawn(script, lib, model, batch, t, path, args.timeout))
                res = {}
                for lib in libs:
                    best = None
                    for t in tvals[lib]:
                        ok = [r["us"] for r in raw[(lib, t)] if "us" in r]
                        if ok and (best is None or statistics.median(ok) < best["us"]):
                            best = {"us": statistics.median(ok), "threads": t, "rounds": ok}
                    errors = [r["error"] for t in tvals[lib] for r in raw[(lib, t)] if "error" in r]
                    res[lib] = best or {"error": errors[0] if errors else "no result"}
                    if errors:
                        res[lib]["errors"] = errors
                cells.append({"model": model, "batch": batch, "results": res})
                print_row(cells[-1], libs, header=len(cells) == 1)
    return {"cpu": cpu_name(), "threads": threads, "rounds": args.rounds, "libs": libs, "cells": cells}


def print_row(cell, libs, header):
    peers = [lib for lib in libs if lib != "fastnn"]
    if header:
        cols = ["model", "batch"] + [lib for lib in libs] + [f"{p}/fastnn" for p in peers] + ["fastnn rows/s"]
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|")
    r = cell["results"]
    row = [cell["model"], str(cell["batch"])]
    for lib in libs:
        v = r[lib]
        row.append(fmt_time(v["us"]) + f" ({v['threads']}t)" if "us" in v else "error")
    f = r.get("fastnn", {}).get("us")
    for p in peers:
        v = r[p].get("us")
        row.append(f"{v / f:.2f}x" if f and v else "-")
    row.append(f"{cell['batch'] / f * 1e6:,.0f}" if f else "-")
    print("| " + " | ".join(row) + " |", flush=True)
    for lib in libs:
        for e in r[lib].get("errors", [])[:1]:
            print(f"#   {lib} failed: {e}", file=sys.stderr)


def build_parser(prog=None, models=None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp"], choices=sorted(models or MODELS))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32, 4096])
    p.add_argument("--rounds", type=int, default=5, help="processes per library and cell, interleaved")
    p.add_argument("--threads", type=int, default=None,
                   help="the thread count tried besides 1 (default fn.get_num_threads())")
    p.add_argument("--libs", nargs="+", default=list(LIBS), choices=LIBS)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per worker process")
    p.add_argument("--json", metavar="PATH", help="write the raw results here")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    return p


def main(argv=None, prog=None, script=None):
    args = build_parser(prog).parse_args(argv)
    if args.worker:
        lib, model, batch, threads, path = args.worker
        print(json.dumps(worker(lib, model, int(batch), int(threads), path)))
        return 0
    if args.rounds < 1 or any(b < 1 for b in args.batch):
        raise SystemExit("--rounds and --batch must be >= 1")
    result = run(args, script or os.path.abspath(__file__))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
