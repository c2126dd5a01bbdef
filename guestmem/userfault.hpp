// Userfault: one userfaultfd and the ioctls the fault service uses on it. Every
// resolving call names its flags (Wake, WriteProtect) instead of a bare bool, and
// maps the errno values the fault path branches on (EEXIST, EAGAIN, ESRCH) to
// guestmem::Errc (guestmem/README.md#faults).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "guestmem/page_kernel.hpp"
#include "io/linux_compat.hpp"
#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::guestmem {

struct UffdRegisterMode {
    bool missing = true;
    bool minor = true;
    bool wp = false;
};

class Userfault {
public:
    // Open a userfaultfd (non-blocking, close-on-exec; kernel faults included so KVM's
    // accesses are reported) and negotiate `wanted` features; the ones the kernel
    // granted are in features().
    static Result<Userfault> create(std::uint64_t required_features, std::uint64_t optional_features);

    int fd() const { return fd_.get(); }
    std::uint64_t features() const { return features_; }
    bool has(std::uint64_t feature) const { return (features_ & feature) == feature; }

    Result<void> register_range(std::byte* addr, std::size_t len, UffdRegisterMode mode);
    // Both may map a prefix of [addr, addr + len) before failing: Mapped.pages says how much.
    Mapped copy(std::byte* dst, const std::byte* src, std::size_t len, WriteProtect wp, Wake wake);
    Mapped continue_(std::byte* addr, std::size_t len, WriteProtect wp, Wake wake);
    Result<void> wake(std::byte* addr, std::size_t len);
    Result<void> write_protect(std::byte* addr, std::size_t len, WriteProtect wp, Wake wake);
    Result<void> poison(std::byte* addr, std::size_t len, Wake wake);
    // Read pending events; 0 when none is pending (non-blocking).
    Result<std::size_t> read_events(std::span<uffd_msg> out);

private:
    Userfault(io::UniqueFd fd, std::uint64_t features) : fd_(std::move(fd)), features_(features) {}
    io::UniqueFd fd_;
    std::uint64_t features_;
};

}  // namespace swapvisor::guestmem
