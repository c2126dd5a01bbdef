// VmTable (vmm/host/vm_table.hpp): the lifecycle states of a listed VM and the only
// moves between them. The table of legal moves is checked pair by pair against the
// one written in the header, and an illegal move or erase aborts where it is made.
// (The moves themselves, made by real VMs, are vm_host_test's, which needs KVM.)
#include <gtest/gtest.h>

#include <set>
#include <utility>

#include "vmm/host/vm_table.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm;

namespace {

constexpr Lifecycle kAll[] = {Lifecycle::creating, Lifecycle::running,  Lifecycle::paused, Lifecycle::snapshotting,
                              Lifecycle::ended,    Lifecycle::released, Lifecycle::removing};

// vm_table.hpp's table, written out again.
const std::set<std::pair<Lifecycle, Lifecycle>> kLegal = {
    {Lifecycle::creating, Lifecycle::running}, {Lifecycle::running, Lifecycle::paused},
    {Lifecycle::paused, Lifecycle::running},   {Lifecycle::running, Lifecycle::ended},
    {Lifecycle::paused, Lifecycle::ended},     {Lifecycle::ended, Lifecycle::released},
    {Lifecycle::ended, Lifecycle::removing},   {Lifecycle::released, Lifecycle::removing},
    // ctl snapshot: from running or paused, back to either (never ended: the runner
    // waits until the snapshot is done).
    {Lifecycle::running, Lifecycle::snapshotting}, {Lifecycle::paused, Lifecycle::snapshotting},
    {Lifecycle::snapshotting, Lifecycle::running}, {Lifecycle::snapshotting, Lifecycle::paused},
};

}  // namespace

TEST(VmTableTest, TheLegalMovesAreExactlyTheDocumentedOnes) {
    for (Lifecycle from : kAll)
        for (Lifecycle to : kAll)
            EXPECT_EQ(legal_transition(from, to), kLegal.contains({from, to}))
                << lifecycle_name(from) << " -> " << lifecycle_name(to);
}

TEST(VmTableTest, ClientsSeeFiveStates) {
    EXPECT_EQ(visible_state(Lifecycle::creating), control::VmState::creating);
    EXPECT_EQ(visible_state(Lifecycle::running), control::VmState::running);
    EXPECT_EQ(visible_state(Lifecycle::paused), control::VmState::paused);
    EXPECT_EQ(visible_state(Lifecycle::snapshotting), control::VmState::snapshotting);
    EXPECT_STREQ(control::vm_state_name(control::VmState::snapshotting), "snapshotting");
    for (Lifecycle gone : {Lifecycle::ended, Lifecycle::released, Lifecycle::removing})
        EXPECT_EQ(visible_state(gone), control::VmState::ended) << lifecycle_name(gone);
    EXPECT_STREQ(control::vm_state_name(control::VmState::creating), "creating");
}

// One VM's whole life through the table, as vm-create, the runner and vm-remove
// walk it under `serve`; the listing shows each state as a client would.
TEST(VmTableTest, AWholeLifeIsListedAsClientsSeeIt) {
    VmTable table;
    std::lock_guard lock(table.mutex);
    VmEntry& e = table.add(VmSpec{.name = "a", .memory_bytes = 64 << 20, .vcpus = 2});
    EXPECT_EQ(table.info(e).state, control::VmState::creating);
    EXPECT_EQ(table.info(e).vcpus, 2u);
    for (Lifecycle to : {Lifecycle::running, Lifecycle::paused, Lifecycle::running, Lifecycle::ended}) {
        table.set_state(e, to);
        EXPECT_EQ(table.info(e).state, visible_state(to));
    }
    e.end = VmEnd{EndReason::debug_exit, 7, 0, ""};
    table.set_state(e, Lifecycle::released);
    EXPECT_EQ(table.info(e).exit_code, 7u);
    EXPECT_EQ(table.info(e).end_reason, "debug_exit");
    table.set_state(e, Lifecycle::removing);
    auto gone = table.erase("a");
    EXPECT_EQ(gone->spec.name, "a");
    EXPECT_EQ(table.find("a"), nullptr);
    EXPECT_TRUE(table.empty());
}

TEST(VmTableTest, AFailedCreateIsErasedFromCreating) {
    VmTable table;
    std::lock_guard lock(table.mutex);
    table.add(VmSpec{.name = "b"});
    EXPECT_NE(table.find("b"), nullptr);
    EXPECT_NE(table.erase("b"), nullptr);
    EXPECT_EQ(table.find("b"), nullptr);
}

TEST(VmTableDeathTest, AnIllegalMoveAborts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    auto move = [](Lifecycle to_first, Lifecycle illegal) {
        VmTable table;
        std::lock_guard lock(table.mutex);
        VmEntry& e = table.add(VmSpec{.name = "c"});
        if (to_first != Lifecycle::creating) table.set_state(e, to_first);
        table.set_state(e, illegal);
    };
    EXPECT_DEATH(move(Lifecycle::creating, Lifecycle::ended), "illegal VM lifecycle transition");
    EXPECT_DEATH(move(Lifecycle::running, Lifecycle::released), "illegal VM lifecycle transition");
    EXPECT_DEATH(move(Lifecycle::running, Lifecycle::creating), "illegal VM lifecycle transition");
}

TEST(VmTableDeathTest, ErasingALiveVmAborts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            VmTable table;
            std::lock_guard lock(table.mutex);
            VmEntry& e = table.add(VmSpec{.name = "d"});
            table.set_state(e, Lifecycle::running);
            table.erase("d");
        },
        "neither being created nor removed");
}
