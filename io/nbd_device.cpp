// NbdDevice: swap slots on a remote NBD export through libnbd's asynchronous API
// (io/README.md#nbd). Every network wait is a poll(2) on the handle's fd with a
// deadline; libnbd runs its completion callbacks on the thread that drives the
// handle (inside nbd_aio_notify_* / nbd_aio_p*), so the per-op bookkeeping of a batch
// lives on the submitting thread's stack and needs no lock. A Connection is used by
// one thread at a time (it is checked out of the pool for a whole batch); a batch
// that times out or loses its connection closes that handle before submit returns,
// so no late reply can ever land in a buffer the caller has taken back. New
// connections are made only by the device's connector thread (started by open(), on
// the unconfined thread that calls it), so the submitting threads, which may be
// confined by seccomp, never resolve a name or open a socket.
#include "io/nbd_device.hpp"

#include <libnbd.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <filesystem>
#include <optional>
#include <system_error>
#include <utility>

namespace swapvisor::io {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint16_t kDefaultNbdPort = 10809;
// libnbd refuses requests above 64 MiB; stay well below when the server is silent.
constexpr std::uint64_t kDefaultMaxRequest = 32ull << 20;
constexpr std::uint32_t kMinLogicalBlock = 512;
constexpr std::uint32_t kMaxLogicalBlock = 4096;

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

struct Scheme {
    std::string_view name;
    bool unix_socket;
};
constexpr Scheme kSchemes[] = {{"nbd", false}, {"nbds", false}, {"nbd+unix", true}, {"nbds+unix", true}};

const Scheme* scheme_of(std::string_view text) {
    std::size_t sep = text.find("://");
    if (sep == std::string_view::npos) return nullptr;
    std::string scheme = lower(text.substr(0, sep));
    for (const Scheme& s : kSchemes) {
        if (s.name == scheme) return &s;
    }
    return nullptr;
}

// The last libnbd error of this thread as an Error (EIO when libnbd set no errno).
std::unexpected<Error> nbd_error(const char* op, const std::string& uri) {
    int err = nbd_get_errno();
    const char* msg = nbd_get_error();
    return errno_error(op, err != 0 ? err : EIO, uri + (msg != nullptr ? std::string(": ") + msg : std::string()));
}

// An op's errno as the per-op result callers branch on: connection-level failures
// become EIO (the data is simply not there), timeouts stay ETIMEDOUT, the server's
// own errors (EIO, ENOSPC, ...) pass through.
int op_errno(int err) {
    switch (err) {
        case ETIMEDOUT: return ETIMEDOUT;
        case ENOTCONN: case ECONNRESET: case ECONNREFUSED: case EPIPE: case ESHUTDOWN: case ENOENT:
            return EIO;
        default: return err != 0 ? err : EIO;
    }
}

// Drive `h` until done() holds or the deadline passes. 0 when done, ETIMEDOUT, or
// EIO when the connection is dead with work outstanding.
template <class Done>
int drive(nbd_handle* h, Clock::time_point deadline, Done done) {
    for (;;) {
        if (done()) return 0;
        if (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1) return EIO;
        int fd = nbd_aio_get_fd(h);
        if (fd < 0) return EIO;
        unsigned dir = nbd_aio_get_direction(h);
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) return ETIMEDOUT;
        pollfd pfd{fd, static_cast<short>(((dir & LIBNBD_AIO_DIRECTION_READ) != 0 ? POLLIN : 0) |
                                          ((dir & LIBNBD_AIO_DIRECTION_WRITE) != 0 ? POLLOUT : 0)),
                   0};
        // Kernel contract: poll waits at most `left` ms for the socket to become
        // readable / writable (POLLHUP / POLLERR are always reported); EINTR retries.
        int n = ::poll(&pfd, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 1000)));
        if (n < 0) {
            if (errno == EINTR) continue;
            return EIO;
        }
        if (n == 0) continue;
        // A failed notify moves the handle to the dead state and completes every
        // in-flight command with an error: the loop sees that on its next turn.
        if ((pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0) nbd_aio_notify_read(h);
        if ((pfd.revents & POLLOUT) != 0 && nbd_aio_is_dead(h) != 1) nbd_aio_notify_write(h);
    }
}

// One NBD request of a batch (an op, or a piece of an op above the server's maximum).
struct Chunk {
    std::size_t op = 0;
    bool done = false;
    int error = 0;
};

int on_chunk_complete(void* user_data, int* error) {
    auto* chunk = static_cast<Chunk*>(user_data);
    chunk->done = true;
    chunk->error = *error;
    return 1;  // retire the command: nothing asks for it later
}

// A normalised TCP URI cut at its host: SCHEME://[USER@] HOST [:PORT] /EXPORT[?QUERY].
struct TcpUri {
    std::string prefix;  // "nbd://user@"
    std::string host;    // without IPv6 brackets
    std::string port;    // "10809" when the URI names none
    std::string rest;    // "/export?query"
};

std::optional<TcpUri> split_tcp_uri(const std::string& uri) {
    const Scheme* scheme = scheme_of(uri);
    if (scheme == nullptr || scheme->unix_socket) return std::nullopt;
    const std::size_t after = uri.find("://") + 3;
    const std::size_t rest_at = std::min(uri.find('/', after), uri.size());
    std::string_view authority(uri.data() + after, rest_at - after);
    TcpUri out;
    out.prefix = uri.substr(0, after);
    if (std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
        out.prefix += authority.substr(0, at + 1);
        authority.remove_prefix(at + 1);
    }
    std::string_view port;
    if (authority.starts_with('[')) {
        std::size_t close = authority.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        out.host = authority.substr(1, close - 1);
        if (close + 1 < authority.size() && authority[close + 1] == ':') port = authority.substr(close + 2);
    } else {
        std::size_t colon = authority.rfind(':');
        out.host = authority.substr(0, colon);
        if (colon != std::string_view::npos) port = authority.substr(colon + 1);
    }
    out.port = port.empty() ? std::to_string(kDefaultNbdPort) : std::string(port);
    out.rest = uri.substr(rest_at);
    return out;
}

struct AddrInfoFree {
    void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};

// Where the connector connects (NbdDevice::connect_targets): resolved here, once, on
// the thread that calls open(). A TCP host name becomes one URI per address, in
// getaddrinfo's order (what libnbd itself would try), so a reconnect never resolves
// a name again: no DNS (sendmmsg), no address sorting (a netlink socket and bind),
// no blocking lookup, and always the server that was named at swapon. Kept as
// named: Unix sockets, numeric hosts, and TLS (libnbd checks the certificate against
// the host name in the URI, so it must stay a name; the connector resolves it).
Result<std::vector<std::string>> connect_targets_of(const std::string& uri) {
    std::optional<TcpUri> tcp = split_tcp_uri(uri);
    if (!tcp) return std::vector<std::string>{uri};
    if (scheme_of(uri)->name == "nbds") return std::vector<std::string>{uri};
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    addrinfo* raw = nullptr;
    // Kernel contract (glibc): with AI_NUMERICHOST getaddrinfo only parses the
    // string; it consults no file, DNS or socket.
    if (::getaddrinfo(tcp->host.c_str(), tcp->port.c_str(), &hints, &raw) == 0) {
        ::freeaddrinfo(raw);
        return std::vector<std::string>{uri};
    }
    hints.ai_flags = 0;
    raw = nullptr;
    if (int rc = ::getaddrinfo(tcp->host.c_str(), tcp->port.c_str(), &hints, &raw); rc != 0) {
        return errno_error("NBD swapon: cannot resolve the host name", rc == EAI_SYSTEM ? errno : EHOSTUNREACH,
                           uri + ": " + ::gai_strerror(rc));
    }
    std::unique_ptr<addrinfo, AddrInfoFree> list(raw);
    std::vector<std::string> out;
    for (const addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
        char host[NI_MAXHOST];
        if (::getnameinfo(ai->ai_addr, ai->ai_addrlen, host, sizeof host, nullptr, 0, NI_NUMERICHOST) != 0) continue;
        std::string_view numeric(host);
        if (numeric.find('%') != std::string_view::npos) continue;  // a scoped link-local address: no URI form
        std::string target = tcp->prefix + (ai->ai_family == AF_INET6 ? "[" + std::string(numeric) + "]" : std::string(numeric)) +
                             ":" + tcp->port + tcp->rest;
        if (std::find(out.begin(), out.end(), target) == out.end()) out.push_back(std::move(target));
    }
    if (out.empty()) return errno_error("NBD swapon: the host name has no usable address", EHOSTUNREACH, uri);
    return out;
}

}  // namespace

bool is_nbd_uri(std::string_view text) { return scheme_of(text) != nullptr; }

Result<std::string> normalise_nbd_uri(std::string_view uri) {
    auto bad = [&](const char* why) { return errno_error(why, EINVAL, "NBD URI " + std::string(uri)); };
    const Scheme* scheme = scheme_of(uri);
    if (scheme == nullptr) return bad("not an NBD URI (nbd://, nbds://, nbd+unix://, nbds+unix://)");
    std::string_view rest = uri.substr(uri.find("://") + 3);
    std::size_t query_at = rest.find('?');
    std::string_view query = query_at == std::string_view::npos ? std::string_view{} : rest.substr(query_at + 1);
    rest = rest.substr(0, query_at);
    std::size_t path_at = rest.find('/');
    std::string_view authority = rest.substr(0, path_at);
    std::string export_path = path_at == std::string_view::npos ? "/" : std::string(rest.substr(path_at));

    std::vector<std::string> params;
    bool have_socket = false;
    for (std::size_t start = 0; start <= query.size() && !query.empty();) {
        std::size_t amp = query.find('&', start);
        std::string_view param = query.substr(start, amp == std::string_view::npos ? amp : amp - start);
        if (!param.empty()) {
            if (param.starts_with("socket=")) {
                if (have_socket) return bad("socket= given twice");
                std::string_view sock = param.substr(7);
                if (sock.empty()) return bad("socket= is empty");
                std::error_code ec;
                std::filesystem::path abs = std::filesystem::absolute(std::string(sock), ec);
                params.push_back("socket=" + (ec ? std::string(sock) : abs.lexically_normal().string()));
                have_socket = true;
            } else {
                params.emplace_back(param);
            }
        }
        if (amp == std::string_view::npos) break;
        start = amp + 1;
    }
    std::sort(params.begin(), params.end());

    std::string host;
    if (scheme->unix_socket) {
        if (!authority.empty()) return bad("an nbd+unix:// URI has no host (nbd+unix:///EXPORT?socket=PATH)");
        if (!have_socket) return bad("an nbd+unix:// URI needs ?socket=PATH");
    } else {
        if (have_socket) return bad("socket= belongs to nbd+unix:// URIs");
        std::string_view user;
        if (std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
            user = authority.substr(0, at + 1);
            authority = authority.substr(at + 1);
        }
        std::string_view hostpart = authority;
        std::string_view port;
        std::size_t colon = authority.rfind(':');
        std::size_t bracket = authority.rfind(']');
        if (colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket)) {
            hostpart = authority.substr(0, colon);
            port = authority.substr(colon + 1);
        }
        if (hostpart.empty()) return bad("an nbd:// URI needs a host (nbd://HOST[:PORT]/EXPORT)");
        host = std::string(user) + lower(hostpart);
        if (!port.empty()) {
            unsigned value = 0;
            auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
            if (ec != std::errc() || ptr != port.data() + port.size() || value == 0 || value > 65535)
                return bad("the port is not a number in 1..65535");
            if (value != kDefaultNbdPort) host += ":" + std::to_string(value);
        }
    }
    std::string out = std::string(scheme->name) + "://" + host + export_path;
    for (std::size_t i = 0; i < params.size(); ++i) out += (i == 0 ? "?" : "&") + params[i];
    return out;
}

// One libnbd handle, connected and ready, or dead.
class NbdDevice::Connection {
public:
    // Connect asynchronously and wait for the handshake until `deadline`.
    static Result<std::unique_ptr<Connection>> connect(const std::string& uri, Clock::time_point deadline) {
        std::unique_ptr<Connection> conn(new Connection(nbd_create()));
        nbd_handle* h = conn->get();
        if (h == nullptr) return nbd_error("NBD connect: nbd_create", uri);
        if (nbd_set_request_structured_replies(h, true) == -1) return nbd_error("NBD connect: structured replies", uri);
        // The URI comes from the operator (command line, or the control socket, which
        // admits only its owner's uid): it may name TLS certificate / PSK files.
        if (nbd_set_uri_allow_local_file(h, true) == -1) return nbd_error("NBD connect: allow TLS files", uri);
        if (nbd_aio_connect_uri(h, uri.c_str()) == -1) return nbd_error("NBD connect", uri);
        int err = drive(h, deadline, [h] { return nbd_aio_is_ready(h) == 1; });
        if (err == ETIMEDOUT) return errno_error("NBD connect: no handshake before the deadline", ETIMEDOUT, uri);
        if (err != 0) return nbd_error("NBD connect", uri);
        return conn;
    }
    nbd_handle* get() const { return handle_.get(); }
    // An idle connection whose socket is readable was closed by the server (NBD
    // servers send nothing unsolicited): using it would fail a batch for nothing.
    bool closed_while_idle() const {
        int fd = nbd_aio_get_fd(handle_.get());
        if (fd < 0 || nbd_aio_is_ready(handle_.get()) != 1) return true;
        pollfd pfd{fd, POLLIN, 0};
        // Kernel contract: poll with timeout 0 only reports the socket's state
        // (readable: data or EOF; POLLHUP / POLLERR always reported); it never waits.
        return ::poll(&pfd, 1, 0) != 0;
    }
    bool ready() const { return nbd_aio_is_ready(handle_.get()) == 1 && nbd_aio_in_flight(handle_.get()) == 0; }

private:
    struct Closer {
        void operator()(nbd_handle* h) const { nbd_close(h); }
    };
    explicit Connection(nbd_handle* h) : handle_(h) {}
    std::unique_ptr<nbd_handle, Closer> handle_;
};

Result<std::pair<std::unique_ptr<NbdDevice::Connection>, std::size_t>> NbdDevice::connect_any(
    const std::vector<std::string>& targets, std::size_t first, Clock::time_point deadline) {
    std::optional<Error> last;
    for (std::size_t k = 0; k < targets.size(); ++k) {
        const std::size_t i = (first + k) % targets.size();
        auto conn = Connection::connect(targets[i], deadline);
        if (conn) return std::pair{std::move(*conn), i};
        last = conn.error();
        if (Clock::now() >= deadline) break;
    }
    return std::unexpected(*last);
}

NbdDevice::NbdDevice(std::string uri, NbdConfig config)
    : uri_(std::move(uri)), config_(config), max_connections_(std::max(1u, config.max_connections)),
      backoff_(config.min_backoff) {}

NbdDevice::~NbdDevice() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wanted_.notify_all();
    // A connect in progress ends by its own deadline (config_.timeout).
    if (connector_.joinable()) connector_.join();
}

Result<std::unique_ptr<NbdDevice>> NbdDevice::open(std::string_view uri, NbdConfig config) {
    std::string name = SWV_TRY(normalise_nbd_uri(uri));
    std::unique_ptr<NbdDevice> dev(new NbdDevice(name, config));
    dev->targets_ = SWV_TRY(connect_targets_of(name));
    auto made = connect_any(dev->targets_, 0, Clock::now() + config.timeout);
    // The targets may be addresses: the error also names the URI the operator gave.
    if (!made && dev->targets_.front() != name) return std::unexpected(std::move(made.error()).with_context(name));
    auto [conn, target] = SWV_TRY(std::move(made));
    nbd_handle* h = conn->get();
    auto context = "device " + name;
    if (nbd_is_read_only(h) == 1) return errno_error("NBD swapon: the export is read-only", EROFS, context);
    std::int64_t size = nbd_get_size(h);
    if (size < 0) return nbd_error("NBD swapon: export size", name);
    std::int64_t min_block = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
    std::int64_t max_block = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    std::uint32_t block = kMinLogicalBlock;
    if (min_block > 0) block = static_cast<std::uint32_t>(std::max<std::int64_t>(min_block, kMinLogicalBlock));
    if (block > kMaxLogicalBlock || (block & (block - 1)) != 0)
        return make_error(Errc::misaligned, "NBD swapon: the server's minimum block size is not a power of two <= 4 KiB",
                          context);
    std::uint64_t max_request = kDefaultMaxRequest;
    if (max_block > 0) max_request = std::min<std::uint64_t>(max_request, static_cast<std::uint64_t>(max_block));
    max_request -= max_request % kMaxLogicalBlock;  // whole pages per request
    if (max_request == 0) return make_error(Errc::misaligned, "NBD swapon: the server's maximum request is below 4 KiB", context);
    dev->block_size_ = block;
    dev->max_request_ = max_request;
    dev->size_ = static_cast<std::uint64_t>(size) - static_cast<std::uint64_t>(size) % block;
    if (dev->size_ == 0) return make_error(Errc::too_small, "NBD swapon: the export is empty", context);
    dev->can_flush_ = nbd_can_flush(h) == 1;
    // Without multi-conn the protocol does not promise that one connection sees what
    // another wrote: then every batch shares a single connection.
    if (nbd_can_multi_conn(h) != 1) dev->max_connections_ = 1;
    dev->open_count_ = 1;
    dev->connects_ = 1;
    dev->first_target_ = target;
    dev->idle_.push_back(std::move(conn));
    // Started last, on this (unconfined) thread: it inherits no seccomp filter.
    NbdDevice* self = dev.get();
    try {
        dev->connector_ = std::thread([self] { self->connector_loop(); });
    } catch (const std::system_error& e) {  // no thread to be had (EAGAIN): an error, not a throw
        return errno_error("NBD swapon: starting the connector thread", e.code().value(), context);
    }
    return dev;
}

std::uint64_t NbdDevice::reconnects() const {
    std::lock_guard lock(mutex_);
    return connects_ == 0 ? 0 : connects_ - 1;
}

std::uint64_t NbdDevice::read_retries() const {
    // Relaxed: a statistic; pairs with the relaxed increment in submit, orders nothing.
    return read_retries_.load(std::memory_order_relaxed);
}

void NbdDevice::connector_loop() {
    std::unique_lock lock(mutex_);
    for (;;) {
        wanted_.wait(lock, [this] { return stopping_ || connect_wanted_ > 0; });
        if (stopping_) return;
        const std::size_t first = first_target_;
        lock.unlock();
        auto made = connect_any(targets_, first, Clock::now() + config_.timeout);
        lock.lock();
        if (made) {
            --connect_wanted_;
            ++connects_;
            first_target_ = made->second;
            backoff_ = config_.min_backoff;
            connect_error_.clear();
            unreachable_since_ = {};
            idle_.push_back(std::move(made->first));
        } else {
            // The server cannot be reached now: every connection asked for fails with
            // this one, and none is tried again before the backoff ends.
            open_count_ -= connect_wanted_;
            connect_wanted_ = 0;
            retry_after_ = Clock::now() + backoff_;
            backoff_ = std::min(backoff_ * 2, config_.max_backoff);
            connect_error_ = made.error().message();
            if (unreachable_since_ == Clock::time_point{}) unreachable_since_ = Clock::now();
        }
        returned_.notify_all();
    }
}

Result<std::unique_ptr<NbdDevice::Connection>> NbdDevice::checkout(Clock::time_point deadline, OnBackoff on_backoff) {
    std::unique_lock lock(mutex_);
    for (;;) {
        if (!idle_.empty()) {
            auto conn = std::move(idle_.back());
            idle_.pop_back();
            lock.unlock();
            if (!conn->closed_while_idle()) return conn;
            conn.reset();  // nbd_close outside the lock
            lock.lock();
            --open_count_;
            continue;
        }
        const auto now = Clock::now();
        const bool backing_off = now < retry_after_;
        if (!backing_off && open_count_ < max_connections_) {
            // Counted as open from now: no other batch asks for the same slot.
            ++open_count_;
            ++connect_wanted_;
            wanted_.notify_one();
        } else if (backing_off && open_count_ == 0 && on_backoff == OnBackoff::fail) {
            // No connection exists and none may be made yet: fail without waiting
            // for the network. (With connections open but busy, wait for one.)
            return errno_error("NBD: server unreachable, reconnect backing off", EIO,
                               connect_error_.empty() ? uri_ : connect_error_);
        }
        if (now >= deadline) {
            return errno_error("NBD: no connection before the deadline", ETIMEDOUT,
                               connect_error_.empty() ? uri_ : connect_error_);
        }
        auto wake = deadline;
        if (backing_off && open_count_ < max_connections_) wake = std::min(wake, retry_after_);
        returned_.wait_until(lock, wake);
    }
}

void NbdDevice::checkin(std::unique_ptr<Connection> conn, ConnState state) {
    std::vector<std::unique_ptr<Connection>> closing;
    {
        std::lock_guard lock(mutex_);
        if (state == ConnState::healthy) {
            idle_.push_back(std::move(conn));
        } else {
            --open_count_;
            open_count_ -= static_cast<unsigned>(idle_.size());
            closing = std::move(idle_);
            idle_.clear();
        }
    }
    returned_.notify_all();
    // nbd_close outside the lock (it shuts the socket down).
    conn.reset();
    closing.clear();
}

Result<void> NbdDevice::submit(Ring& /*ring*/, std::span<BlockIo> ios) {
    SWV_TRY(check_block_io(*this, ios));
    if (ios.empty()) return {};
    const Clock::time_point start = Clock::now();
    Attempt attempt = run_batch(ios, start + config_.timeout, OnBackoff::fail);
    if (!attempt.connection_failed) return {};
    // The window runs from this submit's start, or from the start of the outage if
    // that was earlier: a server that stays away costs one window, not one per batch.
    Clock::time_point retry_until = start + config_.read_retry_window;
    {
        std::lock_guard lock(mutex_);
        if (unreachable_since_ != Clock::time_point{})
            retry_until = std::min(retry_until, unreachable_since_ + config_.read_retry_window);
    }
    // Reads whose connection failed: the bytes are likely intact on the server, and
    // a read that gives up loses a guest page. Again, on another or a new connection,
    // until the window closes. Writes are not retried here: the pool places a failed
    // write elsewhere.
    std::vector<std::size_t> again;
    std::vector<BlockIo> retry;
    while (attempt.connection_failed) {
        again.clear();
        for (std::size_t i = 0; i < ios.size(); ++i)
            if (ios[i].kind == IoKind::read && ios[i].result < 0) again.push_back(i);
        const Clock::time_point now = Clock::now();
        if (again.empty() || now >= retry_until) break;
        // Relaxed: a statistic; pairs with the relaxed load in read_retries().
        read_retries_.fetch_add(again.size(), std::memory_order_relaxed);
        retry.clear();
        for (std::size_t i : again) retry.push_back(ios[i]);
        attempt = run_batch(retry, std::min(now + config_.timeout, retry_until), OnBackoff::wait);
        for (std::size_t k = 0; k < again.size(); ++k) ios[again[k]].result = retry[k].result;
    }
    return {};
}

NbdDevice::Attempt NbdDevice::run_batch(std::span<BlockIo> ios, Clock::time_point deadline, OnBackoff on_backoff) {
    // Declared before the connection: a handle closed on the way out may still run
    // completion callbacks into these.
    std::vector<Chunk> chunks;
    std::vector<std::uint32_t> chunks_of(ios.size(), 0);
    for (std::size_t i = 0; i < ios.size(); ++i) {
        std::uint64_t len = ios[i].kind == IoKind::fsync ? 0 : ios[i].buf.size();
        std::uint64_t n = len == 0 ? 1 : (len + max_request_ - 1) / max_request_;
        for (std::uint64_t k = 0; k < n; ++k) chunks.push_back(Chunk{i});
        chunks_of[i] = static_cast<std::uint32_t>(n);
    }

    auto conn = checkout(deadline, on_backoff);
    if (!conn) {
        int err = op_errno(conn.error().code.value());
        for (BlockIo& io : ios) io.result = -err;
        return Attempt{.connection_failed = true};
    }
    nbd_handle* h = (*conn)->get();

    // Issue everything: libnbd queues what the socket cannot take yet.
    std::size_t c = 0;
    for (std::size_t i = 0; i < ios.size(); ++i) {
        BlockIo& io = ios[i];
        std::uint64_t done_bytes = 0;
        for (std::uint32_t k = 0; k < chunks_of[i]; ++k, ++c) {
            Chunk& chunk = chunks[c];
            nbd_completion_callback cb{.callback = on_chunk_complete, .user_data = &chunk, .free = nullptr};
            std::uint64_t len = std::min<std::uint64_t>(io.buf.size() - done_bytes, max_request_);
            std::uint64_t offset = io.offset.value() + done_bytes;
            void* buf = io.buf.data() + done_bytes;
            std::int64_t cookie = -1;
            if (io.kind != IoKind::fsync && len == 0) {
                chunk.done = true;  // nothing to move (NBD refuses empty requests)
                continue;
            }
            switch (io.kind) {
                case IoKind::read: cookie = nbd_aio_pread(h, buf, len, offset, cb, 0); break;
                case IoKind::write: cookie = nbd_aio_pwrite(h, buf, len, offset, cb, 0); break;
                case IoKind::fsync:
                    if (can_flush_) {
                        cookie = nbd_aio_flush(h, cb, 0);
                    } else {
                        chunk.done = true;
                        cookie = 0;
                    }
                    break;
            }
            if (cookie == -1 && !chunk.done) {
                int err = nbd_get_errno();
                chunk.done = true;
                chunk.error = err != 0 ? err : EIO;
            }
            done_bytes += len;
        }
    }

    int drive_err = drive(h, deadline, [&] {
        return std::all_of(chunks.begin(), chunks.end(), [](const Chunk& ch) { return ch.done; });
    });
    const ConnState state = drive_err == 0 && (*conn)->ready() ? ConnState::healthy : ConnState::broken;
    // A broken or late connection is closed here, before any result is published:
    // libnbd cannot write into a buffer after its handle is gone.
    checkin(std::move(*conn), state);

    std::vector<int> errors(ios.size(), 0);
    for (const Chunk& ch : chunks) {
        int err = ch.done ? ch.error : (drive_err != 0 ? drive_err : EIO);
        if (err != 0 && errors[ch.op] == 0) errors[ch.op] = op_errno(err);
    }
    for (std::size_t i = 0; i < ios.size(); ++i) {
        ios[i].result = errors[i] != 0 ? -errors[i]
                                       : (ios[i].kind == IoKind::fsync ? 0 : static_cast<int>(ios[i].buf.size()));
    }
    return Attempt{.connection_failed = state == ConnState::broken};
}

Result<void> NbdDevice::flush(Ring& ring) {
    BlockIo op{.kind = IoKind::fsync};
    SWV_TRY(submit(ring, std::span(&op, 1)));
    return with_context(io_status(op, "NBD flush"), "device " + uri_);
}

}  // namespace swapvisor::io
