#!/usr/bin/env python3
# make_virtqueue_seeds.py DIR: writes the seed corpus of virtqueue_fuzz
# (tests/fuzz/corpus/virtqueue) in the input layout virtqueue_fuzz.cpp documents:
# a 28-byte header (queue, features, QueueNum, three ring addresses) and the guest
# bytes written at GPA 0x10000. Each seed is one well-formed request of each balloon
# queue or one way a driver can get a queue wrong. Run by hand; the output is committed.
import os
import struct
import sys

WINDOW = 0x10000
DESC, AVAIL, USED = WINDOW, WINDOW + 0x100, WINDOW + 0x200   # size 8: 128 + 22 + 70 bytes
BUF = WINDOW + 0x400                                            # PFN buffers
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
INFLATE, DEFLATE, REPORTING, BARE = 0, 1, 2, 0x80


def seed(queue, descs, heads, *, reporting=True, size=8, avail_idx=None, extra=b"", rings=(DESC, AVAIL, USED)):
    guest = bytearray(0x400)
    for i, (addr, length, flags, nxt) in enumerate(descs):
        struct.pack_into("<QIHH", guest, 16 * i, addr, length, flags, nxt)
    avail = AVAIL - WINDOW
    struct.pack_into("<HH", guest, avail, 0, len(heads) if avail_idx is None else avail_idx)
    for slot, head in enumerate(heads):
        struct.pack_into("<H", guest, avail + 4 + 2 * slot, head)
    header = struct.pack("<BBHQQQ", queue, 1 if reporting else 0, size, *rings)
    return header + bytes(guest) + extra


def pfns(*frames):
    return struct.pack(f"<{len(frames)}I", *frames)


SEEDS = {
    # Free page report: one chain of two writable ranges (4 KiB and 8 KiB).
    "report-two-ranges": seed(REPORTING, [(0x100000, 0x1000, F_WRITE | F_NEXT, 1), (0x102000, 0x2000, F_WRITE, 0)], [0]),
    # Report ranges that overlap, one misaligned, one past RAM: all refused.
    "report-refused": seed(REPORTING, [(0x100000, 0x2000, F_WRITE | F_NEXT, 1), (0x101000, 0x1000, F_WRITE | F_NEXT, 2),
                                       (0x100800, 0x1000, F_WRITE | F_NEXT, 3), (0x1ff000, 0x2000, F_WRITE, 0)], [0]),
    # Inflate / deflate: one readable buffer of PFNs (two in RAM, one beyond it).
    "inflate-pfns": seed(INFLATE, [(BUF, 12, 0, 0)], [0], reporting=False, extra=pfns(0x100, 0x101, 0x90000)),
    "deflate-pfns": seed(DEFLATE, [(BUF, 8, 0, 0)], [0], reporting=False, extra=pfns(0x100, 0x101)),
    # Two chains in a row on the bare queue (the second of two descriptors).
    "bare-two-chains": seed(BARE, [(0x1000, 16, 0, 0), (0x2000, 16, F_NEXT, 2), (0x3000, 16, F_WRITE, 0)], [0, 1]),
    # Malformed queues: a loop, an index past the table, INDIRECT, readable after
    # writable, more buffers than the queue holds, a size that is not a power of two.
    "malformed-loop": seed(REPORTING, [(0x100000, 0x1000, F_WRITE | F_NEXT, 1), (0x101000, 0x1000, F_WRITE | F_NEXT, 0)], [0]),
    "malformed-next-index": seed(BARE, [(0x1000, 16, F_NEXT, 9)], [0]),
    "malformed-indirect": seed(BARE, [(0x1000, 16, F_INDIRECT, 0)], [0]),
    "malformed-read-after-write": seed(BARE, [(0x1000, 16, F_WRITE | F_NEXT, 1), (0x2000, 16, 0, 0)], [0]),
    "malformed-avail-index": seed(BARE, [(0x1000, 16, 0, 0)], [0], avail_idx=9),
    "malformed-size": seed(BARE, [(0x1000, 16, 0, 0)], [0], size=6),
    "malformed-ring-outside-ram": seed(BARE, [], [], rings=(DESC, AVAIL, 0x1ffff0)),
}

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
