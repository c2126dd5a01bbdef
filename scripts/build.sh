#!/usr/bin/env bash
# Configure and build swapvisor. Usage: scripts/build.sh [BUILD_DIR] [extra cmake args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build}; shift || true
# Warnings are errors here (developers, CI); a plain cmake build leaves them warnings.
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSWV_WERROR=ON "$@" >/dev/null
cmake --build "$build" -j"$(nproc)"
echo "build: $build"
