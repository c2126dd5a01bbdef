// protocol_fuzz: the control socket's request parser (vmm/control/protocol.hpp) on
// one line of any bytes, and the size grammar it shares with the command line.
//
// Properties (fuzz_check aborts on any): parse_request never throws (an exception
// escaping here aborts too); a refused line carries a null, integer or string id and
// a bad_json / bad_request / unknown_command code; an accepted one has its fields in
// range (swapon priority -1..32767, non-empty paths and names); every reply built
// from the outcome is one JSON object on one line ending in '\n', even when the
// request echoes invalid UTF-8. parse_size accepts exactly the documented grammar
// (digits, then nothing, B, or K/M/G/T optionally followed by iB, any case) with the
// value number << shift, refusing overflow; checked against a table written here.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "tests/fuzz/fuzz_input.hpp"
#include "vmm/control/protocol.hpp"

using namespace swapvisor::vmm::control;
using swapvisor::fuzz::fuzz_check;

namespace {

// The documented size grammar, independently: std::nullopt if `text` is not a size.
std::optional<std::uint64_t> reference_size(std::string_view text) {
    std::size_t i = 0;
    std::uint64_t number = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
        if (__builtin_mul_overflow(number, 10u, &number) ||
            __builtin_add_overflow(number, static_cast<unsigned>(text[i] - '0'), &number))
            return std::nullopt;
        ++i;
    }
    if (i == 0) return std::nullopt;
    std::string suffix;
    for (char c : text.substr(i)) suffix += (c >= 'A' && c <= 'Z') ? static_cast<char>(c + ('a' - 'A')) : c;
    static constexpr struct {
        std::string_view suffix;
        unsigned shift;
    } kSuffixes[] = {{"", 0},    {"b", 0},     {"k", 10},    {"kib", 10}, {"m", 20},
                     {"mib", 20}, {"g", 30},   {"gib", 30},  {"t", 40},   {"tib", 40}};
    for (const auto& s : kSuffixes) {
        if (suffix != s.suffix) continue;
        if (s.shift != 0 && (number >> (64 - s.shift)) != 0) return std::nullopt;
        return number << s.shift;
    }
    return std::nullopt;
}

// A reply line: one JSON object, '\n' only at the end.
void check_line(const std::string& line) {
    fuzz_check(!line.empty() && line.back() == '\n', "a reply line ends in '\\n'");
    fuzz_check(line.find('\n') == line.size() - 1, "a reply line has no other '\\n'");
    auto back = nlohmann::json::parse(line.begin(), line.end() - 1, nullptr, /*allow_exceptions=*/false);
    fuzz_check(!back.is_discarded() && back.is_object(), "a reply line is one JSON object");
}

bool valid_id(const nlohmann::json& id) { return id.is_null() || id.is_number_integer() || id.is_string(); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view line(reinterpret_cast<const char*>(data), size);

    auto size_got = parse_size(line);
    auto size_want = reference_size(line);
    fuzz_check(size_got.has_value() == size_want.has_value(), "parse_size accepts exactly the size grammar");
    if (size_got) fuzz_check(*size_got == *size_want, "parse_size returns number << shift");
    if (!size_got) fuzz_check(!size_got.error().empty(), "a refused size says why");

    // The server never hands parse_request a longer line (too_large, then close).
    if (line.size() > kMaxLineBytes) return 0;
    auto request = parse_request(line);
    if (!request) {
        const RequestError& e = request.error();
        fuzz_check(valid_id(e.id), "an error reply's id is null, an integer or a string");
        fuzz_check(e.code == ReplyCode::bad_json || e.code == ReplyCode::bad_request ||
                       e.code == ReplyCode::unknown_command,
                   "a refused request is bad_json, bad_request or unknown_command");
        fuzz_check(!e.message.empty(), "a refused request says why");
        check_line(to_line(error_reply(e.id, e.code, e.message)));
        return 0;
    }
    // Requests without an id are accepted (issue #10, as QMP does): the reply echoes null.
    fuzz_check(valid_id(request->id), "an accepted request's id is null, an integer or a string");
    std::visit(
        [](const auto& cmd) {
            using T = std::decay_t<decltype(cmd)>;
            if constexpr (std::is_same_v<T, SwaponCmd>) {
                fuzz_check(!cmd.path.empty(), "swapon has a path");
                fuzz_check(cmd.priority >= -1 && cmd.priority <= 32767, "swapon priority in -1..32767");
            } else if constexpr (std::is_same_v<T, SwapoffCmd>) {
                fuzz_check(!cmd.path.empty(), "swapoff has a path");
            } else if constexpr (std::is_same_v<T, SetLimitCmd>) {
                fuzz_check(!cmd.vm.empty(), "set-limit names a VM");
            }
        },
        request->command);
    check_line(to_line(ok_reply(request->id)));
    check_line(to_line(progress_line(request->id, 1, 2)));
    // A reply may quote request fields back (a path in a message): invalid UTF-8 too.
    check_line(to_line(error_reply(request->id, ReplyCode::io_error, line)));
    return 0;
}
