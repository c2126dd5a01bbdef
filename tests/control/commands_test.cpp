// The control commands without a socket (vmm/control/commands.hpp): run_command on
// a real SwapPool and HostMemory, and a recording VmControl for the VM commands.
// What the socket adds (framing, peers, audit, workers) is control_test's.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <vector>

#include <nlohmann/json.hpp>

#include "guestmem/host_memory.hpp"
#include "swap/swap_pool.hpp"
#include "vmm/control/commands.hpp"
#include "vmm/control/protocol.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm::control;
using nlohmann::json;

namespace {

// Answers from a small table and records what it was asked.
class RecordingVms final : public VmControl {
public:
    Result<VmInfo> create_vm(const VmSpec& spec) override {
        std::lock_guard lock(mutex_);
        created.push_back(spec);
        if (spec.name == "building") return make_error(VmErrc::creating, "vm-create", spec.name);
        return VmInfo{.name = spec.name, .state = VmState::running, .vcpus = spec.vcpus, .memory_bytes = spec.memory_bytes};
    }
    Result<VmInfo> stop_vm(const std::string& name, std::chrono::milliseconds) override {
        if (name == "building") return make_error(VmErrc::creating, "vm-stop", name);
        return VmInfo{.name = name, .state = VmState::ended, .exit_code = 143, .end_reason = "stopped"};
    }
    Result<VmInfo> pause_vm(const std::string& name) override { return VmInfo{.name = name, .state = VmState::paused}; }
    Result<VmInfo> resume_vm(const std::string& name) override { return VmInfo{.name = name, .state = VmState::running}; }
    Result<void> remove_vm(const std::string& name) override {
        if (name == "live") return make_error(VmErrc::running, "vm-remove", name);
        return {};
    }
    std::vector<VmInfo> list_vms() const override { return {VmInfo{.name = "new", .state = VmState::creating}}; }
    Result<std::uint64_t> set_balloon(const std::string& name, std::uint64_t bytes) override {
        if (name != "ballooned") return make_error(VmErrc::no_balloon, "set-balloon", name);
        return bytes / 4096;
    }
    void shut_down() override {}

    std::mutex mutex_;
    std::vector<VmSpec> created;
};

class CommandsTest : public ::testing::Test {
protected:
    json run(const std::string& line, VmControl* vms = nullptr, std::string no_vms_reason = {}) {
        auto request = parse_request(line);
        EXPECT_TRUE(request.has_value()) << line;
        if (!request) return {};
        CommandContext context{.host = host_, .devices = devices_, .vms = vms, .no_vms_reason = std::move(no_vms_reason)};
        return run_command(context, request->id, request->command, nullptr);
    }
    static std::string code(const json& reply) { return reply.at("error").at("code").get<std::string>(); }
    bool on_worker(const std::string& line, VmControl* vms) {
        auto request = parse_request(line);
        CommandContext context{.host = host_, .devices = devices_, .vms = vms};
        return runs_on_worker(context, request->command);
    }

    swap::SwapPool pool_;
    guestmem::HostMemory host_{pool_, 0};
    DeviceStats devices_;
};

}  // namespace

TEST_F(CommandsTest, StatusAndBudgetNeedNoSocket) {
    json status = run(R"({"id":1,"cmd":"status"})");
    EXPECT_EQ(status.at("ok"), true);
    EXPECT_EQ(status.at("id"), 1);
    EXPECT_TRUE(status.contains("vms"));
    json budget = run(R"({"id":"b","cmd":"set-budget","bytes":"64M"})");
    EXPECT_EQ(budget.at("ok"), true);
    EXPECT_EQ(budget.at("budget_bytes"), 64u << 20);
    EXPECT_EQ(budget.at("id"), "b");
}

TEST_F(CommandsTest, LimitsOfAnUnknownVmAreRefused) {
    EXPECT_EQ(code(run(R"({"cmd":"set-limit","vm":"ghost","bytes":"64M"})")), "no_such_vm");
    EXPECT_EQ(code(run(R"({"cmd":"set-quota","vm":"ghost","bytes":"64M"})")), "no_such_vm");
}

TEST_F(CommandsTest, VmCommandsWithoutAVmHostSayWhy) {
    for (const char* line : {R"({"cmd":"vm-list"})", R"({"cmd":"vm-stop","vm":"a"})", R"({"cmd":"vm-pause","vm":"a"})",
                             R"({"cmd":"set-balloon","vm":"a","bytes":"1M"})",
                             R"({"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M"})"}) {
        EXPECT_EQ(code(run(line)), "unsupported") << line;
        json refused = run(line, nullptr, "cannot open /dev/kvm: check the kvm module");
        EXPECT_EQ(code(refused), "kvm_error") << line;
        EXPECT_NE(refused.dump().find("kvm module"), std::string::npos) << refused;
        EXPECT_FALSE(on_worker(line, nullptr)) << "refused at once, not on a worker: " << line;
    }
}

TEST_F(CommandsTest, OnlyCommandsThatMayBlockGoToAWorker) {
    RecordingVms vms;
    EXPECT_FALSE(on_worker(R"({"cmd":"status"})", &vms));
    EXPECT_FALSE(on_worker(R"({"cmd":"set-limit","vm":"a","bytes":0})", &vms));
    EXPECT_FALSE(on_worker(R"({"cmd":"vm-list"})", &vms));
    EXPECT_FALSE(on_worker(R"({"cmd":"set-balloon","vm":"a","bytes":0})", &vms));
    EXPECT_TRUE(on_worker(R"({"cmd":"swapon","path":"/x"})", &vms));
    EXPECT_TRUE(on_worker(R"({"cmd":"swapoff","path":"/x"})", &vms));
    EXPECT_TRUE(on_worker(R"({"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M"})", &vms));
    EXPECT_TRUE(on_worker(R"({"cmd":"vm-stop","vm":"a"})", &vms));
    EXPECT_TRUE(on_worker(R"({"cmd":"vm-remove","vm":"a"})", &vms));
}

TEST_F(CommandsTest, VmCommandsReachTheVmHostAndMapItsErrors) {
    RecordingVms vms;
    json created = run(R"({"id":3,"cmd":"vm-create","name":"web","kernel":"/k","memory":"64M","vcpus":2})", &vms);
    EXPECT_EQ(created.at("ok"), true) << created;
    EXPECT_EQ(created.at("state"), "running");
    ASSERT_EQ(vms.created.size(), 1u);
    EXPECT_EQ(vms.created[0].vcpus, 2u);
    EXPECT_EQ(vms.created[0].memory_bytes, 64u << 20);
    EXPECT_EQ(run(R"({"cmd":"vm-list"})", &vms).at("vms").at(0).at("state"), "creating");
    // A VM still being built: "busy", which an agent retries (ctl exit 3).
    EXPECT_EQ(code(run(R"({"cmd":"vm-stop","vm":"building"})", &vms)), "busy");
    EXPECT_EQ(code(run(R"({"cmd":"vm-remove","vm":"live"})", &vms)), "vm_running");
    EXPECT_EQ(run(R"({"cmd":"vm-remove","vm":"old"})", &vms).at("removed"), true);
    EXPECT_EQ(code(run(R"({"cmd":"set-balloon","vm":"plain","bytes":"1M"})", &vms)), "no_balloon");
    EXPECT_EQ(run(R"({"cmd":"set-balloon","vm":"ballooned","bytes":"1M"})", &vms).at("target_bytes"), 1u << 20);
}

// A bad spec is refused by the one validator (vmm::validate) as bad_request.
TEST_F(CommandsTest, ASpecErrorIsABadRequest) {
    Error e = vmm::validate(VmSpec{.name = "a", .kernel = "/nonexistent"}).error();
    EXPECT_EQ(reply_code_of(e), ReplyCode::bad_request);
}

TEST_F(CommandsTest, SwaponOfAMissingFileIsAnErrorReply) {
    json reply = run(R"({"id":9,"cmd":"swapon","path":"/nonexistent-dir/swap.img"})");
    EXPECT_EQ(reply.at("ok"), false);
    EXPECT_EQ(reply.at("id"), 9);
    EXPECT_TRUE(pool_.stats().empty());
}
