// page_table_fuzz: the memory snapshot's page table decoder
// (guestmem/page_table_file.hpp) on any bytes, as a corrupt or hostile memory.pages
// would give it.
//
// The input: byte 0 bit 0 set = the table's bytes as they are; clear = the rest with
// its xxh3-64 appended, so that mutations reach past the checksum into the counts,
// the device runs and the references. Byte 0 bit 1 set = decode for one page more
// than the table's header says (a table of another memory size).
//
// Properties (fuzz_check aborts on any): decode never throws and refuses with
// Errc::bad_snapshot; an accepted table has exactly the pages asked for, a kind of
// the four per page, counts that add up, one reference per swapped page, and a
// version this swapvisor reads; encoding it again (version 2) and decoding that gives
// the same kinds and references (the writer and the reader agree).
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "guestmem/errc.hpp"
#include "guestmem/page_table_file.hpp"
#include "tests/fuzz/fuzz_input.hpp"

using namespace swapvisor::guestmem;
using swapvisor::fuzz::fuzz_check;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::uint8_t mode = data[0];
    std::vector<std::uint8_t> b(data + 1, data + size);
    if (!(mode & 1)) {
        const std::uint64_t sum = XXH3_64bits(b.data(), b.size());
        const auto* p = reinterpret_cast<const std::uint8_t*>(&sum);
        b.insert(b.end(), p, p + sizeof sum);
    }
    std::uint64_t pages = 0;
    if (b.size() >= 24) std::memcpy(&pages, b.data() + 16, sizeof pages);
    if (mode & 2) pages += 1;

    auto t = decode_page_table(b, pages, "fuzz");
    if (!t) {
        fuzz_check(t.error().code == make_error_code(Errc::bad_snapshot), "a refused table is bad_snapshot");
        return 0;
    }
    fuzz_check(t->version >= kOldestMemorySnapshotVersion && t->version <= kMemorySnapshotVersion, "a known version");
    fuzz_check(t->kinds.size() == pages, "one kind per page asked for");
    fuzz_check(t->counts.zero + t->counts.image + t->counts.swapped + t->counts.lost == pages, "the counts add up");
    fuzz_check(t->refs.size() == t->counts.swapped, "one reference per swapped page");
    for (std::uint8_t k : t->kinds) fuzz_check(k <= static_cast<std::uint8_t>(PageKind::lost), "a known kind");

    const auto again = encode_page_table(t->kinds, t->refs);
    auto back = decode_page_table(again, pages, "fuzz: encoded again");
    fuzz_check(back.has_value(), "an accepted table encodes to one that decodes");
    fuzz_check(back->version == kMemorySnapshotVersion, "written in the current version");
    fuzz_check(back->kinds == t->kinds, "the kinds survive a round trip");
    fuzz_check(back->refs.size() == t->refs.size(), "the references survive a round trip");
    for (std::size_t i = 0; i < t->refs.size(); ++i)
        fuzz_check(back->refs[i].uuid == t->refs[i].uuid && back->refs[i].slot == t->refs[i].slot &&
                       back->refs[i].checksum == t->refs[i].checksum,
                   "each reference survives a round trip");
    return 0;
}
