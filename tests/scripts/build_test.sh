#!/usr/bin/env bash
# scripts/build.sh refuses a build directory that was configured for another checkout or moved
# (its CMakeCache.txt names other directories) before CMake runs, says what to do (remove it, or
# BUILD_DIR=...) and exits non-zero. Run by CTest (tests/scripts/CMakeLists.txt); needs no build.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd -P)
tmp=$(mktemp -d /tmp/attnd-build-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failures=0
check() {  # check NAME SOURCE_IN_CACHE BUILD_IN_CACHE
  local name=$1 build=$tmp/$1 status=0
  mkdir -p "$build"
  printf 'CMAKE_HOME_DIRECTORY:INTERNAL=%s\nCMAKE_CACHEFILE_DIR:INTERNAL=%s\n' "$2" "$3" \
    >"$build/CMakeCache.txt"
  BUILD_DIR=$build ./scripts/build.sh >"$tmp/$name.out" 2>"$tmp/$name.err" || status=$?
  local problems=()
  [ "$status" -ne 0 ] || problems+=("exit status 0")
  grep -q "rm -rf $build && ./scripts/build.sh" "$tmp/$name.err" || problems+=("no 'rm -rf'")
  grep -q "BUILD_DIR=$build-new ./scripts/build.sh" "$tmp/$name.err" || problems+=("no BUILD_DIR=")
  grep -q "(this one: $repo)" "$tmp/$name.err" || problems+=("this checkout not named")
  ! grep -q "CMake Error" "$tmp/$name.out" "$tmp/$name.err" || problems+=("CMake ran")
  [ ! -e "$build/CMakeFiles" ] || problems+=("CMake configured the directory")
  if ((${#problems[@]})); then
    echo "FAIL $name: ${problems[*]}"
    sed 's/^/  | /' "$tmp/$name.err"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}
# A build directory copied from another checkout: both paths are the other checkout's.
check copied-from-another-checkout /elsewhere/attnd /elsewhere/attnd/build
# This checkout's build directory, moved (renamed) afterwards.
check moved-build-directory "$repo" "$repo/build-before-the-move"
[ "$failures" -eq 0 ] || exit 1
echo "build_test: all passed"
