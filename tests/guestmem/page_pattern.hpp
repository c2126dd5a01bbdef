// Test helpers shared by real-stack tests (the host-wide workers' in guestmem, the
// snapshot store's in vmm): a host thread playing a guest writes a
// pass of pages whose every word depends on page, word and pass, reads them back
// counting the wrong pages, and counts our threads by name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "guestmem/addr.hpp"

namespace swapvisor::testing {

inline std::uint64_t pattern(std::uint64_t page, std::uint64_t word, std::uint64_t pass) {
    std::uint64_t x = page * 0x9E3779B97F4A7C15ULL ^ (word << 17) ^ (pass * 0xBF58476D1CE4E5B9ULL);
    x ^= x >> 31;
    return x | 1;  // never an all-zero page
}

// Pages [first, first + pages) of the guest view at base, every word, for `pass`.
inline void write_pass(std::byte* base, std::uint64_t first, std::uint64_t pages, std::uint64_t pass) {
    for (std::uint64_t p = first; p < first + pages; ++p) {
        auto* w = reinterpret_cast<volatile std::uint64_t*>(base + p * guestmem::kPageSize);
        for (std::uint64_t i = 0; i < guestmem::kPageSize / 8; ++i) w[i] = pattern(p, i, pass);
    }
}

// Pages [0, pages) that do not read as `pass` wrote them.
inline std::uint64_t verify_pass(const std::byte* base, std::uint64_t pages, std::uint64_t pass) {
    std::uint64_t errors = 0;
    for (std::uint64_t p = 0; p < pages; ++p) {
        auto* w = reinterpret_cast<const volatile std::uint64_t*>(base + p * guestmem::kPageSize);
        for (std::uint64_t i = 0; i < guestmem::kPageSize / 8; ++i)
            if (w[i] != pattern(p, i, pass)) {
                ++errors;
                break;
            }
    }
    return errors;
}

// Our threads named `name` (/proc/self/task/*/comm); with `all`, every one of ours
// but io_uring's on-demand `iou-*` workers (the kernel adds them per submitting
// thread and load, which says nothing of ours).
inline std::size_t threads_named(const std::string& name, bool all = false) {
    std::size_t n = 0;
    for (const auto& d : std::filesystem::directory_iterator("/proc/self/task")) {
        std::ifstream f(d.path() / "comm");
        std::string comm;
        if (!std::getline(f, comm)) continue;
        if (all ? comm.rfind("iou-", 0) != 0 : comm == name) ++n;
    }
    return n;
}

}  // namespace swapvisor::testing
