#!/usr/bin/env bash
# Builds everything that runs on the GPU host (GPU tests, benchmarks, the daemon and the example
# client) for sm_90a with the static CUDA runtime, and gathers it in .gpu/ (git-ignored):
#   .gpu/bin/   executables        .gpu/lib/   their shared libraries (gRPC, protobuf, abseil, ...)
# The device call carries .gpu/ and .gpu-py/ and runs scripts/gpu-host-run.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build-gpu}
# Everything the GPU host runs, whatever a CI-like environment says (.ci/run trims these).
BUILD_DIR=$build_dir ATTND_CUDA=ON ATTND_CUDA_HEAD_DIMS="64;128;256" ATTND_BUILD_BENCH=ON \
  ATTND_BUILD_GPU_TESTS=ON ./scripts/build.sh
bundle_libs=${BUNDLE_LIBS:-../shared/gpu/bundle-libs.sh}
rm -rf .gpu && mkdir -p .gpu/bin .gpu/lib
cp "$build_dir"/gpu/* .gpu/bin/
cp "$build_dir"/bin/attnd "$build_dir"/bin/attnd_example_client .gpu/bin/
for extra in "$build_dir"/bin/*; do
  case "$(basename "$extra")" in *gpu*|*ipc*) cp "$extra" .gpu/bin/ ;; esac
done
strip --strip-debug .gpu/bin/* 2>/dev/null || true
"$bundle_libs" .gpu/lib .gpu/bin/*
# Compressed: the device tool carries at most 64 MiB; gpu-host-run.sh unpacks it. One xz thread
# with -9's 64 MiB dictionary: every binary links the same ~24 MB of kernels, and one stream
# stores them once (12.4 MB instead of 60.6 MB with -T0 -6, whose blocks each start empty;
# 2026-12-02, ~2 minutes on 2 cores).
tar -C .gpu -cf - bin lib | xz -T1 -9 > .gpu/bundle.tar.xz
rm -rf .gpu/bin .gpu/lib
# The Python client with its generated stubs, for tests/python/gpu_torch_test.py on the host.
rm -rf .gpu-py
.venv/bin/python -m pip install -q --no-deps --target .gpu-py ./client/python
du -sh .gpu .gpu-py
