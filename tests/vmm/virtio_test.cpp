// virtio-mmio transport + virtio-balloon on a real GuestMemory (memfd views,
// userfaultfd, the stage-2 table). The test plays the guest driver: it programs the
// registers through VirtioMmio::read/write exactly as a vCPU's MMIO exit would, and
// builds the split rings in guest memory through GuestMemory::write. A valid free
// page report must drop exactly the reported pages (stage-2 entry zero, bytes read
// back zero); every malformed report or queue must be refused and counted with no
// page touched. One test runs over a SwapPool so that a discarded swapped page is
// seen to free its VSlot.
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <future>
#include <filesystem>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "guestmem/errc.hpp"
#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/devices/virtio_balloon.hpp"
#include "vmm/devices/virtio_mmio.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace swapvisor::vmm::devices;
namespace reg = swapvisor::vmm::devices::virtio_reg;

namespace {

constexpr std::uint64_t kMem = 64ULL << 20;
constexpr std::uint16_t kQueueSize = 16;
constexpr unsigned kInflate = 0, kDeflate = 1, kReporting = 2;
constexpr std::uint64_t kDataBase = 16ULL << 20;  // pattern pages live in [16, 24) MiB
constexpr std::uint64_t kDataBytes = 8ULL << 20;

// Ring placement per queue: descriptor table, available ring, used ring.
struct RingAddrs {
    std::uint64_t desc, avail, used;
};
RingAddrs rings_of(unsigned q) {
    std::uint64_t base = 0x10000 + q * 0x4000ULL;
    return {base, base + 0x1000, base + 0x2000};
}

std::uint64_t pattern(std::uint64_t gpa) { return (gpa * 0x9E3779B97F4A7C15ULL) | 1; }

// The driver side: registers and rings. Mirrors what examples/runtime/virtio.c does.
class Driver {
public:
    Driver(GuestMemory& mem, VirtioMmio& dev) : mem_(mem), dev_(dev) {}

    std::uint32_t rd(std::uint64_t off) {
        std::uint32_t v = 0;
        dev_.read(off, std::as_writable_bytes(std::span(&v, 1)));
        return v;
    }
    void wr(std::uint64_t off, std::uint32_t v) { dev_.write(off, std::as_bytes(std::span(&v, 1))); }

    // Status ACK | DRIVER, features, FEATURES_OK; true if the device kept FEATURES_OK.
    bool negotiate(std::uint64_t features) {
        wr(reg::kStatus, 0);
        wr(reg::kStatus, kStatusAcknowledge);
        wr(reg::kStatus, kStatusAcknowledge | kStatusDriver);
        wr(reg::kDriverFeaturesSel, 0);
        wr(reg::kDriverFeatures, static_cast<std::uint32_t>(features));
        wr(reg::kDriverFeaturesSel, 1);
        wr(reg::kDriverFeatures, static_cast<std::uint32_t>(features >> 32));
        wr(reg::kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
        return rd(reg::kStatus) & kStatusFeaturesOk;
    }

    void program_queue(unsigned q, RingAddrs a, std::uint16_t size = kQueueSize) {
        wr(reg::kQueueSel, q);
        wr(reg::kQueueNum, size);
        wr(reg::kQueueDescLow, static_cast<std::uint32_t>(a.desc));
        wr(reg::kQueueDescHigh, static_cast<std::uint32_t>(a.desc >> 32));
        wr(reg::kQueueDriverLow, static_cast<std::uint32_t>(a.avail));
        wr(reg::kQueueDriverHigh, static_cast<std::uint32_t>(a.avail >> 32));
        wr(reg::kQueueDeviceLow, static_cast<std::uint32_t>(a.used));
        wr(reg::kQueueDeviceHigh, static_cast<std::uint32_t>(a.used >> 32));
    }
    bool ready(unsigned q) {
        wr(reg::kQueueSel, q);
        wr(reg::kQueueReady, 1);
        return rd(reg::kQueueReady) == 1;
    }
    void driver_ok() { wr(reg::kStatus, rd(reg::kStatus) | kStatusDriverOk); }

    // Full bring-up with the three balloon queues.
    void bring_up() {
        ASSERT_TRUE(negotiate(kVirtioFVersion1 | kBalloonFReporting));
        for (unsigned q : {kInflate, kDeflate, kReporting}) {
            zero_rings(q);
            program_queue(q, rings_of(q));
            ASSERT_TRUE(ready(q)) << "queue " << q;
        }
        driver_ok();
        ASSERT_EQ(rd(reg::kStatus) & kStatusNeedsReset, 0u);
    }

    // Bring-up with `features` and queues 0 .. n-1 (Linux's numbering for them).
    void bring_up_with(std::uint64_t features, unsigned n) {
        ASSERT_TRUE(negotiate(features));
        for (unsigned q = 0; q < n; ++q) {
            zero_rings(q);
            program_queue(q, rings_of(q));
            ASSERT_TRUE(ready(q)) << "queue " << q;
        }
        driver_ok();
    }

    void zero_rings(unsigned q) {
        std::vector<std::byte> z(0x3000);
        ASSERT_TRUE(mem_.write(Gpa(rings_of(q).desc), z).has_value());
        avail_idx_[q] = 0;
    }

    void put_desc(unsigned q, std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                  std::uint16_t next = 0) {
        struct {
            std::uint64_t addr;
            std::uint32_t len;
            std::uint16_t flags, next;
        } d{addr, len, flags, next};
        ASSERT_TRUE(mem_.write(Gpa(rings_of(q).desc + 16ULL * i), std::as_bytes(std::span(&d, 1))).has_value());
    }
    // One chain of device-writable descriptors 0..n-1, as Linux's page reporting adds them.
    void put_report(unsigned q, const std::vector<std::pair<std::uint64_t, std::uint32_t>>& ranges) {
        for (std::size_t i = 0; i < ranges.size(); ++i) {
            bool last = i + 1 == ranges.size();
            put_desc(q, static_cast<std::uint16_t>(i), ranges[i].first, ranges[i].second,
                     static_cast<std::uint16_t>(SplitQueue::kDescFlagWrite | (last ? 0 : SplitQueue::kDescFlagNext)),
                     static_cast<std::uint16_t>(i + 1));
        }
    }
    void publish(unsigned q, std::uint16_t head) {
        std::uint16_t idx = avail_idx_[q];
        std::uint64_t slot = rings_of(q).avail + 4 + 2ULL * (idx % kQueueSize);
        ASSERT_TRUE(mem_.write(Gpa(slot), std::as_bytes(std::span(&head, 1))).has_value());
        ++idx;
        set_avail_idx(q, idx);
    }
    void set_avail_idx(unsigned q, std::uint16_t idx) {
        avail_idx_[q] = idx;
        ASSERT_TRUE(mem_.write(Gpa(rings_of(q).avail + 2), std::as_bytes(std::span(&idx, 1))).has_value());
    }
    void notify(unsigned q) { wr(reg::kQueueNotify, q); }

    std::uint16_t used_idx(unsigned q) {
        std::uint16_t v = 0;
        EXPECT_TRUE(mem_.read(Gpa(rings_of(q).used + 2), std::as_writable_bytes(std::span(&v, 1))).has_value());
        return v;
    }
    std::pair<std::uint32_t, std::uint32_t> used_elem(unsigned q, std::uint16_t slot) {
        std::uint32_t e[2] = {};
        EXPECT_TRUE(mem_.read(Gpa(rings_of(q).used + 4 + 8ULL * slot), std::as_writable_bytes(std::span(e))).has_value());
        return {e[0], e[1]};
    }

private:
    GuestMemory& mem_;
    VirtioMmio& dev_;
    std::map<unsigned, std::uint16_t> avail_idx_;
};

class PrivilegedVirtioBalloonTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto mem = create_guest_memory(MemoryConfig{.name = "virtio", .memory_bytes = kMem}, 1, nullptr, nullptr);
        if (!mem && (mem.error().is(std::errc::function_not_supported) || mem.error().is(std::errc::operation_not_permitted) ||
                     mem.error().code == guestmem::make_error_code(guestmem::Errc::unsupported)))
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable: " << mem.error().message();
        ASSERT_TRUE(mem.has_value()) << mem.error().message();
        mem_ = std::move(*mem);
        balloon_ = std::make_shared<VirtioBalloon>(*mem_);
        mmio_ = std::make_unique<VirtioMmio>(*mem_, balloon_, [this](IrqLevel l) { irq_events_.push_back(l); });
        drv_ = std::make_unique<Driver>(*mem_, *mmio_);
        fill_data();
    }

    void fill_data() {
        std::vector<std::uint64_t> page(kPageSize / 8);
        for (std::uint64_t gpa = kDataBase; gpa < kDataBase + kDataBytes; gpa += kPageSize) {
            for (std::size_t i = 0; i < page.size(); ++i) page[i] = pattern(gpa + 8 * i);
            ASSERT_TRUE(mem_->write(Gpa(gpa), std::as_bytes(std::span(page))).has_value());
        }
    }

    // Pages in [gpa, gpa + len) that still hold their pattern and are not zero in stage 2.
    std::uint64_t intact_pages(std::uint64_t gpa, std::uint64_t len) {
        std::uint64_t intact = 0;
        std::vector<std::uint64_t> page(kPageSize / 8);
        for (std::uint64_t p = gpa; p < gpa + len; p += kPageSize) {
            EXPECT_TRUE(mem_->read(Gpa(p), std::as_writable_bytes(std::span(page))).has_value());
            bool ok = mem_->entry(Gpa(p)).state() != PageState::zero;
            for (std::size_t i = 0; i < page.size() && ok; ++i) ok = page[i] == pattern(p + 8 * i);
            intact += ok;
        }
        return intact;
    }
    // Pages in [gpa, gpa + len) that are dropped: stage-2 zero and reading all zeros.
    std::uint64_t dropped_pages(std::uint64_t gpa, std::uint64_t len) {
        std::uint64_t dropped = 0;
        std::vector<std::uint64_t> page(kPageSize / 8);
        for (std::uint64_t p = gpa; p < gpa + len; p += kPageSize) {
            bool zero_state = mem_->entry(Gpa(p)).state() == PageState::zero;
            EXPECT_TRUE(mem_->read(Gpa(p), std::as_writable_bytes(std::span(page))).has_value());
            bool zero_bytes = std::all_of(page.begin(), page.end(), [](std::uint64_t w) { return w == 0; });
            dropped += zero_state && zero_bytes;
        }
        return dropped;
    }
    void expect_all_data_intact() { EXPECT_EQ(intact_pages(kDataBase, kDataBytes), kDataBytes / kPageSize); }

    std::unique_ptr<GuestMemory> mem_;
    std::shared_ptr<VirtioBalloon> balloon_;
    std::unique_ptr<VirtioMmio> mmio_;
    std::unique_ptr<Driver> drv_;
    std::vector<IrqLevel> irq_events_;
};

}  // namespace

// --- transport ----------------------------------------------------------------------------

TEST(VirtioBalloonQueues, ReportingIndexFollowsNegotiatedFeatureQueues) {
    using Q = BalloonQueue;
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::inflate, kBalloonFReporting), 0u);
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::deflate, kBalloonFReporting), 1u);
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::reporting, kBalloonFReporting), 2u);
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::reporting, kBalloonFReporting | kBalloonFStatsVq), 3u);
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::reporting, kBalloonFReporting | kBalloonFStatsVq | kBalloonFFreePageHint),
              4u);
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::free_page_hint, kBalloonFFreePageHint), 2u);
}

TEST_F(PrivilegedVirtioBalloonTest, ProbeRegistersAndOfferedFeatures) {
    EXPECT_EQ(drv_->rd(reg::kMagic), 0x74726976u);
    EXPECT_EQ(drv_->rd(reg::kVersion), 2u);
    EXPECT_EQ(drv_->rd(reg::kDeviceId), 5u);
    EXPECT_EQ(drv_->rd(reg::kVendorId), kVirtioVendorId);
    drv_->wr(reg::kDeviceFeaturesSel, 0);
    // F_REPORTING, F_STATS_VQ, F_DEFLATE_ON_OOM; no FREE_PAGE_HINT, no MUST_TELL_HOST
    EXPECT_EQ(drv_->rd(reg::kDeviceFeatures), (1u << 5) | (1u << 1) | (1u << 2));
    drv_->wr(reg::kDeviceFeaturesSel, 1);
    EXPECT_EQ(drv_->rd(reg::kDeviceFeatures), 1u);  // VIRTIO_F_VERSION_1 = bit 32
    drv_->wr(reg::kDeviceFeaturesSel, 2);
    EXPECT_EQ(drv_->rd(reg::kDeviceFeatures), 0u);
    // A 2-byte register read is not a register access.
    std::uint16_t half = 0xffff;
    mmio_->read(reg::kMagic, std::as_writable_bytes(std::span(&half, 1)));
    EXPECT_EQ(half, 0u);
}

TEST_F(PrivilegedVirtioBalloonTest, FeaturesOkRefusedWithoutVersion1OrWithUnofferedBits) {
    EXPECT_FALSE(drv_->negotiate(kBalloonFReporting));
    EXPECT_FALSE(drv_->negotiate(kVirtioFVersion1 | kBalloonFFreePageHint));
    EXPECT_TRUE(drv_->negotiate(kVirtioFVersion1));
    // Without F_REPORTING there is no queue 2.
    drv_->wr(reg::kQueueSel, 2);
    EXPECT_EQ(drv_->rd(reg::kQueueNumMax), 0u);
    drv_->wr(reg::kQueueSel, 1);
    EXPECT_EQ(drv_->rd(reg::kQueueNumMax), 256u);
    EXPECT_TRUE(drv_->negotiate(kVirtioFVersion1 | kBalloonFReporting));
    drv_->wr(reg::kQueueSel, 2);
    EXPECT_EQ(drv_->rd(reg::kQueueNumMax), 256u);
    drv_->wr(reg::kQueueSel, 3);
    EXPECT_EQ(drv_->rd(reg::kQueueNumMax), 0u);
}

TEST_F(PrivilegedVirtioBalloonTest, FeaturesCannotChangeAfterFeaturesOk) {
    ASSERT_TRUE(drv_->negotiate(kVirtioFVersion1));
    drv_->wr(reg::kDriverFeaturesSel, 0);
    drv_->wr(reg::kDriverFeatures, static_cast<std::uint32_t>(kBalloonFReporting));  // ignored now
    drv_->wr(reg::kQueueSel, 2);
    EXPECT_EQ(drv_->rd(reg::kQueueNumMax), 0u);
}

// --- free page reporting: the valid case ----------------------------------------------------

TEST_F(PrivilegedVirtioBalloonTest, ValidReportDiscardsExactlyThoseRanges) {
    drv_->bring_up();
    const std::uint64_t a = kDataBase, a_len = 1ULL << 20;                  // [16, 17) MiB
    const std::uint64_t b = kDataBase + (2ULL << 20), b_len = 512ULL << 10;  // [18, 18.5) MiB
    drv_->put_report(kReporting, {{b, b_len}, {a, a_len}});                  // unsorted is fine
    drv_->publish(kReporting, 0);
    drv_->notify(kReporting);

    EXPECT_EQ(mmio_->status() & kStatusNeedsReset, 0u);
    EXPECT_EQ(drv_->used_idx(kReporting), 1u);
    EXPECT_EQ(drv_->used_elem(kReporting, 0), (std::pair<std::uint32_t, std::uint32_t>{0, 0}));
    BalloonStats s = balloon_->stats();
    EXPECT_EQ(s.reported_pages, (a_len + b_len) / kPageSize);
    EXPECT_EQ(s.reported_ranges, 2u);
    EXPECT_EQ(s.refused_ranges, 0u);
    EXPECT_EQ(dropped_pages(a, a_len), a_len / kPageSize);
    EXPECT_EQ(dropped_pages(b, b_len), b_len / kPageSize);
    // Everything around the ranges keeps its content, including the neighbours.
    EXPECT_EQ(intact_pages(a + a_len, b - (a + a_len)), (b - (a + a_len)) / kPageSize);
    const std::uint64_t rest = kDataBase + kDataBytes - (b + b_len);
    EXPECT_EQ(intact_pages(b + b_len, rest), rest / kPageSize);
    EXPECT_EQ(mem_->stats().discarded_pages, (a_len + b_len) / kPageSize);

    // Used-buffer interrupt: status bit 0, line raised once, lowered by the ACK.
    EXPECT_EQ(drv_->rd(reg::kInterruptStatus) & kInterruptUsedBuffer, kInterruptUsedBuffer);
    ASSERT_EQ(irq_events_.size(), 1u);
    EXPECT_EQ(irq_events_[0], IrqLevel::high);
    drv_->wr(reg::kInterruptAck, kInterruptUsedBuffer);
    EXPECT_EQ(drv_->rd(reg::kInterruptStatus), 0u);
    ASSERT_EQ(irq_events_.size(), 2u);
    EXPECT_EQ(irq_events_[1], IrqLevel::low);

    // The guest reuses the memory: writes land, and a second report of the same
    // range drops it again.
    std::uint64_t word = 0x1234;
    ASSERT_TRUE(mem_->write(Gpa(a), std::as_bytes(std::span(&word, 1))).has_value());
    EXPECT_NE(mem_->entry(Gpa(a)).state(), PageState::zero);
    drv_->put_report(kReporting, {{a, static_cast<std::uint32_t>(kPageSize)}});
    drv_->publish(kReporting, 0);
    drv_->notify(kReporting);
    EXPECT_EQ(drv_->used_idx(kReporting), 2u);
    EXPECT_EQ(dropped_pages(a, kPageSize), 1u);
}

TEST_F(PrivilegedVirtioBalloonTest, ManyRequestsInOneNotifyWrapTheRing) {
    drv_->bring_up();
    // 40 one-range requests, published in rounds of up to kQueueSize, so the avail
    // and used rings wrap twice.
    std::uint64_t next = kDataBase;
    for (int round = 0; round < 4; ++round) {
        int n = round < 2 ? kQueueSize : 4;
        for (int i = 0; i < n; ++i) {
            drv_->put_desc(kReporting, static_cast<std::uint16_t>(i), next, static_cast<std::uint32_t>(kPageSize),
                           SplitQueue::kDescFlagWrite);
            drv_->publish(kReporting, static_cast<std::uint16_t>(i));
            next += 2 * kPageSize;  // every other page
        }
        drv_->notify(kReporting);
    }
    EXPECT_EQ(drv_->used_idx(kReporting), 2 * kQueueSize + 8);
    EXPECT_EQ(balloon_->stats().reported_pages, 2u * kQueueSize + 8);
    EXPECT_EQ(dropped_pages(kDataBase, next - kDataBase), 2u * kQueueSize + 8);
    EXPECT_EQ(intact_pages(kDataBase, next - kDataBase), 2u * kQueueSize + 8);
}

// --- free page reporting: refused ranges ----------------------------------------------------

struct BadRange {
    const char* what;
    std::uint64_t gpa;
    std::uint32_t len;
};

TEST_F(PrivilegedVirtioBalloonTest, MalformedRangesAreRefusedCountedAndNeverActedOn) {
    drv_->bring_up();
    const std::vector<BadRange> bad = {
        {"beyond RAM", kMem, 1U << 20},
        {"straddles the end of RAM", kMem - kPageSize, 2 * kPageSize},
        {"in the 3-4 GiB MMIO hole", kVirtioMmioBase, static_cast<std::uint32_t>(kPageSize)},
        {"unaligned start", kDataBase + 512, static_cast<std::uint32_t>(kPageSize)},
        {"unaligned length", kDataBase, static_cast<std::uint32_t>(kPageSize + 8)},
        {"zero length", kDataBase, 0},
        {"gpa + len overflows", 0xFFFF'FFFF'FFFF'F000ULL, 0x2000},
    };
    std::uint16_t used = 0;
    for (const BadRange& r : bad) {
        SCOPED_TRACE(r.what);
        std::uint64_t refused_before = balloon_->stats().refused_ranges;
        drv_->put_report(kReporting, {{r.gpa, r.len}});
        drv_->publish(kReporting, 0);
        drv_->notify(kReporting);
        EXPECT_EQ(drv_->used_idx(kReporting), ++used);  // the buffer still comes back
        EXPECT_EQ(balloon_->stats().refused_ranges, refused_before + 1);
        EXPECT_EQ(mmio_->status() & kStatusNeedsReset, 0u);  // a bad range is not a bad queue
    }
    EXPECT_EQ(balloon_->stats().reported_pages, 0u);
    EXPECT_EQ(mem_->stats().discarded_pages, 0u);
    expect_all_data_intact();
}

TEST_F(PrivilegedVirtioBalloonTest, OverlappingRangesInOneRequestAreBothRefused) {
    drv_->bring_up();
    const std::uint64_t good = kDataBase + (4ULL << 20);
    drv_->put_report(kReporting, {
                                     {kDataBase, 1U << 20},                           // overlaps the next
                                     {kDataBase + (512ULL << 10), 1U << 20},          // overlaps the previous
                                     {good, static_cast<std::uint32_t>(4 * kPageSize)},  // fine
                                     {good + 8 * kPageSize, static_cast<std::uint32_t>(kPageSize)},  // duplicate pair
                                     {good + 8 * kPageSize, static_cast<std::uint32_t>(kPageSize)},
                                 });
    drv_->publish(kReporting, 0);
    drv_->notify(kReporting);
    BalloonStats s = balloon_->stats();
    EXPECT_EQ(s.refused_ranges, 4u);
    EXPECT_EQ(s.reported_ranges, 1u);
    EXPECT_EQ(s.reported_pages, 4u);
    EXPECT_EQ(dropped_pages(good, 4 * kPageSize), 4u);
    EXPECT_EQ(intact_pages(kDataBase, good - kDataBase), (good - kDataBase) / kPageSize);
    EXPECT_EQ(intact_pages(good + 4 * kPageSize, kDataBase + kDataBytes - good - 4 * kPageSize),
              (kDataBase + kDataBytes - good - 4 * kPageSize) / kPageSize);
}

// --- malformed queues: NEEDS_RESET, nothing touched -----------------------------------------

TEST_F(PrivilegedVirtioBalloonTest, DescriptorLoopSetsNeedsResetAndDiscardsNothing) {
    drv_->bring_up();
    // 0 -> 1 -> 2 -> 0: every range is valid, but the chain never ends.
    drv_->put_desc(kReporting, 0, kDataBase, 1U << 20, SplitQueue::kDescFlagWrite | SplitQueue::kDescFlagNext, 1);
    drv_->put_desc(kReporting, 1, kDataBase + (1ULL << 20), 1U << 20,
                   SplitQueue::kDescFlagWrite | SplitQueue::kDescFlagNext, 2);
    drv_->put_desc(kReporting, 2, kDataBase + (2ULL << 20), 1U << 20,
                   SplitQueue::kDescFlagWrite | SplitQueue::kDescFlagNext, 0);
    drv_->publish(kReporting, 0);
    drv_->notify(kReporting);
    EXPECT_EQ(mmio_->status() & kStatusNeedsReset, kStatusNeedsReset);
    EXPECT_EQ(mmio_->stats().needs_reset, 1u);
    EXPECT_EQ(drv_->used_idx(kReporting), 0u);
    EXPECT_EQ(balloon_->stats().reported_pages, 0u);
    EXPECT_EQ(drv_->rd(reg::kInterruptStatus) & kInterruptConfigChange, kInterruptConfigChange);
    expect_all_data_intact();

    // Stopped until reset: a valid chain on another queue is ignored too.
    std::uint32_t pfn = static_cast<std::uint32_t>(kDataBase >> 12);
    ASSERT_TRUE(mem_->write(Gpa(0x8000), std::as_bytes(std::span(&pfn, 1))).has_value());
    drv_->put_desc(kInflate, 0, 0x8000, 4, 0);
    drv_->publish(kInflate, 0);
    drv_->notify(kInflate);
    EXPECT_EQ(balloon_->stats().inflated_pages, 0u);
    EXPECT_GE(mmio_->stats().ignored_notifies, 1u);
    expect_all_data_intact();

    // The driver resets and starts over: the device works again.
    drv_->bring_up();
    EXPECT_EQ(mmio_->status() & kStatusNeedsReset, 0u);
    drv_->put_report(kReporting, {{kDataBase, static_cast<std::uint32_t>(kPageSize)}});
    drv_->publish(kReporting, 0);
    drv_->notify(kReporting);
    EXPECT_EQ(balloon_->stats().reported_pages, 1u);
    EXPECT_EQ(dropped_pages(kDataBase, kPageSize), 1u);
}

TEST_F(PrivilegedVirtioBalloonTest, BrokenChainsAndIndicesSetNeedsReset) {
    struct Case {
        const char* what;
        std::function<void(Driver&)> corrupt;
    };
    const std::vector<Case> cases = {
        {"next index outside the table",
         [](Driver& d) {
             d.put_desc(kReporting, 0, kDataBase, static_cast<std::uint32_t>(kPageSize),
                        SplitQueue::kDescFlagWrite | SplitQueue::kDescFlagNext, kQueueSize);
             d.publish(kReporting, 0);
         }},
        {"head index outside the table",
         [](Driver& d) { d.publish(kReporting, kQueueSize + 3); }},
        {"available index runs more than a ring ahead",
         [](Driver& d) {
             d.put_desc(kReporting, 0, kDataBase, static_cast<std::uint32_t>(kPageSize), SplitQueue::kDescFlagWrite);
             d.set_avail_idx(kReporting, kQueueSize + 1);
         }},
        {"indirect descriptor (not negotiated)",
         [](Driver& d) {
             d.put_desc(kReporting, 0, 0x8000, 16, SplitQueue::kDescFlagIndirect);
             d.publish(kReporting, 0);
         }},
        {"readable descriptor after a writable one",
         [](Driver& d) {
             d.put_desc(kReporting, 0, kDataBase, static_cast<std::uint32_t>(kPageSize),
                        SplitQueue::kDescFlagWrite | SplitQueue::kDescFlagNext, 1);
             d.put_desc(kReporting, 1, kDataBase + kPageSize, static_cast<std::uint32_t>(kPageSize), 0);
             d.publish(kReporting, 0);
         }},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        drv_->bring_up();
        std::uint64_t resets_before = mmio_->stats().needs_reset;
        c.corrupt(*drv_);
        drv_->notify(kReporting);
        EXPECT_EQ(mmio_->status() & kStatusNeedsReset, kStatusNeedsReset);
        EXPECT_EQ(mmio_->stats().needs_reset, resets_before + 1);
        EXPECT_EQ(drv_->used_idx(kReporting), 0u);
    }
    EXPECT_EQ(balloon_->stats().reported_pages, 0u);
    expect_all_data_intact();
}

TEST_F(PrivilegedVirtioBalloonTest, BadQueueAddressesAndSizesAreRefusedAtQueueReady) {
    struct Case {
        const char* what;
        RingAddrs addrs;
        std::uint16_t size;
    };
    const RingAddrs ok = rings_of(kReporting);
    const std::vector<Case> cases = {
        {"descriptor table outside RAM", {kMem, ok.avail, ok.used}, kQueueSize},
        {"used ring in the MMIO hole", {ok.desc, ok.avail, kVirtioMmioBase}, kQueueSize},
        {"available ring straddles the end of RAM", {ok.desc, kMem - 8, ok.used}, kQueueSize},
        {"descriptor table misaligned", {ok.desc + 8, ok.avail, ok.used}, kQueueSize},
        {"used ring misaligned", {ok.desc, ok.avail, ok.used + 2}, kQueueSize},
        {"descriptor table address overflows", {0xFFFF'FFFF'FFFF'FF00ULL, ok.avail, ok.used}, kQueueSize},
        {"size not a power of two", ok, 12},
        {"size zero", ok, 0},
        {"size above QueueNumMax", ok, 512},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.what);
        ASSERT_TRUE(drv_->negotiate(kVirtioFVersion1 | kBalloonFReporting));
        drv_->program_queue(kReporting, c.addrs, c.size);
        EXPECT_FALSE(drv_->ready(kReporting));
        EXPECT_EQ(mmio_->status() & kStatusNeedsReset, kStatusNeedsReset);
        // A notify on the refused queue does nothing.
        drv_->driver_ok();
        drv_->notify(kReporting);
    }
    EXPECT_EQ(mmio_->stats().notifies, 0u);
    EXPECT_EQ(balloon_->stats().reported_pages, 0u);
    expect_all_data_intact();
}

TEST_F(PrivilegedVirtioBalloonTest, NotifyBeforeReadyOrDriverOkIsIgnored) {
    ASSERT_TRUE(drv_->negotiate(kVirtioFVersion1 | kBalloonFReporting));
    drv_->zero_rings(kReporting);
    drv_->program_queue(kReporting, rings_of(kReporting));
    drv_->put_report(kReporting, {{kDataBase, 1U << 20}});
    drv_->publish(kReporting, 0);
    drv_->notify(kReporting);  // queue not ready
    EXPECT_EQ(mmio_->stats().ignored_notifies, 1u);
    ASSERT_TRUE(drv_->ready(kReporting));
    drv_->notify(kReporting);  // ready, but no DRIVER_OK
    EXPECT_EQ(mmio_->stats().ignored_notifies, 2u);
    drv_->notify(7);           // no such queue
    EXPECT_EQ(mmio_->stats().ignored_notifies, 3u);
    EXPECT_EQ(drv_->used_idx(kReporting), 0u);
    EXPECT_EQ(balloon_->stats().reported_pages, 0u);
    expect_all_data_intact();
    // Queue registers cannot move a ready queue.
    drv_->wr(reg::kQueueSel, kReporting);
    drv_->wr(reg::kQueueDescLow, static_cast<std::uint32_t>(kMem));
    drv_->driver_ok();
    drv_->notify(kReporting);  // the buffer published earlier is now processed
    EXPECT_EQ(mmio_->status() & kStatusNeedsReset, 0u);
    EXPECT_EQ(drv_->used_idx(kReporting), 1u);
    EXPECT_EQ(dropped_pages(kDataBase, 1ULL << 20), (1ULL << 20) / kPageSize);
}

// --- inflate / deflate / config ------------------------------------------------------------

TEST_F(PrivilegedVirtioBalloonTest, InflatePfnsDiscardValidPagesAndRefuseOthers) {
    drv_->bring_up();
    const std::uint32_t pfns[] = {
        static_cast<std::uint32_t>(kDataBase >> 12),
        static_cast<std::uint32_t>((kDataBase >> 12) + 5),
        static_cast<std::uint32_t>(kMem >> 12),       // beyond RAM
        static_cast<std::uint32_t>(kVirtioMmioBase >> 12),  // the hole
    };
    ASSERT_TRUE(mem_->write(Gpa(0x8000), std::as_bytes(std::span(pfns))).has_value());
    drv_->put_desc(kInflate, 0, 0x8000, sizeof pfns, 0);
    drv_->publish(kInflate, 0);
    // A second buffer that is device-writable and one outside RAM: refused whole.
    drv_->put_desc(kInflate, 1, 0x8000, sizeof pfns, SplitQueue::kDescFlagWrite);
    drv_->publish(kInflate, 1);
    drv_->put_desc(kInflate, 2, kMem - 4, 8, 0);
    drv_->publish(kInflate, 2);
    drv_->notify(kInflate);
    EXPECT_EQ(drv_->used_idx(kInflate), 3u);
    BalloonStats s = balloon_->stats();
    EXPECT_EQ(s.inflated_pages, 2u);
    EXPECT_EQ(s.refused_ranges, 4u);
    EXPECT_EQ(dropped_pages(kDataBase, kPageSize), 1u);
    EXPECT_EQ(dropped_pages(kDataBase + 5 * kPageSize, kPageSize), 1u);
    EXPECT_EQ(intact_pages(kDataBase, kDataBytes), kDataBytes / kPageSize - 2);

    // Deflate only counts; the pages stay dropped until the guest touches them.
    drv_->put_desc(kDeflate, 0, 0x8000, 8, 0);
    drv_->publish(kDeflate, 0);
    drv_->notify(kDeflate);
    EXPECT_EQ(balloon_->stats().deflated_pages, 2u);
    EXPECT_EQ(dropped_pages(kDataBase, kPageSize), 1u);
}

TEST_F(PrivilegedVirtioBalloonTest, ConfigSpaceTargetActualAndChangeNotification) {
    ASSERT_TRUE(drv_->negotiate(kVirtioFVersion1 | kBalloonFReporting));
    std::uint32_t gen = drv_->rd(reg::kConfigGeneration);
    balloon_->set_target_pages(1234);
    mmio_->notify_config_change();  // before DRIVER_OK: held back
    EXPECT_EQ(drv_->rd(reg::kInterruptStatus), 0u);
    EXPECT_EQ(drv_->rd(reg::kConfigGeneration), gen + 1);
    EXPECT_EQ(drv_->rd(reg::kConfig + 0), 1234u);
    std::uint8_t b = 0;
    mmio_->read(reg::kConfig + 1, std::as_writable_bytes(std::span(&b, 1)));
    EXPECT_EQ(b, 1234 >> 8);
    for (unsigned q : {kInflate, kDeflate, kReporting}) {
        drv_->zero_rings(q);
        drv_->program_queue(q, rings_of(q));
        ASSERT_TRUE(drv_->ready(q));
    }
    drv_->driver_ok();
    EXPECT_EQ(drv_->rd(reg::kInterruptStatus), kInterruptConfigChange);  // raised at DRIVER_OK
    drv_->wr(reg::kInterruptAck, kInterruptConfigChange);
    EXPECT_EQ(drv_->rd(reg::kInterruptStatus), 0u);
    drv_->wr(reg::kConfig + 4, 77);
    drv_->wr(reg::kConfig + 0, 999);  // num_pages is the device's: ignored
    EXPECT_EQ(balloon_->stats().actual_pages, 77u);
    EXPECT_EQ(balloon_->stats().target_pages, 1234u);
    balloon_->set_target_pages(10);
    mmio_->notify_config_change();
    EXPECT_EQ(drv_->rd(reg::kConfigGeneration), gen + 2);
    EXPECT_EQ(drv_->rd(reg::kInterruptStatus), kInterruptConfigChange);
    EXPECT_EQ(drv_->rd(reg::kConfig + 0), 10u);
    EXPECT_EQ(drv_->rd(reg::kConfig + 8), 0u);  // beyond the config space
    // A reset forgets `actual` (the driver's state) but not the host's target.
    drv_->wr(reg::kStatus, 0);
    EXPECT_EQ(drv_->rd(reg::kConfig + 4), 0u);
    EXPECT_EQ(drv_->rd(reg::kConfig + 0), 10u);
}

// --- statistics (STATS_VQ) -------------------------------------------------------------------

namespace {

constexpr std::uint64_t kStatsBuf = 0x9000;
constexpr unsigned kStatsQ = 2;  // with STATS_VQ negotiated; reporting_vq is then 3

// {le16 tag; le64 val} entries, packed.
std::vector<std::byte> stat_entries(const std::vector<std::pair<std::uint16_t, std::uint64_t>>& entries) {
    std::vector<std::byte> out;
    for (auto [tag, val] : entries) {
        out.push_back(static_cast<std::byte>(tag & 0xff));
        out.push_back(static_cast<std::byte>(tag >> 8));
        for (unsigned i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>(val >> (8 * i)));
    }
    return out;
}

std::optional<std::uint64_t> counter(const swapvisor::vmm::control::Counters& cs, std::string_view name) {
    for (const auto& c : cs)
        if (c.name == name) return c.value;
    return std::nullopt;
}

}  // namespace

TEST(VirtioBalloonStats, ParsesEveryKnownTagLittleEndianAndSkipsUnknownOnes) {
    std::vector<std::pair<std::uint16_t, std::uint64_t>> entries;
    for (std::uint16_t tag = 0; tag < kBalloonStatTags; ++tag) entries.push_back({tag, 0x0102030405060700ULL + tag});
    entries.push_back({10, 1});       // beyond VIRTIO_BALLOON_S_NR: unknown
    entries.push_back({0xabcd, 2});   // unknown
    entries.push_back({5, 512ULL << 20});  // MEMTOT again: the last value wins
    auto bytes = stat_entries(entries);
    auto parsed = parse_guest_stats(bytes);
    ASSERT_TRUE(parsed.has_value()) << parsed.error().message();
    for (std::uint16_t tag = 0; tag < kBalloonStatTags; ++tag) {
        ASSERT_TRUE(parsed->values[tag].has_value()) << "tag " << tag;
        EXPECT_EQ(*parsed->values[tag], tag == 5 ? 512ULL << 20 : 0x0102030405060700ULL + tag) << "tag " << tag;
    }
    EXPECT_EQ(parsed->unknown_tags, 2u);
    // Tags the guest did not send stay absent.
    auto only_free = parse_guest_stats(stat_entries({{4, 4096}}));
    ASSERT_TRUE(only_free.has_value());
    EXPECT_EQ(only_free->values[4], std::optional<std::uint64_t>(4096));
    EXPECT_FALSE(only_free->values[5].has_value());
    EXPECT_EQ(only_free->unknown_tags, 0u);
    // The names are distinct and carry the guest_ prefix (they share the JSON object).
    for (unsigned i = 0; i < kBalloonStatTags; ++i) {
        EXPECT_TRUE(kGuestStatNames[i].starts_with("guest_")) << kGuestStatNames[i];
        for (unsigned j = i + 1; j < kBalloonStatTags; ++j) EXPECT_NE(kGuestStatNames[i], kGuestStatNames[j]);
    }
}

TEST(VirtioBalloonStats, RefusesLengthsThatAreNotAWholeNonZeroNumberOfEntries) {
    std::vector<std::byte> bytes = stat_entries({{5, 1}, {4, 2}});  // 20 bytes
    for (std::size_t len : {0UL, 1UL, 9UL, 11UL, 19UL}) {
        auto parsed = parse_guest_stats(std::span(bytes).first(len));
        ASSERT_FALSE(parsed.has_value()) << len << " bytes accepted";
        EXPECT_EQ(parsed.error().code, make_error_code(BalloonErrc::stats_length)) << len;
    }
    EXPECT_TRUE(parse_guest_stats(std::span(bytes).first(10)).has_value());
    EXPECT_TRUE(parse_guest_stats(bytes).has_value());
}

TEST(VirtioBalloonQueues, StatsQueueTakesAnIndexOnlyWhenNegotiated) {
    using Q = BalloonQueue;
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::stats, kBalloonFStatsVq | kBalloonFReporting), 2u);
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::reporting, kBalloonFStatsVq | kBalloonFReporting), 3u);
    EXPECT_EQ(VirtioBalloon::queue_index_of(Q::reporting, kBalloonFReporting | kBalloonFDeflateOnOom), 2u);
}

TEST_F(PrivilegedVirtioBalloonTest, QueueNumberingWithAndWithoutStatsVq) {
    EXPECT_EQ(balloon_->queue_count(kVirtioFVersion1), 2u);
    EXPECT_EQ(balloon_->queue_count(kVirtioFVersion1 | kBalloonFStatsVq), 3u);
    EXPECT_EQ(balloon_->queue_count(kVirtioFVersion1 | kBalloonFReporting), 3u);
    EXPECT_EQ(balloon_->queue_count(kVirtioFVersion1 | kBalloonFStatsVq | kBalloonFReporting), 4u);
    // With STATS_VQ: statsq 2, reporting_vq 3, nothing at 4.
    ASSERT_TRUE(drv_->negotiate(kVirtioFVersion1 | kBalloonFStatsVq | kBalloonFReporting));
    drv_->wr(reg::kQueueSel, 3);
    EXPECT_EQ(drv_->rd(reg::kQueueNumMax), 256u);
    drv_->wr(reg::kQueueSel, 4);
    EXPECT_EQ(drv_->rd(reg::kQueueNumMax), 0u);
    drv_->bring_up_with(kVirtioFVersion1 | kBalloonFStatsVq | kBalloonFReporting, 4);
    // A free range on queue 3 is a report: dropped.
    drv_->put_report(3, {{kDataBase, 1U << 20}});
    drv_->publish(3, 0);
    drv_->notify(3);
    EXPECT_EQ(dropped_pages(kDataBase, 1ULL << 20), (1ULL << 20) / kPageSize);
    // The same on queue 2 is a statistics buffer (here a refused one: device-writable):
    // nothing is dropped and the buffer is held.
    drv_->put_report(2, {{kDataBase + (1ULL << 20), 1U << 20}});
    drv_->publish(2, 0);
    drv_->notify(2);
    EXPECT_EQ(intact_pages(kDataBase + (1ULL << 20), kDataBytes - (1ULL << 20)), (kDataBytes >> 12) - 256);
    EXPECT_EQ(drv_->used_idx(2), 0u);
    EXPECT_EQ(balloon_->stats().stats_refused, 1u);

    // A driver that declines STATS_VQ (Linux numbering): reporting_vq is 2, no queue 3.
    ASSERT_TRUE(drv_->negotiate(kVirtioFVersion1 | kBalloonFReporting));
    drv_->wr(reg::kQueueSel, 3);
    EXPECT_EQ(drv_->rd(reg::kQueueNumMax), 0u);
    drv_->bring_up_with(kVirtioFVersion1 | kBalloonFReporting, 3);
    drv_->put_report(2, {{kDataBase + (2ULL << 20), 1U << 20}});
    drv_->publish(2, 0);
    drv_->notify(2);
    EXPECT_EQ(drv_->used_idx(2), 1u);
    EXPECT_EQ(dropped_pages(kDataBase + (2ULL << 20), 1ULL << 20), (1ULL << 20) / kPageSize);
    EXPECT_EQ(balloon_->stats().stats_refused, 1u);  // not taken for statistics
    EXPECT_EQ(mmio_->status() & kStatusNeedsReset, 0u);
}

TEST_F(PrivilegedVirtioBalloonTest, StatsBufferIsHeldParsedAndGivenBackOnPoll) {
    drv_->bring_up_with(kVirtioFVersion1 | kBalloonFStatsVq | kBalloonFReporting, 4);
    // Before any buffer: no guest figures, and a poll has nothing to give back.
    EXPECT_FALSE(counter(balloon_->counters(), "guest_total_bytes").has_value());
    mmio_->poll_device();
    EXPECT_EQ(balloon_->stats().stats_requests, 0u);

    auto bytes = stat_entries({{5, 64ULL << 20}, {4, 40ULL << 20}, {6, 41ULL << 20}, {0x77, 9}, {2, 3}});
    ASSERT_TRUE(mem_->write(Gpa(kStatsBuf), bytes).has_value());
    drv_->put_desc(kStatsQ, 0, kStatsBuf, static_cast<std::uint32_t>(bytes.size()), 0);
    drv_->publish(kStatsQ, 0);
    drv_->notify(kStatsQ);
    EXPECT_EQ(drv_->used_idx(kStatsQ), 0u) << "the device keeps the statistics buffer";
    BalloonStats s = balloon_->stats();
    EXPECT_EQ(s.stats_updates, 1u);
    EXPECT_EQ(s.stats_unknown_tags, 1u);
    ASSERT_TRUE(s.guest.has_value());
    EXPECT_EQ(s.guest->values[5], std::optional<std::uint64_t>(64ULL << 20));
    auto cs = balloon_->counters();
    EXPECT_EQ(counter(cs, "guest_total_bytes"), std::optional<std::uint64_t>(64ULL << 20));
    EXPECT_EQ(counter(cs, "guest_free_bytes"), std::optional<std::uint64_t>(40ULL << 20));
    EXPECT_EQ(counter(cs, "guest_available_bytes"), std::optional<std::uint64_t>(41ULL << 20));
    EXPECT_EQ(counter(cs, "guest_major_faults"), std::optional<std::uint64_t>(3));
    EXPECT_FALSE(counter(cs, "guest_swap_in_bytes").has_value()) << "a tag the guest did not send";
    ASSERT_TRUE(counter(cs, "guest_stats_age_ms").has_value());
    EXPECT_LT(*counter(cs, "guest_stats_age_ms"), 60000u);

    // The poll gives it back (0 bytes written) and interrupts the driver.
    irq_events_.clear();
    mmio_->poll_device();
    EXPECT_EQ(drv_->used_idx(kStatsQ), 1u);
    EXPECT_EQ(drv_->used_elem(kStatsQ, 0), std::make_pair(0u, 0u));
    EXPECT_EQ(balloon_->stats().stats_requests, 1u);
    EXPECT_EQ(drv_->rd(reg::kInterruptStatus) & kInterruptUsedBuffer, kInterruptUsedBuffer);
    EXPECT_FALSE(irq_events_.empty());
    // Nothing held now: a second poll does nothing.
    mmio_->poll_device();
    EXPECT_EQ(drv_->used_idx(kStatsQ), 1u);
    EXPECT_EQ(balloon_->stats().stats_requests, 1u);

    // The driver answers with fresh figures.
    bytes = stat_entries({{5, 64ULL << 20}, {4, 12ULL << 20}});
    ASSERT_TRUE(mem_->write(Gpa(kStatsBuf), bytes).has_value());
    drv_->put_desc(kStatsQ, 1, kStatsBuf, static_cast<std::uint32_t>(bytes.size()), 0);
    drv_->publish(kStatsQ, 1);
    drv_->notify(kStatsQ);
    EXPECT_EQ(balloon_->stats().stats_updates, 2u);
    EXPECT_EQ(counter(balloon_->counters(), "guest_free_bytes"), std::optional<std::uint64_t>(12ULL << 20));
    EXPECT_FALSE(counter(balloon_->counters(), "guest_major_faults").has_value()) << "figures of the old buffer";

    // A second buffer while one is held: the older one goes back first.
    drv_->put_desc(kStatsQ, 2, kStatsBuf, static_cast<std::uint32_t>(bytes.size()), 0);
    drv_->publish(kStatsQ, 2);
    drv_->notify(kStatsQ);
    EXPECT_EQ(drv_->used_idx(kStatsQ), 2u);
    EXPECT_EQ(drv_->used_elem(kStatsQ, 1).first, 1u);
    mmio_->poll_device();
    EXPECT_EQ(drv_->used_idx(kStatsQ), 3u);
    EXPECT_EQ(drv_->used_elem(kStatsQ, 2).first, 2u);
    EXPECT_EQ(mmio_->status() & kStatusNeedsReset, 0u);
    // A reset forgets the held buffer: nothing goes back on a poll afterwards.
    drv_->put_desc(kStatsQ, 3, kStatsBuf, static_cast<std::uint32_t>(bytes.size()), 0);
    drv_->publish(kStatsQ, 3);
    drv_->notify(kStatsQ);
    drv_->wr(reg::kStatus, 0);
    mmio_->poll_device();
    EXPECT_EQ(balloon_->stats().stats_requests, 2u);
}

TEST_F(PrivilegedVirtioBalloonTest, MalformedStatsBuffersAreRefusedCountedAndStillHeld) {
    drv_->bring_up_with(kVirtioFVersion1 | kBalloonFStatsVq | kBalloonFReporting, 4);
    auto good = stat_entries({{5, 1ULL << 30}});
    ASSERT_TRUE(mem_->write(Gpa(kStatsBuf), good).has_value());
    std::uint16_t head = 0;
    std::uint64_t refused = 0;
    auto send = [&](std::uint64_t addr, std::uint32_t len, std::uint16_t flags) {
        drv_->put_desc(kStatsQ, head, addr, len, flags);
        drv_->publish(kStatsQ, head);
        drv_->notify(kStatsQ);
        ++head;
        mmio_->poll_device();  // give it back, as the poller would
        EXPECT_EQ(drv_->used_idx(kStatsQ), head) << "buffer " << head << " not held and returned";
    };
    send(kStatsBuf, 15, 0);  // not whole entries
    EXPECT_EQ(balloon_->stats().stats_refused, ++refused);
    send(kStatsBuf, 0, 0);  // empty
    EXPECT_EQ(balloon_->stats().stats_refused, ++refused);
    send(kStatsBuf, 10, SplitQueue::kDescFlagWrite);  // device-writable
    EXPECT_EQ(balloon_->stats().stats_refused, ++refused);
    send(kMem - 5, 10, 0);  // runs off the end of RAM
    EXPECT_EQ(balloon_->stats().stats_refused, ++refused);
    send(kStatsBuf, VirtioBalloon::kMaxStatsBytes + 10, 0);  // too large
    EXPECT_EQ(balloon_->stats().stats_refused, ++refused);
    EXPECT_EQ(balloon_->stats().stats_updates, 0u);
    EXPECT_FALSE(counter(balloon_->counters(), "guest_total_bytes").has_value());
    // A good one after all that is taken; the device never needed a reset.
    send(kStatsBuf, 10, 0);
    EXPECT_EQ(balloon_->stats().stats_updates, 1u);
    EXPECT_EQ(balloon_->stats().stats_refused, refused);
    EXPECT_EQ(counter(balloon_->counters(), "guest_total_bytes"), std::optional<std::uint64_t>(1ULL << 30));
    EXPECT_EQ(mmio_->status() & kStatusNeedsReset, 0u);
    expect_all_data_intact();
}

TEST_F(PrivilegedVirtioBalloonTest, StatsKickedBeforeDriverOkAreTakenAtDriverOk) {
    // Linux's init_vqs adds and kicks the first buffer before DRIVER_OK.
    ASSERT_TRUE(drv_->negotiate(kVirtioFVersion1 | kBalloonFStatsVq | kBalloonFReporting));
    for (unsigned q = 0; q < 4; ++q) {
        drv_->zero_rings(q);
        drv_->program_queue(q, rings_of(q));
        ASSERT_TRUE(drv_->ready(q));
    }
    auto bytes = stat_entries({{5, 7ULL << 20}});
    ASSERT_TRUE(mem_->write(Gpa(kStatsBuf), bytes).has_value());
    drv_->put_desc(kStatsQ, 0, kStatsBuf, 10, 0);
    drv_->publish(kStatsQ, 0);
    drv_->notify(kStatsQ);
    EXPECT_EQ(mmio_->stats().ignored_notifies, 1u);
    EXPECT_EQ(balloon_->stats().stats_updates, 0u);
    drv_->driver_ok();
    EXPECT_EQ(balloon_->stats().stats_updates, 1u);
    EXPECT_EQ(counter(balloon_->counters(), "guest_total_bytes"), std::optional<std::uint64_t>(7ULL << 20));
}

TEST_F(PrivilegedVirtioBalloonTest, PollerGivesTheBufferBackOnItsIntervalAndOnRequest) {
    // A poller on a fresh device whose interval is long: only a request wakes it.
    auto slow = std::make_shared<VirtioBalloon>(*mem_, std::chrono::milliseconds(0));
    auto transport = std::make_shared<VirtioMmio>(*mem_, slow);
    Driver drv(*mem_, *transport);
    drv.bring_up_with(kVirtioFVersion1 | kBalloonFStatsVq, 3);
    auto bytes = stat_entries({{5, 3ULL << 20}});
    ASSERT_TRUE(mem_->write(Gpa(kStatsBuf), bytes).has_value());
    drv.put_desc(kStatsQ, 0, kStatsBuf, 10, 0);
    drv.publish(kStatsQ, 0);
    drv.notify(kStatsQ);
    auto wait_used = [](Driver& d, std::uint16_t want) {
        for (int i = 0; i < 500 && d.used_idx(kStatsQ) < want; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return d.used_idx(kStatsQ);
    };
    {
        BalloonStatsPoller poller(slow, transport);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        EXPECT_EQ(drv.used_idx(kStatsQ), 0u) << "interval 0: no poll until asked";
        (void)slow->counters();  // reading the counters asks
        EXPECT_EQ(wait_used(drv, 1), 1u);
    }
    // With an interval, the poller gives it back by itself.
    auto fast = std::make_shared<VirtioBalloon>(*mem_, std::chrono::milliseconds(20));
    auto transport2 = std::make_shared<VirtioMmio>(*mem_, fast);
    Driver drv2(*mem_, *transport2);
    drv2.bring_up_with(kVirtioFVersion1 | kBalloonFStatsVq, 3);
    drv2.put_desc(kStatsQ, 0, kStatsBuf, 10, 0);
    drv2.publish(kStatsQ, 0);
    drv2.notify(kStatsQ);
    BalloonStatsPoller poller(fast, transport2);
    EXPECT_EQ(wait_used(drv2, 1), 1u);
    EXPECT_EQ(fast->stats().stats_requests, 1u);
}

// --- deflate-on-OOM ---------------------------------------------------------------------------

TEST_F(PrivilegedVirtioBalloonTest, DeflatesAtOrBelowTheTargetAreCountedAsOomOrUnrequested) {
    std::uint32_t pfns[8];
    for (std::uint32_t i = 0; i < 8; ++i) pfns[i] = static_cast<std::uint32_t>((kDataBase >> 12) + i);
    ASSERT_TRUE(mem_->write(Gpa(0x8000), std::as_bytes(std::span(pfns))).has_value());
    std::uint16_t inflate_head = 0, deflate_head = 0;
    auto inflate = [&](std::uint32_t n, std::uint32_t first) {
        drv_->put_desc(kInflate, inflate_head, 0x8000 + 4 * first, 4 * n, 0);
        drv_->publish(kInflate, inflate_head++);
        drv_->notify(kInflate);
    };
    auto deflate = [&](std::uint32_t n, std::uint32_t first) {
        drv_->put_desc(kDeflate, deflate_head, 0x8000 + 4 * first, 4 * n, 0);
        drv_->publish(kDeflate, deflate_head++);
        drv_->notify(kDeflate);
    };
    drv_->bring_up_with(kVirtioFVersion1 | kBalloonFDeflateOnOom | kBalloonFReporting, 3);
    balloon_->set_target_pages(6);
    inflate(6, 0);
    EXPECT_EQ(balloon_->stats().balloon_pages, 6u);
    // The host lowers the target to 4: two requested deflates, not OOM.
    balloon_->set_target_pages(4);
    deflate(2, 4);
    BalloonStats s = balloon_->stats();
    EXPECT_EQ(s.deflated_pages, 2u);
    EXPECT_EQ(s.oom_deflated_pages, 0u);
    EXPECT_EQ(s.balloon_pages, 4u);
    // The guest takes 3 more under memory pressure: below the target, OOM deflates.
    deflate(3, 1);
    s = balloon_->stats();
    EXPECT_EQ(s.deflated_pages, 5u);
    EXPECT_EQ(s.oom_deflated_pages, 3u);
    EXPECT_EQ(s.unrequested_deflated_pages, 0u);
    EXPECT_EQ(s.balloon_pages, 1u);
    EXPECT_EQ(counter(balloon_->counters(), "oom_deflated_pages"), std::optional<std::uint64_t>(3));
    // More deflates than were ever inflated: counted, the balloon stays at 0.
    deflate(3, 0);
    EXPECT_EQ(balloon_->stats().balloon_pages, 0u);
    EXPECT_EQ(balloon_->stats().oom_deflated_pages, 6u);

    // Without DEFLATE_ON_OOM the same deflate is accepted but counted as unrequested.
    drv_->bring_up_with(kVirtioFVersion1 | kBalloonFReporting, 3);
    inflate_head = deflate_head = 0;
    EXPECT_EQ(balloon_->stats().balloon_pages, 0u) << "a reset empties the device's balloon count";
    balloon_->set_target_pages(2);
    inflate(2, 0);
    deflate(1, 1);
    s = balloon_->stats();
    EXPECT_EQ(s.unrequested_deflated_pages, 1u);
    EXPECT_EQ(s.oom_deflated_pages, 6u);
    EXPECT_EQ(s.balloon_pages, 1u);
    EXPECT_EQ(drv_->used_idx(kDeflate), 1u) << "the deflate buffer still goes back";
    EXPECT_EQ(mmio_->status() & kStatusNeedsReset, 0u);
}

// --- over real swap: a reported swapped page frees its VSlot -----------------------------

TEST(PrivilegedVirtioBalloonSwap, ReportedSwappedPagesFreeTheirSlots) {
    auto dir = std::filesystem::temp_directory_path() / ("swv-virtio-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    {
        swap::SwapPool pool;
        auto id = pool.swapon(dir / "a.swap", 0, 64ULL << 20);
        ASSERT_TRUE(id.has_value()) << id.error().message();
        HostMemory host(pool, 0);
        auto vm = host.create_vm(MemoryConfig{.name = "vb", .memory_bytes = kMem, .resident_limit = 4ULL << 20});
        if (!vm && vm.error().code == guestmem::make_error_code(guestmem::Errc::unsupported))
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable: " << vm.error().message();
        ASSERT_TRUE(vm.has_value()) << vm.error().message();
        GuestMemory& mem = **vm;
        ASSERT_TRUE(mem.start().has_value());
        // The "guest" dirties 16 MiB through its view: over the 4 MiB limit, most of it is swapped out.
        auto* g = reinterpret_cast<volatile std::uint64_t*>(mem.regions()[0].guest_view + kDataBase);
        for (std::uint64_t w = 0; w < (16ULL << 20) / 8; w += 64) g[w] = pattern(kDataBase + 8 * w);
        ASSERT_GT(mem.stats().swap_out_pages, 0u);

        auto balloon = std::make_shared<VirtioBalloon>(mem);
        VirtioMmio mmio(mem, balloon);
        Driver drv(mem, mmio);
        drv.bring_up();
        // Report the first 8 MiB in 2 MiB ranges.
        drv.put_report(kReporting, {{kDataBase, 2U << 20},
                                    {kDataBase + (2ULL << 20), 2U << 20},
                                    {kDataBase + (4ULL << 20), 2U << 20},
                                    {kDataBase + (6ULL << 20), 2U << 20}});
        std::uint64_t swapped_before = 0;
        for (std::uint64_t p = kDataBase; p < kDataBase + (8ULL << 20); p += kPageSize)
            swapped_before += mem.entry(Gpa(p)).state() == PageState::swapped;
        ASSERT_GT(swapped_before, 0u) << "nothing in the reported range was swapped: the test would prove nothing";
        drv.publish(kReporting, 0);
        drv.notify(kReporting);
        EXPECT_EQ(balloon->stats().reported_pages, (8ULL << 20) / kPageSize);
        for (std::uint64_t p = kDataBase; p < kDataBase + (8ULL << 20); p += kPageSize)
            ASSERT_EQ(mem.entry(Gpa(p)).state(), PageState::zero) << std::hex << p;
        // The guest reads zeros there and its data everywhere else.
        for (std::uint64_t w = 0; w < (8ULL << 20) / 8; w += 512) ASSERT_EQ(g[w], 0u);
        for (std::uint64_t w = (8ULL << 20) / 8; w < (16ULL << 20) / 8; w += 64)
            ASSERT_EQ(g[w], pattern(kDataBase + 8 * w));
        mem.stop();
        // No VSlot leaked and none still referenced by the discarded pages.
        EXPECT_EQ(pool.allocated_vslots(), mem.referenced_vslots());
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
}

// --- issue #16 item 8: a config change never waits for a queue's work -------------------

namespace {

// A device whose queue work takes as long as the test says: it holds the transport's
// mutex meanwhile, as a balloon inflate over gigabytes (swap-ins included) does.
class SlowQueueDevice final : public VirtioDevice {
public:
    std::uint32_t device_id() const override { return 5; }
    std::uint64_t device_features() const override { return kVirtioFVersion1; }
    unsigned queue_count(std::uint64_t) const override { return 1; }
    void read_config(std::uint64_t, std::span<std::byte>) override {}
    void write_config(std::uint64_t, std::span<const std::byte>) override {}
    Result<void> process_queue(unsigned, SplitQueue&, std::uint64_t) override {
        entered.set_value();
        released.wait();
        return {};
    }
    void reset() override {}
    std::promise<void> entered;
    std::shared_future<void> released;
};

}  // namespace

TEST(PrivilegedVirtioMmioConfigChange, NotifyDoesNotWaitForAVcpusQueueWork) {
    auto mem = create_guest_memory(MemoryConfig{.name = "slowq", .memory_bytes = 4ULL << 20}, 1, nullptr, nullptr);
    if (!mem) GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable: " << mem.error().message();
    auto device = std::make_shared<SlowQueueDevice>();
    std::promise<void> release;
    device->released = release.get_future().share();
    std::atomic<int> raised{0};
    VirtioMmio mmio(**mem, device, [&](IrqLevel l) { raised += l == IrqLevel::high; });
    Driver drv(**mem, mmio);
    drv.bring_up_with(kVirtioFVersion1, 1);
    const std::uint32_t gen = drv.rd(reg::kConfigGeneration);

    // A vCPU notifies the queue and is inside its work, holding the transport.
    std::thread vcpu([&] { drv.notify(0); });
    ASSERT_EQ(device->entered.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
    // The control socket's set-balloon: it must not wait for that work.
    auto notified = std::async(std::launch::async, [&] {
        mmio.notify_config_change();
        return mmio.status();
    });
    const bool prompt = notified.wait_for(std::chrono::seconds(2)) == std::future_status::ready;
    EXPECT_TRUE(prompt) << "notify_config_change waited for a vCPU's queue work";
    EXPECT_EQ(raised.load(), prompt ? 1 : 0) << "the config-change interrupt goes out at once";
    release.set_value();
    vcpu.join();
    EXPECT_NE(notified.get() & kStatusDriverOk, 0u);
    EXPECT_EQ(drv.rd(reg::kConfigGeneration), gen + 1);
    EXPECT_NE(drv.rd(reg::kInterruptStatus) & kInterruptConfigChange, 0u);
    EXPECT_EQ(raised.load(), 1);
    EXPECT_EQ(mmio.stats().interrupts, 1u);
}

// --- snapshot: save() / restore() ----------------------------------------------------------

// A transport and balloon saved mid-use and restored into fresh objects over the same
// guest memory (what a restored VM gets) carry on exactly: the rings continue at the
// saved indices (a fresh QueueReady would start them over at 0), the held statistics
// buffer is given back by the new device, the counters and the raised interrupt
// survive.
TEST_F(PrivilegedVirtioBalloonTest, SavedTransportAndBalloonContinueOnFreshObjects) {
    constexpr unsigned kReportQ = 3;  // with STATS_VQ negotiated
    drv_->bring_up_with(kVirtioFVersion1 | kBalloonFStatsVq | kBalloonFReporting, 4);
    drv_->put_report(kReportQ, {{kDataBase, static_cast<std::uint32_t>(kPageSize)}});
    drv_->publish(kReportQ, 0);
    drv_->notify(kReportQ);
    ASSERT_EQ(drv_->used_idx(kReportQ), 1u);
    auto bytes = stat_entries({{5, 64ULL << 20}, {4, 40ULL << 20}});
    ASSERT_TRUE(mem_->write(Gpa(kStatsBuf), bytes).has_value());
    drv_->put_desc(kStatsQ, 0, kStatsBuf, static_cast<std::uint32_t>(bytes.size()), 0);
    drv_->publish(kStatsQ, 0);
    drv_->notify(kStatsQ);
    balloon_->set_target_pages(77);

    const VirtioMmioState transport = mmio_->save();
    const BalloonState device = balloon_->save();
    EXPECT_EQ(transport.queues[kReportQ].next_used, 1u);
    EXPECT_EQ(transport.queues[kReportQ].last_avail, 1u);
    EXPECT_NE(transport.interrupt_status, 0u);
    ASSERT_TRUE(device.stats_head.has_value());
    EXPECT_EQ(device.stats.reported_pages, 1u);
    EXPECT_EQ(device.stats.target_pages, 77u);
    EXPECT_FALSE(device.stats.guest_age.has_value());

    auto balloon2 = std::make_shared<VirtioBalloon>(*mem_);
    std::vector<IrqLevel> irq2;
    VirtioMmio mmio2(*mem_, balloon2, [&](IrqLevel l) { irq2.push_back(l); });
    ASSERT_TRUE(mmio2.restore(transport).has_value());
    ASSERT_TRUE(balloon2->restore(device).has_value());
    EXPECT_EQ(mmio2.save(), transport);
    EXPECT_EQ(balloon2->save(), device);
    ASSERT_EQ(irq2.size(), 1u) << "the saved interrupt is raised again";
    EXPECT_EQ(irq2[0], IrqLevel::high);

    Driver drv2(*mem_, mmio2);
    EXPECT_EQ(drv2.rd(reg::kStatus), transport.status);
    drv2.set_avail_idx(kReportQ, 1);  // where the guest's driver is
    drv2.put_report(kReportQ, {{kDataBase + kPageSize, static_cast<std::uint32_t>(kPageSize)}});
    drv2.publish(kReportQ, 0);
    drv2.notify(kReportQ);
    EXPECT_EQ(drv2.used_idx(kReportQ), 2u) << "the used ring continues at the saved index";
    EXPECT_EQ(balloon2->stats().reported_pages, 2u);
    EXPECT_EQ(dropped_pages(kDataBase, 2 * kPageSize), 2u);
    mmio2.poll_device();
    EXPECT_EQ(drv2.used_idx(kStatsQ), 1u) << "the held statistics buffer goes back from the new device";
    EXPECT_EQ(balloon2->stats().stats_requests, device.stats.stats_requests + 1);
    EXPECT_EQ(mmio2.status() & kStatusNeedsReset, 0u);
}

TEST_F(PrivilegedVirtioBalloonTest, RestoreRefusesAStateThatDoesNotFitAndChangesNothing) {
    drv_->bring_up();
    const VirtioMmioState good = mmio_->save();
    auto balloon2 = std::make_shared<VirtioBalloon>(*mem_);
    VirtioMmio mmio2(*mem_, balloon2);
    const VirtioMmioState fresh = mmio2.save();

    VirtioMmioState other_device = good;
    other_device.device_id = 2;
    auto r = mmio2.restore(other_device);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, make_error_code(VirtioErrc::bad_saved_state));
    EXPECT_NE(r.error().message().find("device id 2 saved"), std::string::npos) << r.error().message();

    VirtioMmioState outside = good;
    outside.queues[1].desc_addr = kMem;  // a ready queue outside RAM
    auto o = mmio2.restore(outside);
    ASSERT_FALSE(o.has_value());
    EXPECT_EQ(o.error().code, make_error_code(VirtioErrc::bad_ring_address));
    EXPECT_NE(o.error().message().find("queue 1"), std::string::npos) << o.error().message();

    VirtioMmioState cursors = good;
    cursors.queues[0].last_avail = static_cast<std::uint16_t>(cursors.queues[0].next_used + kQueueSize + 1);
    auto c = mmio2.restore(cursors);
    ASSERT_FALSE(c.has_value());
    EXPECT_EQ(c.error().code, make_error_code(VirtioErrc::bad_avail_index));

    VirtioMmioState fewer = good;
    fewer.queues.pop_back();
    EXPECT_FALSE(mmio2.restore(fewer).has_value());
    VirtioMmioState unoffered = good;
    unoffered.driver_features |= 1ULL << 40;
    EXPECT_FALSE(mmio2.restore(unoffered).has_value());
    EXPECT_EQ(mmio2.save(), fresh) << "a refused restore changes nothing";

    BalloonState held;
    held.stats_head = 3;
    held.stats_queue = 9;
    auto b = balloon2->restore(held);
    ASSERT_FALSE(b.has_value());
    EXPECT_EQ(b.error().code, make_error_code(BalloonErrc::bad_saved_state));
}
