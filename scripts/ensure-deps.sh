#!/usr/bin/env bash
# Installs the system packages the build needs (HDF5 headers and library, zlib, pkg-config)
# when pkg-config cannot find HDF5. Debian/Ubuntu only; uses sudo when not root.
set -euo pipefail

# `ensure-deps.sh --python-venv`: Debian's python3 lacks venv and ensurepip until python3-venv is installed.
if [ "${1:-}" = "--python-venv" ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "ensure-deps: installing python3-venv" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    exit 0
fi

if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists hdf5; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-deps: HDF5 not found by pkg-config and apt-get is unavailable; install libhdf5-dev, zlib1g-dev and pkg-config" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "ensure-deps: installing libhdf5-dev zlib1g-dev pkg-config" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libhdf5-dev zlib1g-dev pkg-config >/dev/null
pkg-config --exists hdf5 || { echo "ensure-deps: pkg-config still cannot find hdf5 after installing" >&2; exit 1; }
