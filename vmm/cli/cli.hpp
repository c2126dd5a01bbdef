// The `swapvisor` command line (DESIGN.md §6): CLI11 definitions for the `run`
// subcommand, and the validation that turns its strings into a RunConfig. CLI11
// throws; parse_command_line() catches everything and returns either a config or
// what to print and the exit status, so main() stays exception free.
#pragma once

#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "vmm/cli/config.hpp"
#include "vmm/cli/mkswap.hpp"
#include "vmm/control/ctl.hpp"

namespace swapvisor::vmm::cli {

inline constexpr int kExitUsage = 2;   // bad command line

// Parsing ended the program: --help (status 0) or a usage error (kExitUsage).
struct CliExit {
    int status;
    std::string out;  // for stdout (help)
    std::string err;  // for stderr (errors)
};

// `run` gives a RunConfig, `serve` a ServeConfig, `ctl` its options (vmm/control/ctl.hpp), `mkswap` its.
using CliOutcome = std::variant<RunConfig, ServeConfig, control::CtlOptions, MkswapOptions, CliExit>;

// args excludes the program name: {"run", "--kernel", "hello.elf"}. `serve --config
// FILE` reads FILE here (every serve option can be set in it; flags win), so
// parsing the same args again re-reads it: that is how SIGHUP reloads.
CliOutcome parse_command_line(const std::vector<std::string>& args);

// "swapvisor VERSION (GIT DESCRIBE)", what --version prints (vmm/version.hpp.in).
std::string version_text();

// The files a RunConfig names, checked before anything is reserved (a usage error,
// kExitUsage, if one is wrong): every kernel is a regular file (stat only: a FIFO
// would block the open forever), --stats-json can be written. Separate from the
// parse so the parser stays a pure function of its arguments.
std::optional<CliExit> check_run_files(const RunConfig& config);

}  // namespace swapvisor::vmm::cli
