// VmHost: see vm_host.hpp. Each command takes the table's mutex, checks the VM's
// state, moves it by VmTable::set_state (which refuses an illegal move), and does
// anything slow (a build, a release, joining a runner) with the mutex released.
#include "vmm/host/vm_host.hpp"

#include <algorithm>
#include <fstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "guestmem/snapshot.hpp"
#include "vmm/snapshot/manifest.hpp"

namespace swapvisor::vmm {

namespace {

constexpr std::chrono::milliseconds kPauseBound{2000};

}  // namespace

VmHost::VmHost(const kvm::Kvm& kvm, guestmem::HostMemory& host, control::DeviceStats& stats, Release release)
    : context_{kvm, host, stats}, release_(release), events_(host) {}

VmHost::~VmHost() {
    {
        std::lock_guard lock(table_.mutex);
        shutting_down_ = true;  // a create still building gives up instead of starting a VM
    }
    stop_all(VmEnd{EndReason::stopped, kExitStopped, 0, "the host is shutting down"});
    wait_all();
    std::map<std::string, std::unique_ptr<VmEntry>> doomed;
    {
        std::lock_guard lock(table_.mutex);
        doomed = table_.take_all();
    }
    for (auto& [name, entry] : doomed) {
        if (entry->runner.joinable()) entry->runner.join();
        entry->built.reset();  // Release::at_exit: the memory kept for --stats-json goes now
    }
}

Result<VmEntry*> VmHost::find_settled(const std::string& name, const char* op) const {
    VmEntry* entry = table_.find(name);
    if (entry == nullptr || entry->state == Lifecycle::removing) return make_error(control::VmErrc::no_such_vm, op, name);
    if (entry->state == Lifecycle::creating) return make_error(control::VmErrc::creating, op, name);
    if (entry->state == Lifecycle::snapshotting) return make_error(control::VmErrc::snapshotting, op, name);
    return entry;
}

void VmHost::set_seccomp(sandbox::Seccomp s) {
    context_.seccomp = s;
    if (s == sandbox::Seccomp::off) return;
    // The host-wide workers serve every VM: the reclaim workers scan, write_out and
    // punch (the reclaimer's filter, as each VM's own reclaimer thread had before
    // them); the fault workers resolve faults (the fault service's filter, as each
    // VM's own fault threads had).
    context_.host.set_worker_start_hook([](guestmem::ThreadRole role) {
        const auto cls = role == guestmem::ThreadRole::fault_service ? sandbox::ThreadClass::fault_service
                                                                      : sandbox::ThreadClass::reclaimer;
        auto r = sandbox::confine_thread(cls);
        SWV_ASSERT(r.has_value(), "cannot confine a host-wide guestmem worker (seccomp)");
    });
}

Result<control::VmInfo> VmHost::start(const VmSpec& spec, SerialPrefix prefix) {
    SWV_TRY(with_context(validate(spec), spec.name));
    return start_built(spec, std::nullopt, [&] { return BuiltVm::build(context_, spec, prefix); });
}

template <class Build>
Result<control::VmInfo> VmHost::start_built(const VmSpec& spec,
                                            const std::optional<std::filesystem::path>& restored_from, Build&& build) {
    // Reserve the name first: two concurrent creates of one name cannot both pass.
    // A restore's entry names its snapshot from here on: snapshot-delete refuses it.
    {
        std::lock_guard lock(table_.mutex);
        if (shutting_down_) return errno_error("vm-create: the host is shutting down", ESHUTDOWN, spec.name);
        if (table_.find(spec.name) != nullptr) return make_error(control::VmErrc::exists, "vm-create", spec.name);
        table_.add(spec).restored_from = restored_from;
    }
    Result<std::unique_ptr<BuiltVm>> built = build();
    // What a failed create leaves to destroy: outside the mutex (a BuiltVm's
    // teardown waits for every VmRef of its memory), after the lock below is gone.
    std::unique_ptr<BuiltVm> doomed_vm;
    std::unique_ptr<VmEntry> doomed_entry;
    std::unique_lock lock(table_.mutex);
    // A shutdown that began while this VM was built: nobody would stop it.
    if (built && shutting_down_) {
        doomed_vm = std::move(*built);
        built = std::unexpected(errno_error("vm-create: the host is shutting down", ESHUTDOWN, spec.name).error());
    }
    if (!built) {
        doomed_entry = table_.erase(spec.name);  // a creating entry is erased by its creator only
        lock.unlock();
        return std::unexpected(std::move(built.error()));
    }
    VmEntry& entry = *table_.find(spec.name);
    entry.built = std::move(*built);
    entry.spec = entry.built->spec();  // with the devices' cmdline entries
    table_.set_state(entry, Lifecycle::running);
    entry.runner = std::thread([this, &entry] { run_vm(entry); });
    control::VmInfo info = table_.info(entry);
    lock.unlock();  // no log line under the mutex: a stalled stderr must not stall vm-list
    spdlog::info("{}: started ({} bytes, {} vCPU{}, resident limit {}, swap quota {}{}{})", spec.name, spec.memory_bytes,
                 spec.vcpus, spec.vcpus == 1 ? "" : "s", spec.resident_limit, spec.swap_quota,
                 spec.balloon ? ", balloon" : "",
                 restored_from ? fmt::format(", restored from {}", restored_from->string()) : std::string());
    return info;
}

void VmHost::run_vm(VmEntry& entry) {
    // entry.built stays until this thread releases it (or the host's destructor,
    // after joining this thread), so it is read here without the mutex.
    BuiltVm& built = *entry.built;
    VmEnd end = built.run();
    {
        // A snapshot in progress still uses the BuiltVm (its vCPUs are parked, so the
        // guest cannot have ended by itself; a stop was kept in pending_stop).
        std::unique_lock lock(table_.mutex);
        table_.changed.wait(lock, [&] { return entry.state != Lifecycle::snapshotting; });
        entry.end = end;
        table_.set_state(entry, Lifecycle::ended);
    }
    // A restored VM leaves the order of its first faults for the next restore of its
    // snapshot (recorded-order prefetch; written once per snapshot).
    if (entry.restored_from) {
        if (auto saved = built.memory().save_working_set(); !saved)
            spdlog::warn("{}: the working set of {} was not saved: {}", entry.spec.name, entry.restored_from->string(),
                         saved.error().message());
    }
    if (end.reason == EndReason::debug_exit)
        spdlog::info("{}: ended: guest exit code {}", entry.spec.name, end.exit_code);
    else
        spdlog::info("{}: ended ({}): {}", entry.spec.name, end_reason_name(end.reason), end.message);
    if (release_ == Release::when_ended) release(entry);
    else built.stop_memory();
}

// The VM has ended: its BuiltVm goes (devices, KVM VM, then guest memory, which
// frees its VSlots: built_vm.hpp) with the mutex released, then it is `released`.
void VmHost::release(VmEntry& entry) {
    std::unique_ptr<BuiltVm> built;
    {
        std::lock_guard lock(table_.mutex);
        built = std::move(entry.built);
    }
    built.reset();
    std::lock_guard lock(table_.mutex);
    table_.set_state(entry, Lifecycle::released);
}

void VmHost::wait_all() {
    std::unique_lock lock(table_.mutex);
    // A VM still being created is not waited for: once `run`'s VMs have ended the
    // control server stops, and its shut_down() undoes a vm-create in progress.
    table_.changed.wait(lock, [this] {
        bool all_ended = true;
        table_.for_each([&](const VmEntry& e) {
            if (e.state == Lifecycle::running || e.state == Lifecycle::paused || e.state == Lifecycle::snapshotting)
                all_ended = false;
        });
        return all_ended;
    });
}

void VmHost::stop_all(const VmEnd& end) {
    std::lock_guard lock(table_.mutex);
    // Every VM ends, including one still being built: its create gives up instead
    // of starting it after the stop (review of the host split).
    shutting_down_ = true;
    table_.for_each([&](const VmEntry& e) {
        if ((e.state == Lifecycle::running || e.state == Lifecycle::paused) && e.built) e.built->vm().request_stop(end);
    });
    // A VM being snapshotted is stopped when its snapshot is done (snapshot_vm).
    std::vector<std::string> snapshotting;
    table_.for_each([&](const VmEntry& e) {
        if (e.state == Lifecycle::snapshotting) snapshotting.push_back(e.spec.name);
    });
    for (const std::string& name : snapshotting) table_.find(name)->pending_stop = end;
}

std::vector<std::pair<std::string, VmEnd>> VmHost::ends() const {
    std::lock_guard lock(table_.mutex);
    std::vector<std::pair<std::string, VmEnd>> out;
    table_.for_each([&](const VmEntry& e) {
        if (e.end) out.emplace_back(e.spec.name, *e.end);
    });
    return out;
}

Result<control::VmInfo> VmHost::create_vm(const VmSpec& request) {
    VmSpec spec = request;
    spec.balloon_stats_interval = balloon_stats_interval_;  // the daemon's setting (no such field in vm-create)
    if (auto_unlimited_ && !spec.auto_limit && spec.resident_limit == 0) spec.auto_limit = true;
    if (!spec.tuning.age_scan && !spec.auto_limit) spec.tuning.age_scan = age_scan_;
    return start(spec, SerialPrefix::name);
}

Result<control::VmInfo> VmHost::stop_vm(const std::string& name, std::chrono::milliseconds timeout) {
    std::unique_lock lock(table_.mutex);
    VmEntry* entry = SWV_TRY(find_settled(name, "vm-stop"));
    // Done once its memory is back (serve) or it has ended (run), or it is gone.
    auto done = [&] {
        VmEntry* e = table_.find(name);
        return e == nullptr || e->state == Lifecycle::released || e->state == Lifecycle::removing ||
               (e->state == Lifecycle::ended && release_ == Release::at_exit);
    };
    if (entry->state == Lifecycle::running || entry->state == Lifecycle::paused) {
        spdlog::info("{}: stopping (forced after {} ms)", name, timeout.count());
        // A paused guest cannot exit by itself: let it run to the end.
        if (entry->state == Lifecycle::paused) {
            entry->built->vm().resume();
            table_.set_state(*entry, Lifecycle::running);
        }
        // The grace period ends early when the host shuts down (shut_down()): a
        // pending vm-stop must not hold the daemon's exit for its timeout.
        table_.changed.wait_for(lock, timeout, [&] { return done() || shutting_down_; });
        if (!done()) {
            VmEntry* e = table_.find(name);
            if (e != nullptr && e->built && (e->state == Lifecycle::running || e->state == Lifecycle::paused))
                e->built->vm().request_stop(
                    VmEnd{EndReason::stopped, kExitStopped, 0,
                          shutting_down_ ? std::string("stopped by vm-stop: the host is shutting down")
                                         : fmt::format("stopped by vm-stop after {} ms", timeout.count())});
        }
    }
    table_.changed.wait(lock, done);
    entry = table_.find(name);
    if (entry == nullptr || entry->state == Lifecycle::removing)
        return make_error(control::VmErrc::no_such_vm, "vm-stop (removed meanwhile)", name);
    return table_.info(*entry);
}

Result<control::VmInfo> VmHost::pause_vm(const std::string& name) {
    std::lock_guard lock(table_.mutex);
    VmEntry* entry = SWV_TRY(find_settled(name, "vm-pause"));
    if (entry->state != Lifecycle::running && entry->state != Lifecycle::paused)
        return make_error(control::VmErrc::not_running, "vm-pause", name);
    if (entry->state == Lifecycle::paused) return table_.info(*entry);
    Vm& vm = entry->built->vm();
    if (!vm.pause(kPauseBound)) {
        vm.resume();
        return errno_error("vm-pause: the vCPUs did not stop in time; the VM runs on", ETIMEDOUT, name);
    }
    table_.set_state(*entry, Lifecycle::paused);
    spdlog::info("{}: paused", name);
    return table_.info(*entry);
}

Result<control::VmInfo> VmHost::resume_vm(const std::string& name) {
    std::lock_guard lock(table_.mutex);
    VmEntry* entry = SWV_TRY(find_settled(name, "vm-resume"));
    if (entry->state != Lifecycle::running && entry->state != Lifecycle::paused)
        return make_error(control::VmErrc::not_running, "vm-resume", name);
    entry->built->vm().resume();
    if (entry->state == Lifecycle::paused) table_.set_state(*entry, Lifecycle::running);
    spdlog::info("{}: resumed", name);
    return table_.info(*entry);
}

Result<void> VmHost::remove_vm(const std::string& name) {
    VmEntry* entry = nullptr;
    {
        std::lock_guard lock(table_.mutex);
        entry = SWV_TRY(find_settled(name, "vm-remove"));
        if (entry->state == Lifecycle::running || entry->state == Lifecycle::paused)
            return make_error(control::VmErrc::running, "vm-remove", name);
        if (entry->state == Lifecycle::ended && release_ == Release::when_ended)
            return make_error(control::VmErrc::running, "vm-remove (memory still being released)", name);
        table_.set_state(*entry, Lifecycle::removing);
    }
    // Still listed (as removing) while the runner is joined and what is left of the
    // VM destroyed: a concurrent vm-create of the name gets `exists` until the erase.
    if (entry->runner.joinable()) entry->runner.join();
    std::unique_ptr<BuiltVm> built;
    std::unique_ptr<VmEntry> doomed;
    {
        std::lock_guard lock(table_.mutex);
        built = std::move(entry->built);  // only under the mutex (vm_table.hpp); destroyed below, outside it
        doomed = table_.erase(name);
    }
    built.reset();
    spdlog::info("{}: removed", name);
    return {};
}

std::vector<control::VmInfo> VmHost::list_vms() const {
    std::lock_guard lock(table_.mutex);
    std::vector<control::VmInfo> out;
    table_.for_each([&](const VmEntry& e) { out.push_back(table_.info(e)); });
    return out;
}

void VmHost::shut_down() {
    {
        std::lock_guard lock(table_.mutex);
        shutting_down_ = true;
    }
    table_.changed.notify_all();
}

Result<std::uint64_t> VmHost::set_balloon(const std::string& name, std::uint64_t bytes) {
    std::lock_guard lock(table_.mutex);
    VmEntry* entry = SWV_TRY(find_settled(name, "set-balloon"));
    if ((entry->state != Lifecycle::running && entry->state != Lifecycle::paused) || !entry->built)
        return make_error(control::VmErrc::not_running, "set-balloon", name);
    std::uint64_t pages = SWV_TRY(entry->built->set_balloon(bytes));
    spdlog::info("{}: balloon target {} pages ({} bytes)", name, pages, pages * 4096);
    return pages;
}

// --- snapshots (docs/SNAPSHOT.md#orchestration) ------------------------------------------

namespace {

namespace fs = std::filesystem;

// What a failed snapshot leaves to remove: the memory side's and the manifest's
// temporaries (".NAME.tmp"), and the directory itself if this snapshot created it
// and it is empty now. Never a file of a snapshot that was there before (refused
// up front) or of another program.
void remove_partial_snapshot(const fs::path& dir, bool created) {
    std::error_code ec;
    for (const char* name : {guestmem::kMemoryManifest, guestmem::kMemoryImage, guestmem::kMemoryPageTable,
                             "manifest.json"})
        fs::remove(dir / (std::string(".") + name + ".tmp"), ec);
    if (created) fs::remove(dir, ec);  // only if empty
}

// The memory side's manifest (memory.json) as the VM manifest's `memory` member.
Result<snapshot::Json> read_memory_manifest(const fs::path& dir) {
    std::ifstream in(dir / guestmem::kMemoryManifest);
    if (!in) return errno_error("reading the memory manifest", errno, (dir / guestmem::kMemoryManifest).string());
    snapshot::Json json = snapshot::Json::parse(in, nullptr, false);
    if (json.is_discarded() || !json.is_object())
        return make_error(control::VmErrc::bad_snapshot, "reading the memory manifest",
                          (dir / guestmem::kMemoryManifest).string());
    return json;
}

}  // namespace

Result<control::SnapshotInfo> VmHost::snapshot_vm(const std::string& name, const fs::path& dir_arg,
                                                  control::AfterSnapshot after) {
    if (snapshots_ == nullptr) return VmControl::snapshot_vm(name, dir_arg, after);
    const auto started = std::chrono::steady_clock::now();
    // 1. Pause (as vm-pause: at most kPauseBound under the mutex), then snapshotting
    //    with the mutex released: saving memory may take longer than that.
    VmEntry* entry = nullptr;
    Lifecycle before = Lifecycle::running;
    {
        std::lock_guard lock(table_.mutex);
        entry = SWV_TRY(find_settled(name, "snapshot"));
        if (entry->state != Lifecycle::running && entry->state != Lifecycle::paused)
            return make_error(control::VmErrc::not_running, "snapshot", name);
        before = entry->state;
        if (before == Lifecycle::running) {
            Vm& vm = entry->built->vm();
            if (!vm.pause(kPauseBound)) {
                vm.resume();
                return errno_error("snapshot: the vCPUs did not stop in time; the VM runs on", ETIMEDOUT, name);
            }
        }
        table_.set_state(*entry, Lifecycle::snapshotting);
    }
    BuiltVm& built = *entry->built;  // kept: the runner does not release a snapshotting VM
    using Clock = std::chrono::steady_clock;
    auto ms_since = [](Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); };
    const double pause_ms = ms_since(started);
    double memory_ms = 0, state_ms = 0;
    guestmem::SaveTimes save_times;

    // 2. Save: vCPUs, VM state, devices, then guest memory; the manifest last.
    std::error_code ec;
    const bool created = !fs::exists(dir_arg, ec);
    std::unique_ptr<guestmem::MemorySnapshot> memory;
    auto save = [&]() -> Result<fs::path> {
        if (fs::exists(dir_arg / "manifest.json", ec))
            return make_error(control::VmErrc::bad_snapshot, "snapshot: the directory holds a snapshot already",
                              dir_arg.string());
        fs::create_directories(dir_arg, ec);
        if (ec) return errno_error("snapshot: create the directory", ec.value(), dir_arg.string());
        const fs::path dir = SWV_TRY(snapshot_key(dir_arg));
        SaveMemory save_memory = [&](guestmem::GuestMemory& guest) -> Result<snapshot::Json> {
            const auto t = Clock::now();
            memory = SWV_TRY(guest.save(dir));
            memory_ms = ms_since(t);
            return read_memory_manifest(dir);
        };
        const auto t = Clock::now();
        snapshot::Manifest manifest = SWV_TRY(built.save_state(save_memory));
        SWV_TRY(with_context(snapshot::write_manifest(dir, manifest), dir.string()));
        state_ms = ms_since(t) - memory_ms;
        return dir;
    };
    Result<fs::path> saved = save();
    control::SnapshotInfo info{.vm = name, .stopped = after == control::AfterSnapshot::stop};
    if (saved) {
        info.dir = *saved;
        const guestmem::SnapshotCounts& c = memory->counts();
        info.image_pages = c.image;
        info.swapped_pages = c.swapped;
        info.zero_pages = c.zero;
        info.lost_pages = c.lost;
        info.bytes_written = c.bytes_written;
        save_times = memory->save_times();
        snapshots_->add(*saved, std::move(memory));
    } else {
        // No half snapshot: the memory side's files (and its slot references) go,
        // then the temporaries; the VM runs on as before.
        if (memory) {
            if (auto d = guestmem::delete_memory_snapshot(std::move(memory)); !d)
                spdlog::warn("{}: removing the failed snapshot's memory files: {}", name, d.error().message());
        }
        remove_partial_snapshot(dir_arg, created);
    }

    // 3. Back to the state before (resume), or stop (--stop); a signal's stop that
    //    came meanwhile is done now.
    std::optional<VmEnd> stop;
    {
        std::lock_guard lock(table_.mutex);
        table_.set_state(*entry, before);
        stop = std::exchange(entry->pending_stop, std::nullopt);
        if (!stop && saved && after == control::AfterSnapshot::stop)
            stop = VmEnd{EndReason::stopped, kExitStopped, 0, "stopped after its snapshot (snapshot --stop)"};
        if (!stop && !saved) info.stopped = false;
        if (stop) {
            if (before == Lifecycle::paused) table_.set_state(*entry, Lifecycle::running);
            entry->built->vm().request_stop(*stop);
        } else if (before == Lifecycle::running) {
            entry->built->vm().resume();
        }
    }
    info.elapsed_ms = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count());
    if (!saved) {
        spdlog::warn("{}: snapshot into {} failed, the VM {}: {}", name, dir_arg.string(),
                     stop ? "is stopped" : "runs on", saved.error().message());
        return std::unexpected(std::move(saved.error()));
    }
    const guestmem::SaveTimes& st = save_times;
    spdlog::info("{}: snapshot {} ({} image, {} swapped by reference, {} zero pages; {} bytes, {} ms: pause {:.1f}, "
                 "memory {:.1f} (walk {:.1f}, image fsync {:.1f}, table image {:.1f}, files {:.1f}), vCPUs, devices "
                 "and manifest {:.1f}){}",
                 name, info.dir.string(), info.image_pages, info.swapped_pages, info.zero_pages, info.bytes_written,
                 info.elapsed_ms, pause_ms, memory_ms, st.walk_ms, st.image_sync_ms, st.table_image_ms, st.files_ms,
                 state_ms, stop ? ", stopped" : "");
    return info;
}

Result<control::VmInfo> VmHost::restore(const control::RestoreRequest& request, SerialPrefix prefix) {
    // Time to first instruction is counted from here (docs/SNAPSHOT.md#first-insn).
    const auto requested = FirstEntry::Clock::now();
    if (snapshots_ == nullptr) return VmControl::restore_vm(request);
    if (auto why = check_name(request.name); !why.empty())
        return make_error(control::VmErrc::bad_spec, "restore", fmt::format("field \"name\": {}", why));
    const fs::path dir = SWV_TRY(with_context(snapshot_key(request.dir), "restore"));
    // The manifest first (strict; names what is wrong): nothing is reserved yet.
    snapshot::Manifest manifest = SWV_TRY(with_context(snapshot::read_manifest(dir), "restore"));
    VmSpec spec = manifest.spec;
    spec.name = request.name;
    spec.serial_log = request.serial_log;
    spec.balloon_stats_interval = balloon_stats_interval_;
    if (!spec.tuning.age_scan && !spec.auto_limit) spec.tuning.age_scan = age_scan_;
    bool fill = true;
    if (request.fill) {
        fill = *request.fill;
    } else {
        // A clone (another VM restored from this snapshot has not ended) gets no
        // filler unless asked: one per clone would copy the whole image into each.
        std::string sibling;
        {
            std::lock_guard lock(table_.mutex);
            sibling = restored_user_locked(dir);
        }
        if (!sibling.empty()) {
            fill = false;
            spdlog::info("{}: a clone of {} ({} runs from it): no background filler (fill=true asks for one)",
                         request.name, dir.string(), sibling);
        }
    }
    const guestmem::RestoreOptions options{.fill = fill, .prefetch = request.prefetch};
    return start_built(spec, dir, [&]() -> Result<std::unique_ptr<BuiltVm>> {
        // Loaded once per process; its device may be missing (the error names it).
        guestmem::MemorySnapshot* memory = SWV_TRY(with_context(snapshots_->get(dir), request.name));
        RestoreMemory from_snapshot = [&](guestmem::HostMemory& host, const guestmem::MemoryConfig& config,
                                          const snapshot::Json&) { return host.restore_vm(config, *memory, options); };
        return BuiltVm::restore(context_, spec, manifest, prefix, from_snapshot, requested);
    });
}

Result<control::VmInfo> VmHost::restore_vm(const control::RestoreRequest& request) {
    return restore(request, SerialPrefix::name);
}

Result<bool> VmHost::load_snapshot(const fs::path& dir_arg) {
    if (snapshots_ == nullptr) return VmControl::load_snapshot(dir_arg);
    auto state = snapshots_->load(dir_arg);
    if (!state) return std::unexpected(std::move(state.error()).with_context("snapshot-load"));
    return *state == SnapshotStore::LoadState::loaded;
}

Result<void> VmHost::delete_snapshot(const fs::path& dir_arg) {
    if (snapshots_ == nullptr) return VmControl::delete_snapshot(dir_arg);
    const fs::path dir = SWV_TRY(with_context(snapshot_key(dir_arg), "snapshot-delete"));
    std::error_code ec;
    if (!fs::exists(dir / "manifest.json", ec))
        return make_error(control::VmErrc::bad_snapshot, "snapshot-delete: no manifest.json (not a snapshot)",
                          dir.string());
    std::unique_ptr<guestmem::MemorySnapshot> memory;
    {
        // Under the table's mutex: no restore of it can start meanwhile (a restore
        // reserves its entry, naming the snapshot, before it loads it).
        std::lock_guard lock(table_.mutex);
        const std::string user = restored_user_locked(dir);
        if (!user.empty())
            return make_error(control::VmErrc::snapshot_in_use, "snapshot-delete",
                              fmt::format("{}: VM {} was restored from it and has not ended (vm-stop it first)",
                                          dir.string(), user));
        memory = snapshots_->take(dir);
    }
    if (!memory && snapshots_->handed_over(dir))
        return make_error(control::VmErrc::bad_snapshot, "snapshot-delete",
                          fmt::format("{}: handed over with its swap device: delete it on the swapvisor that "
                                      "attached that device",
                                      dir.string()));
    if (!memory) {
        // Not loaded (serve without --snapshots, or its device is missing): load it
        // to release its references; a snapshot that cannot be loaded is refused.
        auto opened = guestmem::MemorySnapshot::open(dir, &context_.host.pool());
        if (!opened) return std::unexpected(std::move(opened.error()).with_context("snapshot-delete"));
        memory = std::move(*opened);
        snapshots_->forget_unavailable(dir);
    }
    // The VM manifest first: without it the directory is no snapshot any more.
    fs::remove(dir / "manifest.json", ec);
    if (ec) return errno_error("snapshot-delete: remove", ec.value(), (dir / "manifest.json").string());
    SWV_TRY(with_context(guestmem::delete_memory_snapshot(std::move(memory)), "snapshot-delete"));
    fs::remove(dir, ec);  // only if empty: files of the operator's stay
    spdlog::info("snapshot {}: deleted", dir.string());
    return {};
}

std::string VmHost::restored_user_locked(const fs::path& dir) {
    std::string user;
    table_.for_each([&](const VmEntry& e) {
        if (e.restored_from == dir && e.state != Lifecycle::released && user.empty()) user = e.spec.name;
    });
    return user;
}

swap::Handover VmHost::handover(const std::string& device) {
    if (snapshots_ == nullptr) return default_handover(device);
    // A restore reserves its entry (naming its snapshot) before it holds any slot,
    // and once the handover's check runs no hold on the device succeeds: a restore
    // not seen here fails cleanly.
    return snapshots_->handover(device, [this](const fs::path& dir) {
        std::lock_guard lock(table_.mutex);
        return restored_user_locked(dir);
    });
}

control::SnapshotSummary VmHost::snapshot_summary() const {
    return snapshots_ != nullptr ? snapshots_->summary() : control::SnapshotSummary{};
}

}  // namespace swapvisor::vmm
