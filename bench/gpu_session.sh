#!/usr/bin/env bash
# Everything of the CUDA decode work in one GPU-host call: the GPU tests (tests/gpu/run_all.sh,
# which also runs the prefill tests and compute-sanitizer), the decode and append_kv benchmarks,
# and the torch SDPA peers. Binaries come prebuilt from the build machine (build-cuda/gpu, with the bundled
# shared libraries in build-cuda/gpu/libs; see the report / docs for the build commands).
#
#   bench/gpu_session.sh [BIN_DIR]          BIN_DIR default build-cuda/gpu
#   SKIP_TESTS=1 / SKIP_BENCH=1 / SKIP_PEER=1 leave parts out; everything is logged under $OUT.
#   DECODE_BENCH_ARGS="--sweep" adds the split-KV wave sweep (B=1) to the decode benchmark.
# Prints the test table, the decode table and the peer table last; exits non-zero when a test
# failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build-cuda/gpu}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
export ATTND_LIBS=${ATTND_LIBS:-$bin/libs}
[ -d "$ATTND_LIBS" ] && export LD_LIBRARY_PATH="$ATTND_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.mem \
  --format=csv 2>/dev/null | tee "$out/nvidia-smi.txt"

rc=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  OUT="$out" "$root/tests/gpu/run_all.sh" "$bin" > "$out/run_all.txt" 2>&1 || rc=1
fi
if [ "${SKIP_BENCH:-0}" != 1 ] && [ -x "$bin/decode_bench" ]; then
  "$bin/decode_bench" ${DECODE_BENCH_ARGS:-} > "$out/decode_bench.txt" 2>&1 || { echo "decode_bench failed"; rc=1; }
fi
if [ "${SKIP_BENCH:-0}" != 1 ] && [ -x "$bin/append_kv_bench" ]; then
  "$bin/append_kv_bench" > "$out/append_kv_bench.txt" 2>&1 || { echo "append_kv_bench failed"; rc=1; }
fi
if [ "${SKIP_PEER:-0}" != 1 ]; then
  python3 "$root/bench/torch_sdpa_peer.py" --json "$out/torch_peer.jsonl" \
    > "$out/torch_peer.txt" 2>&1 || echo "torch peer script failed (see torch_peer.txt)"
fi

# Short tables last (the reply carries the end of the output).
[ -f "$out/torch_peer.txt" ] && { echo "== torch SDPA peers"; sed -n '/^bench /,$p' "$out/torch_peer.txt"; }
[ -f "$out/append_kv_bench.txt" ] && { echo "== append_kv_bench"; grep -vE '^(JSON|device|copy)' "$out/append_kv_bench.txt"; }
[ -f "$out/decode_bench.txt" ] && { echo "== decode_bench"; grep -E '^(device|copy ceiling)' "$out/decode_bench.txt"; sed -n '/^dtype /,$p' "$out/decode_bench.txt"; }
[ -f "$out/run_all.txt" ] && { echo "== GPU tests"; grep -E '^(FAIL|---)' "$out/run_all.txt" | head -60; sed -n '/^== attnd GPU tests/,$p' "$out/run_all.txt"; }
exit $rc
