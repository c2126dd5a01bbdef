// Start-up helpers of main.cpp: see startup.hpp.
#include "vmm/startup.hpp"

#include <sys/resource.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "io/nbd_device.hpp"
#include "vmm/control/ctl.hpp"
#include "vmm/control/unix_listener.hpp"

namespace swapvisor::vmm {

// A daemon holds a socket per client and a file per swap device: give it every file
// descriptor the hard limit allows (the connection caps of vmm/control bound the
// clients; this keeps 256 or 1024 from being the real cap).
void raise_fd_limit() {
    rlimit limit{};
    // Kernel contract: an unprivileged process may raise its soft RLIMIT_NOFILE up to
    // the hard limit.
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= limit.rlim_max) return;
    const rlim_t before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0)
        spdlog::warn("open files: cannot raise the soft limit {} to the hard limit {}: {}", before, limit.rlim_max,
                     std::strerror(errno));
    else
        spdlog::info("open files: soft limit raised from {} to the hard limit {}", before, limit.rlim_max);
}

// KVM's error with what an operator should check for it.
std::string kvm_failure(const Error& error) {
    std::string hint;
    if (error.is(std::errc::no_such_file_or_directory) || error.is(std::errc::no_such_device) ||
        error.is(std::errc::no_such_device_or_address))
        hint = "is the kvm module loaded (lsmod | grep kvm; modprobe kvm_intel or kvm_amd)? is virtualisation "
               "enabled in the firmware, or, inside a VM, nested virtualisation on its host?";
    else if (error.is(std::errc::permission_denied) || error.is(std::errc::operation_not_permitted))
        hint = "may this user open /dev/kvm read-write (ls -l /dev/kvm: usually root:kvm 0660; add the user to the "
               "kvm group)?";
    else
        hint = "is the kvm module loaded, may this user open /dev/kvm read-write, and, inside a VM, is nested "
               "virtualisation enabled?";
    return fmt::format("KVM: {} (check: {})", error.message(), hint);
}

// The swap files a start-up creates (size= of a missing file): if start-up fails
// they are removed again, so a failed start leaves the host as it found it. keep()
// once started: from then on they are the operator's swap files.
void CreatedSwapFiles::note_missing(const std::vector<cli::SwapSpec>& swaps) {
    for (const cli::SwapSpec& spec : swaps) {
        std::error_code ec;
        if (!spec.size || io::is_nbd_uri(spec.path.string())) continue;
        // (ec is set for a missing path too: the type says "not found".)
        if (std::filesystem::symlink_status(spec.path, ec).type() == std::filesystem::file_type::not_found)
            paths_.push_back(spec.path);
    }
}

CreatedSwapFiles::~CreatedSwapFiles() {
    for (const auto& path : paths_) {
        std::error_code ec;
        if (std::filesystem::remove(path, ec))
            spdlog::info("removed {}: created by this start-up, which failed", path.string());
    }
}

// The control socket's path, checked before anything is created. Only the built-in
// default's directory (/run/swapvisor) is created when missing.
Result<void> check_control_socket(const std::filesystem::path& path) {
    const auto missing_dir = path == control::kDefaultControlSocket ? control::MissingDir::create : control::MissingDir::refuse;
    return control::check_unix_socket_path(path.string(), "control socket", missing_dir);
}

Result<void> make_default_socket_dir(const std::filesystem::path& path) {
    if (path != control::kDefaultControlSocket) return {};
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec) return errno_error("creating the control socket's directory", ec.value(), path.parent_path().string());
    return {};
}

}  // namespace swapvisor::vmm
