// The swapvisor swap header (swap/swap_header.hpp): its byte layout, what counts as
// "no signature" and what as corrupt, and that swapon writes it on a new file and
// never places a slot over it.
#include "swap/swap_header.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "tests/swap/swap_test_util.hpp"

namespace swapvisor::swap {
namespace {

using test::kClusterBytes;

std::vector<std::byte> page_of(const SwapHeader& h) {
    std::vector<std::byte> page(kHeaderBytes);
    encode_header(h, page);
    return page;
}

TEST(SwapHeaderTest, LayoutIsTheDocumentedOne) {
    SwapHeader h;
    for (std::size_t i = 0; i < h.uuid.size(); ++i) h.uuid[i] = static_cast<std::uint8_t>(0xa0 + i);
    h.slot_count = 0x0102030405;
    auto page = page_of(h);
    EXPECT_EQ(std::memcmp(page.data(), "SWAPVISR", 8), 0);
    EXPECT_EQ(std::to_integer<int>(page[8]), 1);      // version, little-endian u32
    EXPECT_EQ(std::to_integer<int>(page[12]), 0x00);  // page size 4096 = 0x1000
    EXPECT_EQ(std::to_integer<int>(page[13]), 0x10);
    EXPECT_EQ(std::to_integer<int>(page[16]), 0xa0);  // uuid
    EXPECT_EQ(std::to_integer<int>(page[32]), 0x05);  // slot count, little-endian u64
    EXPECT_EQ(std::to_integer<int>(page[36]), 0x01);
    for (std::size_t i = 48; i < page.size(); ++i) ASSERT_EQ(std::to_integer<int>(page[i]), 0) << i;
    auto back = decode_header(page);
    ASSERT_TRUE(back && back->has_value());
    EXPECT_EQ(**back, h);
}

TEST(SwapHeaderTest, NoMagicIsNoSignatureAndDamageIsCorrupt) {
    std::vector<std::byte> zeros(kHeaderBytes);
    auto none = decode_header(zeros);
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->has_value());

    auto fresh = new_header(64 * kClusterBytes + kHeaderBytes);
    ASSERT_TRUE(fresh);
    EXPECT_EQ(fresh->slot_count, 64u * kClusterSlots);
    EXPECT_NE(fresh->uuid, (std::array<std::uint8_t, 16>{}));
    for (std::size_t at : {8u, 12u, 20u, 33u, 40u}) {
        auto page = page_of(*fresh);
        page[at] ^= std::byte{0x01};
        auto bad = decode_header(page);
        ASSERT_FALSE(bad) << "byte " << at;
        EXPECT_EQ(bad.error().code, make_error_code(Errc::bad_header)) << at;
    }
}

TEST(PrivilegedSwapHeader, SwaponWritesTheHeaderOnANewFileAndSlotsStartAfterIt) {
    SWV_SWAP_RING_OR_SKIP(ring);
    test::TempDir dir;
    SwapPool pool;
    ASSERT_TRUE(pool.swapon(dir.file("s"), 0, 2 * kClusterBytes));
    test::Pages pages(2 * kClusterSlots);
    for (std::size_t i = 0; i < pages.size(); ++i) test::fill_page(pages[i], i);
    auto outs = test::page_outs(pages, 0, pages.size());
    ASSERT_TRUE(pool.write_out(ring, outs));
    for (auto& p : outs) ASSERT_TRUE(p.ok());

    // The device is full, and its first page still holds the signature.
    std::vector<std::byte> page(kHeaderBytes);
    std::ifstream in(dir.file("s"), std::ios::binary);
    in.read(reinterpret_cast<char*>(page.data()), static_cast<std::streamsize>(page.size()));
    auto h = decode_header(page);
    ASSERT_TRUE(h && h->has_value()) << (h ? "no signature" : h.error().message());
    EXPECT_EQ((*h)->slot_count, 2u * kClusterSlots);
}

}  // namespace
}  // namespace swapvisor::swap
