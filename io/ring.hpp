// Ring: one io_uring (through liburing, which only ring.cpp includes). A Ring is
// owned and used by exactly one thread (io/README.md#threads): threads that need
// I/O own their own Ring. run() submits a whole batch with one io_uring_submit per
// ring-full (then per half ring freed) and reaps every completion before it returns;
// buffers inside the registered arena use the fixed-buffer opcodes.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

#include "io/result.hpp"
#include "io/strong_int.hpp"

namespace swapvisor::io {

using DevOffset = StrongInt<struct DevOffsetTag, std::uint64_t>;

enum class IoKind : std::uint8_t { read, write, fsync };

// One operation of a batch. `result` is filled at completion: bytes moved (== len on
// success; short transfers are resubmitted for the remainder) or -errno.
struct IoOp {
    IoKind kind = IoKind::read;
    int fd = -1;                 // borrowed
    DevOffset offset{};
    std::byte* buf = nullptr;
    std::uint32_t len = 0;
    int result = 0;
};

class Ring {
public:
    static Result<Ring> create(unsigned entries);
    Ring(Ring&&) noexcept;
    Ring& operator=(Ring&&) noexcept;
    ~Ring();

    // Register one arena of buffers (a single iovec). Ops whose buffer lies wholly
    // inside it are issued as READ_FIXED / WRITE_FIXED.
    Result<void> register_arena(std::span<std::byte> arena);

    // Submit every op (batched; at most `entries` in flight), wait for all of them.
    // Per-op failures land in op.result; the Result fails only if the ring itself does.
    Result<void> run(std::span<IoOp> ops);

    unsigned entries() const;
    std::uint64_t submit_calls() const;  // io_uring_submit calls so far (batching check)
    std::uint64_t fixed_ops() const;     // SQEs issued as READ_FIXED / WRITE_FIXED so far

private:
    struct Impl;
    explicit Ring(std::unique_ptr<Impl>);
    std::unique_ptr<Impl> impl_;
};

}  // namespace swapvisor::io
