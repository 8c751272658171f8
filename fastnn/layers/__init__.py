"""Layers: configuration, shapes and NumPy views of their parameters. No math here.

One module per family (dense, activation, norm, conv, containers, recurrent, embedding); a layer
holds no storage until a ``Sequential`` places it, then its parameters (``weight``, ``bias``, ...) are views into the
model's one flat parameter buffer and its running statistics views into the buffer array.
"""
from .activation import Activation, Dropout, Flatten, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import (ACT_IDENTITY, ACT_LEAKY, ACT_RELU, ACT_SIGMOID, ACT_SOFTMAX, ACT_TANH, DROP_CLASSIC,
                   DROP_INVERTED, DROP_NONE, INITS, Layer)
from .containers import Residual
from .conv import (AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, BatchNorm2d, Conv1d, Conv2d,
                   Dropout2d, MaxPool1d, MaxPool2d)
from .dense import Dense, init_weights
from .embedding import Embedding
from .norm import BatchNorm1d, LayerNorm
from .recurrent import CELL_GRU, CELL_LSTM, CELL_RELU, CELL_TANH, GRU, LSTM, RNN, RNNBase

#: layer classes by name, for model files and torch interop
LAYER_TYPES = {c.__name__: c for c in (Dense, Identity, Flatten, Sigmoid, Tanh, ReLU, LeakyReLU, Softmax,
                                        Dropout, BatchNorm1d, LayerNorm, Residual, Conv1d, Conv2d, MaxPool1d,
                                        MaxPool2d, AvgPool1d, AvgPool2d, AdaptiveAvgPool1d, AdaptiveAvgPool2d,
                                        BatchNorm2d, Dropout2d, RNN, LSTM, GRU, Embedding)}
