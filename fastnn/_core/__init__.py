"""Compiled kernels (see _engine.pyx for the design).

``_engine`` is the build of the core for the widest instruction set this CPU runs: the same source
is compiled for the baseline target (``_engine_v1``), x86-64-v3 (AVX2) and x86-64-v4 (AVX-512), and the choice is made
here, once, from NumPy's CPU feature detection (which also checks that the OS saves the registers).
``FASTNN_ISA=baseline|v3|v4`` forces one (for comparing them).

The kernel of bfloat16 products (precision="bf16-mixed", bf16.pxi) is chosen here too: AMX tiles where
the CPU has AMX-BF16 and Linux grants the tile state, else AVX512-BF16, else emulation (both
hardware kernels exist in the x86-64-v4 build only). ``FASTNN_BF16=amx|avx512bf16|emulate`` forces
one; a kernel this CPU or build cannot run falls back to the best it can, with a warning.
"""
import importlib
import os
import warnings

_V4 = ("AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL")
_V3 = ("AVX2", "FMA3", "F16C", "POPCNT")


def cpu_features():
    """NumPy's runtime CPU feature flags ({"AVX2": True, ...}; empty where NumPy has none)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:            # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return __cpu_features__


def _pick():
    forced = os.environ.get("FASTNN_ISA", "").strip().lower()
    order = {"v4": ["_engine_v4"], "v3": ["_engine_v3"], "baseline": []}.get(forced)
    if order is None:
        f = cpu_features()
        order = []
        if all(f.get(k) for k in _V4):
            order.append("_engine_v4")
        if all(f.get(k) for k in _V3):
            order.append("_engine_v3")
    for name in order:
        try:
            return importlib.import_module(f"{__name__}.{name}"), name
        except ImportError:        # not built (another platform or compiler)
            continue
    return importlib.import_module(f"{__name__}._engine_v1"), "_engine_v1"


_engine, _name = _pick()
#: the instruction set of the build in use
ISA = {"_engine_v1": "baseline", "_engine_v3": "x86-64-v3 (AVX2)", "_engine_v4": "x86-64-v4 (AVX-512)"}[_name]
#: the same, as FASTNN_ISA names it
BUILD = {"_engine_v1": "baseline", "_engine_v3": "v3", "_engine_v4": "v4"}[_name]


def runnable_builds():
    """The builds this CPU runs, as FASTNN_ISA names them, narrowest first."""
    f = cpu_features()
    return ["baseline"] + ["v3"] * all(f.get(k) for k in _V3) + ["v4"] * all(f.get(k) for k in _V4)


def _cache_bytes(level):
    """A core's data (or unified) cache of ``level`` as the OS reports it (Linux sysfs), or 0."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for index in sorted(os.listdir(base)):
            d = os.path.join(base, index)
            with open(os.path.join(d, "level")) as f:
                lv = f.read().strip()
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            if lv == str(level) and kind in ("Data", "Unified"):
                with open(os.path.join(d, "size")) as f:
                    size = f.read().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 0


def l1_data_cache_bytes():
    """The L1 data cache of a core as the OS reports it (Linux sysfs), or 0 where it says nothing."""
    return _cache_bytes(1)


def l2_cache_bytes():
    """The L2 cache of a core as the OS reports it (Linux sysfs), or 0 where it says nothing."""
    return _cache_bytes(2)


# the own GEMMs' blocks sized to this CPU's L1 and L2 (their sums do not depend on it)
_engine.set_l1_cache(l1_data_cache_bytes())
_engine.set_l2_cache(l2_cache_bytes())


def _pick_bf16():
    available = _engine.bf16_kernels()
    forced = os.environ.get("FASTNN_BF16", "").strip().lower()
    if forced and forced not in available:
        warnings.warn(f"FASTNN_BF16={forced!r}: not one this CPU and build can run ({', '.join(available)}); "
                      f"using {available[-1]!r}", RuntimeWarning, stacklevel=3)
        forced = ""
    return _engine.bf16_use(forced or available[-1])


#: the kernel of bfloat16 products: "amx", "avx512bf16" or "emulate"
BF16 = _pick_bf16()
