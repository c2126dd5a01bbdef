#!/usr/bin/env bash
# nbd_bench.sh <build dir> [mib]: swapvisor swapping to an NBD export (nbdkit memory
# plugin on a Unix socket on this host) next to the same export driven by its peers
# and next to a local file (docs/PERFORMANCE.md#remote-swap-nbd).
#
#  peers (no swapvisor):
#    fio, nbd engine:       4 KiB random read at QD1 (clat p50 / p99: a swap-in's device
#                           cost) and 1 MiB sequential write at QD8 (a swap-out stream)
#    fio, io_uring O_DIRECT on a local file in /var/tmp: the same two jobs
#    nbdcopy:               MIB MiB written into the export, and read back to null:
#  swapvisor (memtouch guest, --memory 2*MIB, --resident-limit MIB/6, guest MIB):
#    mode=seq pass 1:       the guest writes MIB MiB while the reclaimer swaps out:
#                           guest MiB/s and swapped-out MiB/s over the pass
#    mode=rand pass 2:      every page touched once in random order, most of them
#                           swapped: mean guest time per page (a swap-in plus the
#                           eviction that makes room; readahead does not help here)
#  each on the NBD export and on a local file.
# Prints a table and one JSON line (prefix "JSON "). Needs nbdkit, fio, nbdcopy, /dev/kvm.
set -u
build=${1:?usage: nbd_bench.sh <build dir> [mib]}
mib=${2:-384}
bin=$build/swapvisor
guest=$build/examples/memtouch.elf
for tool in nbdkit nbdinfo fio nbdcopy python3; do
  command -v $tool >/dev/null || { echo "nbd_bench: $tool is not installed (scripts/install-deps.sh)" >&2; exit 1; }
done
[[ -w /dev/kvm ]] || { echo "nbd_bench: /dev/kvm is not accessible" >&2; exit 1; }
work=$(mktemp -d /var/tmp/swv-nbdbench.XXXXXX)
nbd_pid=
trap '[[ -n $nbd_pid ]] && kill $nbd_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
nbd_sock=$work/nbd.sock
uri="nbd+unix:///?socket=$nbd_sock"
mem=$((mib * 2))M
limit=$((mib / 6))M

start_nbd() {
  [[ -n $nbd_pid ]] && { kill $nbd_pid; wait $nbd_pid 2>/dev/null; }
  rm -f "$nbd_sock"
  nbdkit --foreground --exit-with-parent -U "$nbd_sock" memory size=$((mib * 3))M 2>>"$work/nbdkit.log" &
  nbd_pid=$!
  for _ in $(seq 1 100); do [[ -S $nbd_sock ]] && nbdinfo --size "$uri" >/dev/null 2>&1 && return; sleep 0.05; done
  echo "nbd_bench: nbdkit did not start" >&2; exit 1
}

fio_json() {  # fio_json <name> <fio args...>: prints "p50 p99 MiB/s"
  local name=$1; shift
  fio --name="$name" --output-format=json --runtime=8 --time_based "$@" 2>/dev/null | python3 -c '
import json,sys
text=sys.stdin.read()
j=json.loads(text[text.index("{"):])["jobs"][0]  # the nbd engine prints a line first
side=j["read"] if j["read"]["io_bytes"]>0 else j["write"]
pct=side["clat_ns"].get("percentile",{})
print("%.1f %.1f %.1f" % (pct.get("50.000000",0)/1000, pct.get("99.000000",0)/1000, side["bw_bytes"]/2**20))'
}

start_nbd
# Fill the export first so random reads hit data (the memory plugin answers holes
# without touching its array).
head -c $((mib * 3))M /dev/urandom >"$work/fill.bin"
t0=$(date +%s%N); nbdcopy "$work/fill.bin" "$uri"; t1=$(date +%s%N)
nbdcopy_w=$(python3 -c "print('%.1f' % ($((mib * 3)) / (($t1 - $t0) / 1e9)))")
t0=$(date +%s%N); nbdcopy "$uri" null:; t1=$(date +%s%N)
nbdcopy_r=$(python3 -c "print('%.1f' % ($((mib * 3)) / (($t1 - $t0) / 1e9)))")
read -r nbd_rr50 nbd_rr99 _ < <(fio_json rr --ioengine=nbd --uri="$uri" --rw=randread --bs=4k --iodepth=1 --size=$((mib * 3))M)
read -r _ _ nbd_sw < <(fio_json sw --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size=$((mib * 3))M)
cp "$work/fill.bin" "$work/local.bin"; rm -f "$work/fill.bin"
read -r f_rr50 f_rr99 _ < <(fio_json rr --ioengine=io_uring --direct=1 --filename="$work/local.bin" --rw=randread --bs=4k --iodepth=1 --size=$((mib * 3))M)
read -r _ _ f_sw < <(fio_json sw --ioengine=io_uring --direct=1 --filename="$work/local.bin" --rw=write --bs=1M --iodepth=8 --size=$((mib * 3))M)
rm -f "$work/local.bin"

guest_run() {  # guest_run <swap spec> <mode> <tag>: "pass1_ms pass2_ms swap_out_pages errors"
  "$bin" run --kernel "$guest" --memory $mem --resident-limit $limit --swap "$1" \
    --stats-json "$work/$3.json" --cmdline "mib=$mib passes=2 mode=$2" >"$work/$3.out" 2>"$work/$3.err" ||
    { echo "nbd_bench: guest run $3 failed" >&2; tail -5 "$work/$3.err" >&2; exit 1; }
  python3 - "$work/$3.out" "$work/$3.json" <<'EOF'
import json,re,sys
out=open(sys.argv[1]).read(); s=json.load(open(sys.argv[2]))["vms"][0]
ms=[int(m) for m in re.findall(r"pass \d+/\d+ [a-z+]+: (\d+) ms", out)]
res=json.loads(re.search(r"RESULT (\{.*\})", out).group(1))
print(ms[0], ms[1], s["swap_out_pages"], res["errors"])
EOF
}
start_nbd
read -r ns1 _ nso nerr < <(guest_run "$uri,format=yes" seq nseq)
start_nbd
read -r _ nr2 _ nerr2 < <(guest_run "$uri,format=yes" rand nrand)
read -r fs1 _ fso ferr < <(guest_run "$work/a.swap,size=$((mib * 3))M" seq fseq)
rm -f "$work/a.swap"
read -r _ fr2 _ ferr2 < <(guest_run "$work/a.swap,size=$((mib * 3))M" rand frand)

python3 - <<EOF
mib=$mib; pages=mib*256
rows=[
 ("4 KiB random read QD1, p50 / p99 (us)", "$nbd_rr50 / $nbd_rr99", "$f_rr50 / $f_rr99"),
 ("1 MiB sequential write QD8 (MiB/s)", "$nbd_sw", "$f_sw"),
 ("nbdcopy file -> export / export -> null: (MiB/s)", "$nbdcopy_w / $nbdcopy_r", "-"),
 ("swapvisor seq pass 1: guest MiB/s", "%.1f" % (mib/($ns1/1000)), "%.1f" % (mib/($fs1/1000))),
 ("swapvisor seq run: swapped out (MiB)", "%.0f" % ($nso/256), "%.0f" % ($fso/256)),
 ("swapvisor rand pass 2: mean us per page", "%.1f" % ($nr2*1000/pages), "%.1f" % ($fr2*1000/pages)),
 ("guest errors", "$nerr+$nerr2", "$ferr+$ferr2"),
]
print("%-50s %22s %22s" % ("", "NBD (nbdkit memory, unix)", "local file (/var/tmp)"))
for r in rows: print("%-50s %22s %22s" % r)
import json
print("JSON " + json.dumps({"mib": mib, "nbd": {"randread_4k_qd1_p50_us": $nbd_rr50, "randread_4k_qd1_p99_us": $nbd_rr99,
  "write_1m_qd8_mib_s": $nbd_sw, "nbdcopy_write_mib_s": $nbdcopy_w, "nbdcopy_read_mib_s": $nbdcopy_r,
  "swv_seq_pass1_ms": $ns1, "swv_swap_out_pages": $nso, "swv_rand_pass2_ms": $nr2},
  "file": {"randread_4k_qd1_p50_us": $f_rr50, "randread_4k_qd1_p99_us": $f_rr99, "write_1m_qd8_mib_s": $f_sw,
  "swv_seq_pass1_ms": $fs1, "swv_swap_out_pages": $fso, "swv_rand_pass2_ms": $fr2}}))
EOF
