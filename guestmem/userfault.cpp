// Userfault: see userfault.hpp.
#include "guestmem/userfault.hpp"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "guestmem/errc.hpp"

namespace swapvisor::guestmem {
namespace {

// Turn the errno of a resolving ioctl into the error the fault path branches on.
std::unexpected<Error> uffd_error(const char* op, int err) {
    switch (err) {
        case EEXIST: return make_error(Errc::page_exists, op);
        case EAGAIN: return make_error(Errc::retry, op);
        case ESRCH: return make_error(Errc::uffd_closed, op);
        default: return errno_error(op, err);
    }
}

// The kernel reports progress in bytes, or a negative errno when nothing was done.
std::uint64_t done_pages(std::int64_t bytes) { return bytes > 0 ? static_cast<std::uint64_t>(bytes) / kPageSize : 0; }

uffdio_range range_of(std::byte* addr, std::size_t len) {
    return uffdio_range{reinterpret_cast<std::uint64_t>(addr), len};
}

}  // namespace

Result<Userfault> Userfault::create(std::uint64_t required_features, std::uint64_t optional_features) {
    // Kernel contract: userfaultfd(2) without UFFD_USER_MODE_ONLY also reports faults
    // taken in kernel mode (KVM's get_user_pages on behalf of a vCPU); that needs
    // CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
    int raw = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (raw < 0) return errno_error("userfaultfd");
    io::UniqueFd fd(raw);

    // Kernel contract: UFFDIO_API must be the first ioctl; asking for an unknown
    // feature fails with EINVAL, so probe with zero first to learn what exists.
    uffdio_api probe{UFFD_API, 0, 0};
    if (::ioctl(fd.get(), UFFDIO_API, &probe) < 0) return errno_error("UFFDIO_API probe");
    std::uint64_t available = probe.features;
    if ((available & required_features) != required_features)
        return make_error(Errc::unsupported, "userfaultfd features (need MISSING_SHMEM, MINOR_SHMEM and POISON: Linux 6.6 or later)");

    // The API handshake can only happen once per fd: open a fresh one for the real request.
    raw = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (raw < 0) return errno_error("userfaultfd");
    fd = io::UniqueFd(raw);
    uffdio_api api{UFFD_API, required_features | (optional_features & available), 0};
    // Kernel contract: on success api.features holds what was granted.
    if (::ioctl(fd.get(), UFFDIO_API, &api) < 0) return errno_error("UFFDIO_API");
    return Userfault(std::move(fd), api.features);
}

Result<void> Userfault::register_range(std::byte* addr, std::size_t len, UffdRegisterMode mode) {
    uffdio_register reg{};
    reg.range = range_of(addr, len);
    if (mode.missing) reg.mode |= UFFDIO_REGISTER_MODE_MISSING;
    if (mode.minor) reg.mode |= UFFDIO_REGISTER_MODE_MINOR;
    if (mode.wp) reg.mode |= UFFDIO_REGISTER_MODE_WP;
    // Kernel contract: the range must be page aligned and wholly inside VMAs that
    // support the modes (shmem for MINOR).
    if (::ioctl(fd_.get(), UFFDIO_REGISTER, &reg) < 0) return errno_error("UFFDIO_REGISTER");
    return {};
}

Mapped Userfault::copy(std::byte* dst, const std::byte* src, std::size_t len, WriteProtect wp, Wake wake) {
    uffdio_copy c{};
    c.dst = reinterpret_cast<std::uint64_t>(dst);
    c.src = reinterpret_cast<std::uint64_t>(src);
    c.len = len;
    if (wp == WriteProtect::yes) c.mode |= UFFDIO_COPY_MODE_WP;
    if (wake == Wake::no) c.mode |= UFFDIO_COPY_MODE_DONTWAKE;
    // Kernel contract: allocates the page in the shmem file behind dst and maps it;
    // EEXIST if a page is already there. c.copy: bytes copied, even on failure.
    if (::ioctl(fd_.get(), UFFDIO_COPY, &c) < 0) {
        int err = errno;
        return Mapped{done_pages(c.copy), uffd_error("UFFDIO_COPY", err)};
    }
    return Mapped{len / kPageSize, {}};
}

Mapped Userfault::continue_(std::byte* addr, std::size_t len, WriteProtect wp, Wake wake) {
    uffdio_continue c{};
    c.range = range_of(addr, len);
    if (wp == WriteProtect::yes) c.mode |= UFFDIO_CONTINUE_MODE_WP;
    if (wake == Wake::no) c.mode |= UFFDIO_CONTINUE_MODE_DONTWAKE;
    // Kernel contract: maps the pages already in the page cache; EEXIST if mapped.
    // c.mapped: bytes mapped before an error (a prefix of the range stays mapped).
    if (::ioctl(fd_.get(), UFFDIO_CONTINUE, &c) < 0) {
        int err = errno;
        return Mapped{done_pages(c.mapped), uffd_error("UFFDIO_CONTINUE", err)};
    }
    return Mapped{len / kPageSize, {}};
}

Result<void> Userfault::wake(std::byte* addr, std::size_t len) {
    uffdio_range r = range_of(addr, len);
    // Kernel contract: wakes threads blocked on faults in the range.
    if (::ioctl(fd_.get(), UFFDIO_WAKE, &r) < 0) return uffd_error("UFFDIO_WAKE", errno);
    return {};
}

Result<void> Userfault::write_protect(std::byte* addr, std::size_t len, WriteProtect wp, Wake wake) {
    uffdio_writeprotect w{};
    w.range = range_of(addr, len);
    if (wp == WriteProtect::yes) w.mode |= UFFDIO_WRITEPROTECT_MODE_WP;
    if (wake == Wake::no) w.mode |= UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
    // Kernel contract: clearing WP also wakes the writers blocked on the range.
    if (::ioctl(fd_.get(), UFFDIO_WRITEPROTECT, &w) < 0) return uffd_error("UFFDIO_WRITEPROTECT", errno);
    return {};
}

Result<void> Userfault::poison(std::byte* addr, std::size_t len, Wake wake) {
    uffdio_poison p{};
    p.range = range_of(addr, len);
    if (wake == Wake::no) p.mode |= UFFDIO_POISON_MODE_DONTWAKE;
    // Kernel contract: installs a poison marker; any access (KVM's included) gets a
    // memory error instead of data, so stale bytes are never shown to the guest.
    if (::ioctl(fd_.get(), UFFDIO_POISON, &p) < 0) return uffd_error("UFFDIO_POISON", errno);
    return {};
}

Result<std::size_t> Userfault::read_events(std::span<uffd_msg> out) {
    // Kernel contract: read(2) returns whole uffd_msg records; EAGAIN when none.
    ssize_t n = ::read(fd_.get(), out.data(), out.size_bytes());
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return 0;
        return errno_error("userfaultfd read");
    }
    return static_cast<std::size_t>(n) / sizeof(uffd_msg);
}

const std::error_category& guestmem_category() {
    struct Category final : std::error_category {
        const char* name() const noexcept override { return "guestmem"; }
        std::string message(int c) const override {
            switch (static_cast<Errc>(c)) {
                case Errc::page_exists: return "page already present";
                case Errc::retry: return "mapping changed, retry";
                case Errc::uffd_closed: return "userfaultfd closed";
                case Errc::out_of_range: return "guest-physical range outside RAM";
                case Errc::misaligned: return "range not page aligned";
                case Errc::page_lost: return "guest page lost (swap-in failed; page poisoned)";
                case Errc::unsupported: return "kernel feature missing";
                case Errc::bad_snapshot: return "bad memory snapshot";
            }
            return "unknown guestmem error";
        }
    };
    static const Category category;
    return category;
}

}  // namespace swapvisor::guestmem
