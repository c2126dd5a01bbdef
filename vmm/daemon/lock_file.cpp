// LockFile: flock beside the control socket (lock_file.hpp, vmm/daemon/README.md#lock).
#include "vmm/daemon/lock_file.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace swapvisor::vmm::daemon {

namespace {

// The pid the holder wrote, or "unknown" (it may be writing it right now).
std::string holder_pid(int fd) {
    char buf[32] = {};
    // Kernel contract: pread does not move the file offset; a short read is fine.
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    return pid.empty() ? std::string("unknown") : pid;
}

}  // namespace

std::filesystem::path LockFile::path_for(const std::filesystem::path& socket) {
    std::filesystem::path lock = socket;
    lock += ".lock";
    return lock;
}

Result<LockFile> LockFile::acquire(const std::filesystem::path& path) {
    for (int attempt = 0; attempt < 8; ++attempt) {
        // Kernel contract: O_CREAT without O_EXCL opens the existing file or makes a
        // new one (0600: only the owner reads the pid); O_CLOEXEC keeps it from a child.
        io::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
        if (!fd.valid()) return errno_error("opening the lock file", errno, path.string());
        // Kernel contract: flock locks the open file description; LOCK_NB fails with
        // EWOULDBLOCK at once while another description holds it; the lock ends when
        // the last fd of the description closes (also when the process dies).
        if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK) return errno_error("flock", errno, path.string());
            return errno_error("another swapvisor holds this control socket", EAGAIN,
                               "pid " + holder_pid(fd.get()) + ", lock " + path.string());
        }
        // The previous holder unlinks the file before it lets go: a lock on a file
        // that no longer has this name locks nothing. Retry on the new file.
        struct stat held {}, named {};
        if (::fstat(fd.get(), &held) != 0) return errno_error("fstat", errno, path.string());
        if (::stat(path.c_str(), &named) != 0 || named.st_dev != held.st_dev || named.st_ino != held.st_ino) continue;
        const std::string pid = std::to_string(::getpid()) + "\n";
        // Kernel contract: ftruncate then pwrite at 0 replaces the content; readers
        // that race see an empty or partial pid and say "unknown".
        if (::ftruncate(fd.get(), 0) != 0 || ::pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
            return errno_error("writing the pid to the lock file", errno, path.string());
        return LockFile(path, std::move(fd));
    }
    return errno_error("the lock file keeps being replaced", EAGAIN, path.string());
}

LockFile::~LockFile() {
    if (!fd_.valid()) return;
    // Kernel contract: unlink while the lock is still held (fd_ closes after this),
    // so the next daemon never locks a name that is about to disappear.
    ::unlink(path_.c_str());
}

}  // namespace swapvisor::vmm::daemon
