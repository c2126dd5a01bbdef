// is_zero_page / scan_page: the reclaimer's zero check (guestmem/README.md#reclaim,
// transition 8) and the checksum of a page it writes, in one pass (issue #18 item 2).
// A zero page is dropped instead of written; every other page needs its checksum.
// The check stops at the first 64-byte block that holds a non-zero byte, so a page
// with data near its start costs one cache line there; scan_page then hashes the
// page at once, while those lines are in cache, and row 5 hands the checksum to
// write_out (PageOut::checksum), which no longer reads the page. The page scanned is
// the staged copy (staging.hpp): the bytes hashed are the bytes written. A zero page
// is read once. The blocks of 8 words keep the OR vectorised.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "guestmem/addr.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::guestmem {

inline bool is_zero_page(const std::byte* page) {
    const auto* w = reinterpret_cast<const std::uint64_t*>(page);
    constexpr std::size_t kWords = kPageSize / sizeof(std::uint64_t);
    constexpr std::size_t kBlockWords = 8;  // one 64-byte cache line
    for (std::size_t i = 0; i < kWords; i += kBlockWords) {
        std::uint64_t acc = 0;
        for (std::size_t j = 0; j < kBlockWords; ++j) acc |= w[i + j];
        if (acc != 0) return false;
    }
    return true;
}

// nullopt: all zero (row 8); else the page's checksum (swap::page_checksum).
inline std::optional<std::uint32_t> scan_page(const std::byte* page) {
    if (is_zero_page(page)) return std::nullopt;
    return swap::page_checksum(page);
}

}  // namespace swapvisor::guestmem
