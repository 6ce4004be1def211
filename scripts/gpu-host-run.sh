#!/usr/bin/env bash
# Runs on the GPU host, from the repository root, over the bundle that scripts/gpu-bundle.sh made
# in .gpu/: every GPU test (run_all.sh: vs the CPU reference, then compute-sanitizer memcheck),
# the kernel benchmarks and the torch SDPA peers on the same shapes. Prints one table at the end.
#   scripts/gpu-host-run.sh [tests|bench|all|python]      (default all; python: only the Python
#                                                         GPU tests, PY_TESTS picks the files)
# Results go to $OUT (the device tool's folder): device.txt, gpu_tests.txt, fi_jit.txt,
# python_gpu.txt, bench.txt, peer.txt,
# and every log in logs.tgz (the device tool returns at most 8 files).
# FlashInfer, for the drop-in test's comparison: the peer bundle unpacked in $FI_PEER_DIR, or, when
# the call carries .fi-peer/flashinfer_peer.tar.xz, unpacked here into /tmp/fi. Before the Python
# tests, every FlashInfer module the drop-in test needs is JIT-built in one ninja run
# (ATTND_FI_JIT=1, the default here; ATTND_FI_JIT=0 skips the build and those cases skip instead):
# about 2.5 minutes on 16 cores from an empty cache (fi_jit.txt has the time), nothing when cached.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
mode=${1:-all}
out=${OUT:-/tmp/attnd-gpu-out}
mkdir -p "$out"
work=$(mktemp -d)
# The bundle travels compressed (the device tool carries at most 64 MiB).
if [ -f .gpu/bundle.tar.xz ] && [ ! -d .gpu/bin ]; then tar -C .gpu -xJf .gpu/bundle.tar.xz; fi
export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ATTND_LIBS="$PWD/.gpu/lib"
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv | tee "$out/device.txt"
date -u +%FT%TZ | tee -a "$out/device.txt"

if [ "$mode" = tests ] || [ "$mode" = all ]; then
  OUT="$work/tests" tests/gpu/run_all.sh "$PWD/.gpu/bin" > "$work/run_all.log" 2>&1 || status=1
  cp "$work/tests/gpu_tests.txt" "$out/" 2>/dev/null || tail -50 "$work/run_all.log" > "$out/gpu_tests.txt"
fi

if [ "$mode" = bench ] || [ "$mode" = all ]; then
  : > "$work/bench.txt"
  for b in .gpu/bin/*_bench; do
    echo "== $(basename "$b")" >> "$work/bench.txt"
    timeout 300 "$b" >> "$work/bench.txt" 2>&1 || { echo "FAILED rc=$?" >> "$work/bench.txt"; status=1; }
  done
  cp "$work/bench.txt" "$out/"
  PYTHONUNBUFFERED=1 timeout 300 python3 bench/torch_sdpa_peer.py > "$out/peer.txt" 2>&1 || status=1
fi

if [ "$mode" = tests ] || [ "$mode" = all ] || [ "$mode" = python ]; then
  # The Python GPU tests (tests/python/gpu_*_test.py: torch zero-copy, the FlashInfer drop-in,
  # the model example), with the host's torch. The package travels pre-installed in .gpu-py/ (the
  # GPU host has no grpcio-tools to generate the stubs). FlashInfer, where a test compares with
  # it, is the peer bundle (see the top; fi_peer.py's JIT cache is reused).
  if [ -d .gpu-py ]; then
    fi_dir=${FI_PEER_DIR:-}
    if [ -z "$fi_dir" ] && [ -f .fi-peer/flashinfer_peer.tar.xz ]; then
      fi_dir=/tmp/fi
      [ -d "$fi_dir/flashinfer" ] || { mkdir -p "$fi_dir" &&
        tar -xJf .fi-peer/flashinfer_peer.tar.xz -C "$fi_dir"; } || status=1
    fi
    export PYTHONPATH="$PWD/.gpu-py${fi_dir:+:$fi_dir}" ATTND_BIN="$PWD/.gpu/bin/attnd"
    export PYTHONUNBUFFERED=1 ATTND_FI_JIT=${ATTND_FI_JIT:-1}
    if [ -n "$fi_dir" ] && [ "$ATTND_FI_JIT" = 1 ]; then
      t0=$(date +%s)
      timeout "${FI_JIT_TIMEOUT:-400}" python3 tests/python/gpu_flashinfer_dropin_test.py \
        > "$out/fi_jit.txt" 2>&1 || status=1
      echo "FlashInfer JIT step: $(( $(date +%s) - t0 )) s wall" >> "$out/fi_jit.txt"
    fi
    # shellcheck disable=SC2086  # PY_TESTS is a list of files
    timeout "${PY_TEST_TIMEOUT:-420}" python3 -m pytest -q -rs -p no:cacheprovider \
      ${PY_TESTS:-tests/python/gpu_*_test.py} > "$out/python_gpu.txt" 2>&1 || status=1
  fi
fi

tar czf "$out/logs.tgz" -C "$work" . 2>/dev/null
echo
for f in gpu_tests.txt fi_jit.txt python_gpu.txt bench.txt peer.txt; do
  [ -f "$out/$f" ] && { echo "######## $f"; grep -vE '^\{' "$out/$f" | tail -60; }
done
exit $status
