# bench/serve_lib.sh: sourced (not run) by the benches that drive one `swapvisor serve`
# through `ctl` (snapshot_guest.sh, snapshot_fraction.sh, snapshot_phases.sh).
# Needs before sourcing: sv (the swapvisor command, an array), dir (where the work
# directory goes), optionally slow (a factor on the ctl timeouts, default 1).
# serve_lib_init PREFIX makes $work (removed at exit, with the daemon) and $sock, and
# sets serve_pid="" (serve_lib_start, or the caller, fills it); then ctl, jget,
# vm_stat and state_of talk to that daemon.
serve_lib_init() {
  work=$(mktemp -d "$dir/$1.XXXXXX")
  sock=$work/control.sock
  serve_pid=""
  trap serve_lib_cleanup EXIT
}
# serve_lib_start MIB: `serve` on $sock with one MIB + 64 MiB swap file in $work, no
# age scan, its log in $work/serve.{out,err}; returns 1 if it does not answer in 10 s.
serve_lib_start() {
  "${sv[@]}" serve --control "$sock" --swap "$work/a.swap,size=$(($1 + 64))M" --age-scan off --log-level info \
    >"$work/serve.out" 2>"$work/serve.err" &
  serve_pid=$!
  for _ in $(seq 1 100); do [[ -S $sock ]] && ctl status >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
serve_lib_cleanup() {
  [[ -n $serve_pid ]] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -rf "$work"
}
ctl() { timeout $((600 * ${slow:-1})) "${sv[@]}" ctl --socket "$sock" --timeout $((300 * ${slow:-1})) "$@"; }
jget() {  # jget <python expr over r> <ctl args...>: one value from a --json reply
  local expr=$1; shift
  ctl --json "$@" | tail -n 1 | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); print($expr)"
}
vm_stat() { jget "next((v.get('$2', 0) for v in r['vms'] if v['name'] == '$1'), 0)" stats 2>/dev/null || echo 0; }
state_of() { jget "next((v['state'] for v in r['vms'] if v['name'] == '$1'), '')" vm-list 2>/dev/null; }
