// Fault injection for the swap path: FaultPlan is a thread-safe list of rules, and
// FaultyBlockDevice is a BlockDevice decorator that consults the plan before passing
// each batch to the real device it wraps (normally a FileBlockDevice on a temp file,
// so everything that is not faulted is real O_DIRECT io_uring I/O). This is an
// ordinary part of the library, not a test-only build: a daemon can run with a plan
// too.
//
// Rule semantics (io/README.md#fault-injection):
//   - a rule matches an op by kind (read / write / flush / any) and, optionally, by
//     an offset range [begin, end) that the op overlaps (ranged rules never match a
//     flush, which has no offset);
//   - the first `skip` matches pass untouched, then the action applies `times` times
//     (forever when unset); hits(id) counts applications, matches(id) every match;
//   - rules are tried in the order they were added. delay and gate run and let the
//     walk continue; eio, enospc and short_io end it (first one wins);
//   - reorder is a batch rule: a batch with at least one matching op is issued one op
//     at a time, last op first. It counts once per batch.
// Actions: eio / enospc — the op is not issued, result -EIO / -ENOSPC. short_io — only
// the first `bytes` (rounded down to the block size) are really transferred, then the
// op reports -EIO, so the device holds a torn write that callers must not trust.
// delay — sleep before the op is issued. gate — call a hook synchronously before the
// op is issued (tests block in it on a latch to hold an I/O while they look around).
// Threads: a FaultPlan may be edited from any thread while devices use it; hooks and
// sleeps run outside its lock, on the submitting thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <variant>
#include <vector>

#include "io/block_device.hpp"

namespace swapvisor::io {

enum class FaultMatch : std::uint8_t { read, write, flush, any };

namespace fault {
struct Eio {};
struct Enospc {};
struct ShortIo {
    std::uint32_t bytes = 0;
};
struct Delay {
    std::chrono::microseconds duration{0};
};
struct Gate {
    std::function<void(const BlockIo&)> hook;
};
struct Reorder {};
}  // namespace fault

using FaultAction = std::variant<fault::Eio, fault::Enospc, fault::ShortIo, fault::Delay, fault::Gate, fault::Reorder>;

struct FaultRule {
    FaultMatch match = FaultMatch::any;
    std::optional<DevOffset> begin;      // ops overlapping [begin, end); unset = unbounded
    std::optional<DevOffset> end;
    std::uint64_t skip = 0;              // matches that pass before the action applies
    std::optional<std::uint64_t> times;  // applications; unset = forever
    FaultAction action = fault::Eio{};
};

using FaultRuleId = StrongInt<struct FaultRuleIdTag, std::uint32_t>;

class FaultPlan {
public:
    FaultRuleId add(FaultRule rule);
    // A removed rule stops matching; its counters stay readable.
    void remove(FaultRuleId id);
    void clear();
    std::uint64_t hits(FaultRuleId id) const;     // times the action was applied
    std::uint64_t matches(FaultRuleId id) const;  // times it matched, skipped ones included

    // What the plan does to one op; counts matches and hits.
    struct Decision {
        std::vector<FaultAction> before;     // delays and gates, in rule order
        std::optional<FaultAction> outcome;  // Eio, Enospc or ShortIo
    };
    Decision decide(const BlockIo& io);
    // Whether a reorder rule applies to this batch; counts it.
    bool decide_reorder(std::span<const BlockIo> batch);

private:
    struct Entry {
        FaultRuleId id;
        FaultRule rule;
        bool active = true;
        std::uint64_t matched = 0;
        std::uint64_t hits = 0;
    };
    static bool matches_op(const FaultRule& rule, const BlockIo& io);
    // Counts a match; true when the action applies to it.
    static bool take(Entry& e);
    const Entry* find(FaultRuleId id) const;

    // Protects: entries_, next_id_; Order: leaf (hooks and sleeps run outside it).
    mutable std::mutex mu_;
    std::vector<Entry> entries_;
    std::uint32_t next_id_ = 1;
};

class FaultyBlockDevice final : public BlockDevice {
public:
    FaultyBlockDevice(std::unique_ptr<BlockDevice> inner, std::shared_ptr<FaultPlan> plan);

    const std::string& path() const override { return inner_->path(); }
    std::uint64_t size_bytes() const override { return inner_->size_bytes(); }
    std::uint32_t logical_block_size() const override { return inner_->logical_block_size(); }
    // Same contract as the inner device (alignment and range are checked first, then
    // the plan applies per op). Ring failures of the inner device pass through.
    Result<void> submit(Ring& ring, std::span<BlockIo> ios) override;
    // A flush is an op of kind fsync for the plan: eio / enospc / short_io fail it
    // without issuing; delay and gate run first.
    Result<void> flush(Ring& ring) override;
    std::optional<DeviceIdentity> identity() const override { return inner_->identity(); }
    std::uint64_t read_retries() const override { return inner_->read_retries(); }

    BlockDevice& inner() { return *inner_; }
    FaultPlan& plan() { return *plan_; }

private:
    std::unique_ptr<BlockDevice> inner_;
    std::shared_ptr<FaultPlan> plan_;
};

}  // namespace swapvisor::io
