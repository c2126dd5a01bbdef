#!/usr/bin/env bash
# notify_test.sh <build dir>: issue #17 item 9, readiness. A NOTIFY_SOCKET listener
# (python3, AF_UNIX datagram, as systemd's) proves `swapvisor serve` sends READY=1 only
# once its control socket exists (it checks the socket at the moment the datagram
# arrives), RELOADING=1 / READY=1 around a SIGHUP reload and STOPPING=1 on SIGTERM; then
# `systemd-analyze verify` of the Type=notify unit written for this build (skipped
# with a note if systemd-analyze is absent). No /dev/kvm needed; 77 only without io_uring.
set -u
build=${1:?usage: notify_test.sh <build dir>}
bin=$build/swapvisor
[[ -x $bin ]] || { echo "FAIL: $bin is missing (build the swapvisor target)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "FAIL: python3 is missing (scripts/install-deps.sh)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/swv-notify.XXXXXX)
serve_pid=
listener_pid=
cleanup() {
  [[ -n $serve_pid ]] && kill -KILL "$serve_pid" 2>/dev/null
  [[ -n $listener_pid ]] && kill "$listener_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -20 "$work/err.log" >&2 2>/dev/null; cat "$work/notify.log" >&2 2>/dev/null; exit 1; }
sock=$work/control.sock
notify=$work/notify.sock

# The listener: one line per datagram, "<control socket existed: yes|no> <message>".
python3 - "$notify" "$sock" >"$work/notify.log" <<'PY' &
import os, socket, stat, sys
path, control = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
open(path + ".ready", "w").close()
s.settimeout(60)
while True:
    try:
        msg = s.recv(4096).decode()
    except socket.timeout:
        break
    try:
        is_sock = stat.S_ISSOCK(os.stat(control).st_mode)
    except FileNotFoundError:
        is_sock = False
    print(("yes " if is_sock else "no ") + msg.replace("\n", " "), flush=True)
    if "STOPPING=1" in msg:
        break
PY
listener_pid=$!
for _ in $(seq 1 50); do [[ -e $notify.ready ]] && break; sleep 0.1; done
[[ -e $notify.ready ]] || fail "the listener did not start"

cat >"$work/serve.toml" <<CONF
control = "$sock"
log-level = "info"
CONF
NOTIFY_SOCKET=$notify "$bin" serve --config "$work/serve.toml" 2>"$work/err.log" >/dev/null &
serve_pid=$!
for _ in $(seq 1 100); do grep -q READY=1 "$work/notify.log" && break; kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
if ! grep -q READY=1 "$work/notify.log"; then
  kill -0 "$serve_pid" 2>/dev/null || { wait "$serve_pid"; [[ $? -eq 1 ]] && grep -qi uring "$work/err.log" && { echo "SKIPPED: io_uring" >&2; exit 77; }; }
  fail "no READY=1 from serve"
fi
first=$(grep -m1 READY=1 "$work/notify.log")
[[ $first == yes* ]] || fail "READY=1 came before the control socket existed: $first"
[[ $first == *"STATUS=serving on $sock"* ]] || fail "READY=1 without a STATUS: $first"
timeout 10 "$bin" ctl --socket "$sock" status >/dev/null || fail "ctl status right after READY=1"

# A reload: RELOADING=1, then READY=1 again.
sed -i 's/log-level = "info"/log-level = "debug"/' "$work/serve.toml"
kill -HUP "$serve_pid"
for _ in $(seq 1 50); do [[ $(grep -c READY=1 "$work/notify.log") -ge 2 ]] && break; sleep 0.1; done
grep -q RELOADING=1 "$work/notify.log" || fail "no RELOADING=1 on SIGHUP"
[[ $(grep -c READY=1 "$work/notify.log") -ge 2 ]] || fail "no READY=1 after the reload"
grep -q "SIGHUP: log-level info -> debug" "$work/err.log" || fail "the reload did not apply log-level"

kill -TERM "$serve_pid"
wait "$serve_pid"; rc=$?; serve_pid=
[[ $rc -eq 0 ]] || fail "serve exited $rc on SIGTERM"
wait "$listener_pid"; listener_pid=
grep -q "STOPPING=1" "$work/notify.log" || fail "no STOPPING=1 on SIGTERM"
echo "ok: READY=1 after the socket exists, RELOADING=1/READY=1 on SIGHUP, STOPPING=1 on SIGTERM"
cat "$work/notify.log"

unit=$build/packaging/swapvisor.service.build
[[ -f $unit ]] || fail "$unit was not generated (packaging/CMakeLists.txt)"
grep -q '^Type=notify' "$unit" || fail "the unit is not Type=notify"
if command -v systemd-analyze >/dev/null; then
  # verify wants the unit's own name; the build copy names the build tree's binary.
  cp "$unit" "$work/swapvisor.service"
  out=$(systemd-analyze verify --man=no "$work/swapvisor.service" 2>&1) || fail "systemd-analyze verify: $out"
  [[ -z $out ]] || fail "systemd-analyze verify is not clean: $out"
  echo "ok: systemd-analyze verify is clean"
else
  echo "note: systemd-analyze is absent; the unit was not verified"
fi
