// The PVH boot plan (vmm/loader/pvh.cpp): the memory map built from RAM regions,
// hvm_start_info and command line byte for byte, the placement checks, and
// apply_plan() against a plain byte buffer standing in for guest RAM.
#include "vmm/loader/pvh.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "tests/vmm/elf_builder.hpp"
#include "vmm/loader/loader.hpp"

namespace swapvisor::vmm::loader {
namespace {

using guestmem::Gpa;
using guestmem::GpaRange;
constexpr std::uint64_t kMiB = 1ULL << 20;
constexpr std::uint64_t kGiB = 1ULL << 30;

std::vector<GpaRange> ram_of(std::uint64_t bytes) {
    // guestmem's layout: low RAM up to 3 GiB, the rest from 4 GiB.
    std::vector<GpaRange> ram{{Gpa(0), std::min(bytes, 3 * kGiB)}};
    if (bytes > 3 * kGiB) ram.push_back({Gpa(4 * kGiB), bytes - 3 * kGiB});
    return ram;
}

ElfImage image_with(test::ElfBuilder b) {
    auto r = parse_elf("guest.elf", b.build());
    EXPECT_TRUE(r.has_value()) << r.error().message();
    return std::move(*r);
}

ElfImage simple_image() {
    test::ElfBuilder b;
    b.add_segment(0x100000, 0x1800, 0x5000, 0xab);
    return image_with(b);
}

TEST(PvhTest, MemoryMapOfSmallGuest) {
    auto map = build_memory_map(ram_of(512 * kMiB));
    ASSERT_EQ(map.size(), 3u);
    EXPECT_EQ(map[0].addr, 0u);
    EXPECT_EQ(map[0].size, 0x9fc00u);
    EXPECT_EQ(map[0].type, kMemmapTypeRam);
    EXPECT_EQ(map[1].addr, 0x9fc00u);
    EXPECT_EQ(map[1].size, 0x100000u - 0x9fc00u);
    EXPECT_EQ(map[1].type, kMemmapTypeReserved);
    EXPECT_EQ(map[2].addr, 0x100000u);
    EXPECT_EQ(map[2].size, 512 * kMiB - 0x100000u);
    EXPECT_EQ(map[2].type, kMemmapTypeRam);
    for (const auto& e : map) EXPECT_EQ(e.reserved, 0u);
}

TEST(PvhTest, MemoryMapLeavesThe3To4GiBHoleOut) {
    auto map = build_memory_map(ram_of(5 * kGiB));
    ASSERT_EQ(map.size(), 4u);
    EXPECT_EQ(map[2].addr + map[2].size, 3 * kGiB);
    EXPECT_EQ(map[3].addr, 4 * kGiB);
    EXPECT_EQ(map[3].size, 2 * kGiB);
    std::uint64_t ram = 0;
    for (const auto& e : map) {
        if (e.type == kMemmapTypeRam) ram += e.size;
        EXPECT_FALSE(e.addr < 4 * kGiB && e.addr + e.size > 3 * kGiB) << "entry in the hole at " << e.addr;
    }
    EXPECT_EQ(ram, 5 * kGiB - (0x100000 - 0x9fc00));
}

TEST(PvhTest, StartInfoAndBootDataBytes) {
    ElfImage img = simple_image();
    auto plan = plan_boot(img, ram_of(64 * kMiB), "console=ttyS0 quiet");
    ASSERT_TRUE(plan.has_value()) << plan.error().message();
    EXPECT_EQ(plan->entry, 0x100000u);
    EXPECT_EQ(plan->start_info_gpa, 0x6000u);

    ASSERT_EQ(plan->start_info_bytes.size(), 56u);
    HvmStartInfo si;
    std::memcpy(&si, plan->start_info_bytes.data(), sizeof si);
    EXPECT_EQ(si.magic, 0x336ec578u);
    EXPECT_EQ(si.version, 1u);
    EXPECT_EQ(si.flags, 0u);
    EXPECT_EQ(si.nr_modules, 0u);
    EXPECT_EQ(si.modlist_paddr, 0u);
    EXPECT_EQ(si.cmdline_paddr, 0x20000u);
    EXPECT_EQ(si.rsdp_paddr, 0u);
    EXPECT_EQ(si.memmap_paddr, 0x7000u);
    EXPECT_EQ(si.memmap_entries, 3u);

    ASSERT_EQ(plan->memmap_bytes.size(), 3 * 24u);
    HvmMemmapEntry third;
    std::memcpy(&third, plan->memmap_bytes.data() + 48, sizeof third);
    EXPECT_EQ(third.addr, 0x100000u);
    EXPECT_EQ(third.size, 63 * kMiB);
    EXPECT_EQ(third.type, 1u);

    std::string cmdline(reinterpret_cast<const char*>(plan->cmdline_bytes.data()), plan->cmdline_bytes.size());
    EXPECT_EQ(cmdline, std::string("console=ttyS0 quiet") + '\0');

    // Writes: the segment's file bytes, then start_info, memory map, command line.
    ASSERT_EQ(plan->writes.size(), 4u);
    EXPECT_EQ(plan->writes[0].gpa, Gpa(0x100000));
    EXPECT_EQ(plan->writes[0].bytes.size(), 0x1800u);
    EXPECT_EQ(plan->writes[1].gpa, Gpa(0x6000));
    EXPECT_EQ(plan->writes[2].gpa, Gpa(0x7000));
    EXPECT_EQ(plan->writes[3].gpa, Gpa(0x20000));
    ASSERT_EQ(plan->zero_fills.size(), 1u);
    EXPECT_EQ(plan->zero_fills[0].gpa, Gpa(0x101800));
    EXPECT_EQ(plan->zero_fills[0].len, 0x5000u - 0x1800u);
}

TEST(PvhTest, PlanSurvivesAMove) {
    ElfImage img = simple_image();
    auto plan = plan_boot(img, ram_of(64 * kMiB), "abc");
    ASSERT_TRUE(plan.has_value());
    BootPlan moved = std::move(*plan);
    EXPECT_EQ(moved.writes[3].bytes.data(), moved.cmdline_bytes.data());
    EXPECT_EQ(moved.writes[1].bytes.data(), moved.start_info_bytes.data());
}

TEST(PvhTest, EmptyCommandLineIsAnEmptyString) {
    ElfImage img = simple_image();
    auto plan = plan_boot(img, ram_of(64 * kMiB), "");
    ASSERT_TRUE(plan.has_value());
    ASSERT_EQ(plan->cmdline_bytes.size(), 1u);
    EXPECT_EQ(plan->cmdline_bytes[0], std::byte{0});
}

TEST(PvhTest, CommandLineLimit) {
    ElfImage img = simple_image();
    EXPECT_TRUE(plan_boot(img, ram_of(64 * kMiB), std::string(kCmdlineMax, 'x')).has_value());
    auto r = plan_boot(img, ram_of(64 * kMiB), std::string(kCmdlineMax + 1, 'x'));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, LoadErrc::cmdline_too_long);
    EXPECT_NE(r.error().message().find("4096 bytes"), std::string::npos) << r.error().message();
    auto nul = plan_boot(img, ram_of(64 * kMiB), std::string("a\0b", 3));
    ASSERT_FALSE(nul.has_value());
    EXPECT_EQ(nul.error().code, LoadErrc::cmdline_too_long);
}

TEST(PvhTest, SegmentOutsideRam) {
    test::ElfBuilder b;
    b.add_segment(62 * kMiB, 0x1000, 4 * kMiB);  // ends at 66 MiB in a 64 MiB guest
    b.entry = 62 * kMiB;
    ElfImage img = image_with(b);
    auto r = plan_boot(img, ram_of(64 * kMiB), "");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, LoadErrc::outside_ram);
    EXPECT_NE(r.error().message().find("outside guest RAM"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("guest.elf"), std::string::npos);
}

TEST(PvhTest, SegmentInTheHole) {
    test::ElfBuilder b;
    b.add_segment(3 * kGiB + 0x1000, 0x1000, 0x1000);
    b.entry = 3 * kGiB + 0x1000;
    ElfImage img = image_with(b);
    auto r = plan_boot(img, ram_of(5 * kGiB), "");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, LoadErrc::outside_ram);
}

TEST(PvhTest, SegmentInReservedLowRange) {
    test::ElfBuilder b;
    b.add_segment(0xa0000, 0x1000, 0x1000);
    b.entry = 0xa0000;
    ElfImage img = image_with(b);
    auto r = plan_boot(img, ram_of(64 * kMiB), "");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, LoadErrc::outside_ram);
}

TEST(PvhTest, SegmentOverStartInfo) {
    test::ElfBuilder b;
    b.add_segment(0x5000, 0x1000, 0x2000);  // bss reaches into 0x6000
    b.entry = 0x5000;
    ElfImage img = image_with(b);
    auto r = plan_boot(img, ram_of(64 * kMiB), "");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, LoadErrc::overlaps_boot_data);
}

TEST(PvhTest, SegmentOverCommandLine) {
    test::ElfBuilder b;
    b.add_segment(0x20800, 0x100, 0x100);
    b.entry = 0x20800;
    ElfImage img = image_with(b);
    auto r = plan_boot(img, ram_of(64 * kMiB), "");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, LoadErrc::overlaps_boot_data);
}

TEST(PvhTest, SegmentInHighRamIsFine) {
    test::ElfBuilder b;
    b.add_segment(4 * kGiB, 0x1000, 0x1000);
    b.add_segment(0x100000, 0x10, 0x10);
    ElfImage img = image_with(b);
    EXPECT_TRUE(plan_boot(img, ram_of(5 * kGiB), "").has_value());
}

// Guest RAM as a flat byte vector: write/discard as GuestMemory would do them.
struct BufferMemory {
    std::vector<std::byte> ram;
    std::vector<GpaRange> discards;
    Result<void> write(Gpa gpa, std::span<const std::byte> bytes) {
        if (gpa.value() + bytes.size() > ram.size()) return errno_error("write", EFAULT);
        std::memcpy(ram.data() + gpa.value(), bytes.data(), bytes.size());
        return {};
    }
    Result<void> discard(GpaRange range) {
        if (range.gpa.value() % 4096 || range.len % 4096) return errno_error("discard", EINVAL);
        std::memset(ram.data() + range.gpa.value(), 0, range.len);
        discards.push_back(range);
        return {};
    }
};

TEST(PvhTest, ApplyPlanCopiesAndZeroes) {
    ElfImage img = simple_image();  // 0x1800 bytes of 0xab at 1 MiB, memsz 0x5000
    auto plan = plan_boot(img, ram_of(4 * kMiB), "hi");
    ASSERT_TRUE(plan.has_value());
    BufferMemory mem{std::vector<std::byte>(4 * kMiB, std::byte{0x5a}), {}};
    ASSERT_TRUE(apply_plan(mem, img.name, *plan).has_value());

    for (std::uint64_t a = 0x100000; a < 0x101800; ++a) ASSERT_EQ(mem.ram[a], std::byte{0xab}) << a;
    for (std::uint64_t a = 0x101800; a < 0x105000; ++a) ASSERT_EQ(mem.ram[a], std::byte{0}) << a;
    EXPECT_EQ(mem.ram[0x105000], std::byte{0x5a});  // nothing past p_memsz
    // The partial page [0x101800, 0x102000) was written; whole pages were discarded.
    ASSERT_EQ(mem.discards.size(), 1u);
    EXPECT_EQ(mem.discards[0].gpa, Gpa(0x102000));
    EXPECT_EQ(mem.discards[0].len, 0x3000u);

    HvmStartInfo si;
    std::memcpy(&si, mem.ram.data() + 0x6000, sizeof si);
    EXPECT_EQ(si.magic, kHvmStartMagic);
    EXPECT_EQ(std::memcmp(mem.ram.data() + 0x20000, "hi\0", 3), 0);
}

TEST(PvhTest, ApplyPlanReportsMemoryErrors) {
    ElfImage img = simple_image();
    auto plan = plan_boot(img, ram_of(4 * kMiB), "");
    ASSERT_TRUE(plan.has_value());
    BufferMemory small{std::vector<std::byte>(1 * kMiB), {}};  // the segment does not fit
    auto r = apply_plan(small, img.name, *plan);
    ASSERT_FALSE(r.has_value());
    // guestmem's error goes up unchanged (BufferMemory's EFAULT here), with the file
    // and the guest range added to its context.
    EXPECT_TRUE(r.error().is(std::errc::bad_address)) << r.error().message();
    EXPECT_NE(r.error().message().find("[0x100000, 0x101800)"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find(img.name), std::string::npos) << r.error().message();
}

}  // namespace
}  // namespace swapvisor::vmm::loader
