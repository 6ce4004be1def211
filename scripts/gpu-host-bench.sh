#!/usr/bin/env bash
# Runs on the GPU host, from the repository root: the numbers of one device call, peers first.
#   scripts/gpu-host-bench.sh decode|prefill
#   decode:  FlashInfer's decode rows (its JIT first), then attnd's decode_bench on the same
#            shapes (also with --rope), and the decode_bench of the tree before the change when
#            .gpu-before/ carries one (old and new kernels in the same call);
#   prefill: FlashInfer's prefill and append rows, then attnd's prefill_bench (also --rope) (and
#            the before tree's prefill_bench when .gpu-before/ carries one);
#   both:    then service_bench of this tree and of the tree before the change (.gpu-before/ with
#            bin/attnd and bin/service_bench), twice each.
# FlashInfer: ../shared/gpu/flashinfer-peer, carried as .fi-peer/flashinfer_peer.tar.xz; its JIT
# cache (/tmp/fi_peer_cache) is reused by a second call on the same warm machine.
# Results go to $OUT: device.txt, fi_peer_<phase>.jsonl, fi_peer_<phase>.txt, bench_<phase>.txt,
# logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
phase=${1:?decode or prefill}
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
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
if [ -f .fi-peer/flashinfer_peer.tar.xz ]; then
  [ -f /tmp/fi/fi_peer.py ] || { mkdir -p /tmp/fi && tar -xJf .fi-peer/flashinfer_peer.tar.xz -C /tmp/fi; }
  start=$(date +%s)
  OUT="$work" FI_PEER_SET=min FI_PEER_NO_CHECK=1 FI_PEER_FILTER="$filter" PYTHONPATH=/tmp/fi \
    PYTHONUNBUFFERED=1 timeout 470 python3 /tmp/fi/fi_peer.py > "$out/fi_peer_$phase.txt" 2>&1 \
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
if [ "$phase" = decode ]; then
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
# The service step (decode through the daemon against in-process kernels), both phases.
for round in 1 2; do
  bench "service_bench after (this tree), round $round" .gpu/bin/service_bench
  [ -x .gpu-before/bin/service_bench ] && bench "service_bench before ($before), round $round" \
    env ATTND_BIN="$PWD/.gpu-before/bin/attnd" .gpu-before/bin/service_bench
done
cp "$work/bench.txt" "$out/bench_$phase.txt"
tar czf "$out/logs.tgz" -C "$work" . 2>/dev/null
echo
for f in "fi_peer_$phase.txt" "bench_$phase.txt"; do
  [ -f "$out/$f" ] && { echo "######## $f"; grep -vE '^(JSON|\{)' "$out/$f" | tail -60; }
done
exit $status
