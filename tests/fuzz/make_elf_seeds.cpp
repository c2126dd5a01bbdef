// make_elf_seeds DIR: writes the ELF seed corpus of elf_fuzz (tests/fuzz/corpus/elf)
// with tests/vmm/elf_builder.hpp: small images that load into the fuzzer's 4 MiB
// guest, and one of each way to be refused, so the fuzzer starts next to every rule.
// Run by hand when the seeds should change (tests/fuzz/README.md); the output is
// committed.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/vmm/elf_builder.hpp"

using swapvisor::vmm::test::ElfBuilder;

namespace {

void save(const std::filesystem::path& dir, const std::string& name, const std::vector<std::byte>& bytes) {
    std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) std::fprintf(stderr, "make_elf_seeds: cannot write %s\n", (dir / name).c_str());
}

ElfBuilder small() {
    ElfBuilder b;
    b.add_segment(0x100000, 64, 0x2000);  // text + bss, entry at its first byte
    return b;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_elf_seeds DIR\n");
        return 2;
    }
    std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);

    save(dir, "valid-note4", small().build());
    ElfBuilder note8 = small();
    note8.note_desc_size = 8;
    save(dir, "valid-note8", note8.build());
    ElfBuilder section = small();
    section.note_in_section_only = true;
    save(dir, "valid-note-in-section", section.build());
    ElfBuilder two = small();
    two.add_segment(0x180000, 32, 0x1001, 0xcc);  // a second segment with a partial-page bss
    save(dir, "valid-two-segments", two.build());
    ElfBuilder high;
    high.add_segment(0x3ff000, 16, 0x1000);  // the last page of the 4 MiB guest
    high.entry = 0x3ff000;
    save(dir, "valid-last-page", high.build());

    ElfBuilder outside;
    outside.add_segment(0x1000000, 16, 0x1000);  // 16 MiB: parses, does not fit the guest
    outside.entry = 0x1000000;
    save(dir, "refused-outside-ram", outside.build());
    ElfBuilder boot_data;
    boot_data.add_segment(0x6000, 16, 0x1000);  // over hvm_start_info
    boot_data.entry = 0x6000;
    save(dir, "refused-boot-data", boot_data.build());
    ElfBuilder overlap = small();
    overlap.add_segment(0x101000, 16, 0x1000);
    save(dir, "refused-overlap", overlap.build());
    ElfBuilder no_note = small();
    no_note.pvh_note = false;
    save(dir, "refused-no-note", no_note.build());
    ElfBuilder bad_entry = small();
    bad_entry.entry = 0x100040;  // in bss, not in the file bytes
    save(dir, "refused-entry-in-bss", bad_entry.build());
    ElfBuilder elf32 = small();
    elf32.elf_class = ELFCLASS32;
    save(dir, "refused-elf32", elf32.build());
    return 0;
}
