// VirtioBalloon: the traditional memory balloon (virtio 1.2, section 5.5, device id
// 5) with free page reporting (VIRTIO_BALLOON_F_REPORTING). What the guest gives
// back is dropped through guestmem's `discard` (DESIGN.md section 5): a resident
// page is hole-punched, a swapped page frees its VSlot and PSlot, and the next
// guest touch reads zeros.
//
// Queues (indices as the Linux driver and QEMU number them, see
// queue_index_of below):
//
//   0  inflateq      buffers of u32 PFNs (4 KiB frames) the guest gave up: discarded
//   1  deflateq      PFNs the guest takes back: nothing to do, the next touch
//                    faults a zero page in (counted only)
//   2  reporting_vq  (with F_REPORTING) each descriptor is one free range
//                    [addr, addr + len): discarded
//
// The spec's list numbers statsq 2, free_page_vq 3 and reporting_vq 4 but says the
// feature-dependent queues "only exist" with their feature; Linux and QEMU leave
// absent queues out of the numbering. This device offers neither STATS_VQ nor
// FREE_PAGE_HINT, so reporting_vq is 2 whether one counts absent queues by the
// offered or the negotiated features (offering STATS_VQ would make the two
// readings disagree for a driver that declines it).
//
// Invariants: a range is acted on only if it is non-empty, page aligned, does not
// overflow, lies inside one RAM region and overlaps no other range of the same
// request (one descriptor chain); anything else is refused, counted and never
// acted on. A refused range is not a malformed queue: the buffer still goes back to
// the used ring. Config space is {le32 num_pages; le32 actual}.
//
// Threads: queue and config callbacks run under the VirtioMmio mutex; counters and
// the target are atomics so stats() and set_target_pages() may come from any
// thread (after set_target_pages, call VirtioMmio::notify_config_change()).
#pragma once

#include <atomic>
#include <cstdint>

#include "guestmem/guest_memory.hpp"
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

struct BalloonStats {
    std::uint64_t reported_pages = 0;   // pages discarded from free page reports
    std::uint64_t reported_ranges = 0;  // report ranges accepted
    std::uint64_t refused_ranges = 0;   // report ranges or inflate PFNs/buffers refused
    std::uint64_t inflated_pages = 0;   // pages discarded from inflate PFNs
    std::uint64_t deflated_pages = 0;   // deflate PFNs seen
    std::uint64_t discard_errors = 0;   // valid ranges guestmem failed to discard (host side)
    std::uint32_t target_pages = 0;     // config num_pages
    std::uint32_t actual_pages = 0;     // config actual, as the driver wrote it
};

class VirtioBalloon final : public VirtioDevice {
public:
    // `mem` must outlive the device.
    explicit VirtioBalloon(guestmem::GuestMemory& mem) : mem_(mem) {}

    // Largest inflate/deflate buffer accepted (Linux sends 256 PFNs = 1 KiB).
    static constexpr std::uint32_t kMaxPfnBufferBytes = 64 * 1024;

    // Queue index of `queue` given the offered features: absent feature queues
    // take no index (see the file comment). Only meaningful if the queue exists.
    static unsigned queue_index_of(BalloonQueue queue, std::uint64_t offered_features);

    std::uint32_t device_id() const override { return kVirtioIdBalloon; }
    std::uint64_t device_features() const override { return kVirtioFVersion1 | kBalloonFReporting; }
    unsigned queue_count(std::uint64_t features) const override;
    void read_config(std::uint64_t offset, std::span<std::byte> data) override;
    void write_config(std::uint64_t offset, std::span<const std::byte> data) override;
    Result<void> process_queue(unsigned index, SplitQueue& queue, std::uint64_t features) override;
    void reset() override;
    // BalloonStats as named counters: the "balloon" object of status / stats /
    // --stats-json (field names are part of the control protocol).
    control::Counters counters() const override;

    // The host's wish: how many pages the guest should give up (config num_pages).
    void set_target_pages(std::uint32_t pages) { target_pages_.store(pages); }
    BalloonStats stats() const;

private:
    void handle_report(const DescriptorChain& chain);
    void handle_pfns(const DescriptorChain& chain, BalloonQueue which);
    void discard(guestmem::GpaRange range, std::atomic<std::uint64_t>& pages_counter);

    guestmem::GuestMemory& mem_;
    // Counters: relaxed, they are statistics and order nothing.
    std::atomic<std::uint64_t> reported_pages_{0};
    std::atomic<std::uint64_t> reported_ranges_{0};
    std::atomic<std::uint64_t> refused_ranges_{0};
    std::atomic<std::uint64_t> inflated_pages_{0};
    std::atomic<std::uint64_t> deflated_pages_{0};
    std::atomic<std::uint64_t> discard_errors_{0};
    std::atomic<std::uint32_t> target_pages_{0};
    std::atomic<std::uint32_t> actual_pages_{0};
};

}  // namespace swapvisor::vmm::devices
