#!/usr/bin/env bash
# Runs every GPU test executable (<bin dir>/*_test: decode, append_kv, merge_states, the CUDA
# backend and the prefill tests), then compute-sanitizer memcheck on the --small run of each,
# and prints a PASS/FAIL table. Exit status: 0 only if everything passed.
#
#   tests/gpu/run_all.sh [BIN_DIR]       BIN_DIR default: $ATTND_GPU_BIN or build-cuda/gpu
# Environment:
#   OUT             if set, the table goes to $OUT/gpu_tests.txt and each log to $OUT/<test>.log
#   ATTND_LIBS      directory of bundled shared libraries (abseil...; shared/gpu/bundle-libs.sh),
#                   default <BIN_DIR>/libs when it exists; prepended to LD_LIBRARY_PATH
#   NO_SANITIZER=1  skip the compute-sanitizer pass
#   TEST_TIMEOUT    seconds per full test run (default 300)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-${ATTND_GPU_BIN:-$here/../../build-cuda/gpu}}
libs=${ATTND_LIBS:-$bin/libs}
[ -d "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
logdir=${OUT:-$(mktemp -d)}
mkdir -p "$logdir"
timeout_s=${TEST_TIMEOUT:-300}
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)

shopt -s nullglob
tests=("$bin"/*_test)
if [ ${#tests[@]} -eq 0 ]; then
  echo "no *_test executables in $bin" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1

rows=()
failed=0
record() {  # name, status, seconds, summary
  rows+=("$(printf '%-6s %-34s %7ss  %s' "$2" "$1" "$3" "$4")")
  [ "$2" = PASS ] || failed=1
}

for t in "${tests[@]}"; do
  name=$(basename "$t")
  start=$(date +%s)
  timeout "$timeout_s" "$t" >"$logdir/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  summary=$(grep -E '^SUMMARY' "$logdir/$name.log" | tail -1)
  [ -z "$summary" ] && summary=$(tail -2 "$logdir/$name.log" | tr '\n' ' ')
  if [ $rc -eq 0 ]; then record "$name" PASS "$secs" "$summary"
  else record "$name" FAIL "$secs" "rc=$rc $summary"; fi
  echo "--- $name (rc=$rc, ${secs}s)"; grep -E '^(FAIL|SKIP|SUMMARY)' "$logdir/$name.log" | head -40
done

if [ "${NO_SANITIZER:-0}" != 1 ]; then
  if [ -x "$sanitizer" ]; then
    for t in "${tests[@]}"; do
      name=$(basename "$t")
      start=$(date +%s)
      # API errors are part of the tests (out-of-memory, bad IPC handles), not memory errors.
      timeout 600 "$sanitizer" --tool memcheck --leak-check no --report-api-errors no \
        --error-exitcode 99 \
        "$t" --small >"$logdir/$name.memcheck.log" 2>&1
      rc=$?
      secs=$(( $(date +%s) - start ))
      errs=$(grep -E 'ERROR SUMMARY' "$logdir/$name.memcheck.log" | tail -1)
      if [ $rc -eq 0 ]; then record "memcheck $name --small" PASS "$secs" "$errs"
      else record "memcheck $name --small" FAIL "$secs" "rc=$rc $errs"; fi
    done
  else
    record "compute-sanitizer" FAIL 0 "not found"
  fi
fi

{
  echo
  echo "== attnd GPU tests ($(date -u +%FT%TZ)) =="
  printf '%s\n' "${rows[@]}"
  [ $failed -eq 0 ] && echo "ALL PASS" || echo "SOME FAILED (logs in $logdir)"
} | tee "$logdir/gpu_tests.txt"
exit $failed
