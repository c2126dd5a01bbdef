// `swapvisor mkswap PATH [--size SIZE] [--force]`: prepare a swap device, as mkswap(8)
// does for the kernel. An existing device that holds recognisable data (a file system,
// partition table, kernel or swapvisor swap signature, any non-zero byte in its first
// MiB) is refused unless --force: the rule --swap format=yes and ctl swapon --format
// share (swap/data_probe.hpp). swapon refuses a device without the swapvisor header (swap/README.md#header),
// so this is how an operator says "this file or disk is swap now" once, instead of
// every `--swap` being able to erase a mistyped path.
#pragma once

#include <cstdint>
#include <filesystem>
#include <ostream>

namespace CLI {
class App;
}

namespace swapvisor::vmm::cli {

struct MkswapOptions {
    std::filesystem::path path;
    std::uint64_t size_bytes = 0;  // 0: use an existing device as it is
    bool force = false;            // --force: erase a device that holds data (swap/data_probe.hpp)
};

// Adds `mkswap` to app; `chosen` is set when it was given; size text is parsed into
// options.size_bytes by the caller (cli.cpp) so errors read like the other sizes.
CLI::App* add_mkswap_subcommand(CLI::App& app, MkswapOptions& options, std::string& size_text);

// Write the header; prints what was made (stdout) or why not (stderr). Returns 0 or
// 1 (setup error, refused data included, vmm/README.md#exit-codes).
int run_mkswap(const MkswapOptions& options, std::ostream& out, std::ostream& err);

}  // namespace swapvisor::vmm::cli
