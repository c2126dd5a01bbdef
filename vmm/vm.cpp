// Vm: vCPU threads, exit dispatch and race-free stopping (vm.hpp). The signal
// handlers here are async-signal-safe: they touch only thread_local pointers set by
// the vCPU thread itself (initial-exec TLS in the executable) and the kvm_run byte.
#include "vmm/vm.hpp"

#include <pthread.h>
#include <signal.h>

#include <cerrno>
#include <csignal>
#include <latch>
#include <type_traits>

#include <fmt/format.h>
#include <spdlog/spdlog.h>


namespace swapvisor::vmm {
namespace {

// The vCPU this thread drives, and the host address of a poisoned page the kernel
// reported with SIGBUS (BUS_MCEERR_AR) while it ran.
thread_local kvm::Vcpu* t_vcpu = nullptr;
thread_local void* volatile t_lost_hva = nullptr;

int kick_signal() { return SIGRTMIN; }

void on_kick(int) {
    // Nothing to do: delivery alone makes a blocked KVM_RUN return EINTR.
}

void on_sigbus(int sig, siginfo_t* info, void*) {
    // KVM (kvm_send_hwpoison_signal) reports a guest page that guestmem poisoned
    // because its swap-in failed with SIGBUS BUS_MCEERR_AR on the vCPU thread, then
    // retries KVM_RUN, which returns EINTR because of this very signal. Record the
    // page and make sure the vCPU does not re-enter.
    if (t_vcpu != nullptr && (info->si_code == BUS_MCEERR_AR || info->si_code == BUS_MCEERR_AO)) {
        t_lost_hva = info->si_addr;
        t_vcpu->request_immediate_exit();
        return;
    }
    // A real bug in swapvisor: fall back to the default action (core dump) on return,
    // when the faulting instruction runs again.
    ::signal(sig, SIG_DFL);
}

void install_signal_handlers() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction kick {};
        kick.sa_handler = on_kick;
        sigemptyset(&kick.sa_mask);
        kick.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
        // Kernel contract: sigaction with a handler (not SIG_IGN) makes the signal
        // interrupt a blocking ioctl; with SIG_IGN it would be discarded unseen.
        SWV_ASSERT(::sigaction(kick_signal(), &kick, nullptr) == 0, "sigaction(kick signal)");
        struct sigaction bus {};
        bus.sa_sigaction = on_sigbus;
        sigemptyset(&bus.sa_mask);
        bus.sa_flags = SA_SIGINFO;
        SWV_ASSERT(::sigaction(SIGBUS, &bus, nullptr) == 0, "sigaction(SIGBUS)");
    });
}

const char* internal_error_name(std::uint32_t suberror) {
    switch (suberror) {
        case 1: return "emulation failure";
        case 2: return "exception while delivering an exception (simultaneous exceptions)";
        case 3: return "event delivery failed";
        case 4: return "unexpected exit reason";
        default: return "unknown suberror";
    }
}

}  // namespace

Vm::Vm(kvm::KvmVm vm, std::vector<guestmem::RegionView> regions) : vm_(std::move(vm)), regions_(std::move(regions)) {}

Vm::~Vm() {
    // run() joins its threads; a Vm destroyed without run() has none.
    for (std::thread& t : threads_) SWV_ASSERT(!t.joinable(), "Vm destroyed with a running vCPU thread");
}

Result<std::unique_ptr<Vm>> Vm::create(const kvm::Kvm& kvm, const VmConfig& spec) {
    if (spec.vcpus == 0 || spec.vcpus > kvm.max_vcpus()) return errno_error("Vm::create (vCPU count)", EINVAL);
    kvm::KvmVm kvm_vm = SWV_TRY(kvm.create_vm());
    for (const guestmem::RegionView& r : spec.regions) SWV_TRY(kvm_vm.add_memory_region(r.base, r.size, r.guest_view));
    std::unique_ptr<Vm> vm(new Vm(std::move(kvm_vm), {spec.regions.begin(), spec.regions.end()}));
    vm->on_vcpu_thread_start_ = spec.on_vcpu_thread_start;
    vm->on_first_entry_ = spec.on_first_entry;
    for (unsigned i = 0; i < spec.vcpus; ++i) {
        kvm::Vcpu vcpu = SWV_TRY(vm->vm_.create_vcpu(i));
        SWV_TRY(vcpu.set_cpuid(kvm.supported_cpuid()));
        vm->vcpus_.push_back(std::move(vcpu));
    }
    return vm;
}

Result<std::unique_ptr<Vm>> Vm::create_restored(const kvm::Kvm& kvm, const VmConfig& spec, const SavedVm& saved) {
    if (spec.vcpus == 0 || spec.vcpus > kvm.max_vcpus()) return errno_error("Vm::create_restored (vCPU count)", EINVAL);
    if (saved.vcpus.size() != spec.vcpus)
        return errno_error("Vm::create_restored", EINVAL,
                           fmt::format("{} vCPU states for {} vCPUs", saved.vcpus.size(), spec.vcpus));
    kvm::KvmVm kvm_vm = SWV_TRY(kvm.create_vm());
    for (const guestmem::RegionView& r : spec.regions) SWV_TRY(kvm_vm.add_memory_region(r.base, r.size, r.guest_view));
    std::unique_ptr<Vm> vm(new Vm(std::move(kvm_vm), {spec.regions.begin(), spec.regions.end()}));
    vm->on_vcpu_thread_start_ = spec.on_vcpu_thread_start;
    vm->on_first_entry_ = spec.on_first_entry;
    // Every vCPU exists before any is restored (a LAPIC's state may name the others),
    // and the VM-wide state comes last (kvm/vcpu_state.cpp, restore_vm_state).
    for (unsigned i = 0; i < spec.vcpus; ++i) vm->vcpus_.push_back(SWV_TRY(vm->vm_.create_vcpu(i)));
    for (unsigned i = 0; i < spec.vcpus; ++i) SWV_TRY(kvm::restore_vcpu_state(vm->vm_, vm->vcpus_[i], saved.vcpus[i]));
    SWV_TRY(kvm::restore_vm_state(vm->vm_, saved.vm));
    return vm;
}

Result<SavedVm> Vm::save_state() {
    std::lock_guard lock(pause_mutex_);
    if (!paused_.load() || parked_ != vcpus_.size() || stopping_.load())
        return errno_error("Vm::save_state (the VM is not paused)", EBUSY);
    SavedVm saved;
    saved.vcpus.reserve(vcpus_.size());
    for (kvm::Vcpu& v : vcpus_) saved.vcpus.push_back(SWV_TRY(kvm::save_vcpu_state(vm_, v)));
    saved.vm = SWV_TRY(kvm::save_vm_state(vm_));
    return saved;
}

std::optional<VmEnd> Vm::settle(kvm::Vcpu& vcpu) {
    // Bounded: each round completes one fragment of one MMIO access.
    for (int round = 0; round < 16; ++round) {
        auto pending = vcpu.complete_pending_exit();
        if (!pending) return handle_run_error(vcpu, pending.error());
        if (t_lost_hva != nullptr)  // SIGBUS while completing: as after run() (vcpu_thread)
            return VmEnd{EndReason::page_lost, kExitPageLost, vcpu.index(),
                         fmt::format("guest page lost: vCPU {} touched {} whose content swapvisor could not restore "
                                     "(swap-in failed; the page is poisoned)",
                                     vcpu.index(), describe_hva(t_lost_hva))};
        if (!*pending) return std::nullopt;
        if (std::optional<VmEnd> end = handle_exit(vcpu, **pending)) return end;
    }
    return VmEnd{EndReason::kvm_error, kExitKvmError, vcpu.index(),
                 fmt::format("vCPU {}: its pending exit did not complete while pausing", vcpu.index())};
}

devices::IrqCallback Vm::irq_line(std::uint32_t gsi) {
    return [this, gsi](devices::IrqLevel level) {
        if (auto r = vm_.set_irq_line(gsi, level == devices::IrqLevel::high ? 1 : 0); !r)
            spdlog::warn("GSI {}: {}", gsi, r.error().message());
    };
}

Result<void> Vm::set_boot_entry(std::uint32_t entry, std::uint32_t start_info_gpa) {
    return vcpus_.at(0).set_pvh_entry_state(entry, start_info_gpa);
}

VmEnd Vm::run() {
    install_signal_handlers();
    std::latch gate(1);
    try {
        threads_.reserve(vcpus_.size());
        for (unsigned i = 0; i < vcpus_.size(); ++i) {
            threads_.emplace_back([this, i, &gate] {
                gate.wait();
                vcpu_thread(i);
            });
            const std::string name = fmt::format("swv-vcpu{}", i);  // top -H, perf
            ::pthread_setname_np(threads_.back().native_handle(), name.substr(0, 15).c_str());
        }
    } catch (const std::system_error& e) {
        // Threads already created must not run the guest half-started: stop them
        // before they pass the gate.
        finish(VmEnd{EndReason::kvm_error, kExitKvmError, 0, fmt::format("cannot start vCPU threads: {}", e.what())});
    }
    threads_ready_.store(true);
    gate.count_down();
    for (std::thread& t : threads_) t.join();
    std::lock_guard lock(end_mutex_);
    SWV_ASSERT(end_.has_value(), "all vCPU threads returned without a recorded VM end");
    return *end_;
}

void Vm::request_stop(VmEnd end) { finish(std::move(end)); }

void Vm::finish(VmEnd end) {
    {
        std::lock_guard lock(end_mutex_);
        if (!end_) end_ = std::move(end);
    }
    stop_all();
}

void Vm::stop_all() {
    stopping_.store(true);
    {
        std::lock_guard lock(pause_mutex_);  // a parked vCPU sees stopping_ when woken
    }
    pause_cv_.notify_all();
    for (kvm::Vcpu& v : vcpus_) v.request_immediate_exit();
    for (std::thread& t : threads_) {
        // Kernel contract: pthread_kill on a thread that has not been joined is valid
        // even if it already returned; a queued kick is then simply never seen.
        if (t.joinable()) ::pthread_kill(t.native_handle(), kick_signal());
    }
}

void Vm::vcpu_thread(unsigned index) {
    kvm::Vcpu& vcpu = vcpus_[index];
    t_vcpu = &vcpu;
    t_lost_hva = nullptr;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, kick_signal());
    sigaddset(&set, SIGBUS);
    // Kernel contract: the mask is per thread and inherited from the creator; the
    // kick and SIGBUS must be deliverable here even if main blocked them.
    ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    if (on_vcpu_thread_start_) {
        if (auto r = on_vcpu_thread_start_(); !r) {
            finish(VmEnd{EndReason::kvm_error, kExitKvmError, index,
                         fmt::format("vCPU {} thread setup: {}", index, r.error().message())});
            t_vcpu = nullptr;
            return;
        }
    }

    while (!stopping_.load()) {
        if (paused_.load()) {
            if (std::optional<VmEnd> end = settle(vcpu)) {
                finish(std::move(*end));
                break;
            }
            park();
            continue;
        }
        // The first entry into the guest (a restore's time to first instruction):
        // one atomic load per KVM_RUN once it is recorded.
        std::optional<FirstEntry::Clock::time_point> entered;
        if (!first_entry_.recorded()) {
            const auto now = FirstEntry::Clock::now();
            if (first_entry_.record(now)) entered = now;
        }
        auto exit = vcpu.run();
        if (entered && on_first_entry_) on_first_entry_(*entered);
        std::optional<VmEnd> end;
        if (!exit) {
            end = handle_run_error(vcpu, exit.error());
        } else if (t_lost_hva != nullptr) {
            end = VmEnd{EndReason::page_lost, kExitPageLost, index,
                        fmt::format("guest page lost: vCPU {} touched {} whose content swapvisor could not restore "
                                    "(swap-in failed; the page is poisoned)",
                                    index, describe_hva(t_lost_hva))};
        } else {
            end = handle_exit(vcpu, *exit);
        }
        if (end) {
            finish(std::move(*end));
            break;
        }
    }
    t_vcpu = nullptr;
}

// Pausing kicks with the signal only (immediate_exit is reserved for stopping and is
// never cleared): a kick that lands between the paused_ check and KVM_RUN is lost,
// so pause() repeats it until every thread is parked.
bool Vm::pause(std::chrono::milliseconds bound) {
    if (!threads_ready_.load()) return false;  // run() has not started its threads yet
    paused_.store(true);
    auto deadline = std::chrono::steady_clock::now() + bound;
    for (;;) {
        {
            std::lock_guard lock(pause_mutex_);
            if (parked_ == vcpus_.size() || stopping_.load()) return true;
        }
        if (std::chrono::steady_clock::now() >= deadline) return false;
        for (std::thread& t : threads_) {
            // Kernel contract: see stop_all(); a kick to a parked thread is harmless.
            if (t.joinable()) ::pthread_kill(t.native_handle(), kick_signal());
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

void Vm::resume() {
    {
        std::lock_guard lock(pause_mutex_);
        paused_.store(false);
    }
    pause_cv_.notify_all();
}

void Vm::park() {
    std::unique_lock lock(pause_mutex_);
    ++parked_;
    pause_cv_.wait(lock, [this] { return !paused_.load() || stopping_.load(); });
    --parked_;
}

std::optional<VmEnd> Vm::handle_run_error(kvm::Vcpu& vcpu, const Error& error) {
    unsigned i = vcpu.index();
    if (error.code.value() == EFAULT || error.code.value() == EHWPOISON) {
        return VmEnd{EndReason::page_lost, kExitPageLost, i,
                     fmt::format("guest page lost: KVM_RUN on vCPU {} failed with {} ({}): guest memory that "
                                 "swapvisor could not restore; {}",
                                 i, error.code.value() == EFAULT ? "EFAULT" : "EHWPOISON", error.code.message(),
                                 vcpu.describe_registers())};
    }
    return VmEnd{EndReason::kvm_error, kExitKvmError, i, fmt::format("vCPU {}: {}", i, error.message())};
}

std::optional<VmEnd> Vm::handle_exit(kvm::Vcpu& vcpu, kvm::VcpuExit& exit) {
    unsigned i = vcpu.index();
    return std::visit(
        [&](auto& e) -> std::optional<VmEnd> {
            using T = std::decay_t<decltype(e)>;
            if constexpr (std::is_same_v<T, kvm::IoExit>) {
                for (std::uint32_t k = 0; k < e.count; ++k) {
                    auto chunk = e.data.subspan(std::size_t{k} * e.size, e.size);
                    if (e.direction == kvm::IoDirection::in) {
                        pio_.read(e.port, chunk);
                        continue;
                    }
                    devices::BusAction action = pio_.write(e.port, chunk);
                    if (action.exit_code) return VmEnd{EndReason::debug_exit, *action.exit_code, i, {}};
                }
                return std::nullopt;
            } else if constexpr (std::is_same_v<T, kvm::MmioExit>) {
                if (!e.is_write) {
                    mmio_.read(e.gpa, e.data);
                    return std::nullopt;
                }
                devices::BusAction action = mmio_.write(e.gpa, e.data);
                if (action.exit_code) return VmEnd{EndReason::debug_exit, *action.exit_code, i, {}};
                return std::nullopt;
            } else if constexpr (std::is_same_v<T, kvm::InterruptedExit>) {
                return std::nullopt;  // the loop re-checks stopping_
            } else if constexpr (std::is_same_v<T, kvm::HltExit>) {
                return VmEnd{EndReason::halted, static_cast<std::uint32_t>(kExitHalted), i,
                             fmt::format("guest halted on vCPU {} with nothing to wake it: {}", i,
                                         vcpu.describe_registers())};
            } else if constexpr (std::is_same_v<T, kvm::ShutdownExit>) {
                return VmEnd{EndReason::triple_fault, static_cast<std::uint32_t>(kExitTripleFault), i,
                             fmt::format("guest triple fault on vCPU {}: {}", i, vcpu.describe_registers())};
            } else if constexpr (std::is_same_v<T, kvm::InternalErrorExit>) {
                std::string data;
                for (std::uint64_t d : e.data) data += fmt::format(" 0x{:x}", d);
                return VmEnd{EndReason::internal_error, static_cast<std::uint32_t>(kExitInternalError), i,
                             fmt::format("KVM internal error on vCPU {}: suberror {} ({}), data [{} ]; {}", i,
                                         e.suberror, internal_error_name(e.suberror), data,
                                         vcpu.describe_registers())};
            } else if constexpr (std::is_same_v<T, kvm::FailEntryExit>) {
                return VmEnd{EndReason::fail_entry, static_cast<std::uint32_t>(kExitFailEntry), i,
                             fmt::format("KVM could not enter the guest on vCPU {} (host cpu {}): hardware entry "
                                         "failure reason 0x{:x}; {}",
                                         i, e.cpu, e.hardware_reason, vcpu.describe_registers())};
            } else if constexpr (std::is_same_v<T, kvm::SystemEventExit>) {
                return VmEnd{EndReason::system_event, static_cast<std::uint32_t>(kExitSystemEvent), i,
                             fmt::format("guest system event {} (1 shutdown, 2 reset, 3 crash) on vCPU {}", e.type, i)};
            } else {
                static_assert(std::is_same_v<T, kvm::UnknownExit>);
                return VmEnd{EndReason::kvm_error, static_cast<std::uint32_t>(kExitKvmError), i,
                             fmt::format("unhandled KVM exit reason {} on vCPU {}; {}", e.reason, i,
                                         vcpu.describe_registers())};
            }
        },
        exit);
}

std::string Vm::describe_hva(const void* hva) const {
    auto addr = reinterpret_cast<std::uintptr_t>(hva);
    for (const guestmem::RegionView& r : regions_) {
        auto base = reinterpret_cast<std::uintptr_t>(r.guest_view);
        if (addr >= base && addr - base < r.size) {
            return fmt::format("guest-physical 0x{:x}", r.base.value() + (addr - base));
        }
    }
    return fmt::format("host address {}", hva);
}

}  // namespace swapvisor::vmm
