#!/usr/bin/env bash
# Runs on the GPU host, from the repository root: the numbers of one device call, peers first.
#   1. FlashInfer (../shared/gpu/flashinfer-peer, carried as .fi-peer/flashinfer_peer.tar.xz):
#      its JIT, then its decode / prefill / append rows (fi_peer.jsonl);
#   2. attnd's kernel benchmarks on the same shapes (decode_bench, prefill_bench; with --rope too);
#   3. service_bench of this tree, and of the tree before the change when .gpu-before/ carries
#      one (the hot path before and after, in the same call).
# Results go to $OUT: device.txt, fi_peer.jsonl, fi_peer.txt, bench.txt, service.txt, logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-/tmp/attnd-gpu-out}
mkdir -p "$out"
work=$(mktemp -d)
if [ -f .gpu/bundle.tar.xz ] && [ ! -d .gpu/bin ]; then tar -C .gpu -xJf .gpu/bundle.tar.xz; fi
export LD_LIBRARY_PATH="$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu \
  --format=csv | tee "$out/device.txt"
date -u +%FT%TZ | tee -a "$out/device.txt"
git log -1 --format='commit %h %s' 2>/dev/null | tee -a "$out/device.txt"

if [ -f .fi-peer/flashinfer_peer.tar.xz ]; then
  mkdir -p /tmp/fi && tar -xJf .fi-peer/flashinfer_peer.tar.xz -C /tmp/fi
  start=$(date +%s)
  OUT="$out" FI_PEER_SET=min PYTHONPATH=/tmp/fi PYTHONUNBUFFERED=1 timeout 420 \
    python3 /tmp/fi/fi_peer.py > "$out/fi_peer.txt" 2>&1 || { echo "fi_peer FAILED rc=$?"; status=1; }
  echo "fi_peer: $(( $(date +%s) - start )) s" | tee -a "$out/device.txt"
fi

: > "$work/bench.txt"
for args in "decode_bench" "decode_bench --rope --quick" "prefill_bench" "prefill_bench --rope --quick"; do
  set -- $args
  echo "== $args" >> "$work/bench.txt"
  start=$(date +%s)
  timeout 300 ".gpu/bin/$1" "${@:2}" >> "$work/bench.txt" 2>&1 || { echo "FAILED rc=$?" >> "$work/bench.txt"; status=1; }
  echo "($args: $(( $(date +%s) - start )) s)" >> "$work/bench.txt"
done
cp "$work/bench.txt" "$out/"

: > "$work/service.txt"
for round in 1 2; do
  echo "== service_bench after (this tree), round $round" >> "$work/service.txt"
  timeout 200 .gpu/bin/service_bench >> "$work/service.txt" 2>&1 || { echo "FAILED rc=$?" >> "$work/service.txt"; status=1; }
  if [ -f .gpu-before/before.tar.xz ]; then
    [ -d .gpu-before/bin ] || tar -C .gpu-before -xJf .gpu-before/before.tar.xz
    echo "== service_bench before (ee63b7e), round $round" >> "$work/service.txt"
    ATTND_BIN="$PWD/.gpu-before/bin/attnd" timeout 200 .gpu-before/bin/service_bench \
      >> "$work/service.txt" 2>&1 || { echo "FAILED rc=$?" >> "$work/service.txt"; status=1; }
  fi
done
cp "$work/service.txt" "$out/"
tar czf "$out/logs.tgz" -C "$work" . 2>/dev/null
echo
for f in fi_peer.txt bench.txt service.txt; do
  [ -f "$out/$f" ] && { echo "######## $f"; grep -vE '^(JSON|\{)' "$out/$f" | tail -45; }
done
exit $status
