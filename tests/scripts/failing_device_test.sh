#!/usr/bin/env bash
# failing_device_test.sh <build dir>: issue 9's "a failing device can be removed" on
# the real stack. A memtouch guest is overcommitted onto a.swap (priority 10, on a
# small ext4 image on a loop device) and b.swap (priority 5, on the work directory's
# file system). Once a.swap holds pages, it fails under the running guest, in one of
# two ways (one guest each). a.swap is small (64 MiB) so it fills with the pages the
# guest wrote first, and the guest does not come back to them until its next pass:
# the swapoffs run while it lives.
# Ways:
#   shutdown  EXT4_IOC_SHUTDOWN of the ext4 file system: every I/O on a.swap is EIO;
#   truncate  the loop device's backing image is truncated to 64 MiB and the loop
#             device told its new size: reads of a.swap beyond it fail or read zeros
#             (checksum mismatch).
# Then `ctl swapoff a.swap` without --force must be refused with unreadable_slots
# (nothing lost, the device stays in the pool), and `ctl swapoff --force a.swap` must
# remove it, reporting pages_lost. New swap-outs go to b.swap (failover).
# The guest must never see a wrong byte: it either finishes with RESULT ok and 0
# errors (it did not touch a lost page), or swapvisor exits 132 "guest page lost"
# (it touched one; the message names the guest address). Exit code 1 of memtouch
# (a page that verified wrong) fails the test in both cases.
# Exit 77 (skipped) without /dev/kvm, root, or loop devices.
set -u
build=${1:?usage: failing_device_test.sh <build dir>}
bin=$build/swapvisor
guest=$build/examples/memtouch.elf
skip() { echo "SKIPPED: $*; the failing device test did not run" >&2; exit 77; }
[[ -r /dev/kvm && -w /dev/kvm ]] || skip "/dev/kvm is absent or not accessible"
[[ $(id -u) -eq 0 ]] || skip "not root (needs losetup and mount)"
command -v losetup >/dev/null && command -v mkfs.ext4 >/dev/null || skip "losetup / mkfs.ext4 missing"

work=$(mktemp -d /var/tmp/swv-faildev.XXXXXX)
vm_pid=
loop=
mnt=$work/mnt
cleanup() {
  [[ -n $vm_pid ]] && kill "$vm_pid" 2>/dev/null
  wait 2>/dev/null
  mountpoint -q "$mnt" && umount -l "$mnt"
  [[ -n $loop ]] && losetup -d "$loop" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
sock=$work/control.sock
fail() { echo "FAIL: $*" >&2; tail -20 "$work/err.log" >&2; exit 1; }
last_json() { tail -n 1 | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print(eval(sys.argv[1]))' "$1"; }
used_of() {  # used_of <name>: used slots of that device, from a live status
  "$bin" ctl --socket "$sock" --json status | tail -n 1 |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print(sum(d["used_slots"] for d in r["swap"] if d["path"].endswith(sys.argv[1])))' "$1"
}

run_case() {  # run_case shutdown|truncate
  local how=$1
  rm -rf "$work/img" "$mnt" "$sock" "$work/b.swap"
  mkdir -p "$mnt"
  truncate -s 160M "$work/img"
  loop=$(losetup --find --show "$work/img") || skip "no free loop device"
  mkfs.ext4 -q -F "$loop" || fail "mkfs.ext4"
  mount "$loop" "$mnt" || fail "mount"

  "$bin" run --kernel "$guest" --name faildev --memory 512M --resident-limit 64M \
    --swap "$mnt/a.swap,size=64M,priority=10" --swap "$work/b.swap,size=512M,priority=5" \
    --control "$sock" --cmdline "mib=384 passes=6 mode=seq" >"$work/out.log" 2>"$work/err.log" &
  vm_pid=$!
  for _ in $(seq 1 100); do [[ -S $sock ]] && break; sleep 0.1; done
  [[ -S $sock ]] || fail "$how: no control socket"
  for _ in $(seq 1 600); do
    [[ $(used_of a.swap) -ge 16000 ]] && break
    kill -0 "$vm_pid" 2>/dev/null || fail "$how: guest ended before a.swap filled"
    sleep 0.05
  done
  [[ $(used_of a.swap) -ge 16000 ]] || fail "$how: a.swap did not fill"

  if [[ $how == shutdown ]]; then
    # Kernel contract: EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); flag 2 =
    # EXT4_GOING_FLAGS_NOLOGFLUSH. Afterwards every I/O on the file system is EIO.
    python3 -c 'import fcntl,os,struct,sys; fd=os.open(sys.argv[1], os.O_RDONLY); fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))' "$mnt" ||
      fail "EXT4_IOC_SHUTDOWN"
  else
    truncate -s 64M "$work/img"
    losetup -c "$loop" || fail "losetup -c"
  fi
  echo "$how: a.swap failed with $(used_of a.swap 2>/dev/null) pages on it"

  local alive=yes out lost
  if out=$("$bin" ctl --socket "$sock" --json swapoff "$mnt/a.swap" 2>&1); then
    fail "$how: swapoff without --force succeeded on a failed device: $out"
  fi
  if kill -0 "$vm_pid" 2>/dev/null && ! echo "$out" | grep -q 'cannot connect'; then
    echo "$out" | grep -q '"unreadable_slots"' || fail "$how: refusal is not unreadable_slots: $out"
    if ! out=$("$bin" ctl --socket "$sock" --json swapoff --force "$mnt/a.swap" 2>&1); then
      # The guest may touch a lost page while the forced swapoff runs: swapvisor then
      # ends (132) and closes the socket under ctl. Give it time to finish exiting
      # before calling the failure swapoff's own.
      if echo "$out" | grep -q 'closed the connection'; then
        for _ in $(seq 1 100); do kill -0 "$vm_pid" 2>/dev/null || break; sleep 0.1; done
      fi
      kill -0 "$vm_pid" 2>/dev/null && fail "$how: swapoff --force failed: $out"
      alive=no
    fi
    if [[ $alive == yes ]]; then
      lost=$(echo "$out" | last_json 'r["pages_lost"]')
      echo "$how: swapoff --force: $(echo "$out" | tail -n 1)"
      [[ $lost -ge 1 ]] || fail "$how: no page reported lost"
      kill -0 "$vm_pid" 2>/dev/null && "$bin" ctl --socket "$sock" --json status | tail -n 1 | python3 -c '
import json,sys
r=json.loads(sys.stdin.read())
sys.exit(0 if [d["path"] for d in r["swap"] if d["path"].endswith("a.swap")] == [] else 1)'
      [[ ${PIPESTATUS[0]} -ne 0 || $? -eq 0 ]] || fail "$how: a.swap still in the pool after swapoff --force"
    fi
  else
    alive=no
  fi

  wait "$vm_pid"; local rc=$?; vm_pid=
  grep 'RESULT' "$work/out.log"
  if [[ $rc -eq 0 ]]; then
    grep -q 'RESULT {"guest":"memtouch","ok":true.*"errors":0' "$work/out.log" || fail "$how: guest did not verify"
  elif [[ $rc -eq 132 ]]; then
    grep -q 'guest page lost' "$work/err.log" || fail "$how: exit 132 without a page-lost message"
    grep -q '"ok":false' "$work/out.log" && fail "$how: the guest saw a wrong byte"
    echo "$how: guest touched a lost page and was stopped (exit 132): $(grep -m1 'guest page lost' "$work/err.log")"
  else
    fail "$how: swapvisor exited $rc"
  fi
  umount -l "$mnt"; losetup -d "$loop"; loop=
}

run_case shutdown
run_case truncate
echo "failing_device_test: passed"
