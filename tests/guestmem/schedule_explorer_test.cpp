// The schedule explorer (issue #16 item 5): random schedules of every actor that can
// touch a guest page, run against the real page-state machine (Transitions) on
// FakePageKernel and a real SwapPool over two in-memory devices, checked after
// every step. Two explorers (two tests) share the actors and the checks: one VM with
// a pool of its own (restored half the time), and two VMs on one pool and one reclaim
// worker (below). One schedule = a fresh world, one to three pages a VM, and a seeded
// sequence of steps; each step is one actor's whole critical section, which is what
// the page lock makes atomic in the real VM (a thread holds one page lock at a time,
// and the writeback I/O holds none), so interleaving these steps covers the
// interleavings of the real threads.
//
// Actors (each on any page, or on any batch):
//   guest read / guest write  the vCPU: a fault (MISSING, MINOR, WP) resolved as the
//                             fault service does (resolve_fault), or, on a page
//                             mapped writable, a store of new bytes;
//   vmm read / vmm write      GuestMemory::read / write (devices, loader);
//   discard                   a balloon report;
//   scan                      the CLOCK hand on one page: zap (4), drop (8, 9), or
//                             start a writeback (5) into the scanner's open batch;
//   queue                     the scanner hands its open batch to the writeback queue
//                             (at most 3 batches queued, written or completing);
//   write k / write k failing SwapPool::write_out of queued batch k (its bytes taken
//                             now), all its writes failing in the second form;
//   complete k                finish_writeback of written batch k, in any order;
//   bring back                swapoff's bring-back of the slot the page had when the
//                             explorer last saw it swapped (possibly stale);
//   swapoff                   SwapPool::swapoff of one disk (moves every used slot
//                             to the other), then a fresh disk takes its place;
//   demote                    SwapPool::demote_device of the compressed memory tier
//                             (priority 10, ahead of the disks; odd seeds' pages
//                             compress, even seeds' are refused): every page it holds
//                             moves to a disk by slot migration (issue #19);
//   tier swapoff              SwapPool::swapoff of the memory tier, then a fresh one;
//   failing swap-in           a guest or VMM read of a swapped page whose read fails;
//   prefetch                  the restored VM's filler (issue #21): one batch of
//                             pages try_locked together, image pages by
//                             prefetch_image (14'), swapped ones by
//                             prefetch_swapped (10', batched);
//   failing prefetch          the same with every read failing (the image cut
//                             short, swap reads EIO): the pages must stay as they were;
//   failing image read        a guest fault (14) or VMM read (14') of an image page
//                             while the image is cut short: lost, never zeros.
//
// Half the schedules run on a *restored* VM (row R): each page starts as `image`
// (its bytes in a real memory-image file), as `swapped` in a slot the snapshot holds
// (written for a parent VM that has gone, held by the snapshot and *borrowed* by this
// VM, as restore_guest_memory leaves it: README#borrowed), or `zero`. Every other actor then races these
// states too: guest faults on image pages (14), VMM writes (14'), discards (D'),
// swap-ins, bring-backs and whole swapoffs / demotions of the devices holding the
// snapshot's slots (which move them).
//
// Checked after every step: every entry unlocked and matching the fake kernel's model
// of its page; the guest's view of every byte (a page in memory holds what was last
// written to it, a swapped page's slot and a clean copy's slot hold exactly that
// too, a zero page was never written or was discarded, a lost page had a failed read
// injected); the occupancy counters; the pool's slots against the table's references
// plus the slots of written, uncompleted batches (no leak, no double use, right owner),
// and the used slots of all devices against the vslots (no page in two tiers or none).
// On a restored VM also: every slot the snapshot holds is still allocated, owned by
// the snapshot, and still holds the snapshot's bytes, whatever the VM did (its
// writes take new slots); a borrowed entry is swapped, borrows one of the
// snapshot's slots (no other entry borrows it) and reads its page's bytes there;
// the pool's vslots are the table's own, the batches' and the snapshot's, no more.
//
// The second explorer runs two VMs on one pool (SharedPool) and one reclaim worker
// (issue #18 item 1, reclaim_service.hpp): the worker's actors (scan, queue, write,
// complete) of either VM run one unit at a time — no scan, queue or other write of
// either VM between a batch's write and its completion — while both VMs' guests,
// VMM accesses, discards, fillers (prefetch) and failing reads, and the pool-wide
// actors (swapoff, demote, tier swapoff) interleave freely. Swapoff's bring-backs go
// through the world's sink to the VM and page the slot's owner tag names (as
// HostMemory routes them); the bring-back actor takes that road too (the disks here
// always have room, so swapoff itself moves slots), and a page swapped in that very
// slot must come back. The snapshots' slots are never brought back: they move.
// Each VM starts restored (row R, its own image and snapshot) half the time. Checked
// per VM as above (its snapshot's slots included), and the pool's vslots against
// both VMs' tables, batches in flight and snapshots together.
//
// Three schedules in four run on a pool whose vslot blocks hold 2 or 4 vslots
// instead of 1024 (SwapPoolConfig::vslot_block_shift), so a VM's few pages span
// blocks and every actor above also races the table's block bookkeeping: blocks
// taken from an idle VM by the other, free lists compacted and blocks given back
// (swap/README.md#vslot-blocks); the owner checks above then also check that a
// vslot's block names its VM.
//
// SWV_EXPLORE_SECONDS (default 3) and SWV_EXPLORE_SEED (default: from the clock,
// printed) set the run; a failure prints the seed and the schedule to replay.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "guestmem/fault_service.hpp"
#include "guestmem/owner_tag.hpp"
#include "guestmem/snapshot_image.hpp"
#include "guestmem/transitions.hpp"
#include "io/fault_injection.hpp"
#include "io/ring.hpp"
#include "swap/swap_pool.hpp"
#include "tests/fakes/fake_block_device.hpp"
#include "tests/fakes/fake_page_kernel.hpp"
#include "tests/guestmem/transitions_sink.hpp"

using namespace swapvisor;
using namespace swapvisor::guestmem;
using swapvisor::testing::FakeBlockDevice;
using swapvisor::testing::FakePageKernel;

namespace {

constexpr std::uint64_t kMaxPages = 3;
constexpr std::size_t kMaxInFlight = 3;  // WritebackQueue: queued + written + completing
constexpr VmId kVm = 1;
constexpr std::uint64_t kDeviceBytes = 4ULL << 20;

// Odd seeds give a page that compresses (the memory tier keeps it), even seeds one
// that does not (the tier refuses it to a disk).
void fill(std::byte* page, std::uint64_t seed) {
    for (std::uint64_t w = 0; w < kPageSize / 8; ++w) {
        const std::uint64_t word = seed % 2 == 1 && w >= 32 ? 32 : w;
        std::uint64_t v = (seed + 1) * 0x9E3779B97F4A7C15ULL ^ (word * 0xBF58476D1CE4E5B9ULL);
        v |= 1;
        std::memcpy(page + w * 8, &v, 8);
    }
}
bool holds(const std::byte* page, std::uint64_t seed) {
    if (seed == 0) {
        for (std::size_t i = 0; i < kPageSize; ++i)
            if (page[i] != std::byte{0}) return false;
        return true;
    }
    alignas(4096) static thread_local std::array<std::byte, kPageSize> want;
    fill(want.data(), seed);
    return std::memcmp(page, want.data(), kPageSize) == 0;
}

enum class Kind : std::uint8_t {
    guest_read, guest_write, vmm_read, vmm_write, discard, scan, queue, write, write_failing, complete,
    bring_back, swapoff, failing_swap_in, demote, tier_swapoff, prefetch, prefetch_failing, failing_image_read, count_
};
constexpr std::size_t kKinds = static_cast<std::size_t>(Kind::count_);
const char* name(Kind k) {
    static constexpr const char* names[kKinds] = {"guest-read", "guest-write", "vmm-read",       "vmm-write",
                                                  "discard",    "scan",        "queue",          "write",
                                                  "write-fail", "complete",    "bring-back",     "swapoff",
                                                  "failing-swap-in", "demote",    "tier-swapoff",
                                                  "prefetch",   "prefetch-fail", "failing-image-read"};
    return names[static_cast<std::size_t>(k)];
}

struct Action {
    Kind kind;
    std::uint32_t arg;    // page, or batch index
    std::uint32_t vm = 0; // which VM's (TwoVms), 0 in a one-VM world
};

// A batch of the reclaimer's pipeline.
struct Batch {
    enum class Stage { open, queued, written } stage = Stage::open;
    std::vector<Writeback> pages;
    bool ok = false;
};

// What a world's VMs refer to in the pool: their tables' entries, their written,
// uncompleted batches, and the slots only a snapshot holds (none a table refers to).
struct SlotRefs {
    std::uint64_t table = 0, in_flight = 0, snapshot_only = 0;
    SlotRefs& operator+=(const SlotRefs& o) {
        table += o.table;
        in_flight += o.in_flight;
        snapshot_only += o.snapshot_only;
        return *this;
    }
};

// The swap side every VM of a world shares: the pool (a memory tier and two disks
// behind one FaultPlan) and the pool-wide actors (swapoff, demote, tier swapoff).
struct SharedPool {
    // block_shift: the pool's vslots per block of one VM, log2 (small: blocks change
    // hands within a few pages, so every schedule also races block take-back and
    // compaction; swap/README.md#vslot-blocks).
    SharedPool(io::Ring& r, unsigned block_shift)
        : ring(r), pool(swap::SwapPoolConfig{.vslot_block_shift = block_shift}) {
        add_tier();
        for (int i = 0; i < 2; ++i) add_device();
    }
    void add_tier() {
        auto id = pool.swapon("mem:1M", 10, 0);
        SWV_ASSERT(id.has_value(), "explorer: swapon of the memory tier failed");
        tier = *id;
    }
    void add_device() {
        auto dev = std::make_unique<FakeBlockDevice>(fmt::format("explorer-{}", next_device++), kDeviceBytes);
        auto id = pool.swapon(std::make_unique<io::FaultyBlockDevice>(std::move(dev), plan), 0);
        SWV_ASSERT(id.has_value(), "explorer: swapon of a fake device failed");
    }
    void swapoff() {
        auto devices = pool.stats();
        std::erase_if(devices, [](const swap::DeviceStats& d) { return d.kind == "memory"; });  // tier_swapoff's
        if (devices.size() < 2) return;
        // The fuller device goes; the other has room for all of it (kDeviceBytes).
        const auto& gone = devices[0].used_slots >= devices[1].used_slots ? devices[0] : devices[1];
        // A refusal changes nothing (Force::no): the checks after the step say so.
        if (pool.swapoff(gone.path, ring)) add_device();
    }
    void demote() { (void)pool.demote_device(ring, tier, kMaxPages); }
    void tier_swapoff() {
        if (pool.swapoff("mem:1M", ring)) add_tier();
    }
    // Devices' used slots against the pool's vslots, and the vslots against what the
    // VMs refer to (no leak, no slot nobody knows of).
    std::optional<std::string> check(const SlotRefs& refs) const {
        std::uint64_t used = 0;
        for (const swap::DeviceStats& d : pool.stats()) used += d.used_slots;
        if (used != pool.allocated_vslots())
            return fmt::format("devices use {} slots for {} vslots", used, pool.allocated_vslots());
        if (pool.allocated_vslots() != refs.table + refs.in_flight + refs.snapshot_only)
            return fmt::format("pool holds {} vslots, the tables refer to {}, batches in flight to {}, snapshots "
                               "alone to {}",
                               pool.allocated_vslots(), refs.table, refs.in_flight, refs.snapshot_only);
        return std::nullopt;
    }

    io::Ring& ring;
    swap::SwapPool pool;
    std::shared_ptr<io::FaultPlan> plan = std::make_shared<io::FaultPlan>();
    swap::DeviceId tier{};
    int next_device = 0;
};

// What a restored page starts as (row R).
enum class Restored : std::uint8_t { zero, image, swapped };

class World {
public:
    // One VM with a pool of its own.
    World(std::uint64_t pages, io::Ring& ring, unsigned block_shift) : World(pages, ring, nullptr, kVm, block_shift) {
        pool_.set_eviction_sink(&sink_);
    }
    // VM `vm` of several on `shared` (whose owner routes swapoff's bring-backs).
    World(std::uint64_t pages, io::Ring& ring, SharedPool* shared, VmId vm, unsigned block_shift = 0)
        : pages_(pages),
          ring_(ring),
          vm_(vm),
          own_(shared ? nullptr : std::make_unique<SharedPool>(ring, block_shift)),
          shared_(shared ? *shared : *own_) {}
    ~World() {
        for (swap::VSlot v : snap_vslots_) pool_.drop_hold(v);
        if (own_) pool_.set_eviction_sink(nullptr);
    }
    Transitions& transitions() { return tr_; }
    PageEntry entry(std::uint32_t page) const { return table_.peek(PageIdx(page)); }
    swap::VSlot last_vslot(std::uint32_t page) const { return last_vslot_[page]; }
    // A batch written and not yet completed: with one worker, it is in the worker.
    bool has_written_batch() const {
        return std::any_of(batches_.begin(), batches_.end(),
                           [](const Batch& b) { return b.stage == Batch::Stage::written; });
    }

    // Make this VM a restored one (row R): page i starts as kinds[i]. Its image and
    // slots hold seeds snapshot seeds (kSnapSeed + i, odd and even: both kinds of
    // page for the memory tier).
    void restore(const std::vector<Restored>& kinds) {
        char name[] = "/tmp/swv-explorer-image-XXXXXX";
        const int fd = ::mkstemp(name);
        SWV_ASSERT(fd >= 0, "explorer: mkstemp");
        ::unlink(name);
        image_fd_ = io::UniqueFd(fd);
        write_image();
        image_.emplace(io::UniqueFd(::dup(fd)), pages_, name);
        tr_.set_image(&*image_);
        alignas(4096) static std::array<std::byte, kPageSize> page;
        for (std::uint32_t i = 0; i < pages_; ++i) {
            const std::uint64_t seed = kSnapSeed + i;
            PageLock lk = tr_.lock(PageIdx(i));
            switch (kinds[i]) {
                case Restored::zero: continue;
                case Restored::image:
                    SWV_ASSERT(tr_.restore_entry(lk, PageEntry::make(PageState::image)).has_value(), "explorer: R");
                    break;
                case Restored::swapped: {
                    // Written for the parent VM, held by the snapshot (save), then the
                    // parent goes: the snapshot owns it; this VM borrows it (restore).
                    fill(page.data(), seed);
                    swap::PageOut out{page.data(), pack_owner(kParentVm, i)};
                    SWV_ASSERT(pool_.write_out(ring_, std::span(&out, 1)).has_value() && out.ok(), "explorer: write");
                    SWV_ASSERT(pool_.hold(out.vslot).has_value(), "explorer: snapshot hold");
                    pool_.free(out.vslot);
                    SWV_ASSERT(tr_.restore_entry(lk, PageEntry::make_borrowed(out.vslot)).has_value(), "explorer: R");
                    snap_vslots_.push_back(out.vslot);
                    snap_seed_of_.push_back(seed);
                    last_vslot_[i] = out.vslot;
                    break;
                }
            }
            seed_[i] = seed;
        }
    }
    bool restored() const { return image_.has_value(); }

    std::vector<Action> enabled(const std::array<bool, kKinds>& allowed) const {
        std::vector<Action> out;
        auto add = [&](Kind k, std::uint32_t arg) {
            if (allowed[static_cast<std::size_t>(k)]) out.push_back({k, arg});
        };
        for (std::uint32_t p = 0; p < pages_; ++p) {
            const PageEntry e = table_.peek(PageIdx(p));
            if (e.state() != PageState::resident) add(Kind::guest_read, p);
            add(Kind::guest_write, p);
            add(Kind::vmm_read, p);
            add(Kind::vmm_write, p);
            add(Kind::discard, p);
            if (!scan_must_wait(p)) add(Kind::scan, p);
            if (last_vslot_[p] != swap::kNoVSlot) add(Kind::bring_back, p);
            if (e.state() == PageState::swapped) add(Kind::failing_swap_in, p);
            if (e.state() == PageState::image) add(Kind::failing_image_read, p);
        }
        // Which pages the batch takes (a bit mask): all of them, or one.
        const std::uint32_t all = (1u << pages_) - 1;
        add(Kind::prefetch, all);
        add(Kind::prefetch_failing, all);
        for (std::uint32_t p = 0; p + 1 < pages_; ++p) add(Kind::prefetch, 1u << p);
        std::size_t in_flight = 0;
        for (const Batch& b : batches_) in_flight += b.stage != Batch::Stage::open;
        for (std::uint32_t k = 0; k < batches_.size(); ++k) {
            const Batch& b = batches_[k];
            if (b.stage == Batch::Stage::open && in_flight < kMaxInFlight) add(Kind::queue, k);
            if (b.stage == Batch::Stage::queued) {
                add(Kind::write, k);
                add(Kind::write_failing, k);
            }
            if (b.stage == Batch::Stage::written) add(Kind::complete, k);
        }
        if (own_) {  // pool-wide actors: the owner of a shared pool offers them
            add(Kind::swapoff, 0);
            add(Kind::demote, 0);
            add(Kind::tier_swapoff, 0);
        }
        return out;
    }

    // The entries, for a verbose replay.
    std::string entries() const {
        std::string s;
        for (std::uint32_t i = 0; i < pages_; ++i) {
            const PageEntry e = table_.peek(PageIdx(i));
            s += fmt::format("[{} {}{} {:#x}]", i, to_string(e.state()), e.clean() ? "+CLN" : "", e.raw() >> 32);
        }
        return s;
    }

    std::string describe(const Action& a) const { return fmt::format("{}({})", name(a.kind), a.arg); }

    void step(const Action& a) {
        const PageIdx p(a.arg);
        switch (a.kind) {
            case Kind::guest_read: (void)resolve_fault(tr_, p, WpFault::no, ring_); break;
            case Kind::guest_write: guest_write(p); break;
            case Kind::vmm_read: vmm_access(p, Access::read); break;
            case Kind::vmm_write: vmm_access(p, Access::write); break;
            case Kind::discard: {
                PageLock lk = tr_.lock(p);
                if (tr_.discard(lk)) {
                    seed_[a.arg] = 0;
                    lost_ok_[a.arg] = false;
                }
                break;
            }
            case Kind::scan: scan(p); break;
            case Kind::queue: batches_[a.arg].stage = Batch::Stage::queued; break;
            case Kind::write: write(batches_[a.arg], false); break;
            case Kind::write_failing: write(batches_[a.arg], true); break;
            case Kind::complete:
                (void)tr_.finish_writeback(batches_[a.arg].pages, batches_[a.arg].ok);
                batches_.erase(batches_.begin() + a.arg);
                break;
            case Kind::bring_back: {
                PageLock lk = tr_.lock(p);
                (void)tr_.bring_back(lk, last_vslot_[a.arg], nullptr, ring_);
                break;
            }
            case Kind::swapoff: shared_.swapoff(); break;
            case Kind::demote: shared_.demote(); break;
            case Kind::tier_swapoff: shared_.tier_swapoff(); break;
            case Kind::failing_swap_in: {
                const auto rule = plan_->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, {}, io::fault::Eio{}});
                lost_ok_[a.arg] = true;  // the page may be lost: the guest is told, never lied to
                if (a.arg % 2 == 0) (void)resolve_fault(tr_, p, WpFault::no, ring_);
                else vmm_access(p, Access::read);
                plan_->remove(rule);
                break;
            }
            case Kind::prefetch: prefetch(a.arg, false); break;
            case Kind::prefetch_failing: prefetch(a.arg, true); break;
            case Kind::failing_image_read: {
                if (!restored()) break;
                cut_image();
                lost_ok_[a.arg] = true;  // lost, and the guest is told
                if (a.arg % 2 == 0) (void)resolve_fault(tr_, p, WpFault::no, ring_);
                else vmm_access(p, Access::read);
                write_image();
                break;
            }
            case Kind::count_: break;
        }
    }

    // Complete everything in flight (the VM's stop does the same), then check again.
    void drain() {
        while (!batches_.empty()) {
            Batch& b = batches_.front();
            if (b.stage != Batch::Stage::written) write(b, false);
            (void)tr_.finish_writeback(b.pages, b.ok);
            batches_.erase(batches_.begin());
        }
    }

    // Every invariant of the file comment; a message for the first one broken. With a
    // shared pool the pool-wide counts are the owner's: `refs_out` gets this VM's.
    std::optional<std::string> check(SlotRefs* refs_out = nullptr) {
        std::uint64_t resident = 0, swapped = 0, referenced = 0;
        std::set<std::uint32_t> slots, borrowed;
        for (std::uint32_t i = 0; i < pages_; ++i) {
            const PageIdx p(i);
            const PageEntry e = table_.peek(p);
            if (e.locked()) return fmt::format("page {} left locked", i);
            if (!kernel_.consistent(p, e))
                return fmt::format("page {}: entry {} does not match the kernel (present {}, view {})", i,
                                   to_string(e.state()), kernel_.present(p), static_cast<int>(kernel_.view(p)));
            resident += e.present();
            swapped += e.state() == PageState::swapped;
            if (e.present() && !holds(kernel_.vmm_page(p), seed_[i]))
                return fmt::format("page {} ({}) in memory does not hold its last write (seed {})", i,
                                   to_string(e.state()), seed_[i]);
            if (e.state() == PageState::zero && seed_[i] != 0)
                return fmt::format("page {} reads zeros but was written (seed {})", i, seed_[i]);
            if (e.state() == PageState::lost && !lost_ok_[i])
                return fmt::format("page {} lost without any failed read", i);
            if (e.state() == PageState::image && seed_[i] != kSnapSeed + i)
                return fmt::format("page {} still reads the image but was written (seed {})", i, seed_[i]);
            if (e.borrowed()) {
                const swap::VSlot v = e.vslot();
                if (e.state() != PageState::swapped)
                    return fmt::format("page {}: borrows vslot {} in state {}", i, v.value(), to_string(e.state()));
                if (std::find(snap_vslots_.begin(), snap_vslots_.end(), v) == snap_vslots_.end())
                    return fmt::format("page {}: borrows vslot {}, which the snapshot does not hold", i, v.value());
                if (!borrowed.insert(v.value()).second) return fmt::format("vslot {} borrowed twice", v.value());
                last_vslot_[i] = v;
                if (auto r = pool_.read_in(ring_, v, buf_.data()); !r)
                    return fmt::format("page {}: its borrowed slot {} cannot be read: {}", i, v.value(),
                                       r.error().message());
                if (!holds(buf_.data(), seed_[i]))
                    return fmt::format("page {}: borrowed slot {} holds stale bytes (want seed {})", i, v.value(),
                                       seed_[i]);
            }
            if (e.holds_vslot()) {
                referenced++;
                const swap::VSlot v = e.vslot();
                if (e.state() == PageState::swapped) last_vslot_[i] = v;
                if (!slots.insert(v.value()).second) return fmt::format("vslot {} referenced twice", v.value());
                const bool held = std::find(snap_vslots_.begin(), snap_vslots_.end(), v) != snap_vslots_.end();
                if (pool_.owner_of(v) != (held ? swap::kSnapshotOwner : pack_owner(vm_, i)))
                    return fmt::format("page {}: vslot {} is not allocated to it", i, v.value());
                if (auto r = pool_.read_in(ring_, v, buf_.data()); !r)
                    return fmt::format("page {}: its slot {} cannot be read: {}", i, v.value(), r.error().message());
                if (!holds(buf_.data(), seed_[i]))
                    return fmt::format("page {} ({}{}): slot {} holds stale bytes (want seed {})", i,
                                       to_string(e.state()), e.clean() ? "+CLN" : "", v.value(), seed_[i]);
            }
        }
        std::uint64_t in_flight = 0;
        for (const Batch& b : batches_) {
            if (b.stage != Batch::Stage::written) continue;
            for (const Writeback& wb : b.pages) {
                if (!b.ok || !wb.out.ok()) continue;
                in_flight++;
                if (!slots.insert(wb.out.vslot.value()).second)
                    return fmt::format("vslot {} of a batch in flight is also referenced", wb.out.vslot.value());
            }
        }
        if (occupancy_.resident.load() != resident)
            return fmt::format("resident counter {} != {} present entries", occupancy_.resident.load(), resident);
        if (occupancy_.swapped.load() != swapped)
            return fmt::format("swapped counter {} != {} swapped entries", occupancy_.swapped.load(), swapped);
        // The snapshot's slots: still allocated, still the snapshot's, still its bytes.
        std::uint64_t snapshot_only = 0;
        for (std::size_t k = 0; k < snap_vslots_.size(); ++k) {
            const swap::VSlot v = snap_vslots_[k];
            if (pool_.owner_of(v) != swap::kSnapshotOwner)
                return fmt::format("the snapshot's vslot {} is no longer the snapshot's", v.value());
            if (auto r = pool_.read_in(ring_, v, buf_.data()); !r)
                return fmt::format("the snapshot's vslot {} cannot be read: {}", v.value(), r.error().message());
            if (!holds(buf_.data(), snap_seed_of_[k]))
                return fmt::format("the snapshot's vslot {} no longer holds the snapshot's bytes", v.value());
            snapshot_only += slots.count(v.value()) == 0;
        }
        const SlotRefs refs{referenced, in_flight, snapshot_only};
        if (refs_out) {
            *refs_out += refs;
            return std::nullopt;
        }
        return shared_.check(refs);
    }

private:
    // The filler's batch (snapshot.cpp fill_loop): the pages in `mask` it can
    // try_lock, ascending, image ones by prefetch_image, swapped ones by
    // prefetch_swapped. `failing`: every read fails (the image cut short, swap EIO);
    // the pages must stay as they were, for the guest's own fault to report.
    void prefetch(std::uint32_t mask, bool failing) {
        std::optional<io::FaultRuleId> rule;
        if (failing) {
            rule = plan_->add(io::FaultRule{io::FaultMatch::read, {}, {}, 0, {}, io::fault::Eio{}});
            if (restored()) cut_image();
        }
        std::vector<PageLock> image_pages, swapped_pages;
        for (std::uint32_t p = 0; p < pages_; ++p) {
            if (!(mask & (1u << p))) continue;
            auto lk = tr_.try_lock(PageIdx(p));
            if (!lk) continue;
            const PageState s = lk->entry().state();
            if (s == PageState::image) image_pages.push_back(std::move(*lk));
            else if (s == PageState::swapped) swapped_pages.push_back(std::move(*lk));
        }
        if (!image_pages.empty()) (void)tr_.prefetch_image(image_pages, ring_);
        (void)tr_.prefetch_swapped(swapped_pages, ring_);
        image_pages.clear();
        swapped_pages.clear();
        if (rule) plan_->remove(*rule);
        if (failing && restored()) write_image();
    }
    // The memory image's bytes (page i: kSnapSeed + i), or the file cut to nothing.
    void write_image() {
        alignas(4096) static std::array<std::byte, kPageSize> page;
        for (std::uint32_t i = 0; i < pages_; ++i) {
            fill(page.data(), kSnapSeed + i);
            SWV_ASSERT(::pwrite(image_fd_.get(), page.data(), kPageSize, static_cast<off_t>(i * kPageSize)) ==
                           static_cast<ssize_t>(kPageSize),
                       "explorer: image write");
        }
    }
    void cut_image() { SWV_ASSERT(::ftruncate(image_fd_.get(), 0) == 0, "explorer: image truncate"); }

    void guest_write(PageIdx p) {
        const PageEntry e = table_.peek(p);
        if (e.state() != PageState::resident) {  // MISSING / MINOR fault first
            (void)resolve_fault(tr_, p, WpFault::no, ring_);
            return;
        }
        if (kernel_.view(p) != FakePageKernel::View::mapped) {  // write-protected: WP fault
            (void)resolve_fault(tr_, p, WpFault::yes, ring_);
            return;
        }
        // The store itself: no lock, as a vCPU writing a mapped page takes none.
        seed_[p.value()] = next_seed_++;
        fill(kernel_.vmm_page(p), seed_[p.value()]);
    }

    // GuestMemory::access, one whole page.
    void vmm_access(PageIdx p, Access kind) {
        PageLock lk = tr_.lock(p);
        switch (lk.entry().state()) {
            case PageState::zero:
                if (kind == Access::read) return;
                tr_.vmm_write_zero(lk);
                break;
            case PageState::swapped:
                if (!tr_.vmm_swap_in(lk, ring_, kind)) return;
                break;
            case PageState::lost: return;
            case PageState::image:  // 14'
                if (!tr_.fill_image(lk, Transitions::Map::no)) return;
                break;
            case PageState::writeback:
                if (kind == Access::write) tr_.vmm_write_writeback(lk);
                break;
            case PageState::resident:
            case PageState::inactive:
                if (kind == Access::write && lk.entry().clean()) tr_.vmm_write_clean(lk);
                break;
            case PageState::reading: SWV_ASSERT(false, "reading seen by a lock holder");
        }
        if (kind == Access::read) {
            std::memcpy(buf_.data(), kernel_.vmm_page(p), kPageSize);
            return;
        }
        seed_[p.value()] = next_seed_++;
        fill(kernel_.vmm_page(p), seed_[p.value()]);
    }

    // The CLOCK hand on one page (reclaimer.cpp's choice of row).
    void scan(PageIdx p) {
        auto lk = tr_.try_lock(p);
        if (!lk) return;
        const PageEntry e = lk->entry();
        if (e.state() == PageState::resident) {
            if (tr_.pass_active(*lk)) return;  // 4a: used again since its last zap
            std::vector<PageLock> run;
            run.push_back(std::move(*lk));
            tr_.deactivate(run);
            return;
        }
        if (e.state() != PageState::inactive) return;
        std::vector<PageLock> dropped;
        if (e.clean()) {  // 9
            if (tr_.drop_cold(*lk)) dropped.push_back(std::move(*lk));
            (void)tr_.punch_dropped(dropped);
            return;
        }
        // 8 or 5 as reclaim_pass does it: staged, then zero-checked and hashed in one
        // pass over the copy (evict_cold).
        std::vector<PageLock> cold;
        cold.push_back(std::move(*lk));
        std::vector<Writeback> staged;
        tr_.evict_cold(cold, tr_.staging().acquire(1), dropped, staged);
        if (!dropped.empty()) {
            (void)tr_.punch_dropped(dropped);
            return;
        }
        if (staged.empty()) return;
        Batch* open = open_batch();
        if (open != nullptr && wraps(*open, p)) {
            open->stage = Batch::Stage::queued;  // the hand wrapped: the reclaimer flushes
            open = nullptr;
        }
        if (open == nullptr) open = &batches_.emplace_back();
        open->pages.push_back(std::move(staged.front()));
    }

    Batch* open_batch() {
        for (Batch& b : batches_)
            if (b.stage == Batch::Stage::open) return &b;
        return nullptr;
    }
    // A batch is one stretch of the CLOCK hand: ascending pages, each at most once;
    // reaching p again (or a lower page) means the hand wrapped (reclaim_pass flushes).
    static bool wraps(const Batch& b, PageIdx p) { return !b.pages.empty() && !(b.pages.back().idx < p); }
    // The scanner would have to queue its open batch first, and the queue is full.
    bool scan_must_wait(std::uint32_t p) const {
        std::size_t in_flight = 0;
        const Batch* open = nullptr;
        for (const Batch& b : batches_) {
            if (b.stage == Batch::Stage::open) open = &b;
            else in_flight++;
        }
        return open != nullptr && wraps(*open, PageIdx(p)) && in_flight >= kMaxInFlight;
    }

    void write(Batch& b, bool failing) {
        std::optional<io::FaultRuleId> rule;
        if (failing) rule = plan_->add(io::FaultRule{io::FaultMatch::write, {}, {}, 0, {}, io::fault::Eio{}});
        std::vector<swap::PageOut> outs;
        for (const Writeback& wb : b.pages) outs.push_back(wb.out);
        b.ok = pool_.write_out(ring_, outs).has_value();
        for (std::size_t k = 0; k < outs.size(); ++k) b.pages[k].out = outs[k];
        if (rule) plan_->remove(*rule);
        b.stage = Batch::Stage::written;
    }

    std::uint64_t pages_;
    io::Ring& ring_;
    VmId vm_;
    std::unique_ptr<SharedPool> own_;  // null: the pool is shared
    SharedPool& shared_;
    swap::SwapPool& pool_ = shared_.pool;
    std::shared_ptr<io::FaultPlan>& plan_ = shared_.plan;
    FakePageKernel kernel_{kMaxPages};
    Stage2 table_ = Stage2::create(kMaxPages).value();
    Occupancy occupancy_;
    Counters counters_;
    CleanCopyPolicy clean_{true};
    Limits limits_{occupancy_, nullptr, kMaxPages * kPageSize, 0};
    Transitions tr_{Transitions::Deps{table_, kernel_, &pool_, limits_, occupancy_, counters_, clean_, "explorer", vm_}};
    guestmem::testing::TransitionsSink sink_{tr_, kMaxPages};
    std::vector<Batch> batches_;
    std::array<std::uint64_t, kMaxPages> seed_{};       // what each page must hold; 0 = zeros
    std::array<bool, kMaxPages> lost_ok_{};             // a failed read was injected on it
    std::array<swap::VSlot, kMaxPages> last_vslot_{};   // its slot when last seen swapped
    std::uint64_t next_seed_ = 1;
    static constexpr std::uint64_t kSnapSeed = 1'000'000;
    static constexpr VmId kParentVm = 3;       // gone; no VM of either world (1, 2)
    io::UniqueFd image_fd_;                    // the image file, written by the explorer
    std::optional<PageImage> image_;           // what the VM reads it through
    std::vector<swap::VSlot> snap_vslots_;     // the slots the snapshot holds (one hold each)
    std::vector<std::uint64_t> snap_seed_of_;  // their bytes
    alignas(4096) std::array<std::byte, kPageSize> buf_{};
};

// Two VMs on one pool and one reclaim worker (reclaim_service.hpp): the worker
// runs one unit at a time — a scan step of either VM (scan, queue) or one batch,
// written and then completed — while both VMs' guests, VMM accesses and discards,
// and swapoff on the pool, go on between the write and its completion. Swapoff's
// bring-backs reach the VM that owns the slot, as HostMemory routes them.
class TwoVms final : public swap::EvictionSink {
public:
    TwoVms(std::uint64_t pages_a, std::uint64_t pages_b, io::Ring& ring, unsigned block_shift)
        : shared_(ring, block_shift) {
        vms_[0] = std::make_unique<World>(pages_a, ring, &shared_, VmId(1));
        vms_[1] = std::make_unique<World>(pages_b, ring, &shared_, VmId(2));
        shared_.pool.set_eviction_sink(this);
    }
    ~TwoVms() override { shared_.pool.set_eviction_sink(nullptr); }

    std::vector<Action> enabled(const std::array<bool, kKinds>& allowed) const {
        // The one worker is inside a batch (written, not completed): no other unit.
        const bool busy = vms_[0]->has_written_batch() || vms_[1]->has_written_batch();
        std::vector<Action> out;
        for (std::uint32_t v = 0; v < 2; ++v) {
            for (Action a : vms_[v]->enabled(allowed)) {
                const bool worker = a.kind == Kind::scan || a.kind == Kind::queue || a.kind == Kind::write ||
                                    a.kind == Kind::write_failing;
                if (busy && worker) continue;
                a.vm = v;
                out.push_back(a);
            }
        }
        for (Kind k : {Kind::swapoff, Kind::demote, Kind::tier_swapoff})
            if (allowed[static_cast<std::size_t>(k)]) out.push_back({k, 0, 0});
        return out;
    }
    std::string describe(const Action& a) const { return fmt::format("vm{}:{}({})", a.vm, name(a.kind), a.arg); }
    std::string entries() const { return vms_[0]->entries() + " | " + vms_[1]->entries(); }
    World& vm(std::uint32_t v) { return *vms_[v]; }
    void step(const Action& a) {
        switch (a.kind) {
            case Kind::swapoff: shared_.swapoff(); break;
            case Kind::demote: shared_.demote(); break;
            case Kind::tier_swapoff: shared_.tier_swapoff(); break;
            case Kind::bring_back: routed_bring_back(a); break;
            default: vms_[a.vm]->step(a); break;
        }
    }
    void drain() {
        for (auto& vm : vms_) vm->drain();
    }
    std::optional<std::string> check() {
        if (misrouted_) return std::exchange(misrouted_, std::nullopt);
        SlotRefs refs;
        for (std::uint32_t v = 0; v < 2; ++v)
            if (auto bad = vms_[v]->check(&refs)) return fmt::format("vm{}: {}", v, *bad);
        return shared_.check(refs);
    }

    // swap::EvictionSink: the owner tag names the VM and its page.
    std::uint64_t bring_back_capacity() const override { return 2 * kMaxPages; }
    std::uint64_t bring_back_room(swap::OwnerTag) const override { return kMaxPages; }
    Result<bool> bring_back(swap::OwnerTag owner, swap::VSlot vslot, const swap::SlotCopy* copy,
                            io::Ring& ring) override {
        Transitions& tr = vm_of(owner);
        PageLock lk = tr.lock(PageIdx(owner_index(owner)));
        return tr.bring_back(lk, vslot, copy, ring);
    }
    Result<bool> lose(swap::OwnerTag owner, swap::VSlot vslot, const Error& why) override {
        Transitions& tr = vm_of(owner);
        PageLock lk = tr.lock(PageIdx(owner_index(owner)));
        return tr.lose_swapped(lk, vslot, why);
    }

private:
    // Swapoff's bring-back of the slot page a.arg of VM a.vm had when last seen
    // swapped, sent where swapoff sends it: through the sink, to the VM and page the
    // pool's owner tag names now (the slot may since have gone to a page of either
    // VM), never for a slot the snapshot owns. A page that is swapped in that very
    // slot must come back (no room or read failure is in play here), or the sink sent
    // it elsewhere.
    void routed_bring_back(const Action& a) {
        const swap::VSlot v = vms_[a.vm]->last_vslot(a.arg);
        const std::optional<swap::OwnerTag> owner = shared_.pool.owner_of(v);
        if (!owner || *owner == swap::kSnapshotOwner) return;
        const VmId id = owner_vm(*owner);
        SWV_ASSERT(id == 1 || id == 2, "explorer: a slot owned by no VM of the world");
        const std::uint32_t page = static_cast<std::uint32_t>(owner_index(*owner));
        const PageEntry e = vms_[id - 1]->entry(page);
        const bool must = e.state() == PageState::swapped && e.vslot() == v;
        const Result<bool> brought = bring_back(*owner, v, nullptr, shared_.ring);
        if (must && !(brought && *brought))
            misrouted_ = fmt::format("vm{}'s page {}, swapped in vslot {}, not brought back by its owner tag", id - 1,
                                     page, v.value());
    }
    Transitions& vm_of(swap::OwnerTag owner) {
        const VmId id = owner_vm(owner);
        SWV_ASSERT(id == 1 || id == 2, "explorer: a slot owned by no VM of the world");
        return vms_[id - 1]->transitions();
    }
    SharedPool shared_;
    std::array<std::unique_ptr<World>, 2> vms_;
    std::optional<std::string> misrouted_;  // a bring-back the owner tag did not deliver
};

// Row R for a world's VM: each page zero, image or swapped in a snapshot's slot, at
// random; the trace's line for it.
std::string restore_randomly(World& w, std::uint64_t pages, std::mt19937_64& rng) {
    std::vector<Restored> kinds(pages);
    for (Restored& k : kinds) k = static_cast<Restored>(rng() % 3);
    w.restore(kinds);
    std::string r = "restored:";
    for (Restored k : kinds) r += k == Restored::zero ? " zero" : k == Restored::image ? " image" : " swapped";
    return r;
}

// The pool's vslot blocks: 2 or 4 vslots (a VM's few pages span blocks, and blocks
// are taken back and compacted all the time) in three schedules of four, the real
// size in the fourth.
unsigned pick_block_shift(std::mt19937_64& rng) {
    const unsigned pick = static_cast<unsigned>(rng() % 4);
    return pick == 3 ? swap::VSlotTable::kBlockShift : 1 + pick % 2;
}

// One two-VM schedule from `seed` (swarm testing as run_schedule). Each VM starts
// restored (row R, its own image and snapshot) half the time, so the worker's units
// and swapoff also race the image state and the snapshots' slots of both VMs.
std::optional<std::string> run_two_vm_schedule(std::uint64_t seed, io::Ring& ring, std::uint64_t& steps) {
    std::mt19937_64 rng(seed);
    std::array<bool, kKinds> allowed{};
    for (bool& a : allowed) a = rng() % 3 != 0;
    for (Kind must : {Kind::guest_write, Kind::scan, Kind::queue, Kind::write, Kind::complete})
        allowed[static_cast<std::size_t>(must)] = true;
    const std::uint64_t pages_a = 1 + rng() % kMaxPages, pages_b = 1 + rng() % kMaxPages;
    const std::uint64_t depth = 8 + rng() % 60;
    const unsigned block_shift = pick_block_shift(rng);
    TwoVms w(pages_a, pages_b, ring, block_shift);
    std::vector<std::string> trace;
    const std::uint64_t pages[2] = {pages_a, pages_b};
    for (std::uint32_t v = 0; v < 2; ++v)
        if (rng() % 2 == 0) trace.push_back(fmt::format("vm{}:{}", v, restore_randomly(w.vm(v), pages[v], rng)));
    auto fail = [&](const std::string& why) {
        std::string s = fmt::format("two VMs, seed {:#x}, {}+{} pages, blocks of {} vslots, after {} steps: {}\n  schedule:",
                                    seed, pages_a, pages_b, 1u << block_shift, trace.size(), why);
        for (const std::string& t : trace) s += " " + t;
        return s;
    };
    for (std::uint64_t d = 0; d < depth; ++d) {
        const std::vector<Action> actions = w.enabled(allowed);
        if (actions.empty()) break;
        const Action a = actions[rng() % actions.size()];
        trace.push_back(w.describe(a));
        w.step(a);
        if (std::getenv("SWV_EXPLORE_VERBOSE")) std::printf("%s -> %s\n", trace.back().c_str(), w.entries().c_str());
        steps++;
        if (auto bad = w.check()) return fail(*bad);
    }
    w.drain();
    trace.push_back("drain");
    if (auto bad = w.check()) return fail(*bad);
    return std::nullopt;
}

struct Outcome {
    std::uint64_t schedules = 0, steps = 0;
    std::optional<std::string> failure;  // the message and the schedule that broke it
};

// One schedule from `seed`: swarm testing (each schedule allows a random subset of
// the actors, so deep orders of a few actors are as likely as shallow mixes).
std::optional<std::string> run_schedule(std::uint64_t seed, io::Ring& ring, std::uint64_t& steps) {
    std::mt19937_64 rng(seed);
    std::array<bool, kKinds> allowed{};
    for (bool& a : allowed) a = rng() % 3 != 0;
    for (Kind must : {Kind::guest_write, Kind::scan, Kind::queue, Kind::write, Kind::complete})
        allowed[static_cast<std::size_t>(must)] = true;  // the pipeline itself is always there
    const std::uint64_t pages = 1 + rng() % kMaxPages;
    const std::uint64_t depth = 8 + rng() % 40;
    const unsigned block_shift = pick_block_shift(rng);
    World w(pages, ring, block_shift);
    std::vector<std::string> trace;
    if (rng() % 2 == 0) trace.push_back(restore_randomly(w, pages, rng));
    auto fail = [&](const std::string& why) {
        std::string s = fmt::format("seed {:#x}, {} pages, blocks of {} vslots, after {} steps: {}\n  schedule:", seed,
                                    pages, 1u << block_shift, trace.size(), why);
        for (const std::string& t : trace) s += " " + t;
        return s;
    };
    for (std::uint64_t d = 0; d < depth; ++d) {
        const std::vector<Action> actions = w.enabled(allowed);
        if (actions.empty()) break;
        const Action a = actions[rng() % actions.size()];
        trace.push_back(w.describe(a));
        w.step(a);
        if (std::getenv("SWV_EXPLORE_VERBOSE")) std::printf("%s -> %s\n", trace.back().c_str(), w.entries().c_str());
        steps++;
        if (auto bad = w.check()) return fail(*bad);
    }
    w.drain();
    trace.push_back("drain");
    if (auto bad = w.check()) return fail(*bad);
    return std::nullopt;
}

using Schedule = std::optional<std::string> (*)(std::uint64_t, io::Ring&, std::uint64_t&);

Outcome explore(std::uint64_t base_seed, std::chrono::duration<double> budget, io::Ring& ring,
                Schedule schedule = run_schedule) {
    Outcome out;
    const auto until = std::chrono::steady_clock::now() + budget;
    while (std::chrono::steady_clock::now() < until) {
        for (int i = 0; i < 64; ++i) {
            out.failure = schedule(base_seed + out.schedules, ring, out.steps);
            out.schedules++;
            if (out.failure) return out;
        }
    }
    return out;
}

double env_seconds() {
    const char* s = std::getenv("SWV_EXPLORE_SECONDS");
    return s ? std::strtod(s, nullptr) : 3.0;
}

std::uint64_t env_seed() {
    if (const char* s = std::getenv("SWV_EXPLORE_SEED")) return std::strtoull(s, nullptr, 0);
    return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) << 20;
}

TEST(ScheduleExplorer, RandomSchedulesOfEveryActorKeepEveryGuestByte) {
    auto ring = io::Ring::create(8);
    if (!ring) GTEST_SKIP() << "LOUD SKIP: io_uring unavailable here: " << ring.error().message();
    // Injected failures log an error per lost page: thousands a second here.
    const auto level = spdlog::get_level();
    spdlog::set_level(spdlog::level::off);
    const std::uint64_t seed = env_seed();
    const double seconds = env_seconds();
    // The seed first: a broken invariant aborts the process before the summary.
    std::printf("schedule explorer: base seed %#llx\n", static_cast<unsigned long long>(seed));
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    Outcome out = explore(seed, std::chrono::duration<double>(seconds), *ring);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::set_level(level);
    std::printf("schedule explorer: base seed %#llx, %llu schedules, %llu steps in %.2f s (%.0f schedules/s)\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(out.schedules),
                static_cast<unsigned long long>(out.steps), took, out.schedules / took);
    EXPECT_FALSE(out.failure.has_value()) << *out.failure << "\nreplay: SWV_EXPLORE_SEED=<the seed above>";
    EXPECT_GT(out.schedules, 0u);
}

TEST(ScheduleExplorer, TwoVmsSharingOneReclaimWorkerKeepEveryGuestByte) {
    auto ring = io::Ring::create(8);
    if (!ring) GTEST_SKIP() << "LOUD SKIP: io_uring unavailable here: " << ring.error().message();
    const auto level = spdlog::get_level();
    spdlog::set_level(spdlog::level::off);
    const std::uint64_t seed = env_seed();
    const double seconds = env_seconds();
    std::printf("schedule explorer (two VMs, one worker): base seed %#llx\n", static_cast<unsigned long long>(seed));
    std::fflush(stdout);
    const auto t0 = std::chrono::steady_clock::now();
    Outcome out = explore(seed, std::chrono::duration<double>(seconds), *ring, run_two_vm_schedule);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    spdlog::set_level(level);
    std::printf("schedule explorer (two VMs, one worker): base seed %#llx, %llu schedules, %llu steps in %.2f s\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(out.schedules),
                static_cast<unsigned long long>(out.steps), took);
    EXPECT_FALSE(out.failure.has_value()) << *out.failure << "\nreplay: SWV_EXPLORE_SEED=<the seed above>";
    EXPECT_GT(out.schedules, 0u);
}

}  // namespace
