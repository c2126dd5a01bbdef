// The value parsers of the command line. Every rejection says what was given and
// what is accepted, because an operator reads these messages, not a developer.
#include "vmm/cli/config.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <charconv>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "io/nbd_device.hpp"
#include "swap/memory_tier.hpp"
#include "vmm/error_category.hpp"

#include "vmm/control/protocol.hpp"

namespace swapvisor::vmm::cli {
namespace {

// The parsers' errors: `what` (the value given and why it was refused) is the context.
std::unexpected<Error> cli_error(CliErrc code, const char* op, std::string what) {
    return make_error(code, op, std::move(what));
}

std::string describe(CliErrc e) {
    switch (e) {
        case CliErrc::bad_size: return "invalid size";
        case CliErrc::bad_swap_spec: return "invalid --swap value";
        case CliErrc::bad_vm_name: return "invalid VM name";
        case CliErrc::bad_vm_spec: return "invalid --vm value";
        case CliErrc::out_of_range: return "value out of range";
        case CliErrc::bad_file: return "unusable file";
        case CliErrc::bad_tuning: return "invalid tuning option";
    }
    return "unknown command-line error";
}

}  // namespace

const std::error_category& cli_category() {
    static const EnumCategory<CliErrc> category("cli", describe);
    return category;
}

Result<std::uint64_t> parse_size(std::string_view text) {
    auto size = control::parse_size(text);
    if (!size) return cli_error(CliErrc::bad_size, "parsing a size", size.error());
    return *size;
}

Result<std::uint64_t> parse_size_aligned(std::string_view text, std::uint64_t align, std::string_view align_name) {
    auto size = parse_size(text);
    if (!size) return size;
    if (*size == 0) return cli_error(CliErrc::bad_size, "parsing a size", fmt::format("size '{}' is zero", text));
    if (*size % align != 0) {
        return cli_error(CliErrc::bad_size, "parsing a size",
                         fmt::format("size '{}' ({} bytes) is not a multiple of {}", text, *size, align_name));
    }
    return size;
}

Result<std::uint64_t> parse_guest_memory(std::string_view text) {
    auto size = parse_size_aligned(text, kGuestMemoryAlign, "2 MiB");
    if (!size) return size;
    if (auto why = vmm::check_memory(*size); !why.empty())
        return cli_error(CliErrc::out_of_range, "parsing a memory size", fmt::format("size '{}': {}", text, why));
    return size;
}

Result<std::uint64_t> parse_memory_limit(std::string_view text, std::string_view what) {
    auto size = parse_size(text);
    if (!size) return size;
    if (auto why = vmm::check_aligned_memory_limit(*size, what); !why.empty())
        return cli_error(*size % 4096 != 0 ? CliErrc::bad_size : CliErrc::out_of_range, "parsing a memory limit",
                         fmt::format("size '{}': {}", text, why));
    return size;
}

Result<void> check_output_file(const std::filesystem::path& path) {
    if (auto why = vmm::check_output_file(path); !why.empty())
        return cli_error(CliErrc::bad_file, "checking a file", why);
    return {};
}

Result<SwapSpec> parse_swap_spec(std::string_view text) {
    auto bad = [text](std::string what) {
        return cli_error(CliErrc::bad_swap_spec, "parsing --swap", fmt::format("--swap '{}': {}", text, what));
    };
    SwapSpec spec;
    bool have_format = false, have_takeover = false;
    std::size_t comma = text.find(',');
    std::string_view path = text.substr(0, comma);
    if (path.empty()) return bad("the path is empty");
    spec.path = std::filesystem::path(std::string(path));
    // A remote export: nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH
    // (io/README.md#nbd). Checked here so a typo fails before anything starts; the
    // options after the URI apply as to a file (size= must match the export).
    if (io::is_nbd_uri(path)) {
        if (auto uri = io::normalise_nbd_uri(path); !uri) return bad(uri.error().op);
    }
    // A compressed memory tier: mem:SIZE[,codec=lz4|zstd][,max=BYTES][,high=PCT][,low=PCT][,share=PCT]
    // (swap/README.md#tiers). Its own options travel in the path, which the pool
    // parses; priority= is the device's as for any other; size= and format= are not
    // taken (SIZE is in the name, nothing to format).
    const bool memory = swap::is_memory_tier_name(path);
    std::string tier(path);
    while (comma != std::string_view::npos) {
        std::size_t start = comma + 1;
        comma = text.find(',', start);
        std::string_view option = text.substr(start, comma == std::string_view::npos ? comma : comma - start);
        std::size_t eq = option.find('=');
        if (option.empty()) return bad("empty option after ','");
        if (eq == std::string_view::npos || eq + 1 == option.size()) {
            return bad(fmt::format("option '{}' needs a value (priority=N, size=SIZE or format=yes)", option));
        }
        std::string_view key = option.substr(0, eq);
        std::string_view value = option.substr(eq + 1);
        if (memory && (key == "codec" || key == "max" || key == "high" || key == "low" || key == "share")) {
            tier += fmt::format(",{}", option);
            continue;
        }
        if (memory && (key == "size" || key == "format"))
            return bad(fmt::format("a memory tier takes no {}= (its size is mem:SIZE)", key));
        if (key == "priority") {
            if (spec.priority) return bad("priority given twice");
            int prio = -1;
            auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), prio);
            if (ec != std::errc() || ptr != value.data() + value.size() || prio < 0 || prio > 32767) {
                return bad(fmt::format("priority '{}' is not an integer in 0..32767", value));
            }
            spec.priority = prio;
        } else if (key == "size") {
            if (spec.size) return bad("size given twice");
            auto size = parse_size_aligned(value, 4096, "4 KiB");
            if (!size) return std::unexpected(std::move(size.error()).with_context(fmt::format("--swap '{}'", text)));
            spec.size = *size;
        } else if (key == "format") {
            if (have_format) return bad("format given twice");
            if (value != "yes" && value != "no" && value != "force")
                return bad(fmt::format("format '{}' must be yes, no or force", value));
            spec.format = value == "yes" ? swap::Format::yes : value == "force" ? swap::Format::force : swap::Format::no;
            have_format = true;
        } else if (key == "takeover") {
            if (have_takeover) return bad("takeover given twice");
            if (value != "yes" && value != "no") return bad(fmt::format("takeover '{}' must be yes or no", value));
            spec.takeover = value == "yes" ? swap::Takeover::yes : swap::Takeover::no;
            have_takeover = true;
        } else {
            return bad(fmt::format("unknown option '{}' (accepted: priority=N, size=SIZE, format=yes|force, "
                                   "takeover=yes{})",
                                   key, memory ? "; for mem: codec=lz4|zstd, max=BYTES, high=PCT, low=PCT, share=PCT" : ""));
        }
    }
    if (memory) {
        if (auto t = swap::parse_memory_tier(tier); !t) return bad(t.error().context);
        spec.path = std::filesystem::path(tier);
    }
    return spec;
}

Result<std::string> parse_vm_name(std::string_view text) {
    if (auto why = vmm::check_name(text); !why.empty())
        return cli_error(CliErrc::bad_vm_name, "parsing a VM name", why);
    return std::string(text);
}

Result<bool> parse_tuning_option(std::string_view key, std::string_view value, vmm::MemoryTuning& tuning) {
    auto bad = [key, value](std::string why) {
        return cli_error(CliErrc::bad_tuning, "parsing a tuning option", fmt::format("{} '{}': {}", key, value, why));
    };
    auto number = [](std::string_view text) -> std::optional<double> {
        double v = 0;
        auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (ec != std::errc() || ptr != text.data() + text.size() || !std::isfinite(v)) return std::nullopt;
        return v;
    };
    if (key == "auto-stall") {
        std::string_view digits = value.ends_with('%') ? value.substr(0, value.size() - 1) : value;
        auto pct = number(digits);
        if (!pct) return bad("not a percentage (e.g. 1% or 0.5)");
        tuning.auto_stall_target = *pct / 100;
        return true;
    }
    if (key == "auto-floor" || key == "auto-ceiling") {
        auto size = parse_size(value);
        if (!size) return std::unexpected(std::move(size.error()).with_context(std::string(key)));
        (key == "auto-floor" ? tuning.auto_floor : tuning.auto_ceiling) = *size;
        if (*size == 0) return bad("must not be 0");
        return true;
    }
    if (key == "age-scan") {
        if (value == "off") {
            tuning.age_scan = std::chrono::milliseconds(0);
            return true;
        }
        auto seconds = number(value);
        if (!seconds || *seconds < 0) return bad("not a number of seconds, or off");
        if (*seconds * 1000 > static_cast<double>(vmm::kMaxAgeScan.count()))
            return bad(fmt::format("over {} s", vmm::kMaxAgeScan.count() / 1000));
        tuning.age_scan = std::chrono::milliseconds(static_cast<std::int64_t>(*seconds * 1000 + 0.5));
        return true;
    }
    if (key == "age-sample") {
        unsigned n = 0;
        auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
        if (ec != std::errc() || ptr != value.data() + value.size() || n < 1 || n > vmm::kMaxAgeSample)
            return bad(fmt::format("not a whole number in 1..{}", vmm::kMaxAgeSample));
        tuning.age_sample = n;
        return true;
    }
    return false;
}

Result<VmSpec> parse_vm_spec(std::string_view text) {
    auto bad = [text](std::string what) {
        return cli_error(CliErrc::bad_vm_spec, "parsing --vm", fmt::format("--vm '{}': {}", text, what));
    };
    // An inner value's error keeps its code; this --vm (and the field) become context.
    auto inner = [text](Error e, std::string_view field) {
        return std::unexpected(std::move(e).with_context(field.empty() ? fmt::format("--vm '{}'", text)
                                                                       : fmt::format("--vm '{}': {}", text, field)));
    };
    VmSpec spec;
    spec.name.clear();
    bool have_memory = false, have_vcpus = false, have_limit = false, have_quota = false;
    std::string_view rest = text;
    while (!rest.empty()) {
        if (rest.starts_with("cmdline=")) {  // takes everything after it
            spec.cmdline = std::string(rest.substr(8));
            break;
        }
        std::size_t comma = rest.find(',');
        std::string_view option = rest.substr(0, comma);
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
        if (option.empty()) return bad("empty option");
        if (option == "balloon") {
            spec.balloon = true;
            continue;
        }
        std::size_t eq = option.find('=');
        if (eq == std::string_view::npos || eq + 1 == option.size())
            return bad(fmt::format("option '{}' needs a value", option));
        std::string_view key = option.substr(0, eq);
        std::string_view value = option.substr(eq + 1);
        if (key == "name") {
            if (!spec.name.empty()) return bad("name given twice");
            auto name = parse_vm_name(value);
            if (!name) return inner(std::move(name.error()), "");
            spec.name = *name;
        } else if (key == "kernel") {
            if (!spec.kernel.empty()) return bad("kernel given twice");
            spec.kernel = std::filesystem::path(std::string(value));
        } else if (key == "memory") {
            if (have_memory) return bad("memory given twice");
            auto size = parse_guest_memory(value);
            if (!size) return inner(std::move(size.error()), "memory");
            spec.memory_bytes = *size;
            have_memory = true;
        } else if (key == "resident-limit") {
            if (have_limit) return bad("resident-limit given twice");
            if (value == "auto") {
                spec.auto_limit = true;
                have_limit = true;
                continue;
            }
            auto size = parse_memory_limit(value, "resident limit");
            if (!size) return inner(std::move(size.error()), "resident-limit");
            spec.resident_limit = *size;
            have_limit = true;
        } else if (key == "swap-quota") {
            if (have_quota) return bad("swap-quota given twice");
            auto size = parse_size(value);
            if (!size) return inner(std::move(size.error()), "swap-quota");
            spec.swap_quota = *size;
            have_quota = true;
        } else if (key == "vcpus") {
            if (have_vcpus) return bad("vcpus given twice");
            unsigned n = 0;
            auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
            if (ec != std::errc() || ptr != value.data() + value.size())
                return bad(fmt::format("vcpus '{}' is not a number", value));
            if (auto why = vmm::check_vcpus(n); !why.empty()) return bad(fmt::format("vcpus: {}", why));
            spec.vcpus = n;
            have_vcpus = true;
        } else {
            auto tuned = parse_tuning_option(key, value, spec.tuning);
            if (!tuned) return inner(std::move(tuned.error()), "");
            if (!*tuned)
                return bad(fmt::format("unknown option '{}' (accepted: name, kernel, memory, vcpus, resident-limit, "
                                       "auto-stall, auto-floor, auto-ceiling, age-scan, age-sample, swap-quota, balloon, cmdline)",
                                       key));
        }
    }
    if (spec.name.empty()) return bad("name= is required");
    if (spec.kernel.empty()) return bad("kernel= is required");
    return spec;
}

std::vector<VmSpec> RunConfig::all_vms() const {
    std::vector<VmSpec> vms;
    if (!kernel.empty())
        vms.push_back(VmSpec{.name = name, .kernel = kernel, .cmdline = cmdline, .memory_bytes = memory_bytes,
                             .vcpus = vcpus, .resident_limit = resident_limit, .auto_limit = auto_limit,
                             .tuning = tuning, .swap_quota = swap_quota,
                             .balloon = balloon, .balloon_stats_interval = balloon_stats_interval});
    vms.insert(vms.end(), more_vms.begin(), more_vms.end());
    for (VmSpec& vm : vms) {
        vm.balloon_stats_interval = balloon_stats_interval;
        if (age_scan && !vm.tuning.age_scan && !vm.auto_limit) vm.tuning.age_scan = age_scan;
    }
    return vms;
}

}  // namespace swapvisor::vmm::cli
