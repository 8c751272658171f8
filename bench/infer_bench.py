#!/usr/bin/env python3
"""Inference against PyTorch and onnxruntime: the MLP of ``fastnn bench --inference`` plus the
convolutional and recurrent nets of ``bench/layers_bench.py`` (``lenet``, ``cnn1d``, ``cifar``,
``lstm``, ``gru``, ``rnn``: the same layers and shapes, softmax over their 10 outputs).

The benchmark lives in the package (``fastnn/infer_bench.py``); this script runs it from a checkout
with the extra models and the same options::

    python bench/infer_bench.py                                   # the MLP at batch 1, 32, 4096
    python bench/infer_bench.py --models lenet cnn1d cifar lstm --batch 1 32 256 --rounds 3
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    from fastnn import infer_bench
except ImportError:
    # not installed: the checkout's in-place build
    sys.path.insert(0, os.path.dirname(HERE))
    from fastnn import infer_bench

sys.path.insert(0, HERE)
import layers_bench  # noqa: E402

for kind in ("lenet", "cnn1d", "cifar", "lstm", "gru", "rnn"):
    infer_bench.MODELS[kind] = (lambda k=kind: layers_bench.fastnn_model(k),
                                lambda k=kind: layers_bench.torch_model(k), layers_bench.SHAPES[kind])

if __name__ == "__main__":
    sys.exit(infer_bench.main(prog="bench/infer_bench.py", script=os.path.abspath(__file__)))
