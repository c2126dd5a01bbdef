// cli_fuzz: the value parsers of `swapvisor run` (vmm/cli/config.hpp) and the whole
// command line (vmm/cli/cli.hpp). The first input byte picks the parser, the rest is
// its text (for the command line: arguments separated by NUL bytes, after "run" or
// "ctl").
//
// Properties (fuzz_check aborts on any): nothing throws out of a parser (CLI11's
// exceptions must be caught inside parse_command_line); every refusal carries the
// parser's own code and a message; every accepted value obeys the documented rules:
//   parse_size_aligned  non-zero, a multiple of the alignment, equal to parse_size
//   parse_swap_spec     non-empty path, priority 0..32767, size a non-zero 4 KiB multiple
//   parse_vm_name       1..64 of [A-Za-z0-9._-], not starting with '.' or '-'
//   parse_vm_spec       a valid name, a kernel, memory a 2 MiB multiple, vcpus 1..255,
//                       resident-limit a 4 KiB multiple
//   parse_command_line  exits only with 0 or 2; a `ctl` outcome turns into a request
//                       line the control protocol parses (it is valid JSON)
#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tests/fuzz/fuzz_input.hpp"
#include "vmm/cli/cli.hpp"
#include "vmm/cli/config.hpp"
#include "vmm/control/ctl.hpp"
#include "vmm/control/protocol.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm::cli;
using swapvisor::fuzz::fuzz_check;
using swapvisor::fuzz::FuzzInput;

namespace {

template <class T>
void check_refusal(const Result<T>& r, CliErrc code, const char* what) {
    if (r) return;
    fuzz_check(r.error().code == make_error_code(code), what);
    fuzz_check(!r.error().message().empty(), "a refusal has a message");
}

bool name_ok(std::string_view name) {
    if (name.empty() || name.size() > 64 || name[0] == '.' || name[0] == '-') return false;
    for (char c : name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
    return true;
}

void fuzz_size(std::string_view text, std::uint8_t align_log2) {
    auto size = parse_size(text);
    check_refusal(size, CliErrc::bad_size, "parse_size refuses with bad_size");
    auto control_size = vmm::control::parse_size(text);
    fuzz_check(size.has_value() == control_size.has_value(), "the CLI and the protocol share one size grammar");
    std::uint64_t align = std::uint64_t{1} << (align_log2 % 32);
    auto aligned = parse_size_aligned(text, align, "the alignment");
    check_refusal(aligned, CliErrc::bad_size, "parse_size_aligned refuses with bad_size");
    if (aligned) {
        fuzz_check(size && *aligned == *size, "parse_size_aligned returns parse_size's value");
        fuzz_check(*aligned != 0 && *aligned % align == 0, "an aligned size is a non-zero multiple");
    } else if (size) {
        fuzz_check(*size == 0 || *size % align != 0, "parse_size_aligned refuses only zero or misaligned sizes");
    }
}

void fuzz_swap_spec(std::string_view text) {
    auto spec = parse_swap_spec(text);
    if (!spec) {
        // An inner size error keeps its own code (bad_size), with the --swap as context.
        fuzz_check(spec.error().code == make_error_code(CliErrc::bad_swap_spec) ||
                       spec.error().code == make_error_code(CliErrc::bad_size),
                   "parse_swap_spec refuses with bad_swap_spec or bad_size");
        return;
    }
    fuzz_check(!spec->path.empty(), "a swap spec has a path");
    fuzz_check(!spec->priority || (*spec->priority >= 0 && *spec->priority <= 32767), "swap priority in 0..32767");
    fuzz_check(!spec->size || (*spec->size != 0 && *spec->size % 4096 == 0), "swap size a non-zero 4 KiB multiple");
    fuzz_check(text.starts_with(spec->path.native()), "the swap path is the text before the first ','");
}

void fuzz_vm_spec(std::string_view text) {
    auto spec = parse_vm_spec(text);
    if (!spec) {
        const std::error_code& c = spec.error().code;
        fuzz_check(c == make_error_code(CliErrc::bad_vm_spec) || c == make_error_code(CliErrc::bad_vm_name) ||
                       c == make_error_code(CliErrc::bad_size),
                   "parse_vm_spec refuses with bad_vm_spec, bad_vm_name or bad_size");
        return;
    }
    fuzz_check(name_ok(spec->name), "a --vm name obeys the name rules");
    fuzz_check(!spec->kernel.empty(), "a --vm has a kernel");
    fuzz_check(spec->memory_bytes != 0 && spec->memory_bytes % kGuestMemoryAlign == 0, "--vm memory a 2 MiB multiple");
    fuzz_check(spec->vcpus >= 1 && spec->vcpus <= kMaxVcpus, "--vm vcpus in 1..255");
    fuzz_check(spec->resident_limit % 4096 == 0, "--vm resident-limit a 4 KiB multiple");
}

void fuzz_vm_name(std::string_view text) {
    auto name = parse_vm_name(text);
    check_refusal(name, CliErrc::bad_vm_name, "parse_vm_name refuses with bad_vm_name");
    fuzz_check(name.has_value() == name_ok(text), "parse_vm_name accepts exactly the name rules");
    if (name) fuzz_check(*name == text, "parse_vm_name returns the name unchanged");
}

void fuzz_command_line(std::string_view text, bool ctl) {
    std::vector<std::string> args{ctl ? "ctl" : "run"};
    std::size_t start = 0;
    while (start <= text.size() && args.size() < 64) {
        std::size_t nul = text.find('\0', start);
        if (nul == std::string_view::npos) nul = text.size();
        args.emplace_back(text.substr(start, nul - start));
        start = nul + 1;
    }
    CliOutcome outcome = parse_command_line(args);
    if (auto* exit = std::get_if<CliExit>(&outcome)) {
        fuzz_check(exit->status == 0 || exit->status == kExitUsage, "the command line exits with 0 or 2");
        fuzz_check(exit->status == 0 || !exit->err.empty(), "a usage error is explained on stderr");
    } else if (auto* config = std::get_if<RunConfig>(&outcome)) {
        fuzz_check(!config->all_vms().empty(), "a run config has a VM");
        for (const VmSpec& vm : config->all_vms()) fuzz_check(name_ok(vm.name), "every VM name obeys the rules");
    } else if (auto* options = std::get_if<vmm::control::CtlOptions>(&outcome)) {
        std::string line = vmm::control::to_line(vmm::control::ctl_request(*options, 1));
        line.pop_back();
        auto request = vmm::control::parse_request(line);
        fuzz_check(request || request.error().code != vmm::control::ReplyCode::bad_json,
                   "a ctl request is a JSON object the server can read");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    FuzzInput in(data, size);
    auto which = in.take<std::uint8_t>();
    std::string_view text = in.rest_text();
    switch (which % 6) {
        case 0: fuzz_size(text, which / 6); break;
        case 1: fuzz_swap_spec(text); break;
        case 2: fuzz_vm_spec(text); break;
        case 3: fuzz_vm_name(text); break;
        case 4: fuzz_command_line(text, false); break;
        case 5: fuzz_command_line(text, true); break;
    }
    return 0;
}
