#!/usr/bin/env bash
# Reliability CI steps (issue 7), run by scripts/test.sh after the normal build and tests:
#   1. sanitizers: a clang ASan+UBSan build (-O0 -g0: CI's compile budget; CPU only, separate
#      dir) of every unit test binary (kernels/cpu, the CUDA planning layer, server/core,
#      server/front, the C++ client, the reliability unit tests, the fuzz regressions), run;
#   2. fuzzing: each libFuzzer harness (tests/fuzz) for FUZZ_SECONDS from generated seeds;
#   3. soak: the load generator against the release daemon for SOAK_SECONDS; zero errors, zero
#      leaked pages, flat RSS, and a clean SIGTERM exit.
# Figures go to $BUILD_DIR/reliability/figures.txt (docs/security.md quotes them).
# Env: BUILD_DIR (release build, default build), SAN_BUILD_DIR (default build-san),
# FUZZ_SECONDS (25), SOAK_SECONDS (60), SOAK_SESSIONS (8), SKIP_SANITIZERS=1, SKIP_FUZZ=1,
# SAN_INTEGRATION=1 (also the reliability integration tests against an ASan+UBSan daemon).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build_dir=${BUILD_DIR:-build}
san_dir=${SAN_BUILD_DIR:-build-san}
fuzz_seconds=${FUZZ_SECONDS:-25}
soak_seconds=${SOAK_SECONDS:-60}
soak_sessions=${SOAK_SESSIONS:-8}
jobs=${JOBS:-$(nproc)}
out="$repo/$build_dir/reliability"
mkdir -p "$out"
figures="$out/figures.txt"
: > "$figures"
t0=$(date +%s)

# ---- 1. sanitizer build and unit tests --------------------------------------------------------
if [ "${SKIP_SANITIZERS:-0}" != 1 ]; then
  echo "== reliability: ASan+UBSan build ($san_dir)"
  san_flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  # The fuzz harnesses need coverage instrumentation in the code they exercise.
  cmake -S . -B "$san_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DATTND_CUDA=OFF \
    -DATTND_BUILD_BENCH=OFF -DATTND_BUILD_UNIT_TESTS=ON -DATTND_FUZZ=ON \
    -DCMAKE_UNITY_BUILD="${UNITY_BUILD:-OFF}" \
    -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_CXX_FLAGS_DEBUG="-O0 -g0" -DCMAKE_C_FLAGS_DEBUG="-O0 -g0" \
    -DCMAKE_CXX_FLAGS="$san_flags -fsanitize=fuzzer-no-link" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >"$out/san-configure.log"
  # Every unit test binary (CI builds them only here: .ci/run, ATTND_BUILD_UNIT_TESTS=OFF).
  san_tests=(attnd_kernels_cpu_test attnd_kernels_planning_test attnd_core_test attnd_front_test
             attnd_front_daemon_test attnd_client_unit_tests attnd_reliability_unit_test
             attnd_fuzz_regression_test)
  san_targets=("${san_tests[@]}" fuzz_core_commands fuzz_page_table fuzz_seed_generator)
  start=$(date +%s)
  cmake --build "$san_dir" -j "$jobs" --target "${san_targets[@]}"
  echo "sanitizer build: $(( $(date +%s) - start )) s" | tee -a "$figures"
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
  export LSAN_OPTIONS="suppressions=$repo/tests/reliability/lsan.supp"
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  start=$(date +%s)
  for t in "${san_tests[@]}"; do
    bin=$(find "$san_dir" -type f -name "$t" -perm -u+x | head -1)
    echo "-- $t (ASan+UBSan)"
    "$bin" --gtest_brief=1 >"$out/san-$t.log" 2>&1 || { tail -60 "$out/san-$t.log"; exit 1; }
    tail -2 "$out/san-$t.log"
  done
  echo "sanitizer tests: $(( $(date +%s) - start )) s" | tee -a "$figures"
  # Optional (CI budget): the daemon, the load generator and the reliability integration tests
  # (denials, isolation, TLS, faults, SIGTERM under load) under ASan+UBSan too.
  if [ "${SAN_INTEGRATION:-0}" = 1 ]; then
    start=$(date +%s)
    cmake --build "$san_dir" -j "$jobs" --target attnd attnd_reliability_it_test load_generator
    bin=$(find "$san_dir" -type f -name attnd_reliability_it_test -perm -u+x | head -1)
    echo "-- attnd_reliability_it_test (ASan+UBSan daemon and clients)"
    # The RSS flood test is left out: ASan's quarantine and shadow memory make RSS meaningless.
    ATTND_BIN="$repo/$san_dir/bin/attnd" "$bin" --gtest_brief=1 \
      --gtest_filter=-MemoryTest.AFloodOfLargeMessagesIsNotKept >"$out/san-it.log" 2>&1 ||
      { grep -v '^\[20' "$out/san-it.log" | tail -60; exit 1; }
    grep -E '^FAULTS|PASSED' "$out/san-it.log"
    echo "sanitizer integration: $(( $(date +%s) - start )) s" | tee -a "$figures"
  fi
fi

# ---- 2. fuzzing ---------------------------------------------------------------------------------
if [ "${SKIP_SANITIZERS:-0}" != 1 ] && [ "${SKIP_FUZZ:-0}" != 1 ]; then
  echo "== reliability: fuzzing, ${fuzz_seconds} s per harness"
  corpus="$out/fuzz-corpus"
  rm -rf "$corpus"
  "$(find "$san_dir" -type f -name fuzz_seed_generator | head -1)" "$corpus"
  # The harnesses run side by side (one core each; each is single-threaded).
  fuzz_one() {
    local h=$1 bin
    bin=$(find "$san_dir" -type f -name "fuzz_$h" | head -1)
    mkdir -p "$out/fuzz-artifacts/$h"
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 "$bin" "$corpus/$h" \
      "$repo/tests/fuzz/regressions/$h" -max_total_time="$fuzz_seconds" -max_len=4096 \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$out/fuzz-artifacts/$h/" >"$out/fuzz-$h.log" 2>&1
  }
  harnesses=(core_commands page_table)
  pids=()
  for h in "${harnesses[@]}"; do fuzz_one "$h" & pids+=($!); done
  failed=0
  for i in "${!harnesses[@]}"; do
    h=${harnesses[$i]}
    if ! wait "${pids[$i]}"; then
      tail -40 "$out/fuzz-$h.log"
      echo "fuzz_$h found a crash: $(ls "$out/fuzz-artifacts/$h")"
      echo "add it to tests/fuzz/regressions/$h/ and fix the bug (the regression test replays it)"
      failed=1
      continue
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/fuzz-$h.log" | grep -o '[0-9]*$' || echo 0)
    echo "fuzz_$h: $runs inputs in ${fuzz_seconds} s, no crash" | tee -a "$figures"
  done
  [ "$failed" = 0 ] || exit 1
fi

# ---- 3. soak -------------------------------------------------------------------------------------
echo "== reliability: soak, ${soak_seconds} s, ${soak_sessions} sessions (cpu backend)"
attnd="$repo/$build_dir/bin/attnd"
loadgen="$repo/$build_dir/bin/load_generator"
tmp=$(mktemp -d /tmp/attnd-soak-XXXXXX)
sock="$tmp/attnd.sock"
"$attnd" --backend=cpu --threads=2 --listen="unix://$sock" --http_listen="" \
  --log_level=warn >"$tmp/attnd.log" 2>&1 &
daemon_pid=$!
cleanup() { kill "$daemon_pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$daemon_pid/status"; }
# Warm-up: allocator arenas, thread pools and gRPC buffers reach their working size.
"$loadgen" --target="unix://$sock" --sessions="$soak_sessions" --duration_s=10 --quiet --seed=1 \
  >"$out/soak-warmup.json"
rss_start=$(rss_kib)
"$loadgen" --target="unix://$sock" --sessions="$soak_sessions" --duration_s="$soak_seconds" \
  --seed=2 | tee "$out/soak.txt"
rss_end=$(rss_kib)
# Slack: 10% or 16 MiB, whichever is larger (allocator noise, not growth per request).
slack=$(( rss_start / 10 > 16384 ? rss_start / 10 : 16384 ))
echo "soak RSS: ${rss_start} KiB after warm-up, ${rss_end} KiB at the end (slack ${slack} KiB)" | tee -a "$figures"
if (( rss_end > rss_start + slack )); then
  echo "soak: the daemon's RSS grew by $(( rss_end - rss_start )) KiB"; exit 1
fi
grep '^{' "$out/soak.txt" | tee -a "$figures" >/dev/null
kill -TERM "$daemon_pid"
status=0
wait "$daemon_pid" || status=$?
trap - EXIT
rm -rf "$tmp"
if (( status != 0 )); then echo "soak: attnd exited with $status after SIGTERM"; exit 1; fi
echo "soak: clean SIGTERM exit" | tee -a "$figures"
echo "reliability: all passed in $(( $(date +%s) - t0 )) s" | tee -a "$figures"
