// memory.pages, a memory snapshot's page table file (docs/SNAPSHOT.md#format): what
// each guest page is (zero, image, swapped, lost) and, for each swapped page in page
// order, the slot it refers to. Encoding and decoding only: no file I/O, so that the
// decoder can be fuzzed on any bytes (tests/fuzz/page_table_fuzz.cpp).
//
// Version 2 (written), little-endian:
//   0  "SWVPAGES"   8  u32 version   12 u32 devices   16 u64 pages   24 u64 refs
//   32 u64 runs   40 u8 uuid[16] x devices   then u8 kind[pages]
//   then runs x {u32 count, u32 device index}: the references in page order, device
//   by device   then refs x {u32 slot, u32 checksum}
//   last 8 bytes: xxh3-64 of everything before them
// Version 1 (read): 12 u32 0, no devices or runs; refs x {u8 uuid[16], u32 slot, u32
// checksum} right after the kinds (24 B each: 4.8 MB for a 1 GiB VM with 199k pages
// swapped, against 1.6 MB in version 2; DESIGN-NOTES 60).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "guestmem/snapshot.hpp"
#include "io/result.hpp"

namespace swapvisor::guestmem {

struct PageTableFile {
    std::uint32_t version = 0;       // the file's own
    std::vector<std::uint8_t> kinds;  // a PageKind per page
    std::vector<SlotRef> refs;        // one per swapped page, in page order
    SnapshotCounts counts;            // of kinds (bytes_written 0)
};

// Version kMemorySnapshotVersion of a table of kinds.size() pages whose swapped pages
// (in page order) refer to refs.
std::vector<std::uint8_t> encode_page_table(std::span<const std::uint8_t> kinds, std::span<const SlotRef> refs);

// Any bytes: a table of exactly `pages` pages in a version this swapvisor reads, or
// Errc::bad_snapshot naming `where` and what is wrong (never a crash, never a read
// past `bytes`, whatever the counts in it say).
Result<PageTableFile> decode_page_table(std::span<const std::uint8_t> bytes, std::uint64_t pages,
                                        const std::string& where);

}  // namespace swapvisor::guestmem
