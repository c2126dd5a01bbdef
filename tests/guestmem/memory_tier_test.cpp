// The compressed memory tier on the real stack: guest memory (memfd views, real
// userfaultfd faults, the reclaimer) overcommitted onto a small memory tier in front
// of a real O_DIRECT file through io_uring. The tier is a few MiB, so it passes its
// high watermark again and again and demotion runs all the time, racing the faults
// of the "guest" (a host thread touching the guest view). Every byte is verified,
// and at rest no vslot or slot is left that the VM does not refer to.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;

namespace {

std::uint64_t mix(std::uint64_t page, std::uint64_t word, std::uint64_t pass) {
    std::uint64_t x = page * 0x9E3779B97F4A7C15ULL ^ (word << 17) ^ (pass * 0xBF58476D1CE4E5B9ULL);
    x ^= x >> 31;
    x *= 0x94D049BB133111EBULL;
    return x | 1;  // never an all-zero page
}
// Four pages in five compress (a random head of 32 words, then one word repeated);
// every fifth is random throughout and is refused by the tier.
std::uint64_t pattern(std::uint64_t page, std::uint64_t word, std::uint64_t pass) {
    if (page % 5 == 4 || word < 32) return mix(page, word, pass);
    return mix(page, 32, pass);
}

void write_pass(std::byte* base, std::uint64_t pages, std::uint64_t pass) {
    for (std::uint64_t p = 0; p < pages; ++p) {
        auto* w = reinterpret_cast<volatile std::uint64_t*>(base + p * kPageSize);
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) w[i] = pattern(p, i, pass);
    }
}

std::uint64_t verify_pass(const std::byte* base, std::uint64_t pages, std::uint64_t pass) {
    std::uint64_t errors = 0;
    for (std::uint64_t p = 0; p < pages; ++p) {
        auto* w = reinterpret_cast<const volatile std::uint64_t*>(base + p * kPageSize);
        for (std::uint64_t i = 0; i < kPageSize / 8; ++i) {
            if (w[i] != pattern(p, i, pass)) {
                ++errors;
                break;
            }
        }
    }
    return errors;
}

class PrivilegedMemoryTierStack : public ::testing::Test {
protected:
    void SetUp() override {
        if (access("/proc/sys/vm/unprivileged_userfaultfd", F_OK) != 0 && access("/dev/kvm", F_OK) != 0)
            GTEST_SKIP() << "SKIPPED LOUDLY: userfaultfd unavailable";
        dir_ = std::filesystem::temp_directory_path() /
               ("swv-tier-" + std::to_string(getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
        pool_ = std::make_unique<swap::SwapPool>();
        auto tier = pool_->swapon("mem:2M,codec=lz4,high=80,low=50", 10, 0);
        ASSERT_TRUE(tier) << tier.error().message();
        auto disk = pool_->swapon(dir_ / "disk.swap", 0, 96ULL << 20);
        ASSERT_TRUE(disk) << disk.error().message();
        host_ = std::make_unique<HostMemory>(*pool_, 0);
    }
    void TearDown() override {
        host_.reset();
        pool_.reset();
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    swap::DeviceStats tier_stats() const {
        for (const swap::DeviceStats& d : pool_->stats())
            if (d.kind == "memory") return d;
        return {};
    }
    std::uint64_t used_slots() const {
        std::uint64_t used = 0;
        for (const swap::DeviceStats& d : pool_->stats()) used += d.used_slots;
        return used;
    }

    std::filesystem::path dir_;
    std::unique_ptr<swap::SwapPool> pool_;
    std::unique_ptr<HostMemory> host_;
};

TEST_F(PrivilegedMemoryTierStack, OvercommitOntoASmallTierAndAFileVerifiesEveryByteWhileDemotionRuns) {
    constexpr std::uint64_t kMem = 48ULL << 20, kLimit = 8ULL << 20;
    auto vm_or = host_->create_vm(MemoryConfig{.name = "t", .memory_bytes = kMem, .resident_limit = kLimit});
    ASSERT_TRUE(vm_or) << vm_or.error().message();
    GuestMemory* vm = *vm_or;
    ASSERT_TRUE(vm->start());
    std::byte* g = vm->regions()[0].guest_view;
    const std::uint64_t pages = (40ULL << 20) / kPageSize;
    for (std::uint64_t pass = 1; pass <= 3; ++pass) {
        write_pass(g, pages, pass);
        ASSERT_EQ(verify_pass(g, pages, pass), 0u) << "pass " << pass;
    }
    MemStats s = vm->stats();
    const swap::DeviceStats t = tier_stats();
    std::printf("swap_out=%lu swap_in=%lu major=%lu; tier: stored=%lu ratio=%.2f frag=%.2f rejected=%lu "
                "demoted=%lu served=%lu arena=%lu KiB\n",
                s.swap_out_pages, s.swap_in_pages, s.major_faults, t.stored_pages, t.ratio(), t.fragmentation(),
                t.rejected_pages, t.demoted_pages, t.swapins_served, t.arena_bytes >> 10);
    EXPECT_GT(s.swap_out_pages, pages);
    EXPECT_EQ(s.lost_pages, 0u);
    EXPECT_LE(s.resident_bytes_peak, kLimit + kLimit / 10);
    // The tier took the compressible pages, refused the others, and demotion kept
    // sending its coldest down while the guest faulted pages back from both tiers.
    EXPECT_GT(t.stored_pages, 0u);
    EXPECT_GT(t.rejected_pages, 0u);
    EXPECT_GT(t.demoted_pages, 1000u);
    EXPECT_GT(t.swapins_served, 0u);
    EXPECT_LE(t.arena_bytes, t.capacity_bytes);
    EXPECT_EQ(t.write_errors + t.read_errors, 0u);
    vm->stop();
    // The host budget's count of the tiers' arenas is the tiers' own figure. Compared
    // at rest: while the VM ran, a reclaim worker could still be storing or demoting
    // between the two reads (a TSan run caught them one 16 KiB apart).
    EXPECT_EQ(pool_->memory_tier_bytes(), tier_stats().arena_bytes);
    // At rest: every vslot is one the VM refers to, and every used slot is one vslot
    // (no page in two tiers or in none).
    EXPECT_EQ(pool_->allocated_vslots(), vm->referenced_vslots());
    EXPECT_EQ(used_slots(), pool_->allocated_vslots());
    ASSERT_TRUE(host_->remove_vm("t"));
    EXPECT_EQ(pool_->allocated_vslots(), 0u);
    EXPECT_EQ(used_slots(), 0u);
    EXPECT_EQ(tier_stats().arena_bytes, 0u);
}

TEST_F(PrivilegedMemoryTierStack, TheSwapQuotaCountsPagesInEveryTier) {
    constexpr std::uint64_t kMem = 16ULL << 20, kLimit = 2ULL << 20, kQuota = 6ULL << 20;
    auto vm_or = host_->create_vm(
        MemoryConfig{.name = "q", .memory_bytes = kMem, .resident_limit = kLimit, .swap_quota = kQuota});
    ASSERT_TRUE(vm_or) << vm_or.error().message();
    GuestMemory* vm = *vm_or;
    ASSERT_TRUE(vm->start());
    std::byte* g = vm->regions()[0].guest_view;
    const std::uint64_t pages = kMem / kPageSize;
    write_pass(g, pages, 1);
    MemStats s = vm->stats();
    const swap::DeviceStats t = tier_stats();
    EXPECT_GT(t.stored_pages, 0u) << "some pages are in the tier";
    EXPECT_GT(used_slots(), t.used_slots) << "some are on the disk";
    EXPECT_LE(s.swapped_bytes, kQuota);
    EXPECT_LE(pool_->allocated_vslots() * kPageSize, kQuota + (1ULL << 20)) << "the quota missed a tier";
    EXPECT_EQ(verify_pass(g, pages, 1), 0u);
    vm->stop();
    EXPECT_EQ(pool_->allocated_vslots(), vm->referenced_vslots());
}

}  // namespace
