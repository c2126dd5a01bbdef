#!/usr/bin/env bash
# balloon_qemu_test.sh <build dir>: runs the balloon guest against QEMU's own
# virtio-balloon (microvm, virtio-mmio version 2, free-page-reporting=on) as an
# outside check of the guest's virtio driver (examples/runtime/virtio.c): probing
# from the virtio_mmio.device= entry QEMU appends, feature negotiation, the
# reporting queue index when statsq is offered (QEMU: queue 3; swapvisor: 2),
# split-ring handling, and that reported pages read back as zeros.
#
# QEMU's isa-debug-exit turns the guest's value v into exit status (v<<1)|1:
# exit(0) -> 1, exit(2) -> 5. Exit 77 (ctest: skipped) only when
# qemu-system-x86_64 or /dev/kvm is absent. Needs the target `balloon` built.
set -u

build=${1:?usage: balloon_qemu_test.sh <build dir>}
balloon=$build/examples/balloon.elf
qemu=$(command -v qemu-system-x86_64 || true)

if [[ -z $qemu ]]; then
  echo "SKIPPED: qemu-system-x86_64 is not installed; the balloon guest check did not run" >&2
  exit 77
fi
if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
  echo "SKIPPED: /dev/kvm is absent or not accessible; the balloon guest check did not run" >&2
  exit 77
fi
if [[ ! -f $balloon ]]; then
  echo "FAIL: $balloon is missing (build the target balloon)" >&2
  exit 1
fi

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
failures=0

# run <name> <want status> <cmdline> <regex for the log> [qemu args...]
run() {
  local name=$1 want=$2 cmdline=$3 re=$4
  shift 4
  local log=$log_dir/$name.log status
  # acpi=off: microvm then names its virtio-mmio windows on the command line.
  timeout 300 "$qemu" -M microvm,acpi=off -accel kvm -cpu host,arch-capabilities=off -m 512M -nographic -no-reboot \
    -kernel "$balloon" -append "$cmdline" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -global virtio-mmio.force-legacy=false "$@" </dev/null >"$log" 2>&1
  status=$?
  if [[ $status -eq $want ]] && grep -aEq "$re" "$log"; then
    echo "PASS [$name]: $(grep -a '^RESULT ' "$log" | tail -n 1 | tr -d '\r')"
  else
    echo "FAIL [$name]: status $status (want $want), log does not match /$re/ or status differs" >&2
    cat "$log" >&2
    failures=$((failures + 1))
  fi
}

run report 1 "mib=32 rounds=3" \
  '^RESULT \{"guest":"balloon","ok":true,"mib":32,"rounds":3,"reported_pages":12288,"errors":0\}' \
  -device virtio-balloon-device,free-page-reporting=on
run small-chunks 1 "mib=8 rounds=2 chunk_kib=64" \
  '"ok":true,.*"reported_pages":2048,"errors":0' \
  -device virtio-balloon-device,free-page-reporting=on
# A balloon without F_REPORTING: the guest says so and exits 2.
run no-reporting 5 "mib=8 rounds=1" 'does not offer VIRTIO_BALLOON_F_REPORTING' \
  -device virtio-balloon-device
# No balloon at all: exit 2 with an error.
run no-device 5 "mib=8 rounds=1" 'no virtio-balloon'

if [[ $failures -ne 0 ]]; then
  echo "balloon_qemu_test: $failures check(s) failed" >&2
  exit 1
fi
echo "balloon_qemu_test: all checks passed"
