// ELF validation (vmm/loader/elf.cpp) against crafted images: one good image, then
// one test per rule, each breaking exactly that rule and checking the error code
// and that the message names the file.
#include "vmm/loader/elf.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <fstream>
#include <unistd.h>

#include "tests/vmm/elf_builder.hpp"

namespace swapvisor::vmm::loader {
namespace {

using test::ElfBuilder;
using test::poke;

ElfBuilder good() {
    ElfBuilder b;
    b.add_segment(0x100000, 0x1000, 0x3000);
    return b;
}

Result<ElfImage> parse(const std::vector<std::byte>& bytes) { return parse_elf("guest.elf", bytes); }

void expect_error(const Result<ElfImage>& r, LoadErrc code, const std::string& fragment) {
    ASSERT_FALSE(r.has_value()) << "expected an error containing '" << fragment << "'";
    EXPECT_EQ(r.error().code, code) << r.error().message();
    EXPECT_NE(r.error().message().find("guest.elf"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find(fragment), std::string::npos) << r.error().message();
}

TEST(ElfTest, GoodImageParses) {
    auto r = parse(good().build());
    ASSERT_TRUE(r.has_value()) << r.error().message();
    EXPECT_EQ(r->pvh_entry, 0x100000u);
    ASSERT_EQ(r->segments.size(), 1u);
    EXPECT_EQ(r->segments[0].paddr, 0x100000u);
    EXPECT_EQ(r->segments[0].filesz, 0x1000u);
    EXPECT_EQ(r->segments[0].memsz, 0x3000u);
    EXPECT_EQ(r->file_bytes(r->segments[0]).size(), 0x1000u);
    EXPECT_EQ(r->file_bytes(r->segments[0])[0], std::byte{0x90});
}

TEST(ElfTest, SegmentsAreSortedByAddress) {
    ElfBuilder b;
    b.add_segment(0x200000, 0x100, 0x100).add_segment(0x100000, 0x100, 0x100);
    auto r = parse(b.build());
    ASSERT_TRUE(r.has_value()) << r.error().message();
    EXPECT_EQ(r->segments[0].paddr, 0x100000u);
    EXPECT_EQ(r->segments[1].paddr, 0x200000u);
}

TEST(ElfTest, EightByteNoteDescriptorAsLinuxEmitsIt) {
    ElfBuilder b = good();
    b.note_desc_size = 8;
    auto r = parse(b.build());
    ASSERT_TRUE(r.has_value()) << r.error().message();
    EXPECT_EQ(r->pvh_entry, 0x100000u);
}

TEST(ElfTest, NoteFoundInSectionWithoutPtNote) {
    ElfBuilder b = good();
    b.note_in_section_only = true;
    auto r = parse(b.build());
    ASSERT_TRUE(r.has_value()) << r.error().message();
    EXPECT_EQ(r->pvh_entry, 0x100000u);
}

TEST(ElfTest, NotElf) {
    std::vector<std::byte> junk(200, std::byte{'#'});
    expect_error(parse(junk), LoadErrc::not_elf, "not an ELF file");
    expect_error(parse({}), LoadErrc::not_elf, "not an ELF file");
}

TEST(ElfTest, Elf32Refused) {
    ElfBuilder b = good();
    b.elf_class = ELFCLASS32;
    expect_error(parse(b.build()), LoadErrc::unsupported_elf, "32-bit ELF");
}

TEST(ElfTest, BigEndianRefused) {
    auto bytes = good().build();
    bytes[EI_DATA] = std::byte{ELFDATA2MSB};
    expect_error(parse(bytes), LoadErrc::unsupported_elf, "big-endian");
}

TEST(ElfTest, WrongMachineRefused) {
    ElfBuilder b = good();
    b.machine = EM_AARCH64;
    expect_error(parse(b.build()), LoadErrc::unsupported_elf, "not x86-64");
}

TEST(ElfTest, RelocatableObjectRefused) {
    ElfBuilder b = good();
    b.type = ET_REL;
    expect_error(parse(b.build()), LoadErrc::unsupported_elf, "not an executable");
}

TEST(ElfTest, TruncatedHeader) {
    auto bytes = good().build();
    bytes.resize(40);
    expect_error(parse(bytes), LoadErrc::truncated, "shorter than an ELF64 header");
}

TEST(ElfTest, ProgramHeadersPastEnd) {
    auto bytes = good().build();
    poke<std::uint64_t>(bytes, offsetof(Elf64_Ehdr, e_phoff), bytes.size() - 10);
    expect_error(parse(bytes), LoadErrc::truncated, "program header table");
}

TEST(ElfTest, SegmentDataPastEnd) {
    auto bytes = good().build();
    bytes.resize(bytes.size() - 0x800 - 2 * sizeof(Elf64_Shdr));  // cut into the segment's bytes
    poke<std::uint64_t>(bytes, offsetof(Elf64_Ehdr, e_shoff), 0);
    poke<std::uint16_t>(bytes, offsetof(Elf64_Ehdr, e_shnum), 0);
    expect_error(parse(bytes), LoadErrc::truncated, "extends past the end of the file");
}

TEST(ElfTest, FileSizeAboveMemorySize) {
    ElfBuilder b;
    b.add_segment(0x100000, 0x2000, 0x1000);
    expect_error(parse(b.build()), LoadErrc::bad_segment, "p_filesz 0x2000 > p_memsz 0x1000");
}

TEST(ElfTest, AddressOverflow) {
    ElfBuilder b;
    b.add_segment(0x100000, 0x10, 0x10);
    b.add_segment(0xffff'ffff'ffff'f000ULL, 0x10, 0x2000);
    expect_error(parse(b.build()), LoadErrc::bad_segment, "overflows");
}

TEST(ElfTest, OverlappingSegments) {
    ElfBuilder b;
    b.add_segment(0x100000, 0x1000, 0x2000).add_segment(0x101000, 0x100, 0x100);
    expect_error(parse(b.build()), LoadErrc::bad_segment, "overlap");
}

TEST(ElfTest, NoLoadableSegment) {
    ElfBuilder b;
    b.add_segment(0x100000, 0, 0);
    expect_error(parse(b.build()), LoadErrc::bad_segment, "no PT_LOAD");
}

TEST(ElfTest, MissingPvhNote) {
    ElfBuilder b = good();
    b.pvh_note = false;
    expect_error(parse(b.build()), LoadErrc::no_pvh_note, "XEN_ELFNOTE_PHYS32_ENTRY");
}

TEST(ElfTest, MalformedNoteDescriptor) {
    ElfBuilder b = good();
    b.note_desc_size = 2;
    expect_error(parse(b.build()), LoadErrc::bad_pvh_note, "2-byte descriptor");
}

TEST(ElfTest, NoteRunningPastItsSegment) {
    ElfBuilder b = good();
    auto bytes = b.build();
    // PT_NOTE is the second program header; shrink it so the descriptor is cut off.
    std::size_t note_ph = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr);
    poke<std::uint64_t>(bytes, note_ph + offsetof(Elf64_Phdr, p_filesz), 14);
    expect_error(parse(bytes), LoadErrc::truncated, "runs past the end");
}

TEST(ElfTest, EntryOutsideLoadedBytes) {
    ElfBuilder b = good();
    b.entry = 0x102000;  // inside memsz (bss) but not in the file bytes
    expect_error(parse(b.build()), LoadErrc::bad_pvh_note, "PVH entry 0x102000");
}

TEST(ElfTest, EntryAbove4GiBInEightByteNote) {
    ElfBuilder b = good();
    b.note_desc_size = 8;
    b.entry = 0x1'0010'0000ULL;
    expect_error(parse(b.build()), LoadErrc::bad_pvh_note, "above 4 GiB");
}

TEST(ElfTest, MissingFileNamesThePath) {
    auto r = read_elf("/nonexistent/dir/kernel.elf");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, LoadErrc::cannot_open);
    EXPECT_NE(r.error().message().find("/nonexistent/dir/kernel.elf"), std::string::npos) << r.error().message();
}

TEST(ElfTest, DirectoryRefused) {
    auto r = read_elf("/tmp");
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, LoadErrc::cannot_open);
    EXPECT_NE(r.error().message().find("directory"), std::string::npos) << r.error().message();
}

TEST(ElfTest, ReadsFileFromDisk) {
    char path[] = "/tmp/swv_elf_test_XXXXXX";
    int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    auto bytes = good().build();
    ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    ::close(fd);
    auto r = read_elf(path);
    ::unlink(path);
    ASSERT_TRUE(r.has_value()) << r.error().message();
    EXPECT_EQ(r->name, path);
    EXPECT_EQ(r->pvh_entry, 0x100000u);
}

}  // namespace
}  // namespace swapvisor::vmm::loader
