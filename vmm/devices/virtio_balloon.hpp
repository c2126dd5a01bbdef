// VirtioBalloon: the traditional memory balloon (virtio 1.2, section 5.5, device id
// 5) with free page reporting (VIRTIO_BALLOON_F_REPORTING), guest memory statistics
// (VIRTIO_BALLOON_F_STATS_VQ) and deflate-on-OOM (VIRTIO_BALLOON_F_DEFLATE_ON_OOM).
// What the guest gives back is dropped through guestmem's `discard` (DESIGN.md
// section 5): a resident page is hole-punched, a swapped page frees its VSlot and
// PSlot, and the next guest touch reads zeros.
//
// Queues, numbered by the *negotiated* features (queue_index_of below):
//
//   0  inflateq      buffers of u32 PFNs (4 KiB frames) the guest gave up: discarded
//   1  deflateq      PFNs the guest takes back: nothing to do, the next touch
//                    faults a zero page in (counted; below the target: an OOM deflate)
//   2  statsq        (with F_STATS_VQ) one buffer of {le16 tag; le64 val} entries;
//                    the device keeps it and gives it back when it wants fresh figures
//   3  reporting_vq  (with F_REPORTING; 2 without F_STATS_VQ) each descriptor is one
//                    free range [addr, addr + len): discarded
//
// Numbering: the spec's list is inflateq 0, deflateq 1, statsq 2, free_page_vq 3,
// reporting_vq 4, but the last three "only exist" with their feature, and the
// Linux driver leaves a queue whose feature was not *negotiated* out of the
// numbering (virtio_balloon.c init_vqs gives it no name; virtio_mmio's vm_find_vqs
// skips nameless queues without using an index). QEMU instead creates queues from
// its own configuration (statsq always). We number by the negotiated features, as
// Linux does, so a driver that declines STATS_VQ finds reporting_vq at 2; a driver
// that accepts everything offered (Linux, examples/balloon.c) gets the same indices
// under either reading. FREE_PAGE_HINT is not offered, so free_page_vq never exists.
//
// Statistics (5.5.6.3): the driver puts one buffer on statsq at start; the device
// parses it and keeps it. The stats poller (BalloonStatsPoller, one thread per
// balloon) returns it to the used ring every stats interval (default 2 s) or when
// request_guest_stats() asks (each read of counters() does); the driver answers
// with a new buffer, which is parsed and kept again. A buffer whose length is not a
// whole non-zero number of 10-byte entries, that is longer than kMaxStatsBytes, is
// device-writable or lies outside RAM is refused (stats_refused) and kept all the
// same, so the next poll lets the driver try again. Unknown tags are skipped
// (counted); for a repeated tag the last value wins.
//
// Deflate-on-OOM: the device counts the pages it believes are in the balloon
// (inflate PFNs accepted minus deflate PFNs, never below 0). A deflate PFN while
// that count is at or below the host's target was not asked for by the host: with
// DEFLATE_ON_OOM negotiated it is the guest reclaiming under memory pressure
// (oom_deflated_pages); without it the spec says the driver SHOULD NOT, and the
// device accepts it anyway (a page handed back is always safe to hand out) and
// counts it (unrequested_deflated_pages).
//
// Invariants: a range is acted on only if it is non-empty, page aligned, does not
// overflow, lies inside one RAM region and overlaps no other range of the same
// request (one descriptor chain); anything else is refused, counted and never
// acted on. A refused range is not a malformed queue: the buffer still goes back to
// the used ring. Config space is {le32 num_pages; le32 actual}.
//
// Threads: queue, config and poll callbacks run under the VirtioMmio mutex; counters
// and the target are atomics (the guest's statistics a leaf mutex held only to copy
// them), so stats() / counters() / set_target_pages() may come from any thread
// (after set_target_pages, call VirtioMmio::notify_config_change()).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stop_token>
#include <string_view>
#include <system_error>
#include <thread>

#include "guestmem/guest_memory.hpp"
#include "io/result.hpp"
#include "vmm/devices/log_budget.hpp"
#include "vmm/devices/virtio_mmio.hpp"

namespace swapvisor::vmm::devices {

inline constexpr std::uint32_t kVirtioIdBalloon = 5;
inline constexpr std::uint64_t kBalloonFMustTellHost = 1ULL << 0;
inline constexpr std::uint64_t kBalloonFStatsVq = 1ULL << 1;
inline constexpr std::uint64_t kBalloonFDeflateOnOom = 1ULL << 2;
inline constexpr std::uint64_t kBalloonFFreePageHint = 1ULL << 3;
inline constexpr std::uint64_t kBalloonFPagePoison = 1ULL << 4;
inline constexpr std::uint64_t kBalloonFReporting = 1ULL << 5;
inline constexpr unsigned kBalloonPfnShift = 12;

enum class BalloonQueue { inflate, deflate, stats, free_page_hint, reporting };

// Why a statistics buffer was refused (the buffer is kept, its figures are not).
enum class BalloonErrc {
    stats_length = 1,  // zero, or not a whole number of 10-byte entries
    stats_too_large,   // longer than VirtioBalloon::kMaxStatsBytes
    stats_writable,    // a device-writable descriptor: the driver wants an answer we do not give
    stats_outside_ram, // a descriptor not inside one RAM region
    bad_saved_state,   // a snapshot's balloon state that no balloon can be in
};
const std::error_category& balloon_category();
inline std::error_code make_error_code(BalloonErrc e) { return {static_cast<int>(e), balloon_category()}; }

}  // namespace swapvisor::vmm::devices

template <>
struct std::is_error_code_enum<swapvisor::vmm::devices::BalloonErrc> : std::true_type {};

namespace swapvisor::vmm::devices {

// The statistics tags of virtio 1.2, 5.5.6.3 (VIRTIO_BALLOON_S_*), in tag order.
inline constexpr unsigned kBalloonStatTags = 10;
inline constexpr std::size_t kBalloonStatEntryBytes = 10;  // le16 tag, le64 val, packed

// Field names of the guest's statistics in the "balloon" object of status / stats /
// --stats-json and in /metrics (swapvisor_vm_balloon_<name>), indexed by tag: the
// only list of them. Sizes and free memory are bytes, as the spec sends them.
inline constexpr std::array<std::string_view, kBalloonStatTags> kGuestStatNames = {
    "guest_swap_in_bytes",      // 0 VIRTIO_BALLOON_S_SWAP_IN
    "guest_swap_out_bytes",     // 1 VIRTIO_BALLOON_S_SWAP_OUT
    "guest_major_faults",       // 2 VIRTIO_BALLOON_S_MAJFLT
    "guest_minor_faults",       // 3 VIRTIO_BALLOON_S_MINFLT
    "guest_free_bytes",         // 4 VIRTIO_BALLOON_S_MEMFREE
    "guest_total_bytes",        // 5 VIRTIO_BALLOON_S_MEMTOT
    "guest_available_bytes",    // 6 VIRTIO_BALLOON_S_AVAIL
    "guest_caches_bytes",       // 7 VIRTIO_BALLOON_S_CACHES
    "guest_hugetlb_allocations",// 8 VIRTIO_BALLOON_S_HTLB_PGALLOC
    "guest_hugetlb_failures",   // 9 VIRTIO_BALLOON_S_HTLB_PGFAIL
};

// One statistics buffer as the guest sent it: the value of each known tag it
// carried (the last one if repeated), and how many entries had an unknown tag.
struct GuestStats {
    std::array<std::optional<std::uint64_t>, kBalloonStatTags> values{};
    std::uint32_t unknown_tags = 0;
    bool operator==(const GuestStats&) const = default;
};

// Parses the bytes of a statistics buffer: a whole, non-zero number of
// {le16 tag; le64 val} entries (BalloonErrc::stats_length otherwise).
Result<GuestStats> parse_guest_stats(std::span<const std::byte> bytes);

struct BalloonStats {
    std::uint64_t reported_pages = 0;   // pages discarded from free page reports
    std::uint64_t reported_ranges = 0;  // report ranges accepted
    std::uint64_t refused_ranges = 0;   // report ranges or inflate PFNs/buffers refused
    std::uint64_t inflated_pages = 0;   // pages discarded from inflate PFNs
    std::uint64_t deflated_pages = 0;   // deflate PFNs seen (all of them)
    std::uint64_t oom_deflated_pages = 0;         // deflated at or below the target, DEFLATE_ON_OOM negotiated
    std::uint64_t unrequested_deflated_pages = 0; // the same without DEFLATE_ON_OOM (accepted, counted)
    std::uint64_t balloon_pages = 0;    // the device's count of pages in the balloon
    std::uint64_t discard_errors = 0;   // valid ranges guestmem failed to discard (host side)
    std::uint64_t stats_updates = 0;    // statistics buffers parsed and taken
    std::uint64_t stats_refused = 0;    // statistics buffers refused (BalloonErrc)
    std::uint64_t stats_unknown_tags = 0;  // entries skipped for an unknown tag
    std::uint64_t stats_requests = 0;   // statistics buffers given back to the guest to refill
    std::uint32_t target_pages = 0;     // config num_pages
    std::uint32_t actual_pages = 0;     // config actual, as the driver wrote it
    std::optional<GuestStats> guest;    // the last statistics taken, if any
    std::optional<std::chrono::milliseconds> guest_age;  // how long ago they came
    bool operator==(const BalloonStats&) const = default;
};

// The balloon's own state for a snapshot (the transport's is VirtioMmioState):
// target and actual, every counter, the guest's last statistics, and the
// statistics buffer the device holds (its head on queue stats_queue), which the
// restored device gives back as the saved one would have. `stats.guest_age` is not
// kept (a restored device counts the age from its restore).
struct BalloonState {
    BalloonStats stats;
    std::optional<std::uint16_t> stats_head;
    std::uint32_t stats_queue = 0;
    bool operator==(const BalloonState&) const = default;
};

class VirtioBalloon final : public VirtioDevice {
public:
    static constexpr std::chrono::milliseconds kDefaultStatsInterval{2000};

    // `mem` must outlive the device. `stats_interval`: how often the poller asks the
    // guest for fresh statistics (0: only when asked, request_guest_stats()).
    explicit VirtioBalloon(guestmem::GuestMemory& mem,
                           std::chrono::milliseconds stats_interval = kDefaultStatsInterval)
        : mem_(mem), stats_interval_(stats_interval) {}

    // Largest inflate/deflate buffer accepted (Linux sends 256 PFNs = 1 KiB).
    static constexpr std::uint32_t kMaxPfnBufferBytes = 64 * 1024;
    // Largest statistics buffer accepted (Linux sends at most 16 entries).
    static constexpr std::uint32_t kMaxStatsBytes = 256 * kBalloonStatEntryBytes;

    // Queue index of `queue` given the negotiated features: absent feature queues
    // take no index (see the file comment). Only meaningful if the queue exists.
    static unsigned queue_index_of(BalloonQueue queue, std::uint64_t negotiated);

    std::uint32_t device_id() const override { return kVirtioIdBalloon; }
    std::uint64_t device_features() const override {
        return kVirtioFVersion1 | kBalloonFStatsVq | kBalloonFDeflateOnOom | kBalloonFReporting;
    }
    unsigned queue_count(std::uint64_t features) const override;
    void read_config(std::uint64_t offset, std::span<std::byte> data) override;
    void write_config(std::uint64_t offset, std::span<const std::byte> data) override;
    Result<void> process_queue(unsigned index, SplitQueue& queue, std::uint64_t features) override;
    // statsq: Linux kicks its first statistics buffer before DRIVER_OK.
    bool process_when_live(unsigned index, std::uint64_t features) const override {
        return (features & kBalloonFStatsVq) && index == queue_index_of(BalloonQueue::stats, features);
    }
    // Gives the held statistics buffer back (used ring, 0 bytes written): the
    // poller calls it (through VirtioMmio::poll_device) when statistics are due.
    Result<void> poll(std::span<SplitQueue> queues, std::uint64_t features) override;
    void reset() override;
    // BalloonStats as named counters: the "balloon" object of status / stats /
    // --stats-json (field names are part of the control protocol). The guest's
    // statistics (kGuestStatNames, the tags it sent) and guest_stats_age_ms appear
    // once a buffer was taken. Reading them also asks for fresh statistics
    // (request_guest_stats), so the next read is recent.
    control::Counters counters() const override;

    // The host's wish: how many pages the guest should give up (config num_pages).
    void set_target_pages(std::uint32_t pages) { target_pages_.store(pages); }
    BalloonStats stats() const;

    // Snapshot. Only while the VM is paused and its transport's device work is held
    // (VirtioMmio::hold_device_work): then nothing else touches the held buffer.
    BalloonState save() const;
    // In a restored VM before it runs. Errors: BalloonErrc::bad_saved_state (a held
    // buffer on a queue the balloon cannot have); nothing is changed then.
    Result<void> restore(const BalloonState& state);

    // Ask the guest for fresh statistics now (wakes the poller; never blocks on the
    // guest). The answer shows up in a later stats() / counters().
    void request_guest_stats() const;
    // The poller's wait: returns true when the held buffer should go back to the
    // guest (the interval passed or request_guest_stats()), false once `stop` is
    // requested.
    bool wait_until_stats_due(std::stop_token stop);

private:
    void handle_report(const DescriptorChain& chain);
    void handle_pfns(const DescriptorChain& chain, BalloonQueue which, std::uint64_t features);
    void handle_stats(const DescriptorChain& chain);
    Result<GuestStats> read_stats(const DescriptorChain& chain);
    void discard(guestmem::GpaRange range, std::atomic<std::uint64_t>& pages_counter);

    guestmem::GuestMemory& mem_;
    const std::chrono::milliseconds stats_interval_;
    // Counters: relaxed, they are statistics and order nothing.
    std::atomic<std::uint64_t> reported_pages_{0};
    std::atomic<std::uint64_t> reported_ranges_{0};
    std::atomic<std::uint64_t> refused_ranges_{0};
    std::atomic<std::uint64_t> inflated_pages_{0};
    std::atomic<std::uint64_t> deflated_pages_{0};
    std::atomic<std::uint64_t> oom_deflated_pages_{0};
    std::atomic<std::uint64_t> unrequested_deflated_pages_{0};
    std::atomic<std::uint64_t> balloon_pages_{0};  // written only under the transport mutex
    std::atomic<std::uint64_t> discard_errors_{0};
    std::atomic<std::uint64_t> stats_updates_{0};
    std::atomic<std::uint64_t> stats_refused_{0};
    std::atomic<std::uint64_t> stats_unknown_tags_{0};
    std::atomic<std::uint64_t> stats_requests_{0};
    std::atomic<std::uint32_t> target_pages_{0};
    std::atomic<std::uint32_t> actual_pages_{0};

    // The statistics buffer the device holds (under the transport mutex, like all
    // queue state): its head and the queue it came on.
    std::optional<std::uint16_t> stats_head_;
    unsigned stats_queue_ = 0;
    // Log lines this device's guest can cause (per device, refilled).
    LogBudget log_budget_;

    // Protects: guest_, guest_at_; Order: leaf (held only to copy them).
    mutable std::mutex guest_mutex_;
    std::optional<GuestStats> guest_;
    std::chrono::steady_clock::time_point guest_at_{};

    // Protects: stats_asked_; Order: leaf. The poller waits on poll_cv_.
    mutable std::mutex poll_mutex_;
    mutable std::condition_variable_any poll_cv_;
    mutable bool stats_asked_ = false;  // request_guest_stats() since the poller last woke
};

// The balloon's statistics poller: one thread that, whenever the balloon says the
// guest's statistics are due (VirtioBalloon::wait_until_stats_due), has the
// transport run the device's poll (VirtioMmio::poll_device), which gives the held
// buffer back and interrupts the guest. Destroying it stops and joins the thread;
// destroy it before the transport and the device (it holds both).
class BalloonStatsPoller {
public:
    BalloonStatsPoller(std::shared_ptr<VirtioBalloon> balloon, std::shared_ptr<VirtioMmio> transport);

private:
    std::shared_ptr<VirtioBalloon> balloon_;
    std::shared_ptr<VirtioMmio> transport_;
    std::jthread thread_;  // last: stopped and joined first
};

}  // namespace swapvisor::vmm::devices
