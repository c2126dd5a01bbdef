// is_zero_page: the reclaimer's zero check (guestmem/README.md#reclaim, transition 8).
// A zero page is dropped instead of written; every other page is then hashed by
// write_out (swap::page_checksum), a full pass over it. So the check stops at the
// first 64-byte block that holds a non-zero byte: a page with data near its start
// costs one cache line here, and the checksum is the only pass over its 4 KiB
// (issue #18 item 2); a zero page is read once, as before. The blocks of 8 words
// keep the OR vectorised.
#pragma once

#include <cstddef>
#include <cstdint>

#include "guestmem/addr.hpp"

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

}  // namespace swapvisor::guestmem
