/* Declarations shared by helper.c and the cffi cdef (build_helper.py feeds the part between
 * the cdef markers to ffibuilder.cdef, so Python and C see one definition). */
#ifndef GMEMBENCH_HELPER_H
#define GMEMBENCH_HELPER_H
#include <stdint.h>

/* cdef-begin */
#define GM_STEP_SIZE 35
#define GM_RESULT_SIZE 20
#define GM_MAX_PINS 64

/* bench.ops values (tests assert they agree) */
#define GM_STEP_NOP 0
#define GM_STEP_GMEM_SET_ATTRS 1
#define GM_STEP_VM_SET_ATTRS 2
#define GM_STEP_GMEM_PUNCH 3
#define GM_STEP_SHARED_DISCARD 4
#define GM_STEP_COPY 5
#define GM_STEP_WRITE 6
#define GM_STEP_READ 7
#define GM_STEP_PIN 8
#define GM_STEP_UNPIN 9
#define GM_OBJ_GMEM 0
#define GM_OBJ_SHARED 1
#define GM_VIA_HOST 0
#define GM_VIA_GUEST 1
#define GM_STEP_CONVERSION 1
#define GM_STEP_ABORT_ON_FAIL 2
#define GM_SIGBUS_STATUS 1000
#define GM_SKIPPED 1001
#define GM_NO_CHECK 4294967295
#define GM_ATTR_PRIVATE 8
#define GM_PLATFORM_PRESERVE 0
#define GM_PLATFORM_ZERO 1
#define GM_PLATFORM_DESTROY 2
/* calibration primitives (gm_time_prim) */
#define GM_B_NOP 0
#define GM_B_IOCTL_CHECK 1
#define GM_B_WRITE_TOUCH 2
#define GM_B_READ_TOUCH 3
#define GM_B_MADV 4
#define GM_B_PUNCH 5
#define GM_B_MEMCPY 6
#define GM_B_ZERO 7
#define GM_KVM_SET_MEMORY_ATTRIBUTES 1075883730
#define GM_KVM_SET_MEMORY_ATTRIBUTES2 3229658834

struct gm_slot {
    int gmem_fd;
    int shared_fd;             /* memfd of the shared backing; -1 for anonymous or none */
    uint8_t *gmem_base;        /* host mapping of the guest_memfd (NULL: not mapped) */
    uint8_t *shared_base;      /* dual: mapping of the shared backing */
    uint64_t size;
    uint64_t gpa;
    uint8_t *attrs;            /* emulated attribute per 4K page: 1 = private */
    int gmem_host_blocked;     /* dual: a real VMM has no host mapping of its guest_memfd */
    uint8_t *gmem_alias;       /* second mapping of the guest_memfd, never zapped by the
                                  emulation: stands in for the kernel's direct map when the
                                  platform's to-shared content effect is emulated (NULL: none) */
};

struct gm_pin {
    int used;
    int slot;
    uint64_t offset;
    uint64_t size;
    int rfd;
    int wfd;
};

struct gm_ctx {
    int vm_fd;
    int nslots;
    struct gm_slot *slots;
    int attrs2_native;         /* KVM_SET_MEMORY_ATTRIBUTES2 confirmed by the probe */
    int vm_attrs_native;       /* KVM_SET_MEMORY_ATTRIBUTES accepted on the VM fd */
    int platform;              /* GM_PLATFORM_*: content effect of to-shared */
    struct gm_pin pins[64];
    int slowdown_permille;     /* gate testing: each conversion step busy-waits this many
                                  thousandths of its own measured time, inside the timing */
    int slowdown_dirs;         /* which conversions slowdown_permille delays: bit 0 to-shared,
                                  bit 1 to-private (3 = both) */
};

int gm_step_size(void);
int gm_result_size(void);
int64_t gm_now_ns(void);
int gm_ioctl_ptr(int fd, unsigned long req, void *arg);
int gm_ioctl_val(int fd, unsigned long req, unsigned long arg);
void *gm_mmap(void *addr, uint64_t len, int prot, int flags, int fd, int64_t off, int *err);
int gm_munmap(void *addr, uint64_t len);
int gm_madvise(void *addr, uint64_t len, int advice);
int gm_fallocate(int fd, int mode, int64_t off, int64_t len);
int gm_execute(struct gm_ctx *c, const void *steps_buf, void *results_buf, int64_t n);
int gm_touch_pages(void *p, uint64_t len, int write);
void gm_unpin_all(struct gm_ctx *c);
int64_t gm_mincore_count(void *addr, uint64_t len);
int gm_bare_vm_set_attrs(struct gm_ctx *c, const void *steps_buf, int64_t n, int64_t *ns_out);
int gm_time_prim(int prim, int fd, void *a, void *b, uint64_t off, uint64_t len, int64_t reps,
                 int64_t stride, int64_t *ns_out);
/* cdef-end */

#endif
