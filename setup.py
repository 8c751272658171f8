"""Build fastnn's compiled core, with OpenMP when the compiler has it.

OpenMP is probed by compiling *and running* a tiny program.  Without it the
core builds serial (loudly); ``FASTNN_REQUIRE_OPENMP=1`` makes that an error.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

OMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel num_threads(2) reduction(+:n)
        n += 1;
        printf("%d\\n", n);
        return n == 2 ? 0 : 1;
    }
    """
)


def _openmp_flags():
    """Return (compile_args, link_args) for OpenMP, or None when it does not work."""
    import sysconfig

    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    candidates = [["-fopenmp"], ["-Xpreprocessor", "-fopenmp"], ["-qopenmp"]]
    link_extra = {"-Xpreprocessor": ["-lomp"]}
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "omp.c")
        exe = os.path.join(tmp, "omp")
        with open(src, "w") as f:
            f.write(OMP_TEST)
        for flags in candidates:
            link = flags + link_extra.get(flags[0], [])
            try:
                subprocess.run(cc + flags + [src, "-o", exe] + link, check=True,
                               capture_output=True, timeout=120)
                out = subprocess.run([exe], check=True, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                continue
            if out.stdout.strip() == b"2":
                return flags, link
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_x86_64():
    import platform

    return platform.machine().lower() in ("x86_64", "amd64")


def _compiles(flags):
    """Whether the C compiler accepts ``flags`` (compiling a trivial file)."""
    import sysconfig

    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        r = subprocess.run(cc + flags + ["-c", src, "-o", os.path.join(tmp, "t.o")], capture_output=True,
                           timeout=60)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extensions():
    omp = _openmp_flags()
    # -ffp-contract=off: no FMA contraction behind the formulas, so results do not depend on the
    # target; -fno-math-errno: sqrt need not set errno, and -fno-trapping-math: no operation raises
    # a trap the program would see, so a loop with a division under a condition (the recurrent
    # gates' tanh) vectorizes with AVX2's blends as it does with AVX-512's masks (without it the AVX2
    # LSTM gates ran scalar, 6x slower). Values are unchanged, unlike -ffast-math.
    compile_args = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
    link_args = []
    if omp is None:
        msg = ("fastnn: the C compiler has no working OpenMP; building a SERIAL core "
               "(training uses one thread). Install an OpenMP runtime (libgomp/libomp) "
               "and rebuild for parallel training.")
        if os.environ.get("FASTNN_REQUIRE_OPENMP", "0") not in ("", "0"):
            sys.exit("error: FASTNN_REQUIRE_OPENMP is set but " + msg)
        print("\n" + "!" * 78 + "\n" + msg + "\n" + "!" * 78 + "\n", file=sys.stderr)
    else:
        compile_args += omp[0]
        link_args += omp[1]
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    depends = sorted(glob.glob("fastnn/_core/*.pxi")) + ["fastnn/_core/_engine.pyx"]
    # the baseline build runs on any x86-64; the x86-64-v3 (AVX2) and -v4 (AVX-512) builds of the same
    # source are picked at import when the CPU has them (fastnn/_core/__init__.py), so one wheel
    # vectorizes every elementwise loop as wide as the machine allows
    variants = [("_engine_v1", [])]
    if _is_x86_64():
        variants += [(f"_engine_v{v}", [f"-march=x86-64-v{v}"]) for v in (3, 4) if _compiles([f"-march=x86-64-v{v}"])]
    exts = [Extension(
        f"fastnn._core.{name}",
        [f"fastnn/_core/{name}.pyx"],
        depends=depends,
        include_dirs=[np.get_include()],
        extra_compile_args=compile_args + march,
        extra_link_args=link_args,
        define_macros=macros,
    ) for name, march in variants]
    return cythonize(
        exts,
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=_extensions())
