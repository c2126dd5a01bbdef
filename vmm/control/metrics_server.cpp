// MetricsServer: see metrics_server.hpp. One request per connection (the reply says
// `Connection: close`): a scraper opens a connection per scrape anyway, and it keeps
// the server a handful of handlers. Exceptions (Beast, bad_alloc) are caught per
// connection; none crosses a completion handler.
#include "vmm/control/io_thread.hpp"
#include "vmm/control/metrics_server.hpp"
#include "vmm/control/unix_listener.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
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

    template <class Socket>
    void serve(std::shared_ptr<Socket> socket) {
        auto buffer = std::make_shared<beast::flat_buffer>();
        auto request = std::make_shared<http::request<http::string_body>>();
        http::async_read(*socket, *buffer, *request,
                         [this, socket, buffer, request](beast::error_code ec, std::size_t) {
                             if (ec) return;  // the client went away or sent garbage: just close
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
                             http::async_write(*socket, *reply, [socket, reply](beast::error_code, std::size_t) {
                                 beast::error_code ignored;
                                 socket->shutdown(Socket::shutdown_send, ignored);
                             });
                         });
    }

    template <class Acceptor>
    void accept(Acceptor& acceptor) {
        acceptor.async_accept([this, &acceptor](beast::error_code ec, typename Acceptor::protocol_type::socket s) {
            if (!acceptor.is_open()) return;
            if (!ec) serve(std::make_shared<typename Acceptor::protocol_type::socket>(std::move(s)));
            accept(acceptor);
        });
    }
};

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
    if (address.find('/') != std::string::npos || address.find(':') == std::string::npos) {
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
        auto colon = address.rfind(':');
        if (colon == std::string::npos) return errno_error("--metrics: expected 127.0.0.1:PORT or a socket path", EINVAL, address);
        auto ip = asio::ip::make_address(address.substr(0, colon), ec);
        if (ec || !ip.is_loopback())
            return errno_error("--metrics: only a loopback address is served (127.0.0.1:PORT)", EINVAL, address);
        unsigned port = 0;
        std::string_view digits = std::string_view(address).substr(colon + 1);
        auto [ptr, perr] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
        if (perr != std::errc() || ptr != digits.data() + digits.size() || port > 65535)
            return errno_error("--metrics: bad port", EINVAL, address);
        s.tcp.emplace(s.io);
        Tcp::endpoint endpoint(ip, static_cast<std::uint16_t>(port));
        s.tcp->open(endpoint.protocol(), ec);
        if (!ec) s.tcp->set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec) s.tcp->bind(endpoint, ec);
        if (!ec) s.tcp->listen(asio::socket_base::max_listen_connections, ec);
        if (ec) return errno_error("metrics: listen", ec.value(), address);
        s.accept(*s.tcp);
    }
    s.started = true;
    s.thread = run_io_thread(s.io, "metrics");
    spdlog::info("metrics: serving /metrics on {}", address);
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
