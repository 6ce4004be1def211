#!/usr/bin/env bash
# Runs on the GPU host, from the repository root: the numbers of one device call, peers first.
#   scripts/gpu-host-bench.sh decode|prefill|features|fp8|skew
#   decode:  FlashInfer's decode rows (its JIT first), then attnd's decode_bench on the same
#            shapes (also with --rope), and the decode_bench of the tree before the change when
#            .gpu-before/ carries one (old and new kernels in the same call);
#   prefill: FlashInfer's prefill and append rows, then attnd's prefill_bench (also --rope) (and
#            the before tree's prefill_bench when .gpu-before/ carries one);
#   both:    then service_bench of this tree and of the tree before the change (.gpu-before/ with
#            bin/attnd and bin/service_bench), twice each.
#   features: FlashInfer's rows of the feature benchmarks first (bench/fi_extra_peer.py: tree-mask
#            prefill and the causal prefill of the same shape, cascade decode and the flat decode
#            of the same batch; its JIT first), then attnd's prefill_bench --mask (the tree-mask and
#            causal "64 onto 4096 B16" rows) and cascade_bench; no service_bench. From an empty
#            JIT cache FlashInfer's part does not fit one 600 s call (run 8, 2026-12-02: JIT 188 s,
#            then its timed rows past the 480 s default): pick rows with FI_EXTRA_FILTER (a regex
#            on the row label, e.g. "treemask|append" in one call and "cascade" in another on the
#            same warm machine) and set FI_EXTRA_TIMEOUT (seconds) to the call's room.
#   fp8:     FlashInfer's FP8-KV decode rows (bench/fi_extra_peer.py, FI_EXTRA_FILTER=decode-fp8)
#            and its fp16 decode rows (fi_peer.py), then attnd's decode_bench once (its fp16 / bf16
#            rows and its FP8 rows); no service_bench. Set FI_EXTRA_TIMEOUT and FI_PEER_TIMEOUT
#            (seconds; defaults 480 and 470) so that both fit the call.
#   skew:    FlashInfer's skewed-batch decode rows (bench/fi_extra_peer.py, FI_EXTRA_FILTER=
#            decode-skew: 63 x 512 + 32768 and the uniform 64 x 1016, fa2-tc and fa2-cuda) and
#            its fp16 decode rows (fi_peer.py), then attnd's decode_bench --skew (balancing on and
#            off) and --graph (a captured 32-layer step replayed); no service_bench.
# FlashInfer: ../shared/gpu/flashinfer-peer, carried as .fi-peer/flashinfer_peer.tar.xz; its JIT
# cache (/tmp/fi_peer_cache) is reused by a second call on the same warm machine.
# Results go to $OUT: device.txt, fi_peer_<phase>.jsonl, fi_peer_<phase>.txt, bench_<phase>.txt,
# logs.tgz (features: fi_extra.jsonl, fi_extra.txt, bench_features.txt, logs.tgz).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
phase=${1:?decode, prefill, features, fp8 or skew}
out=${OUT:-/tmp/attnd-gpu-out}
mkdir -p "$out"
work=$(mktemp -d)
if [ -f .gpu/bundle.tar.xz ] && [ ! -d .gpu/bin ]; then tar -C .gpu -xJf .gpu/bundle.tar.xz; fi
if [ -f .gpu-before/before.tar.xz ] && [ ! -d .gpu-before/bin ]; then
  tar -C .gpu-before -xJf .gpu-before/before.tar.xz
fi
export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The commit the "before" binaries were built from (.gpu-before/COMMIT, written when packed).
before=$(cat .gpu-before/COMMIT 2>/dev/null || echo before)
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv | tee "$out/device.txt"
date -u +%FT%TZ | tee -a "$out/device.txt"

case "$phase" in
  decode) filter='^decode' ;;
  prefill) filter='^(prefill|append)' ;;
  features) ;;  # bench/fi_extra_peer.py runs all its rows
  fp8|skew) filter='^decode [^ ]+ f16 ' ;;  # fi_peer's fp16 decode rows after fi_extra's
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
if [ -f .fi-peer/flashinfer_peer.tar.xz ] &&
  { [ "$phase" = features ] || [ "$phase" = fp8 ] || [ "$phase" = skew ]; }; then
  [ -f /tmp/fi/fi_peer.py ] || { mkdir -p /tmp/fi && tar -xJf .fi-peer/flashinfer_peer.tar.xz -C /tmp/fi; }
  # bench/fi_extra_peer.py imports fi_peer.py's helpers from the bundle's top level.
  start=$(date +%s)
  extra_filter=${FI_EXTRA_FILTER:-}
  [ "$phase" = fp8 ] && extra_filter=decode-fp8
  [ "$phase" = skew ] && extra_filter=decode-skew
  OUT="$work" FI_EXTRA_FILTER="$extra_filter" PYTHONPATH=/tmp/fi PYTHONUNBUFFERED=1 \
    timeout "${FI_EXTRA_TIMEOUT:-480}" python3 bench/fi_extra_peer.py \
    > "$out/fi_extra.txt" 2>&1 || { echo "fi_extra_peer FAILED rc=$?" | tee -a "$out/device.txt"; status=1; }
  [ -f "$work/fi_extra.jsonl" ] && cp "$work/fi_extra.jsonl" "$out/fi_extra.jsonl"
  echo "fi_extra_peer: $(( $(date +%s) - start )) s" | tee -a "$out/device.txt"
fi
if [ -f .fi-peer/flashinfer_peer.tar.xz ] && [ "$phase" != features ]; then
  [ -f /tmp/fi/fi_peer.py ] || { mkdir -p /tmp/fi && tar -xJf .fi-peer/flashinfer_peer.tar.xz -C /tmp/fi; }
  start=$(date +%s)
  OUT="$work" FI_PEER_SET=min FI_PEER_NO_CHECK=1 FI_PEER_FILTER="$filter" PYTHONPATH=/tmp/fi \
    PYTHONUNBUFFERED=1 timeout "${FI_PEER_TIMEOUT:-470}" python3 /tmp/fi/fi_peer.py > "$out/fi_peer_$phase.txt" 2>&1 \
    || { echo "fi_peer FAILED rc=$?" | tee -a "$out/device.txt"; status=1; }
  [ -f "$work/fi_peer.jsonl" ] && cp "$work/fi_peer.jsonl" "$out/fi_peer_$phase.jsonl"
  echo "fi_peer $phase: $(( $(date +%s) - start )) s" | tee -a "$out/device.txt"
fi

bench() {  # label, command...
  local label=$1; shift
  echo "== $label" >> "$work/bench.txt"
  local start; start=$(date +%s)
  timeout 240 "$@" >> "$work/bench.txt" 2>&1 || { echo "FAILED rc=$?" >> "$work/bench.txt"; status=1; }
  echo "($label: $(( $(date +%s) - start )) s)" >> "$work/bench.txt"
}
: > "$work/bench.txt"
if [ "$phase" = features ]; then
  # attnd's rows of the same workloads (bench/side_by_side.py pairs them with fi_extra.jsonl).
  bench "prefill_bench --mask" .gpu/bin/prefill_bench --mask
  bench "cascade_bench" .gpu/bin/cascade_bench
elif [ "$phase" = fp8 ]; then
  bench "decode_bench (this tree)" .gpu/bin/decode_bench
elif [ "$phase" = skew ]; then
  bench "decode_bench --skew" .gpu/bin/decode_bench --skew
  bench "decode_bench --graph" .gpu/bin/decode_bench --graph
elif [ "$phase" = decode ]; then
  # Two rounds each, alternating: the spread between rounds is what "same speed" is judged by.
  for round in 1 2; do
    bench "decode_bench (this tree), round $round" .gpu/bin/decode_bench
    [ -x .gpu-before/bin/decode_bench ] &&
      bench "decode_bench (before, $before), round $round" .gpu-before/bin/decode_bench
  done
  bench "decode_bench --rope --quick" .gpu/bin/decode_bench --rope --quick
else
  for round in 1 2; do
    bench "prefill_bench (this tree), round $round" .gpu/bin/prefill_bench
    [ -x .gpu-before/bin/prefill_bench ] &&
      bench "prefill_bench (before, $before), round $round" .gpu-before/bin/prefill_bench
  done
  bench "prefill_bench --rope --quick" .gpu/bin/prefill_bench --rope --quick
fi
# The service step (decode through the daemon against in-process kernels), decode and prefill.
if [ "$phase" != features ] && [ "$phase" != fp8 ] && [ "$phase" != skew ]; then
  for round in 1 2; do
    bench "service_bench after (this tree), round $round" .gpu/bin/service_bench
    [ -x .gpu-before/bin/service_bench ] && bench "service_bench before ($before), round $round" \
      env ATTND_BIN="$PWD/.gpu-before/bin/attnd" .gpu-before/bin/service_bench
  done
fi
cp "$work/bench.txt" "$out/bench_$phase.txt"
tar czf "$out/logs.tgz" -C "$work" . 2>/dev/null
echo
peer_txt="fi_peer_$phase.txt"
[ "$phase" = features ] && peer_txt=fi_extra.txt
{ [ "$phase" = fp8 ] || [ "$phase" = skew ]; } && peer_txt="fi_extra.txt fi_peer_$phase.txt"
# shellcheck disable=SC2086  # peer_txt is a list
for f in $peer_txt "bench_$phase.txt"; do
  [ -f "$out/$f" ] && { echo "######## $f"; grep -vE '^(JSON|\{)' "$out/$f" | tail -60; }
done
exit $status
