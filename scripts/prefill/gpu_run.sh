#!/usr/bin/env bash
# Runs on the GPU host (device tool), from the repo root, with .gpu-prefill carried:
# prefill_test first (correctness), then prefill_bench with every tile variant, then the SASS of
# the bench binary (gzip) for offline reading. Logs go to $OUT.
set -uo pipefail
B=.gpu-prefill
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu.txt"
"$B/prefill_test" "$@" 2>&1 | tee "$OUT/test.log" | grep -v "^  ok" | tail -40
rc=${PIPESTATUS[0]}
echo "prefill_test rc=$rc (the bench runs either way; a failing build is not kept)"
"$B/prefill_bench" --wide 2>&1 | tee "$OUT/bench.log" | grep -v "^JSON"
if command -v cuobjdump > /dev/null; then
  cuobjdump -sass "$B/prefill_bench" 2>/dev/null | gzip -9 > "$OUT/sass.txt.gz"
else
  echo "no cuobjdump"
fi
exit $rc
