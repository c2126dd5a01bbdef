// SnapshotStore: see snapshot_store.hpp.
#include "vmm/host/snapshot_store.hpp"

#include <algorithm>
#include <span>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

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

void SnapshotStore::open_all() {
    std::lock_guard lock(mutex_);
    for (const fs::path& d : std::exchange(expected_, {})) {
        auto snap = guestmem::MemorySnapshot::open(d, &pool_);
        if (!snap) {
            // Typically a device that is not attached: the error names its uuid.
            spdlog::error("snapshot {}: not loaded, restoring from it is refused: {}", d.string(),
                          snap.error().message());
            unavailable_.insert_or_assign(d, snap.error());
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
        // Try again: the missing device may have been attached since (swapon).
        auto snap = guestmem::MemorySnapshot::open(dir, &pool_);
        if (!snap) return std::unexpected(it->second);
        unavailable_.erase(it);
        return loaded_.insert_or_assign(dir, std::move(*snap)).first->second.get();
    }
    auto snap = SWV_TRY(guestmem::MemorySnapshot::open(dir, &pool_));
    return loaded_.insert_or_assign(dir, std::move(snap)).first->second.get();
}

void SnapshotStore::add(const fs::path& dir, std::unique_ptr<guestmem::MemorySnapshot> snapshot) {
    std::lock_guard lock(mutex_);
    unavailable_.erase(dir);
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
