#!/usr/bin/env python3
"""Peer comparison of one MLP training epoch: fastnn vs torch, jax and scikit-learn.

The benchmark lives in the package (``fastnn/bench.py``) so that ``fastnn bench`` runs it on
any installed copy; this script runs the same code from a checkout, with the same options
(``--quick``, ``--json PATH``, ``--markdown``, ``--libs``, ``--batch``, ``--hidden``, ...)::

    python bench/compare.py --libs fastnn torch jax --rounds 2 --markdown
"""
import os
import sys

if __name__ == "__main__":
    try:
        from fastnn.bench import main
    except ImportError:
        # not installed: the checkout's in-place build
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from fastnn.bench import main
    sys.exit(main(prog="bench/compare.py"))
