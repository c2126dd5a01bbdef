// owner_tag.hpp: the (VmId, stage-2 index) pair round-trips through swap's 48-bit
// OwnerTag at its limits (swap/README.md#vslots keeps 48 bits of it; index 2^32-1
// is kSnapshotOwner's).
#include "guestmem/owner_tag.hpp"

#include <gtest/gtest.h>

#include <limits>

namespace swapvisor::guestmem {
namespace {

TEST(OwnerTag, LargestVmAndIndexFitSwapsOwnerBits) {
    constexpr VmId kVm = std::numeric_limits<VmId>::max();
    constexpr std::uint64_t kIndex = kOwnerIndexMask - 1;  // 2^32-1 is kSnapshotOwner's
    constexpr swap::OwnerTag tag = pack_owner(kVm, kIndex);
    static_assert(tag == swap::kMaxOwnerTag - 1);
    static_assert(owner_index(swap::kSnapshotOwner) == kOwnerIndexMask);
    EXPECT_EQ(owner_vm(tag), kVm);
    EXPECT_EQ(owner_index(tag), kIndex);
    EXPECT_EQ(owner_vm(pack_owner(1, 0)), 1);
    EXPECT_EQ(owner_index(pack_owner(1, 0)), 0u);
    EXPECT_EQ(owner_vm(pack_owner(0, kIndex)), 0);
    // The largest guest the CLI accepts: 3 GiB + 8 TiB - 2 MiB, in pages.
    constexpr std::uint64_t kLargestGuestPages = ((3ull << 30) + (8ull << 40) - (2ull << 20)) / 4096;
    EXPECT_LT(kLargestGuestPages - 1, kOwnerIndexMask);
}

// Beyond 32 bits, and 2^32-1 itself (swap reads that index as kSnapshotOwner's,
// swap/README.md#vslot-blocks).
TEST(OwnerTag, IndexBeyond2To32Minus2IsABrokenInvariant) {
    EXPECT_DEATH((void)pack_owner(1, kOwnerIndexMask + 1), "stage-2 index beyond 2\\^32-2");
    EXPECT_DEATH((void)pack_owner(1, kOwnerIndexMask), "stage-2 index beyond 2\\^32-2");
}

}  // namespace
}  // namespace swapvisor::guestmem
