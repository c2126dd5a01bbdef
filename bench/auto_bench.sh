#!/usr/bin/env bash
# bench/auto_bench.sh: issue #20's host benchmark. One `swapvisor serve` with a host
# budget runs a mix of four `phases` guests (examples/phases.c) whose working sets
# differ and change over time, with total guest memory ~3.2x the budget, under each
# way of setting their resident limits, one after the other in the same run:
#   unlimited     the same mix with no budget and no limits (the peer for slowdowns:
#                 the same CPU sharing, no memory pressure)
#   proportional  --host-budget alone: today's split, in proportion to memory size
#   static-peak   hand-set limits in proportion to each VM's peak hot set (+16 MiB),
#                 scaled to the budget
#   static-mean   hand-set limits in proportion to each VM's mean hot set (+16 MiB),
#                 the rest of the budget spread the same way
#   auto          serve --auto-limits --host-budget (guestmem/README.md#auto-limits)
# The mix (M = AUTO_MIB per VM, default 256; hot sets in MiB, one per phase of
# AUTO_PERIOD s, default 60, repeated AUTO_CYCLES times, default 2):
#   steady  hot=9M/16 always         small  hot=M/16 always
#   grow    hot=M/16 then 3M/8       burst  hot=0 (idle) then M/4
# Their largest hot sets add up to ~0.9x the budget: an equal split starves steady
# (and grow in its big phase) while a split by need fits everyone.
# Work of a VM = sum over its phases of MiB swept (mib_per_s x seconds, from its
# serial log); every page it touches is checked by the guest (errors count). Each
# guest runs one cycle more than it counts: the VMs' fills end at different times, so
# the first VM to finish would leave the others its memory for their last phase (an
# uncontended phase sweeps from cache, thousands of times faster than one that
# thrashes, and would outweigh everything else). A VM's
# speed = its work / its work unlimited (small hot sets sweep from cache, so raw MiB
# would weigh them most); throughput of a mode = the mean speed of its VMs, over all
# phases and over the settled ones (cycles after the first: the working set is
# measured over 120 s, so auto knows each VM's need only after the first cycle).
# Every AUTO_SAMPLE s (default 2) `ctl --json stats` is kept: each VM's limit,
# resident bytes, stall (some, avg10/avg60) and the auto decision.
#
# Figures, per mode: throughput (all / settled), each VM's slowdown against
# unlimited (1 / its speed), each VM's stall (max avg60 after the first minute; the
# whole run's share from stall_some_ns), the share of guest memory offloaded (time
# average of 1 - resident / memory from 10 s on), errors. JSON keys (last line
# `JSON {...}`): auto_offloaded_pct, auto_max_stall_pct,
# auto_vs_proportional_throughput (and _settled_), auto_worst_vm_slowdown,
# auto_vs_static_best_throughput (and _settled_: the better static mode),
# proportional_worst_vm_slowdown, and `modes` with every figure; null with
# `auto_null_reason` where a mode could not run.
# AUTO_PLOT=FILE draws each VM's limit and stall over time under auto (gnuplot).
# AUTO_AGE_SAMPLE=N gives the auto VMs `vm-create --age-sample N` (default: the
# daemon's, 8 on auto; 1 is the full scan of before DESIGN-NOTES 61).
#
# Portable like scale_bench.sh: SWV (how to run swapvisor), ELF (phases.elf), DIR
# (swap file; default /var/tmp), AUTO_MODES (default all five, in the order above).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
read -r -a sv <<<"${SWV:-swapvisor}"
elf=${ELF:-$here/../examples/phases.elf}
dir=${DIR:-/var/tmp}
M=${AUTO_MIB:-256}
period=${AUTO_PERIOD:-60}
cycles=${AUTO_CYCLES:-2}
sample=${AUTO_SAMPLE:-2}
modes=${AUTO_MODES:-"unlimited proportional static-peak static-mean auto"}
log() { echo "[auto_bench $(date +%T)] $*" >&2; }

null_json() {
  printf 'JSON {"auto_offloaded_pct":null,"auto_max_stall_pct":null,"auto_vs_proportional_throughput":null,'
  printf '"auto_worst_vm_slowdown":null,"auto_vs_static_best_throughput":null,"proportional_worst_vm_slowdown":null,'
  printf '"modes":null,"auto_null_reason":"%s"}\n' "$1"
}
[[ -r /dev/kvm && -w /dev/kvm ]] || { log "no usable /dev/kvm"; null_json "no usable /dev/kvm on this host"; exit 0; }
command -v python3 >/dev/null || { null_json "python3 not found (needed to read the stats)"; exit 0; }
[[ -f $elf ]] || { null_json "phases guest not found: $elf"; exit 0; }
(( M >= 128 && M % 16 == 0 )) || { echo "auto_bench: AUTO_MIB must be a multiple of 16, at least 128" >&2; exit 2; }

# The mix: name and hot sets (MiB) per phase.
names=(steady small grow burst)
hots=("$((9 * M / 16)),$((9 * M / 16))" "$((M / 16)),$((M / 16))" "$((M / 16)),$((3 * M / 8))" "0,$((M / 4))")
mem=$((M + 32))                     # guest memory: the hot sets' pages + the runtime's
total=$((4 * mem))
budget=$(( (total * 10 / 32) / 2 * 2 ))   # total / 3.2, whole MiB, even
run_s=$((2 * period * (cycles + 1)))
avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
(( total * 1024 < avail_kib * 3 / 4 )) || { null_json "the mix needs ${total} MiB of free memory for its unlimited run"; exit 0; }

# Hand-set limits: in proportion to WEIGHTS (MiB each), scaled so they sum to the budget.
static_limits() {
  python3 - "$budget" "$@" <<'PY'
import sys
budget, w = int(sys.argv[1]), [float(a) for a in sys.argv[2:]]
print(" ".join(str(max(16, int(budget * x / sum(w)) // 2 * 2)) for x in w))
PY
}
peak_w=() mean_w=()
for h in "${hots[@]}"; do
  a=${h%,*} b=${h#*,}
  peak_w+=($(( (a > b ? a : b) + 16 ))); mean_w+=($(( (a + b) / 2 + 16 )))
done

work=$(mktemp -d "$dir/swv-auto.XXXXXX")
out=${AUTO_OUT:-$work/out}
mkdir -p "$out"
serve_pid=""
cleanup() {
  [[ -n $serve_pid ]] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "mix: ${names[*]} hot=(${hots[*]}) MiB, ${mem} MiB each, total ${total} MiB, budget ${budget} MiB, phases of ${period} s x ${cycles}"
for mode in $modes; do
  sock=$work/ctl.sock
  rm -f "$work"/*.swap "$sock"
  flags=(--control "$sock" --swap "$work/pool.swap,size=$((total + 64))M" --log-level info)
  limits=("" "" "" "")
  case $mode in
    unlimited) ;;
    proportional) flags+=(--host-budget "${budget}M") ;;
    static-peak) read -r -a limits <<<"$(static_limits "${peak_w[@]}")"; flags+=(--host-budget "${budget}M") ;;
    static-mean) read -r -a limits <<<"$(static_limits "${mean_w[@]}")"; flags+=(--host-budget "${budget}M") ;;
    auto) flags+=(--host-budget "${budget}M" --auto-limits) ;;
    *) echo "auto_bench: unknown mode $mode" >&2; exit 2 ;;
  esac
  "${sv[@]}" serve "${flags[@]}" >"$out/serve-$mode.log" 2>&1 &
  serve_pid=$!
  for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
  ctl() { "${sv[@]}" ctl --socket "$sock" "$@"; }
  log "$mode: limits ${limits[*]:-(none)}"
  ok=1
  for i in 0 1 2 3; do
    lim=(); [[ -n ${limits[$i]} ]] && lim=(--resident-limit "${limits[$i]}M")
    [[ $mode == auto && -n ${AUTO_AGE_SAMPLE:-} ]] && lim+=(--age-sample "$AUTO_AGE_SAMPLE")
    if ! ctl vm-create "${names[$i]}" --kernel "$elf" --memory "${mem}M" "${lim[@]}" \
        --serial-log "$out/$mode-${names[$i]}.serial" \
        --cmdline "mib=$M hot=${hots[$i]} period=$period cycles=$((cycles + 1)) seed=$((i + 1))" >>"$out/create-$mode.log" 2>&1; then
      ok=0; log "$mode: vm-create ${names[$i]} failed: $(tail -n1 "$out/create-$mode.log")"; break
    fi
  done
  t0=$(date +%s%3N)
  : >"$out/samples-$mode.jsonl"
  while [[ $ok == 1 ]]; do
    now=$(date +%s%3N)
    s=$(ctl --json stats 2>/dev/null) && printf '{"t_ms":%s,"stats":%s}\n' "$((now - t0))" "$s" >>"$out/samples-$mode.jsonl"
    ctl --json vm-list >"$work/list.json" 2>/dev/null || true
    python3 - "$work/list.json" <<'PY' && break
import json, sys
try:
    vms = json.load(open(sys.argv[1])).get("vms", [])
except Exception:
    sys.exit(1)
sys.exit(0 if vms and all(v.get("state") not in ("creating", "running", "paused", "stopping") for v in vms) else 1)
PY
    (( now - t0 > (run_s + 600) * 1000 )) && { log "$mode: VMs still running $((run_s + 600)) s after the start"; break; }
    sleep "$sample"
  done
  cp "$work/list.json" "$out/ends-$mode.json" 2>/dev/null || true
  kill -TERM "$serve_pid" 2>/dev/null; wait "$serve_pid" 2>/dev/null; serve_pid=""
  log "$mode: done in $(( ($(date +%s%3N) - t0) / 1000 )) s"
done

python3 - "$out" "$modes" "$total" "$budget" "${AUTO_PLOT:-}" "$cycles" "${names[@]}" <<'PY'
import json, re, subprocess, sys
out, modes, total, budget, plot = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
counted, names = int(sys.argv[6]), sys.argv[7:]
PH = re.compile(r"phases: cycle=(\d+) phase=\d+ hot_mib=(\d+) seconds=(\d+) sweeps=\d+ mib_per_s=([\d.]+)")
def guest(mode, name):
    """(work over all phases, work over cycles >= 1, errors, finished)"""
    work, settled, errors, done = 0.0, 0.0, None, False
    try:
        for line in open(f"{out}/{mode}-{name}.serial", errors="replace"):
            m = PH.search(line)
            if m and int(m.group(1)) < counted:  # the extra cycle is not counted
                w = float(m.group(4)) * int(m.group(3))
                work += w
                settled += w if int(m.group(1)) >= 1 else 0
            if "RESULT " in line:
                try:
                    r = json.loads(line.split("RESULT ", 1)[1])
                    errors, done = r.get("errors"), bool(r.get("ok"))
                except ValueError:
                    pass
    except OSError:
        pass
    return work, settled, errors, done
def samples(mode):
    rows = []
    try:
        for line in open(f"{out}/samples-{mode}.jsonl"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    except OSError:
        pass
    return rows
R = {}
for mode in modes:
    g = {n: guest(mode, n) for n in names}
    rows = samples(mode)
    # Stall per VM: the largest avg60 once a minute has passed, and the whole run's share.
    stall60, stall_run, offl, last = {n: 0.0 for n in names}, {}, [], {}
    for row in rows:
        vms = {v["name"]: v for v in row["stats"].get("vms", [])}
        for n, v in vms.items():
            last[n] = (row["t_ms"], v)
            if row["t_ms"] >= 60000 and n in stall60:
                stall60[n] = max(stall60[n], v.get("stall_some_avg60", 0.0))
        if len(vms) == len(names) and row["t_ms"] >= 10000:
            mem = sum(v.get("memory_bytes", 0) for v in vms.values())
            res = sum(v.get("resident_bytes", 0) for v in vms.values())
            if mem:
                offl.append(1 - res / mem)
    for n, (t, v) in last.items():
        stall_run[n] = v.get("stall_some_ns", 0) / 1e6 / max(t, 1)
    R[mode] = {
        "work_mib": {n: round(g[n][0], 1) for n in names},
        "settled_work_mib": {n: round(g[n][1], 1) for n in names},
        "errors": sum((g[n][2] or 0) for n in names) + sum(1 for n in names if not g[n][3]),
        "stall_max_avg60_pct": {n: round(100 * stall60[n], 2) for n in names},
        "stall_run_pct": {n: round(100 * stall_run.get(n, 0), 2) for n in names},
        "offloaded_pct": round(100 * sum(offl) / len(offl), 1) if offl else None,
        "last_limit_mib": {n: round(last[n][1].get("resident_limit", 0) / 2**20) for n in last},
    }
base = R.get("unlimited")
def speeds(r, key):
    if not base:
        return {}
    return {n: r[key][n] / base[key][n] for n in names if base[key][n]}
for mode, r in R.items():
    if base and mode != "unlimited":
        s_all, s_set = speeds(r, "work_mib"), speeds(r, "settled_work_mib")
        r["slowdown"] = {n: (round(1 / x, 2) if x else None) for n, x in s_all.items()}
        r["throughput"] = round(sum(s_all.values()) / len(s_all), 3) if s_all else None
        r["settled_throughput"] = round(sum(s_set.values()) / len(s_set), 3) if s_set else None
def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None
def worst(r):
    s = [x for x in (r or {}).get("slowdown", {}).values() if x is not None]
    return max(s) if s else None
auto, prop = R.get("auto"), R.get("proportional")
statics = [R[m] for m in ("static-peak", "static-mean") if m in R and R[m].get("throughput") is not None]
best = max(statics, key=lambda s: s["throughput"]) if statics else None
get = lambda r, k: r.get(k) if r else None
J = {
    "auto_offloaded_pct": get(auto, "offloaded_pct"),
    "auto_max_stall_pct": max(auto["stall_max_avg60_pct"].values()) if auto else None,
    "auto_vs_proportional_throughput": ratio(get(auto, "throughput"), get(prop, "throughput")),
    "auto_vs_proportional_settled_throughput": ratio(get(auto, "settled_throughput"), get(prop, "settled_throughput")),
    "auto_worst_vm_slowdown": worst(auto),
    "auto_vs_static_best_throughput": ratio(get(auto, "throughput"), get(best, "throughput")),
    "auto_vs_static_best_settled_throughput": ratio(get(auto, "settled_throughput"), get(best, "settled_throughput")),
    "proportional_worst_vm_slowdown": worst(prop),
    "auto_budget_mib": budget, "auto_total_guest_mib": total, "modes": R,
}
why = []
if not base:
    why.append("no unlimited run: speeds and slowdowns need it")
bad = [m for m, r in R.items() if r["errors"]]
if bad:
    why.append(f"guest errors or unfinished VMs in {bad}")
J["auto_null_reason"] = "; ".join(why) or None
print(f"{'mode':>13} {'speed':>6} {'settled':>7} {'offload %':>9} {'worst slow':>10} {'max stall60 %':>13} {'errors':>6}", file=sys.stderr)
for m, r in R.items():
    print(f"{m:>13} {r.get('throughput') or 1:>6} {r.get('settled_throughput') or 1:>7} {r['offloaded_pct'] or 0:>9} "
          f"{worst(r) or 1:>10} {max(r['stall_max_avg60_pct'].values()):>13} {r['errors']:>6}", file=sys.stderr)
if plot and "auto" in R:
    dat = f"{out}/auto_limits.dat"
    with open(dat, "w") as f:
        for n in names:
            f.write(f"# {n}: t_s limit_mib resident_mib stall_some_avg10_pct\n")
            for row in samples("auto"):
                for v in row["stats"].get("vms", []):
                    if v["name"] == n:
                        f.write(f"{row['t_ms'] / 1000:.1f} {v.get('resident_limit', 0) / 2**20:.1f} "
                                f"{v.get('resident_bytes', 0) / 2**20:.1f} {100 * v.get('stall_some_avg10', 0):.2f}\n")
            f.write("\n\n")
    series = ", ".join(f"'{dat}' index {i} using 1:2 with lines lw 2 title '{n} limit'" for i, n in enumerate(names))
    stalls = ", ".join(f"'{dat}' index {i} using 1:4 axes x1y2 with lines dt 2 title '{n} stall %'" for i, n in enumerate(names))
    script = (f"set terminal pngcairo size 1000,600; set output '{plot}'; set xlabel 'seconds'; "
              f"set ylabel 'resident limit (MiB)'; set y2label 'stall some avg10 (%)'; set y2tics; set key outside; "
              f"set title 'resident-limit=auto, host budget {budget} MiB for {total} MiB of guests'; plot {series}, {stalls}")
    try:
        subprocess.run(["gnuplot", "-e", script], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"auto_bench: no plot ({e})", file=sys.stderr)
print("JSON " + json.dumps(J, separators=(",", ":")))
PY
