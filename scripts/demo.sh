#!/usr/bin/env bash
# The main demo (README): install, build, then run a memtouch guest whose 768 MiB
# working set is overcommitted onto swap (1 GiB VM, 192 MiB resident limit, two swap
# files), and while it runs remove the fuller swap file live through the control
# socket. The guest verifies every byte it wrote; the VM must exit 0 with errors == 0.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
if [ "${SWV_SKIP_INSTALL:-0}" != 1 ]; then bash scripts/install-deps.sh; fi
bash scripts/build.sh "$here/build" -DSWV_BUILD_TESTS=OFF -DSWV_BUILD_BENCH=OFF
bin=$here/build/swapvisor
dir=${SWV_DEMO_DIR:-/var/tmp/swapvisor-demo}
rm -rf "$dir"; mkdir -p "$dir"
sock=$dir/control.sock
# On exit: stop the VM if still running and delete the swap files (logs and
# stats.json stay in $dir).
cleanup() { [ -n "${vm:-}" ] && kill "$vm" 2>/dev/null; wait 2>/dev/null; rm -f "$dir"/*.swap; }
trap cleanup EXIT

echo "== launching: 1 GiB guest, 192 MiB resident limit, swap a (priority 10) + b (priority 5)"
"$bin" run --kernel build/examples/memtouch.elf --name demo --memory 1G --resident-limit 192M \
  --swap "$dir/a.swap,size=1G,priority=10" --swap "$dir/b.swap,size=1G,priority=5" \
  --control "$sock" --stats-json "$dir/stats.json" --cmdline "mib=768 passes=4 mode=seq" \
  > "$dir/guest.log" 2>&1 &
vm=$!
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$dir/guest.log"; echo "demo: control socket never appeared"; exit 1; }

# Let the guest push a good part of its memory out to swap a.
for _ in $(seq 1 300); do
  used=$("$bin" ctl --socket "$sock" --json status | python3 -c 'import json,sys; r=json.loads(sys.stdin.readlines()[-1]); print(r["swap"][0]["used_slots"])' 2>/dev/null || echo 0)
  [ "$used" -ge 50000 ] && break
  kill -0 "$vm" 2>/dev/null || break
  sleep 0.2
done
echo "== status before swapoff"
"$bin" ctl --socket "$sock" status
echo "== swapoff $dir/a.swap while the guest runs"
"$bin" ctl --socket "$sock" swapoff "$dir/a.swap"
echo "== status after swapoff"
"$bin" ctl --socket "$sock" status
echo "== swapoff of the last device: its pages fit neither elsewhere nor in 192 MiB, so it is refused"
if "$bin" ctl --socket "$sock" swapoff "$dir/b.swap"; then echo "demo: the last device was removed"; exit 1; fi
set +e
wait "$vm"; rc=$?; vm=
set -e
echo "== guest output"
cat "$dir/guest.log"
echo "== final counters ($dir/stats.json)"
python3 -m json.tool "$dir/stats.json"
grep -q 'RESULT {"guest":"memtouch","ok":true' "$dir/guest.log" || { echo "demo: guest did not report ok"; exit 1; }
[ "$rc" -eq 0 ] || { echo "demo: swapvisor exited $rc"; exit 1; }
echo "demo: ok — guest verified every page, swap file a removed live"
