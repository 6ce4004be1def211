#!/usr/bin/env bash
# Lint of the C++/CUDA sources changed against a base, everything under deploy/, the Dockerfile,
# the shell scripts, and the container's entrypoint path. Exits non-zero on any finding. scripts/test.sh runs it after the build;
# standalone it needs scripts/setup.sh to have run (the tools live in .venv and Debian packages).
#
#   clang-format    the C++/CUDA files (*.h *.cc *.cu *.cuh) changed against the base: any change
#                   clang-format (.clang-format) would make fails; scripts/format.sh fixes them
#   clang-tidy      the changed .cc files that ${BUILD_DIR:-build}/compile_commands.json compiles
#                   (.clang-tidy; any finding fails; CUDA .cu files are not tidied), 2 at a time,
#                   at most LINT_TIDY_MAX_FILES of them (default 8; 0 = all)
#                   The base: $LINT_BASE, else the merge-base with `main` when that ref exists
#                   and is not HEAD, else HEAD~1 (CI's fresh clone: the last commit's files)
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
# LINT_STEPS="NAME..." runs only the named steps (the names above, as printed by "-- lint:").
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
  # LINT_STEPS="clang-format clang-tidy": only the steps named there.
  if [ -n "${LINT_STEPS:-}" ] && [[ " $LINT_STEPS " != *" $name "* ]]; then
    return 0
  fi
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

# ---- C++/CUDA: clang-format and clang-tidy on the files changed against a base ---------------
lint_base() {  # the commit the changed files are taken against (empty: none, take all files)
  if [ -n "${LINT_BASE:-}" ]; then
    git rev-parse --verify -q "$LINT_BASE^{commit}" || { echo "lint: LINT_BASE=$LINT_BASE is not a commit" >&2; return 1; }
    return 0
  fi
  local head base
  head=$(git rev-parse HEAD) || return 1
  if git rev-parse --verify -q main >/dev/null; then
    base=$(git merge-base main HEAD 2>/dev/null) || base=
    if [ -n "$base" ] && [ "$base" != "$head" ]; then
      echo "$base"
      return 0
    fi
  fi
  git rev-parse --verify -q "HEAD~1^{commit}" || true
}
changed_files() {  # changed_files PATHSPEC...: tracked files changed (added, modified) since the base
  local base
  base=$(lint_base) || return 1
  if [ -n "$base" ]; then
    git diff --name-only --diff-filter=ACMR "$base" -- "$@"
  else
    git ls-files -- "$@"
  fi
}

run_clang_format() {
  need clang-format "Debian package clang-format; scripts/setup.sh installs it" || return 1
  local files=()
  mapfile -t files < <(changed_files '*.h' '*.cc' '*.cu' '*.cuh') || return 1
  echo "lint: clang-format: ${#files[@]} changed file(s) against ${LINT_BASE:-$(lint_base)}"
  ((${#files[@]})) || return 0
  # --dry-run --Werror: each change it would make is printed as an error; scripts/format.sh fixes.
  clang-format --style=file --dry-run --Werror "${files[@]}"
}

run_clang_tidy() {
  need clang-tidy "Debian package clang-tidy; scripts/setup.sh installs it" || return 1
  local db=$build_dir/compile_commands.json
  if [ ! -f "$db" ]; then
    echo "lint: $db not found (scripts/build.sh writes it)" >&2
    return 1
  fi
  local files=()
  mapfile -t files < <(changed_files '*.cc') || return 1
  echo "lint: clang-tidy: ${#files[@]} changed .cc file(s) against ${LINT_BASE:-$(lint_base)}"
  ((${#files[@]})) || return 0
  # A file takes ~20 s of CPU: at most LINT_TIDY_MAX_FILES (default 8) keep CI in its budget after
  # a large change; the others are named, and `LINT_TIDY_MAX_FILES=0 scripts/lint.sh` takes all.
  local max=${LINT_TIDY_MAX_FILES:-8}
  if ((max > 0 && ${#files[@]} > max)); then
    echo "lint: clang-tidy: checking the first $max; not checked (LINT_TIDY_MAX_FILES): ${files[*]:max}"
    files=("${files[@]:0:max}")
  fi
  # A copy of the compile database without GCC's precompiled headers (clang cannot read them;
  # every source includes what it uses) and with the files to check: those the build compiles.
  local tmp status=0
  tmp=$(mktemp -d)
  python3 - "$db" "$tmp" "$repo" "${files[@]}" <<'PY' || status=1
import json, os, re, shlex, sys
db, out, repo, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
entries = json.load(open(db))
wanted = {os.path.join(repo, f) for f in files}
# A unity build (UNITY_BUILD=ON) compiles generated unity_<n>_cxx.cxx files that #include the
# real sources: each source gets its unity file's command, with the source in its place.
unity_include = re.compile(r'^#include "([^"]+)"', re.M)
expanded = []
for e in entries:
    path = os.path.normpath(os.path.join(e["directory"], e["file"]))
    if re.search(r"/Unity/unity_[0-9]+_cxx\.cxx$", path) and os.path.exists(path):
        args = shlex.split(e["command"]) if "command" in e else list(e["arguments"])
        for src in unity_include.findall(open(path).read()):
            src = os.path.normpath(src)
            expanded.append({"directory": e["directory"], "file": src,
                             "arguments": [src if a in (e["file"], path) else a for a in args]})
    else:
        expanded.append(e)
kept, seen = [], set()
for e in expanded:
    path = os.path.normpath(os.path.join(e["directory"], e["file"]))
    if path not in wanted or path in seen:
        continue
    seen.add(path)
    args = shlex.split(e["command"]) if "command" in e else e["arguments"]
    # Drop "-include <...>/cmake_pch.hxx" (GCC's .gch), the GCC-only PCH warning and -Werror
    # (CI's ATTND_WERROR: with it clang fails on GCC-only warning options such as -Wlogical-op;
    # clang-tidy's own --warnings-as-errors decides), and let clang ignore GCC-only options.
    res, i = [], 0
    while i < len(args):
        if args[i] == "-include" and i + 1 < len(args) and "cmake_pch" in args[i + 1]:
            i += 2
            continue
        if args[i] not in ("-Winvalid-pch", "-Werror"):
            res.append(args[i])
        i += 1
    res.insert(1, "-Wno-unknown-warning-option")
    kept.append({"directory": e["directory"], "file": path, "arguments": res})
json.dump(kept, open(os.path.join(out, "compile_commands.json"), "w"))
open(os.path.join(out, "files"), "w").write("".join(k["file"] + "\0" for k in kept))
for f in sorted(wanted - seen):
    print("lint: clang-tidy: not in the compile database (not built in this configuration): "
          + os.path.relpath(f, repo))
PY
  if [ "$status" -eq 0 ] && [ -s "$tmp/files" ]; then
    # Two at a time (CI has 2 cores), each file's output printed whole; a finding fails the file.
    # shellcheck disable=SC2016  # expanded by the inner sh
    xargs -0 -P "${JOBS:-2}" -n 1 sh -c \
      'out=$(clang-tidy --quiet -p "$0" --warnings-as-errors="*" \
         --header-filter="^$1/(server|kernels|client/cpp|tests|bench)/" "$2" 2>&1); rc=$?
       [ "$rc" -eq 0 ] || printf "%s\n" "$out"; exit "$rc"' \
      "$tmp" "$repo" <"$tmp/files" || status=1
  fi
  rm -rf "$tmp"
  return "$status"
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
step clang-format run_clang_format
step clang-tidy run_clang_tidy
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
