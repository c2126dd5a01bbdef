// FuzzInput: reads a libFuzzer input front to back as little-endian fields, then
// hands out the rest. Reading past the end yields zeros and an empty rest, so a
// target never needs a length check of its own and every input means something
// (short inputs are just the all-zero tail). Also fuzz_check(), the targets' oracle:
// a broken property aborts with its reason, which libFuzzer reports as a crash and
// saves the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>

namespace swapvisor::fuzz {

class FuzzInput {
public:
    FuzzInput(const std::uint8_t* data, std::size_t size) : bytes_(reinterpret_cast<const std::byte*>(data), size) {}

    template <class T>
    T take() {
        T v{};
        std::size_t n = std::min(sizeof v, bytes_.size());
        if (n != 0) std::memcpy(&v, bytes_.data(), n);  // a short tail leaves the high bytes zero
        bytes_ = bytes_.subspan(n);
        return v;
    }
    std::span<const std::byte> rest() const { return bytes_; }
    std::string_view rest_text() const {
        return {reinterpret_cast<const char*>(bytes_.data()), bytes_.size()};
    }

private:
    std::span<const std::byte> bytes_;
};

// The fuzz oracle: a property every input must keep. Not an assert: it stays in
// every build type, and it names the property.
inline void fuzz_check(bool ok, const char* property) {
    if (ok) return;
    std::fprintf(stderr, "fuzz property broken: %s\n", property);
    std::abort();
}

}  // namespace swapvisor::fuzz
