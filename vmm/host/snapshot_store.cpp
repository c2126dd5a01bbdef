// SnapshotStore: see snapshot_store.hpp.
#include "vmm/host/snapshot_store.hpp"

#include <algorithm>
#include <span>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "swap/swap_header.hpp"

namespace swapvisor::vmm {

namespace fs = std::filesystem;

Result<fs::path> snapshot_key(const fs::path& dir) {
    std::error_code ec;
    fs::path key = fs::canonical(dir, ec);
    if (ec) return errno_error("snapshot directory", ec.value(), dir.string());
    return key;
}

std::size_t SnapshotStore::expect_all(const fs::path& root) {
    std::error_code ec;
    std::vector<fs::path> dirs;
    for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
        std::error_code ec2;
        if (e.is_directory(ec2) && fs::exists(e.path() / "manifest.json", ec2)) dirs.push_back(e.path());
    }
    if (ec) {
        spdlog::error("snapshots: cannot read {}: {}", root.string(), ec.message());
        return 0;
    }
    std::sort(dirs.begin(), dirs.end());
    std::size_t n = 0;
    for (const fs::path& d : dirs) n += expect(d) ? 1 : 0;
    return n;
}

bool SnapshotStore::expect(const fs::path& dir) {
    auto key = snapshot_key(dir);
    if (!key) return false;  // a restore names the missing directory itself
    std::lock_guard lock(mutex_);
    if (auto r = guestmem::expect_snapshot_slots(*key, pool_); !r) {
        spdlog::error("snapshot {}: not loaded: {}", key->string(), r.error().message());
        unavailable_.insert_or_assign(*key, r.error());
        return false;
    }
    expected_.push_back(*key);
    return true;
}

Result<SnapshotStore::LoadState> SnapshotStore::load(const fs::path& dir) {
    const fs::path key = SWV_TRY(snapshot_key(dir));
    std::error_code ec;
    if (!fs::exists(key / guestmem::kMemoryManifest, ec))
        return make_error(control::VmErrc::bad_snapshot, "load snapshot: no memory manifest (not a snapshot)",
                          key.string());
    std::lock_guard lock(mutex_);
    if (loaded_.contains(key)) return make_error(control::VmErrc::bad_snapshot, "load snapshot: loaded already", key.string());
    if (std::find(expected_.begin(), expected_.end(), key) != expected_.end())
        return make_error(control::VmErrc::bad_snapshot, "load snapshot: waiting for its swap devices already",
                          key.string());
    if (handed_over_.contains(key))
        return make_error(control::VmErrc::bad_snapshot, "load snapshot",
                          key.string() + ": handed over with its swap device from this swapvisor");
    auto holds = guestmem::snapshot_slot_count(key);
    if (!holds) return std::unexpected(holds.error());
    if (*holds == 0) {
        auto snap = SWV_TRY(guestmem::MemorySnapshot::open(key, &pool_));
        unavailable_.erase(key);
        loaded_.emplace(key, std::move(snap));
        spdlog::info("snapshot {}: loaded (no swap slot)", key.string());
        return LoadState::loaded;
    }
    SWV_TRY(guestmem::expect_snapshot_slots(key, pool_));
    unavailable_.erase(key);
    expected_.push_back(key);
    spdlog::info("snapshot {}: {} slots reserved, waiting for the swapon of its devices", key.string(), *holds);
    return LoadState::waiting;
}

void SnapshotStore::open_all() {
    std::lock_guard lock(mutex_);
    for (const fs::path& d : std::exchange(expected_, {})) {
        auto snap = guestmem::MemorySnapshot::open(d, &pool_);
        if (!snap) {
            // Typically a device that is not attached: the error names its uuid. Its
            // slots stay reserved, so it stays expected (a later swapon adopts them, a
            // restore opens it; snapshot-load must not reserve them a second time).
            spdlog::error("snapshot {}: not loaded, restoring from it is refused: {}", d.string(),
                          snap.error().message());
            unavailable_.insert_or_assign(d, snap.error());
            expected_.push_back(d);
            continue;
        }
        spdlog::info("snapshot {}: loaded ({} pages, {} held slots)", d.string(), (*snap)->pages(),
                     (*snap)->held_vslots());
        loaded_.insert_or_assign(d, std::move(*snap));
    }
}

Result<guestmem::MemorySnapshot*> SnapshotStore::get(const fs::path& dir) {
    std::lock_guard lock(mutex_);
    if (auto it = loaded_.find(dir); it != loaded_.end()) return it->second.get();
    if (auto it = unavailable_.find(dir); it != unavailable_.end()) {
        if (handed_over_.contains(dir)) return std::unexpected(it->second);
        // Try again: the missing device may have been attached since (swapon).
        auto snap = guestmem::MemorySnapshot::open(dir, &pool_);
        if (!snap) return std::unexpected(it->second);
        unavailable_.erase(it);
        std::erase(expected_, dir);
        return loaded_.insert_or_assign(dir, std::move(*snap)).first->second.get();
    }
    auto snap = SWV_TRY(guestmem::MemorySnapshot::open(dir, &pool_));
    std::erase(expected_, dir);  // snapshot-load's, now taken over
    return loaded_.insert_or_assign(dir, std::move(snap)).first->second.get();
}

void SnapshotStore::add(const fs::path& dir, std::unique_ptr<guestmem::MemorySnapshot> snapshot) {
    std::lock_guard lock(mutex_);
    unavailable_.erase(dir);
    handed_over_.erase(dir);
    loaded_.insert_or_assign(dir, std::move(snapshot));
}

std::unique_ptr<guestmem::MemorySnapshot> SnapshotStore::take(const fs::path& dir) {
    std::lock_guard lock(mutex_);
    auto it = loaded_.find(dir);
    if (it == loaded_.end()) return nullptr;
    auto snap = std::move(it->second);
    loaded_.erase(it);
    return snap;
}

bool SnapshotStore::forget_unavailable(const fs::path& dir) {
    std::lock_guard lock(mutex_);
    return unavailable_.erase(dir) != 0;
}

swap::Handover SnapshotStore::handover(const std::string& device, UserOf user_of) {
    swap::Handover h;
    h.check = [this, device, user_of = std::move(user_of)](const swap::DeviceUuid& uuid,
                                                           std::span<const swap::VSlot> kept) -> Result<void> {
        std::vector<std::pair<fs::path, std::vector<swap::VSlot>>> on;
        {
            std::lock_guard lock(mutex_);
            for (const auto& [dir, snap] : loaded_) {
                std::vector<swap::VSlot> held = snap->held_on(uuid);
                if (held.empty()) continue;
                if (snap->refers_beyond(uuid))
                    return make_error(swap::Errc::held_slot, "swapoff --handover refused, nothing changed",
                                      fmt::format("snapshot {} holds pages on {} and on other swap devices: it "
                                                  "cannot move with {} alone (swapoff the others first to gather "
                                                  "its pages there)",
                                                  dir.string(), device, device));
                on.emplace_back(dir, std::move(held));
            }
        }
        // The VM table's lock comes before the store's: asked with ours released.
        std::vector<std::uint32_t> held;
        for (const auto& [dir, vslots] : on) {
            if (std::string user = user_of ? user_of(dir) : std::string(); !user.empty())
                return make_error(control::VmErrc::snapshot_in_use, "swapoff --handover refused, nothing changed",
                                  fmt::format("VM {} was restored from snapshot {}, whose pages are on {}: vm-stop "
                                              "it first",
                                              user, dir.string(), device));
            for (swap::VSlot v : vslots) held.push_back(v.value());
        }
        std::sort(held.begin(), held.end());
        held.erase(std::unique(held.begin(), held.end()), held.end());
        std::vector<std::uint32_t> want;
        for (swap::VSlot v : kept) want.push_back(v.value());
        std::sort(want.begin(), want.end());
        if (held != want)
            return make_error(swap::Errc::held_slot, "swapoff --handover refused, nothing changed",
                              fmt::format("{}: {} slots there are held only by snapshots, {} by the {} snapshots "
                                          "loaded here (one being taken, or one adopted at start and never "
                                          "loaded?): retry, or delete the others",
                                          device, want.size(), held.size(), on.size()));
        return {};
    };
    h.release = [this, device](const swap::DeviceUuid& uuid) { hand_over(uuid, device); };
    return h;
}

void SnapshotStore::hand_over(const swap::DeviceUuid& uuid, const std::string& device) {
    std::vector<std::unique_ptr<guestmem::MemorySnapshot>> gone;
    {
        std::lock_guard lock(mutex_);
        for (auto it = loaded_.begin(); it != loaded_.end();) {
            if (it->second->held_on(uuid).empty()) {
                ++it;
                continue;
            }
            unavailable_.insert_or_assign(
                it->first, Error{make_error_code(control::VmErrc::bad_snapshot), "snapshot",
                                 fmt::format("{}: handed over with swap device {} (uuid {}): restore it on the "
                                             "swapvisor that attached that device",
                                             it->first.string(), device, swap::uuid_text(uuid))});
            handed_over_.insert(it->first);
            spdlog::info("snapshot {}: handed over with swap device {}", it->first.string(), device);
            gone.push_back(std::move(it->second));
            it = loaded_.erase(it);
        }
    }
    // Dropping the references takes swap locks: outside the store's mutex.
    for (auto& snap : gone) snap->release();
}

bool SnapshotStore::handed_over(const fs::path& dir) const {
    std::lock_guard lock(mutex_);
    return handed_over_.contains(dir);
}

control::SnapshotSummary SnapshotStore::summary() const {
    std::lock_guard lock(mutex_);
    control::SnapshotSummary s;
    s.snapshots = loaded_.size();
    for (const auto& [dir, snap] : loaded_) s.held_vslots += snap->held_vslots();
    s.unavailable = unavailable_.size();
    return s;
}

swap::HeldSlotObserver SnapshotStore::observer() {
    return [this](std::span<const swap::HeldSlotMove> moves) {
        std::lock_guard lock(mutex_);
        for (auto& [dir, snap] : loaded_) {
            auto r = snap->apply_moves(moves);
            if (!r)
                spdlog::error("snapshot {}: rewriting its slot references after a swapoff failed: {}", dir.string(),
                              r.error().message());
            else if (*r)
                spdlog::info("snapshot {}: slot references moved by a swapoff", dir.string());
        }
    };
}

}  // namespace swapvisor::vmm
