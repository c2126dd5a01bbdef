#!/usr/bin/env bash
# fio_peer.sh DIR: what the disk under DIR does with the same kind of I/O swapvisor
# issues, through the same interface (io_uring, O_DIRECT), so swap_bench's numbers
# can be read against the device's own:
#   - 4 KiB random read at queue depth 1: clat p50/p99 in us (peer of a swap-in
#     fault: one page read, nothing else in flight; compare swap_bench B1/B2), and
#     next to it the per-I/O time with its submission: 1/IOPS (us_per_io) and the
#     total latency p50 (lat = submission + completion). At QD1 one I/O's wall time
#     is 1/IOPS, which is what a swap-in pays; clat leaves out the submission
#     (io_uring_enter, the block layer up to the device): issue #18 measured 18.8 us
#     clat p50 against 44.8 us per I/O on the development machine;
#   - 1 MiB sequential write at QD1 and at QD8: MiB/s (peer of swap-out: swapvisor
#     writes contiguous runs of up to 1 MiB; compare swap_bench A1/A2), and 256 KiB
#     at QD1, the exact shape of swap_bench A2 (one 64-page batch at a time).
# Prints a table and one JSON line (prefix "JSON "). Env: FIO_RUNTIME (s, default 10),
# FIO_SIZE (file size, default 1G).
set -euo pipefail

dir=${1:?usage: fio_peer.sh DIR}
runtime=${FIO_RUNTIME:-10}
size=${FIO_SIZE:-1G}
command -v fio >/dev/null || { echo "fio_peer: fio not installed" >&2; exit 77; }
fstype=$(stat -f -c %T "$dir")
if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
  echo "fio_peer: $dir is on $fstype: need a real disk" >&2
  exit 2
fi

file="$dir/swv-fio-peer-$$.dat"
out=$(mktemp -d)
trap 'rm -f "$file"; rm -rf "$out"' EXIT

common=(--filename="$file" --size="$size" --ioengine=io_uring --direct=1 --time_based
        --runtime="$runtime" --ramp_time=1 --output-format=json)

# Lay the file out with real data first, so reads hit written blocks (as swap-ins do).
fio --name=layout --filename="$file" --size="$size" --ioengine=io_uring --direct=1 --rw=write \
    --bs=1M --iodepth=8 --output-format=json >/dev/null
fio --name=randread4k "${common[@]}" --rw=randread --bs=4k --iodepth=1 --lat_percentiles=1 >"$out/rr.json"
fio --name=seqwrite1m_qd1 "${common[@]}" --rw=write --bs=1M --iodepth=1 >"$out/sw1.json"
fio --name=seqwrite1m_qd8 "${common[@]}" --rw=write --bs=1M --iodepth=8 >"$out/sw8.json"
fio --name=seqwrite256k_qd1 "${common[@]}" --rw=write --bs=256k --iodepth=1 >"$out/sw256.json"
# The reclaimer's shape: 2 MiB batches of 1 MiB runs, both in flight.
fio --name=seqwrite1m_qd2 "${common[@]}" --rw=write --bs=1M --iodepth=2 >"$out/sw1q2.json"
# The copy peer of swapoff: read the bytes, write them elsewhere (1 MiB, QD2 each way).
fio --name=seqread1m_qd2 "${common[@]}" --rw=read --bs=1M --iodepth=2 >"$out/sr1q2.json"

python3 - "$out" "$dir" <<'PY'
import json, sys
out, d = sys.argv[1], sys.argv[2]
def job(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)["jobs"][0]
rr = job("rr")["read"]
pct = rr["clat_ns"]["percentile"]
res = {
    "bench": "fio_peer", "dir": d,
    "randread_4k_qd1_iops": round(rr["iops"], 1),
    "randread_4k_qd1_clat_p50_us": pct["50.000000"] / 1000,
    "randread_4k_qd1_clat_p99_us": pct["99.000000"] / 1000,
    "randread_4k_qd1_clat_mean_us": round(rr["clat_ns"]["mean"] / 1000, 1),
    # Per-I/O time with submission: at QD1, 1/IOPS; and the total latency's p50.
    "randread_4k_qd1_us_per_io": round(1e6 / rr["iops"], 1) if rr["iops"] else None,
    "randread_4k_qd1_lat_p50_us": (rr["lat_ns"].get("percentile") or {}).get("50.000000", 0) / 1000 or None,
    "seqwrite_1m_qd1_mib_s": round(job("sw1")["write"]["bw_bytes"] / 2**20, 1),
    "seqwrite_1m_qd8_mib_s": round(job("sw8")["write"]["bw_bytes"] / 2**20, 1),
    "seqwrite_256k_qd1_mib_s": round(job("sw256")["write"]["bw_bytes"] / 2**20, 1),
    "seqwrite_1m_qd2_mib_s": round(job("sw1q2")["write"]["bw_bytes"] / 2**20, 1),
    "seqread_1m_qd2_mib_s": round(job("sr1q2")["read"]["bw_bytes"] / 2**20, 1),
}
# ns to copy one 4 KiB page at those rates: read it, then write it to another file.
res["copy_ns_per_page"] = round(4096e9 / (res["seqread_1m_qd2_mib_s"] * 2**20) + 4096e9 / (res["seqwrite_1m_qd2_mib_s"] * 2**20), 1)
print(f"{'metric':40} {'value':>10}")
for k, v in res.items():
    if k not in ("bench", "dir"):
        print(f"{k:40} {v:>10}")
print("JSON " + json.dumps(res, separators=(",", ":")))
PY
