#!/usr/bin/env bash
# Starts the built attnd the way the container image does (the Dockerfile's ENTRYPOINT + CMD, with
# the final stage's ENV and nothing else; as a non-root user when run as root), with only the
# socket and the HTTP port moved into a temporary directory / a free loopback port, then checks:
#   - the socket appears with the image's permissions (--socket_mode default 0660);
#   - /healthz, /readyz (200) and /metrics (Prometheus text with attnd's families);
#   - the image's HEALTHCHECK command, run as Docker runs it, succeeds;
#   - grpc.health.v1 Check: SERVING overall and for attnd.v1.Attnd, NOT_FOUND for a stranger;
#   - the docs and alert rules name exactly the metrics /metrics has (check_metric_names.py);
#   - SIGTERM: exit status 0 within the image's grace period, socket removed;
#   - ATTND_LOG_JSON=true: every log line is one JSON object;
#   - a malformed ATTND_* variable stops the start with an error naming it.
# Usage: tests/deploy/entrypoint_test.sh   (BUILD_DIR, ATTND_BIN and PYTHON may override paths)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin=${ATTND_BIN:-$repo/${BUILD_DIR:-build}/bin/attnd}
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$bin" ] || { echo "entrypoint_test: $bin is not built"; exit 1; }

tmp=$(mktemp -d /tmp/attnd-entrypoint.XXXXXX)
daemon=""
cleanup() {
  if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
    kill -KILL "$daemon" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "entrypoint_test: FAIL: $*"
  if [ -f "$tmp/attnd.log" ]; then echo "--- attnd log"; cat "$tmp/attnd.log"; fi
  exit 1
}
passed=0
ok() { echo "entrypoint_test: ok: $*"; passed=$((passed + 1)); }

# --- what the image runs -----------------------------------------------------------------------
mapfile -t image_env < <("$python" tests/deploy/dockerfile.py env Dockerfile)
mapfile -t image_command < <("$python" tests/deploy/dockerfile.py command Dockerfile)
healthcheck=$("$python" tests/deploy/dockerfile.py healthcheck Dockerfile)
[ "${image_command[0]}" = /usr/local/bin/attnd ] || fail "ENTRYPOINT is ${image_command[0]}"
image_listen="" image_http=""
for kv in "${image_env[@]}"; do
  case "$kv" in
    ATTND_LISTEN=*) image_listen=${kv#*=} ;;
    ATTND_HTTP_LISTEN=*) image_http=${kv#*=} ;;
  esac
done
if [ -z "$image_listen" ] || [ -z "$image_http" ]; then
  fail "the image sets no ATTND_LISTEN/ATTND_HTTP_LISTEN"
fi

# Move the socket under $tmp (same path below it) and HTTP to a free loopback port.
image_socket=${image_listen#unix://}
socket=$tmp$image_socket
mkdir -p "$(dirname "$socket")"
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run_env=("${image_env[@]}" "ATTND_LISTEN=unix://$socket" "ATTND_HTTP_LISTEN=127.0.0.1:$port")
echo "entrypoint_test: image env: ${image_env[*]}"
echo "entrypoint_test: moved: ATTND_LISTEN=unix://$socket ATTND_HTTP_LISTEN=127.0.0.1:$port"

# As the image's non-root user would: when we are root, drop to nobody.
as_user=()
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
  as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
  chmod 0777 "$tmp" "$(dirname "$socket")"
  chmod 0755 "$(dirname "$tmp")" 2>/dev/null || true
fi

# start_daemon LOG [EXTRA_ENV...]: the image's command, a clean environment (as in a container).
start_daemon() {
  local log=$1
  shift
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$tmp" "${run_env[@]}" "$@" \
    "${as_user[@]}" "$bin" "${image_command[@]:1}" >"$log" 2>&1 &
  daemon=$!
}
wait_healthy() {  # until /healthz answers and the socket exists, or 30 s
  for _ in $(seq 1 300); do
    kill -0 "$daemon" 2>/dev/null || return 1
    if [ -S "$socket" ] && curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}
stop_daemon() {  # SIGTERM; sets $status to the exit status (124 when it outlives 30 s)
  # Not in a $(...) subshell: only this shell can wait for its child.
  kill -TERM "$daemon"
  for _ in $(seq 1 300); do
    kill -0 "$daemon" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$daemon" 2>/dev/null; then status=124; return; fi
  status=0
  wait "$daemon" || status=$?
  daemon=""
}

# --- start as the image does -------------------------------------------------------------------
start_daemon "$tmp/attnd.log"
wait_healthy || fail "attnd did not come up (socket $socket, http port $port)"
ok "started: pid $daemon, socket and /healthz up"

mode=$(stat -c %a "$socket")
[ "$mode" = 660 ] || fail "socket mode is $mode, expected 660"
ok "socket mode 0660"

body=$(curl -fsS "http://127.0.0.1:$port/healthz") || fail "/healthz"
ok "/healthz: $body"
for _ in $(seq 1 100); do  # ready once the backend's first health check passed
  curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break
  sleep 0.1
done
body=$(curl -fsS "http://127.0.0.1:$port/readyz") || fail "/readyz: $(curl -sS "http://127.0.0.1:$port/readyz")"
ok "/readyz: $body"

curl -fsS "http://127.0.0.1:$port/metrics" >"$tmp/metrics.txt" || fail "/metrics"
grep -q '^# TYPE attnd_requests_total counter$' "$tmp/metrics.txt" || fail "/metrics lacks attnd_requests_total"
grep -q '^attnd_backend_healthy 1$' "$tmp/metrics.txt" || fail "/metrics: attnd_backend_healthy is not 1"
grep -q '^attnd_info{.*} 1$' "$tmp/metrics.txt" || fail "/metrics lacks attnd_info"
ok "/metrics: $(grep -c '^# TYPE' "$tmp/metrics.txt") families, $(grep '^attnd_info' "$tmp/metrics.txt")"

# Docker runs the shell form of HEALTHCHECK with /bin/sh -c in the container's environment.
env -i PATH=/usr/local/bin:/usr/bin:/bin "${run_env[@]}" /bin/sh -c "$healthcheck" ||
  fail "the image's HEALTHCHECK failed: $healthcheck"
ok "HEALTHCHECK: $healthcheck"

"$python" tests/deploy/grpc_health_check.py "unix://$socket" "" SERVING || fail "gRPC health (overall)"
"$python" tests/deploy/grpc_health_check.py "unix://$socket" attnd.v1.Attnd SERVING ||
  fail "gRPC health (attnd.v1.Attnd)"
"$python" tests/deploy/grpc_health_check.py "unix://$socket" no.such.Service NOT_FOUND ||
  fail "gRPC health of an unknown service"
ok "gRPC health: SERVING"

"$python" tests/deploy/check_metric_names.py "$tmp/metrics.txt" ||
  fail "docs/operations.md or the alert rules disagree with /metrics"
ok "docs and alert rules name exactly the metrics of /metrics"

stop_daemon
[ "$status" = 0 ] || fail "exit status after SIGTERM: $status (124 = still running after 30 s)"
[ ! -e "$socket" ] || fail "the socket $socket is left behind after exit"
grep -q "SIGTERM" "$tmp/attnd.log" || fail "the log does not mention SIGTERM"
ok "SIGTERM: exit 0, socket removed"

# --- JSON logs ---------------------------------------------------------------------------------
start_daemon "$tmp/attnd-json.log" ATTND_LOG_JSON=true
wait_healthy || { cat "$tmp/attnd-json.log"; fail "attnd with ATTND_LOG_JSON=true did not come up"; }
stop_daemon
[ "$status" = 0 ] || fail "JSON run: exit status $status"
"$python" - "$tmp/attnd-json.log" <<'EOF' || fail "ATTND_LOG_JSON=true wrote a line that is not a JSON object"
import json, sys
lines = [l for l in open(sys.argv[1], encoding="utf-8").read().splitlines() if l.strip()]
assert lines, "no log lines"
for line in lines:
    record = json.loads(line)
    assert isinstance(record, dict) and "msg" in record and "level" in record, line
print(f"entrypoint_test: {len(lines)} JSON log lines, e.g. {lines[0]}")
EOF
ok "ATTND_LOG_JSON=true: JSON lines"

# --- a bad variable is refused, naming it -----------------------------------------------------
bad_status=0
env -i PATH=/usr/bin:/bin "${run_env[@]}" ATTND_DEVICE=not-a-number timeout 10 "$bin" \
  >"$tmp/bad.log" 2>&1 || bad_status=$?
if [ "$bad_status" -eq 0 ] || [ "$bad_status" -eq 124 ]; then
  fail "ATTND_DEVICE=not-a-number: exit $bad_status (expected a prompt error exit)"
fi
grep -q ATTND_DEVICE "$tmp/bad.log" || fail "the error does not name ATTND_DEVICE: $(cat "$tmp/bad.log")"
ok "ATTND_DEVICE=not-a-number refused (exit $bad_status): $(head -n1 "$tmp/bad.log")"

echo "entrypoint_test: $passed passed, 0 failed"
