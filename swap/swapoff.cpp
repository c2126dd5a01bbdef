// SwapPool::swapoff: live removal of one device (swap/README.md#removal).
//
// Mark the device removing (no new slots on it), refuse up front if its used slots
// fit neither on the other active devices nor in guest memory, wait for writes that
// had already allocated on it, then walk only its allocated slots (bitmap word scan)
// in batches: read the old slots, write them to slots on other devices, switch each
// VSlot descriptor with a compare-and-swap on its generation, free the old slots.
// Pages for which no device has room are handed to the EvictionSink: while the other
// devices cannot take everything that is left, pages whose VM has room are brought
// back first, so the room elsewhere goes to pages of VMs that have none. A slot that
// cannot be read (I/O error, checksum mismatch) is quarantined; without Force it is
// left in place and reported at the end, with Force its page is handed to
// EvictionSink::lose. When no slot is used any more, unpublish the device, wait for
// its references to drain, close it.
//
// Each slot is counted once in the report (moved, brought back, lost or skipped): a
// slot skipped in one pass (its page was being faulted in) and moved in a later one
// counts as moved only.
#include <algorithm>
#include <chrono>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "io/unique_fd.hpp"
#include "swap/io_batch.hpp"
#include "swap/memory_tier.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::swap {

namespace {

// Passes over the bitmap that found nothing to do before swapoff gives up (a slot
// whose free is in progress drains within microseconds; this is only a safety net
// against a sink that claims to have brought a page back but did not free it).
constexpr int kMaxStalledPasses = 5000;

// Puts the device back to active unless removal completed.
class RemovalGuard {
public:
    explicit RemovalGuard(SwapDevice* dev) : dev_(dev) {}
    ~RemovalGuard() {
        if (dev_ != nullptr) dev_->cancel_removal();
    }
    void cancel() { dev_ = nullptr; }

private:
    SwapDevice* dev_;
};

}  // namespace

struct SwapPool::Batch {
    struct Item {
        SlotIdx old_slot;
        VSlot vslot;
        VSlotInfo info;
        std::byte* buf;
        bool live = true;
        std::optional<Error> unreadable;  // why its data cannot be trusted
        // The verified bytes of a live item (step 2), for a bring-back: never read twice.
        SlotCopy copy() const { return SlotCopy{std::span<const std::byte>(buf, kSlotSize), info.pslot, info.generation}; }
    };
    std::vector<UsedSlot> candidates;
    io::Mapping bounce;  // O_DIRECT-aligned staging for one batch
    std::vector<Item> items;
    // Slots counted as skipped (freed concurrently): each counted once even if a
    // later pass sees its bit again before the concurrent free clears it, and
    // uncounted again if a later pass moves, brings back or loses it after all.
    std::unordered_set<std::uint32_t> skipped;
    // Force::no: slots that could not be read, and why (left in place, reported).
    std::unordered_map<std::uint32_t, Error> unreadable;
    // Held slots moved so far (swap/README.md#held-vslots), told to the observer at the end.
    std::vector<HeldSlotMove> held_moves;
    // Handover: the snapshot-only vslots that stay on the device (never moved).
    std::unordered_set<std::uint32_t> kept;
};

Result<SwapoffReport> SwapPool::swapoff(const std::filesystem::path& path, io::Ring& ring,
                                        std::function<void(SwapoffProgress)> progress, Force force,
                                        const Handover* handover) {
    const auto start = std::chrono::steady_clock::now();
    const std::string key = resolve_name(path);  // any name of the device

    SwapDevice* dev = nullptr;
    SwapDeviceRef self;
    std::uint64_t used_here = 0;
    {
        // Exclusive: no allocation runs while we pick the device, so the refusal
        // below is decided on a consistent picture.
        std::unique_lock lock(devices_mutex_);
        dev = find_locked(key);
        if (dev == nullptr) return make_error(Errc::no_such_device, "swapoff: not a swap device", "device " + key);
        if (!dev->begin_removal()) {
            return make_error(Errc::device_busy, "swapoff: already being removed", "device " + key);
        }
        dev->get();
        self = SwapDeviceRef(dev);
        used_here = dev->usage().used_slots;
    }
    RemovalGuard guard(dev);
    Batch batch;
    struct EndHandover {
        SwapPool* pool;
        DeviceId dev;
        ~EndHandover() {
            if (pool != nullptr) pool->end_handover(dev);
        }
    } end_handover_guard{nullptr, dev->id()};
    if (handover != nullptr) {
        end_handover_guard.pool = this;
        SWV_TRY(begin_handover(*dev, batch, *handover));
        used_here -= std::min<std::uint64_t>(used_here, batch.kept.size());  // they stay
    }
    const std::uint64_t room_elsewhere = free_elsewhere(dev);

    if (used_here > room_elsewhere) {
        // Asked without any swap lock held: the sink takes guest memory locks.
        EvictionSink* sink = sink_.load();
        const std::uint64_t must_come_back = used_here - room_elsewhere;
        if (sink == nullptr || must_come_back > sink->bring_back_capacity()) {
            return make_error(Errc::would_not_fit, "swapoff refused up front, nothing changed", "device " + key);
        }
        // Per owner: a page whose VM has no room must go to another device, and at
        // most the pages whose VM has room can come back.
        std::uint64_t without_room = 0;
        std::uint64_t with_room = 0;
        std::uint64_t cursor = 0;
        std::vector<UsedSlot> used(config_.swapoff_batch_pages);
        for (std::size_t n; (n = dev->scan_used(cursor, used)) != 0;) {
            for (std::size_t k = 0; k < n; ++k) {
                VSlotInfo info = table_.lookup(used[k].vslot);
                if (used[k].vslot == kNoVSlot || info.state == VSlotState::free) continue;
                if (batch.kept.contains(used[k].vslot.value())) continue;  // handover: stays
                // A held slot never comes back into a VM: it needs room elsewhere.
                if (is_held(used[k].vslot, info.owner) || sink->bring_back_room(info.owner) == 0) without_room++;
                else with_room++;
            }
        }
        if (without_room > room_elsewhere || must_come_back > with_room) {
            return make_error(Errc::would_not_fit, "swapoff refused up front, nothing changed",
                              "device " + key + ": " + std::to_string(without_room) +
                                  " pages belong to VMs with no room to take them back, " +
                                  std::to_string(with_room) + " to VMs with room, " + std::to_string(room_elsewhere) +
                                  " free slots on other devices");
        }
    }

    dev->wait_writes_done();
    const std::uint64_t used_now = dev->usage().used_slots;
    const std::uint64_t total = used_now - std::min<std::uint64_t>(used_now, batch.kept.size());

    // Whatever happens next, persisted references learn where their slots went.
    struct NotifyMoves {
        SwapPool& pool;
        Batch& batch;
        ~NotifyMoves() { pool.notify_held_moves(batch.held_moves); }
    } notify_moves{*this, batch};
    batch.candidates.resize(config_.swapoff_batch_pages);
    batch.bounce = SWV_TRY(io::Mapping::anonymous(std::size_t{config_.swapoff_batch_pages} * kSlotSize));
    SwapoffReport report{0, 0, 0, 0.0};
    auto done = [&] {
        return report.pages_moved + report.pages_brought_back + report.pages_skipped + report.pages_lost +
               batch.unreadable.size();
    };

    for (int stalled = 0;;) {
        const std::uint64_t done_before = done();
        std::uint64_t cursor = 0;
        for (;;) {
            std::size_t n = dev->scan_used(cursor, batch.candidates);
            if (n == 0) break;
            SWV_TRY(swapoff_batch(*dev, ring, batch, std::span(batch.candidates).first(n), report, force));
            if (progress) progress(SwapoffProgress{done(), std::max(total, done())});
        }
        const std::uint64_t left = dev->usage().used_slots;
        if (left == 0) break;
        if (handover != nullptr && only_kept_left(*dev, batch)) break;
        if (done() == done_before) {
            // Nothing moved in a whole pass: if what is left is only unreadable slots,
            // this is the end (Force::no); else frees are still in progress.
            std::uint64_t unreadable_left = 0;
            std::uint64_t scan = 0;
            for (std::size_t n; (n = dev->scan_used(scan, batch.candidates)) != 0;) {
                for (std::size_t k = 0; k < n; ++k) unreadable_left += batch.unreadable.contains(batch.candidates[k].slot.value());
            }
            if (unreadable_left != 0 && unreadable_left == left) {
                const auto first = std::min_element(batch.unreadable.begin(), batch.unreadable.end(),
                                                    [](const auto& a, const auto& b) { return a.first < b.first; });
                return make_error(Errc::unreadable_slots, "swapoff refused, every readable page moved",
                                  "device " + key + ": " + std::to_string(unreadable_left) +
                                      " unreadable slots stay on it (first: " + first->second.message() + ")");
            }
            if (++stalled > kMaxStalledPasses) {
                return make_error(Errc::device_busy, "swapoff: used slots do not drain", "device " + key);
            }
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        } else {
            stalled = 0;
        }
    }
    if (handover != nullptr) SWV_TRY(finish_handover(*dev, *handover));
    std::unique_ptr<SwapDevice> owned;
    {
        std::unique_lock lock(devices_mutex_);
        SWV_ASSERT(dev->usage().used_slots == 0, "swapoff: slot allocated on a removing device");
        std::erase(by_priority_, dev);
        uuids_.erase(dev->id().value());
        owned = std::move(devices_[dev->id().value()]);
    }
    guard.cancel();
    self.reset();
    // No new reference can appear (the device is unpublished); wait for readers that
    // took one before (swap/README.md#removal).
    const DeviceId gone = owned->id();
    owned->wait_refs_drained();
    owned.reset();
    // A remote device's lease is released now that nothing of the pool uses it.
    LeaseKeeper* keeper = nullptr;
    {
        std::lock_guard leases(leases_mutex_);
        keeper = leases_.get();
    }
    if (keeper != nullptr) keeper->detach(gone);

    report.elapsed_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (progress) progress(SwapoffProgress{done(), std::max(total, done())});
    return report;
}

Result<void> SwapPool::swapoff_batch(SwapDevice& dev, io::Ring& ring, Batch& batch,
                                     std::span<const UsedSlot> candidates, SwapoffReport& report, Force force,
                                     Move move) {
    SWV_ASSERT(move == Move::swapoff || force == Force::no, "demotion never loses a page");
    auto skip = [&](SlotIdx slot) {
        if (batch.skipped.insert(slot.value()).second) report.pages_skipped++;
    };
    // A final outcome for a slot: if an earlier pass counted it skipped, it is not
    // any more (each slot counted once).
    auto settled = [&](SlotIdx slot, std::uint64_t& counter) {
        if (batch.skipped.erase(slot.value()) != 0) report.pages_skipped--;
        counter++;
    };
    auto changed = [&](const Batch::Item& item) {
        VSlotInfo now = table_.lookup(item.vslot);
        return now.state != VSlotState::valid || now.generation != item.info.generation ||
               !(now.pslot == item.info.pslot);
    };

    // 1. Reverse map -> descriptor: keep the slots whose vslot still points here.
    batch.items.clear();
    for (const UsedSlot& c : candidates) {
        if (batch.unreadable.contains(c.slot.value())) continue;  // Force::no: reported at the end
        if (batch.kept.contains(c.vslot.value())) continue;       // handover: stays on the device
        VSlotInfo info = table_.lookup(c.vslot);
        if (c.vslot == kNoVSlot || info.state != VSlotState::valid || !(info.pslot == PSlot{dev.id(), c.slot})) {
            skip(c.slot);  // being freed: its bit clears when the free completes
            continue;
        }
        std::byte* buf = batch.bounce.data() + batch.items.size() * kSlotSize;
        batch.items.push_back(Batch::Item{c.slot, c.vslot, info, buf, true, std::nullopt});
    }
    if (batch.items.empty()) return {};

    // 2. Read the old slots: slots ascending, staging contiguous, so runs merge.
    std::vector<PageIo> ios(batch.items.size());
    for (std::size_t k = 0; k < batch.items.size(); ++k) {
        ios[k] = PageIo{&dev.block(), batch.items[k].old_slot, batch.items[k].buf};
    }
    std::vector<std::optional<Errc>> errors(ios.size());
    run_page_io(ring, io::IoKind::read, ios, config_.max_run_pages, errors);
    // A failed run says nothing about which of its slots is bad: read those pages
    // again one by one, so one bad sector costs one page, not a whole run.
    std::vector<std::size_t> failed;
    for (std::size_t k = 0; k < errors.size(); ++k)
        if (errors[k]) failed.push_back(k);
    if (!failed.empty()) {
        std::vector<PageIo> again(failed.size());
        std::vector<std::optional<Errc>> again_errors(failed.size());
        for (std::size_t f = 0; f < failed.size(); ++f) again[f] = ios[failed[f]];
        run_page_io(ring, io::IoKind::read, again, 1, again_errors);
        for (std::size_t f = 0; f < failed.size(); ++f) errors[failed[f]] = again_errors[f];
    }
    for (std::size_t k = 0; k < batch.items.size(); ++k) {
        Batch::Item& item = batch.items[k];
        if (!errors[k] && page_checksum(item.buf) == item.info.checksum) continue;
        item.live = false;
        if (changed(item)) {
            skip(item.old_slot);  // freed meanwhile: nothing to move
            continue;
        }
        // Never move (or keep serving as good) data we cannot vouch for. The slot is
        // quarantined; a read error was counted by the device's IoWatch already.
        if (!errors[k]) dev.note_checksum_error();
        dev.quarantine(item.old_slot);
        const std::string where = slot_context(dev.path(), item.old_slot, item.vslot);
        Error why = errors[k] ? Error{make_error_code(*errors[k]), "swapoff: reading a used slot failed", where}
                              : Error{make_error_code(Errc::checksum_mismatch), "swapoff: used slot fails its checksum",
                                      where};
        // A held slot is no VM's page to lose: it stays, reported, even with Force::yes.
        if (force == Force::no || is_held(item.vslot, item.info.owner))
            batch.unreadable.emplace(item.old_slot.value(), std::move(why));
        else item.unreadable = std::move(why);
    }

    // 3. While the other devices cannot take everything left, bring pages back whose
    //    VM has room now (asked per page: each bring-back uses some of it), so the
    //    room elsewhere is kept for pages of VMs that have none.
    //    Demotion brings nothing back: it moves what fits below and leaves the rest.
    EvictionSink* sink = move == Move::swapoff ? sink_.load() : nullptr;
    if (sink != nullptr) {
        const std::uint64_t left = dev.usage().used_slots;
        const std::uint64_t stuck = force == Force::no ? batch.unreadable.size() : 0;
        const std::uint64_t room = free_elsewhere(&dev);
        std::uint64_t need_back = left > stuck + room ? left - stuck - room : 0;
        for (Batch::Item& item : batch.items) {
            if (need_back == 0) break;
            if (!item.live || is_held(item.vslot, item.info.owner) || sink->bring_back_room(item.info.owner) == 0)
                continue;
            item.live = false;
            const SlotCopy copy = item.copy();
            Result<bool> brought = sink->bring_back(item.info.owner, item.vslot, &copy, ring);
            if (!brought && brought.error().code == make_error_code(Errc::would_not_fit)) {
                item.live = true;  // its VM filled up meanwhile: place it below
                continue;
            }
            if (!brought) {
                return std::unexpected(std::move(brought.error())
                                           .with_context("swapoff of device " + dev.path() + ", vslot " +
                                                         std::to_string(item.vslot.value())));
            }
            need_back--;
            if (*brought) settled(item.old_slot, report.pages_brought_back);
            else skip(item.old_slot);
        }
    }

    // 4. New slots on the other devices (this one is removing: never chosen; a
    //    demoted tier is active, so it is passed over by name). Memory tiers are
    //    never targets: a page moved is cold, and a tier could refuse it
    //    (swap/README.md#tiers).
    std::vector<const SwapDevice*> excluded;
    {
        std::shared_lock lock(devices_mutex_);
        excluded = memory_tiers_locked();
    }
    excluded.push_back(&dev);
    std::vector<std::size_t> live;
    std::vector<VSlot> vslots;
    for (std::size_t k = 0; k < batch.items.size(); ++k) {
        if (!batch.items[k].live) continue;
        live.push_back(k);
        vslots.push_back(batch.items[k].vslot);
    }
    std::vector<Placement> placements(live.size());
    std::vector<Reservation> reservations;
    const std::size_t placed = allocate_pslots(vslots, placements, reservations, excluded);

    // 5. Write them (allocation order: slots ascend per target device, and the
    //    staging of consecutive live items is contiguous, so runs merge).
    ios.resize(placed);
    for (std::size_t j = 0; j < placed; ++j) {
        ios[j] = PageIo{&placements[j].device->block(), placements[j].slot, batch.items[live[j]].buf};
    }
    errors.assign(placed, std::nullopt);
    run_page_io(ring, io::IoKind::write, ios, config_.max_run_pages, errors);

    // 6. Switch each descriptor iff its generation (and place) is unchanged; the old
    //    slot is freed only after the switch, and cannot be handed out again while
    //    the device is removing, so a reader still holding the old place reads good data.
    std::optional<std::string> write_failed;  // where the first failed write went
    std::vector<SlotIdx> old_slots;
    for (std::size_t j = 0; j < placed; ++j) {
        Batch::Item& item = batch.items[live[j]];
        const Placement& to = placements[j];
        if (errors[j]) {
            if (!write_failed) write_failed = slot_context(to.device->path(), to.slot, item.vslot);
            to.device->quarantine(to.slot);
            to.device->free_slots(std::span(&to.slot, 1));
            continue;
        }
        if (table_.switch_pslot(item.vslot, item.info.generation, PSlot{dev.id(), item.old_slot},
                                PSlot{to.device->id(), to.slot})) {
            if (is_held(item.vslot, item.info.owner)) {
                batch.held_moves.push_back(HeldSlotMove{item.vslot, uuid_of(dev.id()).value_or(DeviceUuid{}), item.old_slot,
                                                        uuid_of(to.device->id()).value_or(DeviceUuid{}), to.slot});
            }
            old_slots.push_back(item.old_slot);
            settled(item.old_slot, report.pages_moved);
        } else {
            to.device->free_slots(std::span(&to.slot, 1));  // lost to a concurrent free
            skip(item.old_slot);
        }
    }
    dev.free_slots(old_slots);
    reservations.clear();  // ends the pending writes on the targets
    if (write_failed) return make_error(Errc::io_failed, "swapoff: writing a moved slot failed", *write_failed);

    // 7. Force::yes: the pages whose slots cannot be read become lost pages.
    for (Batch::Item& item : batch.items) {
        if (!item.unreadable) continue;
        if (sink == nullptr) {
            return make_error(Errc::unreadable_slots, "swapoff --force: no guest memory to hand the lost page to",
                              item.unreadable->context);
        }
        bool lost = SWV_TRY(with_context(sink->lose(item.info.owner, item.vslot, *item.unreadable),
                                         "swapoff of device " + dev.path() + ", vslot " +
                                             std::to_string(item.vslot.value())));
        if (lost) settled(item.old_slot, report.pages_lost);
        else skip(item.old_slot);
    }

    // 8. No room anywhere for the rest: bring those pages back into guest memory
    //    (swapoff), or leave them where they are (demotion).
    if (move == Move::demote) return {};
    for (std::size_t j = placed; j < live.size(); ++j) {
        const Batch::Item& item = batch.items[live[j]];
        if (is_held(item.vslot, item.info.owner)) {
            // Never brought into a VM (other VMs or snapshots refer to it): it stays
            // here, readable, and the device stays in the pool.
            return make_error(Errc::held_slot, "swapoff: no room on other devices for a slot a snapshot holds",
                              slot_context(dev.path(), item.old_slot, item.vslot));
        }
        if (sink == nullptr) {
            return make_error(Errc::would_not_fit, "swapoff: other devices filled up and there is no eviction sink",
                              "device " + dev.path());
        }
        const SlotCopy copy = item.copy();
        bool brought = SWV_TRY(with_context(sink->bring_back(item.info.owner, item.vslot, &copy, ring),
                                            "swapoff of device " + dev.path() + ", vslot " +
                                                std::to_string(item.vslot.value())));
        if (brought) settled(item.old_slot, report.pages_brought_back);
        else skip(item.old_slot);
    }
    return {};
}

// Demotion: the slot migration above, on the coldest objects of a memory tier that
// stays active (swap/README.md#tiers).
Result<std::uint64_t> SwapPool::demote_device(io::Ring& ring, DeviceId id, std::uint64_t pages) {
    SwapDeviceRef dev = get_swap_device(id);
    if (!dev || dev->memory() == nullptr) return make_error(Errc::no_such_device, "demote: not a memory tier");
    MemoryStore& store = *dev->memory();
    // One demotion per tier at a time; a writer that finds one running leaves it be.
    std::unique_lock running(store.demotion_mutex(), std::try_to_lock);
    if (!running.owns_lock()) return 0;
    if (dev->usage().state != DeviceState::active) return 0;  // swapoff moves it all anyway
    // Nothing below has room: do not read (decompress) a batch only to put it back,
    // which every write_out would otherwise do while the tier stays full.
    const std::uint64_t room = free_elsewhere(dev.get());
    const std::uint64_t target = std::min(pages != 0 ? pages : store.excess_over_low(), room);
    if (target == 0) return 0;

    Batch batch;
    batch.bounce = SWV_TRY(io::Mapping::anonymous(std::size_t{config_.swapoff_batch_pages} * kSlotSize));
    std::uint64_t moved = 0;
    std::size_t skip = 0;  // oldest objects a batch could not move (being written, unreadable)
    while (moved < target) {
        const std::vector<SlotIdx> slots = store.oldest(skip, std::min<std::uint64_t>(config_.swapoff_batch_pages, target - moved));
        if (slots.empty()) break;
        batch.candidates.clear();
        for (SlotIdx s : slots) batch.candidates.push_back(UsedSlot{s, dev->reverse(s)});
        SwapoffReport report{0, 0, 0, 0.0};
        batch.skipped.clear();
        Result<void> r = swapoff_batch(*dev.get(), ring, batch, batch.candidates, report, Force::no, Move::demote);
        notify_held_moves(batch.held_moves);
        SWV_TRY(r);
        moved += report.pages_moved;
        store.note_demoted(report.pages_moved);
        if (report.pages_moved == 0) break;  // nothing below has room, or nothing movable
        skip += slots.size() - report.pages_moved;
    }
    return moved;
}

// ---- Handover (swap/README.md#handover) ----

Result<void> SwapPool::begin_handover(SwapDevice& dev, Batch& batch, const Handover& handover) {
    const std::string name = dev.path();
    if (dev.memory() != nullptr)
        return make_error(Errc::device_busy, "swapoff --handover: a memory tier cannot be handed over",
                          "device " + name + " (its bytes live in this process)");
    const DeviceUuid uuid = uuid_of(dev.id()).value();  // dev is ours until removed
    {
        // From here no hold() of a vslot on dev succeeds: no new snapshot, restore or
        // clone can share a page there, so what is held now is all there will be.
        std::lock_guard lock(refs_mutex_);
        handing_over_.push_back(dev.id().value());
    }
    // The snapshot-only vslots stay; a page a VM shares with a snapshot (a snapshot
    // taken without --stop of a VM that still runs) cannot: it would have to be both
    // moved for the VM and left for the snapshot.
    std::uint64_t shared = 0;
    std::uint16_t shared_vm = 0;
    std::uint64_t cursor = 0;
    std::vector<UsedSlot> used(config_.swapoff_batch_pages);
    for (std::size_t n; (n = dev.scan_used(cursor, used)) != 0;) {
        for (std::size_t k = 0; k < n; ++k) {
            const VSlot v = used[k].vslot;
            if (v == kNoVSlot) continue;
            const VSlotInfo info = table_.lookup(v);
            if (info.state != VSlotState::valid || !(info.pslot == PSlot{dev.id(), used[k].slot})) continue;
            if (info.owner == kSnapshotOwner) {
                batch.kept.insert(v.value());
            } else if (extra_refs(v) != 0) {
                if (shared++ == 0) shared_vm = owner_group(info.owner);
            }
        }
    }
    if (shared != 0)
        return make_error(Errc::held_slot, "swapoff --handover refused, nothing changed",
                          "device " + name + ": " + std::to_string(shared) +
                              " swapped pages are shared by a running VM (id " + std::to_string(shared_vm) +
                              ") and a snapshot of it; stop that VM first (or snapshot it with --stop)");
    std::vector<VSlot> kept;
    kept.reserve(batch.kept.size());
    for (std::uint32_t v : batch.kept) kept.push_back(VSlot(v));
    std::sort(kept.begin(), kept.end(), [](VSlot a, VSlot b) { return a.value() < b.value(); });
    if (handover.check) SWV_TRY(handover.check(uuid, kept));
    return {};
}

void SwapPool::end_handover(DeviceId dev) {
    std::lock_guard lock(refs_mutex_);
    std::erase(handing_over_, dev.value());
}

bool SwapPool::only_kept_left(const SwapDevice& dev, Batch& batch) const {
    std::uint64_t cursor = 0;
    for (std::size_t n; (n = dev.scan_used(cursor, batch.candidates)) != 0;) {
        for (std::size_t k = 0; k < n; ++k)
            if (!batch.kept.contains(batch.candidates[k].vslot.value())) return false;
    }
    return true;
}

Result<void> SwapPool::finish_handover(SwapDevice& dev, const Handover& handover) {
    const DeviceUuid uuid = uuid_of(dev.id()).value();  // dev is ours until removed
    if (handover.release) handover.release(uuid);
    // Every reference the check was told of is dropped now; frees complete within
    // microseconds.
    for (int pass = 0; dev.usage().used_slots != 0; ++pass) {
        if (pass > kMaxStalledPasses) {
            // The check matched the holders to the kept vslots, so this is a broken
            // promise of the caller; the device stays in the pool (nothing is lost:
            // the slots still used are still valid).
            return make_error(Errc::held_slot, "swapoff --handover: slots still held after the snapshots let go",
                              "device " + dev.path() + ": " + std::to_string(dev.usage().used_slots) + " slots");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return {};
}

}  // namespace swapvisor::swap
