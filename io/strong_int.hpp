// StrongInt<Tag, Rep>: one distinct integer type per address space or id
// (Gpa, Gfn, VSlot, ...). No implicit conversions, no arithmetic across tags;
// conversions between spaces are named functions next to the types.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>

namespace swapvisor {

template <class Tag, class Rep>
class StrongInt {
public:
    using rep = Rep;
    constexpr StrongInt() = default;
    constexpr explicit StrongInt(Rep v) : v_(v) {}
    constexpr Rep value() const { return v_; }

    constexpr auto operator<=>(const StrongInt&) const = default;

    // Offsets within one space stay in that space; overflow is a named question.
    constexpr std::optional<StrongInt> checked_add(Rep n) const {
        if (v_ > std::numeric_limits<Rep>::max() - n) return std::nullopt;
        return StrongInt(v_ + n);
    }
    constexpr StrongInt operator+(Rep n) const { return StrongInt(v_ + n); }
    constexpr Rep operator-(StrongInt o) const { return v_ - o.v_; }
    constexpr StrongInt& operator++() { ++v_; return *this; }

private:
    Rep v_{};
};

}  // namespace swapvisor

template <class Tag, class Rep>
struct std::hash<swapvisor::StrongInt<Tag, Rep>> {
    std::size_t operator()(swapvisor::StrongInt<Tag, Rep> s) const noexcept { return std::hash<Rep>{}(s.value()); }
};
