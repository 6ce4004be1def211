#!/usr/bin/env bash
# Configures and builds attnd (daemon, kernels, clients, tests, benchmarks) into ${BUILD_DIR:-build}.
# CUDA: built when nvcc is found (ATTND_CUDA=AUTO|ON|OFF, env or default AUTO); sm_90a by default.
# Warnings (cmake/AttndWarnings.cmake) are errors in CI: ATTND_WERROR=ON when CI=true (env
# ATTND_WERROR=ON|OFF overrides either way).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
werror=${ATTND_WERROR:-$werror}
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DATTND_CUDA="${ATTND_CUDA:-AUTO}" \
  -DATTND_WERROR="$werror" \
  ${ATTND_CUDA_ARCHS:+-DATTND_CUDA_ARCHS="$ATTND_CUDA_ARCHS"} \
  ${ATTND_CUDA_HEAD_DIMS:+-DATTND_CUDA_HEAD_DIMS="$ATTND_CUDA_HEAD_DIMS"} \
  ${ATTND_BUILD_BENCH:+-DATTND_BUILD_BENCH="$ATTND_BUILD_BENCH"} \
  ${ATTND_BUILD_UNIT_TESTS:+-DATTND_BUILD_UNIT_TESTS="$ATTND_BUILD_UNIT_TESTS"} \
  ${ATTND_BUILD_GPU_TESTS:+-DATTND_BUILD_GPU_TESTS="$ATTND_BUILD_GPU_TESTS"}
start=$(date +%s)
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}"
echo "build: done in $(( $(date +%s) - start )) s -> $build_dir/bin/attnd"
