// JSON writers and strict readers of the VM side of a snapshot (state_json.hpp).
// Readers go through Fields, which checks one object member by member and then
// that nothing unknown is left, so each reader below is a plain list of fields.
#include "vmm/snapshot/state_json.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <set>

#include <fmt/format.h>

#include "vmm/error_category.hpp"

namespace swapvisor::vmm::snapshot {

// Parsed text gives unsigned numbers; values built in code may be signed ones.
bool is_uint(const Json& v) { return v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0); }

namespace {

std::string describe(SnapshotErrc e) {
    switch (e) {
        case SnapshotErrc::bad_manifest: return "malformed snapshot manifest";
        case SnapshotErrc::unsupported_version: return "snapshot format version not supported";
        case SnapshotErrc::vcpu_count: return "snapshot vCPU states do not match its vCPU count";
        case SnapshotErrc::truncated: return "snapshot manifest truncated or not JSON";
    }
    return "unknown snapshot error";
}

std::unexpected<Error> bad(std::string what) {
    return make_error(SnapshotErrc::bad_manifest, "reading snapshot manifest", std::move(what));
}

constexpr char kHex[] = "0123456789abcdef";



std::string hex(const kvm::Blob& b) {
    std::string out;
    out.reserve(b.size() * 2);
    for (std::uint8_t v : b) {
        out.push_back(kHex[v >> 4]);
        out.push_back(kHex[v & 0xf]);
    }
    return out;
}

int nibble(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// Reads one JSON object strictly: each getter takes a member (missing, wrong type
// or out of range is an error naming its path); done() refuses members no getter
// asked for.
class Fields {
public:
    static Result<Fields> of(const Json& json, const std::string& path) {
        if (!json.is_object()) return bad(fmt::format("{}: not an object", path));
        return Fields(json, path);
    }

    Result<const Json*> member(const char* key) {
        seen_.insert(key);
        auto it = json_->find(key);
        if (it == json_->end()) return bad(fmt::format("{}: member missing", at(key)));
        return &*it;
    }

    Result<std::uint64_t> u64(const char* key, std::uint64_t max = std::numeric_limits<std::uint64_t>::max()) {
        const Json* v = SWV_TRY(member(key));
        if (!is_uint(*v)) return bad(fmt::format("{}: not an unsigned integer", at(key)));
        std::uint64_t n = v->get<std::uint64_t>();
        if (n > max) return bad(fmt::format("{}: {} is above {}", at(key), n, max));
        return n;
    }
    template <class T>
    Result<T> uint(const char* key) {
        return static_cast<T>(SWV_TRY(u64(key, std::numeric_limits<T>::max())));
    }
    Result<bool> boolean(const char* key) {
        const Json* v = SWV_TRY(member(key));
        if (!v->is_boolean()) return bad(fmt::format("{}: not true or false", at(key)));
        return v->get<bool>();
    }
    Result<std::string> string(const char* key) {
        const Json* v = SWV_TRY(member(key));
        if (!v->is_string()) return bad(fmt::format("{}: not a string", at(key)));
        return v->get<std::string>();
    }
    Result<const Json*> array(const char* key, std::size_t max) {
        const Json* v = SWV_TRY(member(key));
        if (!v->is_array()) return bad(fmt::format("{}: not an array", at(key)));
        if (v->size() > max) return bad(fmt::format("{}: {} elements, at most {}", at(key), v->size(), max));
        return v;
    }
    // Hex bytes, `min`..`max` of them.
    Result<kvm::Blob> blob(const char* key, std::size_t min, std::size_t max) {
        std::string text = SWV_TRY(string(key));
        if (text.size() % 2 != 0) return bad(fmt::format("{}: odd number of hex digits", at(key)));
        const std::size_t n = text.size() / 2;
        if (n < min || n > max) {
            if (min == max) return bad(fmt::format("{}: {} bytes, expected {}", at(key), n, min));
            return bad(fmt::format("{}: {} bytes, expected {} to {}", at(key), n, min, max));
        }
        kvm::Blob out(n);
        for (std::size_t i = 0; i < n; ++i) {
            int hi = nibble(text[2 * i]), lo = nibble(text[2 * i + 1]);
            if (hi < 0 || lo < 0) return bad(fmt::format("{}: not lowercase hex at byte {}", at(key), i));
            out[i] = static_cast<std::uint8_t>(hi << 4 | lo);
        }
        return out;
    }
    Result<kvm::Blob> blob(const char* key, std::size_t exact) { return blob(key, exact, exact); }

    Result<void> done() const {
        for (auto it = json_->begin(); it != json_->end(); ++it)
            if (!seen_.contains(it.key())) return bad(fmt::format("{}: unknown member", at(it.key())));
        return {};
    }

    std::string at(std::string_view key) const { return path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key); }

private:
    Fields(const Json& json, std::string path) : json_(&json), path_(std::move(path)) {}
    const Json* json_;
    std::string path_;
    std::set<std::string, std::less<>> seen_;
};

// A JSON array of unsigned integers of a fixed length (a CPUID entry, an MSR).
Result<std::vector<std::uint64_t>> tuple(const Json& v, std::size_t n, const std::string& path) {
    if (!v.is_array() || v.size() != n) return bad(fmt::format("{}: not an array of {} integers", path, n));
    std::vector<std::uint64_t> out;
    for (const Json& e : v) {
        if (!is_uint(e)) return bad(fmt::format("{}: not an array of {} unsigned integers", path, n));
        out.push_back(e.get<std::uint64_t>());
    }
    return out;
}

const char* sregs_format_name(kvm::SregsFormat f) { return f == kvm::SregsFormat::sregs2 ? "sregs2" : "sregs"; }

}  // namespace

const std::error_category& snapshot_category() {
    static const EnumCategory<SnapshotErrc> category("snapshot", describe);
    return category;
}

// ---- vCPU ----------------------------------------------------------------------

Json to_json(const kvm::VcpuState& s) {
    Json cpuid = Json::array();
    for (const kvm::CpuidEntry& e : s.cpuid) cpuid.push_back({e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx});
    Json msrs = Json::array();
    for (const kvm::MsrValue& m : s.msrs) msrs.push_back({m.index, m.value});
    return Json{{"index", s.index},
                {"cpuid", std::move(cpuid)},
                {"tsc_khz", s.tsc_khz},
                {"mp_state", s.mp_state},
                {"regs", hex(s.regs)},
                {"sregs_format", sregs_format_name(s.sregs_format)},
                {"sregs", hex(s.sregs)},
                {"fpu", hex(s.fpu)},
                {"xsave", hex(s.xsave)},
                {"xcrs", hex(s.xcrs)},
                {"debug_regs", hex(s.debug_regs)},
                {"lapic", hex(s.lapic)},
                {"msrs", std::move(msrs)},
                {"vcpu_events", hex(s.vcpu_events)}};
}

Result<kvm::VcpuState> vcpu_state_from_json(const Json& json, const std::string& path) {
    Fields f = SWV_TRY(Fields::of(json, path));
    kvm::VcpuState s;
    s.index = SWV_TRY(f.uint<std::uint32_t>("index"));
    const Json* cpuid = SWV_TRY(f.array("cpuid", kvm::kMaxSavedCpuid));
    if (cpuid->empty()) return bad(fmt::format("{}: empty", f.at("cpuid")));
    for (std::size_t i = 0; i < cpuid->size(); ++i) {
        std::string at = fmt::format("{}[{}]", f.at("cpuid"), i);
        std::vector<std::uint64_t> v = SWV_TRY(tuple((*cpuid)[i], 7, at));
        if (std::any_of(v.begin(), v.end(), [](std::uint64_t x) { return x > 0xffff'ffffULL; }))
            return bad(fmt::format("{}: a value above 32 bits", at));
        s.cpuid.push_back(kvm::CpuidEntry{static_cast<std::uint32_t>(v[0]), static_cast<std::uint32_t>(v[1]),
                                          static_cast<std::uint32_t>(v[2]), static_cast<std::uint32_t>(v[3]),
                                          static_cast<std::uint32_t>(v[4]), static_cast<std::uint32_t>(v[5]),
                                          static_cast<std::uint32_t>(v[6])});
    }
    s.tsc_khz = SWV_TRY(f.uint<std::uint32_t>("tsc_khz"));
    s.mp_state = SWV_TRY(f.uint<std::uint32_t>("mp_state"));
    s.regs = SWV_TRY(f.blob("regs", kvm::kRegsBytes));
    std::string format = SWV_TRY(f.string("sregs_format"));
    if (format == "sregs2") {
        s.sregs_format = kvm::SregsFormat::sregs2;
        s.sregs = SWV_TRY(f.blob("sregs", kvm::kSregs2Bytes));
    } else if (format == "sregs") {
        s.sregs_format = kvm::SregsFormat::sregs;
        s.sregs = SWV_TRY(f.blob("sregs", kvm::kSregsBytes));
    } else {
        return bad(fmt::format("{}: \"{}\" is neither \"sregs\" nor \"sregs2\"", f.at("sregs_format"), format));
    }
    s.fpu = SWV_TRY(f.blob("fpu", kvm::kFpuBytes));
    s.xsave = SWV_TRY(f.blob("xsave", 0, kvm::kXsaveMaxBytes));
    if (!s.xsave.empty() && s.xsave.size() < kvm::kXsaveMinBytes)
        return bad(fmt::format("{}: {} bytes, expected none or at least {}", f.at("xsave"), s.xsave.size(),
                               kvm::kXsaveMinBytes));
    s.xcrs = SWV_TRY(f.blob("xcrs", 0, kvm::kXcrsBytes));
    if (!s.xcrs.empty() && s.xcrs.size() != kvm::kXcrsBytes)
        return bad(fmt::format("{}: {} bytes, expected none or {}", f.at("xcrs"), s.xcrs.size(), kvm::kXcrsBytes));
    s.debug_regs = SWV_TRY(f.blob("debug_regs", kvm::kDebugRegsBytes));
    s.lapic = SWV_TRY(f.blob("lapic", kvm::kLapicBytes));
    const Json* msrs = SWV_TRY(f.array("msrs", kvm::kMaxSavedMsrs));
    for (std::size_t i = 0; i < msrs->size(); ++i) {
        std::string at = fmt::format("{}[{}]", f.at("msrs"), i);
        std::vector<std::uint64_t> v = SWV_TRY(tuple((*msrs)[i], 2, at));
        if (v[0] > 0xffff'ffffULL) return bad(fmt::format("{}: MSR index above 32 bits", at));
        s.msrs.push_back(kvm::MsrValue{static_cast<std::uint32_t>(v[0]), v[1]});
    }
    s.vcpu_events = SWV_TRY(f.blob("vcpu_events", kvm::kVcpuEventsBytes));
    SWV_TRY(f.done());
    return s;
}

// ---- VM-wide KVM state ---------------------------------------------------------

Json to_json(const kvm::VmState& s) {
    return Json{{"clock_ns", s.clock_ns},
                {"pic_master", hex(s.pic_master)},
                {"pic_slave", hex(s.pic_slave)},
                {"ioapic", hex(s.ioapic)},
                {"pit", hex(s.pit)}};
}

Result<kvm::VmState> vm_state_from_json(const Json& json, const std::string& path) {
    Fields f = SWV_TRY(Fields::of(json, path));
    kvm::VmState s;
    s.clock_ns = SWV_TRY(f.u64("clock_ns"));
    s.pic_master = SWV_TRY(f.blob("pic_master", kvm::kIrqchipBytes));
    s.pic_slave = SWV_TRY(f.blob("pic_slave", kvm::kIrqchipBytes));
    s.ioapic = SWV_TRY(f.blob("ioapic", kvm::kIrqchipBytes));
    s.pit = SWV_TRY(f.blob("pit", kvm::kPitBytes));
    SWV_TRY(f.done());
    return s;
}

// ---- devices -------------------------------------------------------------------

namespace {

Json to_json(const devices::QueueState& q) {
    return Json{{"max_size", q.max_size},       {"size", q.size},
                {"ready", q.ready},             {"desc_addr", q.desc_addr},
                {"driver_addr", q.driver_addr}, {"device_addr", q.device_addr},
                {"last_avail", q.last_avail},   {"next_used", q.next_used},
                {"used_since_interrupt", q.used_since_interrupt}};
}

Result<devices::QueueState> queue_from_json(const Json& json, const std::string& path) {
    Fields f = SWV_TRY(Fields::of(json, path));
    devices::QueueState q;
    q.max_size = SWV_TRY(f.uint<std::uint16_t>("max_size"));
    q.size = SWV_TRY(f.uint<std::uint16_t>("size"));
    q.ready = SWV_TRY(f.boolean("ready"));
    q.desc_addr = SWV_TRY(f.u64("desc_addr"));
    q.driver_addr = SWV_TRY(f.u64("driver_addr"));
    q.device_addr = SWV_TRY(f.u64("device_addr"));
    q.last_avail = SWV_TRY(f.uint<std::uint16_t>("last_avail"));
    q.next_used = SWV_TRY(f.uint<std::uint16_t>("next_used"));
    q.used_since_interrupt = SWV_TRY(f.uint<std::uint32_t>("used_since_interrupt"));
    SWV_TRY(f.done());
    return q;
}

Json to_json(const devices::VirtioMmioState& t) {
    Json queues = Json::array();
    for (const devices::QueueState& q : t.queues) queues.push_back(to_json(q));
    return Json{{"device_id", t.device_id},
                {"device_features_sel", t.device_features_sel},
                {"driver_features_sel", t.driver_features_sel},
                {"driver_features", t.driver_features},
                {"queue_sel", t.queue_sel},
                {"status", t.status},
                {"interrupt_status", t.interrupt_status},
                {"config_generation", t.config_generation},
                {"config_change_pending", t.config_change_pending},
                {"queues", std::move(queues)}};
}

constexpr std::size_t kMaxQueues = 64;

Result<devices::VirtioMmioState> transport_from_json(const Json& json, const std::string& path) {
    Fields f = SWV_TRY(Fields::of(json, path));
    devices::VirtioMmioState t;
    t.device_id = SWV_TRY(f.uint<std::uint32_t>("device_id"));
    t.device_features_sel = SWV_TRY(f.uint<std::uint32_t>("device_features_sel"));
    t.driver_features_sel = SWV_TRY(f.uint<std::uint32_t>("driver_features_sel"));
    t.driver_features = SWV_TRY(f.u64("driver_features"));
    t.queue_sel = SWV_TRY(f.uint<std::uint32_t>("queue_sel"));
    t.status = SWV_TRY(f.uint<std::uint32_t>("status"));
    t.interrupt_status = SWV_TRY(f.uint<std::uint32_t>("interrupt_status"));
    t.config_generation = SWV_TRY(f.uint<std::uint32_t>("config_generation"));
    t.config_change_pending = SWV_TRY(f.boolean("config_change_pending"));
    const Json* queues = SWV_TRY(f.array("queues", kMaxQueues));
    for (std::size_t i = 0; i < queues->size(); ++i)
        t.queues.push_back(SWV_TRY(queue_from_json((*queues)[i], fmt::format("{}[{}]", f.at("queues"), i))));
    SWV_TRY(f.done());
    return t;
}

Json to_json(const devices::BalloonState& b) {
    const devices::BalloonStats& s = b.stats;
    Json guest = nullptr;
    if (s.guest) {
        Json values = Json::array();
        for (const auto& v : s.guest->values) values.push_back(v ? Json(*v) : Json(nullptr));
        guest = Json{{"values", std::move(values)}, {"unknown_tags", s.guest->unknown_tags}};
    }
    return Json{{"target_pages", s.target_pages},
                {"actual_pages", s.actual_pages},
                {"balloon_pages", s.balloon_pages},
                {"reported_pages", s.reported_pages},
                {"reported_ranges", s.reported_ranges},
                {"refused_ranges", s.refused_ranges},
                {"inflated_pages", s.inflated_pages},
                {"deflated_pages", s.deflated_pages},
                {"oom_deflated_pages", s.oom_deflated_pages},
                {"unrequested_deflated_pages", s.unrequested_deflated_pages},
                {"discard_errors", s.discard_errors},
                {"stats_updates", s.stats_updates},
                {"stats_refused", s.stats_refused},
                {"stats_unknown_tags", s.stats_unknown_tags},
                {"stats_requests", s.stats_requests},
                {"guest_stats", std::move(guest)},
                {"stats_head", b.stats_head ? Json(*b.stats_head) : Json(nullptr)},
                {"stats_queue", b.stats_queue}};
}

Result<devices::BalloonState> balloon_from_json(const Json& json, const std::string& path) {
    Fields f = SWV_TRY(Fields::of(json, path));
    devices::BalloonState b;
    devices::BalloonStats& s = b.stats;
    s.target_pages = SWV_TRY(f.uint<std::uint32_t>("target_pages"));
    s.actual_pages = SWV_TRY(f.uint<std::uint32_t>("actual_pages"));
    s.balloon_pages = SWV_TRY(f.u64("balloon_pages"));
    s.reported_pages = SWV_TRY(f.u64("reported_pages"));
    s.reported_ranges = SWV_TRY(f.u64("reported_ranges"));
    s.refused_ranges = SWV_TRY(f.u64("refused_ranges"));
    s.inflated_pages = SWV_TRY(f.u64("inflated_pages"));
    s.deflated_pages = SWV_TRY(f.u64("deflated_pages"));
    s.oom_deflated_pages = SWV_TRY(f.u64("oom_deflated_pages"));
    s.unrequested_deflated_pages = SWV_TRY(f.u64("unrequested_deflated_pages"));
    s.discard_errors = SWV_TRY(f.u64("discard_errors"));
    s.stats_updates = SWV_TRY(f.u64("stats_updates"));
    s.stats_refused = SWV_TRY(f.u64("stats_refused"));
    s.stats_unknown_tags = SWV_TRY(f.u64("stats_unknown_tags"));
    s.stats_requests = SWV_TRY(f.u64("stats_requests"));
    const Json* guest = SWV_TRY(f.member("guest_stats"));
    if (!guest->is_null()) {
        Fields g = SWV_TRY(Fields::of(*guest, f.at("guest_stats")));
        devices::GuestStats stats;
        const Json* values = SWV_TRY(g.array("values", devices::kBalloonStatTags));
        if (values->size() != devices::kBalloonStatTags)
            return bad(fmt::format("{}: {} values, expected {}", g.at("values"), values->size(), devices::kBalloonStatTags));
        for (unsigned tag = 0; tag < devices::kBalloonStatTags; ++tag) {
            const Json& v = (*values)[tag];
            if (v.is_null()) continue;
            if (!is_uint(v))
                return bad(fmt::format("{}[{}]: neither null nor an unsigned integer", g.at("values"), tag));
            stats.values[tag] = v.get<std::uint64_t>();
        }
        stats.unknown_tags = SWV_TRY(g.uint<std::uint32_t>("unknown_tags"));
        SWV_TRY(g.done());
        s.guest = stats;
    }
    const Json* head = SWV_TRY(f.member("stats_head"));
    if (!head->is_null()) b.stats_head = SWV_TRY(f.uint<std::uint16_t>("stats_head"));
    b.stats_queue = SWV_TRY(f.uint<std::uint32_t>("stats_queue"));
    SWV_TRY(f.done());
    return b;
}

}  // namespace

Json to_json(const devices::DeviceStates& d) {
    Json virtio = Json::array();
    for (const devices::VirtioDeviceState& v : d.virtio)
        virtio.push_back(
            Json{{"name", v.name}, {"mmio_base", v.mmio_base}, {"gsi", v.gsi}, {"transport", to_json(v.transport)}});
    const devices::SerialState& s = d.serial;
    return Json{{"serial", {{"ier", s.ier}, {"lcr", s.lcr}, {"mcr", s.mcr}, {"scr", s.scr}, {"dll", s.dll}, {"dlm", s.dlm}}},
                {"virtio", std::move(virtio)},
                {"balloon", d.balloon ? to_json(*d.balloon) : Json(nullptr)}};
}

Result<devices::DeviceStates> device_states_from_json(const Json& json, const std::string& path) {
    Fields f = SWV_TRY(Fields::of(json, path));
    devices::DeviceStates d;
    {
        Fields s = SWV_TRY(Fields::of(*SWV_TRY(f.member("serial")), f.at("serial")));
        d.serial.ier = SWV_TRY(s.uint<std::uint8_t>("ier"));
        d.serial.lcr = SWV_TRY(s.uint<std::uint8_t>("lcr"));
        d.serial.mcr = SWV_TRY(s.uint<std::uint8_t>("mcr"));
        d.serial.scr = SWV_TRY(s.uint<std::uint8_t>("scr"));
        d.serial.dll = SWV_TRY(s.uint<std::uint8_t>("dll"));
        d.serial.dlm = SWV_TRY(s.uint<std::uint8_t>("dlm"));
        SWV_TRY(s.done());
    }
    const Json* virtio = SWV_TRY(f.array("virtio", devices::kMaxVirtioDevices));
    for (std::size_t i = 0; i < virtio->size(); ++i) {
        Fields v = SWV_TRY(Fields::of((*virtio)[i], fmt::format("{}[{}]", f.at("virtio"), i)));
        devices::VirtioDeviceState state;
        state.name = SWV_TRY(v.string("name"));
        state.mmio_base = SWV_TRY(v.u64("mmio_base"));
        state.gsi = SWV_TRY(v.uint<std::uint32_t>("gsi"));
        state.transport = SWV_TRY(transport_from_json(*SWV_TRY(v.member("transport")), v.at("transport")));
        SWV_TRY(v.done());
        d.virtio.push_back(std::move(state));
    }
    const Json* balloon = SWV_TRY(f.member("balloon"));
    if (!balloon->is_null()) d.balloon = SWV_TRY(balloon_from_json(*balloon, f.at("balloon")));
    SWV_TRY(f.done());
    return d;
}

// ---- the VM spec ---------------------------------------------------------------

Json to_json(const VmSpec& spec) {
    return Json{{"name", spec.name},
                {"kernel", spec.kernel.string()},
                {"cmdline", spec.cmdline},
                {"memory_bytes", spec.memory_bytes},
                {"vcpus", spec.vcpus},
                {"resident_limit", spec.resident_limit},
                {"auto_limit", spec.auto_limit},
                {"swap_quota", spec.swap_quota},
                {"balloon", spec.balloon},
                {"balloon_stats_interval_ms", static_cast<std::uint64_t>(spec.balloon_stats_interval.count())},
                {"serial_log", spec.serial_log ? Json(spec.serial_log->string()) : Json(nullptr)}};
}

Result<VmSpec> vm_spec_from_json(const Json& json, const std::string& path) {
    Fields f = SWV_TRY(Fields::of(json, path));
    VmSpec spec;
    auto rule = [&](const char* key, std::string why) -> Result<void> {
        if (!why.empty()) return bad(fmt::format("{}: {}", f.at(key), why));
        return {};
    };
    spec.name = SWV_TRY(f.string("name"));
    SWV_TRY(rule("name", check_name(spec.name)));
    spec.kernel = SWV_TRY(f.string("kernel"));
    spec.cmdline = SWV_TRY(f.string("cmdline"));
    SWV_TRY(rule("cmdline", check_cmdline(spec.cmdline)));
    spec.memory_bytes = SWV_TRY(f.u64("memory_bytes"));
    SWV_TRY(rule("memory_bytes", check_memory(spec.memory_bytes)));
    std::uint64_t vcpus = SWV_TRY(f.u64("vcpus"));
    SWV_TRY(rule("vcpus", check_vcpus(vcpus)));
    spec.vcpus = static_cast<unsigned>(vcpus);
    spec.resident_limit = SWV_TRY(f.u64("resident_limit"));
    if (spec.resident_limit != 0)
        SWV_TRY(rule("resident_limit", check_aligned_memory_limit(spec.resident_limit, "resident limit")));
    spec.auto_limit = SWV_TRY(f.boolean("auto_limit"));
    spec.swap_quota = SWV_TRY(f.u64("swap_quota"));
    spec.balloon = SWV_TRY(f.boolean("balloon"));
    spec.balloon_stats_interval =
        std::chrono::milliseconds(SWV_TRY(f.u64("balloon_stats_interval_ms", kMaxBalloonStatsInterval.count())));
    const Json* log = SWV_TRY(f.member("serial_log"));
    if (!log->is_null()) spec.serial_log = std::filesystem::path(SWV_TRY(f.string("serial_log")));
    SWV_TRY(f.done());
    return spec;
}

}  // namespace swapvisor::vmm::snapshot
