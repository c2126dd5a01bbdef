/*
 * hello: the smallest swapvisor example guest. Prints a greeting, its command
 * line, the PVH memory map and the runtime's layout, then
 * starts every other vCPU and has each report from ring 3 on its own stack,
 * then `RESULT {"guest":"hello","ok":true,"cpus":N}` and exits 0 through the
 * debug-exit port. It proves the boot path (PVH entry, long mode, ring 3,
 * COM1, AP start-up, exit). `cpus=N` caps the CPUs probed (rt.h).
 * `fault=ud|pf` with `fault-cpu=N` (default 0) then takes that exception on
 * purpose on CPU N instead of exiting: the runtime's exception report
 * (examples/README.md#exceptions) must name it and end the VM with
 * RT_EXIT_EXCEPTION (112).
 */
#include "runtime/rt.h"

#define RT_MAX_CPUS_HELLO 8 /* = RT_MAX_CPUS (runtime/layout.h) */

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

struct cpu_report {
  unsigned ring;
  uint64_t stack;
  uint32_t apic_id;     /* local APIC ID register */
  uint32_t cpuid_ebx;   /* CPUID.1 EBX (initial APIC id in bits 31-24) */
};
static struct cpu_report g_report[RT_MAX_CPUS_HELLO];

static void report_in(unsigned cpu, void* arg) {
  (void)arg;
  uint16_t cs;
  uint64_t sp;
  uint32_t r[4];
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(1), "c"(0));
  uint32_t apic = *(volatile uint32_t*)(uintptr_t)0xfee00020ull;
  g_report[cpu] = (struct cpu_report){cs & 3u, sp, apic >> 24, r[1]};
}

/* fault=ud: an invalid opcode (#UD, vector 6). fault=pf: a read of the first
 * address past the identity map (#PF, vector 14, CR2 = that address). */
struct fault_plan {
  const char* kind;
  unsigned cpu;
};

static void take_fault(unsigned cpu, void* arg) {
  const struct fault_plan* plan = arg;
  if (cpu != plan->cpu) return;
  if (strcmp(plan->kind, "ud") == 0) __asm__ volatile("ud2");
  if (strcmp(plan->kind, "pf") == 0) (void)*(volatile uint64_t*)(uintptr_t)rt_mapped_limit();
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
  unsigned cpus = rt_smp_start(0);
  if (cpus > RT_MAX_CPUS_HELLO) cpus = RT_MAX_CPUS_HELLO;
  rt_run_workers(cpus, report_in, NULL);
  bool ok = true;
  for (unsigned c = 0; c < cpus; ++c) {
    rt_printf("hello: cpu %u: ring %u, stack 0x%lx, APIC id %u, CPUID.1 EBX 0x%x\n", c,
              g_report[c].ring, g_report[c].stack, g_report[c].apic_id, g_report[c].cpuid_ebx);
    if (g_report[c].ring != 3 || g_report[c].apic_id != c) ok = false;
  }
  const struct fault_plan plan = {arg_str("fault", ""), (unsigned)arg_u64("fault-cpu", 0)};
  if (plan.kind[0] != '\0') {
    if ((strcmp(plan.kind, "ud") != 0 && strcmp(plan.kind, "pf") != 0) || plan.cpu >= cpus) {
      rt_printf("hello: error: fault=%s fault-cpu=%u: want ud or pf on one of %u CPUs\n", plan.kind, plan.cpu, cpus);
      return 2;
    }
    rt_printf("hello: taking a #%s on cpu %u on purpose\n", plan.kind[0] == 'u' ? "UD" : "PF", plan.cpu);
    rt_run_workers(plan.cpu + 1, take_fault, (void*)&plan);
    rt_printf("hello: error: the exception did not end the VM\n");
    return 1;
  }
  rt_printf("RESULT {\"guest\":\"hello\",\"ok\":%s,\"cpus\":%u}\n", ok ? "true" : "false", cpus);
  return ok ? 0 : 1;
}
