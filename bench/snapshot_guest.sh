#!/usr/bin/env bash
# bench/snapshot_guest.sh: issue #21's snapshot figures with KVM guests through the
# VMM (`swapvisor serve` + `ctl`), against memory size. For each M in $SNAP_MIBS
# (default "256 1024", cut to what the host's memory and disk fit), one daemon with
# one swap file and the memtouch guest (mib=M, seeded: it verifies every byte):
#   full   a VM with no resident limit, snapshotted SNAP_REPS times in a row (the
#          last with --stop; the time is the median) once its
#          pass 1 has written all M MiB: every page resident, so the memory image
#          holds all of them: the full copy other VMMs write, by the same code;
#   swapped  the same guest with a resident limit of M/4, snapshotted at the same
#          point once >= 70 % of M is swapped: resident pages into the image, swapped
#          pages by reference;
#   restores of `swapped`, each timed from the vm-create request: lazy (--no-fill
#          --no-prefetch; this one records the working set when it ends), with
#          recorded-order prefetch (--no-fill), lazy again. For each: the VMM's own
#          restore.to_first_insn_us (`ctl stats`, docs/SNAPSHOT.md#first-insn), the
#          wall time of the `ctl vm-create --restore` command, and the time until
#          the guest prints its next memtouch line (it finishes the pass it was
#          snapshotted in: a pass over all M MiB, its resident limit lifted right
#          after the restore, so that every swapped page comes in once: lazily, one
#          fault at a time, or ahead of the guest in the recorded order). Not the
#          issue's 10 % working set (memtouch touches everything): that is
#   ws     the same guest with hot=M/10 (after its first pass it sweeps only its
#          first M/10 MiB, as a service does its working set), snapshotted at the
#          same swapped fraction and restored the same three ways; each restore
#          times the rest of the hot pass it was snapshotted in plus the next one
#          (a hot pass alone is ~35 ms at 1 GiB: where the snapshot caught it
#          would decide the figure).
# Keys (per M, lists indexed like snap_guest_mib):
#   snap_guest_bytes_ratio_vs_full, snap_guest_ms_ratio_vs_full   swapped / full
#   snap_guest_full_ms_vs_fio, snap_guest_swapped_ms_vs_fio   each snapshot's time over
#                              fio writing the same bytes into a new file in DIR
#                              (1 MiB O_DIRECT writes, depth 6, end_fsync; median of
#                              SNAP_REPS), right after the snapshots: the disk's peer
#   snap_guest_fio_ms_ratio    fio's swapped-size time / its full-size time: what the
#                              disk alone gives the ms ratio (null without fio)
#   restore_first_insn_ms      median over the 3 restores of to_first_insn_us / 1000
#   restore_ctl_ms             median wall time of `ctl vm-create --restore`
#   restore_guest_pass_lazy_ms, restore_guest_pass_prefetch_ms, restore_guest_prefetch_speedup
#                              (the faster lazy pass / the prefetch pass)
#   snap_guest_swapped_fraction   swapped pages / M at the snapshot
#   restore_ws_pass_lazy_ms, restore_ws_pass_prefetch_ms, restore_ws_prefetch_speedup
#                              the same for the working-set (hot=M/10) guest
#   snap_guest_errors          VMs whose memtouch did not verify (must be 0)
# Prints a table on stderr and, as the last line, `JSON {...}`; a figure that could
# not be measured is null and `snap_guest_null_reason` says why (no /dev/kvm, ...).
# Never a figure from nested KVM: it is ~1000x slower (SWV_TEST_SLOW scales the
# waits when checking the script there).
#
# Portable (as bench/scale_bench.sh): SWV (how to run swapvisor, default: on PATH),
# ELF (memtouch, default ../examples/memtouch.elf beside this script), DIR (swap
# file and snapshots, default /var/tmp), SNAP_MIBS, SNAP_REPS (snapshots per kind whose
# median time counts, default 3).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
read -r -a sv <<<"${SWV:-swapvisor}"
elf=${ELF:-$here/../examples/memtouch.elf}
dir=${DIR:-/var/tmp}
mibs=${SNAP_MIBS:-"256 1024"}
reps=${SNAP_REPS:-3}
slow=${SWV_TEST_SLOW:-1}
log() { echo "[snapshot_guest $(date +%T)] $*" >&2; }

keys=(snap_guest_mib snap_guest_bytes_ratio_vs_full snap_guest_ms_ratio_vs_full snap_guest_fio_ms_ratio
      snap_guest_full_ms_vs_fio snap_guest_swapped_ms_vs_fio restore_first_insn_ms restore_ctl_ms
      restore_guest_pass_lazy_ms restore_guest_pass_prefetch_ms restore_guest_prefetch_speedup
      snap_guest_swapped_fraction snap_guest_errors restore_ws_pass_lazy_ms restore_ws_pass_prefetch_ms
      restore_ws_prefetch_speedup)
null_json() {  # every key null, with the reason
  local k out="JSON {"
  for k in "${keys[@]}"; do out+="\"$k\":null,"; done
  echo "$out\"snap_guest_null_reason\":\"$1\"}"
}
[[ -r /dev/kvm && -w /dev/kvm ]] || { log "no usable /dev/kvm"; null_json "no usable /dev/kvm on this host: guest runs cannot start"; exit 0; }
command -v python3 >/dev/null || { null_json "python3 not found (needed to read the replies)"; exit 0; }
[[ -f $elf ]] || { null_json "memtouch guest not found: $elf"; exit 0; }

# What fits: a VM holds up to M resident (the full one), the swap file M + 64 MiB,
# two snapshots up to M + M/4 on disk; keep a quarter of memory and disk free.
avail_kib=$(awk '/MemAvailable/ {print $2}' /proc/meminfo)
disk_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
fit=()
for m in $mibs; do
  if (( m < 64 )); then
    log "$m MiB: skipped (its resident limit, M/4, would be under swapvisor's 16 MiB minimum)"
    continue
  fi
  if (( (m + 64) * 1024 > avail_kib * 3 / 4 || (3 * m + 128) * 1024 > disk_kib * 3 / 4 )); then
    log "$m MiB does not fit (memory ${avail_kib} KiB, disk ${disk_kib} KiB free): skipped"
    continue
  fi
  fit+=("$m")
done
[[ ${#fit[@]} -gt 0 ]] || { null_json "no size of $mibs fits this host's free memory or disk"; exit 0; }

. "$here/serve_lib.sh"
serve_lib_init swv-snapguest
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
wait_line() {  # wait_line <serial log> <count>: until the log has <count> memtouch pass lines
  local deadline=$((SECONDS + 1200 * slow))
  while (( $(grep -ac 'memtouch: pass ' "$1" 2>/dev/null) < $2 )); do
    ((SECONDS < deadline)) || return 1
    kill -0 "$serve_pid" 2>/dev/null || return 1
    sleep 0.05
  done
}
wait_ended() {
  local deadline=$((SECONDS + 300 * slow))
  while [[ $(state_of "$1") != ended ]]; do ((SECONDS < deadline)) || return 1; sleep 0.1; done
}
stop_remove() { ctl vm-stop "$1" --timeout-ms 0 >/dev/null 2>&1; wait_ended "$1"; ctl vm-remove "$1" >/dev/null 2>&1; }

# restores TAG SNAPDIR LINES: lazy (records the working set), prefetch, lazy again,
# each timed until the guest's LINES-th pass line; the figures go to
# R[$m,TAG<mode>_*]. Returns 1 (with why) when one fails.
restores() {
  local tag=$1 snap=$2 lines=$3 i=0 mode name t0 us flags
  for mode in lazy prefetch lazy2; do
    i=$((i + 1))
    flags=(--no-fill)
    [[ $mode != prefetch ]] && flags+=(--no-prefetch)
    name=${tag}r$i
    t0=$(now_ms)
    ctl vm-create "$name" --restore "$snap" "${flags[@]}" --serial-log "$work/$name.serial" >/dev/null ||
      { why="restore $mode failed: $(tail -n 2 "$work/serve_$m.err")"; return 1; }
    R[$m,${tag}${mode}_ctl]=$(( $(now_ms) - t0 ))
    # The restored VM runs without the M/4 limit (set at once, the same for all three
    # restores): under it, a pass over all M MiB would swap out what a prefetch
    # brought in before the guest got there.
    ctl set-limit "$name" 0 >/dev/null || log "set-limit $name 0 failed"
    for _ in $(seq 1 $((300 * slow))); do
      us=$(jget "next(v.get('restore', {}).get('to_first_insn_us', '') for v in r['vms'] if v['name'] == '$name')" stats 2>/dev/null)
      [[ -n $us ]] && break
      sleep 0.02
    done
    R[$m,${tag}${mode}_first_us]=${us:-}
    # The restored guest's serial log starts empty: its first pass line ends the
    # pass it was snapshotted in.
    wait_line "$work/$name.serial" "$lines" || { why="restore $mode: the guest did not finish its pass"; return 1; }
    R[$m,${tag}${mode}_pass]=$(( $(now_ms) - t0 ))
    grep -a 'bad pages' "$work/$name.serial" | grep -avq ', 0 bad pages' && errors=$((errors + 1))
    stop_remove "$name"
    log "$m MiB: restore ${tag}$mode: first insn ${R[$m,${tag}${mode}_first_us]:-?} us, vm-create ${R[$m,${tag}${mode}_ctl]} ms, pass ${R[$m,${tag}${mode}_pass]} ms"
  done
}

declare -A R
errors=0 why="" fio_why=""
for m in "${fit[@]}"; do
  log "$m MiB: serve with one $((m + 64)) MiB swap file"
  # Serial logs are appended to: the previous size's would satisfy wait_line at once.
  rm -f "$sock" "$work"/*.serial
  "${sv[@]}" serve --control "$sock" --swap "$work/a.swap,size=$((m + 64))M" --age-scan off --log-level info \
    >"$work/serve_$m.out" 2>"$work/serve_$m.err" &
  serve_pid=$!
  for _ in $(seq 1 $((100 * slow))); do [[ -S $sock ]] && ctl status >/dev/null 2>&1 && break; sleep 0.1; done
  ctl status >/dev/null 2>&1 || { why="serve did not start: $(tail -n 2 "$work/serve_$m.err")"; break; }
  args="mib=$m passes=1000000 seed=3"
  for kind in full swapped; do
    limit=()
    [[ $kind == swapped ]] && limit=(--resident-limit $((m / 4))M)
    ctl vm-create "$kind" --kernel "$elf" --memory $((m + 32))M "${limit[@]}" --serial-log "$work/$kind.serial" \
      --cmdline "$args" >"$work/create.txt" 2>&1 || { why="vm-create $kind failed: $(tail -n 1 "$work/create.txt")"; break 2; }
    wait_line "$work/$kind.serial" 1 || { why="$kind: pass 1 did not end"; break 2; }
    if [[ $kind == swapped ]]; then
      for _ in $(seq 1 $((600 * slow))); do
        (( $(vm_stat swapped swapped_bytes) >= m * 7 / 10 * 1048576 )) && break
        sleep 0.1
      done
    fi
    # SNAP_REPS snapshots in a row (the VM resumes after all but the last), the
    # median of their times: one snapshot's time follows the disk's speed of the
    # moment (2-3x apart here), and the ratio takes two of them.
    times=()
    for rep in $(seq 1 "$reps"); do
      stop=()
      dest=$work/snap_${kind}_$rep
      (( rep == reps )) && { stop=(--stop); dest=$work/snap_$kind; }
      reply=$(ctl --json snapshot "$kind" "$dest" "${stop[@]}" | tail -n 1) || { why="snapshot of $kind failed: $reply"; break 3; }
      times+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['elapsed_ms'])" "$reply")")
      (( rep < reps )) && { ctl snapshot-delete "$dest" >/dev/null || log "snapshot-delete $dest failed"; }
    done
    R[$m,${kind}_bytes]=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['bytes_written'])" "$reply")
    R[$m,${kind}_ms]=$(python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "${times[@]}")
    R[$m,${kind}_swapped]=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['pages']['swapped'])" "$reply")
    wait_ended "$kind" && ctl vm-remove "$kind" >/dev/null
    log "$m MiB: snapshot of $kind: ${R[$m,${kind}_bytes]} bytes, ${R[$m,${kind}_ms]} ms (median of ${times[*]}), ${R[$m,${kind}_swapped]} pages swapped"
    # Where each one's time went, as the daemon logged it (pause, memory walk, fsyncs, ...).
    grep -a ": snapshot $work/snap_${kind}.* ms: pause" "$work/serve_$m.err" | sed 's/.*swapped by reference, //' | tail -n "$reps" |
      while read -r line; do log "  $kind: $line"; done
  done
  ctl snapshot-delete "$work/snap_full" >/dev/null || log "snapshot-delete of the full copy failed"
  # The disk's peer: fio writing each snapshot's bytes the way the image writer does.
  if command -v fio >/dev/null; then
    for kind in full swapped; do
      b=${R[$m,${kind}_bytes]}
      fmib=$(( (b + 1048575) / 1048576 ))
      times=()
      for rep in $(seq 1 "$reps"); do
        rm -f "$work/fio.dat"
        t=$(fio --name=snap --filename="$work/fio.dat" --size=${fmib}M --rw=write --bs=1M --iodepth=6 --direct=1 \
              --ioengine=io_uring --end_fsync=1 --output-format=json 2>/dev/null |
            python3 -c "import json,sys; print(json.load(sys.stdin)['jobs'][0]['job_runtime'])") || t=""
        [[ -n $t ]] && times+=("$t")
      done
      rm -f "$work/fio.dat"
      [[ ${#times[@]} -gt 0 ]] &&
        R[$m,fio_${kind}_ms]=$(python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "${times[@]}")
      log "$m MiB: fio writing the $kind snapshot's ${fmib} MiB: ${R[$m,fio_${kind}_ms]:-?} ms (median of ${times[*]})"
    done
  else
    fio_why="fio not installed: no disk peer for the snapshot times"
  fi
  # Restores of the swapped snapshot: lazy (records the working set), prefetch, lazy.
  restores "" "$work/snap_swapped" 1 || break
  ctl snapshot-delete "$work/snap_swapped" >/dev/null || log "snapshot-delete failed"
  # The working set: the same guest with hot=M/10 (after pass 1 it sweeps only its
  # first M/10 MiB), snapshotted at the same swapped fraction; each restore times
  # the rest of the hot pass it was snapshotted in and the next one (so every hot
  # page once, wherever in its ~35 ms pass the snapshot caught it).
  ctl vm-create ws --kernel "$elf" --memory $((m + 32))M --resident-limit $((m / 4))M --serial-log "$work/ws.serial" \
    --cmdline "mib=$m passes=1000000 seed=5 hot=$((m / 10))" >"$work/create.txt" 2>&1 ||
    { why="vm-create ws failed: $(tail -n 1 "$work/create.txt")"; break; }
  wait_line "$work/ws.serial" 2 || { why="ws: pass 2 did not end"; break; }
  for _ in $(seq 1 $((600 * slow))); do
    (( $(vm_stat ws swapped_bytes) >= m * 7 / 10 * 1048576 )) && break
    sleep 0.1
  done
  reply=$(ctl --json snapshot ws "$work/snap_ws" --stop | tail -n 1) || { why="snapshot of ws failed: $reply"; break; }
  wait_ended ws && ctl vm-remove ws >/dev/null
  restores ws_ "$work/snap_ws" 2 || break
  ctl snapshot-delete "$work/snap_ws" >/dev/null || log "snapshot-delete of ws failed"
  kill "$serve_pid"; wait "$serve_pid" 2>/dev/null; serve_pid=""
  rm -f "$work/a.swap"
done

# The table and the JSON line (python: medians, ratios, nulls with the reason).
args=()
for k in "${!R[@]}"; do args+=("$k" "${R[$k]}"); done
python3 - "$errors" "$why" "${fit[*]}" "$fio_why" "${args[@]}" <<'PY'
import json, statistics, sys
errors, why, fit, fio_why = int(sys.argv[1]), sys.argv[2], [int(x) for x in sys.argv[3].split()], sys.argv[4]
R = dict(zip(sys.argv[5::2], sys.argv[6::2]))
def g(m, k):
    v = R.get(f"{m},{k}", "")
    try:
        return float(v)
    except ValueError:
        return None
def ratio(a, b, nd=4):
    return round(a / b, nd) if a is not None and b else None
J = {k: [] for k in ["snap_guest_mib", "snap_guest_bytes_ratio_vs_full", "snap_guest_ms_ratio_vs_full",
                     "snap_guest_fio_ms_ratio", "snap_guest_full_ms_vs_fio", "snap_guest_swapped_ms_vs_fio", "restore_first_insn_ms",
                     "restore_ctl_ms", "restore_guest_pass_lazy_ms", "restore_guest_pass_prefetch_ms",
                     "restore_guest_prefetch_speedup", "snap_guest_swapped_fraction",
                     "restore_ws_pass_lazy_ms", "restore_ws_pass_prefetch_ms", "restore_ws_prefetch_speedup"]}
for m in fit:
    if g(m, "swapped_bytes") is None:
        continue  # this size did not run (why says where it stopped)
    J["snap_guest_mib"].append(m)
    J["snap_guest_bytes_ratio_vs_full"].append(ratio(g(m, "swapped_bytes"), g(m, "full_bytes")))
    J["snap_guest_ms_ratio_vs_full"].append(ratio(g(m, "swapped_ms"), g(m, "full_ms")))
    J["snap_guest_fio_ms_ratio"].append(ratio(g(m, "fio_swapped_ms"), g(m, "fio_full_ms")))
    J["snap_guest_full_ms_vs_fio"].append(ratio(g(m, "full_ms"), g(m, "fio_full_ms"), 3))
    J["snap_guest_swapped_ms_vs_fio"].append(ratio(g(m, "swapped_ms"), g(m, "fio_swapped_ms"), 3))
    firsts = [g(m, f"{x}_first_us") for x in ("lazy", "prefetch", "lazy2") if g(m, f"{x}_first_us") is not None]
    J["restore_first_insn_ms"].append(round(statistics.median(firsts) / 1000, 2) if firsts else None)
    ctls = [g(m, f"{x}_ctl") for x in ("lazy", "prefetch", "lazy2") if g(m, f"{x}_ctl") is not None]
    J["restore_ctl_ms"].append(statistics.median(ctls) if ctls else None)
    lazies = [g(m, x) for x in ("lazy_pass", "lazy2_pass") if g(m, x) is not None]
    J["restore_guest_pass_lazy_ms"].append(min(lazies) if lazies else None)
    J["restore_guest_pass_prefetch_ms"].append(g(m, "prefetch_pass"))
    J["restore_guest_prefetch_speedup"].append(ratio(min(lazies) if lazies else None, g(m, "prefetch_pass"), 2))
    ws_lazies = [g(m, x) for x in ("ws_lazy_pass", "ws_lazy2_pass") if g(m, x) is not None]
    J["restore_ws_pass_lazy_ms"].append(min(ws_lazies) if ws_lazies else None)
    J["restore_ws_pass_prefetch_ms"].append(g(m, "ws_prefetch_pass"))
    J["restore_ws_prefetch_speedup"].append(ratio(min(ws_lazies) if ws_lazies else None, g(m, "ws_prefetch_pass"), 2))
    sw = g(m, "swapped_swapped")
    J["snap_guest_swapped_fraction"].append(round(sw * 4096 / (m << 20), 3) if sw is not None else None)
J = {k: (v if v else None) for k, v in J.items()}
if fio_why:
    J["snap_guest_fio_null_reason"] = fio_why
J["snap_guest_errors"] = errors if J["snap_guest_mib"] else None
if why:
    J["snap_guest_null_reason"] = why
elif not J["snap_guest_mib"]:
    J["snap_guest_null_reason"] = "no size ran"
print(f"{'MiB':>5} {'bytes ratio':>11} {'ms ratio':>8} {'fio ratio':>9} {'full/fio':>8} {'swp/fio':>7} {'first insn ms':>13} {'ctl ms':>7} {'pass lazy':>9} {'prefetch':>9} {'speedup':>7}"
      f" {'ws lazy':>8} {'ws pref':>8} {'ws sp':>6}", file=sys.stderr)
for i, m in enumerate(J["snap_guest_mib"] or []):
    fio3 = [(J[k] or [None] * (i + 1))[i] for k in ("snap_guest_fio_ms_ratio", "snap_guest_full_ms_vs_fio", "snap_guest_swapped_ms_vs_fio")]
    print(f"{m:>5} {J['snap_guest_bytes_ratio_vs_full'][i]!s:>11} {J['snap_guest_ms_ratio_vs_full'][i]!s:>8} "
          f"{fio3[0]!s:>9} {fio3[1]!s:>8} {fio3[2]!s:>7} "
          f"{J['restore_first_insn_ms'][i]!s:>13} {J['restore_ctl_ms'][i]!s:>7} {J['restore_guest_pass_lazy_ms'][i]!s:>9} "
          f"{J['restore_guest_pass_prefetch_ms'][i]!s:>9} {J['restore_guest_prefetch_speedup'][i]!s:>7}"
          f" {J['restore_ws_pass_lazy_ms'][i]!s:>8} {J['restore_ws_pass_prefetch_ms'][i]!s:>8} {J['restore_ws_prefetch_speedup'][i]!s:>6}",
          file=sys.stderr)
print("JSON " + json.dumps(J, separators=(",", ":")))
PY
