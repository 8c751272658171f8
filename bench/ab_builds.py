#!/usr/bin/env python3
"""Two builds of fastnn on the MLP grid's cells, alternating: did a change make training faster?

Each argument BUILD is a checkout with its extension built in place (``python setup.py build_ext
--inplace``). For every round and every (batch, hidden) cell, each build runs the benchmark's own
fastnn worker (``fastnn/bench.py --worker fastnn``: one untimed epoch, then ``--repeats`` timed ones)
in its own process, the builds alternating, first one then the other, so that a machine that
drifts treats both alike. Prints each run's median ex/s and, per cell, the medians over the rounds
and their ratio, with the CPU model::

    python bench/ab_builds.py /tmp/old . --batch 512 --hidden 1024 --rounds 3
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fastnn.bench import cpu_name  # noqa: E402


def run(build, batch, hidden, args):
    build = os.path.abspath(build)
    cmd = [sys.executable, os.path.join(build, "fastnn", "bench.py"), "--worker", "fastnn",
           "--batch", str(batch), "--hidden", str(hidden), "--n", str(args.n),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=build)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    res = json.loads(out.strip().splitlines()[-1])
    if res.get("status") != "ok":
        raise SystemExit(f"{build}: {res}")
    return res["examples_per_s"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("builds", nargs=2, metavar="BUILD", help="two checkouts, each built in place")
    p.add_argument("--batch", type=int, nargs="+", default=[512])
    p.add_argument("--hidden", type=int, nargs="+", default=[1024])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=20000, help="examples per epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per run")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    for b in args.builds:
        if not os.path.isfile(os.path.join(b, "fastnn", "bench.py")):
            p.error(f"BUILD {b!r} is not a fastnn checkout (no fastnn/bench.py); pass its root")
    print(f"CPU: {cpu_name()}; {args.threads} threads; A = {args.builds[0]}, B = {args.builds[1]}")
    cells = [(b, h) for b in args.batch for h in args.hidden]
    got = {c: ([], []) for c in cells}
    for r in range(args.rounds):
        for batch, hidden in cells:
            for i, build in enumerate(args.builds):
                got[batch, hidden][i].append(run(build, batch, hidden, args))
            a, b = got[batch, hidden][0][-1], got[batch, hidden][1][-1]
            print(f"round {r + 1}  {batch}/{hidden}  A {a:,.0f}  B {b:,.0f} ex/s", flush=True)
    print("\n| batch | H | A ex/s | B ex/s | B/A |\n|---:|---:|---:|---:|---:|")
    for batch, hidden in cells:
        a, b = (statistics.median(v) for v in got[batch, hidden])
        print(f"| {batch} | {hidden} | {a:,.0f} | {b:,.0f} | {b / a:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
