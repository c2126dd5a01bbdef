/*
 * hello: the smallest swapvisor example guest. Prints a greeting, its command
 * line, the PVH memory map and the runtime's layout, then
 * `RESULT {"guest":"hello","ok":true}` and exits 0 through the debug-exit port.
 * It proves the boot path (PVH entry, long mode, ring 3, COM1, exit).
 */
#include "runtime/rt.h"

static const char* range_type_name(uint32_t type) {
  switch (type) {
    case 1: return "ram";
    case 2: return "reserved";
    case 3: return "acpi";
    case 4: return "nvs";
    case 5: return "unusable";
    default: return "other";
  }
}

int main(void) {
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  unsigned iopl = (unsigned)(rt_rflags() >> 12) & 3;
  rt_printf("hello: swapvisor example guest in ring %u, RFLAGS.IOPL %u%s\n", cs & 3u, iopl,
            iopl == 3 ? "" : " (ports via the TSS I/O bitmap)");
  rt_printf("hello: cmdline \"%s\"\n", rt_cmdline());
  const struct rt_mem_range* m = rt_memmap();
  uint64_t ram = 0;
  rt_printf("hello: memory map, %zu entries\n", rt_memmap_count());
  for (size_t i = 0; i < rt_memmap_count(); ++i) {
    rt_printf("hello:   [0x%016lx - 0x%016lx) %-8s %lu KiB\n", m[i].addr, m[i].addr + m[i].size,
              range_type_name(m[i].type), m[i].size / 1024);
    if (m[i].type == RT_E820_RAM) ram += m[i].size;
  }
  rt_printf("hello: %lu MiB of RAM; runtime ends at 0x%lx; identity map up to 0x%lx\n",
            ram / RT_MIB, rt_free_start(), rt_mapped_limit());
  uint64_t hz = rt_tsc_hz();
  if (hz) {
    rt_printf("hello: TSC %lu kHz (%s)\n", hz / 1000, rt_tsc_source());
  } else {
    rt_printf("hello: TSC frequency unknown (no PIT, no CPUID frequency leaf)\n");
  }
  rt_printf("RESULT {\"guest\":\"hello\",\"ok\":true}\n");
  return 0;
}
