"""Helpers shared by the file writers (``io``, ``onnx``), the command line, the distributed fit and the
buffers of the model, the optimizers and the inference runners.

- ``check_write_path``: a path fit to write a file to, checked before the work that produces it;
- ``atomic_write``: replace a file whole, so a reader never sees a partial one;
- ``mpi``: the ``mpi4py.MPI`` module, or an ImportError saying how to install it;
- ``aligned_empty``, ``aligned_zeros``: arrays that start on a 64-byte boundary (cache lines).
"""
import math
import os
import uuid

import numpy as np


def check_write_path(path):
    """``path`` as a str, refused early when it is a directory or its directory is missing."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory; give a file name such as model.safetensors")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"path {path!r}: directory {parent!r} does not exist; create it first")
    return path


def atomic_write(path, data):
    """Write to a new file in the same directory, fsync it, rename it over ``path``, fsync the
    directory: readers see the old file or the new one, never a partial one."""
    d, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(d, f".{base}.{uuid.uuid4().hex}.tmp")
    # O_EXCL: never follow or clobber anything already there; mode 0o666 lets the umask decide,
    # as for any file the user creates
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def _fsync_dir(d):
    # makes the rename itself durable; some platforms (Windows) cannot open a directory
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def mpi():
    """The ``mpi4py.MPI`` module (an ImportError naming the extra to install when it is missing)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError('comm= needs mpi4py and an MPI library: pip install "fastnn-cpu[mpi]"') from None
    return MPI


def aligned_empty(n, dtype):
    """An uninitialised 1-D array of n elements starting on a 64-byte boundary. The kernels read
    rows of weights, gradients and activations as whole vectors: a row straddling two cache lines
    costs a vector kernel a quarter of its speed (and halves AMX's)."""
    item = np.dtype(dtype).itemsize
    raw = np.empty(n * item + 64, dtype=np.uint8)
    off = -raw.ctypes.data % 64
    return raw[off:off + n * item].view(dtype)


def aligned_zeros(shape, dtype):
    """Zeros of ``shape`` (C order) starting on a 64-byte boundary."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    out = aligned_empty(math.prod(shape), dtype)
    out[...] = 0
    return out.reshape(shape)
