#!/usr/bin/env bash
# layers_test.sh <build dir>: the layering check passes on this tree, and it does
# catch a violation (a scratch copy of the tree with one upward include added).
set -u
here=$(cd "$(dirname "$0")/../.." && pwd)
bash "$here/scripts/check-layers.sh" "$here" || { echo "FAIL: the tree breaks its layering"; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r "$here/io" "$here/swap" "$here/guestmem" "$here/vmm" "$scratch/"
echo '#include "guestmem/stage2.hpp"' >> "$scratch/swap/types.hpp"
if bash "$here/scripts/check-layers.sh" "$scratch" >/dev/null; then
  echo "FAIL: an upward include from swap/ into guestmem/ went unnoticed"
  exit 1
fi
echo "layers_test: ok"
