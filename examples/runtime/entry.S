/*
 * PVH entry of the swapvisor example guests: 32-bit protected mode -> long mode
 * -> ring 3 (IOPL 3 plus an all-ports TSS I/O bitmap), where the whole guest
 * program runs.
 *
 * Role: the only ring-0 code of a guest. On the nested-KVM hosts swapvisor is
 * developed on, guest ring-0 code is emulated instruction by instruction (every
 * memory access traps, ~5 us each), so this file does almost no memory writes:
 * the GDT, the TSS with its I/O bitmap, the page tables (an identity map of
 * 512 GiB with 1 GiB pages, or of 4 GiB with 2 MiB pages) and the IRETQ frame
 * are all assembled into the image by the assembler and the linker. Ring 0 only loads registers, with one
 * exception: without CPUID pdpe1gb (2 MiB fallback) it writes page directories
 * for RAM above 4 GiB (1 KiB of writes per GiB) after the image.
 *
 * Invariants (examples/README.md#boot):
 *  - entered per the PVH ABI: 32-bit protected mode, paging off, flat CS/DS,
 *    EBX = physical address of struct hvm_start_info; no stack is used or given.
 *  - every page-table entry has U/S=1, R/W=1 and A/D preset, so ring 3 can touch
 *    all mapped memory and the CPU never writes a paging structure.
 *  - the 2 MiB at 0xd0000000 (the virtio-mmio windows) are mapped uncached
 *    (PCD|PWT); with 1 GiB pages, GiB 3 goes through the static pd_2m page for
 *    it, so that one 2 MiB entry can differ (swapvisor has no RAM there: its
 *    3-4 GiB hole; elsewhere that entry would just be slow, not wrong).
 *  - ring 3 is entered at rt_user_entry with RDI = hvm_start_info address,
 *    RSI = first free physical byte after image and page tables, RDX = bytes of
 *    physical address space that are identity mapped.
 */

#include "layout.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA (0x18 | 3)
#define SEL_UCODE (0x20 | 3)
#define SEL_TSS 0x28

#define PTE_TABLE 0x27 /* present | writable | user | accessed */
#define PTE_LEAF 0xe7  /* ... | dirty | page size */
#define PTE_PWT 0x08   /* with PCD and the default PAT: uncached (UC) */
#define PTE_PCD 0x10
#define VIRTIO_MMIO_BASE 0xd0000000 /* virtio-mmio windows (DESIGN.md section 6) */

#define CR0_PE (1 << 0)
#define CR0_MP (1 << 1)
#define CR0_EM (1 << 2)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)
#define CR4_OSFXSR (1 << 9)
#define CR4_OSXMMEXCPT (1 << 10)
#define MSR_EFER 0xc0000080
#define EFER_LME (1 << 8)

#define START_INFO_MAGIC 0x336ec578
#define MAPPED_GIB_1G 512 /* one PDPT of 1 GiB pages */
#define MAPPED_GIB_MIN 4  /* the static 2 MiB directories */

/* ------------------------------------------------------------------ PVH note */
        .section .note.Xen, "a", @note
        .balign 4
        .long 2f - 1f                   /* namesz */
        .long 4f - 3f                   /* descsz */
        .long XEN_ELFNOTE_PHYS32_ENTRY  /* type */
1:      .asciz "Xen"
2:      .balign 4
3:      .quad pvh_entry                 /* 8 bytes, as Linux's _ASM_PTR on x86-64 */
4:      .balign 4

/* ------------------------------------------------------------ 32-bit entry */
        .section .text.entry, "ax", @progbits
        .code32
        .globl pvh_entry
        .type pvh_entry, @function
pvh_entry:
        cli
        cld
        movl %ebx, %edi                 /* keep hvm_start_info; CPUID clobbers EBX */
        lgdt gdt_desc
        movl $SEL_KDATA, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %ss

        /* Long mode is required; pdpe1gb chooses the page-table layout. */
        movl $0x80000000, %eax
        cpuid
        cmpl $0x80000001, %eax
        jb no_long_mode
        movl $0x80000001, %eax
        cpuid
        btl $29, %edx
        jnc no_long_mode
        movl $_end_page_aligned, %esi   /* first free byte after the image */
        movl $MAPPED_GIB_1G, %ebp
        btl $26, %edx
        jc paging_ready

        /* 2 MiB fallback: static directories cover 4 GiB; extend to the RAM end. */
        movl $(pdpt_2m + PTE_TABLE), pml4
        jmp ram_end_gib                 /* -> EBP = GiB to map (>= 4, <= 512) */
ram_end_known:
        movl $MAPPED_GIB_MIN, %ecx      /* ECX = GiB index being mapped */
1:      cmpl %ebp, %ecx
        jae paging_ready
        leal PTE_TABLE(%esi), %eax
        movl %eax, pdpt_2m(, %ecx, 8)   /* high half is already zero in .data */
        movl %ecx, %edx
        shll $30, %edx
        orl $PTE_LEAF, %edx             /* EDX = low dword of the first leaf */
        movl %ecx, %eax
        shrl $2, %eax                   /* EAX = high dword (GiB / 4) */
        movl $512, %ebx
2:      movl %edx, (%esi)
        movl %eax, 4(%esi)
        addl $0x200000, %edx
        addl $8, %esi
        decl %ebx
        jnz 2b
        incl %ecx
        jmp 1b

paging_ready:
        movl $pml4, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
        movl %eax, %cr4
        movl $MSR_EFER, %ecx
        rdmsr
        orl $EFER_LME, %eax
        wrmsr
        movl %cr0, %eax
        andl $~CR0_EM, %eax
        orl $(CR0_PG | CR0_MP), %eax
        movl %eax, %cr0
        ljmp $SEL_KCODE, $long_mode_entry

no_long_mode:
        movl $3, %eax                   /* the debug-exit port ends the VM with 3 */
        outl %eax, $0xf4
1:      hlt
        jmp 1b

/*
 * ram_end_gib: EBP = end of the highest RAM range of the PVH memory map, in GiB
 * rounded up, clamped to [MAPPED_GIB_MIN, MAPPED_GIB_1G]. In: EDI = start info.
 * Clobbers EAX, EBX, ECX, EDX. There is no stack, so it jumps back to
 * ram_end_known instead of returning.
 */
ram_end_gib:
        movl $MAPPED_GIB_MIN, %ebp
        cmpl $START_INFO_MAGIC, (%edi)
        jne 9f
        cmpl $1, 4(%edi)                /* memmap fields exist from version 1 on */
        jb 9f
        movl 40(%edi), %ebx             /* memmap_paddr (below 4 GiB) */
        movl 48(%edi), %ecx             /* memmap_entries */
1:      testl %ecx, %ecx
        jz 9f
        cmpl $1, 16(%ebx)               /* type 1 = RAM */
        jne 3f
        movl (%ebx), %eax
        movl 4(%ebx), %edx
        addl 8(%ebx), %eax
        adcl 12(%ebx), %edx             /* EDX:EAX = end of the range */
        addl $0x3fffffff, %eax
        adcl $0, %edx                   /* round up to a GiB */
        shrdl $30, %edx, %eax
        shrl $30, %edx
        jnz 2f                          /* beyond 2^62 bytes: clamp */
        cmpl $MAPPED_GIB_1G, %eax
        jbe 4f
2:      movl $MAPPED_GIB_1G, %eax
4:      cmpl %ebp, %eax
        jbe 3f
        movl %eax, %ebp
3:      addl $24, %ebx
        decl %ecx
        jmp 1b
9:      jmp ram_end_known

/* ------------------------------------------------------------ 64-bit ring 0 */
        .code64
long_mode_entry:
        movl $SEL_KDATA, %eax
        movl %eax, %ss
        movw $SEL_TSS, %ax
        ltr %ax
        lidt idt_desc(%rip)             /* gates written later, by ring 3 (rt.c) */
        movl $SEL_UDATA, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %fs
        movl %eax, %gs
        movl %edi, %edi                 /* upper halves are undefined after the switch */
        movl %esi, %esi
        movl %ebp, %edx
        shlq $30, %rdx
        leaq iret_frame(%rip), %rsp
        iretq                           /* -> rt_user_entry, ring 3, IOPL 3, IF 0 */

/*
 * ap_long_entry: where every application processor arrives from the trampoline
 * (64-bit, ring 0, its own GDT already loaded, so TR can be its own TSS). Reads
 * the two words the BSP left in the trampoline page for this AP and enters
 * ring 3 at rt_ap_user_entry exactly as the BSP did.
 */
ap_long_entry:
        movl $SEL_KDATA, %eax
        movl %eax, %ss
        movw $SEL_TSS, %ax
        ltr %ax
        lidt idt_desc(%rip)             /* the BSP's IDT, already filled */
        movl $SEL_UDATA, %eax
        movl %eax, %ds
        movl %eax, %es
        movl %eax, %fs
        movl %eax, %gs
        movq (RT_AP_TRAMP_ADDR + (rt_ap_tramp_arg - rt_ap_tramp_start)), %rdi
        movq (RT_AP_TRAMP_ADDR + (rt_ap_tramp_frame - rt_ap_tramp_start)), %rsp
        iretq                           /* -> rt_ap_user_entry, ring 3 */

/*
 * AP start-up trampoline (examples/README.md#smp). Not run where it is linked:
 * the BSP copies [rt_ap_tramp_start, rt_ap_tramp_end) to RT_AP_TRAMP_ADDR
 * and fills the three fields at its end, then sends INIT-SIPI-SIPI with vector
 * RT_AP_TRAMP_ADDR >> 12. The AP wakes in real mode with CS = vector << 8,
 * IP = 0, and goes straight to long mode (PE and PG set by one CR0 write, with
 * EFER.LME and CR4.PAE already set), on the BSP's page tables. It writes no
 * memory: ring-0 stores are what costs here.
 */
        .code16
        .balign 16
        .globl rt_ap_tramp_start, rt_ap_tramp_end, rt_ap_tramp_gdtr, rt_ap_tramp_arg, rt_ap_tramp_frame
rt_ap_tramp_start:
        cli
        cld
        movw %cs, %ax
        movw %ax, %ds
        lgdtl (rt_ap_tramp_gdtr - rt_ap_tramp_start)
        movl $pml4, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $(CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
        movl %eax, %cr4
        movl $MSR_EFER, %ecx
        rdmsr
        orl $EFER_LME, %eax
        wrmsr
        movl %cr0, %eax
        andl $~CR0_EM, %eax
        orl $(CR0_PE | CR0_PG | CR0_MP), %eax
        movl %eax, %cr0
        ljmpl $SEL_KCODE, $ap_long_entry
        .balign 8
rt_ap_tramp_arg:                        /* RDI for rt_ap_user_entry: the AP's block */
        .quad 0
rt_ap_tramp_frame:                      /* RSP: the AP's IRETQ frame */
        .quad 0
rt_ap_tramp_gdtr:                       /* lgdtl operand: limit, 32-bit base */
        .word 0
        .long 0
rt_ap_tramp_end:
        .code64

/* ------------------------------------------------------------ 64-bit ring 3 */
        .text
        .globl rt_user_entry
        .type rt_user_entry, @function
rt_user_entry:
        /* Zero .bss here, where stores run natively (no loader is trusted to). */
        movq %rdi, %r8
        leaq __bss_start(%rip), %rdi
        leaq __bss_end(%rip), %rcx
        subq %rdi, %rcx
        shrq $3, %rcx
        xorl %eax, %eax
        rep stosq
        movq %r8, %rdi
        xorl %ebp, %ebp
        call rt_start                   /* never returns */
1:      pause
        jmp 1b

        /* Ring-3 entry of an AP: RDI = its block (smp.c); stack from its frame. */
        .globl rt_ap_user_entry
        .type rt_ap_user_entry, @function
rt_ap_user_entry:
        xorl %ebp, %ebp
        call rt_ap_main                 /* never returns */
1:      pause
        jmp 1b

/* ------------------------------------------------------------ exceptions */
/*
 * The IDT's 256 handlers (examples/README.md#exceptions). A guest of this
 * runtime never enables interrupts and never expects an exception, so any
 * vector that arrives is a defect (its own, or the VMM's: a page that came back
 * wrong, an event nobody asked for). Instead of the triple fault an empty IDT
 * gives, the handler prints what the CPU saw on COM1 and ends the VM with
 * RT_EXIT_EXCEPTION through the debug-exit port:
 *
 *   rt: guest exception #PF vector 0x0e error 0x00000004 rip 0x... rsp 0x...
 *       rflags 0x00003046 cs 0x0023 cr2 0x... kstack 0x...   (one line; 64-bit
 *       values in 16 digits)
 *
 * Ring-0 code, entered on the CPU's TSS rsp0 (the BSP's __kstack_top, an AP's
 * own block). It only reads its frame and its strings and writes ports, so it
 * works whatever state the ring-3 program left memory in; it never returns.
 * Stub v is at rt_trap_stubs + 16 * v (rt.c builds the gates from that): it
 * pushes a zero where the CPU pushes no error code, then v.
 */
        .text
        .balign 16
        .globl rt_trap_stubs
rt_trap_stubs:
        .set vec, 0
        .rept 256
        .balign 16
        .if !((vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30))
        pushq $0
        .endif
        pushq $vec
        jmp rt_trap_common
        .set vec, vec + 1
        .endr

        /* (%rbp): vector, error code, then the CPU's RIP, CS, RFLAGS, RSP, SS. */
rt_trap_common:
        cld
        movq %rsp, %rbp
        leaq trap_head(%rip), %rsi
        call trap_puts
        movq 0(%rbp), %rax
        cmpq $32, %rax
        jae 1f
        movb $' ', %al
        call trap_putc
        movq 0(%rbp), %rax
        leaq trap_names(%rip), %rsi
        leaq (%rsi, %rax, 4), %rsi
        call trap_puts
1:      movq %cr2, %rax
        pushq %rax                      /* -8(%rbp): CR2 */
        pushq %rbp                      /* -16(%rbp): this CPU's ring-0 stack */
        leaq trap_fields(%rip), %r12
        movl $(trap_fields_end - trap_fields) / 16, %r13d
2:      movq 0(%r12), %rsi
        movslq 8(%r12), %rax
        movq (%rbp, %rax), %rax
        movl 12(%r12), %edi
        call trap_field
        addq $16, %r12
        decl %r13d
        jnz 2b
        movb $'\n', %al
        call trap_putc
        movl $RT_EXIT_EXCEPTION, %eax
        outl %eax, $0xf4
2:      hlt
        jmp 2b

        /* trap_field: the text at RSI, then the low EDI (1-16) hex digits of RAX. */
trap_field:
        pushq %rax
        call trap_puts
        popq %rax
        /* fall through */
        /* trap_hex: the low EDI (1-16) hex digits of RAX. Clobbers RAX, RBX, ECX,
         * EDX, EDI. */
trap_hex:
        movq %rax, %rbx
        movl $16, %ecx
        subl %edi, %ecx
        shll $2, %ecx
        shlq %cl, %rbx                  /* the first digit to print on top */
1:      rolq $4, %rbx
        movl %ebx, %eax
        andl $15, %eax
        cmpb $10, %al
        jb 2f
        addb $('a' - '0' - 10), %al
2:      addb $'0', %al
        call trap_putc
        decl %edi
        jnz 1b
        ret

        /* trap_puts: the NUL-terminated text at RSI. Clobbers RAX, ECX, EDX, RSI. */
trap_puts:
1:      movb (%rsi), %al
        testb %al, %al
        jz 2f
        call trap_putc
        incq %rsi
        jmp 1b
2:      ret

        /* trap_putc: AL to COM1, after its transmitter is empty (bounded wait,
         * as rt_putc). Clobbers AH, ECX, EDX. */
trap_putc:
        movb %al, %ah
        movl $100000, %ecx
1:      movw $(RT_COM1 + 5), %dx
        inb %dx, %al
        testb $0x20, %al
        jnz 2f
        pause
        decl %ecx
        jnz 1b
2:      movb %ah, %al
        movw $RT_COM1, %dx
        outb %al, %dx
        ret

        .section .rodata
trap_head:      .asciz "\nrt: guest exception"
trap_vector:    .asciz " vector 0x"
trap_error:     .asciz " error 0x"
trap_rip:       .asciz " rip 0x"
trap_rsp:       .asciz " rsp 0x"
trap_rflags:    .asciz " rflags 0x"
trap_cs:        .asciz " cs 0x"
trap_cr2:       .asciz " cr2 0x"
trap_kstack:    .asciz " kstack 0x"
        .balign 8
trap_fields:                            /* text, offset from %rbp, hex digits */
        .quad trap_vector
        .long 0, 2
        .quad trap_error
        .long 8, 8
        .quad trap_rip
        .long 16, 16
        .quad trap_rsp
        .long 40, 16
        .quad trap_rflags
        .long 32, 8
        .quad trap_cs
        .long 24, 4
        .quad trap_cr2
        .long -8, 16
        .quad trap_kstack
        .long -16, 16
trap_fields_end:
        .balign 4
trap_names:                             /* vectors 0-31, 4 bytes each */
        .ascii "#DE\0#DB\0NMI\0#BP\0#OF\0#BR\0#UD\0#NM\0#DF\0#09\0#TS\0#NP\0#SS\0#GP\0#PF\0#15\0"
        .ascii "#MF\0#AC\0#MC\0#XM\0#VE\0#CP\0#22\0#23\0#24\0#25\0#26\0#27\0#HV\0#VC\0#SX\0#31\0"

/* ------------------------------------------------------------ static tables */
        .section .data.tables, "aw", @progbits
        .balign 4096
pml4:
        .quad pdpt_1g + PTE_TABLE
        .fill 511, 8, 0

pdpt_1g:                                /* 512 x 1 GiB; GiB 3 through pd_2m */
        .set addr, 0
        .rept 512
        .if addr == 0xc0000000
        .quad pd_2m + 0x3000 + PTE_TABLE    /* 2 MiB pages: virtio-mmio uncached */
        .else
        .quad addr + PTE_LEAF
        .endif
        .set addr, addr + 0x40000000
        .endr

pdpt_2m:                                /* GiB 0-3 static; more filled at boot */
        .quad pd_2m + 0x0000 + PTE_TABLE
        .quad pd_2m + 0x1000 + PTE_TABLE
        .quad pd_2m + 0x2000 + PTE_TABLE
        .quad pd_2m + 0x3000 + PTE_TABLE
        .fill 508, 8, 0

pd_2m:                                  /* 2048 x 2 MiB = first 4 GiB */
        .set addr, 0
        .rept 2048
        .if addr == VIRTIO_MMIO_BASE
        .quad addr + PTE_LEAF + PTE_PCD + PTE_PWT
        .else
        .quad addr + PTE_LEAF
        .endif
        .set addr, addr + 0x200000
        .endr

        .section .data, "aw", @progbits
        .balign 16
        .globl rt_gdt, rt_gdt_end
rt_gdt:
gdt:
        .quad 0                         /* 0x00 null */
        .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
        .quad 0x00cf92000000ffff        /* 0x10 kernel data */
        .quad 0x00cff2000000ffff        /* 0x18 user data, DPL 3 */
        .quad 0x00affa000000ffff        /* 0x20 user code, 64-bit, DPL 3 */
        .quad __tss_desc_lo             /* 0x28 TSS (computed in link.ld) */
        .quad __tss_desc_hi
gdt_end:
rt_gdt_end:

        .balign 16
gdt_desc:
        .word gdt_end - gdt - 1
        .quad gdt

        .balign 16
idt_desc:                               /* 256 gates of 16 bytes */
        .word 256 * 16 - 1
        .quad rt_idt

        .bss
        .balign 16
        .globl rt_idt
rt_idt:                                 /* zero (not present) until rt.c fills it */
        .skip 256 * 16

        .data

        /*
         * 64-bit TSS followed by an I/O permission bitmap that allows every
         * port. IOPL 3 alone should suffice, but the nested-KVM hosts this
         * runs on clear RFLAGS.IOPL on every entry to guest ring 3 (measured:
         * PUSHFQ in ring 3 reads IOPL 0 after an IRETQ or SYSRETQ with IOPL 3),
         * while the CPU still honours the guest TSS bitmap. So ring 3 gets
         * its ports from the bitmap (examples/README.md#why-ring-3).
         */
        .balign 16
        .globl rt_tss, rt_tss_end
rt_tss:
        .long 0
        .quad __kstack_top              /* rsp0: only the exception handlers use it */
        .fill 90, 1, 0
        .word rt_iobitmap - rt_tss      /* iomap_base = 104 */
rt_iobitmap:
        .fill 65536 / 8, 1, 0           /* bit clear = port allowed */
        .byte 0xff                      /* terminator the CPU may read */
rt_tss_end:

        .balign 16
iret_frame:
        .quad rt_user_entry             /* RIP */
        .quad SEL_UCODE                 /* CS */
        .quad 0x3002                    /* RFLAGS: IOPL 3, IF 0 */
        .quad __ustack_top              /* RSP */
        .quad SEL_UDATA                 /* SS */

        .section .note.GNU-stack, "", @progbits
