// VirtioBalloon: queue numbering, the range checks of a free page report and of
// inflate PFNs, the statistics buffer and its poller, deflate-on-OOM accounting and
// the config space (vmm/devices/virtio_balloon.hpp).
#include "vmm/devices/virtio_balloon.hpp"

#include <algorithm>
#include <atomic>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace swapvisor::vmm::devices {

using guestmem::Gpa;
using guestmem::GpaRange;
using guestmem::kPageSize;

namespace {

class BalloonCategory final : public std::error_category {
public:
    const char* name() const noexcept override { return "virtio-balloon"; }
    std::string message(int c) const override {
        switch (static_cast<BalloonErrc>(c)) {
            case BalloonErrc::stats_length: return "statistics buffer length is not a whole non-zero number of 10-byte entries";
            case BalloonErrc::stats_too_large: return "statistics buffer longer than 2560 bytes";
            case BalloonErrc::stats_writable: return "statistics buffer has a device-writable descriptor";
            case BalloonErrc::stats_outside_ram: return "statistics buffer descriptor not inside guest RAM";
            case BalloonErrc::bad_saved_state: return "saved balloon state that no balloon can be in";
        }
        return "unknown virtio-balloon error";
    }
};

}  // namespace

const std::error_category& balloon_category() {
    static const BalloonCategory category;
    return category;
}

Result<GuestStats> parse_guest_stats(std::span<const std::byte> bytes) {
    if (bytes.empty() || bytes.size() % kBalloonStatEntryBytes != 0)
        return make_error(BalloonErrc::stats_length, "parsing balloon statistics", std::to_string(bytes.size()) + " bytes");
    GuestStats out;
    for (std::size_t at = 0; at < bytes.size(); at += kBalloonStatEntryBytes) {
        // Little endian whatever the host: the spec's le16 / le64.
        std::uint16_t tag = static_cast<std::uint16_t>(std::to_integer<unsigned>(bytes[at]) |
                                                       std::to_integer<unsigned>(bytes[at + 1]) << 8);
        std::uint64_t val = 0;
        for (unsigned i = 0; i < 8; ++i) val |= std::uint64_t{std::to_integer<std::uint8_t>(bytes[at + 2 + i])} << (8 * i);
        if (tag < kBalloonStatTags) {
            out.values[tag] = val;
        } else {
            ++out.unknown_tags;
        }
    }
    return out;
}

unsigned VirtioBalloon::queue_index_of(BalloonQueue queue, std::uint64_t negotiated) {
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
        if (q.feature == 0 || (negotiated & q.feature)) ++index;
    }
    return index;
}

unsigned VirtioBalloon::queue_count(std::uint64_t features) const {
    // Feature queues exist only once the driver accepted their feature; the
    // transport sizes its table with all offered features (the most queues).
    features &= device_features();
    if (features & kBalloonFReporting) return queue_index_of(BalloonQueue::reporting, features) + 1;
    if (features & kBalloonFStatsVq) return queue_index_of(BalloonQueue::stats, features) + 1;
    return 2;
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

void VirtioBalloon::reset() {
    // The driver's state: `actual`, the balloon it built and the buffer it lent us
    // (the queue itself is reset by the transport, so the head is simply forgotten).
    actual_pages_.store(0);
    balloon_pages_.store(0, std::memory_order_relaxed);
    stats_head_.reset();
}

Result<void> VirtioBalloon::process_queue(unsigned index, SplitQueue& queue, std::uint64_t features) {
    BalloonQueue which = BalloonQueue::inflate;
    if (index == queue_index_of(BalloonQueue::inflate, features)) {
        which = BalloonQueue::inflate;
    } else if (index == queue_index_of(BalloonQueue::deflate, features)) {
        which = BalloonQueue::deflate;
    } else if ((features & kBalloonFStatsVq) && index == queue_index_of(BalloonQueue::stats, features)) {
        which = BalloonQueue::stats;
    } else if ((features & kBalloonFReporting) && index == queue_index_of(BalloonQueue::reporting, features)) {
        which = BalloonQueue::reporting;
    } else {
        SWV_ASSERT(false, "balloon: notify for a queue the transport says does not exist");
    }
    for (;;) {
        std::optional<DescriptorChain> chain = SWV_TRY(queue.pop());
        if (!chain) return {};
        if (which == BalloonQueue::stats) {
            // The driver may lend at most one buffer (5.5.6.3). A second one while
            // we hold the first: give the older one back first, as QEMU does.
            if (stats_head_) {
                if (log_budget_.take()) spdlog::warn("virtio-balloon: a second statistics buffer while one is held");
                SWV_TRY(queue.push_used(*stats_head_, 0));
                stats_head_.reset();
            }
            handle_stats(*chain);
            stats_head_ = chain->head;  // kept until the poller wants fresh figures
            stats_queue_ = index;
            continue;
        }
        if (which == BalloonQueue::reporting) {
            handle_report(*chain);
        } else {
            handle_pfns(*chain, which, features);
        }
        SWV_TRY(queue.push_used(chain->head, 0));
    }
}

Result<void> VirtioBalloon::poll(std::span<SplitQueue> queues, std::uint64_t features) {
    (void)features;
    if (!stats_head_ || stats_queue_ >= queues.size() || !queues[stats_queue_].ready()) return {};
    SWV_TRY(queues[stats_queue_].push_used(*stats_head_, 0));
    stats_head_.reset();
    stats_requests_.fetch_add(1, std::memory_order_relaxed);
    return {};
}

Result<GuestStats> VirtioBalloon::read_stats(const DescriptorChain& chain) {
    std::uint64_t total = 0;
    for (const VirtqDescriptor& d : chain.descriptors) {
        if (d.device_writable) return make_error(BalloonErrc::stats_writable, "balloon statistics");
        if (!ram_contains(mem_, d.addr, d.len)) return make_error(BalloonErrc::stats_outside_ram, "balloon statistics");
        total += d.len;  // at most 256 descriptors of < 4 GiB: no overflow
    }
    if (total > kMaxStatsBytes)
        return make_error(BalloonErrc::stats_too_large, "balloon statistics", std::to_string(total) + " bytes");
    std::vector<std::byte> bytes(total);
    std::size_t at = 0;
    for (const VirtqDescriptor& d : chain.descriptors) {
        SWV_TRY(mem_.read(d.addr, std::span(bytes).subspan(at, d.len)));
        at += d.len;
    }
    return parse_guest_stats(bytes);
}

void VirtioBalloon::handle_stats(const DescriptorChain& chain) {
    auto stats = read_stats(chain);
    if (!stats) {
        stats_refused_.fetch_add(1, std::memory_order_relaxed);
        if (log_budget_.take()) spdlog::warn("virtio-balloon: statistics buffer refused: {}", stats.error().message());
        return;
    }
    stats_unknown_tags_.fetch_add(stats->unknown_tags, std::memory_order_relaxed);
    {
        std::lock_guard lock(guest_mutex_);
        guest_ = *stats;
        guest_at_ = std::chrono::steady_clock::now();
    }
    stats_updates_.fetch_add(1, std::memory_order_relaxed);
}

void VirtioBalloon::request_guest_stats() const {
    {
        std::lock_guard lock(poll_mutex_);
        stats_asked_ = true;
    }
    poll_cv_.notify_all();
}

bool VirtioBalloon::wait_until_stats_due(std::stop_token stop) {
    std::unique_lock lock(poll_mutex_);
    auto asked = [this] { return stats_asked_; };
    if (stats_interval_.count() > 0) {
        poll_cv_.wait_for(lock, stop, stats_interval_, asked);
    } else {
        poll_cv_.wait(lock, stop, asked);
    }
    stats_asked_ = false;
    return !stop.stop_requested();
}

BalloonStatsPoller::BalloonStatsPoller(std::shared_ptr<VirtioBalloon> balloon, std::shared_ptr<VirtioMmio> transport)
    : balloon_(std::move(balloon)), transport_(std::move(transport)) {
    SWV_ASSERT(balloon_ != nullptr && transport_ != nullptr, "balloon stats poller without its device");
    thread_ = std::jthread([this](std::stop_token stop) {
        while (balloon_->wait_until_stats_due(stop)) transport_->poll_device();
    });
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

void VirtioBalloon::handle_pfns(const DescriptorChain& chain, BalloonQueue which, std::uint64_t features) {
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
                // Nothing to undo: the next touch faults a zero page in. Only the
                // accounting: was this deflate asked for by the host's target?
                deflated_pages_.fetch_add(1, std::memory_order_relaxed);
                std::uint64_t in_balloon = balloon_pages_.load(std::memory_order_relaxed);
                if (in_balloon <= target_pages_.load()) {
                    (features & kBalloonFDeflateOnOom ? oom_deflated_pages_ : unrequested_deflated_pages_)
                        .fetch_add(1, std::memory_order_relaxed);
                }
                if (in_balloon > 0) balloon_pages_.store(in_balloon - 1, std::memory_order_relaxed);
            } else {
                balloon_pages_.fetch_add(1, std::memory_order_relaxed);
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
    s.oom_deflated_pages = oom_deflated_pages_.load(std::memory_order_relaxed);
    s.unrequested_deflated_pages = unrequested_deflated_pages_.load(std::memory_order_relaxed);
    s.balloon_pages = balloon_pages_.load(std::memory_order_relaxed);
    s.discard_errors = discard_errors_.load(std::memory_order_relaxed);
    s.stats_updates = stats_updates_.load(std::memory_order_relaxed);
    s.stats_refused = stats_refused_.load(std::memory_order_relaxed);
    s.stats_unknown_tags = stats_unknown_tags_.load(std::memory_order_relaxed);
    s.stats_requests = stats_requests_.load(std::memory_order_relaxed);
    s.target_pages = target_pages_.load();
    s.actual_pages = actual_pages_.load();
    std::lock_guard lock(guest_mutex_);
    if (guest_) {
        s.guest = guest_;
        s.guest_age = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - guest_at_);
    }
    return s;
}

BalloonState VirtioBalloon::save() const {
    BalloonState out;
    out.stats = stats();
    out.stats.guest_age.reset();
    out.stats_head = stats_head_;
    out.stats_queue = stats_queue_;
    return out;
}

Result<void> VirtioBalloon::restore(const BalloonState& state) {
    // Queue indices run 0..3 (queue_index_of); a held buffer elsewhere is corrupt.
    if (state.stats_head && state.stats_queue > 3)
        return make_error(BalloonErrc::bad_saved_state, "balloon restore",
                          fmt::format("statistics buffer held on queue {}", state.stats_queue));
    if (state.stats.guest_age)
        return make_error(BalloonErrc::bad_saved_state, "balloon restore", "a saved statistics age");
    const BalloonStats& s = state.stats;
    reported_pages_.store(s.reported_pages, std::memory_order_relaxed);
    reported_ranges_.store(s.reported_ranges, std::memory_order_relaxed);
    refused_ranges_.store(s.refused_ranges, std::memory_order_relaxed);
    inflated_pages_.store(s.inflated_pages, std::memory_order_relaxed);
    deflated_pages_.store(s.deflated_pages, std::memory_order_relaxed);
    oom_deflated_pages_.store(s.oom_deflated_pages, std::memory_order_relaxed);
    unrequested_deflated_pages_.store(s.unrequested_deflated_pages, std::memory_order_relaxed);
    balloon_pages_.store(s.balloon_pages, std::memory_order_relaxed);
    discard_errors_.store(s.discard_errors, std::memory_order_relaxed);
    stats_updates_.store(s.stats_updates, std::memory_order_relaxed);
    stats_refused_.store(s.stats_refused, std::memory_order_relaxed);
    stats_unknown_tags_.store(s.stats_unknown_tags, std::memory_order_relaxed);
    stats_requests_.store(s.stats_requests, std::memory_order_relaxed);
    target_pages_.store(s.target_pages);
    actual_pages_.store(s.actual_pages);
    stats_head_ = state.stats_head;
    stats_queue_ = state.stats_queue;
    std::lock_guard lock(guest_mutex_);
    guest_ = s.guest;
    guest_at_ = std::chrono::steady_clock::now();
    return {};
}

control::Counters VirtioBalloon::counters() const {
    const BalloonStats s = stats();
    request_guest_stats();  // on demand: whoever reads these wants recent figures next time
    control::Counters out = {{"reported_pages", s.reported_pages},
                             {"reported_ranges", s.reported_ranges},
                             {"refused_ranges", s.refused_ranges},
                             {"inflated_pages", s.inflated_pages},
                             {"deflated_pages", s.deflated_pages},
                             {"oom_deflated_pages", s.oom_deflated_pages},
                             {"unrequested_deflated_pages", s.unrequested_deflated_pages},
                             {"balloon_pages", s.balloon_pages},
                             {"discard_errors", s.discard_errors},
                             {"target_pages", s.target_pages},
                             {"actual_pages", s.actual_pages},
                             {"stats_updates", s.stats_updates},
                             {"stats_refused", s.stats_refused},
                             {"stats_unknown_tags", s.stats_unknown_tags},
                             {"stats_requests", s.stats_requests}};
    if (s.guest) {
        for (unsigned tag = 0; tag < kBalloonStatTags; ++tag)
            if (s.guest->values[tag]) out.push_back({kGuestStatNames[tag], *s.guest->values[tag]});
        out.push_back({"guest_stats_age_ms", static_cast<std::uint64_t>(s.guest_age->count())});
    }
    return out;
}

}  // namespace swapvisor::vmm::devices
