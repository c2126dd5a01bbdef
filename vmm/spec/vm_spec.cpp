// The rules of a VM spec (vm_spec.hpp). Every message quotes the value given and
// says what is accepted: an operator reads these, on the command line and in
// vm-create's replies alike.
#include "vmm/spec/vm_spec.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "vmm/error_category.hpp"

namespace swapvisor::vmm {

const std::error_category& spec_category() {
    static const EnumCategory<SpecErrc> category("vm-spec", [](SpecErrc) -> std::string { return "bad VM spec"; });
    return category;
}

std::string check_name(std::string_view name) {
    if (name.empty() || name.size() > kMaxVmName)
        return fmt::format("VM name '{}' must be 1 to {} characters", name, kMaxVmName);
    if (name[0] == '.' || name[0] == '-') return fmt::format("VM name '{}' must not start with '.' or '-'", name);
    for (char c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-')
            return fmt::format("VM name '{}' may only contain letters, digits, '.', '_' and '-'", name);
    return {};
}

std::string check_kernel(const std::filesystem::path& kernel) {
    if (kernel.empty()) return "no kernel given";
    struct stat st {};
    // Kernel contract: stat follows symlinks and never opens the file, so a FIFO or
    // a device is recognised without blocking on it or touching it.
    if (::stat(kernel.c_str(), &st) != 0) return fmt::format("kernel '{}': {}", kernel.string(), std::strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fmt::format("kernel '{}' is not a regular file (a FIFO, device or directory)", kernel.string());
    return {};
}

std::string check_memory(std::uint64_t bytes) {
    if (bytes == 0 || bytes % kGuestMemoryAlign != 0)
        return fmt::format("{} bytes is not a non-zero multiple of 2 MiB", bytes);
    if (bytes > kMaxGuestMemory)
        return fmt::format("{} bytes is more than this host can map for one guest: at most {} bytes "
                           "(3 GiB + 8 TiB - 2 MiB: KVM's largest memory slot)",
                           bytes, kMaxGuestMemory);
    return {};
}

std::string check_vcpus(std::uint64_t vcpus) {
    if (vcpus == 0 || vcpus > kMaxVcpus) return fmt::format("{} vCPUs is not in 1..{}", vcpus, kMaxVcpus);
    return {};
}

std::string check_cmdline(std::string_view cmdline) {
    if (cmdline.size() > kMaxCmdline)
        return fmt::format("{} bytes, at most {} fit the PVH start info", cmdline.size(), kMaxCmdline);
    if (cmdline.find('\0') != std::string_view::npos) return "a NUL byte would cut the command line short";
    return {};
}

std::string check_aligned_memory_limit(std::uint64_t bytes, std::string_view what) {
    if (bytes % 4096 != 0) return fmt::format("{} of {} bytes is not a multiple of 4 KiB", what, bytes);
    return check_memory_limit(bytes, what);
}

std::string check_memory_limit(std::uint64_t bytes, std::string_view what) {
    if (bytes == 0 || bytes >= kMinMemoryLimit) return {};
    return fmt::format("{} of {} bytes is below the minimum of {} MiB ({} bytes); 0 means no limit", what, bytes,
                       kMinMemoryLimit >> 20, kMinMemoryLimit);
}

std::string check_balloon_stats_interval(std::chrono::milliseconds interval) {
    if (interval.count() < 0 || interval > kMaxBalloonStatsInterval)
        return fmt::format("balloon statistics interval of {} ms is not in 0..{} ms", interval.count(),
                           kMaxBalloonStatsInterval.count());
    return {};
}

std::string check_output_file(const std::filesystem::path& path) {
    struct stat st {};
    // Kernel contract: stat / access(W_OK) answer for the real uid, before the file
    // is created; the write at exit can still fail (disk full), but never because the
    // directory was mistyped.
    if (::stat(path.c_str(), &st) == 0) {
        if (S_ISDIR(st.st_mode)) return fmt::format("'{}' is a directory", path.string());
        if (::access(path.c_str(), W_OK) != 0)
            return fmt::format("'{}' is not writable: {}", path.string(), std::strerror(errno));
        return {};
    }
    std::filesystem::path dir = std::filesystem::absolute(path).parent_path();
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        return fmt::format("directory '{}' of '{}' does not exist", dir.string(), path.string());
    if (::access(dir.c_str(), W_OK) != 0)
        return fmt::format("directory '{}' is not writable: {}", dir.string(), std::strerror(errno));
    return {};
}

std::string check_tuning(const MemoryTuning& t, bool auto_limit, std::uint64_t memory_bytes) {
    if (!auto_limit && (t.auto_stall_target || t.auto_floor || t.auto_ceiling))
        return "auto-stall, auto-floor and auto-ceiling tune resident-limit=auto, which this VM does not use";
    if (t.auto_stall_target && !(*t.auto_stall_target > 0 && *t.auto_stall_target <= kMaxStallTarget))
        return fmt::format("stall target {:g} % is not in (0, {:g}] %", *t.auto_stall_target * 100, kMaxStallTarget * 100);
    if (t.auto_floor) {
        if (auto why = check_aligned_memory_limit(t.auto_floor, "auto floor"); !why.empty()) return why;
        if (t.auto_floor > memory_bytes)
            return fmt::format("auto floor {} is over the VM's memory {}", t.auto_floor, memory_bytes);
    }
    if (t.auto_ceiling) {
        if (auto why = check_aligned_memory_limit(t.auto_ceiling, "auto ceiling"); !why.empty()) return why;
        if (t.auto_ceiling > memory_bytes)
            return fmt::format("auto ceiling {} is over the VM's memory {}", t.auto_ceiling, memory_bytes);
        if (t.auto_floor > t.auto_ceiling)
            return fmt::format("auto floor {} is over the auto ceiling {}", t.auto_floor, t.auto_ceiling);
    }
    if (t.age_scan && (t.age_scan->count() < 0 || *t.age_scan > kMaxAgeScan))
        return fmt::format("age scan {} ms is not in 0 (off) .. {} s", t.age_scan->count(), kMaxAgeScan.count() / 1000);
    if (t.age_sample && (*t.age_sample < 1 || *t.age_sample > kMaxAgeSample))
        return fmt::format("age sample {} is not in 1..{}", *t.age_sample, kMaxAgeSample);
    return {};
}

std::chrono::milliseconds age_scan_of(const VmSpec& spec, std::chrono::milliseconds host_default) {
    if (spec.tuning.age_scan) return *spec.tuning.age_scan;
    return spec.auto_limit ? kAutoAgeScan : host_default;
}

unsigned age_sample_of(const VmSpec& spec) {
    if (spec.tuning.age_sample) return *spec.tuning.age_sample;
    return spec.auto_limit ? kAutoAgeSample : 1;
}

Result<void> validate(const VmSpec& spec) {
    auto check = [](const char* field, std::string why) -> Result<void> {
        if (why.empty()) return {};
        return make_error(SpecErrc::bad_field, "checking a VM spec", fmt::format("field \"{}\": {}", field, why));
    };
    SWV_TRY(check("name", check_name(spec.name)));
    SWV_TRY(check("kernel", check_kernel(spec.kernel)));
    SWV_TRY(check("memory", check_memory(spec.memory_bytes)));
    SWV_TRY(check("vcpus", check_vcpus(spec.vcpus)));
    SWV_TRY(check("cmdline", check_cmdline(spec.cmdline)));
    SWV_TRY(check("resident_limit", check_aligned_memory_limit(spec.resident_limit, "resident limit")));
    SWV_TRY(check("tuning", check_tuning(spec.tuning, spec.auto_limit, spec.memory_bytes)));
    SWV_TRY(check("balloon_stats_interval", check_balloon_stats_interval(spec.balloon_stats_interval)));
    if (spec.serial_log) SWV_TRY(check("serial_log", check_output_file(*spec.serial_log)));
    return {};
}

}  // namespace swapvisor::vmm
