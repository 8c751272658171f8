"""Data of any numeric type streams: the core converts each row as it gathers it, so a memory-mapped
uint8 or float64 data set trains without being copied whole, with the same result as converted data."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fn


@pytest.mark.parametrize("src", [np.uint8, np.int16, np.int32, np.float64, np.int64])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_any_numeric_dtype_trains_as_its_conversion(src, dtype, rng):
    X = rng.integers(0, 200, size=(61, 12)).astype(src)
    if np.dtype(src).kind == "f":
        X = X + rng.random(X.shape)
    y = rng.integers(0, 3, 61)
    res = []
    for data in (X, X.astype(dtype)):
        m = fn.Sequential(fn.Dense(12, 9), fn.ReLU(), fn.Dropout(0.2), fn.Dense(9, 3), dtype=dtype, seed=0)
        h = m.fit(data, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1e-3, momentum=0.9), epochs=2, batch_size=8,
                  validation_split=0.2)
        res.append((np.concatenate([p.ravel() for p in m.parameters()]), m.forward(data), h.history["val_loss"]))
    for a, b in zip(res[0], res[1]):
        np.testing.assert_array_equal(a, b)


def test_a_memmap_is_not_converted_up_front(tmp_path, rng):
    X = rng.integers(0, 255, size=(40, 8)).astype(np.uint8)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=X.shape)
    mm[...] = X
    mm.flush()
    m = fn.Sequential(fn.Dense(8, 2), seed=0)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    checked = m._check_X(mapped)
    assert checked.dtype == np.uint8 and np.shares_memory(checked, mapped)
    np.testing.assert_array_equal(m.forward(checked), m.forward(X.astype(np.float32)))


def test_nan_in_a_float64_memmap_is_still_refused(tmp_path):
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=(10, 3))
    mm[...] = 1.0
    mm[7, 2] = np.nan
    mm.flush()
    m = fn.Sequential(fn.Dense(3, 2), seed=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.forward(np.load(tmp_path / "x.npy", mmap_mode="r"))


RSS_SCRIPT = r"""
import sys, numpy as np, fastnn as fn
path, n, f = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def mib():
    # this process's own high-water mark (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024

X = np.load(path, mmap_mode="r")
y = (np.arange(n) % 10).astype(np.int64)
m = fn.Sequential(fn.Dense(f, 32), fn.ReLU(), fn.Dense(32, 10), seed=0)
m.fit(X[:256], y[:256], loss=fn.CrossEntropy(), epochs=1, batch_size=256)    # buffers, threads, warm
base = mib()
m.fit(X, y, loss=fn.CrossEntropy(), optimizer=fn.SGD(lr=1e-4), epochs=1, batch_size=512, threads=1)
print(base, mib())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
@pytest.mark.parametrize("src, n", [(np.uint8, 400_000), (np.float64, 50_000)])
def test_peak_memory_of_a_large_memmap(tmp_path, src, n):
    """~300 MB on disk: training reads it through the page cache (its pages count in the resident set
    while mapped) but never holds a converted copy (1.25 GB for the uint8 file, 150 MB for float64)."""
    f = 784
    path = tmp_path / "x.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=src, shape=(n, f))
    rng = np.random.default_rng(0)
    for r0 in range(0, n, 20_000):                      # written in blocks: this process stays small
        mm[r0:r0 + 20_000] = rng.integers(0, 255, size=(min(20_000, n - r0), f)).astype(src)
    mm.flush()
    del mm
    size_mib = os.path.getsize(path) / 2 ** 20
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(n), str(f)], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    base, peak = map(float, out.stdout.split())
    # the mapped file itself may be resident; a whole converted copy would add 4/8 of it more
    converted_mib = n * f * 4 / 2 ** 20
    assert peak - base < size_mib + 0.5 * converted_mib, (base, peak, size_mib)
