// VmTable: the VMs a host lists, each with one lifecycle state, and the only place a
// state changes (set_state), so an illegal move is caught where it is made.
//
// The legal moves (legal_transition; anything else aborts):
//   from       to         when
//   creating   running    its build succeeded and its runner thread started
//   creating   (erased)   its build failed, or the host began shutting down meanwhile
//   running    paused     vm-pause
//   paused     running    vm-resume; vm-stop (a paused guest cannot exit by itself)
//   running    ended      the guest exited, or vm-stop / a signal stopped it
//   paused     ended      a signal stopped it (Vm::request_stop wakes parked vCPUs)
//   running    snapshotting  ctl snapshot: the vCPUs were paused (as vm-pause)
//   paused     snapshotting  ctl snapshot of a paused VM
//   snapshotting running  the snapshot is written (or failed): the VM runs on; with
//                         --stop it is then stopped as vm-stop would
//   snapshotting paused   the same, for a VM that was paused before
//   ended      released   serve (Release::when_ended): its runner destroyed the BuiltVm
//   ended      removing   vm-remove under `run` (Release::at_exit: memory kept so far)
//   released   removing   vm-remove
//   removing   (erased)   vm-remove joined the runner and destroyed what was left
//
//  creating  vm-create is building it; its name is taken (a second create of it gets
//            `exists`); every other command gets `busy` (VmErrc::creating).
//  running, paused  its vCPUs run / are parked outside KVM_RUN.
//  snapshotting  ctl snapshot is saving it with the table's mutex released (a memory
//            save may take longer than the 2 s vm-pause holds the mutex); its vCPUs
//            are parked. vm-stop / vm-pause / vm-resume / vm-remove / set-balloon and a
//            second snapshot are refused (VmErrc::snapshotting, reply `busy`); a
//            signal's stop is kept in `pending_stop` and done when the snapshot ends.
//            The runner does not release a VM in this state.
//  ended     the guest exited or was stopped; with Release::when_ended its memory
//            is on its way back to the host (not removable yet).
//  released  its memory, devices and KVM VM are gone; it stays listed with its exit
//            code until vm-remove.
//  removing  vm-remove owns it: its runner is joined, what is left destroyed, the
//            entry erased.
// Clients see creating / running / paused / snapshotting / ended (control::VmState; released and
// removing show as ended).
//
// Threads: every method needs `mutex` held by the caller (the VmHost); `changed` is
// notified on every state change and erase.
#pragma once

#include <condition_variable>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "vmm/control/vm_control.hpp"
#include "vmm/host/built_vm.hpp"
#include "vmm/spec/vm_spec.hpp"
#include "vmm/vm.hpp"

namespace swapvisor::vmm {

enum class Lifecycle { creating, running, paused, snapshotting, ended, released, removing };
const char* lifecycle_name(Lifecycle state);
// The diagram above: may a VM in `from` move to `to`?
bool legal_transition(Lifecycle from, Lifecycle to);
// What a client sees of a state.
control::VmState visible_state(Lifecycle state);

struct VmEntry {
    VmSpec spec;
    Lifecycle state = Lifecycle::creating;
    // The VM itself while it is built and not yet released; reset (under the mutex)
    // by whoever releases it, destroyed outside the mutex.
    std::unique_ptr<BuiltVm> built;
    std::optional<VmEnd> end;  // once ended
    std::thread runner;        // from running on; joined by vm-remove or the host's destructor
    // The snapshot directory (canonical) a restored VM came from; its MemorySnapshot
    // stays loaded (and snapshot-delete refuses it) until this VM is released.
    std::optional<std::filesystem::path> restored_from;
    std::optional<VmEnd> pending_stop;  // a stop asked for while snapshotting
};

class VmTable {
public:
    // Protects: the entries and every VmEntry's fields; Order: before HostMemory's
    // and DeviceStats' own locks (never taken while holding those).
    std::mutex mutex;
    std::condition_variable changed;

    // A new entry in `creating` for spec.name. The caller checked the name is free.
    VmEntry& add(const VmSpec& spec);
    VmEntry* find(const std::string& name) const;
    // Move `entry` to `to`; aborts on a move the diagram does not allow (a bug).
    void set_state(VmEntry& entry, Lifecycle to);
    // Erase an entry in `creating` (its build failed) or `removing`; returns it so
    // the caller destroys it outside the mutex.
    std::unique_ptr<VmEntry> erase(const std::string& name);

    control::VmInfo info(const VmEntry& entry) const;
    template <class F>
    void for_each(F&& f) const {
        for (const auto& [name, entry] : entries_) f(*entry);
    }
    bool empty() const { return entries_.empty(); }
    // Take every entry (the host's destructor, once no VM runs).
    std::map<std::string, std::unique_ptr<VmEntry>> take_all() { return std::exchange(entries_, {}); }

private:
    std::map<std::string, std::unique_ptr<VmEntry>> entries_;
};

// The name of an EndReason in vm-list's end_reason ("debug_exit", "stopped", ...).
const char* end_reason_name(EndReason reason);

}  // namespace swapvisor::vmm
