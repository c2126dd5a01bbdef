// MemfdKernel: see memfd_kernel.hpp.
#include "guestmem/memfd_kernel.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>

#include "guestmem/errc.hpp"

namespace swapvisor::guestmem {

namespace {
constexpr std::uint64_t kTwoMiB = 2ULL << 20;
}

Result<std::unique_ptr<MemfdKernel>> MemfdKernel::create(const std::string& name, std::uint64_t memory_bytes) {
    if (memory_bytes == 0 || memory_bytes % kTwoMiB != 0)
        return make_error(Errc::misaligned, "guest memory size", "must be a non-zero multiple of 2 MiB");
    std::unique_ptr<MemfdKernel> k(new MemfdKernel());
    // POISON is required: without it a page whose swap-in failed could only be shown
    // to the guest as wrong bytes or leave the vCPU blocked for ever. THREAD_ID (optional)
    // names the faulting thread in each message: the stall per vCPU (stall.hpp).
    k->uffd_.emplace(SWV_TRY(Userfault::create(
        UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_POISON,
        UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_THREAD_ID)));
    k->wp_ = k->uffd_->has(UFFD_FEATURE_WP_HUGETLBFS_SHMEM);

    // Split RAM around the 3-4 GiB hole (memfd_kernel.hpp).
    struct Span { std::uint64_t base, bytes; };
    std::vector<Span> spans;
    const std::uint64_t low = std::min(memory_bytes, kLowRamEnd);
    spans.push_back({0, low});
    if (memory_bytes > low) spans.push_back({kHighRamBase, memory_bytes - low});

    for (const Span& s : spans) {
        Region r;
        const std::string memfd_name = "swapvisor-" + name;
        // Kernel contract: memfd_create gives an anonymous shmem file; holes read as
        // zeros and FALLOC_FL_PUNCH_HOLE frees pages (and zaps every mapping of them).
        int fd = ::memfd_create(memfd_name.c_str(), MFD_CLOEXEC);
        if (fd < 0) return errno_error("memfd_create");
        r.memfd = io::UniqueFd(fd);
        // Kernel contract: ftruncate sizes the (sparse) file; nothing is allocated yet.
        if (::ftruncate(fd, static_cast<off_t>(s.bytes)) < 0) return errno_error("ftruncate memfd");
        r.guest_view = SWV_TRY(io::Mapping::shared(fd, s.bytes, 0, MAP_NORESERVE));
        r.vmm_view = SWV_TRY(io::Mapping::shared(fd, s.bytes, 0, MAP_NORESERVE));
        r.base = Gpa(s.base);
        r.pages = s.bytes / kPageSize;
        r.first = PageIdx(k->pages_);
        k->pages_ += r.pages;
        SWV_TRY(k->uffd_->register_range(r.guest_view.data(), s.bytes,
                                         UffdRegisterMode{.missing = true, .minor = true, .wp = k->wp_}));
        k->views_.push_back(RegionView{r.base, s.bytes, r.guest_view.data()});
        k->regions_.push_back(std::move(r));
    }
    k->zero_pages_ = SWV_TRY(io::Mapping::anonymous(kMaxZeroRun * kPageSize));
    return k;
}

// --- addressing ----------------------------------------------------------------

std::optional<PageIdx> MemfdKernel::idx_of(Gpa gpa) const {
    for (const Region& r : regions_) {
        if (gpa >= r.base && gpa.value() - r.base.value() < r.pages * kPageSize)
            return PageIdx(r.first.value() + ((gpa.value() - r.base.value()) >> kPageShift));
    }
    return std::nullopt;
}

std::optional<PageIdx> MemfdKernel::idx_of_guest_addr(std::uint64_t hva) const {
    for (const Region& r : regions_) {
        auto start = reinterpret_cast<std::uint64_t>(r.guest_view.data());
        if (hva >= start && hva - start < r.pages * kPageSize)
            return PageIdx(r.first.value() + ((hva - start) >> kPageShift));
    }
    return std::nullopt;
}

const MemfdKernel::Region& MemfdKernel::region_of(PageIdx idx) const {
    for (const Region& r : regions_)
        if (idx >= r.first && idx.value() < r.first.value() + r.pages) return r;
    SWV_ASSERT(false, "stage-2 index outside every region");
}

PageIdx MemfdKernel::region_end(PageIdx idx) const {
    const Region& r = region_of(idx);
    return PageIdx(r.first.value() + r.pages);
}

Gpa MemfdKernel::gpa_of(PageIdx idx) const {
    const Region& r = region_of(idx);
    return Gpa(r.base.value() + (idx.value() - r.first.value()) * kPageSize);
}

std::byte* MemfdKernel::guest_ptr(PageIdx idx) const {
    const Region& r = region_of(idx);
    return r.guest_view.data() + (idx.value() - r.first.value()) * kPageSize;
}

std::byte* MemfdKernel::vmm_page(PageIdx idx) {
    const Region& r = region_of(idx);
    return r.vmm_view.data() + (idx.value() - r.first.value()) * kPageSize;
}

// --- the calls transitions make ------------------------------------------------------

Result<void> MemfdKernel::copy_out(PageIdx first, std::uint64_t count, std::byte* dst) {
    const Region& r = region_of(first);
    SWV_ASSERT(first.value() + count <= r.first.value() + r.pages, "copy_out run crosses a region");
    auto offset = static_cast<off_t>((first.value() - r.first.value()) * kPageSize);
    std::size_t left = count * kPageSize;
    while (left > 0) {
        // Kernel contract: pread of a shmem file copies from its page cache (a hole
        // reads as zeros and allocates nothing); no page table of either view is
        // touched, so a later punch has no mapping of this page to remove.
        const ssize_t n = ::pread(r.memfd.get(), dst, left, offset);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("pread guest memory");
        if (n == 0) return errno_error("pread guest memory (past its end)", EIO);
        dst += n;
        offset += n;
        left -= static_cast<std::size_t>(n);
    }
    return {};
}

Result<void> MemfdKernel::punch(PageIdx first, std::uint64_t count) {
    const Region& r = region_of(first);
    SWV_ASSERT(first.value() + count <= r.first.value() + r.pages, "punch run crosses a region");
    // Kernel contract: PUNCH_HOLE|KEEP_SIZE frees the pages and unmaps them from every
    // view (a UFFD poison marker stays); the next guest touch is a MISSING fault.
    if (::fallocate(r.memfd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    static_cast<off_t>((first.value() - r.first.value()) * kPageSize),
                    static_cast<off_t>(count * kPageSize)) < 0)
        return errno_error("fallocate(PUNCH_HOLE) guest memory");
    return {};
}

Result<void> MemfdKernel::zap(PageIdx first, std::uint64_t count) {
    SWV_ASSERT(first.value() + count <= region_end(first).value(), "zap run crosses a region");
    // Kernel contract: MADV_DONTNEED on a shared mapping drops only the page-table
    // entries (KVM's too, through the MMU notifier) and poison markers; the page stays
    // in the memfd, so the next guest touch is a MINOR fault — the access sample.
    if (::madvise(guest_ptr(first), count * kPageSize, MADV_DONTNEED) < 0)
        return errno_error("madvise(DONTNEED) guest view");
    return {};
}

Mapped MemfdKernel::copy_zeros(PageIdx first, std::uint64_t count, Wake wake) {
    SWV_ASSERT(count <= kMaxZeroRun && first.value() + count <= region_end(first).value(),
               "zero run too long or crossing a region");
    return uffd_->copy(guest_ptr(first), zero_pages_.data(), count * kPageSize, WriteProtect::no, wake);
}

Result<void> MemfdKernel::copy_page(PageIdx idx, const std::byte* src, WriteProtect wp, Wake wake) {
    // Kernel contract: UFFDIO_COPY into a shared shmem mapping allocates the page in
    // the memfd's page cache (shmem_mfill_atomic_pte), so the VMM view maps that same
    // page on its next touch; EEXIST if the memfd already holds one. MODE_WP maps it
    // write-protected (uffd-wp), as CONTINUE's MODE_WP does for a clean copy.
    return uffd_->copy(guest_ptr(idx), src, kPageSize, wp, wake).status;
}

Mapped MemfdKernel::continue_(PageIdx first, std::uint64_t count, WriteProtect wp, Wake wake) {
    SWV_ASSERT(first.value() + count <= region_end(first).value(), "continue run crosses a region");
    return uffd_->continue_(guest_ptr(first), count * kPageSize, wp, wake);
}

Result<void> MemfdKernel::poison(PageIdx idx, Wake wake) { return uffd_->poison(guest_ptr(idx), kPageSize, wake); }

Result<void> MemfdKernel::wake(PageIdx first, std::uint64_t count) {
    return uffd_->wake(guest_ptr(first), count * kPageSize);
}

Result<void> MemfdKernel::write_protect(PageIdx idx, WriteProtect wp, Wake wake) {
    return uffd_->write_protect(guest_ptr(idx), kPageSize, wp, wake);
}

}  // namespace swapvisor::guestmem
