#!/usr/bin/env bash
# balloon_vmm_test.sh <build dir>: the balloon guest on swapvisor itself
# (`swapvisor run --balloon`), with and without overcommit: the guest's reported
# memory must read back as zeros, its kept memory intact, and --stats-json must
# show the device's counters agreeing with the guest (reported_pages, the
# refused bogus ranges, guestmem's discarded_pages, the statistics buffers the
# guest sent and their MEMTOT). Then, driven through `run --control` with
# `ctl set-balloon`: free page hinting of a changing half every round while the
# host inflates and deflates the balloon, under a resident limit with swap; and
# deflate-on-OOM (the guest takes pages back below the host's target).
#
# Exit 77 (ctest: skipped) only when /dev/kvm is absent, or when this swapvisor
# says --balloon is not wired (an old build); both print why.
# Needs the targets `swapvisor` and `balloon` built.
set -u

build=${1:?usage: balloon_vmm_test.sh <build dir>}
swapvisor=$build/swapvisor
balloon=$build/examples/balloon.elf

if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
  echo "SKIPPED: /dev/kvm is absent or not accessible; the balloon VMM check did not run" >&2
  exit 77
fi
for f in "$swapvisor" "$balloon"; do
  if [[ ! -f $f ]]; then
    echo "FAIL: $f is missing (build the targets swapvisor and balloon)" >&2
    exit 1
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# json_get <file> <python expression over v>: v is the VM's object, either the
# document itself (one VM) or its first entry of "vms" (the multi-VM layout).
json_get() {
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); v=j['vms'][0] if 'vms' in j else j; print($2)" "$1"
}

# check_stats <name> <stats json> <RESULT line> <guest MiB>: the statistics the
# guest sent (its RESULT's stats_sent) all reached the device (stats_updates), none
# was refused, and the last MEMTOT is the guest's RAM (its memory map: the VM's
# memory less the legacy hole below 1 MiB, so within 1 MiB of it). A guest run
# with stats=0 sends none and the device shows no guest figures.
check_stats() {
  local name=$1 stats=$2 result=$3 mib=$4 sent
  sent=$(sed -n 's/.*"stats_sent":\([0-9]*\).*/\1/p' <<<"$result")
  [[ -f $stats && -n $sent ]] || { echo "FAIL [$name]: no stats file or no stats_sent in: $result" >&2; return 1; }
  python3 - "$stats" "$sent" "$mib" "$name" <<'PY'
import json, sys
path, sent, mib, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
j = json.load(open(path))
v = j['vms'][0] if 'vms' in j else j
b = v['balloon']
errors = []
if b['stats_updates'] != sent:
    errors.append(f"stats_updates {b['stats_updates']} != the guest's stats_sent {sent}")
if b['stats_refused'] != 0:
    errors.append(f"stats_refused {b['stats_refused']}")
if sent > 0:
    total = b.get('guest_total_bytes')
    if total is None or not (mib << 20) - (1 << 20) <= total <= (mib << 20):
        errors.append(f"guest_total_bytes {total} is not the guest's {mib} MiB")
    for k in ('guest_free_bytes', 'guest_available_bytes'):
        if not 0 < b.get(k, 0) < (total or 0):
            errors.append(f"{k} {b.get(k)} not in (0, guest_total_bytes)")
    if 'guest_stats_age_ms' not in b:
        errors.append("no guest_stats_age_ms")
elif 'guest_total_bytes' in b:
    errors.append("guest figures without any statistics sent")
if errors:
    sys.exit(f"FAIL [{name}]: statistics: " + "; ".join(errors))
PY
}

# run <name> <guest cmdline> <want reported_pages> <want refused_ranges> [swapvisor args...]
run() {
  local name=$1 cmdline=$2 want_reported=$3 want_refused=$4
  shift 4
  local memory=256
  [[ " $* " =~ " --memory "([0-9]+)M" " ]] && memory=${BASH_REMATCH[1]}
  local out=$work/$name.out err=$work/$name.err stats=$work/$name.json status
  timeout 600 "$swapvisor" run --kernel "$balloon" --cmdline "$cmdline" --balloon --stats-json "$stats" "$@" \
    </dev/null >"$out" 2>"$err"
  status=$?
  if grep -q 'not wired' "$err"; then
    echo "SKIPPED: this swapvisor does not wire --balloon yet: $(grep 'not wired' "$err")" >&2
    exit 77
  fi
  local result ok=1
  result=$(grep -a '^RESULT ' "$out" | tail -n 1)
  if [[ $status -ne 0 ]]; then echo "FAIL [$name]: exit status $status, want 0" >&2; ok=0; fi
  if ! [[ $result =~ \"ok\":true.*\"reported_pages\":$want_reported,\"errors\":0\} ]]; then
    echo "FAIL [$name]: RESULT line: $result" >&2
    ok=0
  fi
  check_stats "$name" "$stats" "$result" "$memory" || ok=0
  if [[ -f $stats ]]; then
    local dev_reported refused discarded
    dev_reported=$(json_get "$stats" "v['balloon']['reported_pages']" 2>/dev/null)
    refused=$(json_get "$stats" "v['balloon']['refused_ranges']" 2>/dev/null)
    discarded=$(json_get "$stats" "v['discarded_pages']" 2>/dev/null)
    if [[ $dev_reported != "$want_reported" || $refused != "$want_refused" || $discarded != "$want_reported" ]]; then
      echo "FAIL [$name]: stats: device reported_pages=$dev_reported refused_ranges=$refused" \
        "discarded_pages=$discarded, want $want_reported / $want_refused / $want_reported" >&2
      ok=0
    fi
  else
    echo "FAIL [$name]: no --stats-json file" >&2
    ok=0
  fi
  if [[ $ok -eq 1 ]]; then
    echo "PASS [$name]: $result"
  else
    echo "----- stdout -----" >&2; cat "$out" >&2
    echo "----- stderr -----" >&2; cat "$err" >&2
    failures=$((failures + 1))
  fi
}

# 32 MiB, 3 rounds: 3 x 16 MiB reported = 12288 pages; 3 bogus ranges per round refused.
run plain "mib=32 rounds=3 bogus=3" 12288 9 --memory 256M
# Overcommitted: the reported half is partly in swap when it is reported.
run overcommit "mib=64 rounds=2" 16384 0 --memory 256M --resident-limit 24M \
  --swap "$work/balloon.swap,size=256M"

# The driver declines STATS_VQ: reporting_vq is then queue 2 (Linux numbering), and
# the device has no guest figures.
run no-stats "mib=16 rounds=2 stats=0" 4096 0 --memory 128M

# wait_line <file> <regex> <seconds>: until the guest's serial output matches.
wait_line() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -aEq "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "FAIL: no /$2/ in $1 after $3 s" >&2
  return 1
}
ctl() { "$swapvisor" ctl --socket "$work/ctl.sock" "$@"; }

# controlled <name> <guest cmdline> <host script> [swapvisor args...]: runs the
# guest with a control socket in the background, runs the host script (a shell
# function) against it, then waits for the guest. Leaves $out, $err, $stats, $result.
controlled() {
  local name=$1 cmdline=$2 host=$3
  shift 3
  out=$work/$name.out err=$work/$name.err stats=$work/$name.json
  rm -f "$work/ctl.sock"
  timeout 600 "$swapvisor" run --kernel "$balloon" --cmdline "$cmdline" --balloon --control "$work/ctl.sock" \
    --stats-json "$stats" "$@" </dev/null >"$out" 2>"$err" &
  local pid=$! host_ok=1
  "$host" || host_ok=0
  wait "$pid"
  local status=$?
  result=$(grep -a '^RESULT ' "$out" | tail -n 1)
  if [[ $status -ne 0 || $host_ok -ne 1 || ! $result =~ \"ok\":true.*\"errors\":0\} ]]; then
    echo "FAIL [$name]: exit $status, host steps ok=$host_ok, RESULT: $result" >&2
    echo "----- stdout -----" >&2; cat "$out" >&2
    echo "----- stderr -----" >&2; cat "$err" >&2
    return 1
  fi
}

# Free page hinting under host inflate: 64 MiB, a different half freed and reported
# every round in 256 KiB blocks, held to 48 MiB resident with swap, while the host
# moves the balloon target 32M -> 16M -> 48M -> 0 (cycle=1: the guest ends once the
# balloon went up and came back to 0). The guest's statistics are polled every 0.2 s
# and read through `status` while it runs.
hint_host() {
  wait_line "$out" 'round 1/' 120 || return 1
  ctl set-balloon vm0 32M >/dev/null || { echo "FAIL: set-balloon 32M" >&2; return 1; }
  wait_line "$out" 'round 3/' 120 || return 1
  ctl set-balloon vm0 16M >/dev/null || return 1
  local s
  s=$(ctl --json status) || { echo "FAIL: status" >&2; return 1; }
  python3 -c '
import json, sys
r = json.loads(sys.stdin.read().splitlines()[-1])
b = r["vms"][0]["balloon"]
assert b["stats_updates"] >= 1 and b["guest_total_bytes"] > 0, b
assert b["guest_stats_age_ms"] < 10000, b
print("status while running: guest_total_bytes", b["guest_total_bytes"], "guest_free_bytes", b["guest_free_bytes"],
      "age", b["guest_stats_age_ms"], "ms")' <<<"$s" || { echo "FAIL: guest statistics not in status: $s" >&2; return 1; }
  wait_line "$out" 'round 5/' 120 || return 1
  ctl set-balloon vm0 48M >/dev/null || return 1
  wait_line "$out" 'round 7/' 120 || return 1
  ctl set-balloon vm0 0 >/dev/null || return 1
}
if controlled hint "mib=64 rounds=10 chunk_kib=256 pool_mib=64 cycle=1" hint_host --memory 256M \
  --resident-limit 48M --swap "$work/hint.swap,size=256M" --balloon-stats-interval 0.2; then
  if ! check_stats hint "$stats" "$result" 256 || ! python3 - "$stats" <<'PY'; then
import json, sys
v = json.load(open(sys.argv[1]))
v = v['vms'][0] if 'vms' in v else v
b = v['balloon']
want = {'reported_pages': 10 * 8192, 'refused_ranges': 0, 'discard_errors': 0, 'balloon_pages': 0,
        'oom_deflated_pages': 0, 'unrequested_deflated_pages': 0, 'target_pages': 0, 'actual_pages': 0}
bad = {k: (b[k], w) for k, w in want.items() if b[k] != w}
if b['inflated_pages'] < 8192 or b['inflated_pages'] != b['deflated_pages']:
    bad['inflated/deflated'] = (b['inflated_pages'], b['deflated_pages'])
if v['discarded_pages'] < b['reported_pages']:  # re-inflated pages may already be zero
    bad['discarded_pages'] = (v['discarded_pages'], b['reported_pages'])
if b['stats_requests'] < 2:
    bad['stats_requests'] = b['stats_requests']
if bad:
    sys.exit(f"FAIL [hint]: counters (got, want): {bad}")
print(f"hint: inflated {b['inflated_pages']} deflated {b['deflated_pages']} reported {b['reported_pages']} "
      f"stats {b['stats_updates']} buffers, swap_out_pages {v.get('swap_out_pages')}")
PY
    failures=$((failures + 1))
  else
    echo "PASS [hint]: $result"
  fi
else
  failures=$((failures + 1))
fi

# Deflate-on-OOM: the host inflates to 48 MiB of the guest's 64 MiB pool, then the
# guest's workload needs the top 32 MiB: it takes 4096 pages back unasked.
oom_host() {
  wait_line "$out" 'oom: waiting' 120 || return 1
  ctl set-balloon vm0 48M >/dev/null || { echo "FAIL: set-balloon 48M" >&2; return 1; }
}
if controlled oom "mib=8 rounds=1 pool_mib=64 oom_mib=32" oom_host --memory 256M; then
  if ! [[ $result =~ \"oom_deflated_pages\":4096, ]] || ! python3 - "$stats" <<'PY'; then
import json, sys
v = json.load(open(sys.argv[1]))
v = v['vms'][0] if 'vms' in v else v
b = v['balloon']
want = {'inflated_pages': 12288, 'deflated_pages': 4096, 'oom_deflated_pages': 4096,
        'unrequested_deflated_pages': 0, 'balloon_pages': 8192, 'target_pages': 12288, 'actual_pages': 8192}
bad = {k: (b[k], w) for k, w in want.items() if b[k] != w}
if bad:
    sys.exit(f"FAIL [oom]: counters (got, want): {bad}")
PY
    echo "FAIL [oom]: RESULT: $result" >&2
    failures=$((failures + 1))
  else
    echo "PASS [oom]: $result"
  fi
else
  failures=$((failures + 1))
fi

if [[ $failures -ne 0 ]]; then
  echo "balloon_vmm_test: $failures check(s) failed" >&2
  exit 1
fi
echo "balloon_vmm_test: all checks passed"
