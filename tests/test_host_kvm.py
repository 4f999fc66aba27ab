"""KVM ioctl wrappers and the C helper on the real kernel (root + /dev/kvm), else skipped."""
import errno
import os

import numpy as np
import pytest

from bench import ops
from bench.ops import RESULT_DTYPE, SIGBUS_STATUS, Obj, Step, Via

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine"),
    pytest.mark.skipif(os.geteuid() != 0, reason="/dev/kvm needs root here"),
]


@pytest.fixture(scope="module")
def kvm():
    from bench.host.build_helper import ensure_built
    ensure_built()
    from bench.host import kvm as k
    return k


@pytest.fixture
def vm(kvm):
    kfd = kvm.kvm_open()
    vm = kvm.kvm_create_vm(kfd, 0)
    yield vm
    os.close(vm)
    os.close(kfd)


def test_helper_constants_match_ops(kvm):
    from bench.host._helper import lib
    assert lib.gm_step_size() == ops.STEP_DTYPE.itemsize
    assert lib.gm_result_size() == ops.RESULT_DTYPE.itemsize
    for s in Step:
        assert getattr(lib, f"GM_STEP_{s.name}") == int(s)
    assert (lib.GM_OBJ_GMEM, lib.GM_OBJ_SHARED) == (Obj.GMEM, Obj.SHARED)
    assert (lib.GM_VIA_HOST, lib.GM_VIA_GUEST) == (Via.HOST, Via.GUEST)
    assert lib.GM_SIGBUS_STATUS == ops.SIGBUS_STATUS and lib.GM_SKIPPED == ops.SKIPPED
    assert lib.GM_NO_CHECK == ops.NO_CHECK
    assert lib.GM_STEP_ABORT_ON_FAIL == ops.STEP_ABORT_ON_FAIL
    assert lib.GM_KVM_SET_MEMORY_ATTRIBUTES2 == kvm.KVM_SET_MEMORY_ATTRIBUTES2 == 0xC080AED2
    assert lib.GM_KVM_SET_MEMORY_ATTRIBUTES == kvm.KVM_SET_MEMORY_ATTRIBUTES == 0x4020AED2


def test_check_extension_and_vm_types(kvm):
    kfd = kvm.kvm_open()
    try:
        assert kvm.kvm_check_extension(kfd, kvm.KVM_CAP_USER_MEMORY2) == 1
        assert kvm.kvm_check_extension(kfd, kvm.KVM_CAP_GUEST_MEMFD) == 1
        types = kvm.kvm_check_extension(kfd, kvm.KVM_CAP_VM_TYPES)
        assert types & 1
        for t in range(6):
            if types & (1 << t):
                os.close(kvm.kvm_create_vm(kfd, t))
            else:
                with pytest.raises(OSError) as e:
                    kvm.kvm_create_vm(kfd, t)
                assert e.value.errno == errno.EINVAL
    finally:
        os.close(kfd)


def test_guest_memfd_flags_and_mmap_rules(kvm, vm):
    flags_ok = kvm.kvm_check_extension(vm, kvm.KVM_CAP_GUEST_MEMFD_FLAGS)
    size = 2 << 20
    for flags in range(4):
        if flags & ~flags_ok:
            continue
        fd = kvm.kvm_create_guest_memfd(vm, size, flags)
        assert os.fstat(fd).st_size == size
        rw = kvm.PROT_READ | kvm.PROT_WRITE
        if not flags & kvm.GUEST_MEMFD_FLAG_MMAP:
            with pytest.raises(OSError) as e:
                kvm.mmap(size, rw, kvm.MAP_SHARED, fd)
            assert e.value.errno == errno.ENODEV
        else:
            with pytest.raises(OSError) as e:
                kvm.mmap(size, rw, kvm.MAP_PRIVATE, fd)
            assert e.value.errno == errno.EINVAL
            addr = kvm.mmap(size, rw, kvm.MAP_SHARED, fd)
            want = 0 if flags & kvm.GUEST_MEMFD_FLAG_INIT_SHARED else SIGBUS_STATUS
            assert kvm.touch_pages(addr, size, write=True) == want
            kvm.munmap(addr, size)
        os.close(fd)
    with pytest.raises(OSError) as e:
        kvm.kvm_create_guest_memfd(vm, size, 1 << 40)
    assert e.value.errno == errno.EINVAL


def test_read_of_unshared_guest_memfd_is_sigbus_through_batch(kvm, vm):
    """MMAP without INIT_SHARED: the C batch READ catches the kernel's SIGBUS."""
    from bench.host._helper import ffi, lib
    size = 2 << 20
    fd = kvm.kvm_create_guest_memfd(vm, size, kvm.GUEST_MEMFD_FLAG_MMAP)
    addr = kvm.mmap(size, kvm.PROT_READ | kvm.PROT_WRITE, kvm.MAP_SHARED, fd)
    try:
        slots = ffi.new("struct gm_slot[1]")
        slots[0].gmem_fd, slots[0].shared_fd = fd, -1
        slots[0].gmem_base = ffi.cast("uint8_t *", addr)
        slots[0].size = size
        attrs = ffi.new("uint8_t[]", size // 4096)       # all shared: nothing emulated
        slots[0].attrs = attrs
        ctx = ffi.new("struct gm_ctx *")
        ctx.vm_fd, ctx.nslots, ctx.slots = vm, 1, slots
        steps = ops.empty_steps(3)
        steps["code"] = [Step.READ, Step.WRITE, Step.NOP]
        steps["op"] = [0, 1, 2]
        steps["size"] = [4096, 8192, 0]
        steps["arg"] = [ops.NO_CHECK, 5, 0]
        res = np.zeros(3, RESULT_DTYPE)
        assert lib.gm_execute(ctx, ffi.from_buffer(steps), ffi.from_buffer(res), 3) == 0
        assert list(res["status"]) == [SIGBUS_STATUS, SIGBUS_STATUS, 0]
        # the process survived and SIGBUS handling is back to what it was
        assert 0 < res["ns"][2] < 10_000
    finally:
        kvm.munmap(addr, size)
        os.close(fd)


def test_memslot_punch_and_attribute_ioctls(kvm, vm):
    size = 4 << 20
    fd = kvm.kvm_create_guest_memfd(vm, size, kvm.GUEST_MEMFD_FLAG_MMAP |
                                    kvm.GUEST_MEMFD_FLAG_INIT_SHARED)
    addr = kvm.mmap(size, kvm.PROT_READ | kvm.PROT_WRITE, kvm.MAP_SHARED, fd)
    try:
        kvm.kvm_set_user_memory_region2(vm, 0, kvm.KVM_MEM_GUEST_MEMFD, 1 << 30, size, addr, fd, 0)
        kvm.touch_pages(addr, size)
        assert kvm.mincore_resident(addr, size) == size // 4096
        kvm.madvise(addr, size, kvm.MADV_DONTNEED)           # zap only: content kept
        assert kvm.mincore_resident(addr, size) == size // 4096
        kvm.fallocate(fd, kvm.FALLOC_FL_PUNCH_HOLE | kvm.FALLOC_FL_KEEP_SIZE, 0, 1 << 20)
        assert kvm.mincore_resident(addr, size) == (size - (1 << 20)) // 4096
        with pytest.raises(OSError) as e:
            kvm.fallocate(fd, kvm.FALLOC_FL_PUNCH_HOLE | kvm.FALLOC_FL_KEEP_SIZE, 100, 4096)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(OSError) as e:
            kvm.fallocate(fd, 0, 0, 4096)
        assert e.value.errno == errno.EOPNOTSUPP
        caps = kvm.kvm_check_extension(vm, kvm.KVM_CAP_MEMORY_ATTRIBUTES)
        if caps & kvm.KVM_MEMORY_ATTRIBUTE_PRIVATE == 0:
            with pytest.raises(OSError) as e:
                kvm.kvm_set_memory_attributes(vm, 1 << 30, 4096, kvm.KVM_MEMORY_ATTRIBUTE_PRIVATE)
            assert e.value.errno in (errno.ENOTTY, errno.EINVAL)
        try:
            kvm.kvm_set_memory_attributes2(fd, 0, 4096, 0)
        except kvm.AttributesError as e:
            assert e.errno == errno.ENOTTY        # absent: the only acceptable failure of a no-op
    finally:
        kvm.munmap(addr, size)
        os.close(fd)
