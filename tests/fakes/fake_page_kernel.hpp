// FakePageKernel: guestmem's PageKernel in memory (guestmem/page_kernel.hpp has the
// contract). Each page has a memfd side (present or a hole, with its bytes) and a
// guest-view side (unmapped, mapped, mapped write-protected, or poisoned); every call
// is checked against that model exactly as the kernel would answer it (EEXIST as
// Errc::page_exists, CONTINUE over a hole as EFAULT) and recorded in history(), as
// Hedron's page-table tests record their fake memory. `fail_next` makes the next call
// of one kind map a prefix and then fail, the way a real UFFDIO_COPY / CONTINUE can.
// consistent(entry) says whether a stage-2 entry matches the model — the invariant
// every transition test checks. Thread safe: one mutex around the model.
#pragma once

#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

#include "guestmem/errc.hpp"
#include "guestmem/page_kernel.hpp"
#include "guestmem/stage2.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::testing {

class FakePageKernel final : public guestmem::PageKernel {
public:
    using PageIdx = guestmem::PageIdx;
    enum class View { unmapped, mapped, mapped_wp, poisoned };
    enum class Op { punch, zap, copy_zeros, copy_page, continue_, poison, wake, write_protect, copy_out };
    struct Call {
        Op op;
        std::uint64_t first;
        std::uint64_t count;
        bool operator==(const Call&) const = default;
    };

    // `pages` in regions of `region_pages` each (runs never cross a region).
    explicit FakePageKernel(std::uint64_t pages, std::uint64_t region_pages = 0)
        : region_pages_(region_pages ? region_pages : pages),
          bytes_(io::Mapping::anonymous(pages * guestmem::kPageSize).value()),
          pages_(pages) {}

    // --- the model, for tests ---------------------------------------------------------
    bool present(PageIdx i) const { std::lock_guard l(mu_); return pages_[i.value()].present; }
    View view(PageIdx i) const { std::lock_guard l(mu_); return pages_[i.value()].view; }
    std::vector<Call> history() const { std::lock_guard l(mu_); return history_; }
    void clear_history() { std::lock_guard l(mu_); history_.clear(); }
    std::size_t count(Op op) const {
        std::lock_guard l(mu_);
        std::size_t n = 0;
        for (const Call& c : history_) n += c.op == op;
        return n;
    }
    // The next call of `op` does `after_pages` pages, then fails with `error`.
    void fail_next(Op op, std::error_code error, std::uint64_t after_pages = 0) {
        std::lock_guard l(mu_);
        failure_ = Failure{op, error, after_pages};
    }
    // Whether `e` (the entry of page i) describes the model's page i.
    bool consistent(PageIdx i, guestmem::PageEntry e) const {
        using guestmem::PageState;
        std::lock_guard l(mu_);
        const Page& p = pages_[i.value()];
        const bool mapped = p.view == View::mapped || p.view == View::mapped_wp;
        switch (e.state()) {
            case PageState::zero:
            case PageState::image:
            case PageState::swapped: return !p.present && p.view == View::unmapped;
            case PageState::resident: return p.present && mapped && (!e.clean() || p.view == View::mapped_wp);
            case PageState::inactive:
            case PageState::writeback: return p.present && p.view == View::unmapped;
            case PageState::lost: return !p.present && p.view == View::poisoned;
            case PageState::reading: return false;
        }
        return false;
    }

    // --- PageKernel --------------------------------------------------------------------
    std::uint64_t pages() const override { return pages_.size(); }
    PageIdx region_end(PageIdx idx) const override {
        return PageIdx((idx.value() / region_pages_ + 1) * region_pages_);
    }
    guestmem::Gpa gpa_of(PageIdx idx) const override { return guestmem::Gpa(idx.value() * guestmem::kPageSize); }
    // Calls of vmm_page(): each is an access through the VMM view (a fault there on
    // the real kernel when the page is not mapped in it yet).
    std::size_t vmm_touches() const { std::lock_guard l(mu_); return vmm_touches_; }
    std::byte* vmm_page(PageIdx idx) override {
        std::lock_guard l(mu_);
        ++vmm_touches_;
        // A touch through the VMM view allocates a hole, as shmem does on any fault.
        if (!pages_[idx.value()].present) {
            pages_[idx.value()].present = true;
            std::memset(data(idx), 0, guestmem::kPageSize);
        }
        return data(idx);
    }
    Result<void> copy_out(PageIdx first, std::uint64_t count, std::byte* dst) override {
        std::lock_guard l(mu_);
        check_run(first, count);
        if (auto f = take_failure(Op::copy_out, first, count)) return std::unexpected(f->error);
        // A read of the file: a hole reads as zeros and stays a hole; no view changes.
        for (std::uint64_t k = 0; k < count; ++k) {
            const PageIdx i(first.value() + k);
            std::byte* to = dst + k * guestmem::kPageSize;
            if (pages_[i.value()].present) std::memcpy(to, data(i), guestmem::kPageSize);
            else std::memset(to, 0, guestmem::kPageSize);
        }
        return {};
    }
    Result<void> punch(PageIdx first, std::uint64_t count) override {
        std::lock_guard l(mu_);
        check_run(first, count);
        if (auto f = take_failure(Op::punch, first, count)) return std::unexpected(f->error);
        for (std::uint64_t k = 0; k < count; ++k) {
            Page& p = pages_[first.value() + k];
            p.present = false;
            if (p.view != View::poisoned) p.view = View::unmapped;  // the marker survives a punch
        }
        return {};
    }
    Result<void> zap(PageIdx first, std::uint64_t count) override {
        std::lock_guard l(mu_);
        check_run(first, count);
        if (auto f = take_failure(Op::zap, first, count)) return std::unexpected(f->error);
        for (std::uint64_t k = 0; k < count; ++k) {
            Page& p = pages_[first.value() + k];
            if (p.view == View::mapped_wp) p.wp_marker = true;
            p.view = View::unmapped;
        }
        return {};
    }
    guestmem::Mapped copy_zeros(PageIdx first, std::uint64_t count, guestmem::Wake) override {
        std::lock_guard l(mu_);
        check_run(first, count);
        const std::optional<Failure> f = take_failure(Op::copy_zeros, first, count);
        for (std::uint64_t k = 0; k < count; ++k) {
            if (f && k == f->after) return {k, std::unexpected(f->error)};
            Page& p = pages_[first.value() + k];
            if (p.present || p.view != View::unmapped) return {k, exists("UFFDIO_COPY")};
            p.present = true;
            std::memset(data(PageIdx(first.value() + k)), 0, guestmem::kPageSize);
            p.view = View::mapped;
            p.wp_marker = false;
        }
        return {count, {}};
    }
    Result<void> copy_page(PageIdx idx, const std::byte* src, guestmem::WriteProtect wp, guestmem::Wake) override {
        std::lock_guard l(mu_);
        check_run(idx, 1);
        if (auto f = take_failure(Op::copy_page, idx, 1)) return std::unexpected(f->error);
        Page& p = pages_[idx.value()];
        if (p.present || p.view != View::unmapped) return exists("UFFDIO_COPY");
        p.present = true;
        std::memcpy(data(idx), src, guestmem::kPageSize);
        p.view = wp == guestmem::WriteProtect::yes ? View::mapped_wp : View::mapped;
        p.wp_marker = false;
        return {};
    }
    guestmem::Mapped continue_(PageIdx first, std::uint64_t count, guestmem::WriteProtect wp, guestmem::Wake) override {
        std::lock_guard l(mu_);
        check_run(first, count);
        const std::optional<Failure> f = take_failure(Op::continue_, first, count);
        for (std::uint64_t k = 0; k < count; ++k) {
            if (f && k == f->after) return {k, std::unexpected(f->error)};
            Page& p = pages_[first.value() + k];
            if (p.view != View::unmapped) return {k, exists("UFFDIO_CONTINUE")};
            if (!p.present) return {k, errno_error("UFFDIO_CONTINUE", EFAULT)};
            p.view = wp == guestmem::WriteProtect::yes ? View::mapped_wp : View::mapped;
            p.wp_marker = false;
        }
        return {count, {}};
    }
    Result<void> poison(PageIdx idx, guestmem::Wake) override {
        std::lock_guard l(mu_);
        if (auto f = take_failure(Op::poison, idx, 1)) return std::unexpected(f->error);
        Page& p = pages_[idx.value()];
        if (p.view != View::unmapped || p.wp_marker) return exists("UFFDIO_POISON");
        p.view = View::poisoned;
        return {};
    }
    Result<void> wake(PageIdx first, std::uint64_t count) override {
        std::lock_guard l(mu_);
        if (auto f = take_failure(Op::wake, first, count)) return std::unexpected(f->error);
        return {};
    }
    Result<void> write_protect(PageIdx idx, guestmem::WriteProtect wp, guestmem::Wake) override {
        std::lock_guard l(mu_);
        if (auto f = take_failure(Op::write_protect, idx, 1)) return std::unexpected(f->error);
        Page& p = pages_[idx.value()];
        if (p.view == View::mapped || p.view == View::mapped_wp)
            p.view = wp == guestmem::WriteProtect::yes ? View::mapped_wp : View::mapped;
        if (wp == guestmem::WriteProtect::no) p.wp_marker = false;  // un-protecting resolves a marker
        return {};
    }

private:
    struct Page {
        bool present = false;
        View view = View::unmapped;
        // A uffd-wp pte marker: zapping a write-protected pte of a WP-registered
        // shmem range leaves one so the protection survives (MADV_DONTNEED keeps it,
        // and so does a hole punch). COPY and CONTINUE install over it as if the pte
        // were none; UFFDIO_POISON refuses it (EEXIST); un-protecting removes it.
        bool wp_marker = false;
    };
    struct Failure {
        Op op;
        std::error_code code;
        std::uint64_t after;
        Error error{};
    };
    std::byte* data(PageIdx idx) { return bytes_.data() + idx.value() * guestmem::kPageSize; }
    static std::unexpected<Error> exists(const char* op) { return make_error(guestmem::Errc::page_exists, op); }
    void check_run(PageIdx first, std::uint64_t count) const {
        SWV_ASSERT(count > 0 && first.value() + count <= pages_.size(), "fake kernel: run outside memory");
        SWV_ASSERT(first.value() / region_pages_ == (first.value() + count - 1) / region_pages_,
                   "fake kernel: run crosses a region");
    }
    // Records the call; returns the armed failure if it is for this op.
    std::optional<Failure> take_failure(Op op, PageIdx first, std::uint64_t count) {
        history_.push_back(Call{op, first.value(), count});
        if (!failure_ || failure_->op != op) return std::nullopt;
        Failure f = *failure_;
        failure_.reset();
        f.error = Error{f.code, "fake kernel", {}};
        return f;
    }

    // Protects: everything below; Order: leaf.
    mutable std::mutex mu_;
    const std::uint64_t region_pages_;
    io::Mapping bytes_;
    std::vector<Page> pages_;
    std::vector<Call> history_;
    std::optional<Failure> failure_;
    std::size_t vmm_touches_ = 0;
};

}  // namespace swapvisor::testing
