#!/usr/bin/env bash
# daemon_basics_test.sh <build dir>: issue #17 items 8 (--version, typos) and 9 (lock
# beside the control socket, serve --config, SIGHUP reload) on the real binary, as an
# operator meets them. No /dev/kvm needed; exit 77 only without io_uring.
set -u
build=${1:?usage: daemon_basics_test.sh <build dir>}
bin=$build/swapvisor
[[ -x $bin ]] || { echo "FAIL: $bin is missing (build the swapvisor target)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/swv-basics.XXXXXX)
serve_pid=
cleanup() {
  [[ -n $serve_pid ]] && kill -KILL "$serve_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -20 "$work/err.log" >&2 2>/dev/null; exit 1; }

# --- --version and typos --------------------------------------------------------
out=$("$bin" --version) || fail "--version exited $?"
[[ $out =~ ^swapvisor\ [0-9]+\.[0-9]+\.[0-9]+\ \((git\ .+|not\ a\ git\ tree)\)$ ]] || fail "--version said: $out"
out=$("$bin" sreve --control x 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"unknown command 'sreve' (did you mean 'serve'?)"* ]] || fail "typo 'sreve' ($rc): $out"
out=$("$bin" --verison 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"unknown option '--verison' (did you mean '--version'?)"* ]] || fail "typo '--verison' ($rc): $out"
[[ $out != *"A subcommand is required"* ]] || fail "a typo still says 'A subcommand is required'"
echo "ok: --version ($("$bin" --version)), typos named"

# --- serve --config, and its errors ----------------------------------------------
sock=$work/control.sock
cat >"$work/serve.toml" <<CONF
# an operator's config
control = "$sock"
host-budget = "1G"
log-level = "info"
CONF
printf 'control = "%s"\ncontrl = "x"\n' "$sock" >"$work/typo.toml"
out=$("$bin" serve --config "$work/typo.toml" 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"unknown key 'contrl'"* && $out == *typo.toml* ]] || fail "config typo ($rc): $out"
"$bin" serve --config "$work/serve.toml" 2>"$work/err.log" >/dev/null &
serve_pid=$!
for _ in $(seq 1 100); do [[ -S $sock ]] && break; kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
if [[ ! -S $sock ]]; then
  grep -qi uring "$work/err.log" && { echo "SKIPPED: io_uring unavailable" >&2; exit 77; }
  fail "serve --config did not start"
fi
budget() { timeout 10 "$bin" ctl --socket "$sock" --json status | tail -n 1 |
  python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print(r["host"]["budget_bytes"])'; }
[[ $(budget) -eq $((1 << 30)) ]] || fail "host-budget from the config file not applied: $(budget)"
[[ -f $sock.lock && $(cat "$sock.lock") -eq $serve_pid ]] || fail "no lock file naming pid $serve_pid beside the socket"

# --- the lock: a second daemon is refused, even with the socket file deleted ------------
out=$(timeout 10 "$bin" serve --control "$sock" 2>&1); rc=$?
[[ $rc -eq 1 && $out == *"another swapvisor holds this control socket"*"pid $serve_pid"* ]] || fail "second daemon ($rc): $out"
rm -f "$sock"
out=$(timeout 10 "$bin" serve --control "$sock" 2>&1); rc=$?
[[ $rc -eq 1 && $out == *"pid $serve_pid"* ]] || fail "second daemon after the socket was deleted ($rc): $out"
[[ ! -e $sock ]] || fail "the refused daemon created a socket"
kill -0 "$serve_pid" || fail "the first daemon died"
echo "ok: a second daemon is refused by the lock, with or without the socket file"
kill -TERM "$serve_pid"; wait "$serve_pid"; serve_pid=
[[ ! -e $sock.lock ]] || fail "the lock file was left behind"

# --- SIGHUP: the file is re-read; live changes applied, others logged ----------------
"$bin" serve --config "$work/serve.toml" 2>"$work/err.log" >/dev/null &
serve_pid=$!
for _ in $(seq 1 100); do [[ -S $sock ]] && break; sleep 0.1; done
[[ -S $sock ]] || fail "serve (reload) did not start"
cat >"$work/serve.toml" <<CONF
control = "$sock"
host-budget = "2G"
log-level = "debug"
metrics = "$work/metrics.sock"
CONF
kill -HUP "$serve_pid"
for _ in $(seq 1 50); do grep -q "SIGHUP: reloaded" "$work/err.log" && break; sleep 0.1; done
grep -q "SIGHUP: reloaded $work/serve.toml: 2 change(s) applied, 1 not applied" "$work/err.log" || fail "reload summary"
grep -q "SIGHUP: metrics: none -> $work/metrics.sock needs a restart" "$work/err.log" || fail "metrics change not named"
[[ $(budget) -eq $((2 << 30)) ]] || fail "host-budget not reloaded: $(budget)"
echo 'host-budget = "lots"' >>"$work/serve.toml"
kill -HUP "$serve_pid"
for _ in $(seq 1 50); do grep -q "not reloaded" "$work/err.log" && break; sleep 0.1; done
grep -q "SIGHUP: $work/serve.toml not reloaded, the running configuration stays" "$work/err.log" || fail "a bad reload"
[[ $(budget) -eq $((2 << 30)) ]] || fail "a bad reload changed the budget"
kill -0 "$serve_pid" || fail "a bad reload ended the daemon"
echo "ok: SIGHUP reloads --config (log-level, host-budget live; the rest named), a bad file changes nothing"
