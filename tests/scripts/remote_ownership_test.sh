#!/usr/bin/env bash
# remote_ownership_test.sh <build dir>: issue #17 item 2 on the real binary, as an
# operator meets it: one NBD export (a real nbdkit on TCP) and two `serve` daemons.
#   - the export under a second name (localhost for 127.0.0.1) is refused: one device;
#   - a second daemon cannot attach it while the first holds its lease, neither at
#     start (--swap, exit 1 naming the holder) nor by `ctl swapon` (device_busy);
#   - `ctl swapon --takeover` takes it; the first daemon's probe then says "taken over";
#   - status shows the remote health; with the server killed it turns `down`.
# No /dev/kvm needed. Exit 77 only without nbdkit or io_uring.
set -u
build=${1:?usage: remote_ownership_test.sh <build dir>}
bin=$build/swapvisor
[[ -x $bin ]] || { echo "FAIL: $bin is missing (build the swapvisor target)" >&2; exit 1; }
if ! command -v nbdkit >/dev/null; then
  echo "SKIPPED: *** nbdkit is NOT installed (scripts/install-deps.sh); the ownership test did not run ***" >&2
  exit 77
fi
work=$(mktemp -d /var/tmp/swv-owner.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log; do echo "== $f" >&2; tail -8 "$f" >&2; done; exit 1; }

port=$((30000 + ($$ % 20000)))
nbdkit --foreground --exit-with-parent -i 127.0.0.1 -p "$port" memory size=64M 2>"$work/nbdkit.log" &
nbd_pid=$!; pids+=("$nbd_pid")
for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
uri=nbd://127.0.0.1:$port/
alias=nbd://localhost:$port/

start_serve() {  # name, extra args...
  local name=$1; shift
  "$bin" serve --control "$work/$name.sock" --no-seccomp "$@" 2>"$work/$name.log" >/dev/null &
  local pid=$!
  for _ in $(seq 1 100); do [[ -S $work/$name.sock ]] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if [[ ! -S $work/$name.sock ]]; then
    grep -qi uring "$work/$name.log" && { echo "SKIPPED: io_uring unavailable" >&2; exit 77; }
    return 1
  fi
  echo "$pid"
}
ctl() { local name=$1; shift; timeout 30 "$bin" ctl --socket "$work/$name.sock" "$@"; }
remote() {  # name -> "health reason" of the first device
  ctl "$1" --json status | tail -n 1 | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
d = r["swap"][0] if r["swap"] else {}
rem = d.get("remote", {})
print(rem.get("health", "none"), rem.get("reason", ""))'
}

a=$(start_serve a --swap "$uri,format=yes") || fail "the first daemon did not start"
pids+=("$a")
[[ $(remote a) == up* ]] || fail "a fresh remote device is not up: $(remote a)"

out=$(ctl a swapon "$alias" 2>&1); rc=$?
[[ $rc -ne 0 && $out == *"the same device as $uri"*"swap header uuid"* ]] ||
  fail "the export under a second name was accepted or not named ($rc): $out"
echo "ok: one export under two names is one device"

out=$(timeout 20 "$bin" serve --control "$work/b0.sock" --no-seccomp --swap "$uri" 2>&1); rc=$?
[[ $rc -eq 1 && $out == *"held by pool"*"pid $a"*"lease until"* ]] ||
  fail "a second daemon started on a leased export ($rc): $out"
[[ ! -e $work/b0.sock ]] || fail "the refused daemon left its socket"
echo "ok: a second daemon is refused at start, naming the holder"

b=$(start_serve b) || fail "the second daemon (no swap) did not start"
pids+=("$b")
out=$(ctl b swapon "$alias" 2>&1); rc=$?
[[ $rc -ne 0 && $out == *device_busy* && $out == *"takeover"* ]] || fail "ctl swapon of a leased export ($rc): $out"
out=$(ctl b swapon --takeover "$alias" 2>&1) || fail "ctl swapon --takeover: $out"
grep -q "taking it over from pool" "$work/b.log" || fail "the takeover was not logged"
for _ in $(seq 1 300); do [[ $(remote a) == down*"taken over"* ]] && break; sleep 0.1; done
[[ $(remote a) == down*"taken over"* ]] || fail "the first daemon did not notice the takeover: $(remote a)"
echo "ok: --takeover claims it; the old holder's probe says: $(remote a)"

kill -KILL "$nbd_pid"
for _ in $(seq 1 300); do [[ $(remote b) == down* ]] && break; sleep 0.1; done
[[ $(remote b) == down* ]] || fail "a dead server still shows: $(remote b)"
ctl b status | grep -q "remote: down" || fail "ctl status does not show the remote health"
echo "ok: the server killed, the device shows: $(remote b)"
