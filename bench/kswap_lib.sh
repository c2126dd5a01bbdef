# kswap_lib.sh: shell helpers shared by the peer scripts that run the Linux kernel's
# own swap (kernel_swapoff_peer.sh, guest_overcommit.sh): a swap file on a given
# disk and a cgroup v1 memory cgroup. Sourced, not run. Every helper is idempotent
# so the scripts' EXIT traps can call the teardown ones unconditionally.

KSWAP_CG_ROOT=/sys/fs/cgroup/memory

# Exit 77 (skip) unless cgroup v1 memory is mounted and we are root.
kswap_require() {
  if [[ $(id -u) != 0 ]]; then
    echo "$0: needs root (swapon, cgroups)" >&2
    exit 77
  fi
  if [[ ! -f $KSWAP_CG_ROOT/memory.limit_in_bytes ]]; then
    echo "$0: cgroup v1 memory controller not mounted at $KSWAP_CG_ROOT: skipping" >&2
    exit 77
  fi
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

# cg_create NAME LIMIT_BYTES (-1 = no limit)
cg_create() {
  local cg=$KSWAP_CG_ROOT/$1
  mkdir -p "$cg"
  echo "$2" >"$cg/memory.limit_in_bytes"
}

cg_set_limit() { echo "$2" >"$KSWAP_CG_ROOT/$1/memory.limit_in_bytes"; }

# Run "$@" inside cgroup NAME (the shell joins the cgroup, then execs).
cg_exec() {
  local cg=$KSWAP_CG_ROOT/$1
  shift
  sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@"
}

# Kill whatever is left in the cgroup and remove it.
cg_destroy() {
  local cg=$KSWAP_CG_ROOT/$1 pid
  [[ -d $cg ]] || return 0
  for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    [[ -z $(cat "$cg/cgroup.procs" 2>/dev/null) ]] && break
    sleep 0.1
  done
  rmdir "$cg" 2>/dev/null || echo "$0: WARNING: could not remove cgroup $cg" >&2
}
