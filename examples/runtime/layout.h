/*
 * Addresses shared by entry.S (ring 0) and smp.c (ring 3) of the example
 * guests' runtime. Plain #defines: this header is included from assembly.
 *
 * RT_AP_TRAMP_ADDR: the 4 KiB page below 1 MiB where the BSP copies the AP
 * start-up trampoline; its SIPI vector is RT_AP_TRAMP_ADDR >> 12. Both VMMs
 * leave it unused (vmm/README.md#address-map: 0x8000-0x1ffff is unused; QEMU's
 * PVH boot data lies elsewhere), and the runtime has copied the command line
 * and memory map before any AP starts, so overwriting boot data would be
 * harmless too.
 */
#ifndef SWAPVISOR_EXAMPLES_RUNTIME_LAYOUT_H
#define SWAPVISOR_EXAMPLES_RUNTIME_LAYOUT_H

#define RT_AP_TRAMP_ADDR 0x8000
#define RT_MAX_CPUS 8

/* RT_COM1: the UART's base port. RT_EXIT_EXCEPTION: the debug-exit value of a
 * guest that took a CPU exception (entry.S prints what the CPU saw first;
 * examples/README.md#exceptions). */
#define RT_COM1 0x3f8
#define RT_EXIT_EXCEPTION 112

#endif
