#!/usr/bin/env bash
# Every test that runs without a GPU: set up, build (the CUDA code is compiled when nvcc is
# present), unit + integration tests through CTest, the Python client's pytest suite against a
# real daemon, and the lint of deploy/ files and scripts. GPU tests: tests/gpu/run_all.sh on a
# GPU host (see docs/BENCHMARKS.md and README).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
build_dir=${BUILD_DIR:-build}
repo=$PWD

echo "== C++ unit and integration tests (ctest)"
ctest --test-dir "$build_dir" --output-on-failure -j "${JOBS:-$(nproc)}" --timeout 600

echo "== Python client tests (pytest)"
.venv/bin/python -m pip install -q "./client/python[test]"
ATTND_BIN="$repo/$build_dir/bin/attnd" .venv/bin/python -m pytest -q -p no:cacheprovider tests/python

if [ -x scripts/lint.sh ]; then
  echo "== lint (deploy manifests, scripts)"
  ./scripts/lint.sh
fi
echo "== reliability: sanitizers, fuzzing, soak (scripts/test-reliability.sh)"
BUILD_DIR="$build_dir" ./scripts/test-reliability.sh

echo "test: all passed"
