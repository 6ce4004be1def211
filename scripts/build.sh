#!/usr/bin/env bash
# Configures and builds attnd (daemon, kernels, clients, tests, benchmarks) into ${BUILD_DIR:-build}.
# A build directory copied or moved from another checkout is refused before CMake runs, with what
# to do (remove it, or BUILD_DIR=...).
# CUDA: built when nvcc is found (ATTND_CUDA=AUTO|ON|OFF, env or default AUTO); sm_90a by default.
# Warnings (cmake/AttndWarnings.cmake) are errors in CI: ATTND_WERROR=ON when CI=true (env
# ATTND_WERROR=ON|OFF overrides either way).
# BUILD_TARGETS="attnd attnd_example_client" builds only those targets (scripts/demo.sh).
# UNITY_BUILD=ON compiles the C++ sources outside tests/ in batches of 8 (CMake's unity build):
# about half their time on 2 cores, but an edit recompiles its whole batch, so it is for one-off
# builds (scripts/demo.sh without CUDA, .ci/run); scripts/lint.sh maps each source to its batch's
# compile command for clang-tidy. Always passed to CMake, default OFF, so it never sticks.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}

# A build directory configured for another source tree (copied or moved with its CMakeCache.txt)
# cannot be reused: CMake would stop with its raw cache error. Say what to do instead.
cache=$build_dir/CMakeCache.txt
if [ -f "$cache" ]; then
  cached_source=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$cache")
  cached_build=$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$cache")
  here_source=$(pwd -P)
  here_build=$(cd "$build_dir" && pwd -P)
  if { [ -n "$cached_source" ] && [ "$(cd "$cached_source" 2>/dev/null && pwd -P)" != "$here_source" ]; } ||
     { [ -n "$cached_build" ] && [ "$(cd "$cached_build" 2>/dev/null && pwd -P)" != "$here_build" ]; }; then
    cat >&2 <<EOF
build: $build_dir/ was configured for another checkout, or moved: its CMakeCache.txt names
  source tree      ${cached_source:-?}   (this one: $here_source)
  build directory  ${cached_build:-?}   (this one: $here_build)
CMake cannot reuse it. Remove it and build again:
  rm -rf $build_dir && ./scripts/build.sh
or build into another directory:
  BUILD_DIR=$build_dir-new ./scripts/build.sh
EOF
    exit 1
  fi
fi
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
werror=${ATTND_WERROR:-$werror}
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DATTND_CUDA="${ATTND_CUDA:-AUTO}" \
  -DATTND_WERROR="$werror" \
  -DCMAKE_UNITY_BUILD="${UNITY_BUILD:-OFF}" \
  ${ATTND_CUDA_ARCHS:+-DATTND_CUDA_ARCHS="$ATTND_CUDA_ARCHS"} \
  ${ATTND_CUDA_HEAD_DIMS:+-DATTND_CUDA_HEAD_DIMS="$ATTND_CUDA_HEAD_DIMS"} \
  ${ATTND_BUILD_BENCH:+-DATTND_BUILD_BENCH="$ATTND_BUILD_BENCH"} \
  ${ATTND_BUILD_UNIT_TESTS:+-DATTND_BUILD_UNIT_TESTS="$ATTND_BUILD_UNIT_TESTS"} \
  ${ATTND_BUILD_GPU_TESTS:+-DATTND_BUILD_GPU_TESTS="$ATTND_BUILD_GPU_TESTS"}
start=$(date +%s)
targets=()
# shellcheck disable=SC2206  # BUILD_TARGETS is a space-separated list of target names
[ -n "${BUILD_TARGETS:-}" ] && targets=(--target ${BUILD_TARGETS})
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" "${targets[@]}"
echo "build: done in $(( $(date +%s) - start )) s -> $build_dir/bin/attnd"
