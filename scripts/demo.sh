#!/usr/bin/env bash
# The main job: set up, build, start attnd on its default backend (auto: CUDA when a GPU is
# usable, else the CPU reference), drive it with the example client (pool, prefill, decode,
# outputs checked against the client's own reference), print what happened, stop the daemon.
# It sets up and builds only what it runs: the daemon and the example client (no tests, fuzzers
# or benchmarks), and the CUDA kernels only when a GPU is visible (`nvidia-smi -L` lists one):
# without one the daemon runs on the cpu backend and the kernels would be compiled for nothing.
# ATTND_CUDA=AUTO|ON|OFF decides instead (AUTO: whenever nvcc is found, as scripts/build.sh).
# Without CUDA it is a unity build (UNITY_BUILD=ON, scripts/build.sh): half the compile time; a
# later scripts/build.sh in the same build directory compiles the usual way again, once.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP=build ./scripts/setup.sh
build_dir=${BUILD_DIR:-build}
if [ -z "${ATTND_CUDA:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    ATTND_CUDA=AUTO
  else
    ATTND_CUDA=OFF
    echo "demo: no GPU visible (nvidia-smi -L lists none): building without the CUDA kernels;" \
      "attnd runs on the cpu backend (ATTND_CUDA=AUTO ./scripts/demo.sh builds them anyway)"
  fi
fi
# A unity build only without CUDA: the configuration it is checked in (with CUDA the kernels'
# nvcc time dominates anyway).
unity=OFF
[ "$ATTND_CUDA" = "OFF" ] && unity=ON
UNITY_BUILD=${UNITY_BUILD:-$unity}
start=$(date +%s)
ATTND_CUDA=$ATTND_CUDA UNITY_BUILD=$UNITY_BUILD BUILD_TARGETS="attnd attnd_example_client" \
  ./scripts/build.sh
echo "== built in $(($(date +%s) - start)) s (ATTND_CUDA=$ATTND_CUDA UNITY_BUILD=$UNITY_BUILD)"

run_dir=$(mktemp -d /tmp/attnd-demo.XXXXXX)
socket="$run_dir/attnd.sock"
log="$run_dir/attnd.log"
"$build_dir/bin/attnd" --listen="unix://$socket" --http_listen=127.0.0.1:0 --log_level=info >"$log" 2>&1 &
daemon=$!
cleanup() { kill -TERM "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; }
trap cleanup EXIT

for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.1; done
if [ ! -S "$socket" ]; then
  echo "demo: attnd did not start; its log:"; cat "$log"; exit 1
fi
echo "== attnd started (pid $daemon), socket $socket"
status=0
"$build_dir/bin/attnd_example_client" --target="unix://$socket" || status=$?
cleanup
trap - EXIT
echo "== attnd log"
cat "$log"
[ "$status" -eq 0 ] && echo "demo: PASS" || echo "demo: FAIL (example client exit $status)"
exit "$status"
