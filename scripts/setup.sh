#!/usr/bin/env bash
# Installs everything attnd needs to build and test on Debian 12 (the CUDA toolkit, if wanted,
# is expected at /usr/local/cuda already): Debian packages via apt-get, Python packages via pip
# into the project's virtual environment .venv. Idempotent: skips what is already there.
# SETUP=build (scripts/demo.sh): only what building the daemon and the C++ client needs (no
# test, lint or sanitizer tools, no .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  # libgtest-dev, libgmock-dev: CMake looks for GoogleTest whenever the tests are configured
  libabsl-dev libspdlog-dev libgtest-dev libgmock-dev libcpp-httplib-dev
)
if [ "${SETUP:-all}" != "build" ]; then
  debian_packages+=(
    python3 python3-venv python3-pip
    # scripts/lint.sh: clang-format and clang-tidy (14 on Debian 12: the style and checks are set
    # for that version), shellcheck, promtool (Debian ships it in prometheus), systemd-analyze,
    # curl
    clang-format clang-tidy shellcheck prometheus systemd curl
    # scripts/test-reliability.sh: clang (ASan/UBSan build, libFuzzer), openssl (TLS tests)
    clang libclang-rt-14-dev openssl
  )
fi
missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "${SETUP:-all}" = "build" ]; then
  echo "setup: done (build only)"
  exit 0
fi

# Python: a virtual environment (Debian's system pip refuses to install packages, PEP 668).
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r scripts/requirements-dev.txt
echo "setup: done"
