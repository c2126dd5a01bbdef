// MetricsServer: see metrics_server.hpp. One request per connection (the reply says
// `Connection: close`): a scraper opens a connection per scrape anyway, and it keeps
// the server a handful of handlers. Exceptions (Beast, bad_alloc) are caught per
// connection; none crosses a completion handler.
//
// Bounded clients (README.md#bounded-clients): at most kMaxConnections at once (at
// the cap the oldest is closed: a scrape takes milliseconds, so the oldest is the
// one that sends nothing); a request must arrive within kRequestTimeout and the
// reply go out within it too; accept errors (EMFILE) back off instead of spinning;
// a Unix socket's peers must be the server's uid or root (SO_PEERCRED).
#include "vmm/control/io_thread.hpp"
#include "vmm/control/metrics_server.hpp"
#include "vmm/control/unix_listener.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <functional>
#include <list>
#include <optional>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace swapvisor::vmm::control {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Tcp = asio::ip::tcp;
using Local = asio::local::stream_protocol;

constexpr int kListenBacklog = 64;
constexpr std::size_t kMaxConnections = 32;
constexpr auto kRequestTimeout = std::chrono::seconds(5);
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);
constexpr std::size_t kMaxRequestBytes = 16 * 1024;  // a GET with headers; more is not a scrape
using Clock = std::chrono::steady_clock;

// What the server keeps of one open connection: enough to close it (when it times
// out, or to make room) from the io thread. `done` once it is closed or answered;
// its handlers then do nothing more.
struct Client {
    std::function<void()> close;
    bool done = false;
};
using ClientRef = std::shared_ptr<Client>;

struct MetricsServer::Impl {
    guestmem::HostMemory& host;
    const DeviceStats& devices;
    const VmControl* vms;
    const SwapoffBoard* swapoffs;

    asio::io_context io{1};
    std::optional<Tcp::acceptor> tcp;
    std::optional<Local::acceptor> local;
    SocketFile socket_file;  // Unix socket only: removed at stop() if still ours
    std::thread thread;
    bool started = false;
    // io thread only: the open connections, oldest first.
    std::list<ClientRef> clients;
    asio::steady_timer accept_backoff{io};
    Clock::time_point last_accept_warning{};

    // A Unix socket's peer must be us or root, as on the control socket.
    static bool peer_allowed(Local::socket& socket) {
        ucred cred{};
        socklen_t len = sizeof cred;
        // Kernel contract: SO_PEERCRED on a connected AF_UNIX stream socket returns the
        // credentials the peer had at connect().
        if (getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return false;
        if (cred.uid == geteuid() || cred.uid == 0) return true;
        spdlog::warn("metrics: refusing uid {} (pid {}): only uid {} or root may connect", cred.uid, cred.pid, geteuid());
        return false;
    }
    static bool peer_allowed(Tcp::socket&) { return true; }  // loopback only; the counters are not secret per uid

    template <class Socket>
    void serve(std::shared_ptr<Socket> socket) {
        if (clients.size() >= kMaxConnections) {
            ClientRef oldest = clients.front();  // it has sent nothing for the longest
            clients.pop_front();
            oldest->done = true;
            oldest->close();
        }
        // One deadline for the whole exchange: read the request, write the reply.
        auto timer = std::make_shared<asio::steady_timer>(io, kRequestTimeout);
        auto client = std::make_shared<Client>(Client{[socket, timer] {
            beast::error_code ignored;
            socket->close(ignored);  // the pending read or write ends with operation_aborted
            timer->cancel();
        }});
        clients.push_back(client);
        timer->async_wait([socket](beast::error_code ec) {
            if (ec) return;  // cancelled: the exchange ended in time
            beast::error_code ignored;
            socket->close(ignored);
        });
        auto finish = [this, client, timer] {
            if (client->done) return;
            client->done = true;
            timer->cancel();
            clients.remove(client);
        };
        auto buffer = std::make_shared<beast::flat_buffer>(kMaxRequestBytes);
        auto request = std::make_shared<http::request<http::string_body>>();
        http::async_read(*socket, *buffer, *request,
                         [this, socket, buffer, request, finish, client](beast::error_code ec, std::size_t) {
                             if (client->done) return;  // closed to make room
                             if (ec) {
                                 finish();  // the client went away, sent garbage or timed out: close
                                 return;
                             }
                             auto reply = std::make_shared<http::response<http::string_body>>();
                             reply->version(request->version());
                             reply->keep_alive(false);
                             if (request->method() != http::verb::get && request->method() != http::verb::head) {
                                 reply->result(http::status::method_not_allowed);
                                 reply->set(http::field::allow, "GET, HEAD");
                             } else if (request->target() != "/metrics") {
                                 reply->result(http::status::not_found);
                                 reply->body() = "only /metrics is served here\n";
                             } else {
                                 try {
                                     reply->result(http::status::ok);
                                     reply->set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
                                     reply->body() = prometheus_text(host, devices, vms, swapoffs);
                                 } catch (const std::exception& e) {
                                     reply->result(http::status::internal_server_error);
                                     reply->body() = fmt::format("internal error: {}\n", e.what());
                                 }
                             }
                             reply->prepare_payload();
                             http::async_write(*socket, *reply,
                                               [socket, reply, finish](beast::error_code, std::size_t) {
                                                   beast::error_code ignored;
                                                   socket->shutdown(Socket::shutdown_send, ignored);
                                                   finish();
                                               });
                         });
    }

    template <class Acceptor>
    void accept(Acceptor& acceptor) {
        acceptor.async_accept([this, &acceptor](beast::error_code ec, typename Acceptor::protocol_type::socket s) {
            if (!acceptor.is_open()) return;
            if (ec) {
                // EMFILE and friends: back off instead of spinning on a full fd table,
                // and say so once a second at most.
                if (auto now = Clock::now(); now - last_accept_warning >= std::chrono::seconds(1)) {
                    last_accept_warning = now;
                    spdlog::warn("metrics: accept failed: {} (retrying every {} ms)", ec.message(),
                                 kAcceptBackoff.count());
                }
                accept_backoff.expires_after(kAcceptBackoff);
                accept_backoff.async_wait([this, &acceptor](beast::error_code wait_ec) {
                    if (!wait_ec && acceptor.is_open()) accept(acceptor);
                });
                return;
            }
            if (peer_allowed(s)) serve(std::make_shared<typename Acceptor::protocol_type::socket>(std::move(s)));
            accept(acceptor);
        });
    }
};

namespace {

bool is_socket_path(const std::string& address) {
    return address.find('/') != std::string::npos || address.find(':') == std::string::npos;
}

// "127.0.0.1:PORT" (or another loopback address) as an endpoint, or EINVAL naming
// what is wrong.
Result<Tcp::endpoint> loopback_endpoint(const std::string& address) {
    auto colon = address.rfind(':');
    if (colon == std::string::npos) return errno_error("--metrics: expected 127.0.0.1:PORT or a socket path", EINVAL, address);
    beast::error_code ec;
    std::string host = address.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    auto ip = asio::ip::make_address(host, ec);
    if (ec || !ip.is_loopback())
        return errno_error("--metrics: only a loopback address is served (127.0.0.1:PORT)", EINVAL, address);
    unsigned port = 0;
    std::string_view digits = std::string_view(address).substr(colon + 1);
    auto [ptr, perr] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (digits.empty() || perr != std::errc() || ptr != digits.data() + digits.size() || port > 65535)
        return errno_error("--metrics: bad port (0..65535)", EINVAL, address);
    return Tcp::endpoint(ip, static_cast<std::uint16_t>(port));
}

}  // namespace

Result<void> MetricsServer::check_address(const std::string& address) {
    if (is_socket_path(address)) return check_unix_socket_path(address, "metrics socket");
    SWV_TRY(loopback_endpoint(address));
    return {};
}

MetricsServer::MetricsServer(guestmem::HostMemory& host, const DeviceStats& devices, const VmControl* vms,
                             const SwapoffBoard* swapoffs)
    : impl_(new Impl{host, devices, vms, swapoffs}) {}

MetricsServer::~MetricsServer() { stop(); }

std::uint16_t MetricsServer::port() const {
    if (!impl_->tcp) return 0;
    beast::error_code ec;
    auto endpoint = impl_->tcp->local_endpoint(ec);
    return ec ? 0 : endpoint.port();
}

Result<void> MetricsServer::start(const std::string& address) {
    Impl& s = *impl_;
    if (s.started) return errno_error("MetricsServer::start: already started", EALREADY);
    beast::error_code ec;
    std::string shown = address;
    if (is_socket_path(address)) {
        UnixListener listener = SWV_TRY(listen_unix(address, "metrics socket", kListenBacklog));
        s.local.emplace(s.io);
        s.local->assign(Local(), listener.fd.get(), ec);
        if (ec) {
            listener.file.remove();
            return errno_error("metrics socket: asio assign", ec.value(), address);
        }
        listener.fd.release();  // the acceptor owns it now
        s.socket_file = std::move(listener.file);
        s.accept(*s.local);
    } else {
        Tcp::endpoint endpoint = SWV_TRY(loopback_endpoint(address));
        s.tcp.emplace(s.io);
        s.tcp->open(endpoint.protocol(), ec);
        if (!ec) s.tcp->set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec) s.tcp->bind(endpoint, ec);
        if (!ec) s.tcp->listen(asio::socket_base::max_listen_connections, ec);
        if (ec) {
            s.tcp.reset();
            return errno_error("metrics: listen", ec.value(), address);
        }
        // Port 0 asks for any free port: say which one it got.
        auto bound = s.tcp->local_endpoint(ec);
        if (!ec) shown = bound.address().is_v6() ? fmt::format("[{}]:{}", bound.address().to_string(), bound.port())
                                                 : fmt::format("{}:{}", bound.address().to_string(), bound.port());
        s.accept(*s.tcp);
    }
    s.started = true;
    s.thread = run_io_thread(s.io, "metrics");
    spdlog::info("metrics: serving /metrics on {}", shown);
    return {};
}

void MetricsServer::stop() {
    Impl& s = *impl_;
    if (!s.started) return;
    s.started = false;
    // Stop the loop first (a client that never sends would keep it running), then,
    // with no handler left running, close the listeners here: connecting afterwards
    // is refused. Open connections close when the io_context is destroyed.
    s.io.stop();
    s.thread.join();
    beast::error_code ignored;
    if (s.tcp) s.tcp->close(ignored);
    if (s.local) s.local->close(ignored);
    // The closed listener is gone already, so nobody can connect through the file.
    s.socket_file.remove();
}

}  // namespace swapvisor::vmm::control
