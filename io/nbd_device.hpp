// NbdDevice: a swap backend that is a remote NBD export (nbd://HOST[:PORT]/EXPORT,
// nbd+unix:///EXPORT?socket=PATH, and their TLS forms nbds://, nbds+unix://), reached
// through libnbd's asynchronous API only. This header and nbd_device.cpp are the only
// users of libnbd (io/README.md#nbd).
// Invariants: no call blocks on the network without a deadline: submit(), flush() and
// open() drive the connection with poll(2) until every op has completed or the
// deadline (NbdConfig::timeout) passes; then the connection is closed (libnbd can no
// longer touch the caller's buffers) and every unfinished op gets -ETIMEDOUT. An op
// never reports success unless the server acknowledged all of it, so a read either
// fills its whole buffer or carries -errno. Connections are pooled: a submit checks
// one out for the whole batch (several threads, several connections; one only when
// the server does not promise multi-connection consistency).
// Name resolution and connecting never happen on the threads that submit (they may
// be confined by seccomp, vmm/sandbox): open() resolves a TCP host name once, on the
// (unconfined) thread that calls it, and starts the device's connector thread, which
// makes every later connection to the addresses kept; a submit that needs a new
// connection asks the connector and waits, within its deadline. A failed connect arms
// a bounded, doubling backoff during which a batch that finds no connection at all
// fails its writes at once with -EIO instead of waiting for the network; a batch that
// finds every connection busy waits for one. A read that fails because its connection
// broke, timed out or could not be had is retried on another (or a reconnected)
// connection until NbdConfig::read_retry_window has passed (read_retries()).
#pragma once

#include <chrono>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "io/block_device.hpp"

namespace swapvisor::io {

// Whether `text` is an NBD URI this device accepts (by scheme: nbd, nbds, nbd+unix,
// nbds+unix; case-insensitive). Anything else is a local path.
bool is_nbd_uri(std::string_view text);

// The one spelling of an NBD URI used as the device's pool name and identity:
// lower-case scheme and host, the default port 10809 dropped, the export path always
// starting with '/', a Unix socket path made absolute and normalised, query
// parameters sorted. Errc::not_file_or_block-free errors: EINVAL with the reason for
// a URI that cannot be an NBD export (missing socket= for +unix, a host for +unix,
// no host for TCP, a bad port).
Result<std::string> normalise_nbd_uri(std::string_view uri);

struct NbdConfig {
    // Longest wait of one batch (submit / flush) and of one connect.
    std::chrono::milliseconds timeout{5000};
    // Most connections the device opens to the server (one per concurrent submit).
    unsigned max_connections = 4;
    // Reconnect backoff after a failed connect: doubles from min to max.
    std::chrono::milliseconds min_backoff{100};
    std::chrono::milliseconds max_backoff{5000};
    // How long, from the start of a submit, a read that failed for want of a working
    // connection (broken, timed out, none to be had) is tried again before its error
    // stands. A server's own error reply is never retried: the server has answered.
    // The window is also per outage: once connects have failed for a whole window
    // without one success, reads fail at their first try (as writes do) until the
    // server answers again, so a dead server costs one window, not one per page.
    std::chrono::milliseconds read_retry_window{10000};
};

class NbdDevice final : public BlockDevice {
public:
    // Connect (bounded by config.timeout), read the export's size and block size
    // constraints. Call it on an unconfined thread (the control thread, main): it
    // resolves a TCP host name and starts the connector thread, which inherits the
    // caller's seccomp filter. Refused: a read-only export (EROFS), an export smaller than one
    // block (Errc::too_small), a minimum block size above 4 KiB (Errc::misaligned).
    // Errors name the URI.
    static Result<std::unique_ptr<NbdDevice>> open(std::string_view uri, NbdConfig config = {});
    ~NbdDevice() override;
    NbdDevice(const NbdDevice&) = delete;
    NbdDevice& operator=(const NbdDevice&) = delete;

    // The normalised URI (normalise_nbd_uri): also what makes two names the same device.
    const std::string& path() const override { return uri_; }
    std::uint64_t size_bytes() const override { return size_; }
    std::uint32_t logical_block_size() const override { return block_size_; }
    // Every op is issued at once (ops larger than the server's maximum request are
    // split) and the batch is driven to completion on the calling thread; `ring` is
    // not used (the socket is polled beside it). Per-op results: bytes, or -errno from
    // the server (e.g. -EIO), -EIO when the connection broke or cannot be made now,
    // -ETIMEDOUT when the deadline passed. Fails only on a refused batch
    // (check_block_io), like every BlockDevice.
    Result<void> submit(Ring& ring, std::span<BlockIo> ios) override;
    // NBD_CMD_FLUSH (a no-op success when the server cannot flush: it then promises
    // nothing more than write completion).
    Result<void> flush(Ring& ring) override;

    // Successful connects after the first (tests and stats).
    std::uint64_t reconnects() const;
    // Reads issued again after a connection failure (per op and retry).
    std::uint64_t read_retries() const override;
    // Where connections go: the URI itself (Unix sockets; TLS, whose certificate is
    // checked against the host name), or one URI per address the host name had at
    // open(), tried in order.
    const std::vector<std::string>& connect_targets() const { return targets_; }

private:
    class Connection;  // one libnbd handle (nbd_device.cpp)
    // How a connection comes back from a batch.
    enum class ConnState : bool { broken, healthy };
    // What a batch does in the backoff when no connection exists at all: fail at
    // once (first tries: a write can go elsewhere), or wait for the backoff to end
    // and ask for a connection then (retried reads: the page is only here).
    enum class OnBackoff : bool { fail, wait };
    // How one try of a batch went: `connection_failed` when its connection broke,
    // timed out or could not be had (the failed ops may succeed on another one).
    struct Attempt {
        bool connection_failed = false;
    };
    using Clock = std::chrono::steady_clock;

    NbdDevice(std::string uri, NbdConfig config);
    // One try of a batch on one connection, before `deadline`.
    Attempt run_batch(std::span<BlockIo> ios, Clock::time_point deadline, OnBackoff on_backoff);
    // A ready connection for one batch before `deadline`: an idle one, a new one
    // from the connector (within max_connections_ and outside the backoff), or a wait
    // for one to come back.
    Result<std::unique_ptr<Connection>> checkout(Clock::time_point deadline, OnBackoff on_backoff);
    // A connection to the first of `targets` that takes one, starting at `first` (the
    // one that worked last), all before `deadline`; with the index of the one that did.
    static Result<std::pair<std::unique_ptr<Connection>, std::size_t>> connect_any(
        const std::vector<std::string>& targets, std::size_t first, Clock::time_point deadline);
    // The connector thread: makes the connections checkout asks for.
    void connector_loop();
    // Healthy connections go back to the pool; a broken one is closed together with
    // every idle one (they share its server, and likely its fate).
    void checkin(std::unique_ptr<Connection> conn, ConnState state);

    std::string uri_;
    std::vector<std::string> targets_;  // const after open()
    NbdConfig config_;
    std::uint64_t size_ = 0;
    std::uint32_t block_size_ = 512;
    std::uint64_t max_request_ = 0;  // largest single request the server takes
    bool can_flush_ = false;

    mutable std::mutex mutex_;  // Protects: idle_, open_count_, max_connections_,
                                // retry_after_, backoff_, connects_, connect_wanted_,
                                // connect_error_, unreachable_since_, first_target_,
                                // stopping_. Order: leaf; never held across network
                                // I/O or a libnbd call.
    std::condition_variable returned_;  // checkin, and the connector when it is done
    std::condition_variable wanted_;    // checkout asks the connector, or stop
    std::vector<std::unique_ptr<Connection>> idle_;
    unsigned open_count_ = 0;  // idle + checked out + asked of the connector
    unsigned max_connections_ = 1;
    Clock::time_point retry_after_{};
    std::chrono::milliseconds backoff_{0};
    std::uint64_t connects_ = 0;
    unsigned connect_wanted_ = 0;        // connections asked of the connector, not yet made
    std::string connect_error_;           // the last one's message
    Clock::time_point unreachable_since_{};  // first failed connect since the last success ({}: none)
    std::size_t first_target_ = 0;        // the target that connected last
    bool stopping_ = false;
    std::atomic<std::uint64_t> read_retries_{0};
    std::thread connector_;  // last: started after everything it uses, joined first
};

}  // namespace swapvisor::io
