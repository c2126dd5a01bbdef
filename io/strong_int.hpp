// StrongInt<Tag, Rep>: one distinct integer type per address space or id
// (Gpa, Gfn, VSlot, ...). No implicit conversions, no arithmetic across tags;
// conversions between spaces are named functions next to the types.
//
// Arithmetic inside one space is named and checked (STYLE.md#naming, vm-memory's
// "operators are not supported"): checked_add asks whether an offset fits,
// offset_by asserts that it does (an overflow there is a broken invariant), and
// distance_to is the forward distance between two values of one space.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>

#include "io/result.hpp"

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
    // The value n further on; wrapping past the end of the space aborts.
    constexpr StrongInt offset_by(Rep n) const {
        SWV_ASSERT(v_ <= std::numeric_limits<Rep>::max() - n, "StrongInt::offset_by overflows its space");
        return StrongInt(v_ + n);
    }
    // How far `to` lies after this value; `to` before this one aborts.
    constexpr Rep distance_to(StrongInt to) const {
        SWV_ASSERT(to.v_ >= v_, "StrongInt::distance_to: target lies before the start");
        return to.v_ - v_;
    }

    // No unchecked arithmetic (STYLE.md#naming): deleted, so a stray `a + n` or
    // `b - a` names the checked operation to use instead of compiling.
    constexpr StrongInt operator+(Rep n) const = delete;
    constexpr Rep operator-(StrongInt o) const = delete;
    constexpr StrongInt& operator++() = delete;

private:
    Rep v_{};
};

}  // namespace swapvisor

template <class Tag, class Rep>
struct std::hash<swapvisor::StrongInt<Tag, Rep>> {
    std::size_t operator()(swapvisor::StrongInt<Tag, Rep> s) const noexcept { return std::hash<Rep>{}(s.value()); }
};
