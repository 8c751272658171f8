"""Thread count, BLAS limits and build information."""
import os
import sys
from contextlib import contextmanager

from . import _core
from ._core import _engine

__version__ = "0.1.0"

_num_threads = None


def cpu_count():
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n):
    """Set the number of threads training uses (``None`` restores the default).

    A negative ``n`` counts back from the available cores: -1 is all of them.
    """
    global _num_threads
    if n is not None:
        _num_threads = _check_threads(n, "n")
    else:
        _num_threads = None


def _check_threads(n, name):
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"{name} must be an int (number of threads) or None, got {type(n).__name__}")
    n = int(n)
    if n == 0:
        raise ValueError(f"{name}=0 is not a thread count; use a positive number, or -1 for all cores")
    if n < 0:
        n = max(1, cpu_count() + 1 + n)
    return n


def get_num_threads():
    """Threads a fit uses by default: set_num_threads, else OMP_NUM_THREADS, else all cores."""
    if not _engine.OPENMP:
        return 1
    if _num_threads is not None:
        return _num_threads
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return cpu_count()


def resolve_threads(threads):
    """The thread count for one call: ``threads`` if given, else the default."""
    if threads is None:
        return get_num_threads()
    n = _check_threads(threads, "threads")
    return n if _engine.OPENMP else 1


_controller = None


def _blas_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


_blas_libs = None


@contextmanager
def blas_single_thread():
    """Hold BLAS to one thread: fastnn calls it from inside its own parallel loops. The libraries
    are found once per process; a call only reads and sets their thread counts."""
    global _blas_libs
    if _blas_libs is None:
        _blas_libs = [lib for lib in _blas_controller().lib_controllers if lib.user_api == "blas"]
    changed = [(lib, n) for lib, n in ((lib, lib.get_num_threads()) for lib in _blas_libs) if n != 1]
    for lib, _ in changed:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in changed:
            lib.set_num_threads(n)


def show_config(file=None):
    """Print the version, OpenMP status, the core's instruction-set build, default thread count and
    BLAS in use."""
    file = file or sys.stdout
    ctl = _blas_controller()
    blas = [lib.info() for lib in ctl.lib_controllers if lib.user_api == "blas"]
    lines = [
        f"fastnn {__version__}",
        f"  OpenMP:          {'on' if _engine.OPENMP else 'off (serial build)'}",
        f"  core build:      {_core.ISA}",
        f"  bf16 products:   {_engine.bf16_kernel()} (available: {', '.join(_engine.bf16_kernels())})",
        f"  threads per fit: {get_num_threads()}"
        + (" (set_num_threads)" if _num_threads is not None else
           " (OMP_NUM_THREADS)" if os.environ.get("OMP_NUM_THREADS") else " (all cores)"),
        f"  cores available: {cpu_count()}",
    ]
    if blas:
        for b in blas:
            lines.append(f"  BLAS:            {b.get('internal_api')} {b.get('version')} "
                         f"({b.get('architecture')}) {b.get('filepath')}")
    else:
        lines.append("  BLAS:            scipy.linalg.cython_blas (not reported by threadpoolctl)")
    print("\n".join(lines), file=file)
