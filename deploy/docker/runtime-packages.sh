#!/usr/bin/env bash
# Prints, one per line, the Debian/Ubuntu packages that provide the shared libraries the given
# binaries load (ldd, then dpkg -S), so that the image's runtime stage installs exactly the
# runtime packages (libgrpc++1.51*, libprotobuf32*, libabsl*, libspdlog1*, libfmt*, ...) and no
# -dev package. Runs in the Dockerfile's build stage, where the binaries were just linked.
# A library that no package owns, or that ldd cannot find, is an error, except the NVIDIA driver's
# own libraries (libcuda, libnvidia-*), which the NVIDIA container runtime mounts at run time.
# Usage: deploy/docker/runtime-packages.sh BINARY... > runtime-packages.txt
set -euo pipefail
if (($# == 0)); then
  echo "usage: $0 BINARY..." >&2
  exit 2
fi

is_driver_library() {
  case "$1" in
    libcuda.so* | libnvidia-*) return 0 ;;
    *) return 1 ;;
  esac
}

failed=0
libraries=()
for binary in "$@"; do
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue  # the vdso and the dynamic loader have no "=>"
    if [ "$path" = "not" ]; then     # "libfoo.so.1 => not found"
      if ! is_driver_library "$name"; then
        echo "runtime-packages: $binary needs $name, which is not installed" >&2
        failed=1
      fi
      continue
    fi
    libraries+=("$path")
  done < <(ldd "$binary")
done

# One dpkg -S for all candidates (it is slow per call): for each library the path as ldd prints
# it, its real path, and its /usr-merged twin (dpkg may know /usr/lib/x/libc.so.6 while ldd says
# /lib/x/libc.so.6). Output lines: "libgrpc++1.51t64:amd64: /usr/lib/x86_64-linux-gnu/...".
candidates_of() {
  printf '%s\n' "$1" "$(readlink -f "$1")" "/usr$1" "${1#/usr}"
}
declare -A owner_of=()
if ((${#libraries[@]})); then
  mapfile -t candidates < <(for library in "${libraries[@]}"; do candidates_of "$library"; done |
    sort -u)
  while IFS= read -r line; do
    case "$line" in
      *": /"*) ;;
      *) continue ;;
    esac
    package=${line%%: /*}
    package=${package%%:*}  # drop the architecture
    for path in ${line#*: }; do
      owner_of[$path]=${owner_of[$path]:-$package}
    done
  done < <(dpkg -S "${candidates[@]}" 2>/dev/null || true)
fi

packages=()
for library in "${libraries[@]}"; do
  package=""
  while read -r candidate; do
    [ -n "${owner_of[$candidate]:-}" ] && { package=${owner_of[$candidate]}; break; }
  done < <(candidates_of "$library")
  if [ -n "$package" ]; then
    packages+=("$package")
  else
    echo "runtime-packages: no package owns $library" >&2
    failed=1
  fi
done
((failed == 0)) || exit 1
printf '%s\n' "${packages[@]}" | sort -u
