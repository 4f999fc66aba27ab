"""Thin wrappers named after the KVM ioctls they issue (KVM selftests style).

Every wrapper goes through the C helper's non-variadic gm_ioctl_* so the call costs what a
cffi API-mode call costs, and raises OSError(errno) on failure.  Numbers are the x86-64
uapi values (include/uapi/linux/kvm.h, plus the v8 series' additions).
"""
import errno as _errno
import os

from bench.host._helper import ffi, lib

KVMIO = 0xAE
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
KVM_CREATE_GUEST_MEMFD = 0xC040AED4
KVM_SET_MEMORY_ATTRIBUTES = 0x4020AED2
KVM_SET_MEMORY_ATTRIBUTES2 = 0xC080AED2
KVM_SET_USER_MEMORY_REGION2 = 0x40A0AE49

KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236
KVM_CAP_GUEST_MEMFD_FLAGS = 244
# The in-place series' capability moved between revisions: 249 in v5-v7, 250 in v8.
KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES_V7 = 249
KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES_V8 = 250

KVM_MEM_GUEST_MEMFD = 1 << 2
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1

VM_TYPES = {0: "DEFAULT", 1: "SW_PROTECTED", 2: "SEV", 3: "SEV_ES", 4: "SNP", 5: "TDX"}

# mmap / madvise / fallocate constants used with the helper's wrappers
PROT_READ, PROT_WRITE = 0x1, 0x2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x20, 0x4000
MAP_HUGETLB, MAP_POPULATE = 0x40000, 0x8000
MAP_HUGE_2MB = 21 << 26
MADV_DONTNEED, MADV_REMOVE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLLAPSE = 4, 9, 14, 15, 25
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
MFD_CLOEXEC, MFD_HUGETLB = 0x0001, 0x0004
MFD_HUGE_2MB = 21 << 26


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def kvm_open(path: str = "/dev/kvm") -> int:
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def kvm_get_api_version(kvm_fd: int) -> int:
    return _check(lib.gm_ioctl_val(kvm_fd, KVM_GET_API_VERSION, 0), "KVM_GET_API_VERSION")


def kvm_check_extension(fd: int, cap: int) -> int:
    """KVM_CHECK_EXTENSION on /dev/kvm or a VM fd (VM fds answer for that VM's type)."""
    return _check(lib.gm_ioctl_val(fd, KVM_CHECK_EXTENSION, cap), "KVM_CHECK_EXTENSION")


def kvm_create_vm(kvm_fd: int, vm_type: int = 0) -> int:
    return _check(lib.gm_ioctl_val(kvm_fd, KVM_CREATE_VM, vm_type), "KVM_CREATE_VM")


def kvm_create_guest_memfd(vm_fd: int, size: int, flags: int = 0) -> int:
    arg = ffi.new("uint64_t[8]", [size, flags])
    return _check(lib.gm_ioctl_ptr(vm_fd, KVM_CREATE_GUEST_MEMFD, arg), "KVM_CREATE_GUEST_MEMFD")


def kvm_set_user_memory_region2(vm_fd: int, slot: int, flags: int, guest_phys_addr: int,
                                memory_size: int, userspace_addr: int,
                                guest_memfd: int = 0, guest_memfd_offset: int = 0) -> None:
    # struct kvm_userspace_memory_region2: u32 slot, u32 flags, u64 gpa, u64 size,
    # u64 userspace_addr, u64 guest_memfd_offset, u32 guest_memfd, u32 pad1, u64 pad2[14]
    buf = ffi.new("uint8_t[160]")
    u32 = ffi.cast("uint32_t *", buf)
    u64 = ffi.cast("uint64_t *", buf)
    u32[0], u32[1] = slot, flags
    u64[1], u64[2], u64[3], u64[4] = guest_phys_addr, memory_size, userspace_addr, guest_memfd_offset
    u32[10] = guest_memfd
    _check(lib.gm_ioctl_ptr(vm_fd, KVM_SET_USER_MEMORY_REGION2, buf), "KVM_SET_USER_MEMORY_REGION2")


def kvm_set_memory_attributes(vm_fd: int, address: int, size: int, attributes: int,
                              flags: int = 0) -> None:
    """The VM ioctl of dual backing (ENOTTY on kernels without per-VM attributes)."""
    arg = ffi.new("uint64_t[4]", [address, size, attributes, flags])
    _check(lib.gm_ioctl_ptr(vm_fd, KVM_SET_MEMORY_ATTRIBUTES, arg), "KVM_SET_MEMORY_ATTRIBUTES")


class AttributesError(OSError):
    """KVM_SET_MEMORY_ATTRIBUTES2 failure; error_offset is what the kernel copied back."""

    def __init__(self, err: int, msg: str, error_offset: int):
        super().__init__(err, msg)
        self.error_offset = error_offset


def kvm_set_memory_attributes2(gmem_fd: int, offset: int, size: int, attributes: int,
                               flags: int = 0, reserved: list[int] | None = None) -> None:
    """The in-place series' guest_memfd ioctl (v8): struct of 16 u64 (128 bytes)."""
    arg = ffi.new("uint64_t[16]", [offset, size, attributes, flags, 0] + list(reserved or []))
    ret = lib.gm_ioctl_ptr(gmem_fd, KVM_SET_MEMORY_ATTRIBUTES2, arg)
    if ret < 0:
        raise AttributesError(-ret, f"KVM_SET_MEMORY_ATTRIBUTES2: {os.strerror(-ret)}", int(arg[4]))


# ---- memory helpers (raw addresses are needed for memslots and the C batch runner) ----

def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    err = ffi.new("int *")
    p = lib.gm_mmap(ffi.NULL, length, prot, flags, fd, offset, err)
    if p == ffi.NULL:
        raise OSError(err[0], f"mmap: {os.strerror(err[0])}")
    return int(ffi.cast("uintptr_t", p))


def munmap(addr: int, length: int) -> None:
    _check(lib.gm_munmap(ffi.cast("void *", addr), length), "munmap")


def touch_fresh_memory(nbytes: int) -> None:
    """Write to nbytes of fresh anonymous memory once and give it back: lazy guest-physical
    initialisation (first-touch cost) then lands here, not in a measurement."""
    if nbytes <= 0:
        return
    addr = mmap(nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
    try:
        touch_pages(addr, nbytes)
    finally:
        munmap(addr, nbytes)


def release(maps: list, fds: list) -> None:
    """Teardown: munmap every (addr, size) and close every fd, newest first, ignoring
    errors (a half-built object still gives everything back); empties both lists."""
    for addr, size in reversed(maps):
        try:
            munmap(addr, size)
        except OSError:
            pass
    maps.clear()
    for fd in reversed(fds):
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def madvise(addr: int, length: int, advice: int) -> None:
    _check(lib.gm_madvise(ffi.cast("void *", addr), length, advice), "madvise")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(lib.gm_fallocate(fd, mode, offset, length), "fallocate")


def touch_pages(addr: int, length: int, write: bool = True) -> int:
    """Touch one word per 4K page in C; returns 0, or 1000 (SIGBUS_STATUS) on a SIGBUS."""
    ret = lib.gm_touch_pages(ffi.cast("void *", addr), length, 1 if write else 0)
    return _check(ret, "touch_pages")


def now_ns() -> int:
    return lib.gm_now_ns()


ENOTTY = _errno.ENOTTY


def mincore_resident(addr: int, length: int) -> int:
    """Pages of [addr, addr+length) resident in the mapped file or anon memory (mincore)."""
    return _check(lib.gm_mincore_count(ffi.cast("void *", addr), length), "mincore")
