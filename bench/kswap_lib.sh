# kswap_lib.sh: shell helpers shared by the peer scripts that run the Linux kernel's
# own swap (kernel_swapoff_peer.sh, guest_overcommit.sh, bench/run): a swap file on a
# given disk, a memory cgroup (v1 or v2, whichever the host mounts), and zswap on/off
# with its settings saved and restored. Sourced, not run. Every teardown helper is
# idempotent so the scripts' EXIT traps can call them unconditionally.
#
# Cgroups. kswap_cg_detect picks the hierarchy (override with KSWAP_CGROUP=v1|v2 and
# KSWAP_CG_ROOT=DIR; a DIR that is not a cgroup file system is how
# tests/scripts/kswap_lib_test.sh checks what would be written, as root or not):
#   v1: KSWAP_CG_ROOT=/sys/fs/cgroup/memory; the limit is memory.limit_in_bytes (the
#       v1 memsw limit is left alone: swap is unlimited, as on v2 below);
#   v2: KSWAP_CG_ROOT=/sys/fs/cgroup (cgroup2 mounted there, "memory" in
#       cgroup.controllers; +memory is written to cgroup.subtree_control if missing,
#       and taken back on kswap_cg_restore); the limit is written to
#         KSWAP_V2_LIMIT=max  (default) memory.max = LIMIT, memory.high = max,
#         KSWAP_V2_LIMIT=high           memory.high = LIMIT, memory.max = max
#                                       (the kernel throttles and reclaims above
#                                       high instead of OOM-killing at max),
#       and memory.swap.max = max in both (swap not limited, so the limit is RAM).
# cg_peak_bytes, cg_oom_kills and cg_stat read the same facts on either hierarchy:
# v1 memory.max_usage_in_bytes / memory.oom_control / memory.stat (total_*),
# v2 memory.peak (else memory.current) / memory.events / memory.stat.

KSWAP_CGROUP=${KSWAP_CGROUP:-}
KSWAP_CG_ROOT=${KSWAP_CG_ROOT:-}
KSWAP_V2_LIMIT=${KSWAP_V2_LIMIT:-max}
KSWAP_CG_WHY=""           # why no cgroup is usable (kswap_cg_detect), for the reports
KSWAP_CG_ADDED_MEMORY=0   # 1 when we enabled +memory in the v2 root's subtree_control

# kswap_cg_detect: set KSWAP_CGROUP (v1, v2 or "" = none) and KSWAP_CG_ROOT; return 1
# (with KSWAP_CG_WHY) when neither hierarchy has the memory controller.
kswap_cg_detect() {
  if [[ -z $KSWAP_CGROUP ]]; then
    if [[ $(stat -f -c %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]]; then
      KSWAP_CGROUP=v2
    elif [[ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]]; then
      KSWAP_CGROUP=v1
    elif [[ -f /sys/fs/cgroup/unified/cgroup.controllers ]] &&
         grep -qw memory /sys/fs/cgroup/unified/cgroup.controllers; then
      KSWAP_CGROUP=v2 KSWAP_CG_ROOT=${KSWAP_CG_ROOT:-/sys/fs/cgroup/unified}
    fi
  fi
  case $KSWAP_CGROUP in
    v1) KSWAP_CG_ROOT=${KSWAP_CG_ROOT:-/sys/fs/cgroup/memory}
        [[ -f $KSWAP_CG_ROOT/memory.limit_in_bytes ]] && return 0
        KSWAP_CG_WHY="cgroup v1 memory controller not mounted at $KSWAP_CG_ROOT" ;;
    v2) KSWAP_CG_ROOT=${KSWAP_CG_ROOT:-/sys/fs/cgroup}
        grep -qw memory "$KSWAP_CG_ROOT/cgroup.controllers" 2>/dev/null && return 0
        KSWAP_CG_WHY="cgroup v2 at $KSWAP_CG_ROOT has no memory controller" ;;
    *)  KSWAP_CG_WHY="no memory cgroup (neither cgroup v2 with memory nor v1 memory mounted)" ;;
  esac
  KSWAP_CGROUP=""
  return 1
}

# kswap_cg_usable: root and a memory cgroup; else 1 with KSWAP_CG_WHY.
kswap_cg_usable() {
  if [[ $(id -u) != 0 ]]; then
    KSWAP_CG_WHY="not root (swapon and cgroups need root)"
    return 1
  fi
  kswap_cg_detect
}

# Exit 77 (skip) unless a memory cgroup is usable and we are root.
kswap_require() {
  kswap_cg_usable || { echo "$0: $KSWAP_CG_WHY: skipping" >&2; exit 77; }
}

# A short description for reports: "cgroup v2 memory.max", "cgroup v1", ...
kswap_cg_describe() {
  case $KSWAP_CGROUP in
    v1) echo "cgroup v1 memory.limit_in_bytes" ;;
    v2) echo "cgroup v2 memory.$KSWAP_V2_LIMIT (memory.swap.max=max)" ;;
    *) echo "none" ;;
  esac
}

# Refuse tmpfs/ramfs: the kernel cannot swap to them, and the comparison needs the disk.
kswap_require_disk() {
  local t
  t=$(stat -f -c %T "$1")
  if [[ $t == tmpfs || $t == ramfs ]]; then
    echo "$0: $1 is on $t: need a real disk" >&2
    exit 2
  fi
}

# kswap_on FILE SIZE_MIB: create, mkswap and swapon a swap file (highest priority so
# nothing else the host may have takes the pages).
kswap_on() {
  local file=$1 mib=$2
  rm -f "$file"
  if ! fallocate -l "${mib}M" "$file" 2>/dev/null; then
    dd if=/dev/zero of="$file" bs=1M count="$mib" status=none
  fi
  chmod 600 "$file"
  mkswap -q "$file" >/dev/null
  if ! swapon -p 32767 "$file" 2>/dev/null; then
    # Some filesystems refuse fallocated (unwritten) extents for swap: write them.
    dd if=/dev/zero of="$file" bs=1M count="$mib" status=none conv=notrunc
    mkswap -q "$file" >/dev/null
    swapon -p 32767 "$file"
  fi
}

kswap_is_on() { awk -v f="$(readlink -f "$1")" 'NR > 1 && $1 == f { found = 1 } END { exit !found }' /proc/swaps; }

# Used KiB of one swap file, from /proc/swaps.
kswap_used_kib() { awk -v f="$(readlink -f "$1")" 'NR > 1 && $1 == f { print $4 }' /proc/swaps; }

kswap_off() {
  local file=$1
  [[ -e $file ]] || return 0
  if kswap_is_on "$file"; then swapoff "$file" || echo "$0: WARNING: swapoff $file failed" >&2; fi
  rm -f "$file"
}

# ---- memory cgroups (v1 or v2) ------------------------------------------------------

_cg_path() { echo "$KSWAP_CG_ROOT/$1"; }

# v2: the children of the root get a memory controller only if the root delegates it.
_cg_v2_enable_memory() {
  local ctl=$KSWAP_CG_ROOT/cgroup.subtree_control
  grep -qw memory "$ctl" 2>/dev/null && return 0
  echo +memory >"$ctl" && KSWAP_CG_ADDED_MEMORY=1
}

# kswap_cg_restore: undo what cg_create changed above the peer's own cgroup (v2
# subtree_control); call from the EXIT trap after cg_destroy.
kswap_cg_restore() {
  if [[ $KSWAP_CGROUP == v2 && $KSWAP_CG_ADDED_MEMORY == 1 ]]; then
    echo -memory >"$KSWAP_CG_ROOT/cgroup.subtree_control" 2>/dev/null ||
      echo "$0: WARNING: could not take +memory back from $KSWAP_CG_ROOT/cgroup.subtree_control" >&2
    KSWAP_CG_ADDED_MEMORY=0
  fi
}

# cg_create NAME LIMIT_BYTES (-1 = no limit)
cg_create() {
  [[ -n $KSWAP_CGROUP ]] || kswap_cg_detect || { echo "$0: $KSWAP_CG_WHY" >&2; return 1; }
  local cg
  cg=$(_cg_path "$1")
  [[ $KSWAP_CGROUP == v2 ]] && _cg_v2_enable_memory
  mkdir -p "$cg"
  # Swap not limited (the default; absent when the kernel does no swap accounting).
  [[ $KSWAP_CGROUP == v2 ]] && { echo max >"$cg/memory.swap.max" 2>/dev/null || true; }
  cg_set_limit "$1" "$2"
}

# cg_set_limit NAME LIMIT_BYTES (-1 = no limit)
cg_set_limit() {
  local cg
  cg=$(_cg_path "$1")
  if [[ $KSWAP_CGROUP == v1 ]]; then
    echo "$2" >"$cg/memory.limit_in_bytes"
    return
  fi
  local lim=$2
  [[ $lim == -1 ]] && lim=max
  if [[ $KSWAP_V2_LIMIT == high ]]; then
    echo max >"$cg/memory.max"
    echo "$lim" >"$cg/memory.high"
  else
    echo max >"$cg/memory.high"
    echo "$lim" >"$cg/memory.max"
  fi
}

# Run "$@" inside cgroup NAME (the shell joins the cgroup, then execs).
cg_exec() {
  local cg
  cg=$(_cg_path "$1")
  shift
  sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@"
}

# Peak memory charged to the cgroup, bytes.
cg_peak_bytes() {
  local cg
  cg=$(_cg_path "$1")
  if [[ $KSWAP_CGROUP == v1 ]]; then
    cat "$cg/memory.max_usage_in_bytes"
  elif [[ -f $cg/memory.peak ]]; then
    cat "$cg/memory.peak"
  else
    cat "$cg/memory.current"  # kernels before 5.19 have no memory.peak
  fi
}

# How many times the cgroup's OOM killer killed a process in it.
cg_oom_kills() {
  local cg
  cg=$(_cg_path "$1")
  if [[ $KSWAP_CGROUP == v1 ]]; then
    awk '$1 == "oom_kill" { print $2; found = 1 } END { if (!found) print 0 }' "$cg/memory.oom_control" 2>/dev/null
  else
    awk '$1 == "oom_kill" { print $2; found = 1 } END { if (!found) print 0 }' "$cg/memory.events" 2>/dev/null
  fi
}

# cg_stat NAME KEY: one memory.stat counter (v1: the hierarchical total_KEY if present).
cg_stat() {
  local cg
  cg=$(_cg_path "$1")
  awk -v k="$2" '$1 == "total_" k { t = $2 } $1 == k { v = $2 } END { print (t != "" ? t : (v != "" ? v : 0)) }' \
    "$cg/memory.stat" 2>/dev/null
}

# Kill whatever is left in the cgroup and remove it.
cg_destroy() {
  local cg pid
  cg=$(_cg_path "$1")
  [[ -d $cg ]] || return 0
  for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    [[ -z $(cat "$cg/cgroup.procs" 2>/dev/null) ]] && break
    sleep 0.1
  done
  rmdir "$cg" 2>/dev/null || echo "$0: WARNING: could not remove cgroup $cg" >&2
}

# ---- zswap ------------------------------------------------------------------------
# The peer a production host would run: kernel swap with zswap in front of the swap
# file. kswap_zswap_on saves every writable /sys/module/zswap/parameters/* value to
# KSWAP_ZSWAP_SAVED and sets the first compressor of KSWAP_ZSWAP_COMPRESSORS the
# kernel has (lz4, else lzo-rle, else lzo: kernels built without CONFIG_CRYPTO_LZ4
# exist, and a zswap peer with lzo-rle is still the peer such a host runs), then
# enabled=Y. KSWAP_ZSWAP_USED names the compressor it runs with and KSWAP_ZSWAP_NOTE
# why it is not the first choice. KSWAP_ZSWAP_COMPRESSOR=NAME allows only NAME.
# kswap_zswap_restore writes the saved values back (enabled last) and is idempotent.
# KSWAP_ZSWAP_PARAMS overrides the directory (tests/scripts/kswap_lib_test.sh uses a
# copy, and overrides kswap_zswap_set to play a kernel without lz4).

KSWAP_ZSWAP_PARAMS=${KSWAP_ZSWAP_PARAMS:-/sys/module/zswap/parameters}
KSWAP_ZSWAP_COMPRESSORS=${KSWAP_ZSWAP_COMPRESSOR:-${KSWAP_ZSWAP_COMPRESSORS:-lz4 lzo-rle lzo}}
KSWAP_ZSWAP_SAVED=""
KSWAP_ZSWAP_WHY=""
KSWAP_ZSWAP_USED=""
KSWAP_ZSWAP_NOTE=""

# kswap_zswap_set NAME VALUE: write one zswap parameter (1 when the kernel refuses it).
kswap_zswap_set() {
  echo "$2" >"$KSWAP_ZSWAP_PARAMS/$1" 2>/dev/null
}

# kswap_zswap_usable: zswap present and its parameters writable; else 1 with
# KSWAP_ZSWAP_WHY. (Whether the compressor exists shows when kswap_zswap_on sets it.)
kswap_zswap_usable() {
  if [[ ! -d $KSWAP_ZSWAP_PARAMS ]]; then
    KSWAP_ZSWAP_WHY="no zswap in this kernel ($KSWAP_ZSWAP_PARAMS missing)"; return 1
  fi
  if [[ ! -w $KSWAP_ZSWAP_PARAMS/enabled ]]; then
    KSWAP_ZSWAP_WHY="$KSWAP_ZSWAP_PARAMS/enabled not writable (not root?)"; return 1
  fi
  return 0
}

kswap_zswap_on() {
  kswap_zswap_usable || { echo "$0: $KSWAP_ZSWAP_WHY" >&2; return 1; }
  if [[ -z $KSWAP_ZSWAP_SAVED ]]; then
    KSWAP_ZSWAP_SAVED=$(mktemp)
    local p
    for p in "$KSWAP_ZSWAP_PARAMS"/*; do
      [[ -f $p && -w $p ]] && printf '%s\t%s\n' "${p##*/}" "$(cat "$p")" >>"$KSWAP_ZSWAP_SAVED"
    done
  fi
  # A kernel without a compressor refuses its name, or takes it and falls back to its
  # default when zswap first starts ("compressor lz4 not available, using default
  # lzo"): read it back after enabling, so a peer never runs with another compressor
  # than it says.
  local want now refused=()
  KSWAP_ZSWAP_USED="" KSWAP_ZSWAP_NOTE=""
  for want in $KSWAP_ZSWAP_COMPRESSORS; do
    kswap_zswap_set enabled N
    if ! kswap_zswap_set compressor "$want"; then refused+=("$want"); continue; fi
    kswap_zswap_set enabled Y
    now=$(cat "$KSWAP_ZSWAP_PARAMS/compressor")
    if [[ $now == "$want" ]]; then KSWAP_ZSWAP_USED=$want; break; fi
    refused+=("$want (fell back to $now)")
  done
  if [[ -z $KSWAP_ZSWAP_USED ]]; then
    KSWAP_ZSWAP_WHY="zswap took none of the compressors $KSWAP_ZSWAP_COMPRESSORS: ${refused[*]} not in this kernel's crypto API"
    echo "$0: $KSWAP_ZSWAP_WHY" >&2
    kswap_zswap_restore
    return 1
  fi
  if ((${#refused[@]})); then
    KSWAP_ZSWAP_NOTE="zswap runs with $KSWAP_ZSWAP_USED: this kernel has no ${refused[*]}"
    echo "$0: $KSWAP_ZSWAP_NOTE" >&2
  fi
}

kswap_zswap_restore() {
  [[ -n $KSWAP_ZSWAP_SAVED && -f $KSWAP_ZSWAP_SAVED ]] || return 0
  local name value enabled=""
  # Off first, so the other values change on an idle zswap; enabled goes back last.
  [[ -w $KSWAP_ZSWAP_PARAMS/enabled ]] && echo N >"$KSWAP_ZSWAP_PARAMS/enabled" 2>/dev/null
  while IFS=$'\t' read -r name value; do
    if [[ $name == enabled ]]; then enabled=$value; continue; fi
    [[ $(cat "$KSWAP_ZSWAP_PARAMS/$name" 2>/dev/null) == "$value" ]] && continue
    echo "$value" >"$KSWAP_ZSWAP_PARAMS/$name" 2>/dev/null ||
      echo "$0: WARNING: could not restore zswap $name=$value" >&2
  done <"$KSWAP_ZSWAP_SAVED"
  [[ -n $enabled ]] && { echo "$enabled" >"$KSWAP_ZSWAP_PARAMS/enabled" 2>/dev/null ||
    echo "$0: WARNING: could not restore zswap enabled=$enabled" >&2; }
  rm -f "$KSWAP_ZSWAP_SAVED"
  KSWAP_ZSWAP_SAVED=""
}

# Pages zswap holds now and has written back, from debugfs when mounted (else empty).
kswap_zswap_stats() {
  local d=/sys/kernel/debug/zswap
  [[ -r $d/stored_pages ]] && echo "stored_pages=$(cat $d/stored_pages) written_back_pages=$(cat $d/written_back_pages 2>/dev/null)"
}
