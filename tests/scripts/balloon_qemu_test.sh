#!/usr/bin/env bash
# balloon_qemu_test.sh <build dir>: runs the balloon guest against QEMU's own
# virtio-balloon (microvm, virtio-mmio version 2, free-page-reporting=on) as an
# outside check of the guest's virtio driver (examples/runtime/virtio.c): probing
# from the virtio_mmio.device= entry QEMU appends, feature negotiation, the
# reporting queue index when statsq is offered (QEMU: queue 3; swapvisor: 2),
# split-ring handling, and that reported pages read back as zeros. One run
# drives QEMU's balloon through QMP (python3): inflate to a target and back with
# QEMU as the device, the guest's statistics read back with qom-get guest-stats
# (QEMU's own parser: a plausible MEMTOT), and the guest's deflate-on-OOM.
#
# QEMU's isa-debug-exit turns the guest's value v into exit status (v<<1)|1:
# exit(0) -> 1, exit(2) -> 5. KVM where /dev/kvm is usable, else TCG. Exit 77
# (ctest: skipped) only when qemu-system-x86_64 is absent. Needs the target `balloon` built.
set -u

build=${1:?usage: balloon_qemu_test.sh <build dir>}
balloon=$build/examples/balloon.elf
qemu=$(command -v qemu-system-x86_64 || true)

if [[ -z $qemu ]]; then
  echo "SKIPPED: qemu-system-x86_64 is not installed; the balloon guest check did not run" >&2
  exit 77
fi
if [[ -r /dev/kvm && -w /dev/kvm ]]; then
  accel=(-accel kvm -cpu host,arch-capabilities=off)
else
  accel=(-accel tcg -cpu max)
  echo "NOTE: /dev/kvm is absent or not accessible: the balloon guest runs under TCG (emulated)" >&2
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
  timeout 300 "$qemu" -M microvm,acpi=off "${accel[@]}" -m 512M -nographic -no-reboot \
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
  '^RESULT \{"guest":"balloon","ok":true,"mib":32,"rounds":3,.*"reported_pages":12288,"errors":0\}' \
  -device virtio-balloon-device,free-page-reporting=on
run small-chunks 1 "mib=8 rounds=2 chunk_kib=64" \
  '"ok":true,.*"reported_pages":2048,"errors":0' \
  -device virtio-balloon-device,free-page-reporting=on
# A balloon without F_REPORTING: the guest says so and exits 2.
run no-reporting 5 "mib=8 rounds=1" 'does not offer VIRTIO_BALLOON_F_REPORTING' \
  -device virtio-balloon-device
# No balloon at all: exit 2 with an error.
run no-device 5 "mib=8 rounds=1" 'no virtio-balloon'

# QMP: the guest's pool is 64 MiB of a 512 MiB VM. Inflate by 32 MiB (QEMU's
# `balloon` takes the guest's new size), read the guest's statistics through
# QEMU's parser, deflate back (the guest's cycle=1 then ends), then inflate by
# 48 MiB: the guest's oom_mib=32 needs 4096 pages of those back and takes them
# itself (DEFLATE_ON_OOM).
cat >"$log_dir/qmp.py" <<'PY'
import json, os, re, socket, sys, time

sock_path, log_path = sys.argv[1], sys.argv[2]
MIB = 1 << 20

def fail(msg):
    sys.exit(f"qmp: FAIL: {msg}")

deadline = time.time() + 30
while not os.path.exists(sock_path):
    if time.time() > deadline:
        fail("no QMP socket")
    time.sleep(0.1)
s = socket.socket(socket.AF_UNIX)
s.connect(sock_path)
f = s.makefile("rw")
f.readline()  # greeting

def qmp(cmd, **args):
    f.write(json.dumps({"execute": cmd, "arguments": args} if args else {"execute": cmd}) + "\n")
    f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" in r:
            continue
        if "error" in r:
            fail(f"{cmd}: {r['error']}")
        return r["return"]

def wait_log(pattern, seconds=120):
    end = time.time() + seconds
    while time.time() < end:
        with open(log_path, errors="replace") as l:
            if re.search(pattern, l.read()):
                return
        time.sleep(0.1)
    fail(f"no /{pattern}/ in the guest's output")

def wait_actual(size, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        if qmp("query-balloon")["actual"] == size:
            return
        time.sleep(0.1)
    fail(f"query-balloon actual stayed {qmp('query-balloon')['actual']}, want {size}")

qmp("qmp_capabilities")
qmp("qom-set", path="/machine/peripheral/bal", property="guest-stats-polling-interval", value=1)
wait_log(r"round 1/")
qmp("balloon", value=512 * MIB - 32 * MIB)
wait_actual(512 * MIB - 32 * MIB)
print("qmp: inflated by 32 MiB")
end = time.time() + 30
while True:
    g = qmp("qom-get", path="/machine/peripheral/bal", property="guest-stats")
    total = g["stats"].get("stat-total-memory", -1)
    if g["last-update"] > 0 and total > 0:
        break
    if time.time() > end:
        fail(f"no guest statistics in QEMU: {g}")
    time.sleep(0.2)
st = g["stats"]
if not 511 * MIB <= total <= 512 * MIB:
    fail(f"stat-total-memory {total} is not the guest's 512 MiB")
if not 0 < st["stat-free-memory"] < total or st["stat-available-memory"] != st["stat-free-memory"]:
    fail(f"implausible free / available memory: {st}")
if st["stat-major-faults"] != 0 or st["stat-swap-in"] != 0:
    fail(f"the guest has no swap and no faults: {st}")
print(f"qmp: guest-stats total {total} free {st['stat-free-memory']} (last-update {g['last-update']})")
qmp("balloon", value=512 * MIB)
wait_actual(512 * MIB)
print("qmp: deflated back")
wait_log(r"oom: waiting")
qmp("balloon", value=512 * MIB - 48 * MIB)
wait_log(r"oom: deflated 4096 pages unasked")
print("qmp: the guest deflated 4096 pages on OOM")
PY

run_qmp() {
  local name=$1 want=$2 cmdline=$3 re=$4
  shift 4
  local log=$log_dir/$name.log sock=$log_dir/$name.qmp status qmp_status
  timeout 300 "$qemu" -M microvm,acpi=off "${accel[@]}" -m 512M -nographic -no-reboot \
    -kernel "$balloon" -append "$cmdline" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -global virtio-mmio.force-legacy=false -qmp "unix:$sock,server=on,wait=off" "$@" </dev/null >"$log" 2>&1 &
  local pid=$!
  python3 "$log_dir/qmp.py" "$sock" "$log" >"$log_dir/$name.qmp.out" 2>&1
  qmp_status=$?
  [[ $qmp_status -eq 0 ]] || kill "$pid" 2>/dev/null
  wait "$pid"
  status=$?
  if [[ $qmp_status -eq 0 && $status -eq $want ]] && grep -aEq "$re" "$log"; then
    echo "PASS [$name]: $(tr '\n' ' ' <"$log_dir/$name.qmp.out")$(grep -a '^RESULT ' "$log" | tail -n 1 | tr -d '\r')"
  else
    echo "FAIL [$name]: status $status (want $want), QMP driver $qmp_status, log does not match /$re/" >&2
    cat "$log_dir/$name.qmp.out" "$log" >&2
    failures=$((failures + 1))
  fi
}

run_qmp stats-inflate-oom 1 "mib=8 rounds=2 pool_mib=64 cycle=1 oom_mib=32" \
  '"ok":true,.*"oom_deflated_pages":4096,.*"errors":0' \
  -device virtio-balloon-device,id=bal,free-page-reporting=on,deflate-on-oom=on

if [[ $failures -ne 0 ]]; then
  echo "balloon_qemu_test: $failures check(s) failed" >&2
  exit 1
fi
echo "balloon_qemu_test: all checks passed"
