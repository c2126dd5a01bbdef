#!/usr/bin/env bash
# kswap_lib_test.sh <build dir>: bench/kswap_lib.sh writes what each hierarchy needs,
# on a fake cgroup tree (a plain directory; root not needed), and saves and restores
# zswap settings on a fake parameter directory. This is how the cgroup v2 path is
# checked on hosts that mount v1 (like the development machine): the real v2 run
# needs a v2 host (docs/PERFORMANCE.md says which figures came from where).
set -u
here=$(cd "$(dirname "$0")/../.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
expect_file() { # expect_file PATH VALUE
  [[ -f $1 ]] || fail "$1 not written"
  [[ $(cat "$1") == "$2" ]] || fail "$1 = '$(cat "$1")', want '$2'"
}

# ---- cgroup v2, memory.max (default) ----------------------------------------------
root=$scratch/v2
mkdir -p "$root"
echo "cpuset cpu io memory pids" >"$root/cgroup.controllers"
echo "cpu" >"$root/cgroup.subtree_control"
(
  KSWAP_CGROUP=v2 KSWAP_CG_ROOT=$root
  source "$here/bench/kswap_lib.sh"
  kswap_cg_detect || fail "v2 tree with memory not detected: $KSWAP_CG_WHY"
  [[ $(kswap_cg_describe) == "cgroup v2 memory.max (memory.swap.max=max)" ]] || fail "describe: $(kswap_cg_describe)"
  # A real cgroupfs accepts "+memory" and lists it; the fake file just holds what was written.
  cg_create peer $((64 << 20)) || fail "cg_create"
  expect_file "$root/cgroup.subtree_control" "+memory"
  [[ $KSWAP_CG_ADDED_MEMORY == 1 ]] || fail "+memory not recorded for restore"
  expect_file "$root/peer/memory.max" $((64 << 20))
  expect_file "$root/peer/memory.high" max
  expect_file "$root/peer/memory.swap.max" max
  cg_set_limit peer -1
  expect_file "$root/peer/memory.max" max
  # Read-back helpers on v2 files.
  echo 123456 >"$root/peer/memory.peak"
  [[ $(cg_peak_bytes peer) == 123456 ]] || fail "cg_peak_bytes v2"
  printf 'low 0\nhigh 4\nmax 9\noom 2\noom_kill 1\n' >"$root/peer/memory.events"
  [[ $(cg_oom_kills peer) == 1 ]] || fail "cg_oom_kills v2"
  printf 'anon 1\npgmajfault 77\n' >"$root/peer/memory.stat"
  [[ $(cg_stat peer pgmajfault) == 77 ]] || fail "cg_stat v2"
  # cg_exec joins the cgroup (writes its pid to cgroup.procs), then execs.
  [[ $(cg_exec peer sh -c 'echo $$') == $(cat "$root/peer/cgroup.procs") ]] || fail "cg_exec did not join"
  : >"$root/peer/cgroup.procs"   # the process is gone (a real cgroupfs empties it)
  kswap_cg_restore
  expect_file "$root/cgroup.subtree_control" "-memory"
  rm -f "$root"/peer/*
  cg_destroy peer
  [[ ! -d $root/peer ]] || fail "cg_destroy left the cgroup"
) || exit 1

# ---- cgroup v2, memory.high variant; memory already delegated ------------------------
echo "memory" >"$root/cgroup.subtree_control"
(
  KSWAP_CGROUP=v2 KSWAP_CG_ROOT=$root KSWAP_V2_LIMIT=high
  source "$here/bench/kswap_lib.sh"
  cg_create peer $((32 << 20)) || fail "cg_create high"
  expect_file "$root/cgroup.subtree_control" "memory"   # untouched
  [[ $KSWAP_CG_ADDED_MEMORY == 0 ]] || fail "+memory recorded although it was delegated"
  expect_file "$root/peer/memory.high" $((32 << 20))
  expect_file "$root/peer/memory.max" max
  expect_file "$root/peer/memory.swap.max" max
  kswap_cg_restore
  expect_file "$root/cgroup.subtree_control" "memory"
) || exit 1

# ---- v2 without the memory controller: refused with a reason -------------------------
echo "cpu io" >"$root/cgroup.controllers"
(
  KSWAP_CGROUP=v2 KSWAP_CG_ROOT=$root
  source "$here/bench/kswap_lib.sh"
  kswap_cg_detect && fail "a v2 tree without memory was accepted"
  [[ $KSWAP_CG_WHY == *"no memory controller"* ]] || fail "reason: $KSWAP_CG_WHY"
) || exit 1

# ---- cgroup v1 ----------------------------------------------------------------------
v1=$scratch/v1
mkdir -p "$v1"
echo 9223372036854771712 >"$v1/memory.limit_in_bytes"
(
  KSWAP_CGROUP=v1 KSWAP_CG_ROOT=$v1
  source "$here/bench/kswap_lib.sh"
  kswap_cg_detect || fail "v1 not detected: $KSWAP_CG_WHY"
  cg_create peer $((48 << 20)) || fail "cg_create v1"
  expect_file "$v1/peer/memory.limit_in_bytes" $((48 << 20))
  [[ ! -e $v1/peer/memory.max ]] || fail "v1 wrote a v2 file"
  echo 4242 >"$v1/peer/memory.max_usage_in_bytes"
  [[ $(cg_peak_bytes peer) == 4242 ]] || fail "cg_peak_bytes v1"
  printf 'oom_kill_disable 0\nunder_oom 0\noom_kill 3\n' >"$v1/peer/memory.oom_control"
  [[ $(cg_oom_kills peer) == 3 ]] || fail "cg_oom_kills v1"
  printf 'pgmajfault 5\ntotal_pgmajfault 8\n' >"$v1/peer/memory.stat"
  [[ $(cg_stat peer pgmajfault) == 8 ]] || fail "cg_stat v1 (hierarchical total)"
) || exit 1

# ---- the host's own hierarchy is detected (whatever it is) --------------------------
(
  source "$here/bench/kswap_lib.sh"
  if kswap_cg_detect; then echo "kswap_lib_test: this host: $(kswap_cg_describe) at $KSWAP_CG_ROOT"
  else echo "kswap_lib_test: this host: $KSWAP_CG_WHY"; fi
)

# ---- zswap: save, set lz4, restore -----------------------------------------------
params=$scratch/zswap
mkdir -p "$params"
echo N >"$params/enabled"; echo lzo >"$params/compressor"; echo 20 >"$params/max_pool_percent"
echo 90 >"$params/accept_threshold_percent"; echo N >"$params/shrinker_enabled"
(
  KSWAP_ZSWAP_PARAMS=$params
  source "$here/bench/kswap_lib.sh"
  kswap_zswap_on || fail "zswap on: $KSWAP_ZSWAP_WHY"
  expect_file "$params/enabled" Y
  expect_file "$params/compressor" lz4
  echo 50 >"$params/max_pool_percent"   # something else changed it meanwhile
  saved=$KSWAP_ZSWAP_SAVED
  kswap_zswap_restore
  expect_file "$params/enabled" N
  expect_file "$params/compressor" lzo
  expect_file "$params/max_pool_percent" 20
  expect_file "$params/accept_threshold_percent" 90
  [[ ! -e $saved ]] || fail "saved settings file left behind"
  kswap_zswap_restore   # idempotent
  expect_file "$params/compressor" lzo
) || exit 1
# A kernel without lz4: one refuses the name, the other takes it and falls back to
# lzo when zswap starts. Either way the peer runs lzo-rle and says why.
for kind in refuses falls_back; do
  (
    KSWAP_ZSWAP_PARAMS=$params
    source "$here/bench/kswap_lib.sh"
    kswap_zswap_set() {
      if [[ $1 == compressor && $2 == lz4 && $kind == refuses ]]; then return 1; fi
      echo "$2" >"$KSWAP_ZSWAP_PARAMS/$1"
      if [[ $1 == enabled && $2 == Y && $(cat "$KSWAP_ZSWAP_PARAMS/compressor") == lz4 ]]; then
        echo lzo >"$KSWAP_ZSWAP_PARAMS/compressor"
      fi
    }
    kswap_zswap_on 2>/dev/null || fail "zswap on without lz4 ($kind): $KSWAP_ZSWAP_WHY"
    [[ $KSWAP_ZSWAP_USED == lzo-rle ]] || fail "$kind: runs with '$KSWAP_ZSWAP_USED', not lzo-rle"
    [[ $KSWAP_ZSWAP_NOTE == *"no lz4"* ]] || fail "$kind: note '$KSWAP_ZSWAP_NOTE'"
    expect_file "$params/compressor" lzo-rle
    expect_file "$params/enabled" Y
    kswap_zswap_restore
    expect_file "$params/compressor" lzo
    expect_file "$params/enabled" N
  ) || exit 1
done
# A kernel with none of them: not measured, the reason names them, settings restored.
(
  KSWAP_ZSWAP_PARAMS=$params
  source "$here/bench/kswap_lib.sh"
  kswap_zswap_set() { [[ $1 != compressor ]] && echo "$2" >"$KSWAP_ZSWAP_PARAMS/$1"; }
  kswap_zswap_on 2>/dev/null && fail "zswap on with no compressor"
  [[ $KSWAP_ZSWAP_WHY == *"lz4 lzo-rle lzo"* ]] || fail "reason: $KSWAP_ZSWAP_WHY"
  expect_file "$params/compressor" lzo
  expect_file "$params/enabled" N
) || exit 1
(
  KSWAP_ZSWAP_PARAMS=$scratch/none
  source "$here/bench/kswap_lib.sh"
  kswap_zswap_usable && fail "zswap usable without its parameters"
  [[ $KSWAP_ZSWAP_WHY == *"no zswap"* ]] || fail "reason: $KSWAP_ZSWAP_WHY"
) || exit 1
echo "kswap_lib_test: ok"
