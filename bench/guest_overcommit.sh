#!/usr/bin/env bash
# guest_overcommit.sh BUILD [DIR]: the memtouch guest under memory overcommit, run by
# swapvisor and by QEMU + the Linux kernel's swap, side by side, on the same disk.
#
#   swapvisor, limited : BUILD/swapvisor run --kernel BUILD/examples/memtouch.elf
#                        --memory 1G --resident-limit 192M --swap DIR/a.swap,size=2G
#                        --cmdline "mib=768 passes=3" --stats-json FILE
#   swapvisor, no limit: the same without --resident-limit and --swap
#   QEMU, limited      : qemu-system-x86_64 -M microvm -accel kvm -cpu host,arch-capabilities=off -m 1G
#                        -nographic -no-reboot -kernel memtouch.elf -append "mib=768 passes=3"
#                        -device isa-debug-exit,iobase=0xf4,iosize=0x04
#                        in memory cgroup swvbench-qemu limited to 192 MiB + QEMU's
#                        own overhead, with a 2 GiB kernel swap file in DIR: cgroup v2
#                        memory.max (memory.high with KSWAP_V2_LIMIT=high;
#                        memory.swap.max=max) or v1 memory.limit_in_bytes, whichever
#                        the host mounts (bench/kswap_lib.sh)
#   QEMU + zswap       : KERNEL_ZSWAP=1 adds the limited QEMU run again with zswap
#                        (lz4) in front of the swap file, the kernel peer a production
#                        host would run; zswap's parameters are restored on exit
#   QEMU, no limit     : the same outside any limit
#
# QEMU's overhead is measured, not guessed: QEMU runs memtouch with mib=1 in an
# unlimited cgroup first, and its peak charge (v1 memory.max_usage_in_bytes, v2
# memory.peak: QEMU's own RSS, page tables, the guest's few touched MiB, and page
# cache it read) is added to the 192 MiB (override with QEMU_OVERHEAD_MIB). So both VMMs get 192 MiB for guest
# pages. If the cgroup OOM-kills QEMU (the kernel's memcg can fail to reclaim while
# KVM faults pages back in), that attempt is reported and retried with 32 MiB more
# headroom (QEMU_RETRY_MIB, QEMU_ATTEMPTS=3). Reports wall time and the guest's RESULT mib_per_s for each run; a table and
# one JSON line (prefix "JSON "). Env: MIB (768), PASSES (3), MEMORY (1G),
# LIMIT_MIB (192), SWAP_SIZE (2G). The QEMU rows need root and a memory cgroup; when
# absent they are reported as skipped, with the reason. Needs /dev/kvm for every row.
# Always cleans up (trap).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
source "$here/kswap_lib.sh"

build=$(readlink -f "${1:?usage: guest_overcommit.sh BUILD [DIR]}")
dir=$(readlink -f "${2:-/var/tmp}")
mib=${MIB:-768}
passes=${PASSES:-3}
memory=${MEMORY:-1G}
limit_mib=${LIMIT_MIB:-192}
swap_size=${SWAP_SIZE:-2G}
swapvisor=$build/swapvisor
guest=$build/examples/memtouch.elf
qemu=$(command -v qemu-system-x86_64 || true)
kswap_require_disk "$dir"
[[ -f $guest ]] || { echo "$0: $guest missing: build the memtouch target" >&2; exit 2; }

work=$(mktemp -d "$dir/swv-overcommit-XXXXXX")
cg=swvbench-qemu
kswap_file=$work/kernel.swap
cleanup() {
  cg_destroy "$cg" 2>/dev/null || true
  kswap_cg_restore 2>/dev/null || true
  kswap_off "$kswap_file" 2>/dev/null || true
  kswap_zswap_restore 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

results=()   # one JSON object per run

# run_case NAME VMM LIMIT_MIB EXPECTED_EXIT CMD...: run, time, parse RESULT.
run_case() {
  local name=$1 vmm=$2 lim=$3 expect=$4
  shift 4
  local out=$work/$name.out rc=0 t0 t1
  echo "== $name: $*" >&2
  t0=$(date +%s%N)
  "$@" >"$out" 2>&1 </dev/null || rc=$?
  t1=$(date +%s%N)
  local extra=${EXTRA_JSON:-"{}"}
  results+=("$(python3 - "$name" "$vmm" "$lim" "$rc" "$expect" "$((t1 - t0))" "$out" "$extra" <<'PY'
import json, sys
name, vmm, lim, rc, expect, ns, out, extra = sys.argv[1:]
result = None
for line in open(out, errors="replace"):
    if line.startswith("RESULT "):
        try:
            result = json.loads(line[7:])
        except ValueError:
            pass
r = {"run": name, "vmm": vmm, "limit_mib": int(lim), "exit": int(rc),
     "ok": int(rc) == int(expect) and bool(result and result.get("ok")),
     "wall_s": round(int(ns) / 1e9, 2),
     "mib_per_s": result.get("mib_per_s") if result else None,
     "errors": result.get("errors") if result else None}
r.update(json.loads(extra))
print(json.dumps(r, separators=(",", ":")))
PY
)")
  if [[ $rc != "$expect" ]]; then
    echo "$0: $name exited $rc (expected $expect); last lines:" >&2
    tail -5 "$out" >&2
  fi
}

# swapvisor stats (from --stats-json) worth showing next to the kernel's.
sv_stats() {
  python3 - "$1" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
    s = s["vms"][0] if "vms" in s else s   # --stats-json: {"vms":[...],"swap":[...],"host":{...}}
except (OSError, ValueError, IndexError):
    print("{}"); sys.exit()
print(json.dumps({k: s.get(k) for k in ("swap_out_pages", "swap_in_pages", "major_faults",
                                        "resident_bytes_peak")}, separators=(",", ":")))
PY
}

# ---- swapvisor -----------------------------------------------------------------
if [[ -x $swapvisor ]]; then
  run_case swapvisor_limited swapvisor "$limit_mib" 0 "$swapvisor" run --kernel "$guest" --memory "$memory" \
    --resident-limit "${limit_mib}M" --swap "$work/a.swap,size=$swap_size" \
    --cmdline "mib=$mib passes=$passes" --stats-json "$work/sv_limited.json"
  last=${results[-1]}
  results[-1]=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); a.update(json.loads(sys.argv[2])); print(json.dumps(a,separators=(",",":")))' \
    "$last" "$(sv_stats "$work/sv_limited.json")")
  rm -f "$work/a.swap"
  run_case swapvisor_nolimit swapvisor 0 0 "$swapvisor" run --kernel "$guest" --memory "$memory" \
    --cmdline "mib=$mib passes=$passes" --stats-json "$work/sv_nolimit.json"
else
  echo "$0: $swapvisor not built: swapvisor rows skipped" >&2
  results+=('{"run":"swapvisor","skipped":"binary not built"}')
fi

# ---- QEMU + kernel swap ------------------------------------------------------------
qemu_cmd=("$qemu" -M microvm -accel kvm -cpu host,arch-capabilities=off -m "$memory" -nographic -no-reboot
          -kernel "$guest" -device isa-debug-exit,iobase=0xf4,iosize=0x04)
# isa-debug-exit makes QEMU exit with (code << 1) | 1: guest exit 0 -> 1.
if [[ -z $qemu ]]; then
  results+=('{"run":"qemu","skipped":"qemu-system-x86_64 not installed"}')
else
  run_case qemu_nolimit qemu 0 1 "${qemu_cmd[@]}" -append "mib=$mib passes=$passes"
  if kswap_cg_usable; then
    if [[ -n ${QEMU_OVERHEAD_MIB:-} ]]; then
      overhead_mib=$QEMU_OVERHEAD_MIB
    else
      cg_create "$cg" -1
      cg_exec "$cg" "${qemu_cmd[@]}" -append "mib=1 passes=1" >"$work/probe.out" 2>&1 </dev/null || true
      overhead_mib=$(( ($(cg_peak_bytes "$cg") + (1 << 20) - 1) >> 20 ))
      cg_destroy "$cg"
    fi
    echo "QEMU overhead: $overhead_mib MiB (cgroup limit $((limit_mib + overhead_mib)) MiB, $(kswap_cg_describe))" >&2
    kswap_on "$kswap_file" $(( $(numfmt --from=iec "$swap_size") >> 20 ))
    # qemu_limited TAG: the limited QEMU run. The kernel's memcg may OOM-kill QEMU when
    # the limit is too tight for it to reclaim while KVM faults pages back in (seen
    # here: 137 at +21 MiB). Each such attempt is reported; the next one adds
    # QEMU_RETRY_MIB (32) of headroom, up to QEMU_ATTEMPTS (3) attempts.
    qemu_limited() {
      local tag=$1 extra=0 attempt lim
      for attempt in $(seq "${QEMU_ATTEMPTS:-3}"); do
        lim=$((limit_mib + overhead_mib + extra))
        cg_create "$cg" $((lim << 20))
        run_case "${tag}_try$attempt" qemu "$lim" 1 cg_exec "$cg" "${qemu_cmd[@]}" \
          -append "mib=$mib passes=$passes"
        last=${results[-1]}
        results[-1]=$(python3 - "$last" "$overhead_mib" "$extra" "$(cg_stat "$cg" pgmajfault)" \
          "$(cg_peak_bytes "$cg")" "$(cg_oom_kills "$cg")" "$(kswap_cg_describe)" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
r.update({"qemu_overhead_mib": int(sys.argv[2]), "extra_headroom_mib": int(sys.argv[3]),
          "pgmajfault": int(sys.argv[4] or 0), "max_usage_mib": int(sys.argv[5] or 0) >> 20,
          "cgroup": sys.argv[7]})
if r["exit"] == 137 or int(sys.argv[6] or 0) > 0:
    r["note"] = "OOM-killed by the memory cgroup"
print(json.dumps(r, separators=(",", ":")))
PY
)
        cg_destroy "$cg"
        [[ ${results[-1]} == *'"ok":true'* ]] && break
        extra=$((extra + ${QEMU_RETRY_MIB:-32}))
      done
    }
    qemu_limited qemu_limited
    if [[ ${KERNEL_ZSWAP:-0} == 1 ]]; then
      if kswap_zswap_on; then
        qemu_limited qemu_zswap_limited
        kswap_zswap_restore
      else
        results+=("{\"run\":\"qemu_zswap_limited\",\"skipped\":\"$KSWAP_ZSWAP_WHY\"}")
      fi
    fi
    kswap_off "$kswap_file"
  else
    results+=("{\"run\":\"qemu_limited\",\"skipped\":\"$KSWAP_CG_WHY\"}")
  fi
fi

python3 - "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(a) for a in sys.argv[1:]]
print(f"{'run':20} {'limit MiB':>9} {'exit':>4} {'ok':>5} {'wall s':>7} {'mib_per_s':>9}  notes")
for r in rows:
    if "skipped" in r:
        print(f"{r['run']:20} skipped: {r['skipped']}")
        continue
    notes = {k: v for k, v in r.items() if k not in ("run", "vmm", "limit_mib", "exit", "ok", "wall_s", "mib_per_s", "errors")}
    print(f"{r['run']:20} {r['limit_mib']:>9} {r['exit']:>4} {str(r['ok']):>5} {r['wall_s']:>7} {str(r['mib_per_s']):>9}  {json.dumps(notes) if notes else ''}")
print("JSON " + json.dumps({"bench": "guest_overcommit", "runs": rows}, separators=(",", ":")))
PY
