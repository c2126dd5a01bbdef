// Manifest: the top-level layout, its cross-member checks and the atomic file write
// (manifest.hpp for the invariants).
#include "vmm/snapshot/manifest.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "io/unique_fd.hpp"

namespace swapvisor::vmm::snapshot {

namespace {

std::unexpected<Error> bad(std::string what) {
    return make_error(SnapshotErrc::bad_manifest, "reading snapshot manifest", std::move(what));
}

// Kernel contract: write(2) may be short or interrupted; loop until done.
Result<void> write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("write");
        data.remove_prefix(static_cast<std::size_t>(n));
    }
    return {};
}

}  // namespace

Json manifest_to_json(const Manifest& m) {
    Json vcpus = Json::array();
    for (const kvm::VcpuState& v : m.kvm.vcpus) vcpus.push_back(to_json(v));
    return Json{{"format", kFormatName},     {"version", kFormatVersion},
                {"spec", to_json(m.spec)},   {"vm", to_json(m.kvm.vm)},
                {"vcpus", std::move(vcpus)}, {"devices", to_json(m.devices)},
                {"memory", m.memory}};
}

Result<Manifest> manifest_from_json(const Json& json) {
    if (!json.is_object()) return bad("the manifest is not a JSON object");
    // Format and version first: a manifest of another version is reported as such,
    // not as whatever member it happens to lack.
    auto format = json.find("format");
    if (format == json.end() || !format->is_string() || format->get<std::string>() != kFormatName)
        return bad(fmt::format("format: not \"{}\"", kFormatName));
    auto version = json.find("version");
    if (version == json.end() || !is_uint(*version))
        return bad("version: missing or not an unsigned integer");
    if (version->get<std::uint64_t>() != kFormatVersion)
        return make_error(SnapshotErrc::unsupported_version, "reading snapshot manifest",
                          fmt::format("version {}, this build reads version {}", version->get<std::uint64_t>(),
                                      kFormatVersion));
    for (auto it = json.begin(); it != json.end(); ++it) {
        static constexpr std::string_view kKnown[] = {"format", "version", "spec", "vm", "vcpus", "devices", "memory"};
        if (std::find(std::begin(kKnown), std::end(kKnown), it.key()) == std::end(kKnown))
            return bad(fmt::format("{}: unknown member", it.key()));
    }
    auto member = [&](const char* key) -> Result<const Json*> {
        auto it = json.find(key);
        if (it == json.end()) return bad(fmt::format("{}: member missing", key));
        return &*it;
    };

    Manifest m;
    m.spec = SWV_TRY(vm_spec_from_json(*SWV_TRY(member("spec")), "spec"));
    m.kvm.vm = SWV_TRY(vm_state_from_json(*SWV_TRY(member("vm")), "vm"));
    const Json* vcpus = SWV_TRY(member("vcpus"));
    if (!vcpus->is_array()) return bad("vcpus: not an array");
    if (vcpus->size() != m.spec.vcpus)
        return make_error(SnapshotErrc::vcpu_count, "reading snapshot manifest",
                          fmt::format("{} vCPU states, spec.vcpus is {}", vcpus->size(), m.spec.vcpus));
    for (std::size_t i = 0; i < vcpus->size(); ++i) {
        kvm::VcpuState v = SWV_TRY(vcpu_state_from_json((*vcpus)[i], fmt::format("vcpus[{}]", i)));
        if (v.index != i) return bad(fmt::format("vcpus[{}].index: {}, expected {}", i, v.index, i));
        m.kvm.vcpus.push_back(std::move(v));
    }
    m.devices = SWV_TRY(device_states_from_json(*SWV_TRY(member("devices")), "devices"));
    if (m.devices.balloon.has_value() != m.spec.balloon)
        return bad(fmt::format("devices.balloon: {} but spec.balloon is {}",
                               m.devices.balloon ? "present" : "null", m.spec.balloon));
    const Json* memory = SWV_TRY(member("memory"));
    if (!memory->is_object()) return bad("memory: not an object");
    m.memory = *memory;
    return m;
}

Result<Manifest> parse_manifest(std::string_view text) {
    // No exceptions: a parse error yields a discarded value.
    Json json = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded())
        return make_error(SnapshotErrc::truncated, "reading snapshot manifest",
                          fmt::format("{} bytes that are not one whole JSON value", text.size()));
    return manifest_from_json(json);
}

Result<void> write_manifest(const std::filesystem::path& dir, const Manifest& manifest) {
    const std::string text = manifest_to_json(manifest).dump(1) + "\n";
    const std::filesystem::path final_path = dir / kManifestFile;
    const std::filesystem::path tmp_path = dir / (std::string(kManifestFile) + ".tmp");
    const std::string where = final_path.string();
    {
        // Kernel contract: O_TRUNC drops what an earlier, interrupted write left
        // under the temporary name; the file is complete and on disk (fsync) before
        // the rename makes it the manifest.
        io::UniqueFd fd(::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
        if (!fd.valid()) return errno_error("open snapshot manifest", errno, tmp_path.string());
        SWV_TRY(with_context(write_all(fd.get(), text), tmp_path.string()));
        if (::fsync(fd.get()) < 0) return errno_error("fsync snapshot manifest", errno, tmp_path.string());
    }
    // Kernel contract: rename(2) replaces the target atomically; fsync of the
    // directory makes the new name durable.
    if (::rename(tmp_path.c_str(), final_path.c_str()) < 0) return errno_error("rename snapshot manifest", errno, where);
    io::UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir_fd.valid()) return errno_error("open snapshot directory", errno, dir.string());
    if (::fsync(dir_fd.get()) < 0) return errno_error("fsync snapshot directory", errno, dir.string());
    return {};
}

Result<Manifest> read_manifest(const std::filesystem::path& dir) {
    const std::filesystem::path path = dir / kManifestFile;
    io::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return errno_error("open snapshot manifest", errno, path.string());
    struct stat st {};
    if (::fstat(fd.get(), &st) < 0) return errno_error("stat snapshot manifest", errno, path.string());
    if (!S_ISREG(st.st_mode)) return errno_error("open snapshot manifest", EINVAL, path.string() + ": not a regular file");
    if (static_cast<std::uint64_t>(st.st_size) > kMaxManifestBytes)
        return errno_error("open snapshot manifest", EFBIG, fmt::format("{}: {} bytes", path.string(), st.st_size));
    std::string text(static_cast<std::size_t>(st.st_size), '\0');
    std::size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::read(fd.get(), text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return errno_error("read snapshot manifest", errno, path.string());
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    text.resize(done);
    return with_context(parse_manifest(text), path.string());
}

}  // namespace swapvisor::vmm::snapshot
