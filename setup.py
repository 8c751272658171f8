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


def _extensions():
    omp = _openmp_flags()
    # -ffp-contract=off: no FMA contraction behind the formulas, so results do not depend on the
    # target; -fno-math-errno: sqrt need not set errno, so the optimizer loops vectorize (values
    # are unchanged, unlike -ffast-math).
    compile_args = ["-O3", "-ffp-contract=off", "-fno-math-errno"]
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
    ext = Extension(
        "fastnn._core._engine",
        ["fastnn/_core/_engine.pyx"],
        depends=sorted(glob.glob("fastnn/_core/*.pxi")),
        include_dirs=[np.get_include()],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=macros,
    )
    return cythonize(
        [ext],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    )


setup(ext_modules=_extensions())
