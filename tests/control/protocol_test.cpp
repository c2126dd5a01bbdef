// The control protocol without a socket: request parsing (every malformed shape gets
// its stable code and never throws), sizes, the error-code mapping from the layers
// below, and the reply lines.
#include <gtest/gtest.h>

#include <random>

#include "guestmem/errc.hpp"
#include "io/block_device.hpp"
#include "swap/types.hpp"
#include "vmm/control/protocol.hpp"

using namespace swapvisor;
using namespace swapvisor::vmm::control;
using nlohmann::json;

namespace {

RequestError parse_error(std::string_view line) {
    auto r = parse_request(line);
    EXPECT_FALSE(r.has_value()) << line;
    return r ? RequestError{nullptr, ReplyCode::io_error, "parsed"} : r.error();
}

// Issue #9: losing the pages of unreadable slots is asked for explicitly.
TEST(ProtocolBoundsTest, SwapoffForceFieldIsExplicit) {
    auto off = parse_request(R"({"id":1,"cmd":"swapoff","path":"/x"})");
    ASSERT_TRUE(off);
    EXPECT_EQ(std::get<SwapoffCmd>(off->command).force, swap::Force::no);
    off = parse_request(R"({"id":1,"cmd":"swapoff","path":"/x","force":true})");
    ASSERT_TRUE(off);
    EXPECT_EQ(std::get<SwapoffCmd>(off->command).force, swap::Force::yes);
    off = parse_request(R"({"id":1,"cmd":"swapoff","path":"/x","force":false})");
    ASSERT_TRUE(off);
    EXPECT_EQ(std::get<SwapoffCmd>(off->command).force, swap::Force::no);
    for (const char* line : {R"({"id":1,"cmd":"swapoff","path":"/x","force":1})",
                             R"({"id":1,"cmd":"swapoff","path":"/x","force":"yes"})"}) {
        auto bad = parse_request(line);
        ASSERT_FALSE(bad) << line;
        EXPECT_EQ(bad.error().code, ReplyCode::bad_request);
    }
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::unreadable_slots), "swapoff"}),
              ReplyCode::unreadable_slots);
    EXPECT_EQ(code_name(ReplyCode::unreadable_slots), "unreadable_slots");
}

// Issue #21 item 6: a handover is a literal boolean, audited, and never with force.
TEST(ProtocolBoundsTest, SwapoffHandoverFieldIsExplicitAndExcludesForce) {
    auto off = parse_request(R"({"id":1,"cmd":"swapoff","path":"/x"})");
    ASSERT_TRUE(off);
    EXPECT_FALSE(std::get<SwapoffCmd>(off->command).handover);
    off = parse_request(R"({"id":1,"cmd":"swapoff","path":"/x","handover":true})");
    ASSERT_TRUE(off);
    EXPECT_TRUE(std::get<SwapoffCmd>(off->command).handover);
    EXPECT_NE(describe(off->command).find("handover=yes"), std::string::npos) << describe(off->command);
    for (const char* line : {R"({"id":1,"cmd":"swapoff","path":"/x","handover":1})",
                             R"({"id":1,"cmd":"swapoff","path":"/x","handover":true,"force":true})"}) {
        auto bad = parse_request(line);
        ASSERT_FALSE(bad) << line;
        EXPECT_EQ(bad.error().code, ReplyCode::bad_request);
    }
    // Refused by the slots snapshots hold: nothing changed, the device is busy with them.
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::held_slot), "swapoff"}), ReplyCode::device_busy);
}

// Issue #17 item 2: a takeover is a literal boolean, audited, and a leased device
// answers device_busy (retry elsewhere, or take it over).
TEST(ProtocolBoundsTest, SwaponTakeoverFieldIsExplicit) {
    auto on = parse_request(R"({"id":1,"cmd":"swapon","path":"nbd://h/x"})");
    ASSERT_TRUE(on);
    EXPECT_EQ(std::get<SwaponCmd>(on->command).takeover, swap::Takeover::no);
    on = parse_request(R"({"id":1,"cmd":"swapon","path":"nbd://h/x","takeover":true})");
    ASSERT_TRUE(on);
    EXPECT_EQ(std::get<SwaponCmd>(on->command).takeover, swap::Takeover::yes);
    EXPECT_NE(describe(on->command).find("takeover=yes"), std::string::npos);
    for (const char* line : {R"({"id":1,"cmd":"swapon","path":"nbd://h/x","takeover":"yes"})",
                             R"({"id":1,"cmd":"swapon","path":"nbd://h/x","takeover":1})"}) {
        auto bad = parse_request(line);
        ASSERT_FALSE(bad) << line;
        EXPECT_EQ(bad.error().code, ReplyCode::bad_request);
    }
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::leased), "swapon"}), ReplyCode::device_busy);
}

// Issue #12: formatting a device is asked for explicitly, never implied; limits
// below the minimum are refused at the protocol level.
TEST(ProtocolBoundsTest, SwaponFormatFieldAndMinimumLimits) {
    auto on = parse_request(R"({"id":1,"cmd":"swapon","path":"/x"})");
    ASSERT_TRUE(on);
    EXPECT_EQ(std::get<SwaponCmd>(on->command).format, swap::Format::no);
    on = parse_request(R"({"id":1,"cmd":"swapon","path":"/x","format":true})");
    ASSERT_TRUE(on);
    EXPECT_EQ(std::get<SwaponCmd>(on->command).format, swap::Format::yes);
    on = parse_request(R"({"id":1,"cmd":"swapon","path":"/x","format":"yes"})");
    ASSERT_TRUE(on);
    EXPECT_EQ(std::get<SwaponCmd>(on->command).format, swap::Format::yes);
    auto bad = parse_request(R"({"id":1,"cmd":"swapon","path":"/x","format":1})");
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().code, ReplyCode::bad_request);

    auto low = parse_request(R"({"id":1,"cmd":"set-limit","vm":"a","bytes":1})");
    ASSERT_FALSE(low) << "set-limit of 1 byte was accepted (it meant no limit)";
    EXPECT_NE(low.error().message.find("16 MiB"), std::string::npos) << low.error().message;
    EXPECT_FALSE(parse_request(R"({"id":1,"cmd":"set-budget","bytes":"4K"})"));
    EXPECT_TRUE(parse_request(R"({"id":1,"cmd":"set-budget","bytes":"16M"})"));
    EXPECT_TRUE(parse_request(R"({"id":1,"cmd":"set-limit","vm":"a","bytes":0})"));
}

}  // namespace

TEST(ParseSize, AcceptsBinaryUnits) {
    EXPECT_EQ(parse_size("0"), 0u);
    EXPECT_EQ(parse_size("4096"), 4096u);
    EXPECT_EQ(parse_size("64k"), 64u << 10);
    EXPECT_EQ(parse_size("512M"), 512u << 20);
    EXPECT_EQ(parse_size("2G"), 2ull << 30);
    EXPECT_EQ(parse_size("2GiB"), 2ull << 30);
    EXPECT_EQ(parse_size("1T"), 1ull << 40);
    EXPECT_EQ(parse_size("7B"), 7u);
}

// Found by tests/fuzz/protocol_fuzz: "iB" follows K, M, G or T only; "2bib" was read
// as 2 bytes ("bib" shortened to "b").
TEST(ParseSize, IbFollowsOnlyAUnitLetter) {
    for (const char* text : {"2bib", "2BiB", "2iB", "2xib"}) {
        auto size = parse_size(text);
        EXPECT_FALSE(size.has_value()) << text << " parsed as " << size.value_or(0);
    }
    EXPECT_EQ(parse_size("3KIB"), 3u << 10);
}

TEST(ParseSize, RejectsGarbageAndOverflow) {
    for (const char* text : {"", "G", "-1", "1.5G", "12X", "1GB", " 1G", "99999999999999999999", "16777216T"}) {
        EXPECT_FALSE(parse_size(text).has_value()) << text;
    }
}

TEST(ParseRequest, EachCommandWithItsFields) {
    auto status = parse_request(R"({"id":1,"cmd":"status"})");
    ASSERT_TRUE(status.has_value());
    EXPECT_EQ(status->id, 1);
    EXPECT_EQ(std::get<StatusCmd>(status->command).detail, StatsDetail::summary);
    auto stats = parse_request(R"({"id":"a","cmd":"stats"})");
    ASSERT_TRUE(stats.has_value());
    EXPECT_EQ(stats->id, "a");
    EXPECT_EQ(std::get<StatusCmd>(stats->command).detail, StatsDetail::full);

    auto swapon = parse_request(R"({"id":2,"cmd":"swapon","path":"/x","priority":5,"size":"2G"})");
    ASSERT_TRUE(swapon.has_value());
    auto& on = std::get<SwaponCmd>(swapon->command);
    EXPECT_EQ(on.path, "/x");
    EXPECT_EQ(on.priority, 5);
    EXPECT_EQ(on.size_bytes, 2ull << 30);
    auto swapon_bytes = parse_request(R"({"id":2,"cmd":"swapon","path":"/x","size":1048576})");
    ASSERT_TRUE(swapon_bytes.has_value());
    EXPECT_EQ(std::get<SwaponCmd>(swapon_bytes->command).size_bytes, 1048576u);
    EXPECT_EQ(std::get<SwaponCmd>(swapon_bytes->command).priority, 0);

    auto swapoff = parse_request("{\"id\":3,\"cmd\":\"swapoff\",\"path\":\"/dev/nvme1n1\"}\r");
    ASSERT_TRUE(swapoff.has_value());
    EXPECT_EQ(std::get<SwapoffCmd>(swapoff->command).path, "/dev/nvme1n1");

    auto limit = parse_request(R"({"id":4,"cmd":"set-limit","vm":"vm0","bytes":"1G","extra":[1,2]})");
    ASSERT_TRUE(limit.has_value());
    EXPECT_EQ(std::get<SetLimitCmd>(limit->command).vm, "vm0");
    EXPECT_EQ(std::get<SetLimitCmd>(limit->command).bytes, 1ull << 30);

    auto budget = parse_request(R"({"id":5,"cmd":"set-budget","bytes":0})");
    ASSERT_TRUE(budget.has_value());
    EXPECT_EQ(std::get<SetBudgetCmd>(budget->command).bytes, 0u);
}

TEST(ParseRequest, NotJsonOrNotAnObjectIsBadJson) {
    for (std::string_view line : {"", "   ", "{", "{\"id\":1,\"cmd\":\"status\"", "[1,2]", "42", "\"status\"", "null",
                                  "{\"id\":1} {\"id\":2}", "{'id':1}", "{\"id\":1,\"cmd\":\"\xff\"}"}) {
        RequestError e = parse_error(line);
        EXPECT_EQ(e.code, ReplyCode::bad_json) << line;
        EXPECT_TRUE(e.id.is_null());
    }
}

TEST(ParseRequest, ARequestWithoutAnIdIsRunAndAnsweredWithNullAsQmpDoes) {
    for (std::string_view line : {R"({"cmd":"status"})", R"({"id":null,"cmd":"vm-list"})"}) {
        auto r = parse_request(line);
        ASSERT_TRUE(r.has_value()) << line;
        EXPECT_TRUE(r->id.is_null()) << line;
    }
    EXPECT_TRUE(std::holds_alternative<VmListCmd>(parse_request(R"({"cmd":"vm-list"})")->command));
}

TEST(ParseRequest, IllTypedIdIsBadRequestWithNullId) {
    for (std::string_view line : {R"({"id":1.5,"cmd":"status"})",
                                  R"({"id":{},"cmd":"status"})", R"({"id":[1],"cmd":"status"})",
                                  R"({"id":true,"cmd":"status"})"}) {
        RequestError e = parse_error(line);
        EXPECT_EQ(e.code, ReplyCode::bad_request) << line;
        EXPECT_TRUE(e.id.is_null()) << line;
    }
}

TEST(ParseRequest, IllTypedFieldsAreBadRequestWithTheirId) {
    for (std::string_view line : {
             R"({"id":7})",
             R"({"id":7,"cmd":5})",
             R"({"id":7,"cmd":"swapoff"})",
             R"({"id":7,"cmd":"swapoff","path":3})",
             R"({"id":7,"cmd":"swapoff","path":""})",
             R"({"id":7,"cmd":"swapon","path":"/x","priority":"high"})",
             R"({"id":7,"cmd":"swapon","path":"/x","priority":40000})",
             R"({"id":7,"cmd":"swapon","path":"/x","priority":-2})",
             R"({"id":7,"cmd":"swapon","path":"/x","priority":18446744073709551615})",
             R"({"id":7,"cmd":"swapon","path":"/x","size":-4096})",
             R"({"id":7,"cmd":"swapon","path":"/x","size":"lots"})",
             R"({"id":7,"cmd":"swapon","path":"/x","size":1.5})",
             R"({"id":7,"cmd":"set-limit","bytes":1})",
             R"({"id":7,"cmd":"set-limit","vm":"vm0"})",
             R"({"id":7,"cmd":"set-limit","vm":"vm0","bytes":null})",
             R"({"id":7,"cmd":"set-limit","vm":["vm0"],"bytes":1})",
             R"({"id":7,"cmd":"set-budget"})",
             R"({"id":7,"cmd":"set-budget","bytes":"12X"})",
             R"({"id":7,"cmd":"set-budget","bytes":true})",
         }) {
        RequestError e = parse_error(line);
        EXPECT_EQ(e.code, ReplyCode::bad_request) << line;
        EXPECT_EQ(e.id, 7) << line;
        EXPECT_FALSE(e.message.empty());
    }
}

TEST(ParseRequest, UnknownCommand) {
    RequestError e = parse_error(R"({"id":"x","cmd":"reboot"})");
    EXPECT_EQ(e.code, ReplyCode::unknown_command);
    EXPECT_EQ(e.id, "x");
    EXPECT_NE(e.message.find("reboot"), std::string::npos);
}

TEST(ParseRequest, RandomBytesNeverThrowAndNeverParse) {
    std::mt19937_64 rng(12345);
    for (int i = 0; i < 2000; ++i) {
        std::string line(rng() % 200, '\0');
        for (char& c : line) c = static_cast<char>(rng());
        if (!line.empty()) line[0] = static_cast<char>(0x80 | (rng() & 0x7f));  // never valid JSON start
        auto r = parse_request(line);
        ASSERT_FALSE(r.has_value());
        EXPECT_EQ(r.error().code, ReplyCode::bad_json);
    }
}

TEST(ParseRequest, DeepNestingIsRejectedWithoutCrashing) {
    std::string deep(60000, '[');
    EXPECT_EQ(parse_error(deep).code, ReplyCode::bad_json);
    std::string closed = std::string(20000, '[') + std::string(20000, ']');
    EXPECT_EQ(parse_error(closed).code, ReplyCode::bad_json);  // valid JSON, not an object
    std::string in_object = "{\"id\":1,\"cmd\":\"status\",\"x\":" + std::string(20000, '[') + std::string(20000, ']') + "}";
    EXPECT_TRUE(parse_request(in_object).has_value());
}

TEST(ReplyCode, MapsLowerLayerErrors) {
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::no_such_device), "x"}), ReplyCode::no_such_device);
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::device_busy), "x"}), ReplyCode::device_busy);
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::would_not_fit), "x"}), ReplyCode::would_not_fit);
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::exists), "x"}), ReplyCode::exists);
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::io_failed), "x"}), ReplyCode::io_error);
    EXPECT_EQ(reply_code_of(Error{make_error_code(swap::Errc::checksum_mismatch), "x"}), ReplyCode::io_error);
    EXPECT_EQ(reply_code_of(Error{make_error_code(io::Errc::too_small), "x"}), ReplyCode::bad_request);
    EXPECT_EQ(reply_code_of(errno_error("x", ENOENT).error()), ReplyCode::no_such_device);
    EXPECT_EQ(reply_code_of(errno_error("x", EACCES).error()), ReplyCode::permission);
    EXPECT_EQ(reply_code_of(errno_error("x", EPERM).error()), ReplyCode::permission);
    EXPECT_EQ(reply_code_of(errno_error("x", EIO).error()), ReplyCode::io_error);
    EXPECT_EQ(reply_code_of(errno_error("x", ENOSPC).error()), ReplyCode::io_error);
}

TEST(ReplyLines, ShapeAndInvalidUtf8Replaced) {
    EXPECT_EQ(to_line(ok_reply(3)), "{\"id\":3,\"ok\":true}\n");
    json e = json::parse(to_line(error_reply(nullptr, ReplyCode::too_large, "long")));
    EXPECT_TRUE(e["id"].is_null());
    EXPECT_EQ(e["ok"], false);
    EXPECT_EQ(e["error"]["code"], "too_large");
    EXPECT_EQ(e["error"]["message"], "long");
    std::string line = to_line(error_reply(1, ReplyCode::unknown_command, "cmd \xff\xfe"));
    EXPECT_EQ(line.back(), '\n');
    EXPECT_EQ(line.find('\n'), line.size() - 1);
    EXPECT_FALSE(json::parse(line, nullptr, false).is_discarded());
    json p = json::parse(to_line(progress_line("s", 5, 9)));
    EXPECT_EQ(p["id"], "s");
    EXPECT_EQ(p["progress"]["done"], 5);
    EXPECT_EQ(p["progress"]["total"], 9);
}

TEST(ParseRequest, VmCreateTakesAnAutoResidentLimit) {
    auto ok = parse_request(R"({"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","resident_limit":"auto"})");
    ASSERT_TRUE(ok.has_value()) << ok.error().message;
    const auto& spec = std::get<VmCreateCmd>(ok->command).spec;
    EXPECT_TRUE(spec.auto_limit);
    EXPECT_EQ(spec.resident_limit, 0u);
    EXPECT_FALSE(parse_request(R"({"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","resident_limit":"automatic"})")
                     .has_value());
}

TEST(ParseRequest, VmCreateNamesTheBadField) {
    auto ok = parse_request(
        R"({"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","vcpus":2,"resident_limit":"32M",)"
        R"("swap_quota":"1G","balloon":true,"serial_log":"/tmp/a.log","cmdline":"x=1"})");
    ASSERT_TRUE(ok.has_value()) << ok.error().message;
    const auto& spec = std::get<VmCreateCmd>(ok->command).spec;
    EXPECT_EQ(spec.name, "a");
    EXPECT_EQ(spec.memory_bytes, 64ULL << 20);
    EXPECT_EQ(spec.vcpus, 2u);
    EXPECT_EQ(spec.resident_limit, 32ULL << 20);
    EXPECT_EQ(spec.swap_quota, 1ULL << 30);
    EXPECT_TRUE(spec.balloon);
    EXPECT_EQ(spec.serial_log, std::filesystem::path("/tmp/a.log"));
    EXPECT_EQ(spec.cmdline, "x=1");
    const std::pair<std::string_view, std::string_view> cases[] = {
        {R"({"id":1,"cmd":"vm-create","kernel":"/k","memory":"64M"})", "\"name\""},
        {R"({"id":1,"cmd":"vm-create","name":"a","memory":"64M"})", "\"kernel\""},
        {R"({"id":1,"cmd":"vm-create","name":"a","kernel":"/k"})", "\"memory\""},
        {R"({"id":1,"cmd":"vm-create","name":"a","kernel":"/k","memory":"lots"})", "\"memory\""},
        {R"({"id":1,"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","vcpus":0})", "\"vcpus\""},
        {R"({"id":1,"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","resident_limit":"1M"})", "\"resident_limit\""},
        {R"({"id":1,"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","swap_quota":-1})", "\"swap_quota\""},
        {R"({"id":1,"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","balloon":"yes"})", "\"balloon\""},
        {R"({"id":1,"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","serial_log":""})", "\"serial_log\""},
    };
    for (const auto& [line, field] : cases) {
        RequestError e = parse_error(line);
        EXPECT_EQ(e.code, ReplyCode::bad_request) << line;
        EXPECT_EQ(e.id, 1) << line;
        EXPECT_NE(e.message.find(field), std::string::npos) << line << " -> " << e.message;
    }
}

TEST(ParseRequest, VmLifecycleAndBalloonAndQuotaCommands) {
    auto stop = parse_request(R"({"id":1,"cmd":"vm-stop","vm":"a","timeout_ms":250})");
    ASSERT_TRUE(stop.has_value());
    EXPECT_EQ(std::get<VmStopCmd>(stop->command).timeout, std::chrono::milliseconds(250));
    EXPECT_EQ(std::get<VmStopCmd>(parse_request(R"({"id":1,"cmd":"vm-stop","vm":"a"})")->command).timeout,
              kDefaultStopTimeout);
    EXPECT_EQ(parse_error(R"({"id":1,"cmd":"vm-stop","vm":"a","timeout_ms":-5})").code, ReplyCode::bad_request);
    EXPECT_EQ(parse_error(R"({"id":1,"cmd":"vm-stop"})").code, ReplyCode::bad_request);
    EXPECT_EQ(std::get<VmActionCmd>(parse_request(R"({"id":1,"cmd":"vm-pause","vm":"a"})")->command).action,
              VmAction::pause);
    EXPECT_EQ(std::get<VmActionCmd>(parse_request(R"({"id":1,"cmd":"vm-resume","vm":"a"})")->command).action,
              VmAction::resume);
    EXPECT_EQ(std::get<VmActionCmd>(parse_request(R"({"id":1,"cmd":"vm-remove","vm":"a"})")->command).action,
              VmAction::remove);
    EXPECT_EQ(std::get<SetBalloonCmd>(parse_request(R"({"id":1,"cmd":"set-balloon","vm":"a","bytes":"8M"})")->command).bytes,
              8ULL << 20);
    EXPECT_EQ(std::get<SetQuotaCmd>(parse_request(R"({"id":1,"cmd":"set-quota","vm":"a","bytes":"1G"})")->command).bytes,
              1ULL << 30);
    EXPECT_EQ(parse_error(R"({"id":1,"cmd":"set-quota","vm":"a"})").code, ReplyCode::bad_request);
}

// Issue #21: snapshot, snapshot-delete and vm-create with "restore".
TEST(ParseRequest, SnapshotCommandsAndRestore) {
    auto snap = parse_request(R"({"id":1,"cmd":"snapshot","vm":"a","dir":"/s/1","stop":true})");
    ASSERT_TRUE(snap.has_value());
    EXPECT_EQ(std::get<SnapshotCmd>(snap->command).dir, "/s/1");
    EXPECT_EQ(std::get<SnapshotCmd>(snap->command).after, AfterSnapshot::stop);
    EXPECT_EQ(std::get<SnapshotCmd>(parse_request(R"({"cmd":"snapshot","vm":"a","dir":"/s"})")->command).after,
              AfterSnapshot::resume);
    EXPECT_EQ(parse_error(R"({"id":1,"cmd":"snapshot","vm":"a","dir":"rel"})").code, ReplyCode::bad_request);
    EXPECT_EQ(parse_error(R"({"id":1,"cmd":"snapshot","vm":"a","dir":"/s","stop":"yes"})").code, ReplyCode::bad_request);
    EXPECT_EQ(parse_error(R"({"id":1,"cmd":"snapshot","dir":"/s"})").code, ReplyCode::bad_request);
    EXPECT_EQ(std::get<SnapshotDeleteCmd>(parse_request(R"({"cmd":"snapshot-delete","dir":"/s"})")->command).dir, "/s");
    EXPECT_EQ(std::get<SnapshotLoadCmd>(parse_request(R"({"cmd":"snapshot-load","dir":"/s"})")->command).dir, "/s");
    EXPECT_EQ(parse_error(R"({"id":1,"cmd":"snapshot-load","dir":"rel"})").code, ReplyCode::bad_request);
    EXPECT_EQ(parse_error(R"({"id":1,"cmd":"snapshot-load"})").code, ReplyCode::bad_request);

    auto restore = parse_request(R"({"cmd":"vm-create","name":"b","restore":"/s","fill":false,"serial_log":"/l"})");
    ASSERT_TRUE(restore.has_value()) << parse_error(R"({"cmd":"vm-create","name":"b","restore":"/s"})").message;
    const auto& create = std::get<VmCreateCmd>(restore->command);
    ASSERT_TRUE(create.restore.has_value());
    EXPECT_EQ(create.restore->name, "b");
    EXPECT_EQ(create.restore->dir, "/s");
    EXPECT_EQ(create.restore->fill, false);
    EXPECT_TRUE(create.restore->prefetch);
    // Unset, the host decides (a clone gets no filler); explicit true is kept.
    auto plain = parse_request(R"({"cmd":"vm-create","name":"b","restore":"/s"})");
    ASSERT_TRUE(plain.has_value());
    EXPECT_FALSE(std::get<VmCreateCmd>(plain->command).restore->fill.has_value());
    auto filled = parse_request(R"({"cmd":"vm-create","name":"b","restore":"/s","fill":true})");
    ASSERT_TRUE(filled.has_value());
    EXPECT_EQ(std::get<VmCreateCmd>(filled->command).restore->fill, true);
    EXPECT_EQ(create.restore->serial_log, std::filesystem::path("/l"));
    // The spec is the snapshot's: a kernel or a size with restore is refused, naming it.
    auto mixed = parse_error(R"({"cmd":"vm-create","name":"b","restore":"/s","memory":"64M"})");
    EXPECT_EQ(mixed.code, ReplyCode::bad_request);
    EXPECT_NE(mixed.message.find("\"memory\""), std::string::npos) << mixed.message;
    EXPECT_FALSE(std::get<VmCreateCmd>(parse_request(R"({"cmd":"vm-create","name":"b","kernel":"/k","memory":"64M"})")
                     ->command)
                     .restore.has_value());
    EXPECT_TRUE(is_mutating(snap->command));
    EXPECT_EQ(describe(snap->command), "snapshot vm=a dir=/s/1 stop=yes");
    EXPECT_EQ(describe(restore->command), "vm-create vm=b restore=/s fill=no");
}

TEST(ReplyCodes, VmErrorsMapToTheirCodes) {
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::snapshotting), "x"}), ReplyCode::busy);
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::bad_snapshot), "x"}), ReplyCode::bad_snapshot);
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::snapshot_in_use), "x"}), ReplyCode::vm_running);
    EXPECT_EQ(reply_code_of(Error{guestmem::make_error_code(guestmem::Errc::bad_snapshot), "x"}), ReplyCode::bad_snapshot);
    EXPECT_EQ(code_name(ReplyCode::bad_snapshot), "bad_snapshot");
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::no_such_vm), "x"}), ReplyCode::no_such_vm);
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::exists), "x"}), ReplyCode::exists);
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::running), "x"}), ReplyCode::vm_running);
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::not_running), "x"}), ReplyCode::vm_ended);
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::bad_spec), "x"}), ReplyCode::bad_request);
    EXPECT_EQ(reply_code_of(Error{make_error_code(VmErrc::no_balloon), "x"}), ReplyCode::no_balloon);
    EXPECT_EQ(code_name(ReplyCode::vm_running), "vm_running");
    EXPECT_EQ(code_name(ReplyCode::unsupported), "unsupported");
}

// Issue #17 item 8: a KVM failure is kvm_error whatever its errno (ENODEV from
// KVM_CREATE_VM is no swap device), EINVAL (a bad NBD URI) is a bad request, and
// relative paths are refused (the daemon's working directory is not the client's).
TEST(ProtocolCodesTest, KvmEinvalAndRelativePaths) {
    EXPECT_EQ(reply_code_of(Error{std::error_code(ENODEV, std::system_category()), "KVM_CREATE_VM"}),
              ReplyCode::kvm_error);
    EXPECT_EQ(reply_code_of(Error{std::error_code(ENOENT, std::system_category()), "open /dev/kvm"}),
              ReplyCode::kvm_error);
    EXPECT_EQ(reply_code_of(Error{std::error_code(ENOENT, std::system_category()), "open swap device"}),
              ReplyCode::no_such_device);
    EXPECT_EQ(reply_code_of(Error{std::error_code(EINVAL, std::system_category()), "an nbd+unix:// URI needs ?socket=PATH"}),
              ReplyCode::bad_request);
    EXPECT_EQ(reply_code_of(Error{std::error_code(ETIMEDOUT, std::system_category()), "NBD connect"}), ReplyCode::timeout);
    EXPECT_EQ(code_name(ReplyCode::kvm_error), "kvm_error");
    for (const char* line : {R"({"id":1,"cmd":"swapon","path":"a.swap"})", R"({"id":1,"cmd":"swapoff","path":"./a"})",
                             R"({"id":1,"cmd":"vm-create","name":"a","kernel":"k.elf","memory":"64M"})",
                             R"({"id":1,"cmd":"vm-create","name":"a","kernel":"/k","memory":"64M","serial_log":"s.log"})"}) {
        auto bad = parse_request(line);
        ASSERT_FALSE(bad) << line;
        EXPECT_EQ(bad.error().code, ReplyCode::bad_request) << line;
        EXPECT_NE(bad.error().message.find("absolute"), std::string::npos) << bad.error().message;
    }
    EXPECT_TRUE(parse_request(R"({"id":1,"cmd":"swapon","path":"nbd://host/export"})"));
}

// Issue #17 item 6: what the audit log says of each command.
TEST(ProtocolAuditTest, MutatingCommandsAndTheirDescription) {
    auto swapon = parse_request(R"({"id":1,"cmd":"swapon","path":"/var/a b.swap","size":"1M","priority":5})");
    ASSERT_TRUE(swapon);
    EXPECT_TRUE(is_mutating(swapon->command));
    EXPECT_EQ(describe(swapon->command), R"(swapon path="/var/a b.swap" priority=5 size=1048576)");
    auto limit = parse_request(R"({"cmd":"set-limit","vm":"web1","bytes":"1G"})");
    ASSERT_TRUE(limit);
    EXPECT_EQ(describe(limit->command), "set-limit vm=web1 bytes=1073741824");
    auto forged = parse_request(R"({"cmd":"set-quota","vm":"a -> ok\nx=1","bytes":0})");
    ASSERT_TRUE(forged);
    EXPECT_EQ(describe(forged->command).find('\n'), std::string::npos);
    for (const char* quiet : {R"({"cmd":"status"})", R"({"cmd":"stats"})", R"({"cmd":"vm-list"})"})
        EXPECT_FALSE(is_mutating(parse_request(quiet)->command)) << quiet;
}
