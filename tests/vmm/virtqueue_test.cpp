// SplitQueue on its own, without the virtio-mmio transport: the test programs the
// queue through its setters (as the transport does from register writes), lays
// out the descriptor table and the rings in a real GuestMemory through
// GuestMemory::write, and checks every validation of virtqueue.hpp, each with the
// error code that names it, and the used-ring / interrupt protocol.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "guestmem/errc.hpp"
#include "guestmem/guest_memory.hpp"
#include "vmm/devices/virtqueue.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using namespace swapvisor::vmm::devices;

namespace {

constexpr std::uint64_t kMem = 16ULL << 20;
constexpr std::uint16_t kSize = 8;
constexpr std::uint64_t kDesc = 0x10000, kAvail = 0x11000, kUsed = 0x12000;

class PrivilegedVirtqueueTest : public ::testing::Test {
protected:
    void SetUp() override {
        auto mem = create_guest_memory(MemoryConfig{.name = "virtqueue", .memory_bytes = kMem}, 1, nullptr, nullptr);
        if (!mem && (mem.error().is(std::errc::function_not_supported) ||
                     mem.error().is(std::errc::operation_not_permitted) ||
                     mem.error().code == guestmem::make_error_code(guestmem::Errc::unsupported)))
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable: " << mem.error().message();
        ASSERT_TRUE(mem.has_value()) << mem.error().message();
        mem_ = std::move(*mem);
        std::vector<std::byte> zeros(0x3000);
        ASSERT_TRUE(mem_->write(Gpa(kDesc), zeros).has_value());
        queue_ = std::make_unique<SplitQueue>(*mem_, 256);
        queue_->reset();
        program(kSize);
    }

    void program(std::uint16_t size, std::uint64_t desc = kDesc, std::uint64_t avail = kAvail,
                 std::uint64_t used = kUsed) {
        queue_->set_size(size);
        queue_->set_desc_addr(desc);
        queue_->set_driver_addr(avail);
        queue_->set_device_addr(used);
    }
    template <class T>
    void put(std::uint64_t gpa, T v) {
        ASSERT_TRUE(mem_->write(Gpa(gpa), std::as_bytes(std::span(&v, 1))).has_value());
    }
    template <class T>
    T get(std::uint64_t gpa) {
        T v{};
        EXPECT_TRUE(mem_->read(Gpa(gpa), std::as_writable_bytes(std::span(&v, 1))).has_value());
        return v;
    }
    void desc(std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags, std::uint16_t next = 0) {
        struct {
            std::uint64_t addr;
            std::uint32_t len;
            std::uint16_t flags, next;
        } d{addr, len, flags, next};
        put(kDesc + 16ULL * i, d);
    }
    // Make `head` available in ring slot `slot` and publish avail idx = `idx`.
    void offer(std::uint16_t slot, std::uint16_t head, std::uint16_t idx) {
        put<std::uint16_t>(kAvail + 4 + 2ULL * slot, head);
        put<std::uint16_t>(kAvail + 2, idx);
    }
    void expect_pop_error(VirtioErrc code) {
        auto r = queue_->pop();
        ASSERT_FALSE(r.has_value()) << "pop accepted a malformed queue";
        EXPECT_EQ(r.error().code, make_error_code(code)) << r.error().message();
    }

    std::unique_ptr<GuestMemory> mem_;
    std::unique_ptr<SplitQueue> queue_;
};

void expect_enable_error(SplitQueue& q, VirtioErrc code) {
    auto r = q.enable();
    ASSERT_FALSE(r.has_value()) << "enable accepted a bad queue";
    EXPECT_EQ(r.error().code, make_error_code(code)) << r.error().message();
    EXPECT_FALSE(q.ready());
}

}  // namespace

TEST_F(PrivilegedVirtqueueTest, EnableChecksSize) {
    for (std::uint16_t bad : {std::uint16_t{0}, std::uint16_t{6}, std::uint16_t{512}}) {
        program(bad);
        expect_enable_error(*queue_, VirtioErrc::bad_queue_size);
    }
    program(kSize);
    EXPECT_TRUE(queue_->enable().has_value());
    EXPECT_TRUE(queue_->ready());
}

TEST_F(PrivilegedVirtqueueTest, EnableChecksRingPlacement) {
    program(kSize, kDesc + 8);  // descriptor table must be 16-byte aligned
    expect_enable_error(*queue_, VirtioErrc::bad_ring_address);
    program(kSize, kDesc, kAvail + 1);  // available ring 2-byte aligned
    expect_enable_error(*queue_, VirtioErrc::bad_ring_address);
    program(kSize, kDesc, kAvail, kUsed + 2);  // used ring 4-byte aligned
    expect_enable_error(*queue_, VirtioErrc::bad_ring_address);
    program(kSize, kMem - 16);  // runs past the end of RAM
    expect_enable_error(*queue_, VirtioErrc::bad_ring_address);
    program(kSize, kDesc, kAvail, 0xffff'ffff'ffff'fff0ULL);  // overflows
    expect_enable_error(*queue_, VirtioErrc::bad_ring_address);
}

TEST_F(PrivilegedVirtqueueTest, PopReadsAWholeChainInOrder) {
    ASSERT_TRUE(queue_->enable().has_value());
    auto none = queue_->pop();
    ASSERT_TRUE(none.has_value());
    EXPECT_FALSE(none->has_value()) << "nothing offered yet";

    desc(3, 0x200000, 0x1000, SplitQueue::kDescFlagNext, 5);
    desc(5, 0x300000, 0x2000, SplitQueue::kDescFlagNext | SplitQueue::kDescFlagWrite, 1);
    desc(1, 0x400000, 0x10, SplitQueue::kDescFlagWrite);
    offer(0, 3, 1);
    auto chain = queue_->pop();
    ASSERT_TRUE(chain.has_value()) << chain.error().message();
    ASSERT_TRUE(chain->has_value());
    EXPECT_EQ((*chain)->head, 3);
    ASSERT_EQ((*chain)->descriptors.size(), 3u);
    EXPECT_EQ((*chain)->descriptors[0].addr, Gpa(0x200000));
    EXPECT_EQ((*chain)->descriptors[0].len, 0x1000u);
    EXPECT_FALSE((*chain)->descriptors[0].device_writable);
    EXPECT_EQ((*chain)->descriptors[1].addr, Gpa(0x300000));
    EXPECT_TRUE((*chain)->descriptors[1].device_writable);
    EXPECT_EQ((*chain)->descriptors[2].len, 0x10u);
    auto empty = queue_->pop();
    ASSERT_TRUE(empty.has_value());
    EXPECT_FALSE(empty->has_value()) << "the chain was consumed";
}

TEST_F(PrivilegedVirtqueueTest, PopRefusesAnAvailableIndexTooFarAhead) {
    ASSERT_TRUE(queue_->enable().has_value());
    put<std::uint16_t>(kAvail + 2, kSize + 1);
    expect_pop_error(VirtioErrc::bad_avail_index);
}

TEST_F(PrivilegedVirtqueueTest, PopRefusesBadIndices) {
    ASSERT_TRUE(queue_->enable().has_value());
    offer(0, kSize, 1);  // head outside the table
    expect_pop_error(VirtioErrc::bad_descriptor_index);

    queue_->reset();
    program(kSize);
    ASSERT_TRUE(queue_->enable().has_value());
    desc(0, 0x200000, 16, SplitQueue::kDescFlagNext, kSize);  // next outside the table
    offer(0, 0, 1);
    expect_pop_error(VirtioErrc::bad_descriptor_index);
}

TEST_F(PrivilegedVirtqueueTest, PopEndsALoop) {
    ASSERT_TRUE(queue_->enable().has_value());
    desc(0, 0x200000, 16, SplitQueue::kDescFlagNext, 1);
    desc(1, 0x201000, 16, SplitQueue::kDescFlagNext, 0);
    offer(0, 0, 1);
    expect_pop_error(VirtioErrc::descriptor_loop);
}

TEST_F(PrivilegedVirtqueueTest, PopRefusesIndirectAndReadableAfterWritable) {
    ASSERT_TRUE(queue_->enable().has_value());
    desc(0, 0x200000, 16, SplitQueue::kDescFlagIndirect);
    offer(0, 0, 1);
    expect_pop_error(VirtioErrc::indirect_descriptor);

    queue_->reset();
    program(kSize);
    ASSERT_TRUE(queue_->enable().has_value());
    desc(0, 0x200000, 16, SplitQueue::kDescFlagWrite | SplitQueue::kDescFlagNext, 1);
    desc(1, 0x201000, 16, 0);
    offer(0, 0, 1);
    expect_pop_error(VirtioErrc::readable_after_writable);
}

TEST_F(PrivilegedVirtqueueTest, PushUsedPublishesAndInterruptFollowsNoInterruptFlag) {
    ASSERT_TRUE(queue_->enable().has_value());
    auto none = queue_->take_interrupt_request();
    ASSERT_TRUE(none.has_value());
    EXPECT_FALSE(*none) << "no used buffer yet";

    ASSERT_TRUE(queue_->push_used(4, 123).has_value());
    EXPECT_EQ(get<std::uint32_t>(kUsed + 4), 4u);
    EXPECT_EQ(get<std::uint32_t>(kUsed + 8), 123u);
    EXPECT_EQ(get<std::uint16_t>(kUsed + 2), 1u);
    auto wanted = queue_->take_interrupt_request();
    ASSERT_TRUE(wanted.has_value());
    EXPECT_TRUE(*wanted);

    put<std::uint16_t>(kAvail, SplitQueue::kAvailFlagNoInterrupt);
    ASSERT_TRUE(queue_->push_used(2, 0).has_value());
    EXPECT_EQ(get<std::uint32_t>(kUsed + 4 + 8), 2u) << "second element in slot 1";
    EXPECT_EQ(get<std::uint16_t>(kUsed + 2), 2u);
    auto suppressed = queue_->take_interrupt_request();
    ASSERT_TRUE(suppressed.has_value());
    EXPECT_FALSE(*suppressed) << "the driver set VIRTQ_AVAIL_F_NO_INTERRUPT";
}
