#!/usr/bin/env bash
# Formats every tracked C++/CUDA file (*.h *.cc *.cu *.cuh) in place with clang-format and the
# repository's .clang-format. scripts/lint.sh checks the changed files the same way.
#   scripts/format.sh              all tracked files
#   scripts/format.sh FILE...      only these
#   CHECK=1 scripts/format.sh      change nothing; list the files that would change, exit 1 if any
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "format: clang-format not found (scripts/setup.sh)" >&2; exit 1; }
files=()
if (($#)); then
  files=("$@")
else
  mapfile -t files < <(git ls-files -- '*.h' '*.cc' '*.cu' '*.cuh')
fi
((${#files[@]})) || exit 0
if [ "${CHECK:-0}" = 1 ]; then
  changed=0
  for f in "${files[@]}"; do
    if ! clang-format --style=file "$f" | cmp -s - "$f"; then
      echo "$f"
      changed=1
    fi
  done
  exit "$changed"
fi
printf '%s\0' "${files[@]}" | xargs -0 -n 16 -P "${JOBS:-$(nproc)}" clang-format --style=file -i
echo "format: ${#files[@]} file(s) formatted"
