// ELF64 parsing for the PVH loader. Every field read from the file is bounds
// checked against the file size before use, with overflow-safe arithmetic, because
// the image is untrusted input. Structures are copied out with memcpy (the buffer
// has no alignment guarantee). Layouts are glibc's <elf.h> (the ELF gABI).
#include "vmm/loader/elf.hpp"

#include <elf.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <optional>
#include <string_view>

#include <fmt/format.h>

namespace swapvisor::vmm::loader {
namespace {

constexpr std::uint64_t kMaxImageBytes = 1ULL << 30;

// The file name and what is wrong with it go in the context; the code says which rule.
std::unexpected<Error> fail(const std::string& name, LoadErrc code, std::string what) {
    return make_error(code, "reading the kernel", fmt::format("{}: {}", name, what));
}

// Does [offset, offset + len) lie inside a buffer of `size` bytes?
bool in_bounds(std::uint64_t offset, std::uint64_t len, std::uint64_t size) {
    return offset <= size && len <= size - offset;
}

template <class T>
T read_struct(std::span<const std::byte> bytes, std::uint64_t offset) {
    T out;
    std::memcpy(&out, bytes.data() + offset, sizeof(T));
    return out;
}

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) & ~(a - 1); }

// Walk the notes in bytes[offset, offset + size) and return the PVH entry if a
// XEN_ELFNOTE_PHYS32_ENTRY note is present. Note header and fields are padded to
// `align` (4 per the gABI; 8 for segments aligned so, as GNU property notes are).
Result<std::optional<std::uint32_t>> find_pvh_note(const ElfImage& img, std::uint64_t offset, std::uint64_t size,
                                                        std::uint64_t align, const char* where) {
    std::span<const std::byte> bytes(img.bytes);
    if (!in_bounds(offset, size, bytes.size())) {
        return fail(img.name, LoadErrc::truncated,
                    fmt::format("{} [0x{:x}, +0x{:x}) extends past the end of the file ({} bytes)", where, offset,
                                size, bytes.size()));
    }
    align = align == 8 ? 8 : 4;
    std::uint64_t pos = 0;
    while (pos + sizeof(Elf64_Nhdr) <= size) {
        auto nhdr = read_struct<Elf64_Nhdr>(bytes, offset + pos);
        std::uint64_t name_off = pos + sizeof(Elf64_Nhdr);
        std::uint64_t desc_off = align_up(name_off + nhdr.n_namesz, align);
        std::uint64_t next = align_up(desc_off + nhdr.n_descsz, align);
        if (desc_off > size || nhdr.n_descsz > size - desc_off) {
            return fail(img.name, LoadErrc::truncated,
                        fmt::format("note at {} offset 0x{:x} runs past the end of its {}", where, offset + pos, where));
        }
        std::string_view name(reinterpret_cast<const char*>(bytes.data() + offset + name_off), nhdr.n_namesz);
        // The name includes its NUL: "Xen\0", namesz 4.
        if (nhdr.n_type == kXenElfnotePhys32Entry && name == std::string_view("Xen\0", 4)) {
            // Xen's ABI says a 32-bit value; Linux emits it with _ASM_PTR, i.e. 8 bytes
            // on x86-64 (QEMU accepts both). Anything else is malformed.
            if (nhdr.n_descsz == 4) {
                return read_struct<std::uint32_t>(bytes, offset + desc_off);
            }
            if (nhdr.n_descsz == 8) {
                auto v = read_struct<std::uint64_t>(bytes, offset + desc_off);
                if (v > 0xffff'ffffULL) {
                    return fail(img.name, LoadErrc::bad_pvh_note,
                                fmt::format("PVH entry 0x{:x} in the Xen PHYS32_ENTRY note is above 4 GiB", v));
                }
                return static_cast<std::uint32_t>(v);
            }
            return fail(img.name, LoadErrc::bad_pvh_note,
                        fmt::format("Xen PHYS32_ENTRY note has a {}-byte descriptor (expected 4 or 8)", nhdr.n_descsz));
        }
        pos = next;
    }
    return std::optional<std::uint32_t>{};
}

}  // namespace

Result<ElfImage> parse_elf(std::string name, std::vector<std::byte> bytes_in) {
    ElfImage img;
    img.name = std::move(name);
    img.bytes = std::move(bytes_in);
    std::span<const std::byte> bytes(img.bytes);

    if (bytes.size() < EI_NIDENT || std::memcmp(bytes.data(), ELFMAG, SELFMAG) != 0) {
        return fail(img.name, LoadErrc::not_elf, "not an ELF file (no \\x7fELF magic)");
    }
    auto ident = [&](int i) { return static_cast<unsigned char>(bytes[i]); };
    if (ident(EI_CLASS) != ELFCLASS64) {
        return fail(img.name, LoadErrc::unsupported_elf,
                    ident(EI_CLASS) == ELFCLASS32 ? "32-bit ELF; swapvisor boots ELF64 x86-64 images"
                                                  : "unknown ELF class; swapvisor boots ELF64 x86-64 images");
    }
    if (ident(EI_DATA) != ELFDATA2LSB) return fail(img.name, LoadErrc::unsupported_elf, "big-endian ELF");
    if (bytes.size() < sizeof(Elf64_Ehdr)) {
        return fail(img.name, LoadErrc::truncated,
                    fmt::format("file is {} bytes, shorter than an ELF64 header ({} bytes)", bytes.size(),
                                sizeof(Elf64_Ehdr)));
    }
    auto ehdr = read_struct<Elf64_Ehdr>(bytes, 0);
    if (ehdr.e_machine != EM_X86_64) {
        return fail(img.name, LoadErrc::unsupported_elf,
                    fmt::format("ELF machine {} is not x86-64 ({})", ehdr.e_machine, EM_X86_64));
    }
    if (ehdr.e_type != ET_EXEC && ehdr.e_type != ET_DYN) {
        return fail(img.name, LoadErrc::unsupported_elf,
                    fmt::format("ELF type {} is not an executable (ET_EXEC or ET_DYN)", ehdr.e_type));
    }
    if (ehdr.e_phnum == 0 || ehdr.e_phnum == PN_XNUM) {
        return fail(img.name, LoadErrc::bad_segment, "no program headers");
    }
    if (ehdr.e_phentsize != sizeof(Elf64_Phdr)) {
        return fail(img.name, LoadErrc::unsupported_elf,
                    fmt::format("program header size {} (expected {})", ehdr.e_phentsize, sizeof(Elf64_Phdr)));
    }
    if (!in_bounds(ehdr.e_phoff, std::uint64_t{ehdr.e_phnum} * sizeof(Elf64_Phdr), bytes.size())) {
        return fail(img.name, LoadErrc::truncated,
                    fmt::format("program header table at 0x{:x} ({} entries) extends past the end of the file "
                                "({} bytes)",
                                ehdr.e_phoff, ehdr.e_phnum, bytes.size()));
    }

    std::optional<std::uint32_t> entry;
    for (unsigned i = 0; i < ehdr.e_phnum; ++i) {
        auto ph = read_struct<Elf64_Phdr>(bytes, ehdr.e_phoff + std::uint64_t{i} * sizeof(Elf64_Phdr));
        if (ph.p_type == PT_LOAD) {
            if (ph.p_memsz == 0) continue;
            if (ph.p_filesz > ph.p_memsz) {
                return fail(img.name, LoadErrc::bad_segment,
                            fmt::format("PT_LOAD segment {} has p_filesz 0x{:x} > p_memsz 0x{:x}", i, ph.p_filesz,
                                        ph.p_memsz));
            }
            if (!in_bounds(ph.p_offset, ph.p_filesz, bytes.size())) {
                return fail(img.name, LoadErrc::truncated,
                            fmt::format("PT_LOAD segment {} (file offset 0x{:x}, 0x{:x} bytes) extends past the end "
                                        "of the file ({} bytes)",
                                        i, ph.p_offset, ph.p_filesz, bytes.size()));
            }
            if (ph.p_paddr > UINT64_MAX - ph.p_memsz) {
                return fail(img.name, LoadErrc::bad_segment,
                            fmt::format("PT_LOAD segment {} at 0x{:x} + 0x{:x} overflows", i, ph.p_paddr, ph.p_memsz));
            }
            img.segments.push_back(ElfSegment{i, ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz});
        } else if (ph.p_type == PT_NOTE && !entry) {
            auto found = find_pvh_note(img, ph.p_offset, ph.p_filesz, ph.p_align,
                                       "PT_NOTE segment");
            if (!found) return std::unexpected(found.error());
            entry = *found;
        }
    }

    // Images whose notes are not covered by a PT_NOTE segment still carry them in
    // SHT_NOTE sections (section headers are optional, so only look when present).
    if (!entry && ehdr.e_shoff != 0 && ehdr.e_shnum != 0) {
        if (ehdr.e_shentsize != sizeof(Elf64_Shdr)) {
            return fail(img.name, LoadErrc::unsupported_elf,
                        fmt::format("section header size {} (expected {})", ehdr.e_shentsize, sizeof(Elf64_Shdr)));
        }
        if (!in_bounds(ehdr.e_shoff, std::uint64_t{ehdr.e_shnum} * sizeof(Elf64_Shdr), bytes.size())) {
            return fail(img.name, LoadErrc::truncated,
                        fmt::format("section header table at 0x{:x} ({} entries) extends past the end of the file "
                                    "({} bytes)",
                                    ehdr.e_shoff, ehdr.e_shnum, bytes.size()));
        }
        for (unsigned i = 0; i < ehdr.e_shnum && !entry; ++i) {
            auto sh = read_struct<Elf64_Shdr>(bytes, ehdr.e_shoff + std::uint64_t{i} * sizeof(Elf64_Shdr));
            if (sh.sh_type != SHT_NOTE) continue;
            auto found = find_pvh_note(img, sh.sh_offset, sh.sh_size, sh.sh_addralign, "SHT_NOTE section");
            if (!found) return std::unexpected(found.error());
            entry = *found;
        }
    }

    if (img.segments.empty()) return fail(img.name, LoadErrc::bad_segment, "no PT_LOAD segment with memory");
    if (!entry) {
        return fail(img.name, LoadErrc::no_pvh_note,
                    "no PVH entry: the image has no Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (type 18); build Linux "
                    "with CONFIG_PVH=y or add the note to the guest");
    }

    std::sort(img.segments.begin(), img.segments.end(),
              [](const ElfSegment& a, const ElfSegment& b) { return a.paddr < b.paddr; });
    for (std::size_t k = 1; k < img.segments.size(); ++k) {
        const ElfSegment& prev = img.segments[k - 1];
        const ElfSegment& cur = img.segments[k];
        if (cur.paddr < prev.paddr + prev.memsz) {
            return fail(img.name, LoadErrc::bad_segment,
                        fmt::format("PT_LOAD segments {} [0x{:x}, 0x{:x}) and {} [0x{:x}, 0x{:x}) overlap", prev.index,
                                    prev.paddr, prev.paddr + prev.memsz, cur.index, cur.paddr, cur.paddr + cur.memsz));
        }
    }
    bool entry_loaded = std::any_of(img.segments.begin(), img.segments.end(), [&](const ElfSegment& s) {
        return *entry >= s.paddr && *entry < s.paddr + s.filesz;
    });
    if (!entry_loaded) {
        return fail(img.name, LoadErrc::bad_pvh_note,
                    fmt::format("PVH entry 0x{:x} is not inside the file bytes of any PT_LOAD segment", *entry));
    }
    img.pvh_entry = *entry;
    return img;
}

Result<ElfImage> read_elf(const std::filesystem::path& path) {
    std::string name = path.string();
    std::error_code ec;
    auto status = std::filesystem::status(path, ec);
    if (ec) return fail(name, LoadErrc::cannot_open, fmt::format("cannot open kernel: {}", ec.message()));
    if (std::filesystem::is_directory(status)) return fail(name, LoadErrc::cannot_open, "cannot open kernel: is a directory");
    std::ifstream in(path, std::ios::binary);
    if (!in) return fail(name, LoadErrc::cannot_open, "cannot open kernel: permission denied or unreadable");
    in.seekg(0, std::ios::end);
    auto size = static_cast<std::uint64_t>(in.tellg());
    if (size > kMaxImageBytes) {
        return fail(name, LoadErrc::unsupported_elf, fmt::format("image is {} bytes; the limit is 1 GiB", size));
    }
    in.seekg(0, std::ios::beg);
    std::vector<std::byte> bytes(size);
    if (!in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size))) {
        return fail(name, LoadErrc::cannot_open, "read error");
    }
    return parse_elf(std::move(name), std::move(bytes));
}

}  // namespace swapvisor::vmm::loader
