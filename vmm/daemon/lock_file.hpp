// LockFile: one daemon per control socket (vmm/daemon/README.md#lock). `serve` and
// `run --control S` hold an exclusive flock on S.lock, beside the socket, for as long
// as they live; it holds the owner's pid as text. A second swapvisor for the same
// socket is refused before it opens a swap device or touches the socket, even when the
// socket file itself was deleted (the lock file is a different file, and the lock is
// on the open file, not on the name).
// Invariant: while a LockFile lives, the path names the file it locked (checked after
// flock, so a lock taken on a file that its previous owner unlinked meanwhile is
// retried on the new file); the destructor unlinks it, then releases the lock.
#pragma once

#include <filesystem>

#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::vmm::daemon {

class LockFile {
public:
    // The lock of a control socket: "<socket>.lock".
    static std::filesystem::path path_for(const std::filesystem::path& socket);
    // Take it without waiting. Errors: std::errc::resource_unavailable_try_again
    // when another process holds it (the context names its pid and the file),
    // errno errors of open / flock / write otherwise.
    static Result<LockFile> acquire(const std::filesystem::path& path);

    LockFile(LockFile&&) noexcept = default;
    LockFile& operator=(LockFile&&) noexcept = default;
    ~LockFile();

    const std::filesystem::path& path() const { return path_; }

private:
    LockFile(std::filesystem::path path, io::UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}
    std::filesystem::path path_;
    io::UniqueFd fd_;  // holds the flock; closed last
};

}  // namespace swapvisor::vmm::daemon
