// The one run builder of the swap layer (swap/README.md#io-batches): a batch of
// 4 KiB pages, each with its device, slot and buffer, becomes contiguous device runs,
// each run one BlockIo, and every finished run hands its outcome to each page it
// carried. write_out, batched read_in and both halves of a swapoff batch (read the
// old slots, write the new ones) go through here; nothing else builds BlockIos.
//
// A run is a maximal stretch of pages that are neighbours in the batch AND
//   - on the same device,
//   - in consecutive slots (slot k+1 follows slot k),
//   - in consecutive buffers (page k+1's buffer starts where page k's ends: a run is
//     one BlockIo, whose buffer is one span; pages scattered in memory are never
//     copied into a bounce buffer here, they simply start a new run),
//   - and at most max_run_pages long.
// Callers order pages so that neighbours merge (write_out: allocation order, which
// is slot order within a device; read_in and swapoff: sorted by device and slot).
//
// Threads: stateless; runs on the caller's thread and io::Ring. The caller holds a
// device reference (SwapDeviceRef or a Reservation) on every device named in the
// batch for the whole call.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "io/block_device.hpp"
#include "io/ring.hpp"
#include "swap/types.hpp"

namespace swapvisor::swap {

// One page of a batch: where it lives and the memory it moves from (write) or to (read).
struct PageIo {
    io::BlockDevice* device;  // borrowed; the caller holds a reference on it
    SlotIdx slot;
    std::byte* buf;           // 4 KiB, aligned to the device's logical block
};

// Pages [first, first + count) of a batch, one BlockIo.
struct PageRun {
    std::size_t first;
    std::size_t count;
    friend constexpr bool operator==(const PageRun&, const PageRun&) = default;
};

// The runs of a batch, in batch order (the rules in the file comment). Pages on a
// device in `page_by_page` (one whose merges_runs() is false: a memory tier) are one
// run each.
std::vector<PageRun> plan_runs(std::span<const PageIo> pages, std::uint32_t max_run_pages,
                               std::span<const io::BlockDevice* const> page_by_page = {});

// Read or write every page: one BlockIo per run, and all runs on one device go to
// that device in one submit on `ring` (one submit per device, devices in order of
// first appearance). errors[i] becomes nullopt when page i's run moved all its bytes,
// rejected when a memory tier refused it (-EMSGSIZE, -ENOBUFS), no_space on ENOSPC,
// io_failed otherwise (an op error, a short transfer, or a batch the device refused
// or whose ring failed). errors.size() must equal pages.size().
void run_page_io(io::Ring& ring, io::IoKind kind, std::span<const PageIo> pages, std::uint32_t max_run_pages,
                 std::span<std::optional<Errc>> errors);

}  // namespace swapvisor::swap
