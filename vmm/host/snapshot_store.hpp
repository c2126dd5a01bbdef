// SnapshotStore: the memory snapshots this process has loaded, one MemorySnapshot per
// snapshot directory, keyed by its canonical path (docs/SNAPSHOT.md#orchestration).
// One per process because a MemorySnapshot owns one slot reference per swapped page:
// opening one directory twice would claim the adopted references twice. Every VM
// restored from a directory (clones included) uses the one loaded here.
//
// Where they come from: `ctl snapshot` adds what it saved; a restore opens a
// directory on first use; `serve --snapshots ROOT` loads each snapshot under ROOT at
// start (expect_all before the swapons, open_all after). A snapshot that cannot be
// loaded there (its device is missing) is remembered with the error, so a restore
// from it is refused with that error rather than with a generic one.
//
// The held-slot observer (observer()) rewrites every loaded snapshot's references
// when a live swapoff moves them; the pool calls it on the swapoff's thread.
//
// Handover (swapoff --handover, docs/SNAPSHOT.md#handover): the snapshots holding
// slots on the device are unloaded (hand_over) and never reopened by this process;
// their files stay for the daemon that attaches the device.
//
// Threads: every method locks `mutex_`. Order: after VmTable::mutex (the host checks
// which VMs use a snapshot under its table's mutex, then asks the store); the
// pool's observer takes it with no swap lock held (swap_pool.hpp).
#pragma once

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "guestmem/snapshot.hpp"
#include "io/result.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/control/vm_control.hpp"

namespace swapvisor::vmm {

class SnapshotStore {
public:
    explicit SnapshotStore(swap::SwapPool& pool) : pool_(pool) {}
    SnapshotStore(const SnapshotStore&) = delete;
    SnapshotStore& operator=(const SnapshotStore&) = delete;

    // serve --snapshots ROOT, before the swapons: each subdirectory of ROOT that
    // holds a manifest.json has its slots reserved (expect_snapshot_slots). Returns
    // how many; one that fails is logged and remembered as unavailable.
    std::size_t expect_all(const std::filesystem::path& root);
    // The same for one snapshot directory (`run --restore DIR`, before its swapons).
    // False (logged, remembered as unavailable) if its slots cannot be reserved.
    bool expect(const std::filesystem::path& dir);
    // ctl snapshot-load DIR on a running daemon (docs/SNAPSHOT.md#load): the same as
    // expect() for one snapshot, with its error returned: refused if it is loaded or
    // waiting already, was handed over from here, or names a device that is attached
    // (its slots can only be reserved before that device's swapon: after it, a VM may
    // have been given them). A snapshot with no swapped page is opened at once; one
    // with some waits for the swapon of its devices, a restore opening it then.
    enum class LoadState { loaded, waiting };
    Result<LoadState> load(const std::filesystem::path& dir);
    // After the swapons: open each expected snapshot (taking the reserved slots over).
    // One whose device is missing is logged, remembered with its error, and the
    // daemon goes on; its slots stay reserved, so it stays expected (load refuses it).
    void open_all();

    // The loaded snapshot of `dir` (canonical), opened now if it is not loaded yet.
    // Errors: the remembered load error, or MemorySnapshot::open's.
    Result<guestmem::MemorySnapshot*> get(const std::filesystem::path& dir);
    // Keep a snapshot just taken (`ctl snapshot`).
    void add(const std::filesystem::path& dir, std::unique_ptr<guestmem::MemorySnapshot> snapshot);
    // Unload `dir`'s snapshot and hand it over (to delete it); null if none is loaded.
    std::unique_ptr<guestmem::MemorySnapshot> take(const std::filesystem::path& dir);
    // Whether `dir` went with a handed-over device (snapshot-delete is refused here).
    bool handed_over(const std::filesystem::path& dir) const;
    // Whether `dir` is known here, loaded or not (snapshot-delete of an unloadable one).
    bool forget_unavailable(const std::filesystem::path& dir);

    // The hooks of swapoff --handover of `device` (docs/SNAPSHOT.md#handover).
    // check: refused if a loaded snapshot with slots on the device also refers to
    // another device (it could not be restored from this one alone), if `user_of`
    // names a VM restored from one of them that has not ended, or if the slots only
    // snapshots hold there are not exactly those the loaded snapshots hold (a
    // snapshot being taken, one adopted but never loaded). release: those snapshots
    // are unloaded, their references dropped; a restore or snapshot-delete of one
    // here is refused from then on, naming the handover (their files stay: the
    // swapvisor that attaches the device restores from them).
    using UserOf = std::function<std::string(const std::filesystem::path& dir)>;  // "" if none
    swap::Handover handover(const std::string& device, UserOf user_of);

    control::SnapshotSummary summary() const;
    // For SwapPool::set_held_slot_observer.
    swap::HeldSlotObserver observer();

private:
    // handover's release.
    void hand_over(const swap::DeviceUuid& uuid, const std::string& device);

    swap::SwapPool& pool_;
    // Protects: loaded_, unavailable_, expected_; Order: after VmTable::mutex.
    mutable std::mutex mutex_;
    std::map<std::filesystem::path, std::unique_ptr<guestmem::MemorySnapshot>> loaded_;
    std::map<std::filesystem::path, Error> unavailable_;  // serve --snapshots: why it could not be loaded
    std::vector<std::filesystem::path> expected_;         // slots reserved, not opened yet (expect, load; open_all keeps its failures)
    std::set<std::filesystem::path> handed_over_;         // went with a device (hand_over), never reopened here
};

// A snapshot directory as the store keys it: canonical (symlinks, "..", relative
// paths resolved). Errors: the path does not exist.
Result<std::filesystem::path> snapshot_key(const std::filesystem::path& dir);

}  // namespace swapvisor::vmm
