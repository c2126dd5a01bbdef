// StrongInt: arithmetic inside one space is named and checked (checked_add,
// offset_by, distance_to); the unchecked operators do not exist, and an overflow
// through offset_by or a backwards distance_to is a broken invariant (abort).
#include "io/strong_int.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <type_traits>

namespace swapvisor {
namespace {

using Small = StrongInt<struct SmallTag, std::uint8_t>;
using Other = StrongInt<struct OtherTag, std::uint8_t>;

// The unchecked operators are gone, and tags never mix (concepts, so that a
// missing or deleted operation is "false", not a compile error).
template <class T>
concept AddsRep = requires(T a) { a + typename T::rep{1}; };
template <class T>
concept Subtracts = requires(T a, T b) { a - b; };
template <class T>
concept Increments = requires(T a) { ++a; };
template <class T, class U>
concept MeasuresTo = requires(T a, U b) { a.distance_to(b); };
static_assert(!AddsRep<Small> && !Subtracts<Small> && !Increments<Small>);
static_assert(MeasuresTo<Small, Small> && !MeasuresTo<Small, Other>);
static_assert(!std::is_convertible_v<std::uint8_t, Small>);

TEST(StrongInt, CheckedAddSaysWhetherTheOffsetFits) {
    EXPECT_EQ(Small(250).checked_add(5), std::optional(Small(255)));
    EXPECT_EQ(Small(250).checked_add(6), std::nullopt);
    EXPECT_EQ(Small(0).checked_add(0), std::optional(Small(0)));
}

TEST(StrongInt, OffsetByAndDistanceToAreInverse) {
    EXPECT_EQ(Small(10).offset_by(245), Small(255));
    EXPECT_EQ(Small(10).distance_to(Small(255)), 245);
    EXPECT_EQ(Small(7).distance_to(Small(7)), 0);
    constexpr Small kAt = Small(3).offset_by(4);  // usable in constant expressions
    static_assert(kAt == Small(7));
}

TEST(StrongIntDeathTest, OffsetByPastTheEndOfTheSpaceAborts) {
    EXPECT_DEATH((void)Small(250).offset_by(6), "offset_by overflows");
}

TEST(StrongIntDeathTest, DistanceToAnEarlierValueAborts) {
    EXPECT_DEATH((void)Small(8).distance_to(Small(7)), "target lies before the start");
}

}  // namespace
}  // namespace swapvisor
