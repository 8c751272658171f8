"""fastnn: fast, deterministic neural-network training on the CPU.

    import fastnn as fn
    model = fn.Sequential(fn.Dense(64, 128), fn.ReLU(), fn.Dense(128, 10))
    model.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=0.1, momentum=0.9), epochs=10)
"""
from . import data, io, optim, schedules
from ._config import __version__, get_num_threads, set_num_threads, show_config
from .callbacks import Callback, EarlyStopping, History
from .diagnostics import Diagnostics, DiagnosticWarning, gradient_norms_through_time, plot_diagnostics
from .layers import (GRU, LSTM, RNN, AdaptiveAvgPool1d, AdaptiveAvgPool2d, AvgPool1d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                     Conv1d, Conv2d, Dense, Dropout, Dropout2d, Embedding, Flatten, Identity, LayerNorm, LeakyReLU,
                     MaxPool1d, MaxPool2d, ReLU, Residual, Sigmoid, Softmax, Tanh)
from .losses import MSE, BinaryCrossEntropy, CrossEntropy, KLDiv, Loss, NLLLoss
from .model import Sequential, TrainingDiverged
from .lr_finder import find_lr
from .optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, clip_grad_norm

__all__ = [
    "Sequential", "Dense", "BatchNorm1d", "LayerNorm", "Residual", "Flatten", "Identity",
    "Conv1d", "Conv2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d", "BatchNorm2d", "Dropout2d", "Embedding", "RNN", "LSTM", "GRU",
    "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax", "Dropout",
    "Loss", "MSE", "BinaryCrossEntropy", "CrossEntropy", "NLLLoss", "KLDiv",
    "find_lr", "clip_grad_norm", "Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "optim", "data",
    "Callback", "History", "EarlyStopping", "Diagnostics", "DiagnosticWarning", "gradient_norms_through_time", "plot_diagnostics", "TrainingDiverged", "schedules",
    "set_num_threads", "get_num_threads", "show_config", "__version__", "load", "from_torch",
]


def load(path):
    """Read a model written by ``Sequential.save`` (safetensors; never executes code)."""
    from .io import load_model

    return load_model(path)


def from_torch(module, dtype=None, input_shape=None):
    """A fastnn Sequential equivalent to a supported ``torch.nn.Sequential`` (needs torch); see
    ``fastnn.io.from_torch``."""
    from .io import from_torch as _from_torch

    return _from_torch(module, dtype=dtype, input_shape=input_shape)
