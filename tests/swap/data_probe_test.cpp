// What a device holds before it is formatted (swap/data_probe.hpp): the one rule of
// mkswap, --swap format=yes and ctl swapon --format. Pure checks on byte images; the
// whole paths run in tests/scripts/mkswap_data_test.sh on real files.
#include "swap/data_probe.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "swap/swap_header.hpp"

namespace swapvisor::swap {
namespace {

std::vector<std::byte> blank() { return std::vector<std::byte>(kProbeBytes); }

void put(std::vector<std::byte>& image, std::size_t at, const void* data, std::size_t len) {
    std::memcpy(image.data() + at, data, len);
}

TEST(DataProbeTest, AllZeroIsBlank) {
    auto image = blank();
    EXPECT_EQ(recognise_data(image), std::nullopt);
    EXPECT_EQ(recognise_data(std::span(image).first(8192)), std::nullopt);
}

TEST(DataProbeTest, SwapvisorHeaderIsNamed) {
    auto image = blank();
    SwapHeader h = new_header(64 << 20).value();
    encode_header(h, std::span(image).first(kHeaderBytes));
    auto what = recognise_data(image);
    ASSERT_TRUE(what);
    EXPECT_NE(what->find("swapvisor swap header"), std::string::npos) << *what;
    EXPECT_NE(what->find(std::to_string(h.slot_count) + " slots"), std::string::npos) << *what;
    image[40] ^= std::byte{1};  // checksum broken: still not blank
    EXPECT_NE(recognise_data(image)->find("damaged swapvisor"), std::string::npos);
}

TEST(DataProbeTest, KernelSwapSignature) {
    auto image = blank();
    put(image, 4096 - 10, "SWAPSPACE2", 10);
    image[1024] = std::byte{1};  // version 1
    auto what = recognise_data(image);
    ASSERT_TRUE(what);
    EXPECT_NE(what->find("mkswap(8)"), std::string::npos) << *what;
}

TEST(DataProbeTest, Ext4SuperblockThroughBlkid) {
    // The fields libblkid's ext probe reads: magic 0xEF53 at 1024 + 56, a plausible
    // revision, block size and feature set (an ext2-like superblock with a journal: ext3).
    auto image = blank();
    auto le16 = [&image](std::size_t at, std::uint16_t v) { put(image, 1024 + at, &v, 2); };
    auto le32 = [&image](std::size_t at, std::uint32_t v) { put(image, 1024 + at, &v, 4); };
    le32(0, 128);       // s_inodes_count
    le32(4, 1024);      // s_blocks_count
    le32(24, 0);        // s_log_block_size: 1 KiB
    le16(56, 0xEF53);   // s_magic
    le32(76, 1);        // s_rev_level: dynamic
    le32(92, 0x0004);   // s_feature_compat: has_journal
    put(image, 1024 + 120, "precious", 8);  // s_volume_name
    auto what = recognise_data(image);
    ASSERT_TRUE(what);
    EXPECT_NE(what->find("file system (TYPE ext"), std::string::npos) << *what;
    EXPECT_NE(what->find("LABEL \"precious\""), std::string::npos) << *what;
}

TEST(DataProbeTest, DosPartitionTable) {
    auto image = blank();
    image[510] = std::byte{0x55};
    image[511] = std::byte{0xAA};
    // One Linux partition from sector 2048.
    std::uint8_t entry[16] = {0x00, 0, 0, 0, 0x83, 0, 0, 0, 0x00, 0x08, 0, 0, 0x00, 0x08, 0, 0};
    put(image, 446, entry, sizeof entry);
    auto what = recognise_data(image);
    ASSERT_TRUE(what);
    EXPECT_NE(what->find("partition table (PTTYPE dos)"), std::string::npos) << *what;
}

TEST(DataProbeTest, AnyNonZeroByteIsData) {
    auto image = blank();
    image[700000] = std::byte{7};
    auto what = recognise_data(image);
    ASSERT_TRUE(what);
    EXPECT_NE(what->find("the first at byte 700000"), std::string::npos) << *what;
    std::mt19937 rng(17);
    for (auto& b : image) b = static_cast<std::byte>(rng());
    EXPECT_TRUE(recognise_data(image));
}

}  // namespace
}  // namespace swapvisor::swap
