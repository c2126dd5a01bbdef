// zero_page.hpp: the reclaimer's zero check stops at the first non-zero 64-byte
// block, and still finds a single non-zero byte anywhere in the page.
#include "guestmem/zero_page.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace swapvisor::guestmem {
namespace {

TEST(ZeroPage, AllZeroIsZero) {
    std::vector<std::uint64_t> words(kPageSize / 8);
    const auto* page = reinterpret_cast<const std::byte*>(words.data());
    EXPECT_TRUE(is_zero_page(page));
}

TEST(ZeroPage, OneNonZeroByteAnywhereIsNotZero) {
    std::vector<std::uint64_t> words(kPageSize / 8);
    auto* page = reinterpret_cast<std::byte*>(words.data());
    for (std::size_t at = 0; at < kPageSize; ++at) {
        page[at] = std::byte{0x01};
        EXPECT_FALSE(is_zero_page(page)) << "non-zero byte at " << at;
        page[at] = std::byte{0};
    }
    EXPECT_TRUE(is_zero_page(page));
    page[kPageSize - 1] = std::byte{0x80};  // the last byte of the last block
    EXPECT_FALSE(is_zero_page(page));
}

}  // namespace
}  // namespace swapvisor::guestmem
