#!/usr/bin/env bash
# Lint of everything under deploy/, the Dockerfile, the shell scripts, and the container's
# entrypoint path. Exits non-zero on any finding. scripts/test.sh runs it after the build;
# standalone it needs scripts/setup.sh to have run (the tools live in .venv and Debian packages).
#
#   ShellCheck      scripts/*.sh, .ci/run, deploy/**/*.sh, tests/**/*.sh
#   yamllint        deploy/**, tests/deploy/** (config deploy/.yamllint.yaml)
#   kubernetes      deploy/k8s/*.yaml against the bundled Kubernetes schemas (kubernetes-validate,
#                   --strict: unknown fields fail), at each file's "min-kubernetes" and the newest
#   compose         deploy/compose/compose.yaml against the Compose Specification schema
#                   (check-jsonschema's bundled vendor.compose-spec)
#   systemd         systemd-analyze verify deploy/systemd/attnd.service (any message fails)
#   prometheus      promtool check config / check rules, promtool test rules
#   pytest          tests/deploy: what the schemas cannot say (Dockerfile instructions, shellcheck
#                   of its RUN lines, sidecar, probes, namespaces, volumes, GPU, flags that exist)
#   entrypoint      tests/deploy/entrypoint_test.sh: attnd started as the image starts it
#                   (needs ${BUILD_DIR:-build}/bin/attnd; missing binary fails under CI=true)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
repo=$PWD
build_dir=${BUILD_DIR:-build}
python=${PYTHON:-$repo/.venv/bin/python}
venv_bin=$(dirname "$python")

failures=()
step() {  # step NAME COMMAND...: runs one check, records a failure, never stops the others
  local name=$1
  shift
  echo "-- lint: $name"
  if ! "$@"; then
    failures+=("$name")
    echo "-- lint: $name FAILED"
  fi
}
need() {  # need TOOL HINT: a missing tool is a finding, not a skip
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$1" ]; then
    echo "lint: $1 not found ($2)" >&2
    return 1
  fi
}

run_shellcheck() {
  need shellcheck "Debian package shellcheck; scripts/setup.sh installs it" || return 1
  local files=()
  mapfile -t files < <(
    { ls scripts/*.sh; echo .ci/run; find deploy tests -name '*.sh' -type f; } | sort -u)
  shellcheck --severity=style --external-sources "${files[@]}"
}

run_yamllint() {
  need "$venv_bin/yamllint" "pip package yamllint; run scripts/setup.sh" || return 1
  "$venv_bin/yamllint" --strict -c deploy/.yamllint.yaml deploy tests/deploy
}

run_kubernetes_validate() {
  need "$venv_bin/kubernetes-validate" "pip package kubernetes-validate; run scripts/setup.sh" ||
    return 1
  local file min status=0
  for file in deploy/k8s/*.yaml; do
    min=$(sed -n 's/^# min-kubernetes: \([0-9]*\.[0-9]*\).*/\1/p' "$file" | head -n1)
    if [ -z "$min" ]; then
      echo "$file: no '# min-kubernetes: X.Y' header line" >&2
      status=1
      continue
    fi
    # The oldest version the file claims, then the newest the validator bundles (its default).
    "$venv_bin/kubernetes-validate" --strict --quiet -k "$min.0" "$file" || status=1
    "$venv_bin/kubernetes-validate" --strict --quiet "$file" || status=1
  done
  return "$status"
}

run_compose_schema() {
  need "$venv_bin/check-jsonschema" "pip package check-jsonschema; run scripts/setup.sh" ||
    return 1
  "$venv_bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
}

run_systemd_verify() {
  need systemd-analyze "Debian package systemd" || return 1
  # verify insists that ExecStart's binary exists: check a copy whose ExecStart names a binary
  # that does (the built attnd, else /bin/true); everything else is the unit as shipped.
  local tmp out binary=/bin/true
  [ -x "$build_dir/bin/attnd" ] && binary=$repo/$build_dir/bin/attnd
  tmp=$(mktemp -d)
  sed "s|^ExecStart=/usr/local/bin/attnd|ExecStart=$binary|" deploy/systemd/attnd.service \
    >"$tmp/attnd.service"
  out=$(systemd-analyze verify "$tmp/attnd.service" 2>&1)
  local status=$?
  rm -rf "$tmp"
  if [ "$status" -ne 0 ] || [ -n "$out" ]; then
    echo "$out"
    return 1
  fi
}

run_promtool() {
  need promtool "Debian package prometheus; scripts/setup.sh installs it" || return 1
  # Debian's Prometheus is built without Kubernetes discovery: check a copy whose
  # kubernetes_sd_configs are replaced by an empty static_configs (relabelling still checked).
  local tmp status=0
  tmp=$(mktemp -d)
  sed 's/^\(\s*\)kubernetes_sd_configs:/\1static_configs:/; s/^\(\s*\)- role: pod$/\1- targets: []/' \
    deploy/prometheus/prometheus.yml >"$tmp/prometheus.yml"
  cp deploy/prometheus/attnd-alerts.yml "$tmp/"
  promtool check config "$tmp/prometheus.yml" >/dev/null || status=1
  promtool check rules deploy/prometheus/attnd-alerts.yml >/dev/null || status=1
  promtool test rules tests/deploy/attnd-alerts.test.yml || status=1
  rm -rf "$tmp"
  return "$status"
}

run_pytest() {
  need "$python" "run scripts/setup.sh" || return 1
  ATTND_BIN=$repo/$build_dir/bin/attnd "$python" -m pytest -q -p no:cacheprovider tests/deploy
}

run_entrypoint_test() {
  if [ ! -x "$build_dir/bin/attnd" ]; then
    echo "lint: $build_dir/bin/attnd is not built (scripts/build.sh)"
    [ "${CI:-}" = "true" ] && return 1
    echo "lint: entrypoint test SKIPPED (not CI)"
    return 0
  fi
  BUILD_DIR=$build_dir PYTHON=$python tests/deploy/entrypoint_test.sh
}

start=$(date +%s)
step shellcheck run_shellcheck
step yamllint run_yamllint
step kubernetes-validate run_kubernetes_validate
step compose-schema run_compose_schema
step systemd-verify run_systemd_verify
step promtool run_promtool
step pytest-deploy run_pytest
step entrypoint run_entrypoint_test

if ((${#failures[@]})); then
  echo "lint: FAILED: ${failures[*]} ($(($(date +%s) - start)) s)"
  exit 1
fi
echo "lint: all checks passed ($(($(date +%s) - start)) s)"
