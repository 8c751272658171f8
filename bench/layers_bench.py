#!/usr/bin/env python3
"""One training epoch of normalised, residual and convolutional networks: fastnn against PyTorch.

Models (10 classes, softmax cross-entropy, SGD lr 0.01 momentum 0.9, N synthetic float32
examples shuffled every epoch):

- ``bn``:  784-256-BN-ReLU-256-BN-ReLU-10
- ``res``: 784->256, four pre-LayerNorm blocks (LayerNorm, Dense 256-256, ReLU, Dense 256-256),
  LayerNorm, ->10
- ``lenet``: LeNet-5 on 1x28x28: conv 6@5x5 pad 2, ReLU, maxpool 2, conv 16@5x5, ReLU, maxpool 2,
  flatten, 120, 84, 10 (ReLU)
- ``cnn1d``: 1x40: conv 25@5 pad 2, ReLU, conv 25@3 pad 1, ReLU, conv 25@3 pad 1, ReLU, flatten, 10
- ``cifar``: 3x32x32: [conv 3x3 32 pad 1, BatchNorm2d, ReLU, maxpool 2], [64, same],
  [conv 128, BN, ReLU], global average pool, 10
- ``lstm``, ``gru``, ``rnn``: 50 steps of 32 features, one recurrent layer of hidden size 128, the last
  step's hidden state -> Dense -> 10

Every (library, model, batch, threads) run is its own process; the libraries are interleaved
round by round; torch gets its better thread setting (1 or 2). JAX (when installed; the
convolutional nets) runs a ``jax.jit``-compiled training step in a Python loop on its default
threads (a ``lax.scan`` over the steps, as ``bench/compare.py`` compiles the MLP's epoch, runs these
convolutions some 20x slower on XLA's CPU backend). Prints ex/s, the ratios, and peak RSS, with
the CPU model.

    python bench/layers_bench.py --batch 32 128 --rounds 3
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

D_IN, D_H, N_CLASSES, LR, MOM = 784, 256, 10, 0.01, 0.9
T_STEPS, F_SEQ, H_SEQ = 50, 32, 128
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
SHAPES = {"bn": (D_IN,), "res": (D_IN,), "lenet": (1, 28, 28), "cnn1d": (1, 40), "cifar": (3, 32, 32),
          **{cell: (T_STEPS, F_SEQ) for cell in GATES}}
# multiply-adds per example (forward), for GFLOP/s
MACS = {"lenet": 6 * 25 * 784 + 16 * 150 * 100 + 400 * 120 + 120 * 84 + 84 * 10,
        "cnn1d": 25 * 5 * 40 + 25 * 75 * 40 * 2 + 1000 * 10,
        "cifar": 32 * 27 * 1024 + 64 * 288 * 256 + 128 * 576 * 64 + 128 * 10,
        # the recurrent matrix products: T (F + H) G H per example
        **{cell: T_STEPS * (F_SEQ + H_SEQ) * g * H_SEQ for cell, g in GATES.items()}}


def data(n, kind="bn"):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = SHAPES[kind]
    X = (0.1 * rng.standard_normal((n,) + shape)).astype(np.float32)
    flat = X.reshape(n, -1)
    y = np.argmax(flat @ rng.standard_normal((flat.shape[1], N_CLASSES)).astype(np.float32), axis=1)
    return X, y.astype(np.int64)


def fastnn_model(kind):
    import fastnn as fn

    if kind == "bn":
        return fn.Sequential(fn.Dense(D_IN, D_H), fn.BatchNorm1d(D_H), fn.ReLU(), fn.Dense(D_H, D_H),
                             fn.BatchNorm1d(D_H), fn.ReLU(), fn.Dense(D_H, N_CLASSES), seed=0)
    if kind in GATES:
        cls = {"lstm": fn.LSTM, "gru": fn.GRU, "rnn": fn.RNN}[kind]
        return fn.Sequential(cls(F_SEQ, H_SEQ), fn.Dense(H_SEQ, N_CLASSES), input_shape=SHAPES[kind], seed=0)
    if kind == "lenet":
        return fn.Sequential(fn.Conv2d(1, 6, 5, padding=2), fn.ReLU(), fn.MaxPool2d(2), fn.Conv2d(6, 16, 5), fn.ReLU(),
                             fn.MaxPool2d(2), fn.Flatten(), fn.Dense(400, 120), fn.ReLU(), fn.Dense(120, 84),
                             fn.ReLU(), fn.Dense(84, N_CLASSES), input_shape=SHAPES[kind], seed=0)
    if kind == "cnn1d":
        return fn.Sequential(fn.Conv1d(1, 25, 5, padding=2), fn.ReLU(), fn.Conv1d(25, 25, 3, padding=1), fn.ReLU(),
                             fn.Conv1d(25, 25, 3, padding=1), fn.ReLU(), fn.Flatten(), fn.Dense(1000, N_CLASSES),
                             input_shape=SHAPES[kind], seed=0)
    if kind == "cifar":
        def stage(i, o, pool=True):
            return [fn.Conv2d(i, o, 3, padding=1), fn.BatchNorm2d(o), fn.ReLU()] + ([fn.MaxPool2d(2)] if pool else [])
        return fn.Sequential(*stage(3, 32), *stage(32, 64), *stage(64, 128, False), fn.AdaptiveAvgPool2d(1),
                             fn.Flatten(), fn.Dense(128, N_CLASSES), input_shape=SHAPES[kind], seed=0)
    blocks = [fn.Residual(fn.LayerNorm(D_H), fn.Dense(D_H, D_H), fn.ReLU(), fn.Dense(D_H, D_H)) for _ in range(4)]
    return fn.Sequential(fn.Dense(D_IN, D_H), *blocks, fn.LayerNorm(D_H), fn.Dense(D_H, N_CLASSES), seed=0)


def torch_epoch(m, X, y, batch, autocast=False):
    """One epoch of torch model ``m`` on NumPy X, y (full batches only, as fastnn's drop_last=True):
    ``fastnn.bench.torch_epoch``, the loop of ``fastnn bench``."""
    import torch
    from fastnn.bench import torch_epoch as epoch

    return epoch(m, torch.from_numpy(X), torch.from_numpy(y), batch, autocast=autocast, drop_last=True)


def torch_model(kind):
    import torch.nn as nn

    if kind == "bn":
        return nn.Sequential(nn.Linear(D_IN, D_H), nn.BatchNorm1d(D_H), nn.ReLU(), nn.Linear(D_H, D_H),
                             nn.BatchNorm1d(D_H), nn.ReLU(), nn.Linear(D_H, N_CLASSES))
    if kind in GATES:
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.rec = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind](F_SEQ, H_SEQ, batch_first=True)
                self.fc = nn.Linear(H_SEQ, N_CLASSES)

            def forward(self, x):
                return self.fc(self.rec(x)[0][:, -1])

        return Net()
    if kind == "lenet":
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                             nn.ReLU(), nn.Linear(84, N_CLASSES))
    if kind == "cnn1d":
        return nn.Sequential(nn.Conv1d(1, 25, 5, padding=2), nn.ReLU(), nn.Conv1d(25, 25, 3, padding=1), nn.ReLU(),
                             nn.Conv1d(25, 25, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1000, N_CLASSES))
    if kind == "cifar":
        def stage(i, o, pool=True):
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()] + ([nn.MaxPool2d(2)] if pool else [])
        return nn.Sequential(*stage(3, 32), *stage(32, 64), *stage(64, 128, False), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(128, N_CLASSES))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.LayerNorm(D_H), nn.Linear(D_H, D_H), nn.ReLU(), nn.Linear(D_H, D_H))

        def forward(self, x):
            return x + self.layers(x)

    return nn.Sequential(nn.Linear(D_IN, D_H), *[Block() for _ in range(4)], nn.LayerNorm(D_H),
                         nn.Linear(D_H, N_CLASSES))


JAX_KINDS = ("lenet", "cnn1d", "cifar")


def jax_epoch(kind, X, y, batch):
    """The model's parameters, momentum buffers and state, an epoch of compiled steps
    (params, velocity, state, key) -> (params, velocity, state, mean loss) and the examples it
    uses: torch's layers, initialisation bounds and momentum SGD, BatchNorm2d with batch
    statistics and running estimates, channels last."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import numpy as np
    import jax.numpy as jnp
    from jax import lax

    keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))

    def uniform(shape, fan_in):
        bound = 1.0 / fan_in ** 0.5
        return jax.random.uniform(next(keys), shape, jnp.float32, -bound, bound)

    def conv(cin, cout, k, pad, dims):
        shape = (k,) * dims + (cin, cout)
        return {"w": uniform(shape, cin * k ** dims), "b": uniform((cout,), cin * k ** dims), "pad": pad}

    def dense(i, o):
        return {"w": uniform((o, i), i), "b": uniform((o,), i)}

    layers, dims = [], 1 if kind == "cnn1d" else 2
    if kind == "lenet":
        layers = [("conv", conv(1, 6, 5, 2, 2)), ("relu",), ("max",), ("conv", conv(6, 16, 5, 0, 2)), ("relu",),
                  ("max",), ("flat",), ("dense", dense(400, 120)), ("relu",), ("dense", dense(120, 84)), ("relu",),
                  ("dense", dense(84, N_CLASSES))]
    elif kind == "cnn1d":
        layers = [("conv", conv(1, 25, 5, 2, 1)), ("relu",), ("conv", conv(25, 25, 3, 1, 1)), ("relu",),
                  ("conv", conv(25, 25, 3, 1, 1)), ("relu",), ("flat",), ("dense", dense(1000, N_CLASSES))]
    else:
        for i, o, pool in ((3, 32, True), (32, 64, True), (64, 128, False)):
            layers += [("conv", conv(i, o, 3, 1, 2)), ("bn", {"g": jnp.ones(o), "b": jnp.zeros(o)}), ("relu",)]
            layers += [("max",)] if pool else []
        layers += [("gap",), ("dense", dense(128, N_CLASSES))]
    params = [{k: v for k, v in (lay[1] if len(lay) > 1 else {}).items() if k != "pad"} for lay in layers]
    state = [{"mean": jnp.zeros(len(p["g"])), "var": jnp.ones(len(p["g"]))} if lay[0] == "bn" else {}
             for lay, p in zip(layers, params)]
    # channels last, XLA's own layout for convolutions on the CPU (examples are transposed once)
    spec = ("NHC", "HIO", "NHC") if dims == 1 else ("NHWC", "HWIO", "NHWC")

    def forward(params, state, x):
        new = []
        for lay, p, st in zip(layers, params, state):
            op = lay[0]
            if op == "conv":
                pad = lay[1]["pad"]
                x = lax.conv_general_dilated(x, p["w"], (1,) * dims, [(pad, pad)] * dims, dimension_numbers=spec)
                x = x + p["b"]
            elif op == "bn":
                mu, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
                m = x.shape[0] * x.shape[1] * x.shape[2]
                x = (x - mu) / jnp.sqrt(var + 1e-5) * p["g"] + p["b"]
                st = {"mean": 0.9 * st["mean"] + 0.1 * lax.stop_gradient(mu),
                      "var": 0.9 * st["var"] + 0.1 * lax.stop_gradient(var) * m / (m - 1)}
            elif op == "relu":
                x = jax.nn.relu(x)
            elif op == "max":
                x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            elif op == "gap":
                x = x.mean((1, 2))
            elif op == "flat":           # torch's (C, H, W) order, for the same Dense weights
                x = jnp.moveaxis(x, -1, 1).reshape(x.shape[0], -1)
            else:
                x = x @ p["w"].T + p["b"]
            new.append(st)
        return x, new

    def loss_fn(params, state, xb, yb):
        logits, state = forward(params, state, xb)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), yb[:, None], axis=1)), state

    n = X.shape[0]
    steps = n // batch
    Xd, yd = jax.device_put(np.ascontiguousarray(np.moveaxis(X, 1, -1))), jax.device_put(y.astype("int32"))

    @jax.jit
    def step(params, velocity, state, bi):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, Xd[bi], yd[bi])
        velocity = jax.tree.map(lambda v, g: MOM * v + g, velocity, grads)
        params = jax.tree.map(lambda p, v: p - LR * v, params, velocity)
        return params, velocity, state, loss

    # a jitted step in a Python loop, as JAX training loops run: XLA's CPU backend runs these
    # convolutions inside a lax.scan some 20x slower than the same step compiled alone
    def epoch(params, velocity, state, key):
        idx = jax.random.permutation(key, n)[:steps * batch].reshape(steps, batch)
        losses = []
        for s in range(steps):
            params, velocity, state, loss = step(params, velocity, state, idx[s])
            losses.append(loss)
        return params, velocity, state, jnp.mean(jnp.stack(losses))

    return params, jax.tree.map(jnp.zeros_like, params), state, epoch, steps * batch


def worker(lib, kind, batch, threads, n, repeats):
    X, y = data(n, kind)
    if lib == "jax":
        import jax

        params, velocity, state, run, n_used = jax_epoch(kind, X, y, batch)
        key = jax.random.PRNGKey(1)
        box = [params, velocity, state]

        def epoch():
            nonlocal key
            key, k = jax.random.split(key)
            *box[:], loss = run(*box, k)
            jax.block_until_ready((box, loss))

        n = n_used
    elif lib == "fastnn":
        import fastnn as fn

        m = fastnn_model(kind)
        opt = fn.SGD(lr=LR, momentum=MOM)

        def epoch():
            m.fit(X, y, loss=fn.CrossEntropy(), optimizer=opt, epochs=1, batch_size=batch, threads=threads,
                  drop_last=True)
    else:
        import torch

        torch.set_num_threads(threads)
        epoch = torch_epoch(torch_model(kind), X, y, batch)
    epoch()                                   # warm-up (JAX compiles here)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ex_s": n / statistics.median(times), "rss_mib": rss}


def spawn(lib, kind, batch, threads, a):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", lib, kind, str(batch), str(threads),
                          "--n", str(a.n), "--repeats", str(a.repeats)], capture_output=True, text=True,
                         check=True, env=dict(os.environ, **a.held))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(default_models=("bn", "res"), default_n=20000):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", "--cells", nargs="+", default=list(default_models), choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=default_n)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-jax", action="store_true", help="leave JAX out even where it is installed")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: every library as on a CPU without AVX-512 (JAX left out)")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        lib, kind, b, t = a.worker
        print(json.dumps(worker(lib, kind, int(b), int(t), a.n, a.repeats)))
        return
    from fastnn.bench import AVX2_NO_JAX, cpu_name, isa_env

    a.held = isa_env(a.isa)
    # found, not imported: a worker's peak RSS counts its parent's at the fork
    has_jax = not a.no_jax and not a.held and importlib.util.find_spec("jax") is not None
    print(f"# {cpu_name()}, fastnn {a.threads} threads, torch best of 1/{a.threads} threads, "
          f"jax its default threads, N={a.n}, median of {a.rounds} rounds")
    if a.held:
        print("# held to AVX2: " + " ".join(f"{k}={v}" for k, v in a.held.items()) + "; " + AVX2_NO_JAX)
    print("| model | batch | fastnn ex/s | torch ex/s | jax ex/s | fastnn/torch | fastnn/jax | fastnn GFLOP/s "
          "| RSS fastnn/torch/jax MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in a.models:
        for b in a.batch:
            use_jax = has_jax and kind in JAX_KINDS
            fa, ja, to = [], [], {1: [], a.threads: []}
            for _ in range(a.rounds):
                fa.append(spawn("fastnn", kind, b, a.threads, a))
                for t in sorted(to):
                    to[t].append(spawn("torch", kind, b, t, a))
                if use_jax:
                    ja.append(spawn("jax", kind, b, a.threads, a))
            f = statistics.median(r["ex_s"] for r in fa)
            best = max(to, key=lambda t: statistics.median(r["ex_s"] for r in to[t]))
            tv = statistics.median(r["ex_s"] for r in to[best])
            jv = statistics.median(r["ex_s"] for r in ja) if ja else None
            rss = [max(r["rss_mib"] for r in fa), max(r["rss_mib"] for r in to[best])]
            rss += [max(r["rss_mib"] for r in ja)] if ja else []
            gf = f"{6 * MACS[kind] * f / 1e9:.1f}" if kind in MACS else "-"
            jcol, jrat = (f"{jv:,.0f}", f"{f / jv:.2f}x") if jv else ("-", "-")
            print(f"| {kind} | {b} | {f:,.0f} | {tv:,.0f} ({best} thr) | {jcol} | {f / tv:.2f}x | {jrat} | {gf} "
                  f"| {'/'.join(f'{v:.0f}' for v in rss)} |", flush=True)


if __name__ == "__main__":
    main()
