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

# Prints the package that owns a file, trying the path as given, its real path and its
# /usr-merged twin (dpkg may know /usr/lib/x/libc.so.6 while ldd prints /lib/x/libc.so.6).
owning_package() {
  local path=$1 candidate owner
  for candidate in "$path" "$(readlink -f "$path")" "/usr${path}" "${path#/usr}"; do
    if owner=$(dpkg -S "$candidate" 2>/dev/null); then
      # "libgrpc++1.51t64:amd64: /usr/lib/..." -> "libgrpc++1.51t64"
      owner=${owner%%: *}
      echo "${owner%%:*}"
      return 0
    fi
  done
  return 1
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

packages=()
for library in "${libraries[@]}"; do
  if package=$(owning_package "$library"); then
    packages+=("$package")
  else
    echo "runtime-packages: no package owns $library" >&2
    failed=1
  fi
done
((failed == 0)) || exit 1
printf '%s\n' "${packages[@]}" | sort -u
