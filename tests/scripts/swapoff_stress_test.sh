#!/usr/bin/env bash
# swapoff_stress_test.sh <build dir>: repeated swapon/swapoff cycles over three swap
# files while two VMs in one swapvisor process write and verify every page of
# their memory (memtouch, random order) under per-VM limits and a host budget.
# Passes when both guests report 0 errors, every swapoff succeeds, and at rest the
# pool's allocated VSlots equal both the used slots of the devices and the slots
# the VMs' stage-2 tables refer to (no leak).
# Exit 77 (skipped) only when /dev/kvm is absent. SWV_TEST_SMALL=1 (the nested pass,
# tests/README.md#nested) runs the same cycles with 24 MiB working sets at the 16 MiB
# floor of a resident limit, so that it ends in minutes where every fault is emulated.
set -u
build=${1:?usage: swapoff_stress_test.sh <build dir>}
bin=$build/swapvisor
guest=$build/examples/memtouch.elf
if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
  echo "SKIPPED: /dev/kvm is absent or not accessible; the swapoff stress test did not run" >&2
  exit 77
fi
for f in "$bin" "$guest"; do [[ -f $f ]] || { echo "FAIL: $f is missing" >&2; exit 1; }; done

work=$(mktemp -d /var/tmp/swv-stress.XXXXXX)
vm_pid=
cleanup() { [[ -n $vm_pid ]] && kill "$vm_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
show_err() { echo "== swapvisor stderr (tail)"; tail -20 "$work/err.log"; }
sock=$work/control.sock
ctl() { "$bin" ctl --socket "$sock" "$@"; }

# The size of the run: host budget, each VM's limit, guest MiB and passes, swap files.
if [[ ${SWV_TEST_SMALL:-0} == 1 ]]; then
  budget=40M limit=16M mib=24 passes=2 size=64M
else
  budget=112M limit=64M mib=192 passes=3 size=512M
fi
"$bin" run --host-budget $budget \
  --vm "name=a,kernel=$guest,memory=256M,resident-limit=$limit,cmdline=mib=$mib passes=$passes mode=rand seed=7" \
  --vm "name=b,kernel=$guest,memory=256M,resident-limit=$limit,cmdline=mib=$mib passes=$passes mode=rand seed=9" \
  --swap "$work/a.swap,size=$size,priority=5" --swap "$work/b.swap,size=$size,priority=5" \
  --swap "$work/c.swap,size=$size,priority=1" \
  --control "$sock" --stats-json "$work/stats.json" >"$work/out.log" 2>"$work/err.log" &
vm_pid=$!
for _ in $(seq 1 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || { cat "$work/err.log"; echo "FAIL: no control socket" >&2; exit 1; }

cycles=0 failures=0
guests_done() { [[ $(grep -c 'RESULT {' "$work/out.log") -ge 2 ]]; }  # lines carry a [vm] prefix
# ctl_step <what>: run one ctl command; returns 1 when the run is over (both guests
# reported, so the server closing is expected), counts any other failure.
ctl_step() {
  local out rc
  out=$(ctl "$@" 2>&1); rc=$?
  [[ $rc -eq 0 ]] && { echo "cycle $cycles: $out"; return 0; }
  if guests_done || ! kill -0 "$vm_pid" 2>/dev/null; then return 1; fi
  echo "FAIL: ctl $*: $out" >&2; failures=$((failures + 1)); return 0
}
while kill -0 "$vm_pid" 2>/dev/null && ! guests_done; do
  for dev in a b c; do
    prio=5; [[ $dev == c ]] && prio=1
    ctl_step swapoff "$work/$dev.swap" || break 2
    ctl_step swapon "$work/$dev.swap" --priority "$prio" --size "$size" || break 2
  done
  cycles=$((cycles + 1))
done
vm_pid_done=$vm_pid; vm_pid=
wait "$vm_pid_done"; rc=$?

echo "== guest output"; grep -E 'RESULT|bad pages' "$work/out.log" | tail -6
oks=$(grep -c 'RESULT {"guest":"memtouch","ok":true.*"errors":0' "$work/out.log")
[[ $rc -eq 0 ]] || { echo "FAIL: swapvisor exited $rc" >&2; cat "$work/err.log" >&2; failures=$((failures + 1)); }
[[ $oks -eq 2 ]] || { echo "FAIL: $oks of 2 guests reported ok with 0 errors" >&2; failures=$((failures + 1)); }
[[ $cycles -ge 2 ]] || { echo "FAIL: only $cycles swapoff cycles ran" >&2; failures=$((failures + 1)); }
python3 - "$work/stats.json" <<'PY' || failures=$((failures + 1))
import json, sys
s = json.load(open(sys.argv[1]))
alloc = s["host"]["allocated_vslots"]
used = sum(d["used_slots"] for d in s["swap"])
refd = sum(v["referenced_vslots"] for v in s["vms"])
out = sum(v["swap_out_pages"] for v in s["vms"])
print(f"at rest: allocated_vslots={alloc} used_slots={used} referenced_vslots={refd} swap_out_pages={out}")
ok = alloc == used == refd and out > 0 and all(v["lost_pages"] == 0 for v in s["vms"])
sys.exit(0 if ok else 1)
PY
echo "swapoff cycles: $cycles, failures: $failures"
[[ $failures -eq 0 ]] || show_err
[[ $failures -eq 0 ]] || exit 1
echo "swapoff_stress_test: passed"
