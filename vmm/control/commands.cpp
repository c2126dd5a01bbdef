// The control commands (commands.hpp). Each `run` overload is one command: it reads
// or changes the host through CommandContext and returns the reply object.
#include "vmm/control/commands.hpp"

#include <optional>
#include <variant>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "io/ring.hpp"
#include "vmm/control/stats_json.hpp"

namespace swapvisor::vmm::control {

using nlohmann::json;

namespace {

json error_of(const json& id, const Error& error) { return error_reply(id, reply_code_of(error), error.message()); }

// A VM host's answer as a reply: the VmInfo's fields, or the error.
json vm_reply(const json& id, const Result<VmInfo>& info) {
    if (!info) return error_of(id, info.error());
    json reply = ok_reply(id);
    reply.update(vm_info_json(*info));
    return reply;
}

class Runner {
public:
    Runner(const CommandContext& context, const json& id, const ProgressSink& progress)
        : c_(context), id_(id), progress_(progress) {}

    json run(const StatusCmd& cmd) {
        json reply = ok_reply(id_);
        reply.update(stats_json(c_.host, c_.devices, cmd.detail));
        if (c_.vms != nullptr) {
            const SnapshotSummary s = c_.vms->snapshot_summary();
            reply["snapshots"] = {{"loaded", s.snapshots}, {"held_vslots", s.held_vslots}, {"unavailable", s.unavailable}};
        }
        return reply;
    }

    json run(const SetLimitCmd& cmd) {
        guestmem::VmRef vm = c_.host.find(cmd.vm);  // held while used (guestmem/README.md#vm-lifetimes)
        if (vm == nullptr) return error_reply(id_, ReplyCode::no_such_vm, fmt::format("no VM named \"{}\"", cmd.vm));
        vm->set_resident_limit(cmd.bytes);
        json reply = ok_reply(id_);
        reply["vm"] = cmd.vm;
        reply["resident_limit"] = cmd.bytes;
        return reply;
    }

    json run(const SetBudgetCmd& cmd) {
        c_.host.set_budget(cmd.bytes);
        json reply = ok_reply(id_);
        reply["budget_bytes"] = cmd.bytes;
        return reply;
    }

    json run(const SetQuotaCmd& cmd) {
        guestmem::VmRef vm = c_.host.find(cmd.vm);  // held while used (guestmem/README.md#vm-lifetimes)
        if (vm == nullptr)
            return error_reply(id_, ReplyCode::no_such_vm, fmt::format("no running VM named \"{}\"", cmd.vm));
        vm->set_swap_quota(cmd.bytes);
        spdlog::info("{}: swap quota {}", cmd.vm, cmd.bytes == 0 ? std::string("none") : fmt::format("{} bytes", cmd.bytes));
        json reply = ok_reply(id_);
        reply["vm"] = cmd.vm;
        reply["swap_quota"] = cmd.bytes;
        return reply;
    }

    json run(const VmListCmd&) {
        if (auto refused = no_vms()) return *refused;
        json list = json::array();
        for (const VmInfo& info : c_.vms->list_vms()) list.push_back(vm_info_json(info));
        json reply = ok_reply(id_);
        reply["vms"] = std::move(list);
        return reply;
    }

    json run(const SetBalloonCmd& cmd) {
        if (auto refused = no_vms()) return *refused;
        auto pages = c_.vms->set_balloon(cmd.vm, cmd.bytes);
        if (!pages) return error_of(id_, pages.error());
        json reply = ok_reply(id_);
        reply["vm"] = cmd.vm;
        reply["target_bytes"] = *pages * 4096;
        return reply;
    }

    json run(const VmCreateCmd& cmd) {
        if (auto refused = no_vms()) return *refused;
        if (cmd.restore) return vm_reply(id_, c_.vms->restore_vm(*cmd.restore));
        return vm_reply(id_, c_.vms->create_vm(cmd.spec));
    }

    json run(const SnapshotCmd& cmd) {
        if (auto refused = no_vms()) return *refused;
        auto info = c_.vms->snapshot_vm(cmd.vm, cmd.dir, cmd.after);
        if (!info) return error_of(id_, info.error());
        json reply = ok_reply(id_);
        reply["vm"] = info->vm;
        reply["dir"] = info->dir.string();
        reply["pages"] = {{"image", info->image_pages}, {"swapped", info->swapped_pages},
                          {"zero", info->zero_pages}, {"lost", info->lost_pages}};
        reply["bytes_written"] = info->bytes_written;
        reply["elapsed_ms"] = info->elapsed_ms;
        reply["stopped"] = info->stopped;
        return reply;
    }

    json run(const SnapshotDeleteCmd& cmd) {
        if (auto refused = no_vms()) return *refused;
        if (auto deleted = c_.vms->delete_snapshot(cmd.dir); !deleted) return error_of(id_, deleted.error());
        json reply = ok_reply(id_);
        reply["dir"] = cmd.dir;
        reply["deleted"] = true;
        return reply;
    }

    json run(const SnapshotLoadCmd& cmd) {
        if (auto refused = no_vms()) return *refused;
        auto loaded = c_.vms->load_snapshot(cmd.dir);
        if (!loaded) return error_of(id_, loaded.error());
        json reply = ok_reply(id_);
        reply["dir"] = cmd.dir;
        reply["state"] = *loaded ? "loaded" : "waiting for its swap devices";
        return reply;
    }

    json run(const VmStopCmd& cmd) {
        if (auto refused = no_vms()) return *refused;
        return vm_reply(id_, c_.vms->stop_vm(cmd.vm, cmd.timeout));
    }

    json run(const VmActionCmd& cmd) {
        if (auto refused = no_vms()) return *refused;
        switch (cmd.action) {
            case VmAction::pause: return vm_reply(id_, c_.vms->pause_vm(cmd.vm));
            case VmAction::resume: return vm_reply(id_, c_.vms->resume_vm(cmd.vm));
            case VmAction::remove: {
                if (auto removed = c_.vms->remove_vm(cmd.vm); !removed) return error_of(id_, removed.error());
                json reply = ok_reply(id_);
                reply["name"] = cmd.vm;
                reply["removed"] = true;
                return reply;
            }
        }
        return error_reply(id_, ReplyCode::bad_request, "unknown VM action");
    }

    // swapon may create and size a file: a worker.
    json run(const SwaponCmd& cmd) {
        auto device = c_.host.pool().swapon(cmd.path, cmd.priority, cmd.size_bytes, cmd.format, cmd.takeover);
        if (!device) return error_of(id_, device.error());
        json reply = ok_reply(id_);
        reply["path"] = c_.host.pool().resolve_name(cmd.path);
        reply["device"] = device->value();
        reply["priority"] = cmd.priority;
        return reply;
    }

    // swapoff may take seconds: a worker, with its own ring; progress goes out at
    // most once per progress_interval (the first line always).
    json run(const SwapoffCmd& cmd) {
        auto ring = io::Ring::create(c_.ring_entries);
        if (!ring) return error_reply(id_, ReplyCode::io_error, ring.error().message());
        std::optional<std::chrono::steady_clock::time_point> last;
        const std::string name = c_.host.pool().resolve_name(cmd.path);  // before it is gone
        spdlog::info("swapoff {}: started{}", name, cmd.handover ? " (handover)" : "");
        swap::Handover handover;
        if (cmd.handover) handover = c_.vms != nullptr ? c_.vms->handover(name) : control::VmControl::default_handover(name);
        auto report = c_.host.pool().swapoff(cmd.path, *ring, [&](swap::SwapoffProgress p) {
            if (c_.swapoffs != nullptr) c_.swapoffs->update(name, {p.done, p.total});
            auto now = std::chrono::steady_clock::now();
            if (last && now - *last < c_.progress_interval) return;
            last = now;
            if (progress_) progress_(progress_line(id_, p.done, p.total));
        }, cmd.force, cmd.handover ? &handover : nullptr);
        if (c_.swapoffs != nullptr) c_.swapoffs->finish(name);
        if (!report) {
            spdlog::warn("swapoff {}: failed: {}", name, report.error().message());
            return error_of(id_, report.error());
        }
        spdlog::info("swapoff {}: done, {} pages moved, {} brought back", name, report->pages_moved,
                     report->pages_brought_back);
        json reply = ok_reply(id_);
        reply["path"] = name;
        reply["pages_moved"] = report->pages_moved;
        reply["pages_brought_back"] = report->pages_brought_back;
        reply["pages_skipped"] = report->pages_skipped;
        reply["pages_lost"] = report->pages_lost;
        if (cmd.handover) reply["handed_over"] = true;
        reply["elapsed_ms"] = static_cast<std::uint64_t>(report->elapsed_ms + 0.5);
        return reply;
    }

private:
    // The reply of a VM command on a swapvisor without a VM host.
    std::optional<json> no_vms() const {
        if (c_.vms != nullptr) return std::nullopt;
        if (!c_.no_vms_reason.empty()) return error_reply(id_, ReplyCode::kvm_error, c_.no_vms_reason);
        return error_reply(id_, ReplyCode::unsupported, "this swapvisor has no VM host (use `swapvisor serve`)");
    }

    const CommandContext& c_;
    const json& id_;
    const ProgressSink& progress_;
};

}  // namespace

bool runs_on_worker(const CommandContext& context, const Command& command) {
    return std::visit(
        [&](const auto& cmd) {
            using T = std::decay_t<decltype(cmd)>;
            // vm-list and set-balloon take a short lock and store an atomic; the VM
            // lifecycle commands may wait for a guest or free gigabytes.
            if constexpr (std::is_same_v<T, SwaponCmd> || std::is_same_v<T, SwapoffCmd>) return true;
            else if constexpr (std::is_same_v<T, VmCreateCmd> || std::is_same_v<T, VmStopCmd> ||
                               std::is_same_v<T, VmActionCmd> || std::is_same_v<T, SnapshotCmd> ||
                               std::is_same_v<T, SnapshotDeleteCmd> || std::is_same_v<T, SnapshotLoadCmd>)
                return context.vms != nullptr;
            else return false;
        },
        command);
}

json run_command(const CommandContext& context, const json& id, const Command& command, const ProgressSink& progress) {
    try {
        Runner runner(context, id, progress);
        return std::visit([&](const auto& cmd) { return runner.run(cmd); }, command);
    } catch (const std::exception& e) {
        // nlohmann / bad_alloc inside a command: the request fails, the server and
        // the VMs carry on.
        return error_reply(id, ReplyCode::io_error, fmt::format("internal error: {}", e.what()));
    }
}

}  // namespace swapvisor::vmm::control
