#!/usr/bin/env bash
# Installs the runtime stage's packages: those listed in the file named by $1 (made by
# runtime-packages.sh in the build stage) plus curl for the HEALTHCHECK, without recommends,
# then empties apt's caches so the layer stays small.
# Usage: deploy/docker/install-runtime-packages.sh runtime-packages.txt
set -euo pipefail
list=${1:?usage: $0 PACKAGE_LIST_FILE}
mapfile -t packages < <(grep -v '^[[:space:]]*$' "$list")
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl "${packages[@]}"
apt-get clean
rm -rf /var/lib/apt/lists/*
