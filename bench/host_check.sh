#!/usr/bin/env bash
# bench/host_check.sh BUILD_DIR [--quick]: swapvisor's guest figures on the host it
# runs on (issue #18 item 8), from a build directory copied there, installing
# nothing. BUILD_DIR is a build tree or a bench/pack_build.sh copy (with lib/ and the
# loader: every binary then runs through it). Runs, each with its peer from the same
# run where this host has one:
#   - the userfaultfd round trip and swap_bench (swap-in fault p50/p99 against read_in,
#     swap-out drain), on $DIR (default /var/tmp);
#   - memtouch and kvs at 2x and 4x overcommit (ops/s, MiB/s, p99, errors) against the
#     same guest unlimited (1x);
#   - bench/scale_bench.sh at every N of 1 4 16 64 the host fits (--quick: 1 4);
#   - bench/snapshot_guest.sh (issue #21) at 256 MiB and 1 GiB (--quick: 256 MiB):
#     snapshot bytes / time against a full copy, restore to first instruction, the
#     pass after a restore lazy vs recorded-order prefetch.
# Figures that need /dev/kvm are null without it, with the reason. Last line:
# `JSON {...}`; everything it printed is also kept in $OUT (default ./host_check-DATE).
set -uo pipefail
[[ $# -ge 1 ]] || { echo "usage: bench/host_check.sh BUILD_DIR [--quick]" >&2; exit 2; }
b=$(cd "$1" && pwd)
quick=0; [[ ${2:-} == --quick ]] && quick=1
here=$(cd "$(dirname "$0")" && pwd)
dir=${DIR:-/var/tmp}
out=${OUT:-$PWD/host_check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
log() { echo "[host_check $(date +%T)] $*" | tee -a "$out/log.txt" >&2; }
if [[ -x $b/lib/ld-linux-x86-64.so.2 ]]; then
  run_bin() { "$b/lib/ld-linux-x86-64.so.2" --library-path "$b/lib" "$@"; }
  swv="$b/lib/ld-linux-x86-64.so.2 --library-path $b/lib $b/swapvisor"
else
  run_bin() { "$@"; }
  swv="$b/swapvisor"
fi
work=$(mktemp -d "$dir/swv-host-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
{ uname -a; nproc; grep MemTotal /proc/meminfo; df -h "$dir" | tail -n1; } >"$out/host.txt" 2>&1
log "host: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1048576)}' /proc/meminfo) GiB; files on $dir"

log "userfaultfd round trip"
run_bin "$b/bench/uffd_roundtrip" 20000 >"$out/uffd.txt" 2>&1 || log "uffd_roundtrip failed"
log "swap_bench"
run_bin "$b/bench/swap_bench" --dir "$dir" --mib 512 --limit-mib 64 >"$out/swap_bench.txt" 2>&1 || log "swap_bench failed"

kvm_why=""
[[ -r /dev/kvm && -w /dev/kvm ]] || kvm_why="no usable /dev/kvm on this host"
guest_mib=$(( quick ? 128 : 256 ))
result_of() { grep -a '^RESULT ' "$1" | tail -n1 | cut -c8-; }
for guest in memtouch kvs; do
  for r in 1 2 4; do
    f=$out/${guest}_${r}x.txt
    if [[ -n $kvm_why ]]; then echo "skipped: $kvm_why" >"$f"; continue; fi
    if [[ $guest == kvs ]]; then args="mib=$guest_mib ops=$(( quick ? 20000 : 200000 ))"; else args="mib=$guest_mib passes=2 mode=rand"; fi
    lim=(); [[ $r != 1 ]] && lim=(--resident-limit "$((guest_mib / r))M" --swap "$work/g.swap,size=$((guest_mib * 2))M")
    log "$guest ${r}x"
    # shellcheck disable=SC2086
    $swv run --kernel "$b/examples/$guest.elf" --memory "$((guest_mib + 32))M" "${lim[@]}" \
      --stats-json "$out/${guest}_${r}x.stats.json" --cmdline "$args" >"$f" 2>&1 || log "$guest ${r}x exited $?"
    rm -f "$work/g.swap"
  done
done
log "scale"
SWV="$swv" ELF="$b/examples/memtouch.elf" DIR="$dir" SCALE_NS="$([[ $quick == 1 ]] && echo "1 4" || echo "1 4 16 64")" \
  bash "$here/scale_bench.sh" >"$out/scale.txt" 2>"$out/scale.err" || log "scale_bench failed"

log "snapshot (guest)"
SWV="$swv" ELF="$b/examples/memtouch.elf" DIR="$dir" SNAP_MIBS="$([[ $quick == 1 ]] && echo "256" || echo "256 1024")" \
  bash "$here/snapshot_guest.sh" >"$out/snapshot_guest.txt" 2>"$out/snapshot_guest.err" || log "snapshot_guest failed"

python3 - "$out" "$kvm_why" <<'PY' | tee "$out/summary.json"
import json, re, sys
out, kvm_why = sys.argv[1], sys.argv[2]
def text(name):
    try: return open(f"{out}/{name}").read()
    except OSError: return ""
def num(name, label):
    m = re.search(re.escape(label) + r"\s+([-0-9.]+)", text(name))
    return float(m.group(1)) if m else None
def result(name):
    lines = [l[7:] for l in text(name).splitlines() if l.startswith("RESULT ")]
    return json.loads(lines[-1]) if lines else None
res = {"host_kvm": not kvm_why, "null_reason": kvm_why or None}
m = re.search(r"roundtrip_p50_us\s+([0-9.]+)", text("uffd.txt"))
res["uffd_roundtrip_p50_us"] = float(m.group(1)) if m else None
for key, label in [("swapin_fault_p50_us", "B1 fault p50 (us)"), ("swapin_fault_p99_us", "B1 fault p99 (us)"),
                   ("read_in_p50_us", "B2 read_in p50 (us)"),
                   ("fault_overhead_p50_us", "B1 - B2 at p50: fault path overhead (us)")]:
    res[key] = num("swap_bench.txt", label)
for guest, metric in [("memtouch", "mib_per_s"), ("kvs", "ops_per_s")]:
    base = result(f"{guest}_1x.txt")
    for r in (2, 4):
        got = result(f"{guest}_{r}x.txt")
        res[f"{guest}_{metric}_{r}x"] = got.get(metric) if got else None
        res[f"{guest}_errors_{r}x"] = got.get("errors") if got else None
        res[f"{guest}_{r}x_vs_unlimited"] = (got[metric] / base[metric]) if got and base and base.get(metric) else None
        if guest == "kvs":
            res[f"kvs_p99_us_{r}x"] = got.get("p99_us") if got else None
scale = [l[5:] for l in text("scale.txt").splitlines() if l.startswith("JSON ")]
if scale: res.update(json.loads(scale[-1]))
snap = [l[5:] for l in text("snapshot_guest.txt").splitlines() if l.startswith("JSON ")]
if snap: res.update(json.loads(snap[-1]))
print("JSON " + json.dumps(res, separators=(",", ":")))
PY
log "all output in $out"
