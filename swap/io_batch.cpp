// The run builder (swap/io_batch.hpp, swap/README.md#io-batches): pages -> runs ->
// one BlockIo per run, one submit per device -> a per-page outcome. A page's outcome
// is its run's: a run either moved every byte or none of its pages is trusted.
#include "swap/io_batch.hpp"

#include <cerrno>

#include <algorithm>

#include "swap/swap_device.hpp"

namespace swapvisor::swap {

namespace {

// Whether page `next` continues the run that page `prev` (its batch neighbour) is in.
bool continues(const PageIo& prev, const PageIo& next) {
    return next.device == prev.device && prev.slot.checked_add(1) == std::optional(next.slot) &&
           next.buf == prev.buf + kSlotSize;
}

}  // namespace

std::vector<PageRun> plan_runs(std::span<const PageIo> pages, std::uint32_t max_run_pages,
                               std::span<const io::BlockDevice* const> page_by_page) {
    SWV_ASSERT(max_run_pages > 0, "plan_runs: zero max_run_pages");
    std::vector<PageRun> runs;
    for (std::size_t i = 0; i < pages.size(); ++i) {
        if (!runs.empty() && runs.back().count < max_run_pages && continues(pages[i - 1], pages[i]) &&
            std::find(page_by_page.begin(), page_by_page.end(), pages[i].device) == page_by_page.end()) {
            runs.back().count++;
        } else {
            runs.push_back(PageRun{i, 1});
        }
    }
    return runs;
}

void run_page_io(io::Ring& ring, io::IoKind kind, std::span<const PageIo> pages, std::uint32_t max_run_pages,
                 std::span<std::optional<Errc>> errors) {
    SWV_ASSERT(errors.size() == pages.size(), "run_page_io: one result per page");
    SWV_ASSERT(kind != io::IoKind::fsync, "run_page_io: pages are read or written");
    // Devices that store page by page (a memory tier) get one op per page.
    std::vector<const io::BlockDevice*> page_by_page;
    for (const PageIo& p : pages) {
        if (!p.device->merges_runs() &&
            std::find(page_by_page.begin(), page_by_page.end(), p.device) == page_by_page.end())
            page_by_page.push_back(p.device);
    }
    const std::vector<PageRun> runs = plan_runs(pages, max_run_pages, page_by_page);

    // Devices in order of first appearance; a batch names a handful at most.
    std::vector<io::BlockDevice*> devices;
    for (const PageRun& run : runs) {
        io::BlockDevice* dev = pages[run.first].device;
        if (std::find(devices.begin(), devices.end(), dev) == devices.end()) devices.push_back(dev);
    }

    std::vector<io::BlockIo> ios;
    std::vector<const PageRun*> carried;  // carried[k]: the run ios[k] moves
    for (io::BlockDevice* dev : devices) {
        ios.clear();
        carried.clear();
        for (const PageRun& run : runs) {
            const PageIo& head = pages[run.first];
            if (head.device != dev) continue;
            ios.push_back(io::BlockIo{kind, slot_offset(head.slot), std::span(head.buf, run.count * kSlotSize), 0});
            carried.push_back(&run);
        }
        // A refused batch (misaligned, out of range) or a broken ring: no run of it
        // can be trusted, whatever its result field says.
        const bool submitted = dev->submit(ring, ios).has_value();
        for (std::size_t k = 0; k < ios.size(); ++k) {
            const bool moved = submitted && ios[k].result == static_cast<int>(ios[k].buf.size());
            // A full device is not a failing one: callers place the page elsewhere.
            // A memory tier refusing a page: the caller writes it to the next device.
            const Errc why = submitted && ios[k].result == -ENOSPC         ? Errc::no_space
                             : submitted && is_rejection(ios[k].result)   ? Errc::rejected
                                                                           : Errc::io_failed;
            const PageRun& run = *carried[k];
            for (std::size_t i = run.first; i < run.first + run.count; ++i) {
                errors[i] = moved ? std::nullopt : std::optional(why);
            }
        }
    }
}

}  // namespace swapvisor::swap
