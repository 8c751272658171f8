"""The command line every example shares: --small, --seed, --threads, --plot."""
import argparse
import sys


def has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run_example(main, doc, plot_help, seed_help="seed of the data, initialisation and shuffling", extra=()):
    """Parse the shared flags and call ``main(small=, seed=, plot=, threads=)``; ``extra``:
    ``(flag, argparse keywords)`` of an example's own flags, passed to ``main`` by name."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="a smaller, faster run (well under 2 s)")
    ap.add_argument("--seed", type=int, default=0, help=seed_help)
    ap.add_argument("--threads", type=int, default=None, help="threads (the numbers do not depend on it)")
    ap.add_argument("--plot", metavar="OUT.png", default=None, help=plot_help + " (needs matplotlib)")
    for flag, kw in extra:
        ap.add_argument(flag, **kw)
    args = ap.parse_args()
    if args.plot and not has_matplotlib():
        print("--plot needs matplotlib, which is not installed (pip install 'fastnn-cpu[plot]' or "
              "pip install matplotlib); running without the plot", file=sys.stderr)
        args.plot = None
    own = {flag.lstrip("-").replace("-", "_"): None for flag, _ in extra}
    return main(small=args.small, seed=args.seed, plot=args.plot, threads=args.threads,
                **{k: getattr(args, k) for k in own})
