#!/usr/bin/env python3
"""Draw the documentation's pictures into docs/img/: the examples' plots and the benchmark charts.

    python scripts/doc_pictures.py              # both
    python scripts/doc_pictures.py --charts     # the benchmark charts, from docs/benchmarks.md's tables
    python scripts/doc_pictures.py --examples   # the examples' plots (a few minutes) and the diagnostics guide's

The charts read their numbers from the tables of docs/benchmarks.md (each marked by a
``<!-- chart-data: NAME -->`` line above it), so a table and its chart cannot disagree. Every PNG
is then reduced to a palette of at most 128 colours, which keeps it well under 100 KB.
Needs matplotlib and Pillow (matplotlib brings it).
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG = os.path.join(ROOT, "docs", "img")
# the examples with a --plot; each page of the site shows docs/img/NAME.png and this command
EXAMPLES = ["overfitting", "imbalanced", "learning_rates", "saturated_neuron", "symmetry_breaking",
            "vanishing_gradients", "cnn_digits", "adding_problem", "char_lm"]
AMD, INTEL, AVX2 = "AMD EPYC Zen 4 (AVX-512)", "Intel Xeon (AVX-512)", "AVX2 only (emulated on the Xeon)"


def example_command(name):
    return f"python examples/{name}.py --plot docs/img/{name}.png"


def tables(path):
    """{name: [row dict by header]} for every table below a ``<!-- chart-data: name -->`` line."""
    out, name, rows, header = {}, None, None, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"<!-- chart-data: (\S+) -->", line.strip())
            if m:
                name, rows, header = m.group(1), [], None
                out[name] = rows
                continue
            if name is None:
                continue
            if not line.startswith("|"):
                if header is not None:
                    name = None
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                rows.append(dict(zip(header, cells)))
    return out


def ratio(text):
    """A ratio cell ('2.12x', '**0.86x**', '1.41–1.49x') as a float; a range counts at its lower end."""
    m = re.search(r"\d+(?:\.\d+)?", text.replace("*", ""))
    return float(m.group()) if m else float("nan")


def bars(ax, labels, series, title):
    """Grouped bars, one group per label, one bar per (name, values) of ``series``; 1.0 marked."""
    import numpy as np

    width = 0.8 / len(series)
    x = np.arange(len(labels))
    for i, (name, values) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    top = max(v for _, values in series for v in values)
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.3 * top))       # room for the legend above the bars
    ax.legend(fontsize=8, loc="upper center", ncol=len(series))


def charts(md):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = tables(md)
    cell = lambda r: f"{r['batch']}/{r['H']}"                      # noqa: E731
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, key, title in ((axes[0], "mlp-amd", AMD), (axes[1], "mlp-intel", INTEL)):
        rows = t[key]
        bars(ax, [cell(r) for r in rows], [("fastnn/PyTorch", [ratio(r["fastnn/torch"]) for r in rows]),
                                          ("fastnn/JAX", [ratio(r["fastnn/jax"]) for r in rows])], title)
    rows = t["mlp-avx2"]
    bars(axes[2], [cell(r) for r in rows], [("fastnn/PyTorch", [ratio(r["fastnn/torch"]) for r in rows])], AVX2)
    axes[0].set_ylabel("speed ratio (above 1: fastnn faster)")
    for ax in axes:
        ax.set_xlabel("batch / H", fontsize=8)
    fig.suptitle("MLP 784-H-H-10, one training epoch", fontsize=11)
    fig.tight_layout()
    save(fig, "bench-mlp.png")

    amd = {(r["model"], r["batch"]): ratio(r["fastnn/torch"]) for r in t["nets-amd"] + t["rnn-amd"]}
    intel = {(r["model"], r["batch"]): ratio(r["fastnn/torch"]) for r in t["nets-intel"]}
    keys = [k for k in amd if k in intel]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    bars(ax, [f"{m} {b}" for m, b in keys], [(AMD, [amd[k] for k in keys]), (INTEL, [intel[k] for k in keys])],
         "fastnn/PyTorch, one training epoch, by network and batch size")
    ax.set_ylabel("speed ratio (above 1: fastnn faster)")
    fig.tight_layout()
    save(fig, "bench-nets.png")


def save(fig, name, dpi=80):
    import matplotlib.pyplot as plt

    path = os.path.join(IMG, name)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    shrink(path)


def shrink(path):
    """Reduce a PNG to a palette of at most 128 colours (plots use few), losslessly compressed."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=128, dither=Image.Dither.NONE)
    small.save(path, optimize=True)
    print(f"{os.path.relpath(path, ROOT)}: {os.path.getsize(path) // 1024} KB")


def diagnostics():
    """``fn.plot_diagnostics`` of the diagnostics guide's first example (a deep sigmoid net)."""
    import fastnn as fn

    X, y = fn.data.load_digits()
    model = fn.Sequential(fn.Dense(64, 30), fn.Sigmoid(), fn.Dense(30, 30), fn.Sigmoid(),
                          fn.Dense(30, 30), fn.Sigmoid(), fn.Dense(30, 10), seed=0)
    hist = model.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1), epochs=10, diagnostics=True)
    save(fn.plot_diagnostics(hist), "plot_diagnostics.png")


def examples():
    for name in EXAMPLES:
        cmd = example_command(name)
        print(cmd, flush=True)
        subprocess.run(cmd.replace("python", sys.executable, 1).split(), cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        shrink(os.path.join(ROOT, "docs", "img", f"{name}.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--charts", action="store_true", help="only the benchmark charts")
    ap.add_argument("--examples", action="store_true", help="only the examples' plots")
    args = ap.parse_args()
    both = not (args.charts or args.examples)
    os.makedirs(IMG, exist_ok=True)
    if args.charts or both:
        charts(os.path.join(ROOT, "docs", "benchmarks.md"))
    if args.examples or both:
        diagnostics()
        examples()


if __name__ == "__main__":
    main()
