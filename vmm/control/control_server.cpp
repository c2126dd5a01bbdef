// ControlServer: see control_server.hpp. The only file of the project that includes
// Boost.Asio (STYLE.md §1).
//
// Threads and ownership (README.md#threads):
//   - the control thread runs io_context: it owns the acceptor, every Connection and
//     its buffers, and runs the quick commands (status, stats, set-limit,
//     set-budget, vm-list, set-balloon), which only read counters or store a value;
//   - one worker thread per long command (swapon, swapoff, vm-create, vm-stop,
//     vm-pause, vm-resume, vm-remove); it never touches a Connection, it posts lines
//     to the control thread instead;
// What each command does is commands.cpp (no socket there); a Connection frames
// lines, checks its peer, audits, and hands each parsed command to run_command, here
// or on a worker (runs_on_worker).
//   - the thread that calls start() / stop() owns the Impl's lifecycle.
// Bounded clients (README.md#bounded-clients): at most max_connections; at the cap
// the client idle the longest makes room; idle and half-sent-line clients time out;
// accept errors (EMFILE) back off. Every mutating request is audited
// (README.md#audit-log): who (SO_PEERCRED uid and pid), what, result, duration.
// Exceptions (Asio, nlohmann, bad_alloc) are caught per request and per worker and
// become error replies; none crosses a completion handler.
#include "vmm/control/io_thread.hpp"
#include "vmm/control/control_server.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>

#include <boost/asio.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "io/unique_fd.hpp"
#include "vmm/control/commands.hpp"
#include "vmm/control/unix_listener.hpp"

namespace swapvisor::vmm::control {

namespace asio = boost::asio;
using Local = asio::local::stream_protocol;
using nlohmann::json;

namespace {

constexpr int kListenBacklog = 64;
constexpr std::size_t kReadChunk = 4096;
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);
using Clock = std::chrono::steady_clock;

// One mutating request on its way: who sent it, what it asks, since when. Logged
// once, with the reply's result, by whoever sends that reply.
struct AuditEntry {
    uid_t uid = 0;
    pid_t pid = 0;
    std::string what;
    Clock::time_point start;
};

void audit_log(const AuditEntry& a, const json& reply) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - a.start).count();
    auto ok = reply.find("ok");
    if (ok != reply.end() && ok->is_boolean() && ok->get<bool>()) {
        spdlog::info("audit: uid={} pid={} {} -> ok ({} ms)", a.uid, a.pid, a.what, ms);
        return;
    }
    std::string code = "unknown", message;
    if (auto e = reply.find("error"); e != reply.end() && e->is_object()) {
        code = e->value("code", code);
        message = e->value("message", message);
    }
    spdlog::warn("audit: uid={} pid={} {} -> {} ({} ms): {}", a.uid, a.pid, a.what, code, ms, message);
}

// A long-running command: its thread and whether it has finished (then joinable
// without waiting).
struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
};

}  // namespace

class Connection;

struct ControlServer::Impl {
    Impl(guestmem::HostMemory& h, const DeviceStats& d, ControlServerConfig c)
        : host(h), devices(d), config(std::move(c)),
          commands{.host = h, .devices = d, .vms = config.vms, .no_vms_reason = config.no_vms_reason,
                   .swapoffs = config.swapoffs, .ring_entries = config.ring_entries,
                   .progress_interval = config.progress_interval} {}

    void accept();
    void reject(Local::socket& socket, std::string_view why);
    // At the connection cap: close the client idle the longest; false if none is.
    bool evict_idle();
    // Run fn on a new worker thread; false if stopping or too many run already.
    bool spawn_worker(std::function<void()> fn);
    void join_workers();
    // Post one line to a connection from any thread.
    void post_line(const std::shared_ptr<Connection>& conn, std::string line);
    // Post a worker's final reply: audited, and the connection may time out again.
    void post_reply(const std::shared_ptr<Connection>& conn, json reply, std::optional<AuditEntry> audit);

    guestmem::HostMemory& host;
    const DeviceStats& devices;
    const ControlServerConfig config;
    const CommandContext commands;  // what the commands act on (commands.hpp)

    // Declared first: destroyed last, after every socket and timer bound to it.
    asio::io_context io{1};
    Local::acceptor acceptor{io};
    asio::steady_timer accept_backoff{io};
    Clock::time_point last_accept_warning{};  // accept errors are logged once a second at most
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
    // Control thread only (and the destructor, after the thread is joined).
    std::unordered_set<std::shared_ptr<Connection>> connections;

    // Protects: workers, stopping; Order: leaf (never held while posting to io or
    // joining a worker that has not finished).
    std::mutex workers_mutex;
    std::list<Worker> workers;
    bool stopping = false;

    // Lifecycle: the start() / stop() caller only.
    std::thread thread;
    bool started = false;
    bool stopped = false;
    SocketFile socket_file;  // removed at stop() if still ours
};

// One client. Lives in Impl::connections while open; handlers and workers keep it
// alive through shared_ptrs after close(), when every send is a no-op.
class Connection : public std::enable_shared_from_this<Connection> {
public:
    Connection(ControlServer::Impl& server, Local::socket socket)
        : server_(server), socket_(std::move(socket)), deadline_(server.io) {}

    void start() {
        socklen_t len = sizeof peer_;
        // Kernel contract: SO_PEERCRED on a connected AF_UNIX stream socket returns the
        // credentials the peer had at connect(); they cannot be changed afterwards.
        if (getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &peer_, &len) != 0) {
            send_line(to_line(error_reply(nullptr, ReplyCode::permission, "cannot read the peer's credentials")));
            close_after_flush();
            return;
        }
        uid_t self = geteuid();
        if (peer_.uid != self && peer_.uid != 0) {
            spdlog::warn("control: refusing uid {} (pid {}): only uid {} or root may connect", peer_.uid, peer_.pid, self);
            send_line(to_line(error_reply(nullptr, ReplyCode::permission,
                                          fmt::format("uid {} may not use this socket", peer_.uid))));
            close_after_flush();
            return;
        }
        last_active_ = Clock::now();
        arm_deadline(server_.config.idle_timeout);
        read();
    }

    // Idle: no command of it running, nothing queued to it, no line half sent.
    bool idle() const { return !closed_ && !closing_ && running_ == 0 && out_.empty() && pending_.empty(); }
    Clock::time_point last_active() const { return last_active_; }

    // A worker's reply arrives (control thread): it is sent, and the client's idle
    // clock starts again.
    void finish_command(std::string line) {
        if (running_ > 0) --running_;
        last_active_ = Clock::now();
        send_line(std::move(line));
    }

    // Closed to make room for a newer client (Impl::evict_idle).
    void evict() {
        spdlog::info("control: closing the client of pid {} (idle longest) to make room for a new one", peer_.pid);
        send(error_reply(nullptr, ReplyCode::busy, "closed: idle while the server was at its connection limit"));
        close_after_flush();
    }

    // Queue one protocol line; drops the connection if its queue would overflow.
    void send_line(std::string line) {
        if (closed_ || closing_) return;
        if (out_bytes_ + line.size() > server_.config.max_output_bytes) {
            spdlog::warn("control: dropping a client that does not read its replies ({} bytes queued)", out_bytes_);
            close();
            return;
        }
        out_bytes_ += line.size();
        out_.push_back(std::move(line));
        if (!writing_) write();
    }
    // A reply (or any line) from the control thread; a reply to the mutating
    // request being handled is audited.
    void send(const json& object) {
        if (pending_audit_ && object.contains("ok")) {
            audit_log(*pending_audit_, object);
            pending_audit_.reset();
        }
        send_line(to_line(object));
    }

    void close() {
        if (closed_) return;
        closed_ = true;
        boost::system::error_code ignored;
        socket_.close(ignored);  // cancels the pending read / write
        deadline_.cancel();
        out_.clear();
        out_bytes_ = 0;
        server_.connections.erase(shared_from_this());
    }

private:
    void close_after_flush() {
        closing_ = true;
        if (!writing_) close();
    }

    // One timer per client: at its expiry the client is closed if it has been idle
    // for idle_timeout, or has had a line half sent for read_timeout; a client with
    // a command running or replies queued is never timed out (its command ends, or
    // the output bound drops it).
    void arm_deadline(Clock::duration after) {
        deadline_.expires_after(after);
        deadline_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (!ec) self->on_deadline();
        });
    }

    void on_deadline() {
        if (closed_ || closing_) return;
        const auto now = Clock::now();
        const bool partial = !pending_.empty();
        const auto limit = partial ? server_.config.read_timeout : server_.config.idle_timeout;
        const auto since = partial ? line_started_ : last_active_;
        if (running_ > 0 || writing_ || now - since < limit) {
            arm_deadline(running_ > 0 || writing_ ? limit : limit - (now - since));
            return;
        }
        const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(limit).count();
        spdlog::info("control: closing the client of pid {}: {} for {} s", peer_.pid,
                     partial ? "a request line left unfinished" : "idle", seconds);
        send(error_reply(nullptr, ReplyCode::timeout,
                         partial ? fmt::format("request line not finished within {} s: closed", seconds)
                                 : fmt::format("idle for {} s: closed", seconds)));
        close_after_flush();
    }

    // Kernel contract: poll on an AF_UNIX stream socket reports POLLHUP once the peer
    // has closed (both directions shut), not after a mere shutdown(SHUT_WR) (then
    // only POLLRDHUP): a client that half-closes still gets its reply.
    bool peer_gone() {
        pollfd p{socket_.native_handle(), POLLIN | POLLRDHUP, 0};
        return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)) != 0;
    }

    void read() {
        socket_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](boost::system::error_code ec,
                                                                                std::size_t n) { self->on_read(ec, n); });
    }

    void on_read(boost::system::error_code ec, std::size_t n) {
        if (closed_) return;
        if (ec) {
            // EOF (possibly mid-line: a truncated request is dropped unanswered) or a
            // reset. Replies still queued are abandoned: nobody will read them.
            close();
            return;
        }
        if (pending_.empty()) line_started_ = Clock::now();
        last_active_ = Clock::now();
        pending_.append(buf_.data(), n);
        handle_lines();
        if (!closed_ && !closing_) read();
    }

    void handle_lines() {
        std::size_t start = 0;
        while (!closed_ && !closing_) {
            std::size_t nl = pending_.find('\n', scanned_);
            if (nl == std::string::npos) break;
            if (nl - start > server_.config.max_line_bytes) {
                too_large();
                return;
            }
            handle_line(std::string_view(pending_).substr(start, nl - start));
            start = nl + 1;
            scanned_ = start;
        }
        if (closed_ || closing_) return;
        pending_.erase(0, start);
        scanned_ = pending_.size();
        if (start != 0 && !pending_.empty()) line_started_ = Clock::now();
        if (pending_.size() > server_.config.max_line_bytes) too_large();
    }

    void too_large() {
        send(error_reply(nullptr, ReplyCode::too_large,
                         fmt::format("request line longer than {} bytes", server_.config.max_line_bytes)));
        pending_.clear();
        close_after_flush();
    }

    void handle_line(std::string_view line) {
        auto request = parse_request(line);
        if (!request) {
            send(error_reply(request.error().id, request.error().code, request.error().message));
            return;
        }
        if (is_mutating(request->command)) {
            AuditEntry audit{peer_.uid, peer_.pid, describe(request->command), Clock::now()};
            if (peer_gone()) {
                // The client gave up (ctl --timeout) before the server got to it: the
                // request is cancelled, not run behind its back.
                spdlog::warn("audit: uid={} pid={} {} -> cancelled: the client closed the connection before it ran",
                             audit.uid, audit.pid, audit.what);
                close();
                return;
            }
            pending_audit_ = std::move(audit);
        }
        const CommandContext& commands = server_.commands;
        try {
            if (!runs_on_worker(commands, request->command)) {
                send(run_command(commands, request->id, request->command, nullptr));
            } else {
                spawn(request->id, [&commands, &server = server_, conn = shared_from_this(), id = request->id,
                                    cmd = request->command] {
                    return run_command(commands, id, cmd,
                                       [&](const json& line) { server.post_line(conn, to_line(line)); });
                });
            }
        } catch (const std::exception& e) {
            // A worker thread that cannot be started (EAGAIN), bad_alloc: this
            // request fails, the connection, the server and the VMs carry on.
            send(error_reply(request->id, ReplyCode::io_error, fmt::format("internal error: {}", e.what())));
        }
        pending_audit_.reset();  // answered here, or handed to a worker by spawn()
    }

    // Run body on a worker; its reply goes back through post_reply (audited there).
    void spawn(const json& id, std::function<json()> body) {
        std::optional<AuditEntry> audit = std::exchange(pending_audit_, std::nullopt);
        auto guarded = [&server = server_, conn = shared_from_this(), id, body = std::move(body), audit]() mutable {
            json reply;
            try {
                reply = body();
            } catch (const std::exception& e) {
                reply = error_reply(id, ReplyCode::io_error, fmt::format("internal error: {}", e.what()));
            }
            server.post_reply(conn, std::move(reply), std::move(audit));
        };
        ++running_;
        bool started = false;
        try {
            started = server_.spawn_worker(std::move(guarded));
        } catch (...) {
            // No thread (EAGAIN): the caller answers io_error, audited with this entry.
            --running_;
            pending_audit_ = std::move(audit);
            throw;
        }
        if (!started) {
            --running_;
            pending_audit_ = std::move(audit);
            send(error_reply(id, ReplyCode::busy, "too many long commands (swapon, swapoff, vm-*) running, or shutting down"));
        }
    }

    void write() {
        writing_ = true;
        asio::async_write(socket_, asio::buffer(out_.front()),
                          [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                              self->on_written(ec);
                          });
    }

    void on_written(boost::system::error_code ec) {
        writing_ = false;
        if (closed_) return;
        if (ec) {
            close();
            return;
        }
        out_bytes_ -= out_.front().size();
        out_.pop_front();
        if (!out_.empty()) write();
        else if (closing_) close();
    }

    ControlServer::Impl& server_;
    Local::socket socket_;
    asio::steady_timer deadline_;     // idle / read timeout (arm_deadline)
    ucred peer_{};                    // SO_PEERCRED at accept: who, for the audit log
    Clock::time_point last_active_;   // last byte received or reply of a command sent
    Clock::time_point line_started_;  // first byte of the line now in pending_
    unsigned running_ = 0;            // commands of this client on workers
    std::optional<AuditEntry> pending_audit_;  // the mutating request handle_line is running
    std::array<char, kReadChunk> buf_{};
    std::string pending_;      // bytes received, not yet a complete line
    std::size_t scanned_ = 0;  // pending_[0, scanned_) holds no '\n'
    std::deque<std::string> out_;
    std::size_t out_bytes_ = 0;
    bool writing_ = false;     // an async_write of out_.front() is in flight
    bool closing_ = false;     // no more reads or sends; close once out_ drains
    bool closed_ = false;
};

void ControlServer::Impl::accept() {
    acceptor.async_accept([this](boost::system::error_code ec, Local::socket socket) {
        if (!acceptor.is_open()) return;
        if (ec) {
            // EMFILE and friends: back off instead of spinning on a full fd table;
            // the warning goes out once a second at most, not once per retry.
            if (auto now = Clock::now(); now - last_accept_warning >= std::chrono::seconds(1)) {
                last_accept_warning = now;
                spdlog::warn("control: accept failed: {} (retrying every {} ms)", ec.message(), kAcceptBackoff.count());
            }
            accept_backoff.expires_after(kAcceptBackoff);
            accept_backoff.async_wait([this](boost::system::error_code wait_ec) {
                if (!wait_ec && acceptor.is_open()) accept();
            });
            return;
        }
        if (connections.size() >= config.max_connections && !evict_idle()) {
            reject(socket, "too many control connections, none of them idle");
        } else {
            auto conn = std::make_shared<Connection>(*this, std::move(socket));
            connections.insert(conn);
            conn->start();
        }
        accept();
    });
}

void ControlServer::Impl::reject(Local::socket& socket, std::string_view why) {
    std::string line = to_line(error_reply(nullptr, ReplyCode::busy, why));
    // Kernel contract: a non-blocking send into a fresh socket's empty buffer takes a
    // short line whole or fails; either way the socket is closed right after.
    [[maybe_unused]] ssize_t n = ::send(socket.native_handle(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    boost::system::error_code ignored;
    socket.close(ignored);
}

bool ControlServer::Impl::evict_idle() {
    std::shared_ptr<Connection> oldest;
    for (const auto& conn : connections)
        if (conn->idle() && (!oldest || conn->last_active() < oldest->last_active())) oldest = conn;
    if (!oldest) return false;
    oldest->evict();
    // Its close may wait for the notice to flush; the newcomer is admitted now either
    // way (one over the cap for that moment at most).
    return true;
}

bool ControlServer::Impl::spawn_worker(std::function<void()> fn) {
    std::lock_guard lock(workers_mutex);
    if (stopping) return false;
    for (auto it = workers.begin(); it != workers.end();) {
        if (it->done->load()) {
            it->thread.join();  // finished: returns at once
            it = workers.erase(it);
        } else {
            ++it;
        }
    }
    if (workers.size() >= config.max_workers) return false;
    auto done = std::make_shared<std::atomic<bool>>(false);
    workers.push_back(Worker{std::thread([fn = std::move(fn), done] {
                                 fn();
                                 done->store(true);
                             }),
                             done});
    return true;
}

void ControlServer::Impl::join_workers() {
    std::list<Worker> running;
    {
        std::lock_guard lock(workers_mutex);
        stopping = true;
        running.swap(workers);
    }
    for (Worker& w : running) w.thread.join();
}

void ControlServer::Impl::post_line(const std::shared_ptr<Connection>& conn, std::string line) {
    asio::post(io, [conn, line = std::move(line)]() mutable { conn->send_line(std::move(line)); });
}

void ControlServer::Impl::post_reply(const std::shared_ptr<Connection>& conn, json reply,
                                     std::optional<AuditEntry> audit) {
    if (audit) audit_log(*audit, reply);  // any thread: spdlog is thread-safe
    asio::post(io, [conn, line = to_line(reply)]() mutable { conn->finish_command(std::move(line)); });
}

ControlServer::ControlServer(guestmem::HostMemory& host, const DeviceStats& devices, ControlServerConfig config)
    : impl_(std::make_unique<Impl>(host, devices, std::move(config))) {}

ControlServer::~ControlServer() { stop(); }

const std::filesystem::path& ControlServer::socket_path() const { return impl_->config.socket_path; }

Result<void> ControlServer::start() {
    Impl& s = *impl_;
    if (s.started) return errno_error("ControlServer::start: already started", EALREADY);
    const std::string path = s.config.socket_path.string();
    UnixListener listener = SWV_TRY(listen_unix(path, "control socket", kListenBacklog));
    boost::system::error_code ec;
    s.acceptor.assign(Local(), listener.fd.get(), ec);
    if (ec) {
        listener.file.remove();
        return errno_error("control socket: asio assign", ec.value());
    }
    listener.fd.release();  // the acceptor owns it now
    s.socket_file = std::move(listener.file);
    s.started = true;

    s.work.emplace(s.io.get_executor());
    s.accept();
    s.thread = run_io_thread(s.io, "control");
    spdlog::info("control: listening on {}", path);
    return {};
}

void ControlServer::stop() {
    Impl& s = *impl_;
    if (!s.started || s.stopped) return;
    s.stopped = true;
    asio::post(s.io, [&s] {
        boost::system::error_code ignored;
        s.acceptor.close(ignored);
        s.accept_backoff.cancel();
        auto open = s.connections;  // close() erases from the set
        for (const auto& conn : open) conn->close();
    });
    // Workers post their last lines to the still running control thread (to closed
    // connections: dropped). A running swapoff is not interrupted: it finishes its
    // device, so the pool is never left half removed. A vm-stop waiting out its grace
    // period (up to minutes) is cut short first, or joining it would hold shutdown.
    if (s.config.vms != nullptr) s.config.vms->shut_down();
    s.join_workers();
    // With the acceptor and every socket closed, the pending handlers complete as
    // aborted and run() returns on its own once the work guard is gone.
    s.work.reset();
    s.thread.join();
    s.socket_file.remove();
}

}  // namespace swapvisor::vmm::control
