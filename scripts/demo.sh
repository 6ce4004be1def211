#!/usr/bin/env bash
# The main job: set up, build, start attnd on its default backend (auto: CUDA when a GPU is
# usable, else the CPU reference), drive it with the example client (pool, prefill, decode,
# outputs checked against the client's own reference), print what happened, stop the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
build_dir=${BUILD_DIR:-build}

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
