#!/usr/bin/env bash
# bench/snapshot_fraction.sh: issue #21's snapshot bytes and time against the swapped
# fraction, with KVM guests through `serve` + `ctl`. One daemon with one swap file;
# for each resident fraction F in $FRACTIONS (default "1 0.75 0.5 0.25 0.125") a
# memtouch VM (mib=M, seeded: it verifies every byte) with a resident limit of F x M
# (none for 1: the full copy other VMMs write, by the same code), snapshotted REPS
# times in a row once its first pass has written all M and >= 90 % of (1 - F) x M is
# swapped; the median time counts (one snapshot's time follows the disk's speed of
# the moment). Each figure is given against the full copy of the same run:
#   bytes ratio = snapshot bytes / the F = 1 snapshot's, ms ratio likewise.
# Prints a table on stderr, keeps one JSON object per fraction in
# PLOT_DIR/snapshot_fraction_runs.jsonl, draws PLOT_DIR/snapshot_vs_swapped.png
# (gnuplot, when installed) and ends with one `JSON {...}` line (keys
# snap_frac_swapped, snap_frac_bytes_ratio, snap_frac_ms_ratio: lists in fraction
# order). Without /dev/kvm every figure is null with the reason.
#
# SWV (how to run swapvisor, default: on PATH), ELF (memtouch, default
# ../examples/memtouch.elf beside this script), DIR (swap file and snapshots, default
# /var/tmp), MIB (default 1024), FRACTIONS, REPS (default 3), PLOT_DIR (default
# ../docs/perf beside this script).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
read -r -a sv <<<"${SWV:-swapvisor}"
elf=${ELF:-$here/../examples/memtouch.elf}
dir=${DIR:-/var/tmp}
m=${MIB:-1024}
fractions=${FRACTIONS:-"1 0.75 0.5 0.25 0.125"}
reps=${REPS:-3}
plot_dir=${PLOT_DIR:-$here/../docs/perf}
log() { echo "[snapshot_fraction $(date +%T)] $*" >&2; }
null_json() {
  log "no figures: $1"
  printf 'JSON {"snap_frac_swapped": null, "snap_frac_bytes_ratio": null, "snap_frac_ms_ratio": null, "snap_frac_null_reason": "%s"}\n' "$1"
}
[[ -e /dev/kvm ]] || { null_json "no /dev/kvm"; exit 0; }
[[ -f $elf ]] || { null_json "no memtouch guest at $elf"; exit 0; }

. "$here/serve_lib.sh"
serve_lib_init swv-snapfrac

serve_lib_start "$m" || { null_json "serve did not start: $(tail -n 1 "$work/serve.err")"; exit 0; }

: >"$work/runs.jsonl"
i=0
for f in $fractions; do
  i=$((i + 1))
  name=f$i
  limit=()
  limit_mib=$(python3 -c "print(int($m * $f))")
  (( limit_mib < m )) && limit=(--resident-limit "${limit_mib}M")
  ctl vm-create "$name" --kernel "$elf" --memory $((m + 32))M "${limit[@]}" --serial-log "$work/$name.serial" \
    --cmdline "mib=$m passes=1000000 seed=5" >"$work/create.txt" 2>&1 ||
    { null_json "vm-create at fraction $f failed: $(tail -n 1 "$work/create.txt")"; exit 0; }
  deadline=$((SECONDS + 1200))
  until (( $(grep -ac 'memtouch: pass ' "$work/$name.serial" 2>/dev/null) >= 1 )); do
    (( SECONDS < deadline )) && kill -0 "$serve_pid" 2>/dev/null || { null_json "fraction $f: pass 1 did not end"; exit 0; }
    sleep 0.05
  done
  want=$(python3 -c "print(int((1 - $f) * 0.9 * $m * 1048576))")
  for _ in $(seq 1 600); do (( $(vm_stat "$name" swapped_bytes) >= want )) && break; sleep 0.1; done
  times=() bytes="" swapped=""
  for rep in $(seq 1 "$reps"); do
    stop=()
    (( rep == reps )) && stop=(--stop)
    reply=$(ctl --json snapshot "$name" "$work/snap_${name}_$rep" "${stop[@]}" | tail -n 1) ||
      { null_json "snapshot at fraction $f failed: $reply"; exit 0; }
    read -r t bytes swapped < <(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(r['elapsed_ms'], r['bytes_written'], r['pages']['swapped'])" "$reply")
    times+=("$t")
    ctl snapshot-delete "$work/snap_${name}_$rep" >/dev/null || log "snapshot-delete failed"
  done
  for _ in $(seq 1 300); do [[ $(state_of "$name") == ended ]] && break; sleep 0.1; done
  ctl vm-remove "$name" >/dev/null 2>&1
  grep -aqE 'MISMATCH|, [1-9][0-9]* bad pages' "$work/$name.serial" && { null_json "fraction $f: memtouch read wrong bytes"; exit 0; }
  ms=$(python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "${times[@]}")
  log "resident fraction $f: $swapped pages swapped, $bytes bytes, $ms ms (median of ${times[*]})"
  printf '{"resident_fraction": %s, "swapped_pages": %s, "bytes": %s, "ms": %s, "times": [%s]}\n' \
    "$f" "$swapped" "$bytes" "$ms" "$(IFS=,; echo "${times[*]}")" >>"$work/runs.jsonl"
done

python3 - "$work/runs.jsonl" "$m" "$plot_dir" <<'PY' >"$work/table.txt"
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
m = int(sys.argv[2])
full = next((r for r in runs if float(r["resident_fraction"]) >= 1), None)
pages = m * 256
out = {"snap_frac_swapped": [], "snap_frac_bytes_ratio": [], "snap_frac_ms_ratio": []}
print(f"{'resident':>8} {'swapped':>8} {'bytes':>12} {'ms':>8} {'bytes ratio':>11} {'ms ratio':>8}")
with open(f"{sys.argv[3]}/snapshot_fraction_runs.jsonl", "w") as keep:
    for r in runs:
        sw = round(r["swapped_pages"] / pages, 3)
        br = round(r["bytes"] / full["bytes"], 4) if full else None
        mr = round(r["ms"] / full["ms"], 4) if full else None
        r.update(memory_mib=m, swapped_fraction=sw, bytes_ratio=br, ms_ratio=mr)
        keep.write(json.dumps(r) + "\n")
        out["snap_frac_swapped"].append(sw)
        out["snap_frac_bytes_ratio"].append(br)
        out["snap_frac_ms_ratio"].append(mr)
        print(f"{r['resident_fraction']:>8} {sw:>8} {r['bytes']:>12} {r['ms']:>8} {br!s:>11} {mr!s:>8}")
print("JSON " + json.dumps(out))
PY
grep -v '^JSON' "$work/table.txt" >&2
if command -v gnuplot >/dev/null; then
  python3 -c "
import json,sys
for l in open(sys.argv[1]):
    r=json.loads(l); print(r['swapped_fraction'], r['bytes_ratio'], r['ms_ratio'])" "$plot_dir/snapshot_fraction_runs.jsonl" >"$work/plot.dat"
  gnuplot <<GP 2>"$work/gnuplot.err" || log "gnuplot failed: $(cat "$work/gnuplot.err")"
set terminal pngcairo size 800,500
set output "$plot_dir/snapshot_vs_swapped.png"
set title "Snapshot of a $m MiB memtouch guest / its full copy (same run)"
set xlabel "swapped fraction at the snapshot"
set ylabel "snapshot / full copy"
set xrange [0:1]
set yrange [0:1.1]
set key top right
set grid
plot "$work/plot.dat" using 1:2 with linespoints title "bytes written", \
     "$work/plot.dat" using 1:3 with linespoints title "time", \
     1 - x with lines dashtype 2 title "1 - swapped (resident share)"
GP
else
  log "gnuplot not installed: no plot drawn"
fi
grep '^JSON' "$work/table.txt"
