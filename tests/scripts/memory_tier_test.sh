#!/usr/bin/env bash
# memory_tier_test.sh <build dir>: issue #19 on the real binary, as an operator meets
# it: `serve --swap mem:SIZE,codec=...,priority=N` ahead of a file, `ctl status` and
# `--json status` showing the tier's figures, `ctl swapon mem:...` / `ctl swapoff
# mem:...` through the control socket, and the --swap syntax errors. No /dev/kvm
# needed; exit 77 only without io_uring.
set -u
build=${1:?usage: memory_tier_test.sh <build dir>}
bin=$build/swapvisor
[[ -x $bin ]] || { echo "FAIL: $bin is missing (build the swapvisor target)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/swv-tier.XXXXXX)
serve_pid=
cleanup() {
  [[ -n $serve_pid ]] && kill -KILL "$serve_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -20 "$work/err.log" >&2 2>/dev/null; exit 1; }

# --- --swap syntax -------------------------------------------------------------------
out=$("$bin" serve --control "$work/x.sock" --swap mem:64M,size=1G 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"takes no size="* ]] || fail "mem: with size= ($rc): $out"
out=$("$bin" serve --control "$work/x.sock" --swap mem:64M,codec=gzip 2>&1); rc=$?
[[ $rc -eq 2 && $out == *"lz4 or zstd"* ]] || fail "mem: with codec=gzip ($rc): $out"
echo "ok: --swap mem: options are checked before anything starts"

# --- serve with a tier ahead of a file ---------------------------------------------------
sock=$work/control.sock
"$bin" serve --control "$sock" --swap mem:64M,codec=zstd,priority=10 --swap "$work/a.swap,size=64M" \
  --host-budget 1G 2>"$work/err.log" >/dev/null &
serve_pid=$!
for _ in $(seq 1 100); do [[ -S $sock ]] && break; kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
if [[ ! -S $sock ]]; then
  grep -qi uring "$work/err.log" && { echo "SKIPPED: io_uring unavailable" >&2; exit 77; }
  fail "serve did not start"
fi
ctl() { timeout 10 "$bin" ctl --socket "$sock" "$@"; }
out=$(ctl status) || fail "ctl status exited $?"
[[ $out == *"mem:64M"*"memory tier (zstd): 0 pages"* ]] || fail "ctl status does not show the tier: $out"
tier_json() { ctl --json status | tail -n 1 | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
t = [d for d in r["swap"] if d["path"] == sys.argv[1]]
print(json.dumps(t[0]) if t else "none")' "$1"; }
t=$(tier_json mem:64M)
[[ $t == *'"kind": "memory"'* && $t == *'"codec": "zstd"'* && $t == *'"capacity_bytes": 67108864'* &&
   $t == *'"priority": 10'* ]] || fail "--json status: $t"
echo "ok: serve --swap mem:64M,codec=zstd,priority=10 shows the tier in status and --json status"

# --- swapon / swapoff of a tier through the socket ------------------------------------------
out=$(ctl swapon mem:32M,codec=lz4,share=50 --priority 20) || fail "ctl swapon mem:32M: $out"
t=$(tier_json mem:32M)
[[ $t == *'"codec": "lz4"'* && $t == *'"priority": 20'* ]] || fail "swapon'd tier: $t"
out=$(ctl swapon mem:32M 2>&1); rc=$?
[[ $rc -ne 0 && $out == *"already in the swap pool"* ]] || fail "a second mem:32M ($rc): $out"
out=$(ctl swapoff mem:32M) || fail "ctl swapoff mem:32M: $out"
[[ $(tier_json mem:32M) == none ]] || fail "mem:32M is still in the pool after swapoff"
[[ $(tier_json mem:64M) != none ]] || fail "swapoff mem:32M took the other tier"
echo "ok: ctl swapon / swapoff mem:32M through the control socket"
kill -TERM "$serve_pid"
wait "$serve_pid" 2>/dev/null
serve_pid=
echo "memory_tier_test: ok"
