#!/usr/bin/env python3
"""One training epoch of recurrent classifiers against PyTorch: ``bench/layers_bench.py`` with the
recurrent models (50 steps of 32 features, hidden 128, last step -> Dense -> 10) by default.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/rnn_bench.py --batch 32 128 --rounds 3 --n 4096
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import layers_bench  # noqa: E402

if __name__ == "__main__":
    layers_bench.main(default_models=("lstm", "gru"), default_n=4096)
