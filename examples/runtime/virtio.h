/*
 * Minimal ring-3 virtio-mmio driver for the swapvisor example guests (virtio
 * 1.2 section 4.2, register layout version 2, split virtqueues).
 *
 * Role: find a device named on the command line in Linux's form
 * `virtio_mmio.device=<size>[K|M]@<base>:<irq>` (DESIGN.md section 6), negotiate
 * features, set up queues in guest RAM, add descriptor chains, notify, and poll
 * the used ring. No interrupts: the guest runs with IF = 0 and polls.
 *
 * Invariants:
 *  - the MMIO window is reached through the runtime's identity map (examples/
 *    README.md#boot: the 2 MiB holding 0xd0000000 is mapped uncached).
 *  - register accesses are single 32-bit volatile loads/stores (what a VMM's
 *    instruction decoder expects); rings are written before the index that
 *    publishes them, with a full fence between, and before the notify.
 *  - each queue's memory (virtq_bytes(size)) is owned by the driver from
 *    virtq_setup() on; free descriptors form a list through `next`.
 *  - single vCPU, no interrupts: nothing is locked.
 */
#ifndef SWAPVISOR_EXAMPLES_RUNTIME_VIRTIO_H
#define SWAPVISOR_EXAMPLES_RUNTIME_VIRTIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VIRTIO_ID_BALLOON 5u
#define VIRTIO_F_VERSION_1 (1ull << 32)

#define VIRTIO_STATUS_ACKNOWLEDGE 0x01u
#define VIRTIO_STATUS_DRIVER 0x02u
#define VIRTIO_STATUS_DRIVER_OK 0x04u
#define VIRTIO_STATUS_FEATURES_OK 0x08u
#define VIRTIO_STATUS_NEEDS_RESET 0x40u
#define VIRTIO_STATUS_FAILED 0x80u

#define VIRTQ_DESC_F_NEXT 1u
#define VIRTQ_DESC_F_WRITE 2u
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1u

#define VIRTQ_MAX_SIZE 256u

/* One device found on the command line. */
struct virtio_dev {
  uint64_t base;          /* MMIO window */
  uint64_t size;          /* its length */
  uint32_t irq;           /* GSI from the command line (unused: we poll) */
  uint32_t device_id;
  uint64_t offered;       /* device features */
  uint64_t negotiated;    /* after virtio_negotiate() */
};

struct virtq_desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};

/* A buffer to chain: guest-physical address, length, device-writable or not. */
struct virtq_buf {
  uint64_t addr;
  uint32_t len;
  bool device_writable;
};

struct virtq {
  struct virtio_dev* dev;
  uint16_t index;
  uint16_t size;
  volatile struct virtq_desc* desc;
  volatile uint16_t* avail; /* flags, idx, ring[size], used_event */
  volatile uint16_t* used;  /* flags, idx, then {u32 id, u32 len}[size] (as u16 pairs) */
  uint16_t free_head;       /* first free descriptor */
  uint16_t num_free;
  uint16_t avail_idx;       /* next available index to publish */
  uint16_t last_used;       /* next used index to consume */
  uint16_t chain_len[VIRTQ_MAX_SIZE]; /* descriptors per in-flight head */
};

/* Bytes of guest RAM a queue of `size` needs (4 KiB aligned start). */
uint64_t virtq_bytes(uint16_t size);

/* Scans the command line for virtio_mmio.device= entries and probes each;
 * fills *dev with the first whose magic, version 2 and device id match.
 * Returns 0, or -1 if there is none (a message says why). */
int virtio_find(uint32_t device_id, struct virtio_dev* dev);

/* 32-bit register access at `offset` in the window. */
uint32_t virtio_read32(const struct virtio_dev* dev, uint32_t offset);
void virtio_write32(const struct virtio_dev* dev, uint32_t offset, uint32_t value);
uint32_t virtio_status(const struct virtio_dev* dev);

/* Reset, ACKNOWLEDGE | DRIVER, accept offered & wanted (plus VERSION_1), set
 * FEATURES_OK and check it stuck. Returns 0, or -1 (status FAILED is set). */
int virtio_negotiate(struct virtio_dev* dev, uint64_t wanted);

/* Sets up queue `index` with min(size, QueueNumMax) entries (a power of two) in
 * the zeroed area at guest-physical `mem` (4 KiB aligned, virtq_bytes(size)
 * long), and makes it ready. Returns 0, or -1 (no such queue, refused). */
int virtq_setup(struct virtio_dev* dev, struct virtq* q, uint16_t index, uint16_t size, uint64_t mem);

/* DRIVER_OK: the device may now use the queues. */
void virtio_driver_ok(struct virtio_dev* dev);

/* Chains n buffers (readable ones first) and publishes the chain. Returns its
 * head, or -1 if fewer than n descriptors are free. Does not notify. */
int virtq_add(struct virtq* q, const struct virtq_buf* bufs, uint16_t n);
/* QueueNotify for q. */
void virtq_kick(struct virtq* q);
/* Takes one used chain: returns its head (and *written), or -1 if none yet.
 * The chain's descriptors are free again. */
int virtq_get_used(struct virtq* q, uint32_t* written);
/* Polls up to `spins` times for a used chain; -1 on timeout. */
int virtq_wait_used(struct virtq* q, uint32_t* written, uint64_t spins);

#endif
