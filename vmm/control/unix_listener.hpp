// The listening Unix sockets of vmm/control (the control socket and the /metrics
// socket), created the one way both need (vmm/control/README.md#socket):
//  - a path that exists is replaced only when it is a stale socket (a connect gets
//    ECONNREFUSED: nobody listens); a socket a running process answers on is refused
//    (EADDRINUSE), and so is anything that is not a socket (EEXIST): starting a
//    second swapvisor on the same path never steals the first one's socket;
//  - the file is created mode 0600 whatever the umask, before listen();
//  - on the way out only the file this process created is removed (same dev/inode),
//    never one that a later server put at the path.
// No Asio here: the caller hands the fd to its acceptor.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "io/result.hpp"
#include "io/unique_fd.hpp"

namespace swapvisor::vmm::control {

// The socket file a listener created, to remove it at stop.
struct SocketFile {
    std::string path;
    dev_t dev = 0;
    ino_t ino = 0;
    // Unlink path if it still names this file (a missing or replaced file is left).
    void remove() const;
};

struct UnixListener {
    io::UniqueFd fd;  // bound and listening
    SocketFile file;
};

// Whether a missing directory of the socket is an error for the check below, or will
// be created before listen_unix (the default /run/swapvisor).
enum class MissingDir : bool { refuse, create };

// The checks of listen_unix that change nothing, for start-up before any file is
// created: an absolute path that fits sun_path, a writable directory, and nothing at
// the path but a stale socket (EADDRINUSE: a live server; EEXIST: not a socket).
Result<void> check_unix_socket_path(const std::string& path, std::string_view what,
                                    MissingDir missing_dir = MissingDir::refuse);

// Listen on the Unix socket `path` (rules above). `what` names the socket in errors
// ("metrics socket"): "socket in use by a running process (metrics socket /run/m.sock):
// Address already in use". ENAMETOOLONG for a path that does not fit sun_path.
Result<UnixListener> listen_unix(const std::string& path, std::string_view what, int backlog);

}  // namespace swapvisor::vmm::control
