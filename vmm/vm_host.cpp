// VmHost: see vm_host.hpp. The steps of start() are those main.cpp used to run
// inline for each --vm, in the same order; a scope guard undoes a half-built VM.
#include "vmm/vm_host.hpp"

#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "vmm/loader/elf.hpp"
#include "vmm/loader/loader.hpp"

namespace swapvisor::vmm {

namespace {

constexpr std::chrono::milliseconds kPauseBound{2000};

const char* end_reason_name(EndReason reason) {
    switch (reason) {
        case EndReason::debug_exit: return "debug_exit";
        case EndReason::triple_fault: return "triple_fault";
        case EndReason::internal_error: return "internal_error";
        case EndReason::fail_entry: return "fail_entry";
        case EndReason::page_lost: return "page_lost";
        case EndReason::halted: return "halted";
        case EndReason::system_event: return "system_event";
        case EndReason::kvm_error: return "kvm_error";
        case EndReason::stopped: return "stopped";
    }
    return "kvm_error";
}

std::unexpected<Error> bad_field(const char* field, std::string why) {
    return make_error(control::VmErrc::bad_spec, "vm-create", fmt::format("field \"{}\": {}", field, why));
}

// Undo a half-built VM on any early return (STYLE.md §4).
template <class F>
class ScopeGuard {
public:
    explicit ScopeGuard(F f) : f_(std::move(f)) {}
    ~ScopeGuard() {
        if (armed_) f_();
    }
    void cancel() { armed_ = false; }

private:
    F f_;
    bool armed_ = true;
};

}  // namespace

struct VmHost::Hosted {
    cli::VmSpec spec;
    guestmem::GuestMemory* memory = nullptr;  // null once released
    // Declaration order = teardown order reversed: devices (they refer to the Vm's
    // buses) go before the Vm; both before the memory they use (released after).
    std::unique_ptr<Vm> vm;
    std::unique_ptr<devices::DeviceManager> devices;
    std::shared_ptr<devices::VirtioBalloon> balloon;
    std::shared_ptr<devices::VirtioMmio> balloon_transport;
    // Holds the balloon and its transport: reset before either (release, the scope guard).
    std::unique_ptr<devices::BalloonStatsPoller> balloon_poller;
    std::thread runner;
    control::VmState state = control::VmState::running;
    std::optional<VmEnd> end;
    bool released = false;
    bool removing = false;  // a vm-remove owns it (or it is a name reserved by a create)
};

VmHost::VmHost(const kvm::Kvm& kvm, guestmem::HostMemory& host, control::DeviceStats& stats, Release release)
    : kvm_(kvm), host_(host), stats_(stats), release_(release), watcher_([this] { watch(); }) {}

void VmHost::watch() {
    std::map<std::string, std::string> limit_states;  // per VM
    std::map<std::string, std::string> device_states;  // per swap device
    std::unique_lock lock(mutex_);
    while (!closing_) {
        lock.unlock();
        std::map<std::string, std::string> now;
        for (const guestmem::VmRef& vm : host_.vms()) {
            guestmem::MemStats s = vm->stats();
            auto& before = limit_states[s.name];
            if (s.limit_state != before && !(before.empty() && s.limit_state == "held")) {
                if (s.limit_state == "held") spdlog::info("{}: under its limit again", s.name);
                else spdlog::warn("{}: over its limit by {} bytes: {}", s.name, s.overshoot_bytes, s.limit_state);
            }
            before = s.limit_state;
            now[s.name] = s.limit_state;
        }
        std::erase_if(limit_states, [&](const auto& kv) { return !now.contains(kv.first); });
        for (const swap::DeviceStats& d : host_.pool().stats()) {
            std::string state = swap::state_name(d.state);
            auto& before = device_states[d.path];
            if (!before.empty() && state != before) {
                std::string vms;
                for (const auto& [name, st] : now) vms += (vms.empty() ? "" : ", ") + name;
                spdlog::warn("swap device {}: {} -> {}{} (VMs: {})", d.path, before, state,
                             d.failure.empty() ? "" : ": " + d.failure, vms.empty() ? "none" : vms);
            }
            before = state;
        }
        lock.lock();
        changed_.wait_for(lock, std::chrono::milliseconds(500), [this] { return closing_; });
    }
}

VmHost::~VmHost() {
    {
        std::lock_guard lock(mutex_);
        closing_ = true;
    }
    changed_.notify_all();
    watcher_.join();
    stop_all(VmEnd{EndReason::stopped, kExitStopped, 0, "the host is shutting down"});
    wait_all();
    std::map<std::string, std::unique_ptr<Hosted>> doomed;
    {
        std::lock_guard lock(mutex_);
        doomed.swap(vms_);
    }
    for (auto& [name, vm] : doomed) {
        if (vm->runner.joinable()) vm->runner.join();
        if (!vm->released) release(*vm);
    }
}

VmHost::Hosted* VmHost::find(const std::string& name) const {
    auto it = vms_.find(name);
    return it == vms_.end() ? nullptr : it->second.get();
}

control::VmInfo VmHost::info_of(const Hosted& vm) const {
    control::VmInfo info{.name = vm.spec.name, .state = vm.state, .vcpus = vm.spec.vcpus,
                         .memory_bytes = vm.spec.memory_bytes};
    if (vm.end) {
        info.exit_code = vm.end->exit_code;
        info.end_reason = end_reason_name(vm.end->reason);
        info.end_message = vm.end->message;
    }
    return info;
}

Result<control::VmInfo> VmHost::start(const cli::VmSpec& spec, SerialPrefix prefix) {
    // Reserve the name first: two concurrent creates of one name cannot both pass.
    {
        std::lock_guard lock(mutex_);
        if (shutting_down_) return errno_error("vm-create: the host is shutting down", ESHUTDOWN, spec.name);
        if (vms_.contains(spec.name)) return make_error(control::VmErrc::exists, "vm-create", spec.name);
        auto placeholder = std::make_unique<Hosted>();
        placeholder->spec = spec;
        placeholder->state = control::VmState::ended;
        placeholder->released = true;
        placeholder->removing = true;  // not removable while being created
        placeholder->end = VmEnd{EndReason::kvm_error, kExitSetupError, 0, "being created"};
        vms_.emplace(spec.name, std::move(placeholder));
    }
    auto drop_name = [this, name = spec.name] {
        std::lock_guard lock(mutex_);
        vms_.erase(name);
    };
    ScopeGuard unreserve(drop_name);

    auto vm = std::make_unique<Hosted>();
    vm->spec = spec;
    const std::string& name = vm->spec.name;
    if (spec.vcpus > kvm_.max_vcpus())
        return bad_field("vcpus", fmt::format("{} asked, this host's KVM allows at most {}", spec.vcpus, kvm_.max_vcpus()));
    // The kernel is read and validated before any memory is reserved.
    auto image = loader::read_elf(spec.kernel);
    if (!image) return std::unexpected(std::move(image.error()).with_context(name));

    // One fault thread per vCPU: faults from several vCPUs are served at once.
    guestmem::MemoryConfig memory_config{.name = name, .memory_bytes = spec.memory_bytes,
                                         .resident_limit = spec.resident_limit, .fault_threads = spec.vcpus,
                                         .swap_quota = spec.swap_quota};
    if (seccomp_ == sandbox::Seccomp::on) {
        memory_config.on_thread_start = [](guestmem::ThreadRole role) {
            // The writeback thread does what the reclaimer did before it was split off
            // (write_out, punch): the reclaimer's filter.
            const auto cls = role == guestmem::ThreadRole::fault_service ? sandbox::ThreadClass::fault_service
                                                                          : sandbox::ThreadClass::reclaimer;
            auto r = sandbox::confine_thread(cls);
            SWV_ASSERT(r.has_value(), "cannot confine a guestmem thread (seccomp)");
        };
    }
    auto memory = host_.create_vm(memory_config);
    if (!memory) return std::unexpected(std::move(memory.error()).with_context(fmt::format("guest memory of {}", name)));
    vm->memory = *memory;
    ScopeGuard free_memory([this, &vm, &name] {
        vm->balloon_poller.reset();  // stops its thread: it calls into the transport
        vm->devices.reset();  // before the Vm whose buses they are on
        vm->balloon_transport.reset();
        vm->vm.reset();       // before the memory it maps
        stats_.remove(name);
        (void)host_.remove_vm(name);
    });

    // KVM: memslots, vCPUs; then COM1, debug exit and each virtio device.
    VmSpec vm_spec{spec.vcpus, vm->memory->regions()};
    if (seccomp_ == sandbox::Seccomp::on)
        vm_spec.on_vcpu_thread_start = [] { return sandbox::confine_thread(sandbox::ThreadClass::vcpu); };
    auto created = Vm::create(kvm_, vm_spec);
    if (!created) return std::unexpected(std::move(created.error()).with_context(fmt::format("creating VM {}", name)));
    vm->vm = std::move(*created);
    vm->devices = std::make_unique<devices::DeviceManager>(
        vm->vm->pio(), vm->vm->mmio(), [v = vm->vm.get()](std::uint32_t gsi) { return v->irq_line(gsi); }, stats_,
        name);
    devices::SerialSink serial = devices::SerialSink::borrowed(STDOUT_FILENO);
    if (spec.serial_log) {
        auto file = devices::SerialSink::open_file(*spec.serial_log);
        if (!file) return std::unexpected(std::move(file.error()).with_context(fmt::format("{}: serial log", name)));
        serial = std::move(*file);
    } else if (prefix == SerialPrefix::name) {
        serial = std::move(serial).with_prefix("[" + name + "] ");
    }
    SWV_TRY(with_context(vm->devices->add_legacy(std::move(serial)), name));
    if (spec.balloon) {
        vm->balloon = std::make_shared<devices::VirtioBalloon>(*vm->memory, spec.balloon_stats_interval);
        auto transport = vm->devices->add_virtio("balloon", *vm->memory, vm->balloon);
        if (!transport) return std::unexpected(std::move(transport.error()).with_context(name));
        vm->balloon_transport = *transport;
        vm->balloon_poller = std::make_unique<devices::BalloonStatsPoller>(vm->balloon, vm->balloon_transport);
    }
    vm->spec.cmdline = vm->devices->append_cmdline(spec.cmdline);

    // Load the kernel and its PVH boot data; put the BSP at its entry.
    auto boot = loader::load_kernel(*vm->memory, *image, vm->spec.cmdline);
    if (!boot) return std::unexpected(std::move(boot.error()).with_context(name));
    SWV_TRY(with_context(vm->vm->set_boot_entry(boot->entry, boot->start_info_gpa),
                         fmt::format("{}: setting the PVH entry state", name)));
    SWV_TRY(with_context(vm->memory->start(), fmt::format("{}: starting guest memory", name)));

    // Running from here on: nothing to undo.
    Hosted* raw = vm.get();
    {
        std::lock_guard lock(mutex_);
        // A shutdown that began while this VM was built: nobody would stop it.
        if (shutting_down_) return errno_error("vm-create: the host is shutting down", ESHUTDOWN, name);
        vms_[name] = std::move(vm);
        raw->runner = std::thread([this, raw] { run_vm(*raw); });
    }
    free_memory.cancel();
    unreserve.cancel();
    spdlog::info("{}: started ({} bytes, {} vCPU{}, resident limit {}, swap quota {}{})", name, spec.memory_bytes,
                 spec.vcpus, spec.vcpus == 1 ? "" : "s", spec.resident_limit, spec.swap_quota,
                 spec.balloon ? ", balloon" : "");
    std::lock_guard lock(mutex_);
    return info_of(*raw);
}

void VmHost::run_vm(Hosted& vm) {
    VmEnd end = vm.vm->run();
    vm.devices->flush_serial();
    {
        std::lock_guard lock(mutex_);
        vm.end = end;
        vm.state = control::VmState::ended;
    }
    if (end.reason == EndReason::debug_exit)
        spdlog::info("{}: ended: guest exit code {}", vm.spec.name, end.exit_code);
    else
        spdlog::info("{}: ended ({}): {}", vm.spec.name, end_reason_name(end.reason), end.message);
    if (release_ == Release::when_ended) {
        release(vm);
    } else {
        vm.memory->stop();
    }
    changed_.notify_all();
}

// The VM has ended: devices and Vm first (they point into its memory), then the
// memory itself, which frees its VSlots. Checked: HostMemory held exactly this VM
// under its name and removed it; the log line gives the slots its stage-2 table
// referred to just before (the tests check the pool's count falls to 0 at rest).
void VmHost::release(Hosted& vm) {
    std::unique_ptr<Vm> kvm_vm;
    std::unique_ptr<devices::DeviceManager> devices;
    std::shared_ptr<devices::VirtioBalloon> balloon;
    std::shared_ptr<devices::VirtioMmio> transport;
    std::unique_ptr<devices::BalloonStatsPoller> poller;
    guestmem::GuestMemory* memory;
    {
        std::lock_guard lock(mutex_);
        if (vm.released) return;
        memory = vm.memory;
        poller = std::move(vm.balloon_poller);
        devices = std::move(vm.devices);
        transport = std::move(vm.balloon_transport);
        balloon = std::move(vm.balloon);
        kvm_vm = std::move(vm.vm);
        vm.memory = nullptr;
    }
    stats_.remove(vm.spec.name);
    poller.reset();  // joins its thread before the transport and the Vm go
    devices.reset();
    transport.reset();
    kvm_vm.reset();
    balloon.reset();
    std::uint64_t held = 0;
    if (memory != nullptr) {
        memory->stop();
        held = memory->referenced_vslots();
        // The name is still reserved in vms_ (a new VM cannot take it yet), so
        // HostMemory must know it exactly until this call removes it.
        auto removed = host_.remove_vm(vm.spec.name);
        SWV_ASSERT(removed.has_value(), "a VM's guest memory vanished from HostMemory before its release");
    }
    spdlog::info("{}: memory released ({} bytes, {} VSlots freed)", vm.spec.name, vm.spec.memory_bytes, held);
    std::lock_guard lock(mutex_);
    vm.released = true;
}

void VmHost::wait_all() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [this] {
        for (const auto& [name, vm] : vms_)
            if (vm->state != control::VmState::ended) return false;
        return true;
    });
}

void VmHost::stop_all(const VmEnd& end) {
    std::lock_guard lock(mutex_);
    for (auto& [name, vm] : vms_)
        if (vm->vm && vm->state != control::VmState::ended) vm->vm->request_stop(end);
}

std::vector<std::pair<std::string, VmEnd>> VmHost::ends() const {
    std::lock_guard lock(mutex_);
    std::vector<std::pair<std::string, VmEnd>> out;
    for (const auto& [name, vm] : vms_)
        if (vm->end) out.emplace_back(name, *vm->end);
    return out;
}

Result<control::VmInfo> VmHost::create_vm(const control::VmCreateSpec& request) {
    cli::VmSpec spec;
    auto name = cli::parse_vm_name(request.name);
    if (!name) return bad_field("name", name.error().message());
    spec.name = *name;
    if (auto ok = cli::check_kernel_file(request.kernel); !ok) return bad_field("kernel", ok.error().message());
    spec.kernel = request.kernel;
    if (request.memory_bytes == 0 || request.memory_bytes % cli::kGuestMemoryAlign != 0)
        return bad_field("memory", fmt::format("{} bytes is not a non-zero multiple of 2 MiB", request.memory_bytes));
    if (request.memory_bytes > cli::kMaxGuestMemory)
        return bad_field("memory", fmt::format("{} bytes is over the most one VM can map ({} bytes)",
                                               request.memory_bytes, cli::kMaxGuestMemory));
    spec.memory_bytes = request.memory_bytes;
    if (request.cmdline.size() > cli::kMaxCmdline)
        return bad_field("cmdline", fmt::format("{} bytes, at most {} fit the PVH start info", request.cmdline.size(),
                                                cli::kMaxCmdline));
    spec.cmdline = request.cmdline;
    if (request.vcpus == 0 || request.vcpus > cli::kMaxVcpus)
        return bad_field("vcpus", fmt::format("{} is not in 1..{}", request.vcpus, cli::kMaxVcpus));
    spec.vcpus = request.vcpus;
    if (request.resident_limit % 4096 != 0) return bad_field("resident_limit", "not a multiple of 4 KiB");
    spec.resident_limit = request.resident_limit;
    spec.swap_quota = request.swap_quota;
    spec.balloon = request.balloon;
    spec.balloon_stats_interval = balloon_stats_interval_;
    if (request.serial_log) {
        if (auto ok = cli::check_output_file(*request.serial_log); !ok)
            return bad_field("serial_log", ok.error().message());
        spec.serial_log = request.serial_log;
    }
    return start(spec, SerialPrefix::name);
}

Result<control::VmInfo> VmHost::stop_vm(const std::string& name, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    Hosted* vm = find(name);
    if (vm == nullptr) return make_error(control::VmErrc::no_such_vm, "vm-stop", name);
    auto ended = [&] {
        Hosted* v = find(name);
        return v == nullptr || (v->state == control::VmState::ended && v->released) ||
               (v->state == control::VmState::ended && release_ == Release::at_exit);
    };
    if (vm->state != control::VmState::ended) {
        spdlog::info("{}: stopping (forced after {} ms)", name, timeout.count());
        // A paused guest cannot exit by itself: let it run to the end.
        if (vm->state == control::VmState::paused && vm->vm) {
            vm->vm->resume();
            vm->state = control::VmState::running;
        }
        // The grace period ends early when the host shuts down (shut_down()): a
        // pending vm-stop must not hold the daemon's exit for its timeout.
        changed_.wait_for(lock, timeout, [&] { return ended() || shutting_down_; });
        if (!ended()) {
            vm = find(name);
            if (vm != nullptr && vm->vm && vm->state != control::VmState::ended)
                vm->vm->request_stop(VmEnd{EndReason::stopped, kExitStopped, 0,
                                           shutting_down_ ? std::string("stopped by vm-stop: the host is shutting down")
                                                          : fmt::format("stopped by vm-stop after {} ms", timeout.count())});
        }
    }
    changed_.wait(lock, ended);
    vm = find(name);
    if (vm == nullptr) return make_error(control::VmErrc::no_such_vm, "vm-stop (removed meanwhile)", name);
    return info_of(*vm);
}

Result<control::VmInfo> VmHost::pause_vm(const std::string& name) {
    std::lock_guard lock(mutex_);
    Hosted* vm = find(name);
    if (vm == nullptr) return make_error(control::VmErrc::no_such_vm, "vm-pause", name);
    if (vm->state == control::VmState::ended || !vm->vm) return make_error(control::VmErrc::not_running, "vm-pause", name);
    if (!vm->vm->pause(kPauseBound)) {
        vm->vm->resume();
        return errno_error("vm-pause: the vCPUs did not stop in time; the VM runs on", ETIMEDOUT, name);
    }
    vm->state = control::VmState::paused;
    spdlog::info("{}: paused", name);
    return info_of(*vm);
}

Result<control::VmInfo> VmHost::resume_vm(const std::string& name) {
    std::lock_guard lock(mutex_);
    Hosted* vm = find(name);
    if (vm == nullptr) return make_error(control::VmErrc::no_such_vm, "vm-resume", name);
    if (vm->state == control::VmState::ended || !vm->vm) return make_error(control::VmErrc::not_running, "vm-resume", name);
    vm->vm->resume();
    vm->state = control::VmState::running;
    spdlog::info("{}: resumed", name);
    return info_of(*vm);
}

Result<void> VmHost::remove_vm(const std::string& name) {
    std::unique_ptr<Hosted> doomed;
    Hosted* raw = nullptr;
    {
        std::lock_guard lock(mutex_);
        Hosted* vm = find(name);
        if (vm == nullptr || vm->removing) return make_error(control::VmErrc::no_such_vm, "vm-remove", name);
        if (vm->state != control::VmState::ended) return make_error(control::VmErrc::running, "vm-remove", name);
        if (release_ == Release::when_ended && !vm->released)
            return make_error(control::VmErrc::running, "vm-remove (memory still being released)", name);
        raw = vm;
        raw->removing = true;
    }
    // Release while the name is still listed (a concurrent vm-create of it gets
    // `exists`), then drop the entry.
    if (raw->runner.joinable()) raw->runner.join();
    release(*raw);
    {
        std::lock_guard lock(mutex_);
        doomed = std::move(vms_.extract(name).mapped());
    }
    spdlog::info("{}: removed", name);
    return {};
}

std::vector<control::VmInfo> VmHost::list_vms() const {
    std::lock_guard lock(mutex_);
    std::vector<control::VmInfo> out;
    for (const auto& [name, vm] : vms_) out.push_back(info_of(*vm));
    return out;
}

void VmHost::shut_down() {
    {
        std::lock_guard lock(mutex_);
        shutting_down_ = true;
    }
    changed_.notify_all();
}

Result<std::uint64_t> VmHost::set_balloon(const std::string& name, std::uint64_t bytes) {
    std::lock_guard lock(mutex_);
    Hosted* vm = find(name);
    if (vm == nullptr) return make_error(control::VmErrc::no_such_vm, "set-balloon", name);
    if (vm->state == control::VmState::ended || !vm->vm) return make_error(control::VmErrc::not_running, "set-balloon", name);
    if (!vm->balloon) return make_error(control::VmErrc::no_balloon, "set-balloon", name);
    std::uint64_t pages = std::min<std::uint64_t>(bytes / 4096, vm->spec.memory_bytes / 4096);
    vm->balloon->set_target_pages(static_cast<std::uint32_t>(pages));
    vm->balloon_transport->notify_config_change();
    spdlog::info("{}: balloon target {} pages ({} bytes)", name, pages, pages * 4096);
    return pages;
}

}  // namespace swapvisor::vmm
