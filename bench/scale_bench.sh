#!/usr/bin/env bash
# bench/scale_bench.sh: one `swapvisor serve`, N VMs at once (issue #18 item 7). For
# each N in $SCALE_NS (default "1 4 16 64", cut to what the host's memory and disk
# fit) it starts a daemon with one swap file, creates N memtouch VMs of $SCALE_MIB
# (256) MiB each at 2x overcommit (resident limit MIB/2, the guest touching 7/8 of its
# memory, random order, $SCALE_PASSES passes, each VM its own seed so every byte is
# checked), polls `ctl --json stats` once a second while they run and measures:
#   scale_create_ms            mean time of one vm-create (its reply: the VM runs)
#   scale_threads              threads of the daemon with all N VMs running
#   scale_overhead_mib_per_vm  the daemon's own memory / N: RssAnon + RssFile (guest
#                              memory is a memfd, RssShmem, left out: the VMM view
#                              maps only some of a VM's resident pages, so RSS minus
#                              the guests' resident bytes came out negative)
#   scale_aggregate_swapin_mib_s / _swapout_  pages swapped in / out by all VMs over
#                              the wall time from the first create to the last end
#   scale_p99_fault_us         p99 of the swap-in histogram merged over all VMs
#   scale_errors               VMs that did not exit 0 (memtouch verifies every byte)
# Prints a table on stderr and, as the last line, `JSON {...}` with one list per key
# (index i is N = scale_vms[i]); a figure that could not be measured is null and
# `scale_null_reason` says why (no /dev/kvm, no python3, a VM failed, ...).
#
# Portable: no build, no install. Environment:
#   SWV      how to run swapvisor (default: swapvisor on PATH; e.g. "BUILD/lib/ld-linux-x86-64.so.2
#            --library-path BUILD/lib BUILD/swapvisor" from bench/pack_build.sh)
#   ELF      the memtouch guest (default: beside this script, ../examples/memtouch.elf)
#   DIR      where the swap files go (default /var/tmp); SCALE_NS, SCALE_MIB, SCALE_PASSES
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
read -r -a sv <<<"${SWV:-swapvisor}"
elf=${ELF:-$here/../examples/memtouch.elf}
dir=${DIR:-/var/tmp}
mib=${SCALE_MIB:-256}
passes=${SCALE_PASSES:-2}
ns=${SCALE_NS:-"1 4 16 64"}
log() { echo "[scale $(date +%T)] $*" >&2; }

null_json() {  # every key null, with the reason
  printf 'JSON {"scale_vms":null,"scale_create_ms":null,"scale_threads":null,"scale_overhead_mib_per_vm":null,'
  printf '"scale_aggregate_swapin_mib_s":null,"scale_aggregate_swapout_mib_s":null,"scale_p99_fault_us":null,'
  printf '"scale_errors":null,"scale_null_reason":"%s"}\n' "$1"
}
[[ -r /dev/kvm && -w /dev/kvm ]] || { log "no usable /dev/kvm"; null_json "no usable /dev/kvm on this host"; exit 0; }
command -v python3 >/dev/null || { log "no python3"; null_json "python3 not found (needed to read the stats)"; exit 0; }
[[ -f $elf ]] || { log "no guest at $elf"; null_json "memtouch guest not found: $elf"; exit 0; }

# What fits: each VM holds up to MIB/2 resident and MIB of swap (the file is sized for
# every page of every VM); keep a quarter of the memory and disk free.
avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
disk_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
fit=()
for n in $ns; do
  if (( n * mib / 2 * 1024 > avail_kib * 3 / 4 || n * mib * 1024 > disk_kib * 3 / 4 )); then
    log "N=$n does not fit (memory ${avail_kib} KiB, disk ${disk_kib} KiB free): skipped"
    continue
  fi
  fit+=("$n")
done
[[ ${#fit[@]} -gt 0 ]] || { null_json "no N of $ns fits this host's free memory or disk"; exit 0; }

work=$(mktemp -d "$dir/swv-scale.XXXXXX")
serve_pid=""
cleanup() {
  [[ -n $serve_pid ]] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }

results=()
for n in "${fit[@]}"; do
  sock=$work/ctl.sock
  rm -f "$work"/*.swap "$work"/*.json
  "${sv[@]}" serve --control "$sock" --swap "$work/pool.swap,size=$((n * mib))M" --log-level warn \
    >"$work/serve-$n.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
  ctl() { "${sv[@]}" ctl --socket "$sock" "$@"; }
  t_start=$(now_ms)
  create_ok=1
  for i in $(seq "$n"); do
    if ! ctl vm-create "vm$i" --kernel "$elf" --memory "${mib}M" --resident-limit "$((mib / 2))M" \
        --serial-log "$work/vm$i.serial" --cmdline "mib=$((mib * 7 / 8)) passes=$passes mode=rand seed=$i" \
        >>"$work/create-$n.log" 2>&1; then
      create_ok=0; log "N=$n: vm-create vm$i failed: $(tail -n1 "$work/create-$n.log")"; break
    fi
  done
  t_created=$(now_ms)
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$serve_pid/status")
  # Poll until every VM has ended, keeping each VM's last stats (a VM's memory and its
  # counters go when it ends).
  k=0
  while :; do
    ctl --json stats >"$work/stats-$k.json" 2>/dev/null || true
    awk '/^(RssAnon|RssFile):/ {kib += $2} END {print kib}' "/proc/$serve_pid/status" >"$work/rss-$k.txt"
    ctl --json vm-list >"$work/list.json" 2>/dev/null || true
    if python3 - "$work/list.json" <<'PY'; then break; fi
import json, sys
try:
    vms = json.load(open(sys.argv[1])).get("vms", [])
except Exception:
    sys.exit(1)
sys.exit(0 if vms and all(v.get("state") not in ("creating", "running", "paused", "stopping") for v in vms) else 1)
PY
    k=$((k + 1)); sleep 1
    (( k > 3600 )) && { log "N=$n: VMs still running after an hour"; break; }
  done
  t_end=$(now_ms)
  results+=("$(python3 - "$work" "$n" "$k" "$t_start" "$t_created" "$t_end" "${threads:-0}" "$create_ok" <<'PY'
import glob, json, os, sys
work, n, last, t0, t1, t2, threads, create_ok = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:9])
snap = {}      # VM name -> its last stats
overhead = []  # the daemon's anonymous + file RSS per sample with every VM running
for k in range(last + 1):
    try:
        vms = json.load(open(f"{work}/stats-{k}.json")).get("vms", [])
        rss = int(open(f"{work}/rss-{k}.txt").read().split()[0]) * 1024
    except Exception:
        continue
    for v in vms:
        snap[v["name"]] = v
    if len(vms) == n:
        overhead.append(rss)
ends = json.load(open(f"{work}/list.json")).get("vms", [])
errors = sum(1 for v in ends if v.get("exit_code", 1) != 0) + (n - len(ends))
wall = max(t2 - t0, 1) / 1000
page = 4096
sin = sum(v.get("swap_in_pages", 0) for v in snap.values()) * page / 2**20 / wall
sout = sum(v.get("swap_out_pages", 0) for v in snap.values()) * page / 2**20 / wall
# Merge the cumulative swap-in histograms; p99 = the first bucket bound holding 99 %.
merged, count = {}, 0
for v in snap.values():
    for le, c in v.get("swapin_seconds_bucket", {}).items():
        merged[le] = merged.get(le, 0) + c
    count += v.get("swapin_seconds_count", 0)
p99 = None
if count:
    for le, c in sorted(((float(k), c) for k, c in merged.items() if k != "+Inf")):
        if c >= 0.99 * count:
            p99 = le * 1e6
            break
print(json.dumps({"n": n, "create_ms": (t1 - t0) / n if create_ok else None, "threads": threads,
                  "overhead_mib_per_vm": (sum(overhead) / len(overhead) / 2**20 / n) if overhead else None,
                  "swapin_mib_s": round(sin, 1), "swapout_mib_s": round(sout, 1), "p99_fault_us": p99,
                  "errors": errors, "wall_s": round(wall, 1)}))
PY
)")
  log "N=$n: ${results[-1]}"
  kill -TERM "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null; serve_pid=""
done

python3 - "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:]]
key = {"scale_vms": "n", "scale_create_ms": "create_ms", "scale_threads": "threads",
       "scale_overhead_mib_per_vm": "overhead_mib_per_vm", "scale_aggregate_swapin_mib_s": "swapin_mib_s",
       "scale_aggregate_swapout_mib_s": "swapout_mib_s", "scale_p99_fault_us": "p99_fault_us",
       "scale_errors": "errors"}
out = {k: [r.get(v) for r in rows] for k, v in key.items()}
bad = [r["n"] for r in rows if r.get("errors")]
out["scale_null_reason"] = f"VMs failed at N={bad}" if bad else None
print(f"{'N':>4} {'create ms':>10} {'threads':>8} {'MiB/VM':>8} {'in MiB/s':>9} {'out MiB/s':>10} {'p99 us':>8} {'errors':>6}",
      file=sys.stderr)
for r in rows:
    print(f"{r['n']:>4} {r['create_ms'] or 0:>10.1f} {r['threads'] or 0:>8} {r['overhead_mib_per_vm'] or 0:>8.1f} "
          f"{r['swapin_mib_s']:>9} {r['swapout_mib_s']:>10} {r['p99_fault_us'] or 0:>8.0f} {r['errors']:>6}", file=sys.stderr)
print("JSON " + json.dumps(out, separators=(",", ":")))
PY
