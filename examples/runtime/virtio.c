/*
 * Ring-3 virtio-mmio driver of the example guests (see virtio.h): command-line
 * probing, feature negotiation, split-queue setup and a polled used ring.
 */
#include "virtio.h"

#include "rt.h"

/* Register offsets of the virtio-mmio version-2 layout (virtio 1.2, 4.2.2). */
#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_DRIVER_LOW 0x090
#define REG_QUEUE_DRIVER_HIGH 0x094
#define REG_QUEUE_DEVICE_LOW 0x0a0
#define REG_QUEUE_DEVICE_HIGH 0x0a4

#define MMIO_MAGIC 0x74726976u /* "virt" */
#define CMDLINE_KEY "virtio_mmio.device="

/* Orders ring stores before the index store, and both before the notify. */
static inline void full_fence(void) { __asm__ volatile("mfence" ::: "memory"); }

uint32_t virtio_read32(const struct virtio_dev* dev, uint32_t offset) {
  return *(volatile uint32_t*)(uintptr_t)(dev->base + offset);
}

void virtio_write32(const struct virtio_dev* dev, uint32_t offset, uint32_t value) {
  *(volatile uint32_t*)(uintptr_t)(dev->base + offset) = value;
}

uint32_t virtio_status(const struct virtio_dev* dev) { return virtio_read32(dev, REG_STATUS); }

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

/* ------------------------------------------------------------- probing */

/* Parses a number (decimal or 0x-hex) at *p, advancing it; false if none. */
static bool parse_num(const char** p, uint64_t* out) {
  const char* s = *p;
  unsigned base = 10;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s += 2;
  }
  uint64_t v = 0;
  const char* start = s;
  for (;; ++s) {
    unsigned d;
    if (*s >= '0' && *s <= '9') {
      d = (unsigned)(*s - '0');
    } else if (base == 16 && *s >= 'a' && *s <= 'f') {
      d = (unsigned)(*s - 'a' + 10);
    } else if (base == 16 && *s >= 'A' && *s <= 'F') {
      d = (unsigned)(*s - 'A' + 10);
    } else {
      break;
    }
    if (v > (UINT64_MAX - d) / base) return false;
    v = v * base + d;
  }
  if (s == start) return false;
  *p = s;
  *out = v;
  return true;
}

/* `<size>[K|M|G]@<base>:<irq>[:<id>]` up to the end of the word. */
static bool parse_entry(const char* s, struct virtio_dev* dev) {
  uint64_t size, base, irq;
  if (!parse_num(&s, &size)) return false;
  if (*s == 'K' || *s == 'k') {
    size <<= 10;
    ++s;
  } else if (*s == 'M' || *s == 'm') {
    size <<= 20;
    ++s;
  } else if (*s == 'G' || *s == 'g') {
    size <<= 30;
    ++s;
  }
  if (*s++ != '@' || !parse_num(&s, &base)) return false;
  if (*s++ != ':' || !parse_num(&s, &irq)) return false;
  if (*s == ':') { /* optional platform device id */
    ++s;
    uint64_t id;
    if (!parse_num(&s, &id)) return false;
  }
  if (*s != ' ' && *s != '\0') return false;
  dev->base = base;
  dev->size = size;
  dev->irq = (uint32_t)irq;
  return true;
}

int virtio_find(uint32_t device_id, struct virtio_dev* dev) {
  const char* cmd = rt_cmdline();
  size_t key_len = strlen(CMDLINE_KEY);
  int seen = 0;
  for (const char* w = cmd; *w;) {
    while (*w == ' ') ++w;
    if (!*w) break;
    const char* end = w;
    while (*end && *end != ' ') ++end;
    if ((size_t)(end - w) > key_len && memcmp(w, CMDLINE_KEY, key_len) == 0) {
      ++seen;
      struct virtio_dev d;
      memset(&d, 0, sizeof d);
      if (!parse_entry(w + key_len, &d)) {
        rt_printf("virtio: cannot parse '%s...'\n", CMDLINE_KEY);
      } else if (d.size < 0x100 || d.base + d.size > rt_mapped_limit() || d.base % 4 != 0) {
        rt_printf("virtio: window 0x%lx+0x%lx is not identity mapped\n", d.base, d.size);
      } else if (virtio_read32(&d, REG_MAGIC) != MMIO_MAGIC) {
        rt_printf("virtio: no virtio-mmio magic at 0x%lx\n", d.base);
      } else if (virtio_read32(&d, REG_VERSION) != 2) {
        rt_printf("virtio: device at 0x%lx is version %u, need 2\n", d.base, virtio_read32(&d, REG_VERSION));
      } else {
        d.device_id = virtio_read32(&d, REG_DEVICE_ID);
        if (d.device_id == device_id) {
          *dev = d;
          return 0;
        }
      }
    }
    w = end;
  }
  rt_printf("virtio: no device with id %u among %d virtio_mmio.device= entries\n", device_id, seen);
  return -1;
}

/* ------------------------------------------------------------- negotiation */

int virtio_negotiate(struct virtio_dev* dev, uint64_t wanted) {
  virtio_write32(dev, REG_STATUS, 0);
  for (int i = 0; i < 1000 && virtio_status(dev) != 0; ++i) rt_pause();
  virtio_write32(dev, REG_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
  virtio_write32(dev, REG_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
  virtio_write32(dev, REG_DEVICE_FEATURES_SEL, 0);
  uint64_t lo = virtio_read32(dev, REG_DEVICE_FEATURES);
  virtio_write32(dev, REG_DEVICE_FEATURES_SEL, 1);
  uint64_t hi = virtio_read32(dev, REG_DEVICE_FEATURES);
  dev->offered = hi << 32 | lo;
  uint64_t accept = dev->offered & (wanted | VIRTIO_F_VERSION_1);
  if (!(accept & VIRTIO_F_VERSION_1)) {
    rt_printf("virtio: device 0x%lx does not offer VIRTIO_F_VERSION_1 (offered 0x%lx)\n", dev->base,
              dev->offered);
    virtio_write32(dev, REG_STATUS, virtio_status(dev) | VIRTIO_STATUS_FAILED);
    return -1;
  }
  virtio_write32(dev, REG_DRIVER_FEATURES_SEL, 0);
  virtio_write32(dev, REG_DRIVER_FEATURES, (uint32_t)accept);
  virtio_write32(dev, REG_DRIVER_FEATURES_SEL, 1);
  virtio_write32(dev, REG_DRIVER_FEATURES, (uint32_t)(accept >> 32));
  virtio_write32(dev, REG_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
  if (!(virtio_status(dev) & VIRTIO_STATUS_FEATURES_OK)) {
    rt_printf("virtio: device 0x%lx refused features 0x%lx\n", dev->base, accept);
    virtio_write32(dev, REG_STATUS, virtio_status(dev) | VIRTIO_STATUS_FAILED);
    return -1;
  }
  dev->negotiated = accept;
  return 0;
}

void virtio_driver_ok(struct virtio_dev* dev) {
  virtio_write32(dev, REG_STATUS, virtio_status(dev) | VIRTIO_STATUS_DRIVER_OK);
}

/* ------------------------------------------------------------- queues */

/* Layout in the queue's area: descriptor table, then the available ring, then
 * (on the next page) the used ring. */
static uint64_t avail_offset(uint16_t n) { return 16ull * n; }
static uint64_t used_offset(uint16_t n) { return align_up(16ull * n + 6 + 2ull * n, RT_PAGE_SIZE); }

uint64_t virtq_bytes(uint16_t size) { return used_offset(size) + align_up(6 + 8ull * size, RT_PAGE_SIZE); }

int virtq_setup(struct virtio_dev* dev, struct virtq* q, uint16_t index, uint16_t size, uint64_t mem) {
  virtio_write32(dev, REG_QUEUE_SEL, index);
  if (virtio_read32(dev, REG_QUEUE_READY) != 0) {
    rt_printf("virtio: queue %u is already in use\n", index);
    return -1;
  }
  uint32_t max = virtio_read32(dev, REG_QUEUE_NUM_MAX);
  if (max == 0) {
    rt_printf("virtio: device 0x%lx has no queue %u\n", dev->base, index);
    return -1;
  }
  uint32_t want = size;
  if (want > max) want = max;
  if (want > VIRTQ_MAX_SIZE) want = VIRTQ_MAX_SIZE;
  uint16_t n = 1;
  while ((uint32_t)n * 2 <= want) n = (uint16_t)(n * 2);

  memset((void*)(uintptr_t)mem, 0, virtq_bytes(n));
  memset(q, 0, sizeof *q);
  q->dev = dev;
  q->index = index;
  q->size = n;
  q->desc = (volatile struct virtq_desc*)(uintptr_t)mem;
  q->avail = (volatile uint16_t*)(uintptr_t)(mem + avail_offset(n));
  q->used = (volatile uint16_t*)(uintptr_t)(mem + used_offset(n));
  for (uint16_t i = 0; i < n; ++i) q->desc[i].next = (uint16_t)(i + 1);
  q->free_head = 0;
  q->num_free = n;
  q->avail[0] = VIRTQ_AVAIL_F_NO_INTERRUPT; /* we poll */

  uint64_t used_gpa = mem + used_offset(n);
  uint64_t avail_gpa = mem + avail_offset(n);
  virtio_write32(dev, REG_QUEUE_NUM, n);
  virtio_write32(dev, REG_QUEUE_DESC_LOW, (uint32_t)mem);
  virtio_write32(dev, REG_QUEUE_DESC_HIGH, (uint32_t)(mem >> 32));
  virtio_write32(dev, REG_QUEUE_DRIVER_LOW, (uint32_t)avail_gpa);
  virtio_write32(dev, REG_QUEUE_DRIVER_HIGH, (uint32_t)(avail_gpa >> 32));
  virtio_write32(dev, REG_QUEUE_DEVICE_LOW, (uint32_t)used_gpa);
  virtio_write32(dev, REG_QUEUE_DEVICE_HIGH, (uint32_t)(used_gpa >> 32));
  full_fence();
  virtio_write32(dev, REG_QUEUE_READY, 1);
  if (virtio_read32(dev, REG_QUEUE_READY) != 1) {
    rt_printf("virtio: device 0x%lx refused queue %u (status 0x%x)\n", dev->base, index, virtio_status(dev));
    return -1;
  }
  return 0;
}

int virtq_add(struct virtq* q, const struct virtq_buf* bufs, uint16_t n) {
  if (n == 0 || n > q->num_free) return -1;
  uint16_t head = q->free_head;
  uint16_t idx = head;
  for (uint16_t i = 0; i < n; ++i) {
    volatile struct virtq_desc* d = &q->desc[idx];
    d->addr = bufs[i].addr;
    d->len = bufs[i].len;
    /* `next` already links the free list in order: keep it for chaining. */
    d->flags = (uint16_t)((bufs[i].device_writable ? VIRTQ_DESC_F_WRITE : 0) | (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
    if (i + 1 < n) idx = d->next;
  }
  q->free_head = q->desc[idx].next;
  q->num_free = (uint16_t)(q->num_free - n);
  q->chain_len[head] = n;
  q->avail[2 + q->avail_idx % q->size] = head;
  full_fence(); /* the slot before the index that publishes it */
  q->avail_idx = (uint16_t)(q->avail_idx + 1);
  q->avail[1] = q->avail_idx;
  full_fence();
  return head;
}

void virtq_kick(struct virtq* q) {
  full_fence(); /* the published index before the notify */
  virtio_write32(q->dev, REG_QUEUE_NOTIFY, q->index);
}

int virtq_get_used(struct virtq* q, uint32_t* written) {
  uint16_t idx = q->used[1];
  if (idx == q->last_used) return -1;
  full_fence(); /* the element after the index that published it */
  uint16_t slot = (uint16_t)(q->last_used % q->size);
  volatile uint32_t* elem = (volatile uint32_t*)((uintptr_t)q->used + 4 + 8u * slot);
  uint32_t id = elem[0];
  uint32_t len = elem[1];
  q->last_used = (uint16_t)(q->last_used + 1);
  if (id >= q->size || q->chain_len[id] == 0) {
    rt_printf("virtio: device returned bad head %u on queue %u\n", id, q->index);
    return -1;
  }
  /* Give the chain back to the free list: walk to its tail, link the old head. */
  uint16_t n = q->chain_len[id];
  uint16_t tail = (uint16_t)id;
  for (uint16_t i = 1; i < n; ++i) tail = q->desc[tail].next;
  q->desc[tail].next = q->free_head;
  q->free_head = (uint16_t)id;
  q->num_free = (uint16_t)(q->num_free + n);
  q->chain_len[id] = 0;
  if (written) *written = len;
  return (int)id;
}

int virtq_wait_used(struct virtq* q, uint32_t* written, uint64_t spins) {
  for (uint64_t i = 0; i < spins; ++i) {
    int head = virtq_get_used(q, written);
    if (head >= 0) return head;
    rt_pause();
  }
  return -1;
}
