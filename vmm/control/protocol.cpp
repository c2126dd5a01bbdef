// The control protocol: see protocol.hpp. Everything here is pure (no I/O, no
// state), so the request parser can be fed any bytes in tests.
#include "vmm/control/protocol.hpp"

#include <cerrno>
#include <charconv>
#include <limits>

#include <fmt/format.h>

#include "io/block_device.hpp"
#include "guestmem/errc.hpp"
#include "io/nbd_device.hpp"
#include "swap/memory_tier.hpp"
#include "swap/types.hpp"

namespace swapvisor::vmm::control {

using nlohmann::json;

std::string_view code_name(ReplyCode code) {
    switch (code) {
        case ReplyCode::bad_json: return "bad_json";
        case ReplyCode::bad_request: return "bad_request";
        case ReplyCode::unknown_command: return "unknown_command";
        case ReplyCode::too_large: return "too_large";
        case ReplyCode::no_such_device: return "no_such_device";
        case ReplyCode::device_busy: return "device_busy";
        case ReplyCode::would_not_fit: return "would_not_fit";
        case ReplyCode::exists: return "exists";
        case ReplyCode::io_error: return "io_error";
        case ReplyCode::permission: return "permission";
        case ReplyCode::no_such_vm: return "no_such_vm";
        case ReplyCode::busy: return "busy";
        case ReplyCode::unreadable_slots: return "unreadable_slots";
        case ReplyCode::vm_running: return "vm_running";
        case ReplyCode::vm_ended: return "vm_ended";
        case ReplyCode::no_balloon: return "no_balloon";
        case ReplyCode::unsupported: return "unsupported";
        case ReplyCode::timeout: return "timeout";
        case ReplyCode::kvm_error: return "kvm_error";
        case ReplyCode::bad_snapshot: return "bad_snapshot";
    }
    return "io_error";
}

namespace {

// vmm/kvm names each failed operation after its ioctl ("KVM_CREATE_VM") or the
// device ("open /dev/kvm"): such an error is KVM's, whatever its errno says (ENODEV
// or ENOENT there is no swap device).
bool is_kvm_op(std::string_view op) {
    return op.starts_with("KVM_") || op.starts_with("open /dev/kvm") || op.starts_with("mmap kvm_run") ||
           op.starts_with("KVM:");
}

}  // namespace

ReplyCode reply_code_of(const Error& error) {
    const std::error_code& code = error.code;
    if (is_kvm_op(error.op)) return ReplyCode::kvm_error;
    if (code.category() == swap::swap_category()) {
        switch (static_cast<swap::Errc>(code.value())) {
            case swap::Errc::no_such_device: return ReplyCode::no_such_device;
            case swap::Errc::device_busy: return ReplyCode::device_busy;
            case swap::Errc::would_not_fit: return ReplyCode::would_not_fit;
            case swap::Errc::exists: return ReplyCode::exists;
            case swap::Errc::unreadable_slots: return ReplyCode::unreadable_slots;
            case swap::Errc::leased: return ReplyCode::device_busy;
            // A swapoff (or handover) that snapshot-held slots refuse: nothing changed.
            case swap::Errc::held_slot: return ReplyCode::device_busy;
            case swap::Errc::no_signature:
            case swap::Errc::holds_data:
            case swap::Errc::bad_header:
            case swap::Errc::size_mismatch: return ReplyCode::bad_request;
            default: return ReplyCode::io_error;
        }
    }
    if (code.category() == vm_category()) {
        switch (static_cast<VmErrc>(code.value())) {
            case VmErrc::no_such_vm: return ReplyCode::no_such_vm;
            case VmErrc::exists: return ReplyCode::exists;
            case VmErrc::running: return ReplyCode::vm_running;
            case VmErrc::not_running: return ReplyCode::vm_ended;
            case VmErrc::bad_spec: return ReplyCode::bad_request;
            case VmErrc::no_balloon: return ReplyCode::no_balloon;
            case VmErrc::creating: return ReplyCode::busy;
            case VmErrc::snapshotting: return ReplyCode::busy;
            case VmErrc::bad_snapshot: return ReplyCode::bad_snapshot;
            case VmErrc::snapshot_in_use: return ReplyCode::vm_running;
        }
        return ReplyCode::io_error;
    }
    if (code.category() == vmm::spec_category()) return ReplyCode::bad_request;  // a VM spec's field
    // A manifest or memory snapshot that is not usable. The manifest's category is
    // vmm/snapshot's, a library this layer does not link: matched by its name.
    if (code == guestmem::Errc::bad_snapshot || std::string_view(code.category().name()) == "snapshot")
        return ReplyCode::bad_snapshot;
    if (error.is(std::errc::timed_out)) return ReplyCode::timeout;
    if (code.category() == io::io_category()) {
        // A device smaller than one cluster, or one with an odd block size: the
        // request named something unusable, not a failing disk.
        switch (static_cast<io::Errc>(code.value())) {
            case io::Errc::too_small:
            case io::Errc::not_file_or_block:
            case io::Errc::ram_backed:
            case io::Errc::no_reservation:
            case io::Errc::misaligned: return ReplyCode::bad_request;
            case io::Errc::in_use: return ReplyCode::device_busy;
            default: return ReplyCode::io_error;
        }
    }
    if (error.is(std::errc::no_such_file_or_directory) || error.is(std::errc::no_such_device)) {
        return ReplyCode::no_such_device;
    }
    if (error.is(std::errc::permission_denied) || error.is(std::errc::operation_not_permitted)) {
        return ReplyCode::permission;
    }
    if (error.is(std::errc::file_exists)) return ReplyCode::exists;
    // EINVAL: the request named something malformed (a bad NBD URI, a bad address),
    // not a failing device.
    if (error.is(std::errc::invalid_argument)) return ReplyCode::bad_request;
    return ReplyCode::io_error;
}

// The one size grammar of swapvisor (CLI flags, ctl arguments, JSON requests).
std::expected<std::uint64_t, std::string> parse_size(std::string_view text) {
    if (text.empty()) return std::unexpected(std::string("empty size"));
    std::size_t digits = 0;
    while (digits < text.size() && (text[digits] >= '0' && text[digits] <= '9')) ++digits;
    if (digits == 0) {
        return std::unexpected(fmt::format("'{}' is not a size (expected a number with an optional K, M, G or T "
                                           "suffix, e.g. 512M)",
                                           text));
    }
    std::uint64_t number = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + digits, number);
    if (ec == std::errc::result_out_of_range) return std::unexpected(fmt::format("size '{}' is too large", text));
    if (ec != std::errc() || ptr != text.data() + digits) {
        return std::unexpected(fmt::format("'{}' is not a size", text));
    }
    std::string suffix;
    for (char c : text.substr(digits)) suffix += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    // KiB, MiB, GiB, TiB; not "bib" (B means bytes and takes no "iB").
    if (suffix.size() == 3 && suffix.ends_with("ib") && suffix[0] != 'b') suffix.resize(1);
    unsigned shift = 0;
    if (suffix.empty() || suffix == "b") shift = 0;
    else if (suffix == "k") shift = 10;
    else if (suffix == "m") shift = 20;
    else if (suffix == "g") shift = 30;
    else if (suffix == "t") shift = 40;
    else {
        return std::unexpected(fmt::format("size '{}' has an unknown suffix '{}' (use K, M, G, T or KiB, MiB, GiB, "
                                           "TiB; all are powers of 1024)",
                                           text, text.substr(digits)));
    }
    if (shift != 0 && number > (std::numeric_limits<std::uint64_t>::max() >> shift)) {
        return std::unexpected(fmt::format("size '{}' overflows 64 bits", text));
    }
    return number << shift;
}

namespace {

std::unexpected<RequestError> bad(const json& id, ReplyCode code, std::string message) {
    return std::unexpected(RequestError{id, code, std::move(message)});
}

// A required non-empty string field.
std::expected<std::string, std::string> string_field(const json& request, const char* name) {
    auto it = request.find(name);
    if (it == request.end()) return std::unexpected(fmt::format("missing field \"{}\"", name));
    if (!it->is_string()) return std::unexpected(fmt::format("field \"{}\" must be a string", name));
    std::string value = it->get<std::string>();
    if (value.empty()) return std::unexpected(fmt::format("field \"{}\" is empty", name));
    return value;
}

// A path the server opens: absolute, since the daemon's working directory means
// nothing to the client (ctl makes paths absolute on its side). An NBD URI passes
// when `uri` says so.
enum class Uri : bool { no, yes };
std::expected<std::string, std::string> path_field(const json& request, const char* name, Uri uri) {
    auto path = string_field(request, name);
    if (!path) return path;
    if (uri == Uri::yes && (io::is_nbd_uri(*path) || swap::is_memory_tier_name(*path))) return path;
    if (path->front() != '/')
        return std::unexpected(fmt::format("field \"{}\" must be an absolute path (the server's working directory is "
                                           "not the client's): \"{}\"",
                                           name, *path));
    return path;
}

// A byte count: a non-negative JSON integer, or a size string such as "2G".
std::expected<std::uint64_t, std::string> size_value(const json& value, const char* name) {
    if (value.is_number_unsigned()) return value.get<std::uint64_t>();
    if (value.is_number_integer()) return std::unexpected(fmt::format("field \"{}\" is negative", name));
    if (value.is_string()) {
        auto size = parse_size(value.get_ref<const std::string&>());
        if (!size) return std::unexpected(fmt::format("field \"{}\": {}", name, size.error()));
        return *size;
    }
    return std::unexpected(fmt::format("field \"{}\" must be a byte count (integer) or a size string like \"2G\"", name));
}

std::expected<std::uint64_t, std::string> size_field(const json& request, const char* name) {
    auto it = request.find(name);
    if (it == request.end()) return std::unexpected(fmt::format("missing field \"{}\"", name));
    return size_value(*it, name);
}

// vm-create's fields, type-checked here into the one VM spec (vmm/spec); the VM
// host validates the whole spec by the rules the command line uses (vmm::validate),
// naming the field. Numbers that would not fit the spec's types are refused here.
std::expected<VmSpec, std::string> parse_vm_create(const json& request) {
    VmSpec spec;
    auto name = string_field(request, "name");
    if (!name) return std::unexpected(name.error());
    spec.name = std::move(*name);
    auto kernel = path_field(request, "kernel", Uri::no);
    if (!kernel) return std::unexpected(kernel.error());
    spec.kernel = std::move(*kernel);
    auto memory = size_field(request, "memory");
    if (!memory) return std::unexpected(memory.error());
    spec.memory_bytes = *memory;
    if (auto it = request.find("cmdline"); it != request.end()) {
        if (!it->is_string()) return std::unexpected(std::string("field \"cmdline\" must be a string"));
        spec.cmdline = it->get<std::string>();
    }
    if (auto it = request.find("vcpus"); it != request.end()) {
        if (!it->is_number_unsigned()) return std::unexpected(std::string("field \"vcpus\" must be an integer"));
        if (auto why = vmm::check_vcpus(it->get<std::uint64_t>()); !why.empty())
            return std::unexpected(fmt::format("field \"vcpus\": {}", why));
        spec.vcpus = it->get<unsigned>();
    }
    for (auto [field, target] : {std::pair{"resident_limit", &spec.resident_limit}, std::pair{"swap_quota", &spec.swap_quota}}) {
        auto it = request.find(field);
        if (it == request.end()) continue;
        if (target == &spec.resident_limit && it->is_string() && it->get_ref<const std::string&>() == "auto") {
            spec.auto_limit = true;  // sized by the auto-limit driver (guestmem/README.md#auto-limits)
            continue;
        }
        auto size = size_value(*it, field);
        if (!size) return std::unexpected(size.error());
        *target = *size;
    }
    if (auto why = vmm::check_aligned_memory_limit(spec.resident_limit, "resident limit"); !why.empty())
        return std::unexpected(fmt::format("field \"resident_limit\": {}", why));
    // The tuning (vmm::MemoryTuning); the VM host checks it against the rest (check_tuning).
    if (auto it = request.find("auto_stall_pct"); it != request.end()) {
        if (!it->is_number()) return std::unexpected(std::string("field \"auto_stall_pct\" must be a number (percent)"));
        spec.tuning.auto_stall_target = it->get<double>() / 100;
    }
    for (auto [field, target] : {std::pair{"auto_floor", &spec.tuning.auto_floor},
                                 std::pair{"auto_ceiling", &spec.tuning.auto_ceiling}}) {
        auto it = request.find(field);
        if (it == request.end()) continue;
        auto size = size_value(*it, field);
        if (!size) return std::unexpected(size.error());
        if (*size == 0) return std::unexpected(fmt::format("field \"{}\" must not be 0", field));
        *target = *size;
    }
    if (auto it = request.find("age_scan_ms"); it != request.end()) {
        if (!it->is_number_unsigned() || it->get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxAgeScan.count()))
            return std::unexpected(fmt::format("field \"age_scan_ms\" must be an integer 0 (off) .. {}", kMaxAgeScan.count()));
        spec.tuning.age_scan = std::chrono::milliseconds(it->get<std::int64_t>());
    }
    if (auto it = request.find("age_scan_sample"); it != request.end()) {
        if (!it->is_number_unsigned() || it->get<std::uint64_t>() < 1 || it->get<std::uint64_t>() > kMaxAgeSample)
            return std::unexpected(fmt::format("field \"age_scan_sample\" must be an integer 1..{}", kMaxAgeSample));
        spec.tuning.age_sample = static_cast<unsigned>(it->get<std::uint64_t>());
    }
    if (auto it = request.find("balloon"); it != request.end()) {
        if (!it->is_boolean()) return std::unexpected(std::string("field \"balloon\" must be true or false"));
        spec.balloon = it->get<bool>();
    }
    if (auto it = request.find("serial_log"); it != request.end()) {
        if (!it->is_string() || it->get_ref<const std::string&>().empty())
            return std::unexpected(std::string("field \"serial_log\" must be a non-empty path"));
        auto log = path_field(request, "serial_log", Uri::no);
        if (!log) return std::unexpected(log.error());
        spec.serial_log = std::move(*log);
    }
    return spec;
}

}  // namespace

std::expected<Request, RequestError> parse_request(std::string_view line) {
    if (line.ends_with('\r')) line.remove_suffix(1);
    json request = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded()) return bad(nullptr, ReplyCode::bad_json, "the line is not valid JSON");
    if (!request.is_object()) return bad(nullptr, ReplyCode::bad_json, "a request must be one JSON object");

    // No id is fine (QMP): the reply echoes null.
    auto id_it = request.find("id");
    if (id_it != request.end() && !id_it->is_null() && !id_it->is_number_integer() && !id_it->is_string()) {
        return bad(nullptr, ReplyCode::bad_request, "field \"id\" must be an integer or a string");
    }
    const json id = id_it == request.end() ? json(nullptr) : *id_it;

    auto cmd_it = request.find("cmd");
    if (cmd_it == request.end()) return bad(id, ReplyCode::bad_request, "missing field \"cmd\"");
    if (!cmd_it->is_string()) return bad(id, ReplyCode::bad_request, "field \"cmd\" must be a string");
    const std::string& cmd = cmd_it->get_ref<const std::string&>();

    if (cmd == "status") return Request{id, StatusCmd{StatsDetail::summary}};
    if (cmd == "stats") return Request{id, StatusCmd{StatsDetail::full}};
    if (cmd == "swapon") {
        SwaponCmd swapon;
        auto path = path_field(request, "path", Uri::yes);
        if (!path) return bad(id, ReplyCode::bad_request, path.error());
        swapon.path = std::move(*path);
        if (auto it = request.find("priority"); it != request.end()) {
            if (!it->is_number_integer()) return bad(id, ReplyCode::bad_request, "field \"priority\" must be an integer");
            std::int64_t priority = it->get<std::int64_t>();
            if (it->is_number_unsigned() && it->get<std::uint64_t>() > 32767) priority = 32768;
            if (priority < -1 || priority > 32767) {
                return bad(id, ReplyCode::bad_request, "field \"priority\" must lie in -1..32767");
            }
            swapon.priority = static_cast<int>(priority);
        }
        if (auto it = request.find("size"); it != request.end()) {
            auto size = size_value(*it, "size");
            if (!size) return bad(id, ReplyCode::bad_request, size.error());
            swapon.size_bytes = *size;
        }
        if (auto it = request.find("format"); it != request.end()) {
            // Erasing a device is never implied: only a literal true (or "yes") formats a
            // blank device, only "force" one that holds data (swap/data_probe.hpp).
            if (it->is_boolean()) {
                swapon.format = it->get<bool>() ? swap::Format::yes : swap::Format::no;
            } else if (it->is_string() && (*it == "yes" || *it == "no" || *it == "force")) {
                swapon.format = *it == "yes" ? swap::Format::yes : *it == "force" ? swap::Format::force : swap::Format::no;
            } else {
                return bad(id, ReplyCode::bad_request,
                           "field \"format\" must be true, false, \"yes\", \"no\" or \"force\"");
            }
        }
        if (auto it = request.find("takeover"); it != request.end()) {
            // Taking a device from another pool is never implied: a literal boolean only.
            if (!it->is_boolean()) return bad(id, ReplyCode::bad_request, "field \"takeover\" must be true or false");
            swapon.takeover = it->get<bool>() ? swap::Takeover::yes : swap::Takeover::no;
        }
        return Request{id, std::move(swapon)};
    }
    if (cmd == "swapoff") {
        auto path = path_field(request, "path", Uri::yes);
        if (!path) return bad(id, ReplyCode::bad_request, path.error());
        SwapoffCmd swapoff{std::move(*path)};
        if (auto it = request.find("force"); it != request.end()) {
            // Losing pages is never implied: only a literal boolean is accepted.
            if (!it->is_boolean()) return bad(id, ReplyCode::bad_request, "field \"force\" must be true or false");
            swapoff.force = it->get<bool>() ? swap::Force::yes : swap::Force::no;
        }
        if (auto it = request.find("handover"); it != request.end()) {
            if (!it->is_boolean()) return bad(id, ReplyCode::bad_request, "field \"handover\" must be true or false");
            swapoff.handover = it->get<bool>();
        }
        if (swapoff.handover && swapoff.force == swap::Force::yes)
            return bad(id, ReplyCode::bad_request, "\"handover\" and \"force\" do not go together (a handover loses nothing)");
        return Request{id, std::move(swapoff)};
    }
    if (cmd == "set-limit") {
        auto vm = string_field(request, "vm");
        if (!vm) return bad(id, ReplyCode::bad_request, vm.error());
        auto bytes = size_field(request, "bytes");
        if (!bytes) return bad(id, ReplyCode::bad_request, bytes.error());
        if (auto low = check_memory_limit(*bytes, "resident limit"); !low.empty())
            return bad(id, ReplyCode::bad_request, low);
        return Request{id, SetLimitCmd{std::move(*vm), *bytes}};
    }
    if (cmd == "set-budget") {
        auto bytes = size_field(request, "bytes");
        if (!bytes) return bad(id, ReplyCode::bad_request, bytes.error());
        if (auto low = check_memory_limit(*bytes, "host budget"); !low.empty())
            return bad(id, ReplyCode::bad_request, low);
        return Request{id, SetBudgetCmd{*bytes}};
    }
    if (cmd == "vm-create" && request.contains("restore")) {
        // A restore takes its spec from the snapshot: only these fields.
        for (const auto& [field, value] : request.items())
            if (field != "cmd" && field != "id" && field != "name" && field != "restore" && field != "serial_log" &&
                field != "fill" && field != "prefetch")
                return bad(id, ReplyCode::bad_request,
                           fmt::format("field \"{}\": a restored VM takes its spec from the snapshot "
                                       "(only name, restore, serial_log, fill, prefetch)", field));
        RestoreRequest restore;
        auto name = string_field(request, "name");
        if (!name) return bad(id, ReplyCode::bad_request, name.error());
        restore.name = std::move(*name);
        auto dir = path_field(request, "restore", Uri::no);
        if (!dir) return bad(id, ReplyCode::bad_request, dir.error());
        restore.dir = std::move(*dir);
        if (request.contains("serial_log")) {
            auto log = path_field(request, "serial_log", Uri::no);
            if (!log) return bad(id, ReplyCode::bad_request, log.error());
            restore.serial_log = std::move(*log);
        }
        for (const char* field : {"fill", "prefetch"}) {
            auto it = request.find(field);
            if (it == request.end()) continue;
            if (!it->is_boolean()) return bad(id, ReplyCode::bad_request, fmt::format("field \"{}\" must be true or false", field));
            if (std::string_view(field) == "fill") restore.fill = it->get<bool>();
            else restore.prefetch = it->get<bool>();
        }
        VmCreateCmd create;
        create.spec.name = restore.name;
        create.restore = std::move(restore);
        return Request{id, std::move(create)};
    }
    if (cmd == "snapshot") {
        auto vm = string_field(request, "vm");
        if (!vm) return bad(id, ReplyCode::bad_request, vm.error());
        auto dir = path_field(request, "dir", Uri::no);
        if (!dir) return bad(id, ReplyCode::bad_request, dir.error());
        SnapshotCmd snap{std::move(*vm), std::move(*dir)};
        if (auto it = request.find("stop"); it != request.end()) {
            if (!it->is_boolean()) return bad(id, ReplyCode::bad_request, "field \"stop\" must be true or false");
            snap.after = it->get<bool>() ? AfterSnapshot::stop : AfterSnapshot::resume;
        }
        return Request{id, std::move(snap)};
    }
    if (cmd == "snapshot-delete") {
        auto dir = path_field(request, "dir", Uri::no);
        if (!dir) return bad(id, ReplyCode::bad_request, dir.error());
        return Request{id, SnapshotDeleteCmd{std::move(*dir)}};
    }
    if (cmd == "snapshot-load") {
        auto dir = path_field(request, "dir", Uri::no);
        if (!dir) return bad(id, ReplyCode::bad_request, dir.error());
        return Request{id, SnapshotLoadCmd{std::move(*dir)}};
    }
    if (cmd == "vm-create") {
        auto spec = parse_vm_create(request);
        if (!spec) return bad(id, ReplyCode::bad_request, spec.error());
        return Request{id, VmCreateCmd{std::move(*spec)}};
    }
    if (cmd == "vm-stop") {
        auto vm = string_field(request, "vm");
        if (!vm) return bad(id, ReplyCode::bad_request, vm.error());
        VmStopCmd stop{std::move(*vm)};
        if (auto it = request.find("timeout_ms"); it != request.end()) {
            if (!it->is_number_unsigned() || it->get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxStopTimeout.count()))
                return bad(id, ReplyCode::bad_request,
                           fmt::format("field \"timeout_ms\" must be an integer in 0..{}", kMaxStopTimeout.count()));
            stop.timeout = std::chrono::milliseconds(it->get<std::uint64_t>());
        }
        return Request{id, std::move(stop)};
    }
    for (auto [name, action] : {std::pair{"vm-pause", VmAction::pause}, std::pair{"vm-resume", VmAction::resume},
                                std::pair{"vm-remove", VmAction::remove}}) {
        if (cmd != name) continue;
        auto vm = string_field(request, "vm");
        if (!vm) return bad(id, ReplyCode::bad_request, vm.error());
        return Request{id, VmActionCmd{std::move(*vm), action}};
    }
    if (cmd == "vm-list") return Request{id, VmListCmd{}};
    if (cmd == "set-balloon" || cmd == "set-quota") {
        auto vm = string_field(request, "vm");
        if (!vm) return bad(id, ReplyCode::bad_request, vm.error());
        auto bytes = size_field(request, "bytes");
        if (!bytes) return bad(id, ReplyCode::bad_request, bytes.error());
        if (cmd == "set-balloon") return Request{id, SetBalloonCmd{std::move(*vm), *bytes}};
        return Request{id, SetQuotaCmd{std::move(*vm), *bytes}};
    }
    return bad(id, ReplyCode::unknown_command,
               fmt::format("unknown command \"{}\" (status, stats, swapon, swapoff, set-limit, set-budget, vm-create, "
                           "vm-stop, vm-pause, vm-resume, vm-remove, vm-list, set-balloon, set-quota, snapshot, snapshot-delete, "
                           "snapshot-load)",
                           cmd));
}

bool is_mutating(const Command& command) {
    return !std::holds_alternative<StatusCmd>(command) && !std::holds_alternative<VmListCmd>(command);
}

namespace {

// A value as the audit line shows it: bare if it is plain, else JSON-quoted, so a
// path with spaces or a newline cannot forge another field or another line.
std::string audit_value(std::string_view text) {
    bool plain = !text.empty();
    for (char c : text)
        if (c <= ' ' || c == '"' || c == '\\' || c == '=' || static_cast<unsigned char>(c) >= 0x7f) plain = false;
    if (plain) return std::string(text);
    return json(std::string(text)).dump(-1, ' ', true, json::error_handler_t::replace);
}

struct Describe {
    std::string operator()(const StatusCmd& c) const {
        return c.detail == StatsDetail::full ? "stats" : "status";
    }
    std::string operator()(const SwaponCmd& c) const {
        std::string s = fmt::format("swapon path={} priority={}", audit_value(c.path), c.priority);
        if (c.size_bytes != 0) s += fmt::format(" size={}", c.size_bytes);
        if (c.format == swap::Format::yes) s += " format=yes";
        if (c.format == swap::Format::force) s += " format=force";
        if (c.takeover == swap::Takeover::yes) s += " takeover=yes";
        return s;
    }
    std::string operator()(const SwapoffCmd& c) const {
        return fmt::format("swapoff path={}{}{}", audit_value(c.path), c.force == swap::Force::yes ? " force=yes" : "",
                           c.handover ? " handover=yes" : "");
    }
    std::string operator()(const SetLimitCmd& c) const {
        return fmt::format("set-limit vm={} bytes={}", audit_value(c.vm), c.bytes);
    }
    std::string operator()(const SetBudgetCmd& c) const { return fmt::format("set-budget bytes={}", c.bytes); }
    std::string operator()(const VmCreateCmd& c) const {
        if (c.restore)
            return fmt::format("vm-create vm={} restore={}{}{}", audit_value(c.restore->name),
                               audit_value(c.restore->dir.string()),
                               !c.restore->fill ? "" : *c.restore->fill ? " fill=yes" : " fill=no",
                               c.restore->prefetch ? "" : " prefetch=no");
        const VmSpec& s = c.spec;
        return fmt::format("vm-create vm={} kernel={} memory={} vcpus={} resident_limit={}{} swap_quota={} balloon={}",
                           audit_value(s.name), audit_value(s.kernel.string()), s.memory_bytes, s.vcpus,
                           s.resident_limit, s.auto_limit ? "(auto)" : "", s.swap_quota, s.balloon ? "yes" : "no");
    }
    std::string operator()(const VmStopCmd& c) const {
        return fmt::format("vm-stop vm={} timeout_ms={}", audit_value(c.vm), c.timeout.count());
    }
    std::string operator()(const VmActionCmd& c) const {
        const char* name = c.action == VmAction::pause ? "vm-pause" : c.action == VmAction::resume ? "vm-resume" : "vm-remove";
        return fmt::format("{} vm={}", name, audit_value(c.vm));
    }
    std::string operator()(const VmListCmd&) const { return "vm-list"; }
    std::string operator()(const SnapshotCmd& c) const {
        return fmt::format("snapshot vm={} dir={}{}", audit_value(c.vm), audit_value(c.dir),
                           c.after == AfterSnapshot::stop ? " stop=yes" : "");
    }
    std::string operator()(const SnapshotDeleteCmd& c) const {
        return fmt::format("snapshot-delete dir={}", audit_value(c.dir));
    }
    std::string operator()(const SnapshotLoadCmd& c) const {
        return fmt::format("snapshot-load dir={}", audit_value(c.dir));
    }
    std::string operator()(const SetBalloonCmd& c) const {
        return fmt::format("set-balloon vm={} bytes={}", audit_value(c.vm), c.bytes);
    }
    std::string operator()(const SetQuotaCmd& c) const {
        return fmt::format("set-quota vm={} bytes={}", audit_value(c.vm), c.bytes);
    }
};

}  // namespace

std::string describe(const Command& command) { return std::visit(Describe{}, command); }

json ok_reply(const json& id) { return json{{"id", id}, {"ok", true}}; }

json error_reply(const json& id, ReplyCode code, std::string_view message) {
    return json{{"id", id},
                {"ok", false},
                {"error", {{"code", std::string(code_name(code))}, {"message", std::string(message)}}}};
}

json vm_info_json(const VmInfo& info) {
    json j = {{"name", info.name}, {"state", vm_state_name(info.state)}, {"vcpus", info.vcpus},
              {"memory_bytes", info.memory_bytes}};
    if (info.exit_code) {
        j["exit_code"] = *info.exit_code;
        j["end_reason"] = info.end_reason;
        if (!info.end_message.empty()) j["end_message"] = info.end_message;
    }
    if (!info.restored_from.empty()) j["restored_from"] = info.restored_from;
    return j;
}

json progress_line(const json& id, std::uint64_t done, std::uint64_t total) {
    return json{{"id", id}, {"progress", {{"done", done}, {"total", total}}}};
}

std::string to_line(const json& object) {
    std::string line = object.dump(-1, ' ', false, json::error_handler_t::replace);
    line += '\n';
    return line;
}

}  // namespace swapvisor::vmm::control
