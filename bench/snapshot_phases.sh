#!/usr/bin/env bash
# bench/snapshot_phases.sh: where a snapshot's time goes, for A/B runs of two builds.
# One `serve` with one swap file, one memtouch VM (mib=M) at a resident limit of M/4,
# snapshotted REPS times once its first pass has written all of M (about three
# quarters swapped then); prints the daemon's log line for each (pause, memory walk,
# image fsync, table image, page table and manifest files; docs/SNAPSHOT.md), then
# the median total. Run it for each build one after the other, alternating, on the
# same file system: one snapshot's time follows the disk's speed of the moment.
#
# SWV (how to run swapvisor, default: on PATH), ELF (memtouch, default
# ../examples/memtouch.elf beside this script), DIR (swap file and snapshots, default
# /var/tmp), MIB (default 1024), REPS (default 5). Needs /dev/kvm.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
read -r -a sv <<<"${SWV:-swapvisor}"
elf=${ELF:-$here/../examples/memtouch.elf}
dir=${DIR:-/var/tmp}
m=${MIB:-1024}
reps=${REPS:-5}
[[ -e /dev/kvm ]] || { echo "snapshot_phases: no /dev/kvm" >&2; exit 2; }
. "$here/serve_lib.sh"
serve_lib_init swv-snapphases
serve_lib_start "$m" || { echo "serve did not start: $(tail -n 1 "$work/serve.err")" >&2; exit 1; }
ctl vm-create s --kernel "$elf" --memory $((m + 32))M --resident-limit $((m / 4))M --serial-log "$work/s.serial" \
  --cmdline "mib=$m passes=1000000 seed=3" >/dev/null || { echo "vm-create failed" >&2; exit 1; }
deadline=$((SECONDS + 1200))
until (( $(grep -ac 'memtouch: pass ' "$work/s.serial" 2>/dev/null) >= 1 )); do
  (( SECONDS < deadline )) && kill -0 "$serve_pid" 2>/dev/null || { echo "pass 1 did not end" >&2; exit 1; }
  sleep 0.05
done
sleep 1
for r in $(seq 1 "$reps"); do
  ctl snapshot s "$work/snap$r" >/dev/null || { echo "snapshot failed" >&2; exit 1; }
  ctl snapshot-delete "$work/snap$r" >/dev/null
done
grep -a "snapshot $work/snap.* ms: pause" "$work/serve.err" | sed 's/.*swapped by reference, //'
grep -a "snapshot $work/snap.* ms: pause" "$work/serve.err" | sed 's/.* bytes, \([0-9]*\) ms: .*/\1/' |
  python3 -c "import statistics,sys; v=[float(x) for x in sys.stdin]; print(f'median {statistics.median(v):.0f} ms over {len(v)}')"
