// Ring: the project's only io_uring (liburing) user. run() takes a batch of IoOps,
// prepares as many SQEs as the submission queue holds, submits them with ONE
// io_uring_submit_and_wait call, reaps completions and refills until every op has a
// final result. Invariants:
//   - at most entries() ops are in the kernel at once, so the completion queue
//     (2 x entries) can never overflow;
//   - run() returns only when no SQE of its batch is left in the kernel (the buffers
//     are borrowed from the caller), or aborts if the kernel stops answering;
//   - an op's result is len on success or -errno; a short transfer is resubmitted for
//     its remainder, and a transfer that makes no progress (0 bytes: EOF) is -EIO,
//     never a silently short buffer;
//   - once a submit fails with an error other than EINTR/EAGAIN/EBUSY, SQEs may still
//     sit in the ring that refer to a finished batch; the Ring is then "broken" and
//     every later run() fails with the same error.
// Threads (io/README.md#threads): one thread owns a Ring. With SINGLE_ISSUER the
// kernel enforces this; the ring starts disabled (R_DISABLED) so the thread that
// first calls run() becomes the owner, not the thread that created it.
#include "io/ring.hpp"

#include <liburing.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <optional>
#include <vector>

namespace swapvisor::io {

namespace {

// Temporary kernel hiccups that a retry resolves; past this many the op fails.
constexpr unsigned kMaxRetries = 16;
constexpr unsigned kMaxEntries = 4096;

}  // namespace

struct Ring::Impl {
    io_uring ring{};
    unsigned setup_flags = 0;
    bool enabled = true;
    std::uint64_t submit_calls = 0;
    std::uint64_t fixed_ops = 0;
    std::byte* arena = nullptr;
    std::size_t arena_len = 0;
    std::optional<Error> broken;
    bool set_up = false;

    ~Impl() {
        if (set_up) io_uring_queue_exit(&ring);
    }

    unsigned entries() const { return ring.sq.ring_entries; }

    bool in_arena(const std::byte* p, std::size_t n) const {
        if (arena == nullptr || p < arena) return false;
        auto off = static_cast<std::size_t>(p - arena);
        return off <= arena_len && n <= arena_len - off;
    }

    Result<void> enable() {
        if (enabled) return {};
        // Kernel contract: IORING_REGISTER_ENABLE_RINGS on an R_DISABLED ring makes
        // the calling task the SINGLE_ISSUER owner; only it may submit afterwards.
        // (liburing 2.3 declares io_uring_enable_rings but does not export it, so
        // this is the raw syscall; -1 and errno on failure.)
        if (::syscall(__NR_io_uring_register, ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0) != 0)
            return errno_error("io_uring enable rings");
        enabled = true;
        return {};
    }

    void prepare(io_uring_sqe* sqe, const IoOp& op, std::uint32_t done, std::size_t index) {
        std::byte* p = op.buf + done;
        unsigned n = op.len - done;
        std::uint64_t off = op.offset.value() + done;
        switch (op.kind) {
        case IoKind::read:
            if (in_arena(p, n)) {
                io_uring_prep_read_fixed(sqe, op.fd, p, n, off, 0);
                ++fixed_ops;
            } else {
                io_uring_prep_read(sqe, op.fd, p, n, off);
            }
            break;
        case IoKind::write:
            if (in_arena(p, n)) {
                io_uring_prep_write_fixed(sqe, op.fd, p, n, off, 0);
                ++fixed_ops;
            } else {
                io_uring_prep_write(sqe, op.fd, p, n, off);
            }
            break;
        case IoKind::fsync:
            io_uring_prep_fsync(sqe, op.fd, IORING_FSYNC_DATASYNC);
            break;
        }
        io_uring_sqe_set_data64(sqe, index);
    }
};

Ring::Ring(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Ring::Ring(Ring&&) noexcept = default;
Ring& Ring::operator=(Ring&&) noexcept = default;
Ring::~Ring() = default;

Result<Ring> Ring::create(unsigned entries) {
    if (entries == 0 || entries > kMaxEntries) return errno_error("io_uring setup", EINVAL);
    // Newest flags first; kernels that do not know a flag answer EINVAL.
    constexpr unsigned kFlagSets[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_R_DISABLED,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    auto impl = std::make_unique<Impl>();
    int rc = -EINVAL;
    for (unsigned flags : kFlagSets) {
        // Kernel contract: io_uring_setup returns -errno and leaves nothing to clean up
        // on failure; on success liburing owns the fd and both ring mappings.
        rc = io_uring_queue_init(entries, &impl->ring, flags);
        if (rc == 0) {
            impl->set_up = true;
            impl->setup_flags = flags;
            impl->enabled = (flags & IORING_SETUP_R_DISABLED) == 0;
            break;
        }
        if (rc != -EINVAL) break;
    }
    if (rc != 0) return errno_error("io_uring setup", -rc);
    return Ring(std::move(impl));
}

Result<void> Ring::register_arena(std::span<std::byte> arena) {
    SWV_ASSERT(impl_, "use of a moved-from Ring");
    Impl& r = *impl_;
    if (r.arena != nullptr) {
        // Kernel contract: unregistering unpins the pages of the previous arena; no
        // op can be in flight here because run() drains before it returns.
        int rc = io_uring_unregister_buffers(&r.ring);
        if (rc < 0) return errno_error("io_uring unregister buffers", -rc);
        r.arena = nullptr;
        r.arena_len = 0;
    }
    if (arena.empty()) return {};
    iovec iov{arena.data(), arena.size()};
    // Kernel contract: the pages are pinned until unregistered or the ring closes;
    // fixed-buffer SQEs name them by index 0 and must lie wholly inside.
    int rc = io_uring_register_buffers(&r.ring, &iov, 1);
    if (rc < 0) return errno_error("io_uring register buffers", -rc);
    r.arena = arena.data();
    r.arena_len = arena.size();
    return {};
}

Result<void> Ring::run(std::span<IoOp> ops) {
    SWV_ASSERT(impl_, "use of a moved-from Ring");
    Impl& r = *impl_;
    if (r.broken) return std::unexpected(*r.broken);
    SWV_TRY(r.enable());

    const unsigned entries = r.entries();
    std::vector<std::uint32_t> done(ops.size(), 0);
    std::vector<std::uint8_t> retries(ops.size(), 0);
    std::vector<std::size_t> queue;  // op indices still to issue; requeues append
    queue.reserve(ops.size());
    for (std::size_t i = 0; i < ops.size(); ++i) {
        ops[i].result = 0;
        if (ops[i].kind != IoKind::fsync && ops[i].len == 0) continue;  // nothing to move
        ops[i].result = -ECANCELED;  // until its final completion (stays so if the ring breaks)
        queue.push_back(i);
    }

    std::size_t head = 0;
    unsigned in_flight = 0;  // prepared and not yet completed (in the SQ or the kernel)
    std::optional<Error> failure;

    auto reap = [&] {
        std::array<io_uring_cqe*, 64> cqes;
        unsigned n;
        while ((n = io_uring_peek_batch_cqe(&r.ring, cqes.data(), cqes.size())) > 0) {
            for (unsigned k = 0; k < n; ++k) {
                auto i = static_cast<std::size_t>(io_uring_cqe_get_data64(cqes[k]));
                int res = cqes[k]->res;
                SWV_ASSERT(i < ops.size(), "completion for an op outside the batch");
                --in_flight;
                IoOp& op = ops[i];
                if ((res == -EINTR || res == -EAGAIN) && retries[i] < kMaxRetries) {
                    ++retries[i];
                    queue.push_back(i);
                } else if (res < 0 || op.kind == IoKind::fsync) {
                    op.result = res;
                } else if (res == 0) {
                    op.result = -EIO;  // no progress: EOF inside the requested range
                } else {
                    done[i] += static_cast<std::uint32_t>(res);
                    if (done[i] >= op.len) op.result = static_cast<int>(op.len);
                    else queue.push_back(i);  // short transfer: issue the remainder
                }
            }
            io_uring_cq_advance(&r.ring, n);
        }
    };

    while ((!failure && head < queue.size()) || in_flight > 0) {
        while (!failure && head < queue.size() && in_flight < entries) {
            io_uring_sqe* sqe = io_uring_get_sqe(&r.ring);
            if (sqe == nullptr) break;
            std::size_t i = queue[head++];
            r.prepare(sqe, ops[i], done[i], i);
            ++in_flight;
        }
        unsigned ready = failure ? 0 : io_uring_sq_ready(&r.ring);
        // Wait until a refill can be worth a syscall: half a ring free (or room for
        // everything left), or every op done when nothing is left to issue. This keeps
        // the submit count near ops / (entries / 2) without starving the device.
        std::size_t remaining = queue.size() - head;
        unsigned want;
        if (remaining == 0 || failure) {
            want = in_flight;
        } else {
            auto room = static_cast<unsigned>(std::min<std::size_t>(remaining, std::max(1u, entries / 2)));
            want = in_flight + room > entries ? in_flight + room - entries : 0;
        }
        if (ready > 0 && !failure) {
            // Kernel contract: io_uring_enter submits the SQ entries, then waits for
            // `want` CQEs; it returns an error only if it submitted nothing.
            int rc = io_uring_submit_and_wait(&r.ring, want);
            ++r.submit_calls;
            if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
                // The SQEs stay in the ring and would run in a later batch: stop using
                // this ring; drain what the kernel already holds.
                failure = Error{std::error_code(-rc, std::system_category()), "io_uring submit"};
                r.broken = failure;
                in_flight -= io_uring_sq_ready(&r.ring);
            } else if (rc < 0 && rc != -EINTR && in_flight == ready) {
                // EAGAIN/EBUSY with nothing of ours in the kernel to wait for: the
                // kernel is short of memory. Retrying at once is all we can do.
                continue;
            }
        } else if (want > 0 || (ready == 0 && in_flight > 0)) {
            io_uring_cqe* cqe = nullptr;
            // Kernel contract: waits for at least `want` CQEs; EINTR just retries.
            int rc = io_uring_wait_cqe_nr(&r.ring, &cqe, std::max(1u, want));
            SWV_ASSERT(rc == 0 || rc == -EINTR || rc == -EAGAIN, "io_uring wait failed with ops in flight");
        }
        reap();
    }

    if (failure) return std::unexpected(*failure);
    return {};
}

unsigned Ring::entries() const {
    SWV_ASSERT(impl_, "use of a moved-from Ring");
    return impl_->entries();
}
std::uint64_t Ring::submit_calls() const { return impl_->submit_calls; }
std::uint64_t Ring::fixed_ops() const { return impl_->fixed_ops; }

}  // namespace swapvisor::io
