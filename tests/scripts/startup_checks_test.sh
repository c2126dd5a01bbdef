#!/usr/bin/env bash
# startup_checks_test.sh <build dir>: issue #17 items 7 and 8 (start-up) on the real
# binary. Start-up checks everything before it creates a file, and a failed start
# leaves no swap file behind:
#  - `run --swap X,size=64M` on a host without usable KVM fails with a hint (module,
#    permissions, nesting) and leaves no X (where /dev/kvm works, the same is shown
#    with a kernel that is not an ELF);
#  - `serve --metrics` with a bad address exits 2 before any socket or file exists;
#  - `serve` whose --metrics port is taken fails and removes the swap file it made;
#  - `serve` with a second --swap that cannot be made removes the first one;
#  - `serve` on a control socket a live daemon holds creates nothing;
#  - log lines carry timestamps.
# On main (b18aa34) the swap files stayed behind and the KVM error had no hint.
set -u
build=${1:?usage: startup_checks_test.sh <build dir>}
bin=$(realpath "$build/swapvisor")
hello=$build/examples/hello.elf
[[ -f $hello ]] || { echo "FAIL: $hello is missing (build the hello target)" >&2; exit 1; }
hello=$(realpath "$hello")
work=$(mktemp -d /var/tmp/swv-startup.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# 1. run: KVM is checked before the swap file is created.
if [[ -r /dev/kvm && -w /dev/kvm ]]; then
  printf 'not an elf' >"$work/bad.elf"
  "$bin" run --kernel "$work/bad.elf" --swap "$work/x.swap,size=64M" >/dev/null 2>"$work/run.log"; rc=$?
  [[ $rc -ne 0 ]] || fail "run with a bad kernel succeeded"
  [[ ! -e $work/x.swap ]] || fail "run left $work/x.swap behind after a failed start"
  echo "ok (KVM present): a failed run leaves no swap file; the KVM hint is not checked here"
else
  "$bin" run --kernel "$hello" --swap "$work/x.swap,size=64M" >/dev/null 2>"$work/run.log"; rc=$?
  [[ $rc -eq 1 ]] || fail "run without KVM exited $rc, not 1: $(cat "$work/run.log")"
  [[ ! -e $work/x.swap ]] || fail "run without KVM left $work/x.swap behind"
  grep -q "KVM: open /dev/kvm" "$work/run.log" || fail "no KVM error: $(cat "$work/run.log")"
  grep -q "modprobe" "$work/run.log" && grep -q "nested" "$work/run.log" ||
    fail "the KVM error says nothing of what to check: $(cat "$work/run.log")"
  echo "ok: run without KVM fails with a hint and leaves no swap file"
fi
grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+[+-][0-9:]+ swapvisor: error: ' "$work/run.log" ||
  fail "log lines carry no timestamp: $(head -1 "$work/run.log")"

# 2. serve: a bad --metrics address is a usage error, before anything exists.
for bad in 10.0.0.1:9477 127.0.0.1:99999 127.0.0.1:; do
  "$bin" serve --control "$work/c.sock" --metrics "$bad" --swap "$work/m.swap,size=64M" >/dev/null 2>"$work/m.log"; rc=$?
  [[ $rc -eq 2 ]] || fail "--metrics $bad exited $rc, not 2: $(cat "$work/m.log")"
  [[ ! -e $work/c.sock && ! -e $work/m.swap ]] || fail "--metrics $bad: a socket or swap file was created"
done
echo "ok: bad --metrics addresses exit 2 and create nothing"

# 3. serve: the metrics port is taken (found at bind, after the swap file was made):
# the swap file is removed again.
python3 - "$work/port" <<'PY' &
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
time.sleep(60)
PY
pids+=($!)
for _ in $(seq 1 50); do [[ -s $work/port ]] && break; sleep 0.1; done
port=$(cat "$work/port")
"$bin" serve --control "$work/c.sock" --metrics "127.0.0.1:$port" --swap "$work/p.swap,size=64M" >/dev/null 2>"$work/p.log"; rc=$?
[[ $rc -ne 0 ]] || fail "serve on a taken metrics port succeeded"
[[ ! -e $work/p.swap ]] || fail "serve left $work/p.swap behind after failing on the metrics port"
[[ ! -e $work/c.sock ]] || fail "serve left its control socket behind"
grep -q "Address already in use" "$work/p.log" || fail "metrics port taken: $(cat "$work/p.log")"
echo "ok: a taken metrics port: the swap file made is removed"

# 4. serve: the second --swap cannot be made; the first, already made, is removed.
"$bin" serve --control "$work/c.sock" --swap "$work/one.swap,size=64M" --swap "$work/no/such/dir/two.swap,size=64M" \
  >/dev/null 2>"$work/two.log"; rc=$?
[[ $rc -ne 0 ]] || fail "serve with an impossible --swap succeeded"
[[ ! -e $work/one.swap ]] || fail "serve left $work/one.swap behind"
echo "ok: a failed --swap removes the swap files made before it"

# 5. A live daemon holds the control socket: a second one creates nothing.
"$bin" serve --control "$work/live.sock" >/dev/null 2>"$work/live.log" &
pids+=($!)
for _ in $(seq 1 100); do [[ -S $work/live.sock ]] && break; sleep 0.1; done
[[ -S $work/live.sock ]] || fail "the first serve did not start: $(cat "$work/live.log")"
"$bin" serve --control "$work/live.sock" --swap "$work/second.swap,size=64M" >/dev/null 2>"$work/second.log"; rc=$?
[[ $rc -ne 0 ]] || fail "a second serve on a live socket succeeded"
[[ ! -e $work/second.swap ]] || fail "the second serve created $work/second.swap"
grep -qE "another swapvisor holds this control socket|in use by a running process" "$work/second.log" ||
  fail "second serve: $(cat "$work/second.log")"
"$bin" ctl --socket "$work/live.sock" status >/dev/null || fail "the first serve no longer answers"
echo "ok: a second daemon on a live socket creates nothing"
echo "PASS: start-up checks"
