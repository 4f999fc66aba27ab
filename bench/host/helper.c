/*
 * gmembench host helper: executes a whole batch of conversion steps (bench.ops.STEP_DTYPE
 * records) on the real kernel and times each one with CLOCK_MONOTONIC, so that Python's
 * per-call overhead (0.1-1 us) never lands inside a measured latency.
 *
 * Compiled by cffi in API mode (bench/host/build_helper.py); every entry point is
 * non-variadic so no call goes through libffi's variadic path.
 *
 * What is real and what is emulated here is decided by the Python side (probe results)
 * and passed in through struct gm_ctx:
 *   - attrs2_native: KVM_SET_MEMORY_ATTRIBUTES2 exists; otherwise the in-place conversion
 *     is emulated by the host work the kernel would do (ioctl floor, zap of the host
 *     mapping on to-private) plus an attribute byte per page kept here, so that a host
 *     access to an emulated-private page reports SIGBUS_STATUS without touching memory.
 *   - vm_attrs_native: KVM_SET_MEMORY_ATTRIBUTES works on the VM fd; otherwise ENOTTY is
 *     timed as the ioctl floor and treated as success.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "helper.h"

/* numpy dtypes without align=True are packed: mirror them byte for byte. */
struct gm_step {
    uint8_t code, obj, via, flags;
    uint16_t slot;
    uint32_t op;
    uint64_t offset, size, arg;
    uint8_t proc;          /* host process: only 0 (this process, the VMM) reaches here */
} __attribute__((packed));

struct gm_result {
    int32_t status;
    int64_t ns;
    int64_t aux;
} __attribute__((packed));

_Static_assert(sizeof(struct gm_step) == GM_STEP_SIZE, "STEP_DTYPE layout");
_Static_assert(sizeof(struct gm_result) == GM_RESULT_SIZE, "RESULT_DTYPE layout");

struct gm_attrs2 {          /* struct kvm_memory_attributes2 (v8), 128 bytes */
    uint64_t offset, size, attributes, flags, error_offset, reserved[11];
};
struct gm_attrs {           /* struct kvm_memory_attributes, 32 bytes */
    uint64_t address, size, attributes, flags;
};
_Static_assert(sizeof(struct gm_attrs2) == 128, "kvm_memory_attributes2");
_Static_assert(sizeof(struct gm_attrs) == 32, "kvm_memory_attributes");

#define PAGE 4096ULL

int gm_step_size(void) { return (int)sizeof(struct gm_step); }
int gm_result_size(void) { return (int)sizeof(struct gm_result); }

static inline int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t gm_now_ns(void) { return now_ns(); }

/* ---- thin non-variadic syscall wrappers (return -errno on failure) ---- */

int gm_ioctl_ptr(int fd, unsigned long req, void *arg)
{
    int r = ioctl(fd, req, arg);
    return r < 0 ? -errno : r;
}

int gm_ioctl_val(int fd, unsigned long req, unsigned long arg)
{
    int r = ioctl(fd, req, arg);
    return r < 0 ? -errno : r;
}

void *gm_mmap(void *addr, uint64_t len, int prot, int flags, int fd, int64_t off, int *err)
{
    void *p = mmap(addr, len, prot, flags, fd, off);
    *err = p == MAP_FAILED ? errno : 0;
    return p == MAP_FAILED ? NULL : p;
}

int gm_munmap(void *addr, uint64_t len) { return munmap(addr, len) < 0 ? -errno : 0; }

int gm_madvise(void *addr, uint64_t len, int advice)
{
    return madvise(addr, len, advice) < 0 ? -errno : 0;
}

int gm_fallocate(int fd, int mode, int64_t off, int64_t len)
{
    return fallocate(fd, mode, off, len) < 0 ? -errno : 0;
}

/* ---- SIGBUS catching ---- */

static __thread sigjmp_buf gm_jb;
static __thread volatile sig_atomic_t gm_armed;
static struct sigaction gm_old_bus;

static void gm_bus_handler(int sig, siginfo_t *si, void *uc)
{
    (void)si; (void)uc;
    if (gm_armed) {
        gm_armed = 0;
        siglongjmp(gm_jb, 1);     /* SA_NODEFER: SIGBUS is not left blocked */
    }
    /* Not ours: put the previous handler back; the faulting access re-runs and hits it. */
    sigaction(sig, &gm_old_bus, NULL);
}

static int install_bus(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = gm_bus_handler;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, &gm_old_bus);
}

static void restore_bus(void) { sigaction(SIGBUS, &gm_old_bus, NULL); }

/* ---- page touches (kept out of line so sigsetjmp needs no volatile locals) ---- */

static inline uint64_t page_word(uint64_t token, uint64_t page_index)
{
    return token ? ((page_index << 32) | (token & 0xFFFFFFFFULL)) : 0;
}

__attribute__((noinline))
static void touch_write(uint8_t *p, uint64_t npages, uint64_t first_index, uint64_t token)
{
    for (uint64_t i = 0; i < npages; i++)
        *(volatile uint64_t *)(p + i * PAGE) = page_word(token, first_index + i);
}

__attribute__((noinline))
static int64_t touch_read(uint8_t *p, uint64_t npages, uint64_t first_index, uint64_t token)
{
    int64_t bad = 0;
    int check = token != GM_NO_CHECK;
    for (uint64_t i = 0; i < npages; i++) {
        uint64_t v = *(volatile uint64_t *)(p + i * PAGE);
        if (check && v != page_word(token, first_index + i))
            bad++;
    }
    return bad;
}

__attribute__((noinline))
static void copy_range(uint8_t *dst, const uint8_t *src, uint64_t n) { memcpy(dst, src, n); }

__attribute__((noinline))
static void fill_range(uint8_t *dst, int byte, uint64_t n) { memset(dst, byte, n); }

/* ---- emulated attribute bookkeeping (outside the timed window) ---- */

static int range_all(const uint8_t *a, uint64_t first, uint64_t n, uint8_t v)
{
    for (uint64_t i = 0; i < n; i++)
        if (a[first + i] != v)
            return 0;
    return 1;
}

static int64_t first_private(const uint8_t *a, uint64_t first, uint64_t n)
{
    const void *p = memchr(a + first, 1, n);
    return p ? (int64_t)((const uint8_t *)p - a) : -1;
}

/* first pinned byte offset overlapping [off, off+size) of slot, or -1 */
static int64_t first_pinned(struct gm_ctx *c, int slot, uint64_t off, uint64_t size)
{
    int64_t best = -1;
    for (int i = 0; i < GM_MAX_PINS; i++) {
        struct gm_pin *p = &c->pins[i];
        if (!p->used || p->slot != slot || p->offset >= off + size || p->offset + p->size <= off)
            continue;
        int64_t o = (int64_t)(p->offset > off ? p->offset : off);
        if (best < 0 || o < best)
            best = o;
    }
    return best;
}

static int check_range(struct gm_slot *s, const struct gm_step *st)
{
    if (st->size == 0 || st->offset + st->size < st->offset)
        return EINVAL;
    if ((st->offset | st->size) & (PAGE - 1))
        return EINVAL;
    if (st->offset >= s->size || st->offset + st->size > s->size)
        return EINVAL;
    return 0;
}

/* ---- steps ---- */

static int step_gmem_set_attrs(struct gm_ctx *c, struct gm_slot *s, const struct gm_step *st,
                               int64_t *ns, int64_t *aux)
{
    struct gm_attrs2 a;
    memset(&a, 0, sizeof(a));
    a.offset = st->offset;
    a.size = st->size;
    a.attributes = st->arg;
    int64_t t0, t1;
    int r;

    if (c->attrs2_native) {
        t0 = now_ns();
        r = ioctl(s->gmem_fd, GM_KVM_SET_MEMORY_ATTRIBUTES2, &a);
        t1 = now_ns();
        *ns = t1 - t0;
        if (r < 0) {
            *aux = (int64_t)a.error_offset;
            return errno;
        }
        return 0;
    }

    /* Emulated: validate as v8 does (kvm_gmem_set_attributes' checks), then do the host work. */
    if (st->arg & ~(uint64_t)GM_ATTR_PRIVATE)
        return EINVAL;
    if ((r = check_range(s, st)))
        return r;
    uint64_t first = st->offset / PAGE, n = st->size / PAGE;
    uint8_t want = st->arg ? 1 : 0;
    int already = range_all(s->attrs, first, n, want);
    int64_t pinned = (!already && want) ? first_pinned(c, st->slot, st->offset, st->size) : -1;
    /* The platform's content effect on to-shared applies to allocated pages only: find them
     * (mincore sees guest_memfd's page cache) before the timed window. */
    unsigned char *present = NULL;
    /* The kernel zeroes through its direct map, not the host's user mapping (which the
     * to-private zap emptied): write through the alias so no user-mapping refault is timed. */
    uint8_t *kview = s->gmem_alias ? s->gmem_alias : s->gmem_base;
    if (!already && !want && c->platform != GM_PLATFORM_PRESERVE && s->gmem_base) {
        present = malloc(n);
        if (!present)
            return ENOMEM;
        if (mincore(s->gmem_base + st->offset, st->size, present) < 0)
            memset(present, 1, n);
    }

    t0 = now_ns();
    /* The real ioctl (ENOTTY here) is the syscall floor the native call would pay. */
    ioctl(s->gmem_fd, GM_KVM_SET_MEMORY_ATTRIBUTES2, &a);
    if (!already && want && s->gmem_base)
        madvise(s->gmem_base + st->offset, st->size, MADV_DONTNEED);   /* zap only, content kept */
    if (present && c->platform == GM_PLATFORM_ZERO)                     /* TDX zeroes on to-shared */
        for (uint64_t i = 0; i < n; i++)
            if (present[i] & 1)
                fill_range(kview + st->offset + i * PAGE, 0, PAGE);
    t1 = now_ns();
    *ns = t1 - t0;
    if (present && c->platform == GM_PLATFORM_DESTROY)                  /* SNP: ciphertext */
        for (uint64_t i = 0; i < n; i++)
            if (present[i] & 1)
                fill_range(kview + st->offset + i * PAGE, 0xA5, PAGE);
    free(present);

    if (pinned >= 0) {          /* extra references: mapping zapped, attributes unchanged */
        *aux = pinned;
        return EAGAIN;
    }
    if (!already)
        memset(s->attrs + first, want, n);
    return 0;
}

static int step_vm_set_attrs(struct gm_ctx *c, struct gm_slot *s, const struct gm_step *st,
                             int64_t *ns)
{
    struct gm_attrs a = { s->gpa + st->offset, st->size, st->arg, 0 };
    int r = check_range(s, st);
    if (r)
        return r;         /* QEMU rejects unaligned or empty requests before the ioctl */
    int64_t t0 = now_ns();
    r = ioctl(c->vm_fd, GM_KVM_SET_MEMORY_ATTRIBUTES, &a);
    int64_t t1 = now_ns();
    *ns = t1 - t0;
    int e = r < 0 ? errno : 0;
    if (e && !(e == ENOTTY && !c->vm_attrs_native))
        return e;
    memset(s->attrs + st->offset / PAGE, st->arg ? 1 : 0, st->size / PAGE);
    return 0;
}

static int step_punch(int fd, const struct gm_step *st, int64_t *ns)
{
    int64_t t0 = now_ns();
    int r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, st->offset, st->size);
    int64_t t1 = now_ns();
    *ns = t1 - t0;
    return r < 0 ? errno : 0;
}

static int step_discard(struct gm_slot *s, const struct gm_step *st, int64_t *ns)
{
    if (!s->shared_base)
        return ENODEV;
    if (s->shared_fd >= 0)
        return step_punch(s->shared_fd, st, ns);
    int64_t t0 = now_ns();
    int r = madvise(s->shared_base + st->offset, st->size, MADV_DONTNEED);
    int64_t t1 = now_ns();
    *ns = t1 - t0;
    return r < 0 ? errno : 0;
}

static uint8_t *obj_base(struct gm_slot *s, int obj)
{
    return obj == GM_OBJ_GMEM ? s->gmem_base : s->shared_base;
}

/* Host access to guest_memfd pages the (emulated) kernel holds private: must fault. */
static int emulated_fault(struct gm_ctx *c, struct gm_slot *s, const struct gm_step *st)
{
    if (st->obj != GM_OBJ_GMEM || st->via != GM_VIA_HOST)
        return 0;
    if (s->gmem_host_blocked)
        return 1;
    if (!c->attrs2_native && first_private(s->attrs, st->offset / PAGE, st->size / PAGE) >= 0)
        return 1;
    return 0;
}

static int step_touch(struct gm_ctx *c, struct gm_slot *s, const struct gm_step *st,
                      int64_t *ns, int64_t *aux)
{
    uint8_t *base = obj_base(s, st->obj);
    int r = check_range(s, st);
    if (r)
        return r;
    if (!base)
        return ENODEV;
    if (emulated_fault(c, s, st))
        return GM_SIGBUS_STATUS;
    uint8_t *p = base + st->offset;
    uint64_t n = st->size / PAGE, first = st->offset / PAGE;
    volatile int64_t t0 = 0;
    int64_t bad = 0;
    if (sigsetjmp(gm_jb, 0)) {
        *ns = now_ns() - t0;
        return GM_SIGBUS_STATUS;
    }
    gm_armed = 1;
    t0 = now_ns();
    if (st->code == GM_STEP_WRITE)
        touch_write(p, n, first, st->arg);
    else
        bad = touch_read(p, n, first, st->arg);
    int64_t t1 = now_ns();
    gm_armed = 0;
    *ns = t1 - t0;
    *aux = bad;
    return 0;
}

static int step_copy(struct gm_slot *s, const struct gm_step *st, int64_t *ns, int64_t *aux)
{
    uint8_t *dst = obj_base(s, st->obj);
    uint8_t *src = obj_base(s, st->obj == GM_OBJ_GMEM ? GM_OBJ_SHARED : GM_OBJ_GMEM);
    int r = check_range(s, st);
    if (r)
        return r;
    if (!dst || !src)
        return ENODEV;
    volatile int64_t t0 = 0;
    if (sigsetjmp(gm_jb, 0)) {
        *ns = now_ns() - t0;
        return GM_SIGBUS_STATUS;
    }
    gm_armed = 1;
    t0 = now_ns();
    copy_range(dst + st->offset, src + st->offset, st->size);
    int64_t t1 = now_ns();
    gm_armed = 0;
    *ns = t1 - t0;
    *aux = (int64_t)st->size;
    return 0;
}

/* A long-term extra reference without CONFIG_GUP_TEST: vmsplice the pages into a pipe;
 * the pipe buffers hold page references until the pipe is closed. */
static int step_pin(struct gm_ctx *c, struct gm_slot *s, const struct gm_step *st,
                    int64_t *ns, int64_t *aux)
{
    uint8_t *base = obj_base(s, st->obj);
    int r = check_range(s, st);
    if (r)
        return r;
    if (!base)
        return ENODEV;
    if (emulated_fault(c, s, st))
        return EFAULT;        /* GUP on a private page fails */
    int slot_i = -1;
    for (int i = 0; i < GM_MAX_PINS; i++)
        if (!c->pins[i].used) { slot_i = i; break; }
    if (slot_i < 0)
        return ENOSPC;
    uint64_t n = st->size / PAGE;
    if (n > (1ULL << 20))
        return ENOMEM;
    int pfd[2];
    int64_t t0 = now_ns();
    if (pipe2(pfd, O_NONBLOCK) < 0)
        return errno;
    uint64_t want = 1;
    while (want < n) want <<= 1;
    if (want > 16 && fcntl(pfd[1], F_SETPIPE_SZ, (int)(want * PAGE)) < 0) {
        int e = errno;
        close(pfd[0]); close(pfd[1]);
        *ns = now_ns() - t0;
        return e;
    }
    uint64_t done = 0;
    while (done < st->size) {
        struct iovec iov = { base + st->offset + done, st->size - done };
        ssize_t k = vmsplice(pfd[1], &iov, 1, 0);
        if (k <= 0) {
            int e = k < 0 ? errno : EIO;
            close(pfd[0]); close(pfd[1]);
            *ns = now_ns() - t0;
            return e;
        }
        done += (uint64_t)k;
    }
    *ns = now_ns() - t0;
    struct gm_pin *p = &c->pins[slot_i];
    p->used = 1; p->slot = st->slot; p->offset = st->offset; p->size = st->size;
    p->rfd = pfd[0]; p->wfd = pfd[1];
    *aux = (int64_t)n;
    return 0;
}

static int step_unpin(struct gm_ctx *c, const struct gm_step *st, int64_t *ns, int64_t *aux)
{
    int64_t released = 0;
    int64_t t0 = now_ns();
    for (int i = 0; i < GM_MAX_PINS; i++) {
        struct gm_pin *p = &c->pins[i];
        if (!p->used || p->slot != st->slot || p->offset >= st->offset + st->size ||
            p->offset + p->size <= st->offset)
            continue;
        close(p->rfd); close(p->wfd);
        p->used = 0;
        released++;
    }
    *ns = now_ns() - t0;
    *aux = released;
    return 0;
}

void gm_unpin_all(struct gm_ctx *c)
{
    for (int i = 0; i < GM_MAX_PINS; i++)
        if (c->pins[i].used) {
            close(c->pins[i].rfd); close(c->pins[i].wfd);
            c->pins[i].used = 0;
        }
}

static int run_step(struct gm_ctx *c, const struct gm_step *st, int64_t *ns, int64_t *aux)
{
    if (st->code == GM_STEP_NOP) {
        int64_t t0 = now_ns();
        int64_t t1 = now_ns();
        *ns = t1 - t0;
        return 0;
    }
    if (st->slot >= c->nslots)
        return EINVAL;
    struct gm_slot *s = &c->slots[st->slot];
    switch (st->code) {
    case GM_STEP_GMEM_SET_ATTRS: return step_gmem_set_attrs(c, s, st, ns, aux);
    case GM_STEP_VM_SET_ATTRS:   return step_vm_set_attrs(c, s, st, ns);
    case GM_STEP_GMEM_PUNCH: {
        int r = check_range(s, st);
        return r ? r : step_punch(s->gmem_fd, st, ns);
    }
    case GM_STEP_SHARED_DISCARD: {
        int r = check_range(s, st);
        return r ? r : step_discard(s, st, ns);
    }
    case GM_STEP_COPY:           return step_copy(s, st, ns, aux);
    case GM_STEP_WRITE:
    case GM_STEP_READ:           return step_touch(c, s, st, ns, aux);
    case GM_STEP_PIN:            return step_pin(c, s, st, ns, aux);
    case GM_STEP_UNPIN:          return step_unpin(c, st, ns, aux);
    default:                     return EINVAL;
    }
}

/* A known delay in the timed path (regression-gate testing): spin for `want` ns and
 * return the time really spent, so the reported step time includes it as measured. */
static int64_t busy_wait_ns(int64_t want)
{
    int64_t t0 = now_ns(), t;
    do
        t = now_ns();
    while (t - t0 < want);
    return t - t0;
}

int gm_execute(struct gm_ctx *c, const void *steps_buf, void *results_buf, int64_t n)
{
    const struct gm_step *steps = steps_buf;
    struct gm_result *res = results_buf;
    int64_t failed_op = -1;
    /* the direction of the conversion op being executed: its first step is the attribute
     * ioctl, whose arg says to-private or to-shared; the op's later steps (punch, discard,
     * copy) are delayed according to it */
    uint64_t dir_op = UINT64_MAX;
    int dir_slowed = 0;
    if (install_bus() < 0)
        return -errno;
    for (int64_t i = 0; i < n; i++) {
        const struct gm_step *st = &steps[i];
        struct gm_result *r = &res[i];
        r->ns = 0;
        r->aux = 0;
        if (failed_op >= 0 && st->op == (uint64_t)failed_op) {
            r->status = GM_SKIPPED;
            continue;
        }
        failed_op = -1;
        int64_t ns = 0, aux = 0;
        r->status = run_step(c, st, &ns, &aux);
        if (c->slowdown_permille > 0 && (st->flags & GM_STEP_CONVERSION)) {
            if (st->code == GM_STEP_GMEM_SET_ATTRS || st->code == GM_STEP_VM_SET_ATTRS) {
                dir_op = st->op;
                dir_slowed = (c->slowdown_dirs >> ((st->arg & GM_ATTR_PRIVATE) ? 1 : 0)) & 1;
            }
            if (st->op == dir_op ? dir_slowed : (c->slowdown_dirs & 3) == 3)
                ns += busy_wait_ns(ns * c->slowdown_permille / 1000);
        }
        r->ns = ns;
        r->aux = aux;
        if (r->status && (st->flags & GM_STEP_ABORT_ON_FAIL))
            failed_op = st->op;
    }
    restore_bus();
    return 0;
}

/* Harness baseline: the VM attribute ioctl of each VM_SET_ATTRS step exactly as
 * step_vm_set_attrs issues it (same fd, request, argument, clock pair), in a bare loop with
 * nothing else between the timed windows: no dispatch, range check, attribute bookkeeping
 * or result record.  The same steps through gm_execute minus this is what the harness adds
 * to a measured step (bench/host/overhead.py).  Returns 0, or the first error other than
 * the ENOTTY that stands for the floor on kernels without the ioctl. */
int gm_bare_vm_set_attrs(struct gm_ctx *c, const void *steps_buf, int64_t n, int64_t *ns_out)
{
    const struct gm_step *steps = steps_buf;
    int rc = 0;
    for (int64_t i = 0; i < n; i++) {
        const struct gm_step *st = &steps[i];
        if (st->code != GM_STEP_VM_SET_ATTRS || st->slot >= c->nslots)
            return -EINVAL;
        struct gm_attrs a = { c->slots[st->slot].gpa + st->offset, st->size, st->arg, 0 };
        int64_t t0 = now_ns();
        int r = ioctl(c->vm_fd, GM_KVM_SET_MEMORY_ATTRIBUTES, &a);
        int64_t t1 = now_ns();
        ns_out[i] = t1 - t0;
        if (r < 0 && !rc && !(errno == ENOTTY && !c->vm_attrs_native))
            rc = -errno;
    }
    return rc;
}

/* Calibration: time `reps` back-to-back repetitions of one primitive, rep i acting at
 * a + i*stride (and b + i*stride, off + i*stride); ns_out[i] = its time.  Returns 0, the
 * first failure's -errno, or GM_SIGBUS_STATUS. */
int gm_time_prim(int prim, int fd, void *a, void *b, uint64_t off, uint64_t len, int64_t reps,
                 int64_t stride, int64_t *ns_out)
{
    int rc = 0;
    if (install_bus() < 0)
        return -errno;
    volatile int64_t i = 0;
    if (sigsetjmp(gm_jb, 0)) {
        restore_bus();
        return GM_SIGBUS_STATUS;
    }
    for (i = 0; i < reps; i++) {
        uint8_t *pa = (uint8_t *)a + i * stride, *pb = (uint8_t *)b + i * stride;
        uint64_t o = off + (uint64_t)(i * stride);
        int r = 0;
        int64_t t0, t1;
        gm_armed = 1;
        t0 = now_ns();
        switch (prim) {
        case GM_B_NOP: break;
        case GM_B_IOCTL_CHECK: r = ioctl(fd, 0xAE03, (unsigned long)off); break;
        case GM_B_WRITE_TOUCH: touch_write(pa, (len + PAGE - 1) / PAGE, 0, 1); break;
        case GM_B_READ_TOUCH: touch_read(pa, (len + PAGE - 1) / PAGE, 0, GM_NO_CHECK); break;
        case GM_B_MADV: r = madvise(pa, len, (int)off); break;
        case GM_B_PUNCH:
            r = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)o, (off_t)len);
            break;
        case GM_B_MEMCPY: copy_range(pa, pb, len); break;
        case GM_B_ZERO: fill_range(pa, 0, len); break;
        default: r = -1; errno = EINVAL;
        }
        t1 = now_ns();
        gm_armed = 0;
        ns_out[i] = t1 - t0;
        if (r < 0 && !rc)
            rc = -errno;
    }
    restore_bus();
    return rc;
}

/* Resident pages of a mapping's file (page cache), mapped or not: mincore() looks the file
 * up when no PTE is present, so this reads guest_memfd allocation, which fstat cannot. */
int64_t gm_mincore_count(void *addr, uint64_t len)
{
    uint64_t n = (len + PAGE - 1) / PAGE, chunk = 1 << 16;
    unsigned char vec[1 << 16];
    int64_t count = 0;
    for (uint64_t i = 0; i < n; i += chunk) {
        uint64_t k = n - i < chunk ? n - i : chunk;
        if (mincore((uint8_t *)addr + i * PAGE, k * PAGE, vec) < 0)
            return -errno;
        for (uint64_t j = 0; j < k; j++)
            count += vec[j] & 1;
    }
    return count;
}

/* Fault in (write one word per page of) [p, p+len): warm-up and calibration. */
int gm_touch_pages(void *p, uint64_t len, int write)
{
    if (install_bus() < 0)
        return -errno;
    int rc = 0;
    if (sigsetjmp(gm_jb, 0)) {
        rc = GM_SIGBUS_STATUS;
    } else {
        gm_armed = 1;
        if (write)
            touch_write(p, len / PAGE, 0, 1);
        else
            touch_read(p, len / PAGE, 0, GM_NO_CHECK);
        gm_armed = 0;
    }
    restore_bus();
    return rc;
}
