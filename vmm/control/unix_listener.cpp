// listen_unix: see unix_listener.hpp. Moved here from control_server.cpp so that the
// /metrics socket follows the same rules instead of replacing whatever is at its path.
#include "vmm/control/unix_listener.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace swapvisor::vmm::control {

namespace {

sockaddr_un address_of(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    return addr;
}

enum class AtPath { nothing, stale_socket };

// What is at path now: nothing, a stale socket (the caller may remove it), or a
// reason to refuse. Touches nothing.
Result<AtPath> inspect_path(const std::string& path, const std::string& context) {
    struct stat st {};
    // Kernel contract: lstat does not follow a symlink, so a link to some file is
    // "not a socket" and never unlinked through.
    if (lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return AtPath::nothing;
        return errno_error("lstat", errno, context);
    }
    if (!S_ISSOCK(st.st_mode)) return errno_error("the path exists and is not a socket", EEXIST, context);
    // Kernel contract: socket() with SOCK_NONBLOCK makes connect() to an AF_UNIX
    // listener with a full backlog fail with EAGAIN instead of blocking.
    io::UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe.valid()) return errno_error("socket", errno, context);
    const sockaddr_un addr = address_of(path);
    // Kernel contract: connect to a socket file nobody listens on fails with
    // ECONNREFUSED; that is the only case in which the file is ours to remove.
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0 || errno == EAGAIN)
        return errno_error("socket in use by a running process", EADDRINUSE, context);
    if (errno != ECONNREFUSED) return errno_error("probing the existing socket", errno, context);
    return AtPath::stale_socket;
}

// inspect_path, then a stale socket removed.
Result<void> clear_stale_socket(const std::string& path, const std::string& context) {
    if (SWV_TRY(inspect_path(path, context)) == AtPath::nothing) return {};
    if (unlink(path.c_str()) != 0 && errno != ENOENT) return errno_error("removing a stale socket", errno, context);
    return {};
}

Result<void> check_name(const std::string& path, const std::string& context) {
    if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path))
        return errno_error("path empty or longer than a Unix socket path", ENAMETOOLONG, context);
    return {};
}

}  // namespace

void SocketFile::remove() const {
    if (path.empty()) return;
    struct stat st {};
    // Kernel contract: unlink removes the name only; lstat first so that a file a
    // later server created at the path (another inode) is left alone.
    if (lstat(path.c_str(), &st) == 0 && st.st_dev == dev && st.st_ino == ino) unlink(path.c_str());
}

Result<void> check_unix_socket_path(const std::string& path, std::string_view what, MissingDir missing_dir) {
    const std::string context = std::string(what) + " " + path;
    SWV_TRY(check_name(path, context));
    const auto slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? std::string(".") : path.substr(0, slash + 1);
    struct stat st {};
    // Kernel contract: stat follows a symlinked directory, as bind() would.
    if (stat(dir.c_str(), &st) != 0) {
        if (errno != ENOENT || missing_dir == MissingDir::refuse)
            return errno_error("the socket's directory", errno, context);
        // It will be created: its own directory must let us (one level, as for
        // /run/swapvisor).
        const std::filesystem::path above = std::filesystem::path(path).parent_path().parent_path();
        if (access(above.empty() ? "." : above.c_str(), W_OK | X_OK) != 0)
            return errno_error("the socket's directory is missing and cannot be created", errno, context);
        return {};  // nothing can be at the path
    } else if (!S_ISDIR(st.st_mode)) {
        return errno_error("the socket's directory", ENOTDIR, context);
    } else if (access(dir.c_str(), W_OK | X_OK) != 0) {
        return errno_error("the socket's directory is not writable", errno, context);
    }
    SWV_TRY(inspect_path(path, context));
    return {};
}

Result<UnixListener> listen_unix(const std::string& path, std::string_view what, int backlog) {
    const std::string context = std::string(what) + " " + path;
    SWV_TRY(check_name(path, context));
    SWV_TRY(clear_stale_socket(path, context));

    io::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return errno_error("socket", errno, context);
    // Kernel contract: unix_bind() creates the socket file with the socket inode's
    // mode minus the umask, so after this fchmod the file is born 0600 (no window
    // in which another user could connect; and nobody can before listen()).
    if (fchmod(fd.get(), 0600) != 0) return errno_error("fchmod", errno, context);
    const sockaddr_un addr = address_of(path);
    // Kernel contract: bind creates the socket file; it fails with EADDRINUSE if
    // the path appeared meanwhile (nothing is overwritten).
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0)
        return errno_error("bind", errno, context);
    struct stat st {};
    // Kernel contract: chmod on the bound path sets the file's mode whatever the
    // umask or the socket inode did; lstat then names the file we created, so
    // SocketFile::remove removes only that one.
    if (chmod(path.c_str(), 0600) != 0 || lstat(path.c_str(), &st) != 0) {
        auto error = errno_error("chmod", errno, context);
        unlink(path.c_str());
        return error;
    }
    UnixListener out{std::move(fd), SocketFile{path, st.st_dev, st.st_ino}};
    // Kernel contract: listen makes the bound socket accept connections.
    if (::listen(out.fd.get(), backlog) != 0) {
        auto error = errno_error("listen", errno, context);
        out.file.remove();
        return error;
    }
    return out;
}

}  // namespace swapvisor::vmm::control
