#!/usr/bin/env bash
# scripts/nested-kvm.sh [--mem SIZE] [--smp N] [--timeout S] -- COMMAND [ARG...]
#
# Runs COMMAND where /dev/kvm exists, on a host that has none (tests/README.md#nested):
# Linux 6.12 (Debian bookworm-backports) boots under QEMU TCG, whose emulated AMD CPU
# has SVM, so its KVM module gives a real /dev/kvm; the host's whole file system is the
# guest's root, read-only through 9p with a writable overlay on a fresh ext4 disk (so
# builds, ctest's Testing/ and swap files work and nothing reaches the host). COMMAND
# runs as root in the caller's directory; its output streams to stdout; the exit
# status is COMMAND's (77 if the guest found no /dev/kvm, 75 if the emulated machine
# ended before COMMAND did: it resets now and then, an emulator fault).
#
# Everything runs emulated: guest code ~100x slower than under hardware KVM, a
# userfaultfd round trip ~5 ms. Good for correctness, never for figures.
#
# One idle KVM VM (with an in-kernel irqchip and one vCPU that never runs) is held
# open for the whole command: KVM flips kernel static keys when the first VM or vCPU
# appears and the last one goes (the preempt notifiers called from __schedule, the
# LAPIC's software-disabled key), and the emulated kernel patching its own text
# while the other emulated CPU runs it dies now and then under QEMU TCG ("Oops:
# int3" in __schedule: a stale translation of the patch site). With one VM always
# there those keys never flip back, whatever the tests create and destroy. The kernel,
# its modules and busybox are downloaded once (apt-get download, no install) into
# $SWV_NESTED_CACHE (default /var/cache/swapvisor-nested).
set -euo pipefail
mem=6G smp=2 tmo=3600
while [[ $# -gt 0 ]]; do
  case $1 in
    --mem) mem=$2; shift 2 ;;
    --smp) smp=$2; shift 2 ;;
    --timeout) tmo=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "usage: scripts/nested-kvm.sh [--mem SIZE] [--smp N] [--timeout S] -- COMMAND..." >&2; exit 2 ;;
  esac
done
[[ $# -gt 0 ]] || { echo "nested-kvm: no command" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "nested-kvm: qemu-system-x86_64 is not installed" >&2; exit 77; }
cache=${SWV_NESTED_CACHE:-/var/cache/swapvisor-nested}
mkdir -p "$cache"

# --- the kernel, its modules and busybox, once -------------------------------------
modules=(virt/lib/irqbypass drivers/crypto/ccp/ccp arch/x86/kvm/kvm arch/x86/kvm/kvm-amd
         drivers/block/virtio_blk lib/crc16 crypto/crc32c_generic fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4
         fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay)
if [[ ! -f $cache/ready ]]; then
  echo "nested-kvm: fetching Linux (bookworm-backports) and busybox into $cache" >&2
  rm -rf "$cache"/{apt,deb,x,mods}; mkdir -p "$cache"/{apt/lists/partial,deb,mods}
  echo "deb http://deb.debian.org/debian bookworm-backports main" >"$cache/apt/sources.list"
  echo "deb http://deb.debian.org/debian bookworm main" >>"$cache/apt/sources.list"
  apt_o=(-o Dir::Etc::sourcelist="$cache/apt/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$cache/apt/lists"
         -o Dir::Cache::archives="$cache/deb" -o Debug::NoLocking=1)
  apt-get "${apt_o[@]}" update -qq
  image=$(apt-cache "${apt_o[@]}" depends -t bookworm-backports linux-image-amd64 2>/dev/null |
          awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [[ -n $image ]] || { echo "nested-kvm: no linux-image in bookworm-backports" >&2; exit 1; }
  (cd "$cache/deb" && apt-get "${apt_o[@]}" download "$image" busybox-static >/dev/null 2>&1) ||
    { echo "nested-kvm: apt-get download $image busybox-static failed" >&2; exit 1; }
  for d in "$cache"/deb/*.deb; do dpkg-deb -x "$d" "$cache/x"; done
  cp "$cache"/x/boot/vmlinuz-* "$cache/vmlinuz"
  kdir=$(echo "$cache"/x/lib/modules/*/kernel)
  for m in "${modules[@]}"; do
    if [[ -f $kdir/$m.ko.xz ]]; then xz -dc "$kdir/$m.ko.xz" >"$cache/mods/$(basename "$m").ko"
    else cp "$kdir/$m.ko" "$cache/mods/"; fi
  done
  cp "$cache/x/bin/busybox" "$cache/busybox"
  rm -rf "$cache/x" "$cache/deb" "$cache/apt"
  touch "$cache/ready"
fi

# --- the initramfs: load the modules, overlay the host's root, run the command -----
work=$(mktemp -d "${TMPDIR:-/var/tmp}/swv-nested.XXXXXX")
trap '[[ -n ${SWV_NESTED_KEEP:-} ]] || rm -rf "$work"' EXIT
r=$work/initrd; mkdir -p "$r"/{bin,proc,sys,dev,host,scratch,root,mods}
cp "$cache/busybox" "$r/bin/"; cp "$cache"/mods/*.ko "$r/mods/"
printf '%s\n' "${modules[@]##*/}" >"$r/mods/order"
# The command, quoted for bash, run in the caller's directory.
{ printf 'cd %q || exit 1\n' "$PWD"; printf '%q ' "$@"; echo; } >"$r/cmd"
# The idle VM that keeps KVM's static keys from flipping (see the top): KVM_CREATE_VM,
# KVM_CREATE_IRQCHIP, KVM_CREATE_VCPU (_IO(0xAE, 0x01 / 0x60 / 0x41)), then wait.
cat >"$r/pin.py" <<'PIN'
import fcntl, os, signal
kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
vm = fcntl.ioctl(kvm, 0xAE01, 0)
fcntl.ioctl(vm, 0xAE60, 0)
vcpu = fcntl.ioctl(vm, 0xAE41, 0)
open("/run/nested-pin.ready", "w").close()
while True:
    signal.pause()
PIN
cat >"$r/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
while read -r m; do insmod /mods/$m.ko 2>/dev/null || echo "nested-kvm: insmod $m failed"; done </mods/order
ip link set lo up  # tests talk to nbdkit and the metrics server over 127.0.0.1
hostname nested
rc=77
if [ -e /dev/kvm ] && mount -t ext4 /dev/vda /scratch &&
   mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=1048576,cache=loose host /host; then
  mkdir -p /scratch/upper /scratch/work
  mount -t overlay overlay -o lowerdir=/host,upperdir=/scratch/upper,workdir=/scratch/work /root
  mount -t proc proc /root/proc; mount -t sysfs sys /root/sys; mount -o bind /dev /root/dev
  mkdir -p /root/dev/pts /root/dev/shm
  mount -t devpts devpts /root/dev/pts 2>/dev/null; mount -t tmpfs tmpfs /root/dev/shm
  mount -t tmpfs tmpfs /root/run
  mount -t cgroup2 none /root/sys/fs/cgroup 2>/dev/null
  cp /cmd /root/run/nested-cmd
  cp /pin.py /root/run/nested-pin.py
  echo NESTED-BEGIN
  chroot /root /bin/bash -c 'export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TMPDIR=/tmp
    ulimit -l unlimited; python3 /run/nested-pin.py & pin=$!
    for _ in $(seq 600); do [ -e /run/nested-pin.ready ] || ! kill -0 $pin 2>/dev/null && break; sleep 0.1; done
    [ -e /run/nested-pin.ready ] || echo "nested-kvm: the idle VM did not start; going on without it"
    bash /run/nested-cmd; rc=$?; kill $pin 2>/dev/null; exit $rc' </dev/null >/dev/console 2>&1
  rc=$?
  sync
else
  echo NESTED-BEGIN
  echo "nested-kvm: no /dev/kvm in the nested guest (or no disk / 9p): nothing ran"
fi
echo "NESTED-RC: $rc"
echo o >/proc/sysrq-trigger; sleep 10
INIT
chmod +x "$r/init"
(cd "$r" && find . | "$cache/busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz"
truncate -s 16G "$work/disk.img"; mkfs.ext4 -q -F "$work/disk.img"

# --- boot; the console is the command's output -------------------------------------
status=0
timeout "$tmo" qemu-system-x86_64 -M q35 -accel tcg,thread=multi -cpu max -smp "$smp" -m "$mem" \
  -nographic -no-reboot -kernel "$cache/vmlinuz" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 quiet loglevel=0 panic=-1" \
  -drive "file=$work/disk.img,if=virtio,format=raw,cache=unsafe" \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap </dev/null 2>&1 |
  tr -d '\r' | tee "$work/console" | sed -u -n '/NESTED-BEGIN$/,/^NESTED-RC:/{/NESTED-BEGIN$/d;/^NESTED-RC:/d;p}' || status=$?
rc=$(sed -n 's/^NESTED-RC: \([0-9]*\).*/\1/p' "$work/console" | tail -1)
if [[ -z $rc ]]; then
  echo "nested-kvm: the guest ended without a status (timeout ${tmo}s, or a crash; qemu status $status):" >&2
  tail -n 30 "$work/console" >&2
  exit 75  # EX_TEMPFAIL: the emulated machine died (it resets at times), not COMMAND
fi
exit "$rc"
