// ElfBuilder: crafts small ELF64 images in memory for the loader tests, good ones and
// every kind of bad one (each knob breaks one rule of vmm/loader/elf.cpp).
#pragma once

#include <elf.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace swapvisor::vmm::test {

struct ElfBuilder {
    struct Seg {
        std::uint64_t paddr;
        std::vector<std::byte> data;
        std::uint64_t memsz;
    };
    std::vector<Seg> segments;
    std::uint16_t machine = EM_X86_64;
    unsigned char elf_class = ELFCLASS64;
    std::uint16_t type = ET_EXEC;
    bool pvh_note = true;
    bool note_in_section_only = false;  // SHT_NOTE but no PT_NOTE
    std::uint32_t note_desc_size = 4;   // 4 or 8 are valid
    std::uint64_t entry = 0x100000;

    ElfBuilder& add_segment(std::uint64_t paddr, std::size_t filesz, std::uint64_t memsz, std::uint8_t fill = 0x90) {
        segments.push_back(Seg{paddr, std::vector<std::byte>(filesz, std::byte{fill}), memsz});
        return *this;
    }

    std::vector<std::byte> build() const {
        // Layout: ehdr | phdrs | note | segment data ... | shdrs (null + note)
        std::vector<std::byte> note;
        if (pvh_note) {
            auto put32 = [&](std::uint32_t v) {
                auto* p = reinterpret_cast<const std::byte*>(&v);
                note.insert(note.end(), p, p + 4);
            };
            put32(4);
            put32(note_desc_size);
            put32(18);
            const char name[4] = {'X', 'e', 'n', '\0'};
            auto* n = reinterpret_cast<const std::byte*>(name);
            note.insert(note.end(), n, n + 4);
            std::uint64_t e = entry;
            auto* d = reinterpret_cast<const std::byte*>(&e);
            for (std::uint32_t i = 0; i < note_desc_size; ++i) note.push_back(i < 8 ? d[i] : std::byte{0});
            while (note.size() % 4) note.push_back(std::byte{0});
        }
        bool ph_note = pvh_note && !note_in_section_only;
        std::size_t phnum = segments.size() + (ph_note ? 1 : 0);
        std::size_t off = sizeof(Elf64_Ehdr) + phnum * sizeof(Elf64_Phdr);
        std::size_t note_off = off;
        off += note.size();
        std::vector<std::size_t> seg_off;
        for (const Seg& s : segments) {
            seg_off.push_back(off);
            off += s.data.size();
        }
        std::size_t sh_off = (off + 7) & ~std::size_t{7};
        std::size_t shnum = pvh_note ? 2 : 0;
        std::vector<std::byte> out(sh_off + shnum * sizeof(Elf64_Shdr));

        Elf64_Ehdr eh{};
        std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
        eh.e_ident[EI_CLASS] = elf_class;
        eh.e_ident[EI_DATA] = ELFDATA2LSB;
        eh.e_ident[EI_VERSION] = EV_CURRENT;
        eh.e_type = type;
        eh.e_machine = machine;
        eh.e_version = EV_CURRENT;
        eh.e_entry = entry;
        eh.e_phoff = sizeof(Elf64_Ehdr);
        eh.e_shoff = shnum ? sh_off : 0;
        eh.e_ehsize = sizeof(Elf64_Ehdr);
        eh.e_phentsize = sizeof(Elf64_Phdr);
        eh.e_phnum = static_cast<std::uint16_t>(phnum);
        eh.e_shentsize = sizeof(Elf64_Shdr);
        eh.e_shnum = static_cast<std::uint16_t>(shnum);
        std::memcpy(out.data(), &eh, sizeof eh);

        std::size_t ph = sizeof(Elf64_Ehdr);
        for (std::size_t i = 0; i < segments.size(); ++i) {
            Elf64_Phdr p{};
            p.p_type = PT_LOAD;
            p.p_flags = PF_R | PF_X;
            p.p_offset = seg_off[i];
            p.p_vaddr = p.p_paddr = segments[i].paddr;
            p.p_filesz = segments[i].data.size();
            p.p_memsz = segments[i].memsz;
            p.p_align = 0x1000;
            std::memcpy(out.data() + ph, &p, sizeof p);
            ph += sizeof p;
            std::memcpy(out.data() + seg_off[i], segments[i].data.data(), segments[i].data.size());
        }
        if (ph_note) {
            Elf64_Phdr p{};
            p.p_type = PT_NOTE;
            p.p_offset = note_off;
            p.p_filesz = note.size();
            p.p_align = 4;
            std::memcpy(out.data() + ph, &p, sizeof p);
        }
        if (!note.empty()) std::memcpy(out.data() + note_off, note.data(), note.size());  // no null source (UBSan)
        if (shnum) {
            Elf64_Shdr null_sh{};
            Elf64_Shdr note_sh{};
            note_sh.sh_type = SHT_NOTE;
            note_sh.sh_offset = note_off;
            note_sh.sh_size = note.size();
            note_sh.sh_addralign = 4;
            std::memcpy(out.data() + sh_off, &null_sh, sizeof null_sh);
            std::memcpy(out.data() + sh_off + sizeof(Elf64_Shdr), &note_sh, sizeof note_sh);
        }
        return out;
    }
};

// A patchable copy: overwrite a field at an offset.
template <class T>
void poke(std::vector<std::byte>& bytes, std::size_t offset, T value) {
    std::memcpy(bytes.data() + offset, &value, sizeof value);
}

}  // namespace swapvisor::vmm::test
