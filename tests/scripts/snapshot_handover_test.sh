#!/usr/bin/env bash
# snapshot_handover_test.sh <build dir>: issue #21 item 6 on the real stack, two
# daemons on one machine sharing one NBD export (a real nbdkit on TCP):
#   - daemon A swaps on the export (and on a local file below it); a memtouch VM
#     (seeded, it verifies every byte) runs over its resident limit, so about half of
#     what it touched is on the export, and is snapshotted with `ctl snapshot --stop`;
#     a second VM keeps running on A meanwhile;
#   - a plain swapon of the export by daemon B is refused (A's lease);
#   - A: `ctl swapoff --handover` of the export: the running VM's pages move to the
#     local file, the snapshot's slots stay on the export, the snapshot is unloaded
#     on A (a restore or snapshot-delete of it there is refused, naming the handover)
#     and the lease is released;
#   - B, running since step 2, reserves the snapshot's slots live (`ctl snapshot-load`),
#     then attaches the export (`ctl swapon`, no takeover: it was handed over): the
#     slots are adopted, and a VM restored from the snapshot on B continues (no pass 1
#     again) and verifies every byte; the VM left on A verifies every byte too;
#   - B restarted with the export and its --snapshots root finds the snapshot again
#     (the other way to reserve them); snapshot-delete on B frees every slot.
# Every wait is bounded. Exit 77 (skipped) without /dev/kvm or nbdkit.
# Sizes are small on purpose: the test also runs nested (QEMU TCG, ~100x slower).
set -u
build=${1:?usage: snapshot_handover_test.sh <build dir>}
bin=$build/swapvisor
memtouch=$build/examples/memtouch.elf
if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
  echo "SKIPPED: /dev/kvm is absent or not accessible; the snapshot handover test did not run" >&2
  exit 77
fi
if ! command -v nbdkit >/dev/null; then
  echo "SKIPPED: *** nbdkit is NOT installed (scripts/install-deps.sh); the handover test did not run ***" >&2
  exit 77
fi
for f in "$bin" "$memtouch"; do
  [[ -f $f ]] || { echo "FAIL: $f is missing (build swapvisor, memtouch)" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/swv-handover.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
snaps=$work/snaps
mkdir -p "$snaps"
slow=${SWV_TEST_SLOW:-1}  # a factor for every wait (nested runs)
fail() {  # also any guest's exception report (examples/README.md#exceptions)
  echo "FAIL: $*" >&2; for f in "$work"/*.log; do echo "== $f" >&2; tail -15 "$f" >&2; done
  grep -a 'rt: guest exception' "$work"/*.serial >&2 2>/dev/null; exit 1
}
ctl() { local d=$1; shift; timeout $((300 * slow)) "$bin" ctl --socket "$work/$d.sock" --timeout $((240 * slow)) "$@"; }
py() {  # py <daemon> <expr over r, the last JSON line of a ctl --json command> <ctl args...>
  local d=$1 expr=$2; shift 2
  ctl "$d" --json "$@" | tail -n 1 | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print($expr)"
}
vm_field() { py "$1" "[v for v in r['vms'] if v['name']=='$2'][0].get('$3','') if any(v['name']=='$2' for v in r['vms']) else ''" vm-list; }
used_slots() { py "$1" "sum(d['used_slots'] for d in r['swap'])" stats; }
start_serve() {  # start_serve <name> <args...>: its pid in <name>_pid; root=DIR: its --snapshots
  local name=$1; shift
  "$bin" serve --control "$work/$name.sock" --snapshots "${root:-$snaps}" --age-scan off --log-level info "$@" \
    >>"$work/$name.out" 2>>"$work/$name.log" &
  local pid=$!
  pids+=("$pid")
  printf -v "${name}_pid" '%s' "$pid"
  for _ in $(seq 1 $((100 * slow))); do
    [[ -S $work/$name.sock ]] && ctl "$name" status >/dev/null 2>&1 && return
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  fail "serve $name did not open its socket"
}
wait_ended() {  # wait_ended <daemon> <vm> <seconds>
  local deadline=$((SECONDS + $3 * slow))
  while [[ $(vm_field "$1" "$2" state) != ended ]]; do
    ((SECONDS < deadline)) || fail "$2 did not end within $(($3 * slow)) s: $(tail -c 300 "$work/$2.serial")"
    sleep 0.5
  done
}
check_result() {  # check_result <daemon> <vm>: its serial log says ok with 0 errors
  local result
  result=$(grep -a 'RESULT ' "$work/$2.serial" | tail -n 1)
  echo "$2: $result"
  [[ $result == *'"ok":true'* && $result == *'"errors":0'* ]] || fail "$2 did not verify its memory: $result"
  [[ $(vm_field "$1" "$2" exit_code) == 0 ]] || fail "$2 exit code $(vm_field "$1" "$2" exit_code)"
}

port=$((30000 + ($$ % 20000)))
nbdkit --foreground --exit-with-parent -i 127.0.0.1 -p "$port" memory size=256M 2>"$work/nbdkit.log" &
pids+=("$!")
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
uri=nbd://127.0.0.1:$port/

# 1. Daemon A: the export first, a local file below it.
start_serve a --swap "$uri,format=yes,priority=10" --swap "$work/local.swap,size=128M,priority=5"
ctl a vm-create alpha --kernel "$memtouch" --memory 64M --resident-limit 16M \
  --serial-log "$work/alpha.serial" --cmdline "mib=32 passes=4 seed=7" >/dev/null || fail "create alpha"
ctl a vm-create omega --kernel "$memtouch" --memory 48M --resident-limit 16M \
  --serial-log "$work/omega.serial" --cmdline "mib=24 passes=4 seed=11" >/dev/null || fail "create omega"
deadline=$((SECONDS + 600 * slow))
until grep -aq 'pass 2/' "$work/alpha.serial" 2>/dev/null; do
  ((SECONDS < deadline)) || fail "alpha did not reach pass 2: $(tail -c 300 "$work/alpha.serial")"
  [[ $(vm_field a alpha state) == ended ]] && fail "alpha ended before pass 2: $(tail -c 300 "$work/alpha.serial")"
  sleep 0.2
done
out=$(ctl a --json snapshot alpha "$snaps/s1" --stop) || fail "snapshot: $out"
swapped=$(echo "$out" | python3 -c "import json,sys; print(json.loads(sys.stdin.read())['pages']['swapped'])")
((swapped > 1000)) || fail "the snapshot refers to only $swapped swapped pages (expected about half of 8192)"
wait_ended a alpha 120
echo "ok: alpha snapshotted with $swapped swapped pages on the export"

# 2. B cannot take the export while A holds it. B's --snapshots root is its own, as on
#    another host: it has never seen s1.
mkdir -p "$work/b-snaps"
root=$work/b-snaps start_serve b
out=$(ctl b swapon "$uri" 2>&1) && fail "B attached the export A holds"
[[ $out == *device_busy* ]] || fail "B's refusal does not say device_busy: $out"

# 3. A hands the export over; omega (still running, or ended) keeps its pages.
out=$(ctl a --json swapoff --handover "$uri") || fail "swapoff --handover: $out"
echo "handover: $(echo "$out" | tail -n 1)"
[[ $out == *'"handed_over":true'* ]] || fail "the reply does not say handed over: $out"
[[ $(py a "len(r['swap'])" stats) == 1 ]] || fail "the export is still in A's pool"
[[ $(py a "r['snapshots']['loaded']" status) == 0 ]] || fail "A still has the snapshot loaded"
out=$(ctl a vm-create bad --restore "$snaps/s1" 2>&1) && fail "A restored a snapshot it handed over"
[[ $out == *'handed over'* ]] || fail "A's refusal does not name the handover: $out"
out=$(ctl a snapshot-delete "$snaps/s1" 2>&1) && fail "A deleted a snapshot it handed over"
[[ $out == *'handed over'* ]] || fail "A's snapshot-delete refusal does not name the handover: $out"
out=$(ctl a snapshot-load "$snaps/s1" 2>&1) && fail "A loaded a snapshot it handed over"
[[ $out == *bad_snapshot* ]] || fail "A's snapshot-load refusal is not bad_snapshot: $out"
[[ -f $snaps/s1/manifest.json ]] || fail "the handed-over snapshot lost its manifest"

# 4. B, still running: the snapshot's slots reserved before the swapon
#    (snapshot-load), then the export attached without takeover adopts them.
out=$(ctl b --json snapshot-load "$snaps/s1") || fail "snapshot-load on B: $out"
[[ $out == *'waiting for its swap devices'* ]] || fail "B's snapshot-load does not wait for the export: $out"
out=$(ctl b snapshot-load "$snaps/s1" 2>&1) && fail "B reserved the snapshot's slots twice"
[[ $out == *bad_snapshot* ]] || fail "B's second snapshot-load refusal is not bad_snapshot: $out"
out=$(ctl b swapon "$uri" 2>&1) || fail "B could not attach the handed-over export: $out"
(($(used_slots b) == swapped)) || fail "B adopted $(used_slots b) slots, the snapshot holds $swapped"
ctl b vm-create beta --restore "$snaps/s1" --serial-log "$work/beta.serial" >/dev/null || fail "restore beta on B"
wait_ended b beta 900
check_result b beta
grep -aq 'pass 1/' "$work/beta.serial" && fail "the restored guest started over"
wait_ended a omega 900
check_result a omega

# 5. The other way to reserve them: B restarted with the export and its --snapshots
#    root loads the snapshot at start (beta's own slots went with the old process).
kill "${b_pid}"; wait "${b_pid}" 2>/dev/null
rm -f "$work/b.sock"
start_serve b --swap "$uri"
[[ $(py b "r['snapshots']['loaded']" status) == 1 ]] || fail "B did not load the snapshot with the export at start"
(($(used_slots b) == swapped)) || fail "B reserved $(used_slots b) slots at start, the snapshot holds $swapped"

# 6. B deletes it: nothing held at rest.
ctl b snapshot-delete "$snaps/s1" >/dev/null || fail "snapshot-delete on B"
(($(used_slots b) == 0)) || fail "$(used_slots b) slots still used on B after snapshot-delete"
for d in a b; do
  pid_var=${d}_pid
  kill "${!pid_var}"; wait "${!pid_var}"; rc=$?
  ((rc == 0)) || fail "serve $d exited with $rc"
done
echo "PASS: snapshot on daemon A, export handed over live (A's other VM kept its pages), loaded and attached on the running daemon B, restored there and verified, found again after B's restart, deleted with every slot freed"
