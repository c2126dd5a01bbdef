// VirtioBalloon: queue numbering, the range checks of a free page report and of
// inflate PFNs, and the config space (vmm/devices/virtio_balloon.hpp).
#include "vmm/devices/virtio_balloon.hpp"

#include <algorithm>
#include <vector>

#include <spdlog/spdlog.h>

namespace swapvisor::vmm::devices {

using guestmem::Gpa;
using guestmem::GpaRange;
using guestmem::kPageSize;

unsigned VirtioBalloon::queue_index_of(BalloonQueue queue, std::uint64_t offered) {
    unsigned index = 0;
    // Walk the spec's order, giving an index only to queues that exist.
    const struct {
        BalloonQueue queue;
        std::uint64_t feature;  // 0: always present
    } order[] = {{BalloonQueue::inflate, 0},
                 {BalloonQueue::deflate, 0},
                 {BalloonQueue::stats, kBalloonFStatsVq},
                 {BalloonQueue::free_page_hint, kBalloonFFreePageHint},
                 {BalloonQueue::reporting, kBalloonFReporting}};
    for (const auto& q : order) {
        if (q.queue == queue) return index;
        if (q.feature == 0 || (offered & q.feature)) ++index;
    }
    return index;
}

unsigned VirtioBalloon::queue_count(std::uint64_t features) const {
    // reporting_vq exists only once the driver accepted F_REPORTING.
    return (features & kBalloonFReporting) ? queue_index_of(BalloonQueue::reporting, device_features()) + 1 : 2;
}

void VirtioBalloon::read_config(std::uint64_t offset, std::span<std::byte> data) {
    std::uint32_t fields[2] = {target_pages_.load(), actual_pages_.load()};
    for (std::size_t i = 0; i < data.size(); ++i) {
        std::uint64_t at = offset + i;
        data[i] = at < sizeof fields ? static_cast<std::byte>(fields[at / 4] >> (8 * (at % 4))) : std::byte{0};
    }
}

void VirtioBalloon::write_config(std::uint64_t offset, std::span<const std::byte> data) {
    // Only `actual` (bytes 4..7) is driver-writable; a partial write updates those bytes.
    std::uint32_t actual = actual_pages_.load();
    for (std::size_t i = 0; i < data.size(); ++i) {
        std::uint64_t at = offset + i;
        if (at < 4 || at >= 8) continue;
        unsigned shift = 8 * static_cast<unsigned>(at - 4);
        actual = (actual & ~(0xffu << shift)) | (std::uint32_t{static_cast<std::uint8_t>(data[i])} << shift);
    }
    actual_pages_.store(actual);
}

void VirtioBalloon::reset() { actual_pages_.store(0); }

Result<void> VirtioBalloon::process_queue(unsigned index, SplitQueue& queue, std::uint64_t features) {
    const std::uint64_t offered = device_features();
    BalloonQueue which = BalloonQueue::inflate;
    if (index == queue_index_of(BalloonQueue::inflate, offered)) {
        which = BalloonQueue::inflate;
    } else if (index == queue_index_of(BalloonQueue::deflate, offered)) {
        which = BalloonQueue::deflate;
    } else if ((features & kBalloonFReporting) && index == queue_index_of(BalloonQueue::reporting, offered)) {
        which = BalloonQueue::reporting;
    } else {
        SWV_ASSERT(false, "balloon: notify for a queue the transport says does not exist");
    }
    for (;;) {
        std::optional<DescriptorChain> chain = SWV_TRY(queue.pop());
        if (!chain) return {};
        if (which == BalloonQueue::reporting) {
            handle_report(*chain);
        } else {
            handle_pfns(*chain, which);
        }
        SWV_TRY(queue.push_used(chain->head, 0));
    }
}

void VirtioBalloon::discard(GpaRange range, std::atomic<std::uint64_t>& pages_counter) {
    if (auto done = mem_.discard(range); !done) {
        // Host-side failure (e.g. a hole punch failed): the pages stay, which is
        // always safe; the guest's request was valid, so it is not refused.
        discard_errors_.fetch_add(1, std::memory_order_relaxed);
        spdlog::warn("virtio-balloon: discard [{:#x}, +{:#x}) failed: {}", range.gpa.value(), range.len,
                     done.error().message());
        return;
    }
    pages_counter.fetch_add(range.len / kPageSize, std::memory_order_relaxed);
}

void VirtioBalloon::handle_report(const DescriptorChain& chain) {
    struct Candidate {
        GpaRange range;
        bool ok;
    };
    std::vector<Candidate> ranges;
    ranges.reserve(chain.descriptors.size());
    for (const VirtqDescriptor& d : chain.descriptors) {
        GpaRange r{d.addr, d.len};
        bool ok = d.len != 0 && guestmem::page_offset(d.addr) == 0 && d.len % kPageSize == 0 &&
                  ram_contains(mem_, d.addr, d.len);  // also refuses addr + len overflowing
        ranges.push_back({r, ok});
    }
    // Overlap within the request: both ranges of an overlapping pair are refused, as
    // neither can be trusted. Sort a copy of the valid ones by start; a range overlaps
    // an earlier one iff it starts below the furthest end seen so far.
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < ranges.size(); ++i)
        if (ranges[i].ok) order.push_back(i);
    std::sort(order.begin(), order.end(),
              [&](std::size_t a, std::size_t b) { return ranges[a].range.gpa < ranges[b].range.gpa; });
    std::uint64_t max_end = 0;
    std::size_t max_end_owner = 0;
    bool any = false;
    std::vector<bool> overlapping(ranges.size(), false);
    for (std::size_t i : order) {
        std::uint64_t start = ranges[i].range.gpa.value();
        std::uint64_t end = start + ranges[i].range.len;  // no overflow: checked above
        if (any && start < max_end) {
            overlapping[i] = true;
            overlapping[max_end_owner] = true;
        }
        if (!any || end > max_end) {
            max_end = end;
            max_end_owner = i;
        }
        any = true;
    }
    for (std::size_t i = 0; i < ranges.size(); ++i) {
        if (!ranges[i].ok || overlapping[i]) {
            refused_ranges_.fetch_add(1, std::memory_order_relaxed);
            continue;
        }
        reported_ranges_.fetch_add(1, std::memory_order_relaxed);
        discard(ranges[i].range, reported_pages_);
    }
}

void VirtioBalloon::handle_pfns(const DescriptorChain& chain, BalloonQueue which) {
    std::vector<std::uint32_t> pfns;
    for (const VirtqDescriptor& d : chain.descriptors) {
        // A PFN buffer is device-readable, a whole number of u32s, small and in RAM;
        // otherwise the whole buffer is refused (one count) and nothing in it used.
        if (d.device_writable || d.len % 4 != 0 || d.len > kMaxPfnBufferBytes || !ram_contains(mem_, d.addr, d.len)) {
            refused_ranges_.fetch_add(1, std::memory_order_relaxed);
            continue;
        }
        pfns.resize(d.len / 4);
        if (auto got = mem_.read(d.addr, std::as_writable_bytes(std::span(pfns))); !got) {
            refused_ranges_.fetch_add(1, std::memory_order_relaxed);
            continue;
        }
        for (std::uint32_t pfn : pfns) {
            Gpa page(std::uint64_t{pfn} << kBalloonPfnShift);
            if (!ram_contains(mem_, page, kPageSize)) {
                refused_ranges_.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            if (which == BalloonQueue::deflate) {
                deflated_pages_.fetch_add(1, std::memory_order_relaxed);  // the next touch faults a zero page in
            } else {
                discard(GpaRange{page, kPageSize}, inflated_pages_);
            }
        }
    }
}

BalloonStats VirtioBalloon::stats() const {
    BalloonStats s;
    s.reported_pages = reported_pages_.load(std::memory_order_relaxed);
    s.reported_ranges = reported_ranges_.load(std::memory_order_relaxed);
    s.refused_ranges = refused_ranges_.load(std::memory_order_relaxed);
    s.inflated_pages = inflated_pages_.load(std::memory_order_relaxed);
    s.deflated_pages = deflated_pages_.load(std::memory_order_relaxed);
    s.discard_errors = discard_errors_.load(std::memory_order_relaxed);
    s.target_pages = target_pages_.load();
    s.actual_pages = actual_pages_.load();
    return s;
}

control::Counters VirtioBalloon::counters() const {
    const BalloonStats s = stats();
    return {{"reported_pages", s.reported_pages}, {"reported_ranges", s.reported_ranges},
            {"refused_ranges", s.refused_ranges}, {"inflated_pages", s.inflated_pages},
            {"deflated_pages", s.deflated_pages}, {"discard_errors", s.discard_errors},
            {"target_pages", s.target_pages},     {"actual_pages", s.actual_pages}};
}

}  // namespace swapvisor::vmm::devices
