// The compressed memory tier (swap/memory_tier.hpp): codecs, the size-class arena,
// the mem: spec, and a memory tier in a SwapPool in front of a real file: placement
// by compressibility, demotion by slot down to the low watermark, swapoff of the
// tier, reads racing demotion, and no object, slot or vslot left behind.
#include "swap/memory_tier.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "swap/swap_pool.hpp"
#include "tests/swap/swap_test_util.hpp"

namespace swapvisor::swap {
namespace {

using test::kClusterBytes;
using test::Pages;

// A page that compresses (a random head of 64..960 bytes, then a repeated word),
// and still names its (id, version) in every byte that differs between pages.
void fill_compressible(std::byte* page, std::uint64_t id, std::uint32_t version = 0) {
    test::fill_page(page, id, version);
    const std::size_t head = 64 + (id % 8) * 128;
    const std::uint64_t word = id * 0x100000001b3ull + version;
    for (std::size_t off = head; off < kSlotSize; off += 8) std::memcpy(page + off, &word, 8);
}
bool verify_compressible(const std::byte* page, std::uint64_t id, std::uint32_t version = 0) {
    alignas(4096) static thread_local std::byte expect[kSlotSize];
    fill_compressible(expect, id, version);
    return std::memcmp(page, expect, kSlotSize) == 0;
}

const DeviceStats& tier_of(const std::vector<DeviceStats>& stats) {
    for (const DeviceStats& d : stats)
        if (d.kind == "memory") return d;
    ADD_FAILURE() << "no memory tier in the pool";
    return stats.front();
}

TEST(MemoryTierCodec, BothCodecsRoundTripAndRefuseWhatDoesNotCompress) {
    Pages pages(3);
    fill_compressible(pages[0], 7);
    test::fill_page(pages[1], 8);  // random: does not compress
    for (Codec codec : {Codec::lz4, Codec::zstd}) {
        alignas(64) std::byte packed[kSlotSize];
        const std::size_t n = compress_page(codec, pages[0], std::span(packed, 3072));
        ASSERT_GT(n, 0u) << codec_name(codec);
        EXPECT_LT(n, 1100u) << codec_name(codec);
        std::memset(pages[2], 0xee, kSlotSize);
        ASSERT_TRUE(decompress_page(codec, std::span(packed, n), pages[2])) << codec_name(codec);
        EXPECT_TRUE(verify_compressible(pages[2], 7)) << codec_name(codec);
        // A truncated object is refused, never half a page.
        EXPECT_FALSE(decompress_page(codec, std::span(packed, n / 2), pages[2])) << codec_name(codec);
        EXPECT_EQ(compress_page(codec, pages[1], std::span(packed, 3072)), 0u) << codec_name(codec);
    }
}

TEST(MemoryTierArena, PacksBySizeClassReusesBlocksAndGivesEmptyOnesBack) {
    auto arena = SizeClassArena::create(4 * SizeClassArena::kBlockBytes);
    ASSERT_TRUE(arena);
    EXPECT_EQ(SizeClassArena::class_size(1), 64u);
    EXPECT_EQ(SizeClassArena::class_size(65), 128u);
    EXPECT_EQ(SizeClassArena::class_size(4096), 4096u);
    // Class 128: 128 objects per 16 KiB block; 300 objects take 3 blocks.
    std::vector<std::uint32_t> handles;
    for (std::uint32_t i = 0; i < 300; ++i) {
        const std::uint32_t h = arena->allocate(100);
        ASSERT_NE(h, SizeClassArena::kNoHandle) << i;
        std::memset(arena->address(h), static_cast<int>(i & 0xff), 100);
        handles.push_back(h);
    }
    EXPECT_EQ(arena->bytes_in_use(), 3u * SizeClassArena::kBlockBytes);
    for (std::uint32_t i = 0; i < 300; ++i) {
        const std::byte* p = arena->address(handles[i]);
        for (int k = 0; k < 100; ++k) ASSERT_EQ(p[k], std::byte(i & 0xff)) << i;  // no two objects overlap
    }
    // One block left: a 4 KiB-class object takes it, the next finds no room.
    const std::uint32_t big = arena->allocate(4000);
    ASSERT_NE(big, SizeClassArena::kNoHandle);
    for (int i = 0; i < 3; ++i) ASSERT_NE(arena->allocate(4000), SizeClassArena::kNoHandle);
    EXPECT_EQ(arena->allocate(4000), SizeClassArena::kNoHandle);
    EXPECT_EQ(arena->allocate(64), SizeClassArena::kNoHandle);
    // Freeing a whole block's objects gives the block back; a partial block stays.
    for (std::uint32_t i = 0; i < 128; ++i) arena->free(handles[i]);
    EXPECT_EQ(arena->bytes_in_use(), 3u * SizeClassArena::kBlockBytes);
    EXPECT_NE(arena->allocate(64), SizeClassArena::kNoHandle);  // the freed block, another class
    for (std::uint32_t i = 128; i < 300; ++i) arena->free(handles[i]);
    // What is left: the 4 KiB objects' block and the 64 B object's block.
    EXPECT_EQ(arena->bytes_in_use(), 2u * SizeClassArena::kBlockBytes);
}

TEST(MemoryTierSpec, ParsesOptionsNamesBySizeAndRefusesNonsense) {
    auto spec = parse_memory_tier("mem:256M,codec=zstd,max=2048,high=80,low=60,share=30");
    ASSERT_TRUE(spec) << spec.error().message();
    EXPECT_EQ(spec->size_bytes, 256u << 20);
    EXPECT_EQ(spec->codec, Codec::zstd);
    EXPECT_EQ(spec->max_stored, 2048u);
    EXPECT_EQ(spec->high_pct, 80u);
    EXPECT_EQ(spec->low_pct, 60u);
    EXPECT_EQ(spec->share_pct, 30u);
    EXPECT_EQ(spec->name(), "mem:256M");
    EXPECT_EQ(parse_memory_tier("mem:1G")->name(), "mem:1G");
    EXPECT_EQ(parse_memory_tier("mem:1536M")->name(), "mem:1536M");
    EXPECT_EQ(parse_memory_tier("mem:1G")->codec, Codec::lz4);
    EXPECT_EQ(canonical_swap_path("mem:1024M,codec=zstd"), "mem:1G");
    for (const char* bad : {"mem:", "mem:12Q", "mem:4K", "mem:1G,codec=gzip", "mem:1G,max=10", "mem:1G,max=8K",
                            "mem:1G,high=50,low=60", "mem:1G,bogus=1", "mem:1G,share=0", "mem:1G,codec", "disk:1G"}) {
        EXPECT_FALSE(parse_memory_tier(bad)) << bad;
    }
}

// A pool with a memory tier (priority 10) in front of a file (priority 0).
struct TieredPool {
    test::TempDir dir;
    SwapPool pool;
    DeviceId tier{};
    DeviceId disk{};
    explicit TieredPool(const char* tier_spec, std::uint64_t disk_bytes = 8 * kClusterBytes) {
        auto t = pool.swapon(tier_spec, 10, 0);
        EXPECT_TRUE(t) << t.error().message();
        if (t) tier = *t;
        auto d = pool.swapon(dir.file("disk"), 0, disk_bytes);
        EXPECT_TRUE(d) << d.error().message();
        if (d) disk = *d;
    }
};

TEST(PrivilegedMemoryTier, CompressiblePagesStayInRamTheRestGoToDiskAndNothingLeaks) {
    SWV_SWAP_RING_OR_SKIP(ring);
    TieredPool t("mem:1M,codec=lz4");
    constexpr std::size_t kN = 200;
    Pages pages(kN);
    for (std::size_t i = 0; i < kN; ++i) {
        if (i % 4 == 3) test::fill_page(pages[i], i);  // random: refused by the tier
        else fill_compressible(pages[i], i);
    }
    auto batch = test::page_outs(pages, 0, kN);
    ASSERT_TRUE(t.pool.write_out(ring, batch));
    for (std::size_t i = 0; i < kN; ++i) {
        ASSERT_TRUE(batch[i].ok()) << i;
        auto where = t.pool.pslot_of(batch[i].vslot);
        ASSERT_TRUE(where);
        EXPECT_EQ(where->device, i % 4 == 3 ? t.disk : t.tier) << i;
    }
    {
        auto stats = t.pool.stats();
        const DeviceStats& m = tier_of(stats);
        EXPECT_EQ(m.stored_pages, 150u);
        EXPECT_EQ(m.used_slots, 150u);
        EXPECT_EQ(m.rejected_pages, 50u);
        EXPECT_EQ(m.write_errors, 0u);  // a refusal is not a failure
        EXPECT_EQ(m.quarantined_slots, 0u);
        EXPECT_EQ(m.state, DeviceState::active);
        EXPECT_GT(m.ratio(), 3.0);
        EXPECT_GE(m.fragmentation(), 0.0);
        EXPECT_LT(m.fragmentation(), 1.0);
        EXPECT_EQ(m.codec, "lz4");
        EXPECT_EQ(t.pool.memory_tier_bytes(), m.arena_bytes);
    }
    Pages back(kN);
    for (std::size_t i = 0; i < kN; ++i) {
        ASSERT_TRUE(t.pool.read_in(ring, batch[i].vslot, back[i])) << i;
        EXPECT_TRUE(i % 4 == 3 ? test::verify_page(back[i], i) : verify_compressible(back[i], i)) << i;
    }
    EXPECT_EQ(tier_of(t.pool.stats()).swapins_served, 150u);
    for (const PageOut& p : batch) t.pool.free(p.vslot);
    auto stats = t.pool.stats();
    EXPECT_EQ(tier_of(stats).stored_pages, 0u);
    EXPECT_EQ(tier_of(stats).arena_bytes, 0u);
    EXPECT_EQ(t.pool.memory_tier_bytes(), 0u);
    for (const DeviceStats& d : stats) EXPECT_EQ(d.used_slots, 0u) << d.path;
    EXPECT_EQ(t.pool.allocated_vslots(), 0u);
}

TEST(PrivilegedMemoryTier, AnOwnerGroupAtItsShareGoesToTheNextDeviceOthersStillGetTheTier) {
    SWV_SWAP_RING_OR_SKIP(ring);
    // 1024 slots, share 25%: one group (a VM) holds at most 256 (+ one batch).
    TieredPool t("mem:1M,share=25,high=100,low=99");
    constexpr std::size_t kN = 600;
    constexpr std::size_t kBatch = 50;
    Pages pages(kN);
    for (std::size_t i = 0; i < kN; ++i) fill_compressible(pages[i], i);
    auto count_in_tier = [&](const std::vector<PageOut>& outs) {
        std::size_t n = 0;
        for (const PageOut& p : outs) n += t.pool.pslot_of(p.vslot)->device == t.tier;
        return n;
    };
    std::vector<PageOut> vm1;
    for (std::size_t first = 0; first < kN; first += kBatch) {
        auto batch = test::page_outs(pages, first, kBatch, OwnerTag{1} << kOwnerGroupShift);
        ASSERT_TRUE(t.pool.write_out(ring, batch));
        for (const PageOut& p : batch) ASSERT_TRUE(p.ok());
        vm1.insert(vm1.end(), batch.begin(), batch.end());
    }
    const std::size_t in_tier = count_in_tier(vm1);
    EXPECT_GE(in_tier, 256u);
    EXPECT_LT(in_tier, 256u + kBatch);
    // Another VM still gets the tier.
    auto vm2 = test::page_outs(pages, 0, kBatch, OwnerTag{2} << kOwnerGroupShift);
    ASSERT_TRUE(t.pool.write_out(ring, vm2));
    EXPECT_EQ(count_in_tier(vm2), kBatch);
    // Freed pages give the group its room back.
    for (const PageOut& p : vm1) t.pool.free(p.vslot);
    auto again = test::page_outs(pages, 0, kBatch, OwnerTag{1} << kOwnerGroupShift);
    ASSERT_TRUE(t.pool.write_out(ring, again));
    EXPECT_EQ(count_in_tier(again), kBatch);
    for (const PageOut& p : vm2) t.pool.free(p.vslot);
    for (const PageOut& p : again) t.pool.free(p.vslot);
    for (const DeviceStats& d : t.pool.stats()) EXPECT_EQ(d.used_slots, 0u) << d.path;
}

TEST(PrivilegedMemoryTier, ZstdTierWithNoDeviceBehindRefusesIncompressiblePagesAsNoSpace) {
    SWV_SWAP_RING_OR_SKIP(ring);
    SwapPool pool;
    ASSERT_TRUE(pool.swapon("mem:2M,codec=zstd", 0, 0));
    Pages pages(2);
    fill_compressible(pages[0], 1);
    test::fill_page(pages[1], 2);
    auto batch = test::page_outs(pages, 0, 2);
    ASSERT_TRUE(pool.write_out(ring, batch));
    EXPECT_TRUE(batch[0].ok());
    EXPECT_EQ(batch[1].error, Errc::no_space);
    EXPECT_EQ(pool.allocated_vslots(), 1u);
    Pages back(1);
    ASSERT_TRUE(pool.read_in(ring, batch[0].vslot, back[0]));
    EXPECT_TRUE(verify_compressible(back[0], 1));
    pool.free(batch[0].vslot);
    EXPECT_EQ(pool.stats().at(0).used_slots, 0u);
    // Not a file, not twice, no size=, no format.
    EXPECT_FALSE(pool.swapon("mem:2M", 0, 0));  // the same name
    EXPECT_FALSE(pool.swapon("mem:4M", 0, 4 << 20));
    EXPECT_FALSE(pool.swapon("mem:4M", 0, 0, Format::yes));
    EXPECT_TRUE(pool.find_device("mem:2M,codec=zstd"));
}

TEST(PrivilegedMemoryTier, DemotionMovesTheColdestPagesDownToTheLowWatermark) {
    SWV_SWAP_RING_OR_SKIP(ring);
    // 1 MiB: 1024 slots; high 90% = 921 objects, low 75% = 768.
    TieredPool t("mem:1M,high=90,low=75");
    constexpr std::size_t kN = 1000;
    Pages pages(kN);
    std::vector<VSlot> v(kN);
    for (std::size_t first = 0; first < kN; first += 50) {
        for (std::size_t i = first; i < first + 50; ++i) fill_compressible(pages[i], i);
        auto batch = test::page_outs(pages, first, 50);
        ASSERT_TRUE(t.pool.write_out(ring, batch));
        for (std::size_t i = 0; i < 50; ++i) {
            ASSERT_TRUE(batch[i].ok());
            v[first + i] = batch[i].vslot;
        }
    }
    auto stats = t.pool.stats();
    const DeviceStats& m = tier_of(stats);
    EXPECT_GT(m.demoted_pages, 0u);
    EXPECT_LE(m.stored_pages, 921u);
    EXPECT_EQ(m.stored_pages + m.demoted_pages, kN);
    // Coldest first: the first pages written are on disk, the last in the tier.
    for (std::size_t i = 0; i < m.demoted_pages; ++i) ASSERT_EQ(t.pool.pslot_of(v[i])->device, t.disk) << i;
    for (std::size_t i = m.demoted_pages; i < kN; ++i) ASSERT_EQ(t.pool.pslot_of(v[i])->device, t.tier) << i;
    // Every page reads back, wherever it went.
    Pages back(1);
    for (std::size_t i = 0; i < kN; ++i) {
        ASSERT_TRUE(t.pool.read_in(ring, v[i], back[0])) << i;
        ASSERT_TRUE(verify_compressible(back[0], i)) << i;
    }
    // An explicit demotion of the rest empties the tier.
    auto moved = t.pool.demote_device(ring, t.tier, kN);
    ASSERT_TRUE(moved);
    EXPECT_EQ(*moved, m.stored_pages);
    EXPECT_EQ(tier_of(t.pool.stats()).stored_pages, 0u);
    EXPECT_EQ(tier_of(t.pool.stats()).arena_bytes, 0u);
    for (VSlot s : v) t.pool.free(s);
    for (const DeviceStats& d : t.pool.stats()) EXPECT_EQ(d.used_slots, 0u) << d.path;
    EXPECT_FALSE(t.pool.demote_device(ring, t.disk, 1));  // not a memory tier
}

TEST(PrivilegedMemoryTier, DemotionStopsWhenNothingBelowHasRoomAndLosesNothing) {
    SWV_SWAP_RING_OR_SKIP(ring);
    TieredPool t("mem:1M", kClusterBytes);  // 512 disk slots
    constexpr std::size_t kN = 1400;
    Pages pages(kN);
    std::vector<VSlot> v;
    for (std::size_t first = 0; first < kN; first += 100) {
        for (std::size_t i = first; i < first + 100; ++i) fill_compressible(pages[i], i);
        auto batch = test::page_outs(pages, first, 100);
        (void)t.pool.write_out(ring, batch);
        for (const PageOut& p : batch) v.push_back(p.ok() ? p.vslot : kNoVSlot);
    }
    std::size_t swapped = 0;
    Pages back(1);
    for (std::size_t i = 0; i < kN; ++i) {
        if (v[i] == kNoVSlot) continue;
        ++swapped;
        ASSERT_TRUE(t.pool.read_in(ring, v[i], back[0])) << i;
        ASSERT_TRUE(verify_compressible(back[0], i)) << i;
    }
    // Both full: 512 on disk, the tier's 1024 slots less what had no room.
    EXPECT_EQ(swapped, t.pool.allocated_vslots());
    std::uint64_t used = 0;
    for (const DeviceStats& d : t.pool.stats()) used += d.used_slots;
    EXPECT_EQ(used, swapped);
    EXPECT_GE(swapped, 1400u - 10u);
    // With the disk full, a demotion does not even read the tier.
    const std::uint64_t read_before = tier_of(t.pool.stats()).read_bytes;
    auto moved = t.pool.demote_device(ring, t.tier, 100);
    ASSERT_TRUE(moved);
    EXPECT_EQ(*moved, 0u);
    EXPECT_EQ(tier_of(t.pool.stats()).read_bytes, read_before);
    for (VSlot s : v) t.pool.free(s);
}

TEST(PrivilegedMemoryTier, SwapoffOfTheTierMovesEveryPageDownLive) {
    SWV_SWAP_RING_OR_SKIP(ring);
    TieredPool t("mem:4M");
    constexpr std::size_t kN = 600;
    Pages pages(kN);
    for (std::size_t i = 0; i < kN; ++i) fill_compressible(pages[i], i);
    auto batch = test::page_outs(pages, 0, kN);
    ASSERT_TRUE(t.pool.write_out(ring, batch));
    ASSERT_EQ(tier_of(t.pool.stats()).stored_pages, kN);
    // Readers on another thread keep reading while the tier goes away.
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> reads{0}, wrong{0};
    std::thread reader([&] {
        auto r = io::Ring::create(64);
        ASSERT_TRUE(r);
        Pages back(1);
        for (std::size_t i = 0; !stop.load(); i = (i + 7) % kN) {
            if (!t.pool.read_in(*r, batch[i].vslot, back[0]) || !verify_compressible(back[0], i)) wrong++;
            reads++;
        }
    });
    auto report = t.pool.swapoff("mem:4M", ring);
    stop = true;
    reader.join();
    ASSERT_TRUE(report) << report.error().message();
    EXPECT_EQ(report->pages_moved, kN);
    EXPECT_EQ(wrong.load(), 0u);
    EXPECT_GT(reads.load(), 0u);
    ASSERT_EQ(t.pool.stats().size(), 1u);
    Pages back(1);
    for (std::size_t i = 0; i < kN; ++i) {
        ASSERT_EQ(t.pool.pslot_of(batch[i].vslot)->device, t.disk);
        ASSERT_TRUE(t.pool.read_in(ring, batch[i].vslot, back[0]));
        ASSERT_TRUE(verify_compressible(back[0], i)) << i;
    }
    for (const PageOut& p : batch) t.pool.free(p.vslot);
    EXPECT_EQ(t.pool.stats().at(0).used_slots, 0u);
}

TEST(PrivilegedMemoryTier, ReadsAndFreesRacingDemotionNeverSeeWrongDataOrLeak) {
    SWV_SWAP_RING_OR_SKIP(ring);
    TieredPool t("mem:1M,high=40,low=20");  // 409 objects wake demotion
    constexpr std::size_t kN = 900;
    Pages pages(kN);
    for (std::size_t i = 0; i < kN; ++i) fill_compressible(pages[i], i);
    auto batch = test::page_outs(pages, 0, kN);
    // Written in small batches so demotion runs again and again underneath the readers.
    std::vector<std::atomic<std::uint32_t>> vs(kN);
    for (auto& x : vs) x = 0;
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> reads{0}, wrong{0};
    std::atomic<bool> started{false};
    std::thread reader([&] {
        auto r = io::Ring::create(64);
        ASSERT_TRUE(r);
        Pages back(1);
        started = true;
        while (!stop.load()) {
            for (std::size_t i = 0; i < kN; i += 3) {
                const VSlot v(vs[i].load());
                if (v == kNoVSlot) continue;
                if (!t.pool.read_in(*r, v, back[0]) || !verify_compressible(back[0], i)) wrong++;
                reads++;
            }
        }
    });
    while (!started.load()) std::this_thread::yield();
    for (std::size_t first = 0; first < kN; first += 30) {
        std::span<PageOut> b(batch.data() + first, 30);
        ASSERT_TRUE(t.pool.write_out(ring, b));
        for (std::size_t i = first; i < first + 30; ++i) {
            ASSERT_TRUE(batch[i].ok());
            vs[i] = batch[i].vslot.value();
        }
        // Pages that are not read by the reader leave again (a guest wrote them).
        for (std::size_t i = first + 1; i < first + 30; i += 3) {
            vs[i] = 0;
            t.pool.free(batch[i].vslot);
        }
    }
    stop = true;
    reader.join();
    EXPECT_EQ(wrong.load(), 0u);
    EXPECT_GT(reads.load(), 0u);
    EXPECT_GT(tier_of(t.pool.stats()).demoted_pages, 0u);
    std::uint64_t left = 0;
    for (auto& x : vs) {
        if (x.load() != 0) {
            t.pool.free(VSlot(x.load()));
            ++left;
        }
    }
    EXPECT_EQ(left, kN - kN / 3);
    for (const DeviceStats& d : t.pool.stats()) EXPECT_EQ(d.used_slots, 0u) << d.path;
    EXPECT_EQ(tier_of(t.pool.stats()).arena_bytes, 0u);
    EXPECT_EQ(t.pool.allocated_vslots(), 0u);
}

}  // namespace
}  // namespace swapvisor::swap
