#!/usr/bin/env bash
# kernel_swapoff_peer.sh DIR SIZE_MIB [BUILD]: the Linux kernel's own swapoff of
# SIZE_MIB of swapped-out data on the disk under DIR, the peer of swapoff_bench.
#
#   1. a swap file of SIZE_MIB + 64 MiB in DIR (fallocate, mkswap, swapon);
#   2. a memory cgroup swvbench limited to CG_LIMIT_MIB (default 64): cgroup v2
#      (memory.max, or memory.high with KSWAP_V2_LIMIT=high; memory.swap.max=max) or
#      v1 (memory.limit_in_bytes), whichever the host mounts (bench/kswap_lib.sh);
#   3. BUILD/bench/memhog (bench/memhog.c) in it writes SIZE_MIB of non-zero,
#      page-distinct data: the kernel swaps all but ~CG_LIMIT_MIB of it out;
#   4. /proc/swaps gives the used pages; the cgroup limit is lifted (the kernel's
#      swapoff brings every page back into RAM, its only mode, and charges it to the
#      cgroup); then `swapoff FILE` is timed: ms and ns per page;
#   5. memhog re-reads every page and checks it.
# KERNEL_ZSWAP=1: the same with zswap (lz4, else lzo-rle; KSWAP_ZSWAP_COMPRESSOR) in front of the
# swap file ("zswap" in the JSON names the compressor; exit 77 if the kernel lacks it); zswap's
# parameters are saved first and restored on exit (a page zswap holds keeps its swap
# slot, so used_pages counts it; swapoff then decompresses instead of reading it).
# Always cleans up (trap): kills memhog, swapoff, removes the cgroup and the file,
# restores zswap and the v2 root's subtree_control.
# Exit 77 when no memory cgroup is usable or not root. Prints a table + JSON line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/kswap_lib.sh"

dir=${1:?usage: kernel_swapoff_peer.sh DIR SIZE_MIB [BUILD]}
mib=${2:?usage: kernel_swapoff_peer.sh DIR SIZE_MIB [BUILD]}
build=${3:-$here/../build-bench}
limit_mib=${CG_LIMIT_MIB:-64}
memhog=$build/bench/memhog
[[ -x $memhog ]] || { echo "$0: $memhog missing: build the memhog target" >&2; exit 2; }

kswap_require
kswap_require_disk "$dir"
need_kib=$(( (mib + 64 + 256) * 1024 ))
have_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
if (( have_kib < need_kib )); then
  echo "$0: $dir has $((have_kib / 1024)) MiB free, need $((need_kib / 1024)) MiB" >&2
  exit 2
fi

cg=swvbench
file=$(readlink -f "$dir")/swv-kswap-$$.swap
log=$(mktemp)
hog=""      # the background launcher (a subshell)
hog_pid=""  # memhog itself, read from the cgroup
cleanup() {
  set +e
  [[ -n $hog_pid ]] && kill -KILL "$hog_pid" 2>/dev/null
  [[ -n $hog ]] && kill -KILL "$hog" 2>/dev/null && wait "$hog" 2>/dev/null
  cg_destroy "$cg"
  kswap_cg_restore
  kswap_off "$file"
  kswap_zswap_restore
  rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

kswap_on "$file" $((mib + 64))
zswap=0
if [[ ${KERNEL_ZSWAP:-0} == 1 ]]; then
  kswap_zswap_on || exit 77
  zswap=$KSWAP_ZSWAP_USED
fi
cg_create "$cg" $((limit_mib << 20))
cg_exec "$cg" "$memhog" "$mib" >"$log" 2>&1 &
hog=$!
t0=$(date +%s%N)
until grep -q '^filled' "$log"; do
  kill -0 "$hog" 2>/dev/null || { echo "$0: memhog died:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.2
done
fill_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
hog_pid=$(head -1 "$KSWAP_CG_ROOT/$cg/cgroup.procs")
used_kib=$(kswap_used_kib "$file")
used_pages=$(( used_kib / 4 ))
(( used_pages > 0 )) || { echo "$0: nothing was swapped out" >&2; exit 1; }

cg_set_limit "$cg" -1
sync
t0=$(date +%s%N)
swapoff "$file"
t1=$(date +%s%N)
ns=$(( t1 - t0 ))

kill -USR1 "$hog_pid"
for _ in $(seq 600); do grep -q '^verified' "$log" && break; sleep 0.1; done
grep -q '^verified' "$log" || { echo "$0: memhog did not verify" >&2; cat "$log" >&2; exit 1; }
errors=$(sed -n 's/^verified errors=//p' "$log")

python3 - "$dir" "$(kswap_cg_describe)" "$zswap" "$mib" "$limit_mib" "$used_pages" "$ns" "$fill_ms" "$errors" <<'PY'
import json, sys
d, cgroup, zswap = sys.argv[1], sys.argv[2], (sys.argv[3] if sys.argv[3] != "0" else False)
mib, limit, used, ns, fill_ms, errors = map(int, sys.argv[4:])
res = {"bench": "kernel_swapoff_peer", "dir": d, "cgroup": cgroup, "zswap": zswap, "size_mib": mib, "cgroup_limit_mib": limit,
       "used_pages": used, "fill_ms": fill_ms, "swapoff_ms": round(ns / 1e6, 1),
       "ns_per_page": round(ns / used), "mib_per_s": round(used * 4096 / 2**20 / (ns / 1e9), 1),
       "verify_errors": errors}
print(f"{'metric':24} {'value':>12}")
for k, v in res.items():
    if k not in ("bench", "dir", "cgroup"):
        print(f"{k:24} {v:>12}")
print("JSON " + json.dumps(res, separators=(",", ":")))
PY
[[ $errors == 0 ]]
