// MemfdKernel: the real PageKernel. It owns the VM's RAM — one memfd per region,
// mapped twice: the guest view (the KVM memslot, registered with userfaultfd
// MISSING + MINOR, + WP where the kernel has it on shmem) and the VMM view that only
// swapvisor touches — and the userfaultfd, and turns each PageKernel call into the
// one syscall or ioctl that does it (guestmem/README.md#states).
//
// Guest-physical layout (so that 32-bit devices fit below 4 GiB):
//
//   0 ............ min(memory, 3 GiB)      low RAM region
//   3 GiB ........ 4 GiB                   hole: virtio-mmio at 0xd0000000, ...
//   4 GiB ........ 4 GiB + rest            high RAM region (only if memory > 3 GiB)
//
// Stage-2 indexes (PageIdx) number the RAM pages densely: the low region first.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "guestmem/page_kernel.hpp"
#include "guestmem/userfault.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::guestmem {

inline constexpr std::uint64_t kLowRamEnd = 0xC000'0000ULL;      // 3 GiB
inline constexpr std::uint64_t kHighRamBase = 0x1'0000'0000ULL;  // 4 GiB

// One RAM region as KVM sees it.
struct RegionView {
    Gpa base;
    std::uint64_t size;
    std::byte* guest_view;  // host address registered as the KVM memslot
};

enum class WriteTracking : bool { off, on };

class MemfdKernel final : public PageKernel {
public:
    // memory_bytes: a non-zero multiple of 2 MiB. Needs userfaultfd with MISSING_SHMEM,
    // MINOR_SHMEM and POISON; WP on shmem is used where the kernel has it.
    static Result<std::unique_ptr<MemfdKernel>> create(const std::string& name, std::uint64_t memory_bytes);

    const std::vector<RegionView>& views() const { return views_; }
    WriteTracking write_tracking() const { return wp_ ? WriteTracking::on : WriteTracking::off; }
    int uffd_fd() const { return uffd_->fd(); }
    Userfault& uffd() { return *uffd_; }
    std::optional<PageIdx> idx_of(Gpa gpa) const;
    std::optional<PageIdx> idx_of_guest_addr(std::uint64_t hva) const;

    // PageKernel
    std::uint64_t pages() const override { return pages_; }
    PageIdx region_end(PageIdx idx) const override;
    Gpa gpa_of(PageIdx idx) const override;
    std::byte* vmm_page(PageIdx idx) override;
    Result<void> copy_out(PageIdx first, std::uint64_t count, std::byte* dst) override;
    Result<void> punch(PageIdx first, std::uint64_t count) override;
    Result<void> zap(PageIdx first, std::uint64_t count) override;
    Mapped copy_zeros(PageIdx first, std::uint64_t count, Wake wake) override;
    Result<void> copy_page(PageIdx idx, const std::byte* src, WriteProtect wp, Wake wake) override;
    Mapped continue_(PageIdx first, std::uint64_t count, WriteProtect wp, Wake wake) override;
    Result<void> poison(PageIdx idx, Wake wake) override;
    Result<void> wake(PageIdx first, std::uint64_t count) override;
    Result<void> write_protect(PageIdx idx, WriteProtect wp, Wake wake) override;

    // The largest run copy_zeros takes in one call.
    static constexpr std::uint64_t kMaxZeroRun = 16;

private:
    struct Region {
        io::UniqueFd memfd;
        io::Mapping guest_view;  // KVM memslot + userfaultfd; never touched by swapvisor
        io::Mapping vmm_view;    // swapvisor's own accesses and swap I/O buffers
        Gpa base;
        std::uint64_t pages = 0;
        PageIdx first;           // stage-2 index of the region's first page
    };
    MemfdKernel() = default;
    const Region& region_of(PageIdx idx) const;
    std::byte* guest_ptr(PageIdx idx) const;

    std::optional<Userfault> uffd_;
    bool wp_ = false;
    std::uint64_t pages_ = 0;
    std::vector<Region> regions_;
    std::vector<RegionView> views_;
    io::Mapping zero_pages_;  // kMaxZeroRun zero pages: the UFFDIO_COPY source
};

}  // namespace swapvisor::guestmem
