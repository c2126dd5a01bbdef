#!/usr/bin/env bash
# bench/snapshot_sweep.sh BUILD [DIR] [PLOT_DIR]: bench/snapshot_bench over guest
# memory sizes (issue #21's "against memory size"), at the guestmem level: the guest
# is a host thread touching the guest view through the real userfaultfd path, not a
# KVM guest (bench/snapshot_guest.sh is the KVM one). Per size, REPS runs of
# `snapshot_bench MiB DIR 0` (no clones): snapshot bytes and time against a full copy,
# restore to the first page read, working-set pass lazy vs recorded-order prefetch.
# Prints every run, then per size the median (min-max), draws PLOT_DIR/
# snapshot_vs_memory.png (gnuplot, when installed: medians, bars from min to max),
# keeps the raw runs (one JSON object per line, with the 1-minute load average after
# each) in PLOT_DIR/snapshot_sweep_runs.jsonl and ends with one `JSON ` line. Env: SIZES (MiB, default "64 128 256 512"), REPS
# (default 3). Needs userfaultfd and a real disk in DIR (snapshot_bench refuses
# nothing itself: /var/tmp by default). Cleans up its files (trap).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: bench/snapshot_sweep.sh BUILD [DIR] [PLOT_DIR]}
dir=${2:-/var/tmp}
plot_dir=${3:-$here/../docs/perf}
sizes=${SIZES:-64 128 256 512}
reps=${REPS:-3}
bench=$build/bench/snapshot_bench
[[ -x $bench ]] || { echo "snapshot_sweep: $bench not built (cmake --build $build --target snapshot_bench)" >&2; exit 2; }
work=$(mktemp -d "$dir/swv-snapsweep.XXXXXX")
trap 'rm -rf "$work"' EXIT

for mib in $sizes; do
  for ((i = 1; i <= reps; i++)); do
    echo "[snapshot_sweep $(date +%T)] $mib MiB run $i/$reps (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    if ! "$bench" "$mib" "$dir" 0 >"$work/run_${mib}_$i.txt" 2>&1; then
      echo "[snapshot_sweep] $mib MiB run $i failed:" >&2
      tail -n 3 "$work/run_${mib}_$i.txt" >&2
      continue
    fi
    # The load average after the run, next to its figures (this host is shared).
    grep -a '^{' "$work/run_${mib}_$i.txt" | tail -n1 |
      sed "s/}\$/, \"load1\": $(cut -d' ' -f1 /proc/loadavg)}/" >>"$work/runs.jsonl"
  done
done
[[ -s $work/runs.jsonl ]] || { echo "snapshot_sweep: no run succeeded" >&2; exit 1; }

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
runs = [json.loads(l) for l in open(f"{work}/runs.jsonl")]
for r in runs:  # the faster of the two lazy passes, as the speedup is taken against it
    r["ws_lazy_best_ms"] = min(r["ws_lazy_ms"], r["ws_lazy_again_ms"])
keys = ["restore_first_page_ms", "snap_bytes_ratio_vs_full", "snap_ms_ratio_vs_full", "restore_prefetch_speedup",
        "snap_ms", "full_ms", "ws_lazy_best_ms", "ws_prefetch_ms", "swapped_fraction", "restore_table_ms", "restore_start_ms"]
print(f"{'MiB':>5} {'swapped':>7} {'full ms':>8} {'snap ms':>8} {'bytes ratio':>11} {'ms ratio':>8} "
      f"{'first page ms':>13} {'(table':>7} {'start)':>7} {'ws lazy ms':>10} {'ws prefetch ms':>14} {'speedup':>7} {'load1':>5}")
for r in runs:
    print(f"{r['memory_mib']:>5} {r['swapped_fraction']:>7.3f} {r['full_ms']:>8.1f} {r['snap_ms']:>8.1f} "
          f"{r['snap_bytes_ratio_vs_full']:>11.4f} {r['snap_ms_ratio_vs_full']:>8.4f} {r['restore_first_page_ms']:>13.2f} "
          f"{r['restore_table_ms']:>7.2f} {r['restore_start_ms']:>7.2f} "
          f"{r['ws_lazy_best_ms']:>10.1f} {r['ws_prefetch_ms']:>14.1f} "
          f"{r['restore_prefetch_speedup']:>7.2f} {r['load1']:>5}")
sizes = sorted({r["memory_mib"] for r in runs})
summary = []
with open(f"{work}/sweep.dat", "w") as dat:
    # columns: MiB, then per key median min max
    for mib in sizes:
        rs = [r for r in runs if r["memory_mib"] == mib]
        row = {"memory_mib": mib, "runs": len(rs)}
        cols = [str(mib)]
        for k in keys:
            v = [r[k] for r in rs]
            row[k] = {"median": statistics.median(v), "min": min(v), "max": max(v)}
            cols += [str(statistics.median(v)), str(min(v)), str(max(v))]
        dat.write(" ".join(cols) + "\n")
        summary.append(row)
print("\nmedian (min-max) per size:")
for row in summary:
    f = lambda k, nd: f"{row[k]['median']:.{nd}f} ({row[k]['min']:.{nd}f}-{row[k]['max']:.{nd}f})"
    print(f"{row['memory_mib']:>5} MiB x{row['runs']}: first page {f('restore_first_page_ms', 2)} ms, "
          f"(restore_guest_memory {f('restore_table_ms', 2)} ms), "
          f"bytes ratio {f('snap_bytes_ratio_vs_full', 4)}, ms ratio {f('snap_ms_ratio_vs_full', 4)}, "
          f"prefetch speedup {f('restore_prefetch_speedup', 2)}x")
json.dump({"sweep": summary}, open(f"{work}/summary.json", "w"))
PY
# Column of key k (0-based in the python list above) median/min/max: 2+3k, 3+3k, 4+3k.
cols() { echo "$((2 + 3 * $1)):$((3 + 3 * $1)):$((4 + 3 * $1))"; }  # median:min:max
mkdir -p "$plot_dir"
if command -v gnuplot >/dev/null; then
  f=$work/sweep.dat
  gnuplot <<GP 2>"$work/gnuplot.err" || echo "snapshot_sweep: gnuplot failed: $(cat "$work/gnuplot.err")" >&2
set terminal pngcairo size 1100,450 noenhanced
set output "$plot_dir/snapshot_vs_memory.png"
set multiplot layout 1,2 title "snapshot_bench sweep (guestmem level: host threads as the guest, no KVM), ~75 % swapped; median of $reps, bars min-max"
set grid
set key below
set logscale xy 2
set xlabel "guest memory (MiB)"
set ylabel "ms"
set xrange [*:*]
plot "$f" using 1:$(cols 5) with yerrorlines title "full copy (every byte, fsync)", \
     "$f" using 1:$(cols 4) with yerrorlines title "snapshot (swapped pages by reference)", \
     "$f" using 1:$(cols 0) with yerrorlines title "restore to the first page read", \
     "$f" using 1:$(cols 9) with yerrorlines dt 2 title "  of which restore_guest_memory (page table from the snapshot)"
unset logscale y
set logscale y 10
set ylabel "ratio"

plot "$f" using 1:$(cols 3) with yerrorlines title "prefetch speedup (lazy / prefetch ws pass)", \
     "$f" using 1:$(cols 2) with yerrorlines title "snapshot ms / full copy ms", \
     "$f" using 1:$(cols 1) with yerrorlines title "snapshot bytes / full copy bytes", \
     3 with lines dt 2 lw 2 lc rgb "dark-gray" title "prefetch target 3x", 0.3 with lines dt 4 lw 2 lc rgb "dark-gray" title "snapshot ratio target 0.3"
unset multiplot
GP
  echo "plot: $plot_dir/snapshot_vs_memory.png"
else
  echo "snapshot_sweep: gnuplot not installed: no plot drawn" >&2
fi
# The raw runs beside the plot: every figure docs/PERFORMANCE.md quotes is in them.
cp "$work/runs.jsonl" "$plot_dir/snapshot_sweep_runs.jsonl" 2>/dev/null
echo "JSON $(cat "$work/summary.json")"
