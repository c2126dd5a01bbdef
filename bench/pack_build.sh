#!/usr/bin/env bash
# bench/pack_build.sh BUILD OUT: a self-contained copy of what bench/host_check.sh
# runs, for a Linux host with KVM where nothing may be installed (issue #18 item 8):
# swapvisor, the benches, the example guests, the bench scripts, and lib/ holding
# every shared library they load plus the dynamic loader, so each binary runs as
# `OUT/lib/ld-linux-x86-64.so.2 --library-path OUT/lib OUT/BIN` whatever the host's
# libraries are. Copy OUT (or OUT.tar.xz, also written) over and run
# `OUT/bench/host_check.sh OUT`.
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: bench/pack_build.sh BUILD OUT" >&2; exit 2; }
build=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
out=$2
mkdir -p "$out/bench" "$out/examples" "$out/lib"
bins=(swapvisor bench/swap_bench bench/swapoff_bench bench/uffd_roundtrip)
for b in "${bins[@]}"; do
  [[ -x $build/$b ]] || { echo "pack_build: $build/$b is missing (build it first)" >&2; exit 1; }
  cp "$build/$b" "$out/$b"
  strip --strip-debug "$out/$b"  # RelWithDebInfo: the debug info is most of the size
done
cp "$build"/examples/*.elf "$out/examples/"
# host_check.sh and every script it runs (they find each other beside themselves).
cp "$here/host_check.sh" "$here/scale_bench.sh" "$here/snapshot_guest.sh" "$here/serve_lib.sh" "$out/bench/"
# Every library the binaries load (ldd resolves the whole closure), and the loader.
for b in "${bins[@]}"; do
  ldd "$build/$b" | awk '/=> \// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'
done | sort -u | while read -r lib; do cp -L "$lib" "$out/lib/"; done
[[ -e $out/lib/ld-linux-x86-64.so.2 ]] || { echo "pack_build: no ld-linux-x86-64.so.2 found by ldd" >&2; exit 1; }
# One file to move (a lent machine takes at most 64 MiB; libicudata alone is 30):
tar -C "$(dirname "$out")" -cJf "$out.tar.xz" "$(basename "$out")"
du -sh "$out" "$out.tar.xz" >&2
