// What `run` and `serve` do before they create anything, and how a failed start
// cleans up after itself (vmm/README.md#start-up): main.cpp calls these in its boot
// script, so it keeps reading top to bottom.
//   - raise_fd_limit: the soft RLIMIT_NOFILE up to the hard limit (logged);
//   - kvm_failure: KVM's error with what an operator should check (module, /dev/kvm
//     permissions, nested virtualisation);
//   - check_control_socket / make_default_socket_dir: the control socket's path
//     checked before any file is made; /run/swapvisor made for the default only;
//   - CreatedSwapFiles: the size= swap files this start-up created, removed again
//     unless keep() is called once start-up has succeeded.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "io/result.hpp"
#include "vmm/cli/config.hpp"

namespace swapvisor::vmm {

void raise_fd_limit();
std::string kvm_failure(const Error& error);
Result<void> check_control_socket(const std::filesystem::path& path);
Result<void> make_default_socket_dir(const std::filesystem::path& path);

class CreatedSwapFiles {
public:
    CreatedSwapFiles() = default;
    CreatedSwapFiles(const CreatedSwapFiles&) = delete;
    CreatedSwapFiles& operator=(const CreatedSwapFiles&) = delete;
    ~CreatedSwapFiles();  // removes what it noted, unless kept
    // Before swapon: note each --swap with size= whose file does not exist yet.
    void note_missing(const std::vector<cli::SwapSpec>& swaps);
    // Started: from now on the files are the operator's swap files.
    void keep() { paths_.clear(); }

private:
    std::vector<std::filesystem::path> paths_;
};

}  // namespace swapvisor::vmm
