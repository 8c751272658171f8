"""Peer comparison: one MLP training epoch in fastnn vs torch, jax and scikit-learn.

Workload (identical for every library): a 784 -> H -> H -> 10 ReLU MLP trained
for one epoch of softmax cross-entropy with SGD (lr=0.01, momentum=0.9) on
N x 784 float32 synthetic examples, shuffled every epoch.

Every (library, batch, hidden[, threads]) cell runs in its own subprocess (this
file re-invoked with ``--worker``): torch, scikit-learn/numpy and fastnn each
bring an OpenMP or BLAS thread pool, and two of them in one process fight for
the cores and distort the timings.  The worker prints one JSON line on stdout.
Rounds interleave the libraries and the median round is reported.

Run as ``fastnn bench`` (``--quick``: one cell, under a minute) or
``python bench/compare.py`` in a checkout. ``--precision bf16-mixed`` trains fastnn with
bfloat16 products and torch under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (jax and
scikit-learn have no such mode here and are left out). Examples::

    fastnn bench --quick --json results.json
    fastnn bench --precision bf16-mixed --batch 128 512 --hidden 1024 --libs fastnn torch
    fastnn bench --batch 32 512 --hidden 64 --repeats 3
    fastnn bench --libs torch jax --n 6000 --json results.json --markdown
    fastnn bench --inference          # predict's latency and throughput (fastnn/infer_bench.py)
"""
# Run as a file (the workers are), the package directory would come first on sys.path and
# its modules (sklearn.py, onnx.py, ...) would shadow the real packages: drop it.
import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0] or ".") == \
        os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

N_FEATURES = 784
N_CLASSES = 10
LR = 0.01
MOMENTUM = 0.9
SEED = 0
LIBS = ("fastnn", "torch", "jax", "sklearn")
PRECISIONS = ("float32", "bf16-mixed")
BF16_LIBS = ("fastnn", "torch")     # the libraries with a bfloat16 mixed-precision mode here
# the directory holding the fastnn package, put on the workers' PYTHONPATH so that they import
# the same fastnn as the driver (installed or a source checkout)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# OpenBLAS tuning variables that may be set on the benchmark host; they slow
# down the numpy shipped today, so the sgemm peak is measured without them.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# --isa avx2: every library held to AVX2 on a CPU that has more, as a CPU without AVX-512 runs them
# (fastnn's x86-64-v3 build, OpenBLAS's Haswell kernels, PyTorch's AVX2 kernels, MKL and oneDNN)
AVX2_ENV = {"FASTNN_ISA": "v3", "OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
AVX2_NO_JAX = ("jax left out under --isa avx2: XLA's CPU matrix products ignore --xla_cpu_max_isa, so JAX "
               "cannot be held to AVX2")


def isa_env(isa):
    """The environment variables that hold every library to ``isa`` ("native" or "avx2")."""
    if isa == "native":
        return {}
    if isa != "avx2":
        raise ValueError(f"isa must be 'native' or 'avx2', not {isa!r}")
    from fastnn._core import cpu_features

    if not all(cpu_features().get(k) for k in ("AVX2", "FMA3")):
        raise ValueError("--isa avx2 needs a CPU with AVX2 and FMA; this one has neither, so it runs "
                         "no faster instruction set to hold back from (leave --isa out)")
    return dict(AVX2_ENV)


# --------------------------------------------------------------------------- #
# shared helpers
# --------------------------------------------------------------------------- #
def make_data(n: int, seed: int = SEED):
    """Synthetic classification data: X ~ 0.1*N(0,1), labels from a linear teacher."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_FEATURES), dtype=np.float32)
    X *= 0.1
    teacher = rng.standard_normal((N_FEATURES, N_CLASSES), dtype=np.float32)
    y = np.argmax(X @ teacher, axis=1).astype(np.int64)
    return np.ascontiguousarray(X), y


def n_params(hidden: int) -> int:
    """Trainable parameters (weights + biases) of the 784-H-H-10 MLP."""
    return (N_FEATURES * hidden + hidden) + (hidden * hidden + hidden) + (hidden * N_CLASSES + N_CLASSES)


def peak_rss_mib() -> float:
    import resource

    # ru_maxrss is KiB on Linux but bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def time_epochs(run_epoch, repeats: int) -> list[float]:
    """Wall time of ``repeats`` calls of ``run_epoch`` (which must block until done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_epoch()
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------- #
# workers: each builds data + model, runs one untimed epoch (JAX compiles in it; the first pass
# over freshly allocated data also runs slow on some machines), times `repeats` epochs
# --------------------------------------------------------------------------- #
def worker_fastnn(args) -> dict:
    import numpy as np
    import fastnn as fn

    X, y = make_data(args.n)
    H, B = args.hidden, args.batch
    model = fn.Sequential(fn.Dense(N_FEATURES, H), fn.ReLU(), fn.Dense(H, H), fn.ReLU(),
                          fn.Dense(H, N_CLASSES), seed=SEED)
    opt = fn.SGD(lr=LR, momentum=MOMENTUM)
    loss = fn.CrossEntropy()

    precision = None if args.precision == "float32" else args.precision

    def epoch(Xe, ye):
        model.fit(Xe, ye, loss=loss, optimizer=opt, epochs=1, batch_size=B,
                  shuffle=True, seed=SEED, verbose=0, threads=args.threads, precision=precision)

    epoch(X, y)  # warm-up: one untimed epoch, as every library gets
    times = time_epochs(lambda: epoch(X, y), args.repeats)
    from fastnn._core import ISA

    out = {"version": fn.__version__, "times": times, "n": args.n, "threads": args.threads, "isa": ISA}
    if precision is not None:
        from fastnn._core import _engine

        out["note"] = f"bfloat16 products on the {_engine.bf16_kernel()} kernel"
    return out


def worker_torch(args) -> dict:
    import torch
    from torch import nn

    # Must precede any torch op so the intra-op pool is created at this size.
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    Xn, yn = make_data(args.n)
    # Conversion is done once, outside the timed region.
    X, y = torch.from_numpy(Xn), torch.from_numpy(yn)
    H, B, n = args.hidden, args.batch, args.n
    model = nn.Sequential(nn.Linear(N_FEATURES, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(),
                          nn.Linear(H, N_CLASSES))
    bf16 = args.precision == "bf16-mixed"
    epoch = torch_epoch(model, X, y, B, autocast=bf16)
    epoch()  # warm-up: one untimed epoch, as every library gets
    times = time_epochs(epoch, args.repeats)
    return {"version": torch.__version__, "times": times, "n": n, "threads": torch.get_num_threads(),
            "note": "torch.autocast('cpu', dtype=torch.bfloat16)" if bf16 else ""}


def torch_epoch(model, X, y, batch, autocast=False, drop_last=False):
    """One training epoch of torch ``model`` on tensors X, y as a function: SGD(LR, MOMENTUM),
    cross-entropy, a shuffle seeded with SEED; ``autocast``: under ``torch.autocast("cpu",
    dtype=torch.bfloat16)`` (the products in bfloat16, the loss and the update in float32);
    ``drop_last``: full batches only."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(SEED)
    n = len(X)
    stop = n - batch + 1 if drop_last else n

    def epoch():
        perm = torch.randperm(n, generator=gen)
        for i in range(0, stop, batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()

    return epoch


def worker_jax(args) -> dict:
    # This benchmark is about the CPU; don't let jax pick up an accelerator.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    from jax import lax

    Xn, yn = make_data(args.n)
    H, B, n = args.hidden, args.batch, args.n
    steps = n // B  # lax.scan needs a static shape: the last partial batch is dropped
    X, y = jax.device_put(Xn), jax.device_put(yn.astype("int32"))

    def init(key):
        sizes = [N_FEATURES, H, H, N_CLASSES]
        params = []
        for k, (fan_in, fan_out) in zip(jax.random.split(key, 3), zip(sizes[:-1], sizes[1:])):
            # torch.nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            kw, kb = jax.random.split(k)
            bound = 1.0 / fan_in ** 0.5
            params.append((jax.random.uniform(kw, (fan_in, fan_out), jnp.float32, -bound, bound),
                           jax.random.uniform(kb, (fan_out,), jnp.float32, -bound, bound)))
        return params

    def loss_fn(params, xb, yb):
        h = xb
        for W, b in params[:-1]:
            h = jax.nn.relu(h @ W + b)
        W, b = params[-1]
        logits = h @ W + b
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1))

    @jax.jit
    def epoch(params, velocity, X, y, key):
        idx = jax.random.permutation(key, n)[:steps * B].reshape(steps, B)

        def step(carry, batch_idx):
            params, velocity = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, X[batch_idx], y[batch_idx])
            # torch-style momentum: v <- mu*v + g ; p <- p - lr*v
            velocity = jax.tree.map(lambda v, g: MOMENTUM * v + g, velocity, grads)
            params = jax.tree.map(lambda p, v: p - LR * v, params, velocity)
            return (params, velocity), loss

        (params, velocity), losses = lax.scan(step, (params, velocity), idx)
        return params, velocity, losses.mean()

    key = jax.random.PRNGKey(SEED)
    key, k_init = jax.random.split(key)
    state = [init(k_init)]
    state.append(jax.tree.map(jnp.zeros_like, state[0]))

    def run():
        nonlocal key
        key, k = jax.random.split(key)
        p, v, loss = epoch(state[0], state[1], X, y, k)
        loss.block_until_ready()
        jax.block_until_ready((p, v))
        state[0], state[1] = p, v

    run()  # untimed epoch: triggers compilation
    times = time_epochs(run, args.repeats)
    return {"version": jax.__version__, "times": times, "n": steps * B,
            "note": f"last partial batch dropped ({n - steps * B} examples)" if n % B else ""}


def worker_sklearn(args) -> dict:
    import numpy as np
    import sklearn
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)     # its BLAS gets fastnn's thread count

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    n = min(args.sklearn_n, args.n)
    X, y = make_data(args.n)
    X, y = X[:n], y[:n]
    H, B = args.hidden, args.batch
    clf = MLPClassifier(hidden_layer_sizes=(H, H), solver="sgd", momentum=MOMENTUM,
                        nesterovs_momentum=False, learning_rate_init=LR, batch_size=B,
                        max_iter=1, alpha=0.0, shuffle=True, random_state=SEED)
    # First call initialises the weights (needs the full class list): the untimed epoch.
    clf.partial_fit(X, y, classes=np.arange(N_CLASSES))
    # Each partial_fit on the full data is exactly one shuffled epoch.
    times = time_epochs(lambda: clf.partial_fit(X, y), args.repeats)
    return {"version": sklearn.__version__, "times": times, "n": n, "threads": args.threads,
            "note": f"subsampled to {n} examples" if n < args.n else ""}


def worker_peak(args) -> dict:
    """float32 GEMM peak of numpy's BLAS at 1 thread and at --threads (GFLOP/s, best of several)."""
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    size = args.gemm_size
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty_like(a)
    out = {}
    for t in sorted({1, args.threads}):
        with threadpool_limits(limits=t, user_api="blas"):
            np.matmul(a, b, out=c)  # warm-up: thread pool start, page faults
            best = min(time_epochs(lambda: np.matmul(a, b, out=c), 5))
        out[f"gflops_{t}t"] = 2.0 * size ** 3 / best / 1e9
    blas = [{k: d.get(k) for k in ("internal_api", "prefix", "version", "architecture",
                                   "threading_layer", "filepath")}
            for d in threadpool_info() if d.get("user_api") == "blas"]
    out.update(size=size, numpy=np.__version__, blas=blas)
    return out


WORKERS = {"fastnn": worker_fastnn, "torch": worker_torch, "jax": worker_jax,
           "sklearn": worker_sklearn, "peak": worker_peak}
IMPORT_NAMES = {"fastnn": "fastnn", "torch": "torch", "jax": "jax", "sklearn": "sklearn",
                "peak": "threadpoolctl"}


def check_import(lib: str) -> None:
    """Raise ImportError unless ``lib`` is importable."""
    import importlib

    importlib.import_module(IMPORT_NAMES[lib])


def available_libs() -> list:
    """fastnn and the peers installed here (found without importing them)."""
    return [lib for lib in LIBS if lib == "fastnn" or importlib.util.find_spec(IMPORT_NAMES[lib])]


def run_worker(args) -> None:
    try:
        check_import(args.worker)
    except ImportError as exc:
        print(json.dumps({"status": "n/a", "error": f"{type(exc).__name__}: {exc}"}))
        return
    res = WORKERS[args.worker](args)
    if "times" in res:
        res["time"] = statistics.median(res["times"])
        res["examples_per_s"] = res["n"] / res["time"]
    res.update(status="ok", peak_rss_mib=peak_rss_mib())
    print(json.dumps(res))


# --------------------------------------------------------------------------- #
# driver
# --------------------------------------------------------------------------- #
def spawn(worker: str, args, env=None, **extra) -> dict:
    """Run one worker subprocess and return its JSON result (or an error record)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--precision", args.precision,
           "--n", str(args.n), "--repeats", str(args.repeats),
           "--sklearn-n", str(args.sklearn_n), "--gemm-size", str(args.gemm_size)]
    extra.setdefault("threads", args.threads)
    for key, val in extra.items():
        cmd += [f"--{key.replace('_', '-')}", str(val)]
    env = dict((getattr(args, "env", None) or os.environ) if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {args.timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"status": "error", "returncode": proc.returncode, "error": "\n".join(tail)}
    return json.loads(lines[-1])


def _median_run(runs):
    """The run with the median epoch time among several rounds (all times kept)."""
    ok = sorted((r for r in runs if r.get("status") == "ok"), key=lambda r: r["time"])
    if not ok:
        return dict(runs[0])
    res = dict(ok[(len(ok) - 1) // 2])
    res["round_times"] = [r["time"] for r in ok]
    res["peak_rss_mib"] = max(r.get("peak_rss_mib", 0.0) for r in ok)
    return res


def torch_threads(args):
    """torch runs at 1 thread and at fastnn's count; the faster is compared."""
    return sorted({1, args.threads})


def run_cell(args, batch: int, hidden: int) -> dict:
    cell = {"batch": batch, "hidden": hidden, "n_params": n_params(hidden), "results": {}}
    # Rounds interleave the libraries, so slow drifts of a shared machine hit all of them alike.
    raw = {}
    for _ in range(args.rounds):
        for lib in args.libs:
            if lib == "torch":
                for t in torch_threads(args):
                    raw.setdefault(("torch", t), []).append(
                        spawn("torch", args, batch=batch, hidden=hidden, threads=t))
            else:
                raw.setdefault((lib, None), []).append(spawn(lib, args, batch=batch, hidden=hidden))
    for lib in args.libs:
        if lib == "torch":
            runs = {t: _median_run(raw[("torch", t)]) for t in torch_threads(args)}
            ok = {t: r for t, r in runs.items() if r.get("status") == "ok"}
            if ok:
                best_t = max(ok, key=lambda t: ok[t]["examples_per_s"])
                res = dict(ok[best_t], best_threads=best_t)
            else:
                res = dict(runs[1])
            res["by_threads"] = {str(t): r for t, r in runs.items()}
        else:
            res = _median_run(raw[(lib, None)])
        if res.get("status") == "ok":
            # Same FLOP model for every library, kept in the raw JSON for comparison.
            res["gflops"] = 6.0 * res["n"] * cell["n_params"] / res["time"] / 1e9
        cell["results"][lib] = res
        status = res.get("status")
        if status != "ok":
            detail = res.get("error", "")
        elif lib == "torch":
            detail = ", ".join(f"{t}t {r['examples_per_s']:,.0f}" if r.get("status") == "ok"
                               else f"{t}t {r.get('status')}" for t, r in res["by_threads"].items())
            detail += " ex/s"
        else:
            detail = f"{res['examples_per_s']:,.0f} ex/s"
        print(f"  B={batch:<4} H={hidden:<5} {lib:<8} {status}: {detail}", file=sys.stderr, flush=True)
    return cell


# --------------------------------------------------------------------------- #
# reporting
# --------------------------------------------------------------------------- #
def _ok(res):
    return res is not None and res.get("status") == "ok"


def table_rows(cells, libs, peak_t):
    """Header + one row of strings per cell."""
    header = ["batch", "H"]
    header += [f"{lib} ex/s" for lib in libs]
    header += [f"fastnn/{lib}" for lib in libs if lib != "fastnn"] if "fastnn" in libs else []
    if "fastnn" in libs:
        header += ["fastnn GFLOP/s", "% sgemm peak"]
    header += [f"{lib} RSS MiB" for lib in libs]
    rows = []
    for cell in cells:
        r = cell["results"]
        row = [str(cell["batch"]), str(cell["hidden"])]
        for lib in libs:
            res = r.get(lib)
            if not _ok(res):
                row.append("n/a" if res is None or res.get("status") == "n/a" else "error")
            elif lib == "torch":
                row.append(f"{res['examples_per_s']:,.0f} ({res['best_threads']}t)")
            else:
                row.append(f"{res['examples_per_s']:,.0f}")
        fn_res = r.get("fastnn")
        if "fastnn" in libs:
            for lib in libs:
                if lib == "fastnn":
                    continue
                other = r.get(lib)
                row.append(f"{fn_res['examples_per_s'] / other['examples_per_s']:.2f}x"
                           if _ok(fn_res) and _ok(other) else "-")
            if _ok(fn_res):
                row.append(f"{fn_res['gflops']:.1f}")
                row.append(f"{100.0 * fn_res['gflops'] / peak_t:.0f}%" if peak_t else "-")
            else:
                row += ["-", "-"]
        for lib in libs:
            res = r.get(lib)
            row.append(f"{res['peak_rss_mib']:.0f}" if _ok(res) else "-")
        rows.append(row)
    return header, rows


def format_text(header, rows) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_markdown(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def notes(cells, peak, threads) -> list[str]:
    out = []
    if peak.get("status") == "ok":
        kernels = ", ".join(f"{b['prefix']} {b['version']} ({b['architecture']})" for b in peak["blas"])
        out.append(f"sgemm peak (numpy {peak['numpy']}, {peak['size']}^3 float32, {kernels}): "
                   + ", ".join(f"{peak[f'gflops_{t}t']:.1f} GFLOP/s @{t} thread{'s' if t > 1 else ''}"
                               for t in sorted({1, threads})))
    else:
        out.append(f"sgemm peak: unavailable ({peak.get('error', peak.get('status'))})")
    seen = set()
    for cell in cells:
        for lib, res in cell["results"].items():
            note = res.get("note")
            if note and (lib, note) not in seen:
                seen.add((lib, note))
                out.append(f"{lib} (B={cell['batch']}): {note}")
            if res.get("status") == "error":
                out.append(f"{lib} B={cell['batch']} H={cell['hidden']} failed: {res.get('error')}")
    out.append("fastnn GFLOP/s = 6 * examples * n_params / epoch time; times are the median of "
               "the timed epochs; RSS = peak resident set of the worker process.")
    return out


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo, else lscpu, else the platform module."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


# the full grid (the README's tables) and --quick's one cell (under a minute on 2 cores)
FULL = dict(batch=[32, 128, 512], hidden=[64, 256, 1024], n=60000, repeats=3, rounds=1,
            sklearn_n=60000, gemm_size=2048)
QUICK = dict(batch=[128], hidden=[256], n=12000, repeats=2, rounds=3, sklearn_n=4000, gemm_size=1024)


def build_parser(prog=None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="one cell (batch 128, H 256, 12000 examples, 3 rounds): under a minute")
    p.add_argument("--batch", type=int, nargs="+", help=f"batch sizes (default {FULL['batch']})")
    p.add_argument("--hidden", type=int, nargs="+", help=f"hidden sizes H (default {FULL['hidden']})")
    p.add_argument("--repeats", type=int, help="timed epochs per worker (median reported)")
    p.add_argument("--rounds", type=int,
                   help="workers per library and cell, interleaved; the median round is reported")
    p.add_argument("--libs", nargs="+", choices=LIBS,
                   help="libraries to run (default: fastnn and every installed peer)")
    p.add_argument("--n", type=int, help=f"examples per epoch (default {FULL['n']})")
    p.add_argument("--sklearn-n", type=int,
                   help="subsample for scikit-learn (slow); its examples/s are per example seen")
    p.add_argument("--gemm-size", type=int, help="matrix size for the sgemm peak")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for fastnn and scikit-learn's BLAS; torch runs at 1 and this "
                        "(default: fastnn.get_num_threads())")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="bf16-mixed: fastnn's bfloat16 products against torch.autocast's (jax and "
                        "scikit-learn are left out)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per worker subprocess")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: run every library as on a CPU without AVX-512 (fastnn's AVX2 build, "
                        "OpenBLAS's Haswell kernels, PyTorch/MKL/oneDNN held to AVX2; JAX left out)")
    p.add_argument("--json", "--out", dest="json", metavar="PATH", help="write raw results as JSON here")
    p.add_argument("--markdown", action="store_true", help="also print a GitHub markdown table")
    p.add_argument("--inference", action="store_true",
                   help="measure predict's latency and throughput against torch and onnxruntime instead "
                        "(fastnn bench --inference --help lists its options)")
    # Internal: run one measurement in this process and print JSON.
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    return p


def parse_args(argv=None, prog=None):
    p = build_parser(prog)
    args = p.parse_args(argv)
    for key, val in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    for key in ("n", "repeats", "rounds", "sklearn_n", "gemm_size"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.worker in ("fastnn", "torch", "jax", "sklearn") and (len(args.batch) != 1 or len(args.hidden) != 1):
        p.error("--worker takes exactly one --batch and one --hidden")
    if args.worker:
        args.batch, args.hidden = args.batch[0], args.hidden[0]
        args.threads = args.threads or 1
    return args


def run(args) -> dict:
    """Run the comparison of ``args`` (from ``parse_args``); print it; return the results."""
    from ._config import cpu_count, get_num_threads
    from ._core import _engine

    installed = available_libs()
    if args.precision != "float32":
        installed = [lib for lib in installed if lib in BF16_LIBS]
    libs = [lib for lib in LIBS if lib in (args.libs or installed)]
    skipped = [lib for lib in LIBS if lib not in installed and not args.libs]
    held = isa_env(args.isa)
    if held and "jax" in libs:
        libs.remove("jax")
        print(AVX2_NO_JAX, flush=True)
    args.libs = libs
    if args.threads is None:
        args.threads = get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cpu = cpu_name()
    openmp = bool(_engine.OPENMP)
    print(f"CPU: {cpu}; {os.cpu_count()} logical cores, {cpu_count()} usable by this process", flush=True)
    print(f"threads: fastnn {args.threads} (OpenMP {'on' if openmp else 'OFF: serial build'}), "
          f"scikit-learn's BLAS {args.threads}, torch 1 and {args.threads} (the faster shown), "
          "jax its own pool", flush=True)
    if skipped:
        print(f"not installed, skipped: {', '.join(skipped)}", flush=True)
    if load > 0.5:
        # Other busy processes steal cores from OpenMP/BLAS pools and skew every number.
        print(f"warning: 1-min load average is {load:.2f}; timings will be noisy", file=sys.stderr)
    if held:
        print("held to AVX2: " + " ".join(f"{k}={v}" for k, v in held.items()), flush=True)
    forced = [f"{k}={os.environ[k]}" for k in OPENBLAS_VARS if k in os.environ and k not in held]
    if forced:
        # fastnn's GEMMs are OpenBLAS's (through SciPy); a forced core type can mean older, slower
        # kernels (Haswell's AVX2 on an AVX-512 CPU), while torch and jax bring their own GEMMs
        print(f"warning: {' '.join(forced)} is set and holds fastnn's OpenBLAS to that core type's "
              f"kernels; unset it for this command (env -u {' -u '.join(k for k in OPENBLAS_VARS)} ...) "
              "unless this machine needs it", file=sys.stderr)
    peak_env = {k: v for k, v in os.environ.items() if k not in OPENBLAS_VARS}
    peak_env.update(held)
    print("measuring sgemm peak ...", file=sys.stderr, flush=True)
    peak = spawn("peak", args, env=peak_env)
    args.env = dict(os.environ, **held)

    cells = [run_cell(args, b, h) for b in args.batch for h in args.hidden]

    header, rows = table_rows(cells, libs, peak.get(f"gflops_{args.threads}t"))
    print(f"\nOne training epoch, {args.n} x {N_FEATURES} float32, MLP 784-H-H-10, "
          f"SGD(lr={LR}, momentum={MOMENTUM}); median of {args.rounds} interleaved round(s) "
          f"of {args.repeats} epoch(s)" + ("; precision bf16-mixed (fastnn) / torch.autocast bfloat16"
                                         if args.precision != "float32" else "") + "\n")
    print(format_text(header, rows))
    print()
    for note in notes(cells, peak, args.threads):
        print("* " + note)
    if args.markdown:
        print("\n" + format_markdown(header, rows))

    meta = {"argv": sys.argv, "python": sys.version, "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "threads": args.threads, "openmp": openmp,
            "libs": libs, "skipped": skipped, "loadavg_at_start": load,
            "n": args.n, "sklearn_n": args.sklearn_n, "repeats": args.repeats, "rounds": args.rounds,
            "lr": LR, "momentum": MOMENTUM, "precision": args.precision,
            "openblas_env": {k: os.environ.get(k) for k in OPENBLAS_VARS}, "isa": args.isa, "held": held,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result = {"meta": meta, "sgemm_peak": peak, "cells": cells,
              "table": {"header": header, "rows": rows}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nraw results written to {args.json}", file=sys.stderr)
    return result


def main(argv=None, prog=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--inference" in argv:
        # predict's latency and throughput against torch and onnxruntime (fastnn/infer_bench.py)
        from fastnn import infer_bench

        argv.remove("--inference")
        return infer_bench.main(argv, prog=f"{prog or 'fastnn bench'} --inference")
    args = parse_args(argv, prog)
    if args.worker:
        run_worker(args)
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
