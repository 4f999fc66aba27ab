"""`gmembench calibrate`: measure the cost model's primitives on this host.

Each key of bench/profiles/default.toml is measured with the C helper (gm_time_prim: the
loop and its clock reads are in C), in the units of the default (ns per operation; {4k, 2m}
pairs as one operation over 4 KiB and over 2 MiB).  Hygiene (the traps that distort host timings):
a warm-up touches fresh memory first (trap 1), every measurement runs `rounds` back-to-back
rounds and discards the first (trap 2), a VM fd is held throughout and every measured object
is bound to a memslot as in a run (trap 3: KVM's invalidation work on each zap), and the result
is the median over all kept samples.  4K operations are timed one call into C each
("isolated"): in a run each one follows other work, and a tight loop of one syscall measured
them ~20% cheaper than they are there (the syscall floor, ioctl_entry, stays a tight loop).  Keys that
cannot be measured here keep the default value and are marked in a comment.

The output is a profile TOML ([profile], [costs] in the default's shape, [measured] with
spread), written atomically.
"""
import argparse
import os
import platform
import socket
import sys
import time
import tomllib
from importlib import resources

import numpy as np

from bench.errors import InputError
from bench.ops import PAGE_SIZE, SIZE_2M
from bench.host import sysfs

M = 1 << 20
PAIR = ("4k", "2m")


class Unmeasurable(Exception):
    """This host cannot measure a key (the reason goes into the profile comment)."""


def default_costs() -> tuple[dict, str]:
    text = (resources.files("bench") / "profiles" / "default.toml").read_text()
    return tomllib.loads(text)["costs"], text


def _vmstat(key: str) -> int:
    from bench.host.backend import read_vmstat
    return read_vmstat((key,))[key]


class Calibrator:
    def __init__(self, rounds: int = 6, reps_4k: int = 256, reps_2m: int = 8,
                 warmup_bytes: int = 1 << 30, isolated: bool = True):
        self.isolated = isolated
        from bench.host import load_helper
        load_helper()
        from bench.host import kvm
        from bench.host._helper import ffi, lib
        self.kvm, self.ffi, self.lib = kvm, ffi, lib
        self.rounds = max(2, rounds)
        self.reps_4k, self.reps_2m = reps_4k, reps_2m
        self.settings = sysfs.Settings()
        self._maps: list[tuple[int, int]] = []
        self._fds: list[int] = []
        self._slots: list[tuple[int, int]] = []    # memslots bound to measured objects
        self._next_gpa = 1 << 32
        self.vm_fd = None
        try:
            self.kvm_fd = kvm.kvm_open()
        except OSError as e:
            raise InputError(f"calibrate needs /dev/kvm: {e.strerror}"
                             + (" (run as root)" if os.geteuid() else ""))
        self.warm_up(warmup_bytes)
        self.open_vm()

    # ---- resources ----

    def open_vm(self) -> None:
        """A VM with one memslot bound, as HostTarget holds (MMU-notifier cost on every zap)."""
        kvm = self.kvm
        self.vm_fd = kvm.kvm_create_vm(self.kvm_fd, 0)
        g = kvm.kvm_create_guest_memfd(self.vm_fd, 2 * M, kvm.GUEST_MEMFD_FLAG_MMAP |
                                       kvm.GUEST_MEMFD_FLAG_INIT_SHARED)
        addr = kvm.mmap(2 * M, kvm.PROT_READ | kvm.PROT_WRITE, kvm.MAP_SHARED, g)
        kvm.kvm_set_user_memory_region2(self.vm_fd, 0, kvm.KVM_MEM_GUEST_MEMFD, 0, 2 * M, addr, g)
        self._vm_res = (g, addr)

    def close_vm(self) -> None:
        g, addr = self._vm_res
        self.kvm.munmap(addr, 2 * M)
        os.close(g)
        os.close(self.vm_fd)
        self.vm_fd = None

    def warm_up(self, nbytes: int) -> None:
        self.kvm.touch_fresh_memory(nbytes)

    def mapping(self, kind: str, size: int, huge: str = "4k") -> tuple[int, int]:
        """(fd or -1, 2M-aligned address) of a fresh object: gmem | shmem | anon | hugetlb."""
        kvm = self.kvm
        rw = kvm.PROT_READ | kvm.PROT_WRITE
        if kind == "hugetlb":
            page_flag = 30 << 26 if huge == "1g" else kvm.MAP_HUGE_2MB     # MAP_HUGE_1GB / 2MB
            addr = kvm.mmap(size, rw, kvm.MAP_PRIVATE | kvm.MAP_ANONYMOUS | kvm.MAP_HUGETLB |
                            page_flag)
            self._maps.append((addr, size))
            return -1, addr
        fd = -1
        if kind == "gmem":
            fd = kvm.kvm_create_guest_memfd(self.vm_fd, size, kvm.GUEST_MEMFD_FLAG_MMAP |
                                            kvm.GUEST_MEMFD_FLAG_INIT_SHARED)
        elif kind == "shmem":
            fd = os.memfd_create("gmembench-cal", kvm.MFD_CLOEXEC)
            os.ftruncate(fd, size)
        if fd >= 0:
            self._fds.append(fd)
        span = size + SIZE_2M
        res = kvm.mmap(span, 0, kvm.MAP_PRIVATE | kvm.MAP_ANONYMOUS | kvm.MAP_NORESERVE)
        start = (res + SIZE_2M - 1) // SIZE_2M * SIZE_2M
        flags = (kvm.MAP_SHARED if fd >= 0 else kvm.MAP_PRIVATE | kvm.MAP_ANONYMOUS) | 0x10
        err = self.ffi.new("int *")
        p = self.lib.gm_mmap(self.ffi.cast("void *", start), size, rw, flags, fd, 0, err)
        if p == self.ffi.NULL:
            raise OSError(err[0], os.strerror(err[0]))
        self._maps.append((res, span))
        if kind != "gmem":
            kvm.madvise(start, size, kvm.MADV_HUGEPAGE if huge == "thp" else kvm.MADV_NOHUGEPAGE)
        self.bind(start, size, fd if kind == "gmem" else -1)
        return fd, start

    def bind(self, addr: int, size: int, gmem_fd: int = -1) -> None:
        """Make [addr, addr+size) guest memory of the VM, as every object a strategy zaps,
        punches or discards is (the memslot's userspace memory, or its guest_memfd): KVM
        then does its invalidation work (MMU notifier, guest_memfd invalidate) on each
        zap, as it does in a run.  Unbound memory would measure a cheaper zap."""
        kvm = self.kvm
        if self.vm_fd is None:               # stage2_notifier's baseline: no VM at all
            return
        slot = len(self._slots) + 1          # slot 0: the VM's own (open_vm)
        gpa = self._next_gpa
        if gmem_fd >= 0:
            kvm.kvm_set_user_memory_region2(self.vm_fd, slot, kvm.KVM_MEM_GUEST_MEMFD, gpa, size,
                                            addr, gmem_fd)
        else:
            kvm.kvm_set_user_memory_region2(self.vm_fd, slot, 0, gpa, size, addr)
        self._slots.append((slot, gmem_fd))
        self._next_gpa = gpa + (size + (1 << 30) - 1) // (1 << 30) * (1 << 30)

    def unbind_all(self) -> None:
        kvm = self.kvm
        for slot, gmem_fd in reversed(self._slots):
            try:
                kvm.kvm_set_user_memory_region2(self.vm_fd, slot,
                                                kvm.KVM_MEM_GUEST_MEMFD if gmem_fd >= 0 else 0,
                                                0, 0, 0, max(gmem_fd, 0))
            except OSError:
                pass
        self._slots.clear()
        self._next_gpa = 1 << 32

    def release(self) -> None:
        """Unmap and close what the last measurement made (the VM stays)."""
        if self.vm_fd is not None:
            self.unbind_all()
        self.kvm.release(self._maps, self._fds)

    def close(self) -> None:
        try:
            self.release()
            if self.vm_fd is not None:
                self.close_vm()
            os.close(self.kvm_fd)
        finally:
            self.settings.close()

    # ---- timing ----

    def time(self, prim: int, fd: int = -1, a: int = 0, b: int = 0, off: int = 0, length: int = 0,
             reps: int = 1, stride: int = 0, isolate_any_size: bool = False) -> np.ndarray:
        if (self.isolated and reps > 1 and (length <= PAGE_SIZE or isolate_any_size)
                and prim != self.lib.GM_B_NOP):
            # One call into C per operation: the interpreter's work between two calls leaves
            # the kernel's caches and branch predictors as other work leaves them in a run.
            # A tight C loop of one syscall keeps them primed for exactly that syscall and
            # measured 4K zaps ~20% below the same zap issued within a mixed stream.
            file_off = prim == self.lib.GM_B_PUNCH
            return np.concatenate([
                self._time_c(prim, fd, a + i * stride, b + i * stride,
                             off + i * stride if file_off else off, length, 1, 0)
                for i in range(reps)])
        return self._time_c(prim, fd, a, b, off, length, reps, stride)

    def _time_c(self, prim, fd, a, b, off, length, reps, stride) -> np.ndarray:
        ns = np.zeros(reps, dtype=np.int64)
        rc = self.lib.gm_time_prim(prim, fd, self.ffi.cast("void *", a), self.ffi.cast("void *", b),
                                   off, length, reps, stride, self.ffi.cast("int64_t *", ns.ctypes.data))
        if rc:
            raise Unmeasurable(f"primitive {prim} failed: "
                               + ("SIGBUS" if rc == 1000 else os.strerror(-rc)))
        return ns

    def rounds_of(self, one_round) -> np.ndarray:
        """Run one_round() `rounds` times back to back; the first round is discarded."""
        kept = []
        for r in range(self.rounds):
            ns = one_round(r)
            if r:
                kept.append(ns)
        return np.concatenate(kept)

    def _shape(self, size: str) -> tuple[int, int, int]:
        """(length, reps, stride) for one op over 4 KiB or over 2 MiB."""
        if size == "4k":
            return PAGE_SIZE, self.reps_4k, 16 * PAGE_SIZE
        return SIZE_2M, self.reps_2m, SIZE_2M

    # ---- primitives ----

    def fault(self, kind: str, size: str) -> np.ndarray:
        """First-touch write fault of 4K pages (2m: 512 faults), allocation + zeroing."""
        lib = self.lib
        length, reps, stride = self._shape(size)
        total = reps * stride
        fd, addr = self.mapping(kind, total)

        def one(_):
            ns = self.time(lib.GM_B_WRITE_TOUCH, a=addr, length=length, reps=reps, stride=stride)
            self.reset(kind, fd, addr, total)
            return ns
        return self.rounds_of(one)

    def reset(self, kind: str, fd: int, addr: int, total: int) -> None:
        kvm = self.kvm
        if fd >= 0:
            kvm.fallocate(fd, kvm.FALLOC_FL_PUNCH_HOLE | kvm.FALLOC_FL_KEEP_SIZE, 0, total)
        else:
            kvm.madvise(addr, total, kvm.MADV_DONTNEED)

    def refault(self, kind: str) -> np.ndarray:
        """Minor fault: the page is still in the file, its PTE was zapped.  A write fault, so
        that read fault-around (several PTEs per fault on shmem) does not blur the figure."""
        lib, kvm = self.lib, self.kvm
        length, reps, stride = self._shape("4k")
        fd, addr = self.mapping(kind, reps * stride)
        kvm.touch_pages(addr, reps * stride)

        def one(_):
            kvm.madvise(addr, reps * stride, kvm.MADV_DONTNEED)
            return self.time(lib.GM_B_WRITE_TOUCH, a=addr, length=length, reps=reps, stride=stride)
        return self.rounds_of(one)

    def zap(self, kind: str, size: str) -> np.ndarray:
        """MADV_DONTNEED of populated pages (gmem/shmem: PTE zap only; anon: frees)."""
        lib, kvm = self.lib, self.kvm
        length, reps, stride = self._shape(size)
        fd, addr = self.mapping(kind, reps * stride)

        def one(_):
            kvm.touch_pages(addr, reps * stride)
            return self.time(lib.GM_B_MADV, a=addr, off=kvm.MADV_DONTNEED, length=length,
                             reps=reps, stride=stride)
        return self.rounds_of(one)

    def punch(self, kind: str, mapped: bool, size: str) -> np.ndarray:
        lib, kvm = self.lib, self.kvm
        length, reps, stride = self._shape(size)
        fd, addr = self.mapping(kind, reps * stride)

        def one(_):
            kvm.touch_pages(addr, reps * stride)
            if not mapped:
                kvm.madvise(addr, reps * stride, kvm.MADV_DONTNEED)
            return self.time(lib.GM_B_PUNCH, fd=fd, off=0, length=length, reps=reps, stride=stride)
        return self.rounds_of(one)

    def punch_empty(self, kind: str, size: str) -> np.ndarray:
        """PUNCH_HOLE over a range that holds no pages (never touched): the range walk alone,
        ~0.3 ns per 4K of range here (1 GiB: ~73 us).  Both sizes are timed one call each,
        so that the small slope is not the difference of two measuring conditions."""
        lib = self.lib
        length, reps, stride = self._shape(size)
        fd, _ = self.mapping(kind, reps * stride)
        return self.rounds_of(lambda _: self.time(lib.GM_B_PUNCH, fd=fd, off=0, length=length,
                                                  reps=reps, stride=stride,
                                                  isolate_any_size=True))

    def thp_fault(self, kind: str) -> np.ndarray:
        """One huge-page fault: touch the first byte of each 2M of a THP/hugetlb region."""
        lib = self.lib
        reps = self.reps_2m
        if kind == "shmem":
            self.settings.set(sysfs.THP_SHMEM_ENABLED, "advise")
        if kind == "hugetlb":
            free = sysfs.ensure_hugepages(self.settings, reps)
            if free < reps:
                raise Unmeasurable(f"only {free} free 2M hugetlb pages")
        fd, addr = self.mapping(kind, reps * SIZE_2M, huge="thp")
        counter = {"anon": "thp_fault_alloc", "shmem": "thp_file_alloc"}.get(kind)

        def one(_):
            c0 = _vmstat(counter) if counter else 0
            ns = self.time(lib.GM_B_WRITE_TOUCH, a=addr, length=PAGE_SIZE, reps=reps, stride=SIZE_2M)
            if counter and _vmstat(counter) - c0 < reps:
                raise Unmeasurable(f"{kind} THP faults fell back to 4K pages")
            self.reset(kind, fd, addr, reps * SIZE_2M)
            return ns
        return self.rounds_of(one)

    def fault_1g(self) -> np.ndarray:
        base = "/sys/kernel/mm/hugepages/hugepages-1048576kB"
        if not os.path.exists(base):
            raise Unmeasurable("no 1G hugetlb pool on this kernel")
        free = sysfs.ensure_hugepages(self.settings, 1, size_kb=1 << 20)
        if free < 1:
            raise Unmeasurable("no free 1G page could be allocated (fragmentation)")
        _, addr = self.mapping("hugetlb", 1 << 30, huge="1g")
        kvm = self.kvm

        def one(_):
            ns = self.time(self.lib.GM_B_WRITE_TOUCH, a=addr, length=PAGE_SIZE, reps=1)
            kvm.madvise(addr, 1 << 30, kvm.MADV_DONTNEED)
            return ns
        old, self.rounds = self.rounds, min(self.rounds, 3)
        try:
            return self.rounds_of(one)
        finally:
            self.rounds = old

    def thp_split(self, kind: str) -> np.ndarray:
        """A 4K hole in a THP: shmem punch splits at once; anon MADV_DONTNEED drops the PMD."""
        lib, kvm = self.lib, self.kvm
        reps = self.reps_2m
        if kind == "shmem":
            self.settings.set(sysfs.THP_SHMEM_ENABLED, "advise")
        fd, addr = self.mapping(kind, reps * SIZE_2M, huge="thp")
        counter = "thp_split_page" if kind == "shmem" else "thp_split_pmd"

        def one(_):
            self.reset(kind, fd, addr, reps * SIZE_2M)
            kvm.touch_pages(addr, reps * SIZE_2M)
            c0 = _vmstat(counter)
            if kind == "shmem":
                ns = self.time(lib.GM_B_PUNCH, fd=fd, off=64 * 1024, length=PAGE_SIZE, reps=reps,
                               stride=SIZE_2M)
            else:
                ns = self.time(lib.GM_B_MADV, a=addr + 64 * 1024, off=kvm.MADV_DONTNEED,
                               length=PAGE_SIZE, reps=reps, stride=SIZE_2M)
            if _vmstat(counter) - c0 < reps:
                raise Unmeasurable(f"the 4K hole did not split the {kind} THP ({counter})")
            return ns
        return self.rounds_of(one)

    def zap_pmd(self) -> np.ndarray:
        """MADV_DONTNEED of a PMD-mapped shmem THP: a pure zap of one huge mapping."""
        lib, kvm = self.lib, self.kvm
        reps = self.reps_2m
        self.settings.set(sysfs.THP_SHMEM_ENABLED, "advise")
        fd, addr = self.mapping("shmem", reps * SIZE_2M, huge="thp")
        c0 = _vmstat("thp_file_alloc")
        kvm.touch_pages(addr, reps * SIZE_2M)
        if _vmstat("thp_file_alloc") - c0 < reps:
            raise Unmeasurable("shmem THP not allocated")

        def one(_):
            kvm.touch_pages(addr, reps * SIZE_2M, write=False)
            return self.time(lib.GM_B_MADV, a=addr, off=kvm.MADV_DONTNEED, length=SIZE_2M,
                             reps=reps, stride=SIZE_2M)
        return self.rounds_of(one)

    def stage2_notifier(self) -> np.ndarray:
        """Trap 3: what holding a VM fd adds to a 4K zap (MMU notifier); no guest stage-2
        mappings exist on this host, so this is the part of a stage-2 zap it can measure."""
        self.close_vm()
        try:
            without = np.median(self.zap("anon", "4k"))
        finally:
            self.open_vm()
        with_vm = self.zap("anon", "4k")
        return np.maximum(with_vm - without, 0)

    def copy_like(self, prim: int, size: str) -> np.ndarray:
        """memcpy / zero-fill of cold data: every round uses addresses not touched since the
        buffers were populated."""
        kvm = self.kvm
        length, reps, _ = self._shape(size)
        region = 256 * M
        stride = region // reps
        shift = PAGE_SIZE * 4 if size == "4k" else SIZE_2M
        if shift * self.rounds + length > stride:
            shift = max(PAGE_SIZE, (stride - length) // self.rounds // PAGE_SIZE * PAGE_SIZE)
        _, src = self.mapping("anon", region)
        _, dst = self.mapping("anon", region)
        kvm.touch_pages(src, region)
        kvm.touch_pages(dst, region)
        # evict: the population above left the tails in cache; a third buffer flushes them
        _, flush = self.mapping("anon", 64 * M)
        kvm.touch_pages(flush, 64 * M)

        def one(r):
            return self.time(prim, a=dst + r * shift, b=src + r * shift, length=length, reps=reps,
                             stride=stride)
        return self.rounds_of(one)

    def touch(self, size: str) -> np.ndarray:
        """Write of already-mapped, cache-cold pages (one word per 4K page)."""
        lib, kvm = self.lib, self.kvm
        length, reps, _ = self._shape(size)
        region = 256 * M
        stride = region // reps
        shift = 4 * PAGE_SIZE if size == "4k" else SIZE_2M
        if shift * self.rounds + length > stride:
            shift = max(PAGE_SIZE, (stride - length) // self.rounds // PAGE_SIZE * PAGE_SIZE)
        _, buf = self.mapping("anon", region)
        kvm.touch_pages(buf, region)

        def one(r):
            return self.time(lib.GM_B_WRITE_TOUCH, a=buf + r * shift, length=length, reps=reps,
                             stride=stride)
        return self.rounds_of(one)

    def ioctl_floor(self) -> np.ndarray:
        """The syscall floor: a tight C loop, the least entering the kernel costs.  Validation
        found the emulated conversion ioctl (a failing ioctl that does no work) within ~10%
        of it in runs, where the isolated figure was ~30% above."""
        reps = 2000
        return self.rounds_of(lambda _: self._time_c(self.lib.GM_B_IOCTL_CHECK, self.kvm_fd, 0, 0,
                                                     231, 0, reps, 0))

    def nop(self) -> np.ndarray:
        return self.rounds_of(lambda _: self._time_c(self.lib.GM_B_NOP, -1, 0, 0, 0, 0, 5000, 0))


# key -> (how to measure: callable(cal, size or None) -> samples, what it is)
def _plan(c: "Calibrator") -> dict:
    L = c.lib
    return {
        "ioctl_entry": lambda s: c.ioctl_floor(),
        "host_zap_pte": lambda s: c.zap("gmem", s),
        "host_zap_pmd": lambda s: c.zap_pmd(),
        "stage2_zap_4k": lambda s: c.stage2_notifier(),
        "fault_gmem": lambda s: c.fault("gmem", s),
        "fault_shmem": lambda s: c.fault("shmem", s),
        "fault_anon": lambda s: c.fault("anon", s),
        "fault_thp_anon": lambda s: c.thp_fault("anon"),
        "fault_thp_shmem": lambda s: c.thp_fault("shmem"),
        "fault_hugetlb_2m": lambda s: c.thp_fault("hugetlb"),
        "fault_1g": lambda s: c.fault_1g(),
        "refault_gmem": lambda s: c.refault("gmem"),
        "refault_shmem": lambda s: c.refault("shmem"),
        "punch_gmem_empty": lambda s: c.punch_empty("gmem", s),
        "punch_gmem_unmapped": lambda s: c.punch("gmem", False, s),
        "punch_gmem_mapped": lambda s: c.punch("gmem", True, s),
        "punch_shmem_unmapped": lambda s: c.punch("shmem", False, s),
        "punch_shmem_mapped": lambda s: c.punch("shmem", True, s),
        "discard_anon": lambda s: c.zap("anon", s),
        "thp_split_shmem": lambda s: c.thp_split("shmem"),
        "thp_split_anon": lambda s: c.thp_split("anon"),
        "memcpy": lambda s: c.copy_like(L.GM_B_MEMCPY, s),
        "zero_fill": lambda s: c.copy_like(L.GM_B_ZERO, s),
        "touch_page": lambda s: c.touch(s),
    }


# keys this host cannot measure, and why
UNMEASURABLE = {
    "attr_update": "no attribute ioctl works here (KVM_SET_MEMORY_ATTRIBUTES[2] absent): kernel "
                   "tree store not observable",
    "refcount_scan_folio": "the in-place refcount check runs only inside KVM_SET_MEMORY_ATTRIBUTES2",
    "lru_drain": "lru_add_drain_all() cannot be triggered alone from userspace",
    "stage2_zap_huge": "no huge stage-2 mappings without running a guest (guest execution is "
                       "emulated here)",
    "fault_gmem_2m": "guest_memfd has no huge folios on this kernel",
    "folio_split": "guest_memfd has no huge folios on this kernel",
    "folio_merge": "guest_memfd has no huge folios on this kernel",
    "vm_attr_xa_store": "KVM_SET_MEMORY_ATTRIBUTES is ENOTTY here: the VM attribute xarray is not observable",
    "exit_request_sw": "guest execution is emulated here: no guest exit can be timed",
    "exit_request_tdx": "no TDX module on this host",
    "exit_request_snp": "no SEV-SNP firmware on this host",
    "exit_to_userspace": "guest execution is emulated here: no guest-initiated exit to time",
    "vmm_dispatch": "no VMM runs here: the conversion dispatch of QEMU is not executed",
    "guest_pvalidate_snp": "no SEV-SNP firmware on this host",
    "hyp_share_sw": "no pKVM hypervisor on this host",
    "tlb_flush": "no guest stage-2 mappings exist here: no remote flush to time",
    "vcpu_kick": "no running vCPU to kick here (guest execution is emulated)",
    "fw_snp_to_private": "no SEV-SNP firmware on this host",
    "fw_snp_to_shared": "no SEV-SNP firmware on this host",
    "fw_tdx_to_private": "no TDX module on this host",
    "fw_tdx_to_shared": "no TDX module on this host",
    "tdx_block": "no TDX module on this host",
    "tdx_track": "no TDX module on this host",
    "tdx_demote": "no TDX module on this host",
}


# What some measured keys mean on this host (written as comments into the profile).
MEANING = {
    "stage2_zap_4k": "MMU-notifier delta of a 4K zap with a VM fd held (no guest stage-2 "
                     "mappings exist here); the zap/punch/discard figures of this profile were "
                     "measured with a VM fd held and already include it",
    "touch_page": "a store per page: the store buffer hides the cache miss",
    "refault_gmem": "write refault of a zapped, still-allocated page",
    "refault_shmem": "write refault of a zapped, still-allocated page",
    "fault_1g": "first fault of a 1G hugetlb page (allocation + zeroing)",
}

# Kernel work the host backend's emulated path does not perform on this kernel (no
# attribute ioctl, no guest stage-2, no firmware): 0 in an --emulated-host profile, so the
# simulator charges what the host backend actually ran (for `gmembench validate`).
NOT_IN_EMULATED_PATH = {
    "attr_update": "the emulated conversion keeps attributes outside the timed window",
    "refcount_scan_folio": "the emulated in-place conversion checks pins outside the timed window",
    "lru_drain": "never triggered by the emulated conversion",
    "stage2_zap_4k": "no guest runs here: no stage-2 mappings to zap (notifier cost is inside "
                     "the zap/punch/discard figures)",
    "stage2_zap_huge": "no guest runs here: no stage-2 mappings to zap",
    "vm_attr_xa_store": "the emulated dual conversion's VM ioctl is ENOTTY: no xarray store",
    "exit_request_sw": "not part of the host-side steps the host backend times",
    "exit_request_tdx": "not part of the host-side steps the host backend times",
    "exit_request_snp": "not part of the host-side steps the host backend times",
    "exit_to_userspace": "not part of the host-side steps the host backend times",
    "vmm_dispatch": "not part of the host-side steps the host backend times",
    "guest_pvalidate_snp": "not part of the host-side steps the host backend times",
    "hyp_share_sw": "not part of the host-side steps the host backend times",
    "tlb_flush": "not part of the host-side steps the host backend times",
    "vcpu_kick": "not part of the host-side steps the host backend times",
    "fw_snp_to_private": "not part of the host-side steps the host backend times",
    "fw_snp_to_shared": "not part of the host-side steps the host backend times",
    "fw_tdx_to_private": "not part of the host-side steps the host backend times",
    "tdx_block": "not part of the host-side steps the host backend times",
    "tdx_track": "not part of the host-side steps the host backend times",
    "tdx_demote": "not part of the host-side steps the host backend times",
    "vcpu_kick_per_vcpu": "no running vCPU to kick here (guest execution is emulated)",
    "fw_tdx_to_private_2m": "not part of the host-side steps the host backend times",
}

# Kernel work the emulated path does perform, with a host operation standing in for it:
# key -> (measured key, size, why).  The emulated TDX to-shared zeroes each allocated page
# inside the timed window (helper.c step_gmem_set_attrs), standing in for tdx_clear_page.
EMULATED_AS = {
    "fw_tdx_to_shared": ("zero_fill", "4k", "the emulated TDX to-shared zeroes each "
                         "allocated page"),
}


def _stats(ns: np.ndarray) -> dict:
    return {"median": float(np.median(ns)), "p10": float(np.percentile(ns, 10)),
            "p90": float(np.percentile(ns, 90)), "n": int(len(ns))}


def calibrate(rounds: int = 6, warmup_bytes: int = 1 << 30, keys: list[str] | None = None,
              progress: bool | None = None, emulated_host: bool = False) -> dict:
    """Measure; returns {"costs", "measured", "notes", "harness", "settings_changed"}."""
    from bench.progress import progress as progress_bar
    defaults, _ = default_costs()
    c = Calibrator(rounds=rounds, warmup_bytes=warmup_bytes)
    costs, measured, notes = {}, {}, {}
    try:
        plan = _plan(c)
        wanted = [k for k in defaults if keys is None or k in keys]
        # stage2_zap_4k first: it closes the VM for its baseline, which only works while no
        # guest_memfd (each holds the VM) exists yet
        wanted.sort(key=lambda k: k != "stage2_zap_4k")
        jobs = [(k, s) for k in wanted for s in (PAIR if isinstance(defaults[k], dict) else (None,))]
        harness = _stats(c.nop())
        with progress_bar(total=len(jobs), desc="calibrate", unit="cost", enabled=progress) as bar:
            for key, size in jobs:
                bar.set_description(f"calibrate {key}{'/' + size if size else ''}")
                if key not in plan:
                    notes[key] = "not measured: " + UNMEASURABLE.get(key, "no method here")
                elif key not in notes:
                    try:
                        st = _stats(plan[key](size))
                        if size:
                            costs.setdefault(key, {})[size] = round(st["median"])
                            measured.setdefault(key, {})[size] = st
                        else:
                            costs[key] = round(st["median"])
                            measured[key] = st
                    except (Unmeasurable, OSError) as e:
                        notes[key] = f"not measured: {e}"
                        costs.pop(key, None)
                        measured.pop(key, None)
                    finally:
                        c.release()
                bar.update(1)
        changed = dict(c.settings.changed)
    finally:
        c.close()
    derived = {}
    if "fault_gmem_2m" in notes and "fault_hugetlb_2m" in costs:
        # as the default does: huge guest_memfd folios come from hugetlb in the huge-page series
        costs["fault_gmem_2m"] = costs["fault_hugetlb_2m"]
        derived["fault_gmem_2m"] = "= fault_hugetlb_2m measured here (huge gmem folios are hugetlb)"
        notes.pop("fault_gmem_2m")
    for key, v in list(costs.items()):
        if isinstance(v, dict) and set(v) == set(PAIR) and v["2m"] < v["4k"]:
            notes[key] = f"measured 2m ({v['2m']}) below 4k ({v['4k']}): kept the default"
            costs.pop(key)
    if emulated_host:
        for key, why in NOT_IN_EMULATED_PATH.items():
            if key in defaults:
                costs[key] = 0
                measured.pop(key, None)
                notes.pop(key, None)
                derived[key] = f"0 for this host's emulated path: {why}"
        for key, (src, size, why) in EMULATED_AS.items():
            v = costs.get(src)
            if key in defaults and isinstance(v, dict) and size in v:
                costs[key] = v[size]
                measured.pop(key, None)
                notes.pop(key, None)
                derived[key] = f"= {src} {size} measured here: {why}"
            elif key in defaults:
                costs[key] = 0
                derived[key] = f"0 for this host's emulated path: {src} was not measured"
    for key in defaults:
        if key not in costs:
            costs[key] = defaults[key]
            notes.setdefault(key, "not requested (--keys): kept the default")
    return {"costs": {k: costs[k] for k in defaults}, "measured": measured, "notes": notes,
            "derived": derived, "harness": harness, "settings_changed": changed}


def _toml_value(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, float):
        return repr(round(v, 1))
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(v)


def render_profile(result: dict, name: str, source: str) -> str:
    lines = ["# gmembench cost profile measured on this host by `gmembench calibrate`.",
             "# Units: ns per operation; {4k, 2m} = one operation over 4 KiB / over 2 MiB.",
             "# Medians of back-to-back rounds (first round discarded), with a VM fd held and",
             "# every measured object bound to a memslot; 4K operations timed one call each.",
             f"# Harness: two CLOCK_MONOTONIC reads cost {result['harness']['median']:.0f} ns "
             "(included in every figure, as in the default).",
             "", "[profile]", f"name = {_toml_value(name)}", f"source = {_toml_value(source)}",
             "", "[costs]"]
    for key, v in result["costs"].items():
        if key in result["notes"]:
            lines.append(f"# {key}: {result['notes'][key]}")
        elif key in result["derived"]:
            lines.append(f"# {key}: derived {result['derived'][key]}")
        elif key in MEANING:
            lines.append(f"# {key}: {MEANING[key]}")
        lines.append(f"{key} = {_toml_value(v)}")
    # where each figure comes from (bench/costs.py); keys kept at the default inherit its source
    lines += ["", "[sources]"]
    for key in result["costs"]:
        if key in result["measured"]:
            lines.append(f"{key} = {_toml_value('calibrated: measured by gmembench calibrate (' + source + ')')}")
        elif key in result["derived"]:
            lines.append(f"{key} = {_toml_value('calibrated: ' + result['derived'][key])}")
    lines += ["", "# spread of each measured key (ns): median, p10, p90, samples", "[measured]"]
    for key, v in result["measured"].items():
        if all(k in PAIR for k in v):
            inner = ", ".join(f"{s} = {_toml_value({k: x for k, x in st.items()})}"
                              for s, st in v.items())
            lines.append(f"{key} = {{ {inner} }}")
        else:
            lines.append(f"{key} = {_toml_value(v)}")
    lines.append(f"harness_nop = {_toml_value(result['harness'])}")
    return "\n".join(lines) + "\n"


def write_atomic(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="profile to write (default results/calibrated-<host>.toml)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="back-to-back rounds per key, the first discarded (default 6)")
    parser.add_argument("--warmup-mib", type=int, default=1024,
                        help="MiB of fresh memory touched before measuring (default 1024)")
    parser.add_argument("--keys", help="comma-separated subset of cost keys (others keep the default)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--emulated-host", action="store_true",
                        help="set the kernel work this host's emulated conversion path does not "
                             "perform (attribute store, refcount scan, stage-2 zaps, firmware) "
                             "to 0: a profile for comparing the simulator with this host")


def cli_calibrate(args) -> int:
    defaults, _ = default_costs()
    keys = None
    if args.keys:
        keys = [k.strip() for k in args.keys.split(",") if k.strip()]
        bad = [k for k in keys if k not in defaults]
        if bad:
            raise InputError(f"unknown cost key(s): {', '.join(bad)} "
                             f"(expected some of: {', '.join(defaults)})")
    if args.rounds < 2:
        raise InputError("--rounds must be at least 2 (the first round is discarded)")
    host = socket.gethostname() or "host"
    out = args.output or os.path.join("results", f"calibrated-{host}.toml")
    t0 = time.monotonic()
    from bench.host.state import host_lock
    with host_lock():       # it measures the host: no other gmembench host work meanwhile
        result = calibrate(rounds=args.rounds, warmup_bytes=args.warmup_mib * M, keys=keys,
                           progress=False if args.no_progress else None,
                           emulated_host=args.emulated_host)
    source = (f"gmembench calibrate on {host}: kernel {platform.release()}, "
              f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
              f"{args.rounds} rounds" + (", emulated-host profile" if args.emulated_host else ""))
    write_atomic(out, render_profile(result, f"calibrated-{host}", source))
    n_meas = len(result["measured"])
    print(f"wrote {out}: {n_meas} of {len(defaults)} costs measured in "
          f"{time.monotonic() - t0:.1f} s; harness {result['harness']['median']:.0f} ns/op")
    for key, why in result["notes"].items():
        print(f"  {key}: {why}", file=sys.stderr)
    return 0
