// SnapshotStore (vmm/host/snapshot_store.hpp) without KVM or a guest: what `serve
// --snapshots` finds under its root, how a snapshot that cannot be loaded is kept as
// unavailable with its error (a restore from it gets that error), and the keys.
// Snapshots taken and restored from real guests: tests/scripts/snapshot_test.sh.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "swap/swap_pool.hpp"
#include "vmm/host/snapshot_store.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm;
namespace fs = std::filesystem;

namespace {

class SnapshotStoreTest : public ::testing::Test {
protected:
    void SetUp() override {
        root_ = fs::temp_directory_path() / ("swv-store-" + std::to_string(::getpid()) + "-" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(root_);
        fs::create_directories(root_);
    }
    void TearDown() override { fs::remove_all(root_); }
    void write(const fs::path& p, const std::string& text) {
        fs::create_directories(p.parent_path());
        std::ofstream(p) << text;
    }
    fs::path root_;
    swap::SwapPool pool_;
};

}  // namespace

TEST_F(SnapshotStoreTest, OnlyDirectoriesWithAManifestAreSnapshotsAndABrokenOneIsUnavailable) {
    write(root_ / "broken" / "manifest.json", "{}");  // a VM manifest, but no memory files
    write(root_ / "not-a-snapshot" / "notes.txt", "x");
    write(root_ / "loose-file", "x");
    SnapshotStore store(pool_);
    EXPECT_EQ(store.expect_all(root_), 0u) << "the broken one's slots cannot be reserved";
    store.open_all();
    control::SnapshotSummary s = store.summary();
    EXPECT_EQ(s.snapshots, 0u);
    EXPECT_EQ(s.unavailable, 1u);
    EXPECT_EQ(s.held_vslots, 0u);

    // A restore from it gets the error it was found with, naming the file.
    auto key = snapshot_key(root_ / "broken");
    ASSERT_TRUE(key.has_value());
    auto got = store.get(*key);
    ASSERT_FALSE(got.has_value());
    EXPECT_NE(got.error().message().find("memory"), std::string::npos) << got.error().message();
    EXPECT_EQ(store.take(*key), nullptr);
    EXPECT_TRUE(store.forget_unavailable(*key));
    EXPECT_FALSE(store.forget_unavailable(*key));
    EXPECT_EQ(store.summary().unavailable, 0u);
}

TEST_F(SnapshotStoreTest, KeysAreCanonicalAndAMissingDirectoryIsNamed) {
    fs::create_directories(root_ / "s1");
    auto a = snapshot_key(root_ / "s1");
    auto b = snapshot_key(root_ / "s1" / ".." / "s1" / ".");
    ASSERT_TRUE(a.has_value() && b.has_value());
    EXPECT_EQ(*a, *b);
    auto missing = snapshot_key(root_ / "nowhere");
    ASSERT_FALSE(missing.has_value());
    EXPECT_NE(missing.error().message().find("nowhere"), std::string::npos) << missing.error().message();
    // Not loaded, no files: opening it fails and nothing is kept.
    SnapshotStore store(pool_);
    EXPECT_FALSE(store.get(*a).has_value());
    EXPECT_EQ(store.summary().snapshots, 0u);
    EXPECT_EQ(store.summary().unavailable, 0u);
}

TEST_F(SnapshotStoreTest, AnUnreadableRootIsLoggedAndFindsNothing) {
    SnapshotStore store(pool_);
    EXPECT_EQ(store.expect_all(root_ / "absent"), 0u);
    EXPECT_EQ(store.summary().unavailable, 0u);
}
