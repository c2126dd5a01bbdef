#!/usr/bin/env bash
# signals_test.sh <build dir>: issue #17 item 3 on the real binary. `swapvisor serve`
# (no VM, so no /dev/kvm needed) must survive what kills a daemon by default:
#  1. its stderr is a pipe whose reader has gone (a restarted log collector): the next
#     log lines hit EPIPE, and SIGPIPE must not end the process;
#  2. SIGHUP (reload), SIGUSR1 (status line), SIGUSR2 (ignored): each logged, none fatal;
#  3. SIGQUIT is a clean shutdown like SIGTERM: exit 0, socket and lock removed.
# Exit 77 (skipped) only when io_uring is unavailable (serve cannot open its rings);
# a serve that does not start for any other reason (no /dev/kvm) is a failure.
set -u
build=${1:?usage: signals_test.sh <build dir>}
bin=$build/swapvisor
[[ -x $bin ]] || { echo "FAIL: $bin is missing (build the swapvisor target)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/swv-signals.XXXXXX)
serve_pid=
cleanup() {
  [[ -n $serve_pid ]] && kill -KILL "$serve_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [[ -f $work/err.log ]] && tail -20 "$work/err.log" >&2; exit 1; }
sock=$work/control.sock
wait_socket() {
  for _ in $(seq 1 100); do [[ -S $sock ]] && return 0; kill -0 "$serve_pid" 2>/dev/null || return 1; sleep 0.1; done
  return 1
}
alive() {  # alive <what>: the daemon still runs and answers on its socket
  kill -0 "$serve_pid" 2>/dev/null || fail "serve died after $1"
  timeout 10 "$bin" ctl --socket "$sock" status >/dev/null 2>&1 || fail "serve does not answer after $1"
}

# Preflight with stderr in a file: a serve that cannot start at all is a failure
# (it must start without VMs and without /dev/kvm), unless io_uring is missing.
"$bin" serve --control "$sock" 2>"$work/err.log" >/dev/null &
serve_pid=$!
if ! wait_socket; then
  wait "$serve_pid"; rc=$?; serve_pid=
  grep -qi "io_uring" "$work/err.log" && { echo "SKIPPED: io_uring unavailable: $(cat "$work/err.log")" >&2; exit 77; }
  fail "serve exited $rc before its socket was up (it must start without VMs or /dev/kvm)"
fi
kill -TERM "$serve_pid"; wait "$serve_pid"; serve_pid=

# --- 1. stderr to a pipe whose reader exits ------------------------------------------
mkfifo "$work/err.fifo"
head -c 1 <"$work/err.fifo" >/dev/null &   # reads one byte, then closes the pipe
reader=$!
"$bin" serve --control "$sock" --log-level debug 2>"$work/err.fifo" >/dev/null &
serve_pid=$!
wait_socket || fail "serve (stderr on a pipe) did not open its socket"
wait "$reader"
# Each of these logs at least one line into the closed pipe.
for sig in USR1 HUP USR2 USR1; do
  kill -"$sig" "$serve_pid"
  sleep 0.3
  alive "SIG$sig with stderr closed"
done
timeout 10 "$bin" ctl --socket "$sock" set-budget 1G >/dev/null 2>&1 || fail "set-budget with stderr closed"
alive "a logged request with stderr closed"
kill -TERM "$serve_pid"
for _ in $(seq 1 100); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
wait "$serve_pid"; rc=$?; serve_pid=
[[ $rc -eq 0 ]] || fail "SIGTERM with stderr closed: exit $rc, not 0 (141 = killed by SIGPIPE)"
[[ ! -e $sock ]] || fail "the socket was left behind"
echo "ok: a closed stderr does not end the daemon"

# --- 2. each signal is logged and survived; 3. SIGQUIT shuts down cleanly ---------
"$bin" serve --control "$sock" 2>"$work/err.log" >/dev/null &
serve_pid=$!
wait_socket || fail "serve (2) did not open its socket"
for sig in HUP USR1 USR2; do
  kill -"$sig" "$serve_pid"
  for _ in $(seq 1 50); do grep -q "SIG$sig from pid" "$work/err.log" && break; sleep 0.1; done
  grep -q "SIG$sig from pid" "$work/err.log" || fail "SIG$sig was not logged"
  alive "SIG$sig"
done
grep -q "SIGHUP: serve was started without --config: nothing to reload" "$work/err.log" || fail "SIGHUP without --config not explained"
grep -q "status: resident" "$work/err.log" || fail "SIGUSR1 did not log a status line"
grep -q "SIGUSR2 from pid .* ignored" "$work/err.log" || fail "SIGUSR2 not logged as ignored"
kill -QUIT "$serve_pid"
for _ in $(seq 1 100); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
wait "$serve_pid"; rc=$?; serve_pid=
[[ $rc -eq 0 ]] || fail "SIGQUIT: exit $rc, not 0 (131 = killed by the signal)"
grep -q "SIGQUIT from pid .* stopping every VM" "$work/err.log" || fail "SIGQUIT not logged as a shutdown"
[[ ! -e $sock && ! -e $sock.lock ]] || fail "socket or lock left behind after SIGQUIT"
echo "ok: SIGHUP, SIGUSR1, SIGUSR2 logged and survived; SIGQUIT exits 0"
