// Little-endian (host order on x86-64) fields of the snapshot's binary files
// (memory.pages, memory.workingset; docs/SNAPSHOT.md#format): append to a byte
// vector, read at a pointer. No bounds checks: the readers check sizes first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace swapvisor::guestmem::byte_io {

// Append n raw bytes (resize + memcpy: g++ 12 warns falsely on insert of a char
// range). n == 0 copies nothing (p may then be null: an empty vector's data()).
inline void put_bytes(std::vector<std::uint8_t>& out, const void* p, std::size_t n) {
    if (n == 0) return;
    const std::size_t at = out.size();
    out.resize(at + n);
    std::memcpy(out.data() + at, p, n);
}
template <class T>
void put(std::vector<std::uint8_t>& out, T v) {
    put_bytes(out, &v, sizeof v);
}
template <class T>
T get(const std::uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

}  // namespace swapvisor::guestmem::byte_io
