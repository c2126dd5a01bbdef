// VmHost: see vm_host.hpp. Each command takes the table's mutex, checks the VM's
// state, moves it by VmTable::set_state (which refuses an illegal move), and does
// anything slow (a build, a release, joining a runner) with the mutex released.
#include "vmm/host/vm_host.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

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
    return entry;
}

Result<control::VmInfo> VmHost::start(const VmSpec& spec, SerialPrefix prefix) {
    SWV_TRY(with_context(validate(spec), spec.name));
    // Reserve the name first: two concurrent creates of one name cannot both pass.
    {
        std::lock_guard lock(table_.mutex);
        if (shutting_down_) return errno_error("vm-create: the host is shutting down", ESHUTDOWN, spec.name);
        if (table_.find(spec.name) != nullptr) return make_error(control::VmErrc::exists, "vm-create", spec.name);
        table_.add(spec);
    }
    auto built = BuiltVm::build(context_, spec, prefix);
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
    spdlog::info("{}: started ({} bytes, {} vCPU{}, resident limit {}, swap quota {}{})", spec.name, spec.memory_bytes,
                 spec.vcpus, spec.vcpus == 1 ? "" : "s", spec.resident_limit, spec.swap_quota,
                 spec.balloon ? ", balloon" : "");
    return info;
}

void VmHost::run_vm(VmEntry& entry) {
    // entry.built stays until this thread releases it (or the host's destructor,
    // after joining this thread), so it is read here without the mutex.
    BuiltVm& built = *entry.built;
    VmEnd end = built.run();
    {
        std::lock_guard lock(table_.mutex);
        entry.end = end;
        table_.set_state(entry, Lifecycle::ended);
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
            if (e.state == Lifecycle::running || e.state == Lifecycle::paused) all_ended = false;
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

}  // namespace swapvisor::vmm
