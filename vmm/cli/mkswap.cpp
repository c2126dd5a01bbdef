// `swapvisor mkswap`: CLI11 definition and the run (mkswap.hpp). The work is
// swap::mkswap; this file only words the result for an operator.
#include "vmm/cli/mkswap.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "swap/swap_header.hpp"
#include "swap/swap_pool.hpp"

namespace swapvisor::vmm::cli {

CLI::App* add_mkswap_subcommand(CLI::App& app, MkswapOptions& options, std::string& size_text) {
    CLI::App* mk = app.add_subcommand(
        "mkswap",
        "Make PATH a swapvisor swap device: write the swap header on its first page. A missing file is created "
        "with --size of swap space, its space reserved; an existing file or device that holds recognisable data "
        "(file system or partition signature, kernel or swapvisor swap signature, any non-zero byte in its first "
        "MiB) is refused unless --force");
    mk->add_option("PATH", options.path, "Swap file or block device")->required();
    mk->add_option("--size", size_text,
                   "Swap space for a new file (e.g. 4G; the file is 4 KiB larger for the header); for an existing "
                   "device it must match")
        ->type_name("SIZE");
    mk->add_flag("--force", options.force, "Erase PATH even if it holds data (that data is lost)");
    return mk;
}

int run_mkswap(const MkswapOptions& options, std::ostream& out, std::ostream& err) {
    auto header = swap::mkswap(options.path, options.size_bytes, options.force ? swap::Erase::anything : swap::Erase::blank_only);
    if (!header) {
        err << fmt::format("swapvisor mkswap: {}\n", header.error().message());
        return 1;
    }
    std::string uuid;
    for (std::size_t i = 0; i < header->uuid.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) uuid += '-';
        uuid += fmt::format("{:02x}", header->uuid[i]);
    }
    out << fmt::format("swapvisor mkswap: {}: {} slots ({} MiB of swap), UUID {}\n",
                       swap::canonical_swap_path(options.path), header->slot_count,
                       header->slot_count * swap::kSlotSize >> 20, uuid);
    return 0;
}

}  // namespace swapvisor::vmm::cli
