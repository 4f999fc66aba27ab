"""HostTarget: one guest's memory on the real kernel, executing compiled steps in C.

Setup per memslot: a guest_memfd bound to a real KVM VM (KVM_SET_USER_MEMORY_REGION2 with
KVM_MEM_GUEST_MEMFD), mmapped by the host; for dual backing also the shared backing (anon or
memfd; 4K, THP or hugetlb).  Footprint and huge-page state in snapshot() are read from the
kernel: mincore() of the guest_memfd mapping (fstat reports no blocks for guest_memfd),
fstat of memfds, /proc/self/smaps of the mappings, /proc/vmstat THP counters, /proc/buddyinfo.

What this kernel cannot do natively is emulated and labelled (fidelity(), metadata()):
see bench/host/probe.py and helper.c.  Param keys (all optional):
  guard_share     share of MemAvailable the run may use (0.5)
  mem_available   the available-memory figure the guard uses (default: MemAvailable now)
  max_scale       largest down-scaling factor before refusing (1024)
  warmup_bytes    anonymous memory touched before measuring (1 GiB; so first-touch page faults are not measured)
  overhead_reps   NOP steps timed for the clock pair's own cost (20001)
  overhead_pairs  batch pairs (harness, bare) for the harness overhead (10; bench/host/overhead.py)
  kpageflags      count intact huge folios from pagemap + kpageflags in snapshots (yes)
  folio_fallback  run a workload asking for 2M/1G guest_memfd folios on this kernel's 4K
                  folios, labelled (no: such a workload is bad input here, exit 2)
  allocatable_probe  after the run, grow the hugetlb pools to count how many 2M / 1G pages
                  could still be allocated, then restore them (yes)
  snapshot_detail also read /proc/self/smaps in every snapshot (no: it perturbs timing)
  probe           a bench.host.probe.probe() result to reuse
"""
import os
import time

import numpy as np

from bench.errors import InputError
from bench.layout import Layout
from bench.ops import (PAGE_SIZE, RESULT_DTYPE, SIZE_2M, STEP_ABORT_ON_FAIL, STEP_DTYPE,
                       SIGBUS_STATUS, SKIPPED, Obj, Step, Via)
from bench.host import sysfs

GUARD_SHARE = 0.5
# param slowdown_direction (regression-gate testing): which conversions the injected
# slowdown delays -> the C executor's slowdown_dirs bits (bit 0 to-shared, bit 1 to-private)
SLOWDOWN_DIRECTIONS = {"both": 3, "to_shared": 1, "to_private": 2}
MAX_SCALE = 1024
WARMUP_BYTES = 1 << 30
PLATFORM_CODES = {"preserve": 0, "zero": 1, "destroy": 2}
VMSTAT_KEYS = ("thp_split_page", "thp_split_pmd", "thp_deferred_split_page", "thp_collapse_alloc",
               "thp_fault_alloc", "thp_file_alloc", "thp_split_page_failed")
SMAPS_KEYS = ("Rss", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb",
              "Private_Hugetlb")


def mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("MemAvailable missing from /proc/meminfo")


def read_vmstat(keys=VMSTAT_KEYS) -> dict:
    out = dict.fromkeys(keys, 0)
    with open("/proc/vmstat", encoding="ascii") as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k in out:
                out[k] = int(v)
    return out


def read_smaps(ranges: list[tuple[int, int]]) -> dict:
    """Sum of SMAPS_KEYS (bytes) over the VMAs of /proc/self/smaps inside the given ranges."""
    totals = dict.fromkeys(SMAPS_KEYS, 0)
    inside = False
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                lo, hi = (int(x, 16) for x in first.split("-"))
                inside = any(a <= lo and hi <= a + n for a, n in ranges)
            elif inside and first[:-1] in totals:
                totals[first[:-1]] += int(line.split()[1]) * 1024
    return totals


def read_nr_free() -> list[int]:
    try:
        from bench.fragmentation import read_buddyinfo, total_nr_free
        return [int(x) for x in total_nr_free(read_buddyinfo("/proc/buddyinfo"))]
    except ImportError:     # bench/fragmentation.py not present: same sum, read here
        total: list[int] = []
        with open("/proc/buddyinfo", encoding="ascii") as f:
            for line in f:
                counts = [int(x) for x in line.split()[4:]]
                total += [0] * (len(counts) - len(total))
                for i, c in enumerate(counts):
                    total[i] += c
        return total


_libc = None


def mincore_vector(addr: int, size: int) -> np.ndarray:
    """Bool per 4K page of [addr, addr+size): resident (mincore; for a file mapping, in the
    page cache whether or not this process maps it)."""
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    n = -(-size // PAGE_SIZE)
    vec = np.zeros(n, np.uint8)
    if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size),
                     ctypes.c_void_p(vec.ctypes.data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mincore: {os.strerror(e)}")
    return (vec & 1).astype(bool)


def _true_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of the runs of True in a bool array."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return [(int(a), int(b - a)) for a, b in zip(starts, ends)]


KPF_COMPOUND_HEAD, KPF_HUGE, KPF_THP = 15, 17, 22
PM_PRESENT = 1 << 63
PM_PFN_MASK = (1 << 55) - 1


def count_huge_folios(addr: int, size: int) -> int | None:
    """Intact PMD-size folios (THP or hugetlb) mapped in [addr, addr+size), read from
    /proc/self/pagemap and /proc/kpageflags (root): every 2M-aligned window whose 512 pages
    are present, physically contiguous from a 2M-aligned head page, and in one huge folio.
    None when the files cannot be read."""
    try:
        pm = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return None
    try:
        kf = os.open("/proc/kpageflags", os.O_RDONLY)
    except OSError:
        os.close(pm)
        return None
    count = 0
    try:
        start = _round_up(addr, SIZE_2M)
        for w in range(start, addr + size - SIZE_2M + 1, SIZE_2M):
            ent = np.frombuffer(os.pread(pm, 512 * 8, (w // PAGE_SIZE) * 8), dtype=np.uint64)
            if len(ent) < 512 or not (ent & np.uint64(PM_PRESENT)).all():
                continue
            pfn = (ent & np.uint64(PM_PFN_MASK)).astype(np.int64)
            if pfn[0] == 0 or pfn[0] % 512 or not (np.diff(pfn) == 1).all():
                continue      # PFNs hidden (not root) or not one aligned physical block
            flags = np.frombuffer(os.pread(kf, 512 * 8, int(pfn[0]) * 8), dtype=np.uint64)
            head = (flags >> np.uint64(KPF_COMPOUND_HEAD)) & np.uint64(1)
            huge = (flags >> np.uint64(KPF_THP)) & np.uint64(1) | \
                (flags >> np.uint64(KPF_HUGE)) & np.uint64(1)
            if head[0] and not head[1:].any() and huge.all():
                count += 1
    finally:
        os.close(pm)
        os.close(kf)
    return count


def _param_size(params: dict, key: str, default: int) -> int:
    from bench.generators import parse_size
    try:
        return parse_size(params.get(key, default))
    except ValueError as e:
        raise InputError(f"host backend parameter {key}: {e}") from None


def _param_number(params: dict, key: str, default, kind=float):
    v = params.get(key, default)
    try:
        x = kind(v)
    except (TypeError, ValueError):
        raise InputError(f"host backend parameter {key}: {v!r} is not a number") from None
    if x < 0:
        raise InputError(f"host backend parameter {key}: must be >= 0, got {v!r}")
    return x


def _param_bool(params: dict, key: str, default: bool) -> bool:
    v = params.get(key, default)
    if isinstance(v, str):
        if v.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if v.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise InputError(f"host backend parameter {key}: {v!r} is not a yes/no value")
    return bool(v)


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


class HostTarget:
    backend = "host"

    def __init__(self, layout: Layout, strategy, params: dict | None = None):
        self.layout = layout
        self.strategy = strategy
        self.params = dict(params or {})
        self.slowdown_direction = str(self.params.get("slowdown_direction", "both"))
        if self.slowdown_direction not in SLOWDOWN_DIRECTIONS:
            raise InputError(f"--param slowdown_direction: expected one of "
                             f"{', '.join(SLOWDOWN_DIRECTIONS)}, got {self.slowdown_direction!r}")
        self.settings = sysfs.Settings()
        # the host is measured and its settings changed: one gmembench at a time
        # (re-entrant; a run's spawned workers work under their parent's lock)
        from bench.host.state import host_lock
        self._host = host_lock()
        self._host.__enter__()
        self._fds: list[int] = []
        self._maps: list[tuple[int, int]] = []      # (addr, length) to munmap
        self._slots_meta: list[dict] = []
        self._closed = False
        self.labels: list[str] = []               # what was emulated or changed, in words
        self._bd_count = np.zeros(len(Step), dtype=np.int64)
        self._bd_ns = np.zeros(len(Step), dtype=np.int64)
        self._bd_sigbus = 0
        self._bd_skipped = 0
        try:
            from bench.host import load_helper
            load_helper()       # a development checkout builds it in place on first use
            from bench.host import kvm
            from bench.host._helper import ffi, lib
        except Exception as e:  # no compiler, no cffi, read-only tree...
            raise InputError(f"host backend: the C helper is not built ({e}); "
                             "install the package (pip install .)") from None
        self._kvm, self._ffi, self._lib = kvm, ffi, lib
        if lib.gm_step_size() != STEP_DTYPE.itemsize or lib.gm_result_size() != RESULT_DTYPE.itemsize:
            raise RuntimeError("C helper struct layout does not match bench.ops dtypes")
        from bench.host.probe import KVM_PATH
        if not os.path.exists(KVM_PATH):
            raise InputError(f"host backend: {KVM_PATH} does not exist on this machine "
                             "(use --backend sim)")
        try:
            self._kvm_fd = kvm.kvm_open(KVM_PATH)
        except OSError as e:
            raise InputError(f"host backend: cannot open {KVM_PATH}: {e.strerror}"
                             + (" (run as root)" if os.geteuid() else "")) from None
        self._fds.append(self._kvm_fd)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # ---- setup ----

    def _setup(self) -> None:
        kvm, ffi = self._kvm, self._ffi
        from bench.host import probe as probe_mod
        self.probe = self.params.get("probe") or probe_mod.probe()
        feats = self.probe["features"]
        if not feats:
            raise InputError(f"host backend: KVM not usable: {self.probe['kvm']['reason']}")
        self.attrs2_native = bool(feats["attrs2"]["native"])
        self.vm_attrs_native = bool(feats["vm_attrs"]["native"])
        self._fidelity = self._fidelity_table(probe_mod)
        layout = self.layout
        if layout.platform not in PLATFORM_CODES:
            raise InputError(f"host backend: unknown platform {layout.platform!r}")
        if layout.gmem_page_size != PAGE_SIZE:
            # the workload's point may be the huge folio (splits, demotions): running it on
            # 4K folios silently would measure something else
            if not _param_bool(self.params, "folio_fallback", False):
                raise InputError(f"host backend: the workload asks for {layout.gmem_page_size >> 10}K "
                                 "guest_memfd folios; this kernel's guest_memfd has 4K folios "
                                 "only (run it on the simulator, or allow running on 4K folios "
                                 "with --param folio_fallback=yes: the results are labelled)")
            self.labels.append(f"guest_memfd page size {layout.gmem_page_size} requested: this "
                               "kernel's guest_memfd folios are 4K only, ran with 4K "
                               "(folio_fallback=yes)")
        self._plan_scale()
        self._warm_up(_param_size(self.params, "warmup_bytes", WARMUP_BYTES))
        self._vmstat0 = read_vmstat()
        self.vm_fd = kvm.kvm_create_vm(self._kvm_fd, 0)
        self._fds.append(self.vm_fd)
        n = len(layout.memslots)
        self._c_slots = ffi.new("struct gm_slot[]", max(n, 1))
        self._attrs_bufs = []
        gpa_next = 0
        for i, m in enumerate(layout.memslots):
            size = self.slot_sizes[i]
            gpa = max(_round_up(m.gpa // self.scale, SIZE_2M), gpa_next)
            gpa_next = gpa + size
            self._setup_slot(i, gpa, size)
        ctx = ffi.new("struct gm_ctx *")
        ctx.vm_fd = self.vm_fd
        ctx.nslots = n
        ctx.slots = self._c_slots
        ctx.attrs2_native = int(self.attrs2_native)
        ctx.vm_attrs_native = int(self.vm_attrs_native)
        ctx.platform = PLATFORM_CODES[layout.platform]
        # regression-gate testing only: a real, measured delay inside each conversion step
        slowdown = float(self.params.get("slowdown", 1.0))
        if slowdown < 1.0:
            raise InputError(f"slowdown must be >= 1.0, got {slowdown}")
        ctx.slowdown_permille = int(round((slowdown - 1.0) * 1000))
        ctx.slowdown_dirs = SLOWDOWN_DIRECTIONS[self.slowdown_direction]
        self._ctx = ctx
        self.harness = self._measure_overhead(
            max(2, _param_number(self.params, "overhead_reps", 20001, int)))
        self.startup = self._accept() if layout.accepted else None

    def _accept(self) -> dict:
        """layout.accepted: the guest accepted its memory before the workload (as the
        simulator's start-up): one guest private write of every memslot, timed, reported
        apart (metadata startup) and in no figure or breakdown of the run."""
        from bench.ops import OP_DTYPE, OpKind
        ops = np.zeros(len(self.layout.memslots), OP_DTYPE)
        for i, m in enumerate(self.layout.memslots):
            ops[i] = (-1, OpKind.PRIVATE_WRITE, i, 0, m.size, 0, 0)
        steps = self.scale_steps(self.strategy.compile(ops, self.layout))
        res = self._run_mapping_faithful(steps)
        if (res["status"] != 0).any():
            i = int(np.flatnonzero(res["status"] != 0)[0])
            raise InputError(f"host backend: the start-up accept of memslot {int(steps['slot'][i])} "
                             f"failed (status {int(res['status'][i])})")
        ns = int(res["ns"].sum())
        return {"ns": ns, "accept_ns": ns, "accepted_bytes": int(sum(self.slot_sizes)),
                "note": "measured: a guest private write of every memslot before the run"}

    def _plan_scale(self) -> None:
        """Same scale for both strategies: size for the larger (dual: gmem + shared copy)."""
        share = _param_number(self.params, "guard_share", GUARD_SHARE)
        if not 0 < share <= 1:
            raise InputError(f"host backend parameter guard_share: {share} is not in (0, 1]")
        max_scale = _param_number(self.params, "max_scale", MAX_SCALE, int)
        # the caller may state the figure (tests: MemAvailable moves while others run)
        given = self.params.get("mem_available")
        self.mem_available = (_param_size(self.params, "mem_available", 0) if given is not None
                              else mem_available())
        if self.mem_available <= 0:
            raise InputError("host backend parameter mem_available: must be > 0")
        allowed = int(self.mem_available * share)
        need = 2 * self.layout.guest_size
        scale = 1
        while need // scale > allowed:
            scale *= 2
        if scale > max_scale:
            raise InputError(f"host backend: workload needs {need >> 20} MiB (guest memory x2 "
                             f"for gmem + shared copy); the guard allows {allowed >> 20} MiB "
                             f"({share:.0%} of MemAvailable) and scaling down by more than "
                             f"{max_scale} is refused")
        self.scale = scale
        self.slot_sizes = [_round_up(max(m.size // scale, SIZE_2M), SIZE_2M)
                           for m in self.layout.memslots]
        if scale > 1:
            self.labels.append(f"workload scaled down by {scale} to fit {share:.0%} of "
                               f"MemAvailable: offsets and sizes divided, 4K granularity")

    def _warm_up(self, nbytes: int) -> None:
        """Touch fresh memory once so lazy guest-physical init does not land in measurements."""
        self.warmup_bytes = nbytes
        if nbytes <= 0:
            return
        self._kvm.touch_fresh_memory(min(nbytes, int(self.mem_available * 0.25)))

    def _map_aligned(self, size: int, prot: int, flags: int, fd: int = -1) -> int:
        """Anonymous or file mapping whose start is 2M aligned (so THP can map it by PMD)."""
        kvm = self._kvm
        if flags & kvm.MAP_HUGETLB:      # hugetlb mappings are aligned by the kernel
            addr = kvm.mmap(size, prot, flags, fd)
            self._maps.append((addr, size))
            return addr
        # reserve an aligned window, then map the object at its aligned start (MAP_FIXED)
        span = size + SIZE_2M
        res = kvm.mmap(span, 0, kvm.MAP_PRIVATE | kvm.MAP_ANONYMOUS | kvm.MAP_NORESERVE)
        start = _round_up(res, SIZE_2M)
        if start > res:
            kvm.munmap(res, start - res)
        tail = res + span - (start + size)
        if tail:
            kvm.munmap(start + size, tail)
        err = self._ffi.new("int *")
        p = self._lib.gm_mmap(self._ffi.cast("void *", start), size, prot, flags | 0x10, fd, 0, err)
        if p == self._ffi.NULL:
            kvm.munmap(start, size)
            raise OSError(err[0], f"mmap: {os.strerror(err[0])}")
        self._maps.append((start, size))
        return start

    def _setup_slot(self, i: int, gpa: int, size: int) -> None:
        kvm, ffi = self._kvm, self._ffi
        layout, strat = self.layout, self.strategy
        rw = kvm.PROT_READ | kvm.PROT_WRITE
        flags = strat.gmem_flags(layout)
        dual = bool(getattr(strat, "needs_shared_backing", False))
        if dual:
            if i == 0:
                self.labels.append("dual: private guest_memfd created MMAP|INIT_SHARED so the "
                                   "host can copy; host access to it is reported as a fault")
            flags |= kvm.GUEST_MEMFD_FLAG_MMAP | kvm.GUEST_MEMFD_FLAG_INIT_SHARED
        elif not self.attrs2_native:
            if i == 0 and not flags & kvm.GUEST_MEMFD_FLAG_INIT_SHARED:
                self.labels.append("in-place: guest_memfd created INIT_SHARED (no in-place "
                                   "ioctl here); initial private state emulated per page")
            flags |= kvm.GUEST_MEMFD_FLAG_INIT_SHARED
        gmem = kvm.kvm_create_guest_memfd(self.vm_fd, size, flags)
        self._fds.append(gmem)
        gmem_base = self._map_aligned(size, rw, kvm.MAP_SHARED, gmem)
        shared_fd, shared_base = -1, 0
        if dual:
            shared_fd, shared_base = self._shared_backing(size)
        # The memslot's userspace address is the shared memory: the gmem mapping itself for
        # in-place (v8 in-place memslots), the separate backing for dual.
        uaddr = shared_base if dual else gmem_base
        kvm.kvm_set_user_memory_region2(self.vm_fd, i, kvm.KVM_MEM_GUEST_MEMFD, gpa, size,
                                        uaddr, gmem, 0)
        npages = size // PAGE_SIZE
        attrs = ffi.new("uint8_t[]", npages)
        if not layout.init_shared:
            ffi.memmove(attrs, b"\x01" * npages, npages)
        self._attrs_bufs.append(attrs)
        s = self._c_slots[i]
        s.gmem_fd, s.shared_fd = gmem, shared_fd
        s.gmem_base = ffi.cast("uint8_t *", gmem_base)
        s.shared_base = ffi.cast("uint8_t *", shared_base)
        s.size, s.gpa, s.attrs = size, gpa, attrs
        s.gmem_host_blocked = int(dual)
        if not dual and not self.attrs2_native and layout.platform != "preserve":
            # the emulated TDX zeroing / SNP scramble writes through a mapping that stands in
            # for the kernel's direct map (see helper.h); its PTEs fault in once per page
            alias = self._map_aligned(size, rw, kvm.MAP_SHARED, gmem)
            s.gmem_alias = ffi.cast("uint8_t *", alias)
            if i == 0:
                self.labels.append(f"in-place, platform {layout.platform}: to-shared content "
                                   "effect emulated by writing allocated pages through a second "
                                   "mapping of the guest_memfd (the kernel's direct map stand-in)")
        self._slots_meta.append({"gpa": gpa, "size": size, "gmem_flags": flags,
                                 "gmem_base": gmem_base, "shared_base": shared_base,
                                 "shared_fd": shared_fd, "gmem_fd": gmem})

    def _shared_backing(self, size: int) -> tuple[int, int]:
        kvm, layout = self._kvm, self.layout
        rw = kvm.PROT_READ | kvm.PROT_WRITE
        page, backing = layout.shared_page, layout.shared_backing
        if page == "hugetlb":
            free = sysfs.ensure_hugepages(self.settings, size // SIZE_2M +
                                          self._hugetlb_claimed())
            if free < size // SIZE_2M:
                raise InputError(f"host backend: only {free} free 2M hugetlb pages, "
                                 f"need {size // SIZE_2M}")
            self._hugetlb_used = self._hugetlb_claimed() + size // SIZE_2M
            if backing == "memfd":
                fd = os.memfd_create("gmembench-shared", kvm.MFD_CLOEXEC | kvm.MFD_HUGETLB |
                                     kvm.MFD_HUGE_2MB)
                self._fds.append(fd)
                os.ftruncate(fd, size)
                return fd, self._map_aligned(size, rw, kvm.MAP_SHARED, fd)
            return -1, self._map_aligned(size, rw, kvm.MAP_PRIVATE | kvm.MAP_ANONYMOUS |
                                         kvm.MAP_HUGETLB | kvm.MAP_HUGE_2MB)
        if page == "thp":
            if sysfs.read_setting(sysfs.THP_ENABLED) == "never":
                self.settings.set(sysfs.THP_ENABLED, "madvise")
            if backing == "memfd" and sysfs.read_setting(sysfs.THP_SHMEM_ENABLED) in ("never", "deny"):
                self.settings.set(sysfs.THP_SHMEM_ENABLED, "advise")
        if backing == "memfd":
            fd = os.memfd_create("gmembench-shared", kvm.MFD_CLOEXEC)
            self._fds.append(fd)
            os.ftruncate(fd, size)
            addr = self._map_aligned(size, rw, kvm.MAP_SHARED, fd)
        else:
            fd = -1
            addr = self._map_aligned(size, rw, kvm.MAP_PRIVATE | kvm.MAP_ANONYMOUS |
                                     kvm.MAP_NORESERVE)
        kvm.madvise(addr, size, kvm.MADV_HUGEPAGE if page == "thp" else kvm.MADV_NOHUGEPAGE)
        return fd, addr

    def _hugetlb_claimed(self) -> int:
        return getattr(self, "_hugetlb_used", 0)

    def _measure_overhead(self, reps: int) -> dict:
        """What the harness adds to a measured step: the same ioctl through gm_execute and in
        a bare C loop (bench/host/overhead.py); and, for reference, NOP steps = the clock
        pair alone, which is in both."""
        from bench.host import overhead
        steps = np.zeros(reps, dtype=STEP_DTYPE)
        steps["op"] = np.arange(reps)
        res = self._run(steps)
        ns = res["ns"][1:].astype(np.float64)        # first one discarded (cold path)
        out = {"overhead_ns": None}
        if self._attrs_bufs:        # needs a memslot
            steps = overhead.same_attr_steps(1000, self._attrs_bufs[0][0])   # no state change
            out = overhead.measure(self._lib, self._ffi, self._ctx, steps, pairs=max(
                1, _param_number(self.params, "overhead_pairs", 10, int)))
        out.update({"nop_median_ns": float(np.median(ns)),
                    "nop_p10_ns": float(np.percentile(ns, 10)),
                    "nop_p90_ns": float(np.percentile(ns, 90)), "nop_reps": int(len(ns))})
        return out

    # ---- Target protocol ----

    def _run(self, steps: np.ndarray) -> np.ndarray:
        steps = np.ascontiguousarray(steps, dtype=STEP_DTYPE)
        res = np.zeros(len(steps), dtype=RESULT_DTYPE)
        if len(steps):
            rc = self._lib.gm_execute(self._ctx, self._ffi.from_buffer(steps),
                                      self._ffi.from_buffer(res), len(steps))
            if rc < 0:
                raise OSError(-rc, "gm_execute: " + os.strerror(-rc))
        return res

    # ---- host mappings a real VMM would not have ----
    #
    # The host emulates guest accesses with accesses through its own mapping of the
    # guest_memfd, and dual backing's copy reads and writes the guest_memfd through that
    # mapping too.  A real guest reaches its memory through stage-2, and the kernel copies
    # through its direct map: neither leaves host user PTEs on the guest_memfd.  Left in
    # place, those PTEs would make the next punch a "mapped" punch and the next copy fault-free
    # for reasons of the emulation alone.  So, outside the timed window:
    #   - after a guest access to the guest_memfd, or a copy into it, its host PTEs are
    #     zapped (content kept);
    #   - before a dual-backing punch of the guest_memfd, its host PTEs are zapped;
    #   - before a copy out of the guest_memfd, its allocated pages are mapped (the direct map
    #     needs no fault), holes are left alone (a fault there would allocate).
    # The steps run in segments between these points; an op whose conversion failed earlier
    # in another segment has its remaining steps skipped, as gm_execute does within one.

    def _mapping_points(self, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        code, obj, via = steps["code"], steps["obj"], steps["via"]
        gmem = obj == Obj.GMEM
        guest_touch = gmem & np.isin(via, (Via.GUEST, Via.GUEST_SHARED)) & \
            ((code == Step.WRITE) | (code == Step.READ))
        dual = bool(getattr(self.strategy, "needs_shared_backing", False))
        punch = (code == Step.GMEM_PUNCH) if dual else np.zeros(len(steps), bool)
        copy_out = (code == Step.COPY) & (obj == Obj.SHARED)
        # a copy into the guest_memfd also writes through the host mapping
        leaves_ptes = guest_touch | ((code == Step.COPY) & gmem)
        return leaves_ptes, punch, copy_out

    def _run_mapping_faithful(self, steps: np.ndarray) -> np.ndarray:
        leaves_ptes, punch, copy_out = self._mapping_points(steps)
        before = np.flatnonzero(punch | copy_out)
        after = np.flatnonzero(leaves_ptes) + 1
        if not len(before) and not len(after):
            return self._run(steps)
        cuts = np.unique(np.concatenate(([0, len(steps)], before, after)))
        res = np.zeros(len(steps), dtype=RESULT_DTYPE)
        failed_op = -1
        for a, b in zip(cuts[:-1], cuts[1:]):
            a, b = int(a), int(b)
            if a == b:
                continue
            # the steps of an op are contiguous: a failed op's rest is a prefix here
            while a < b and int(steps["op"][a]) == failed_op:
                res["status"][a] = SKIPPED
                a += 1
            if a == b:
                continue
            if punch[a] or copy_out[a]:
                self._prepare_gmem(steps[a], prefault=bool(copy_out[a]))
            res[a:b] = self._run(steps[a:b])
            bad = np.flatnonzero((res["status"][a:b] != 0) & (res["status"][a:b] != SKIPPED) &
                                 ((steps["flags"][a:b] & STEP_ABORT_ON_FAIL) != 0))
            if len(bad):
                failed_op = int(steps["op"][a + int(bad[-1])])
            if leaves_ptes[b - 1] and res["status"][b - 1] == 0:
                self._zap_gmem(steps[b - 1])
        return res

    def _gmem_range(self, st) -> tuple[int, int] | None:
        slot, off, size = int(st["slot"]), int(st["offset"]), int(st["size"])
        if slot >= len(self._slots_meta) or size == 0:
            return None
        m = self._slots_meta[slot]
        if off + size > m["size"] or (off | size) % PAGE_SIZE:
            return None           # the step itself reports the error
        return m["gmem_base"] + off, size

    def _zap_gmem(self, st) -> None:
        r = self._gmem_range(st)
        if r:
            self._kvm.madvise(r[0], r[1], self._kvm.MADV_DONTNEED)   # zap only, content kept

    def _prepare_gmem(self, st, prefault: bool) -> None:
        r = self._gmem_range(st)
        if not r:
            return
        addr, size = r
        if not prefault:
            self._kvm.madvise(addr, size, self._kvm.MADV_DONTNEED)
            return
        present = mincore_vector(addr, size)
        for start, n in _true_runs(present):
            self._kvm.touch_pages(addr + start * PAGE_SIZE, n * PAGE_SIZE, write=False)

    def scale_steps(self, steps: np.ndarray) -> np.ndarray:
        """Offsets and sizes divided by the scale, widened to whole 4K pages."""
        if self.scale == 1:
            return steps
        out = steps.copy()
        start = (steps["offset"] // self.scale) // PAGE_SIZE * PAGE_SIZE
        end = -(-((steps["offset"] + steps["size"]) // self.scale) // PAGE_SIZE) * PAGE_SIZE
        size = np.where(steps["size"] > 0, np.maximum(end - start, PAGE_SIZE), 0)
        # a request invalid at full size stays invalid scaled (it is measured as a failure):
        # its misalignment is kept, and a range past its memslot's end still ends past it
        page = np.uint64(PAGE_SIZE)
        out["offset"] = start + steps["offset"] % page
        size = size + np.where(steps["size"] > 0, steps["size"] % page, 0).astype(size.dtype)
        full = np.asarray([m.size for m in self.layout.memslots] + [0], dtype=np.uint64)
        scaled = np.asarray(list(self.slot_sizes) + [0], dtype=np.uint64)
        slot = np.minimum(steps["slot"].astype(np.int64), len(full) - 1)
        past = steps["offset"] + steps["size"] > full[slot]
        out["size"] = np.where(past & (out["offset"] < scaled[slot]),
                               np.maximum(size, scaled[slot] - out["offset"] + page), size)
        return out

    def execute(self, steps: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("HostTarget is closed")
        steps = self.scale_steps(np.asarray(steps, dtype=STEP_DTYPE))
        if steps["proc"].any():
            i = int(np.flatnonzero(steps["proc"])[0])
            raise InputError(f"step {i}: host process {int(steps['proc'][i])}: the host backend "
                             f"touches guest memory from the VMM process (0) only")
        res = self._run_mapping_faithful(steps)
        ran = res["status"] != SKIPPED
        codes = steps["code"][ran].astype(np.int64)
        self._bd_count += np.bincount(codes, minlength=len(Step))[:len(Step)]
        self._bd_ns += np.bincount(codes, weights=res["ns"][ran],
                                   minlength=len(Step))[:len(Step)].astype(np.int64)
        self._bd_sigbus += int((res["status"] == SIGBUS_STATUS).sum())
        self._bd_skipped += int((~ran).sum())
        return res

    def snapshot(self, detail: bool | None = None) -> dict:
        """Memory state read from the kernel.  The light form (default) reads only this
        guest's ranges: mincore, fstat, pagemap + kpageflags, /proc/vmstat, buddyinfo.  The
        detailed form (detail=True, or param snapshot_detail=yes) also reads /proc/self/smaps,
        whose generation walks every page table of the process: it takes ~2-10 ms and
        leaves caches and TLB cold, which made the conversions timed right after each
        snapshot 2-4x slower (the runner snapshots 200 times per repetition)."""
        if detail is None:
            detail = _param_bool(self.params, "snapshot_detail", False)
        kvm = self._kvm
        gmem_bytes = shared_bytes = 0
        anon_ranges, huge_ranges = [], []
        for m in self._slots_meta:
            gmem_bytes += kvm.mincore_resident(m["gmem_base"], m["size"]) * PAGE_SIZE
            huge_ranges.append((m["gmem_base"], m["size"]))
            if m["shared_base"]:
                huge_ranges.append((m["shared_base"], m["size"]))
                if m["shared_fd"] >= 0:
                    shared_bytes += os.fstat(m["shared_fd"]).st_blocks * 512
                else:
                    anon_ranges.append((m["shared_base"], m["size"]))
        folios = None
        if _param_bool(self.params, "kpageflags", True):
            counts = [count_huge_folios(a, n) for a, n in huge_ranges]
            folios = None if any(c is None for c in counts) else sum(counts)
        smaps = None
        if detail or folios is None:
            smaps = read_smaps(huge_ranges)
            if anon_ranges:
                a = read_smaps(anon_ranges)
                shared_bytes += a["Rss"] + a["Private_Hugetlb"] + a["Shared_Hugetlb"]
            # huge_bytes: PMD-mapped huge memory.  A 4K hole in an anon THP drops its PMD
            # (thp_split_pmd) and the folio waits for a deferred split; in a shmem THP it
            # splits the folio at once (thp_split_page).  Count the event that happens at once.
            huge = (smaps["AnonHugePages"] + smaps["ShmemPmdMapped"] + smaps["FilePmdMapped"]
                    + smaps["Private_Hugetlb"] + smaps["Shared_Hugetlb"])
        else:
            # resident pages of the anonymous ranges (= their Rss: no swap here), and intact
            # huge folios from pagemap + kpageflags (a THP with a hole is not intact)
            shared_bytes += sum(int(mincore_vector(a, n).sum()) for a, n in anon_ranges) * PAGE_SIZE
            huge = folios * SIZE_2M
        vm = read_vmstat()
        d = {k: vm[k] - self._vmstat0[k] for k in vm}
        # The counters are system-wide: only memory that can hold THPs (a THP shared backing;
        # guest_memfd folios are 4K here) takes them, so other processes' splits do not
        # land in runs that have none.
        thp = self.layout.shared_page == "thp" and any(m["shared_base"] for m in self._slots_meta)
        if not thp:
            splits = merges = 0
        elif self.layout.shared_backing == "anon":
            splits, merges = d["thp_split_pmd"], d["thp_collapse_alloc"]
        else:
            splits, merges = d["thp_split_page"], d["thp_collapse_alloc"]
        nr_free = read_nr_free()
        snap = {
            "footprint_bytes": int((gmem_bytes + shared_bytes) * self.scale),
            "huge_bytes": int(huge * self.scale),
            "huge_splits": int(splits),
            "huge_merges": int(merges),
            "nr_free": nr_free,
            "t_ns": int(time.monotonic_ns()),
            # raw kernel figures at the run's scale (not multiplied back)
            "gmem_bytes": int(gmem_bytes),
            "shared_bytes": int(shared_bytes),
            "scale": self.scale,
            "vmstat_delta": d,
            # intact 2M folios mapped, from pagemap + kpageflags (None: not readable)
            "huge_folios_mapped": folios,
        }
        if smaps is not None:
            snap["smaps"] = smaps
        # the huge-page measures the results carry (bench/metrics.py): what the kernel
        # shows this process; stage 2 is KVM's and its page counts are per VM in debugfs
        # (pages_4k/2m/1g), not readable for one memslot of a VM here
        possible = sum(m["size"] // SIZE_2M for m in self._slots_meta
                       if m["shared_base"] and self.layout.shared_page in ("thp", "hugetlb"))
        snap["stage2_bytes"] = None
        snap["intact_huge_folios"] = None if folios is None else int(folios * self.scale)
        snap["huge_folios_possible"] = int(possible * self.scale)
        if thp:
            snap["mapping_demotions"] = int(d["thp_split_pmd"])
            snap["folio_splits"] = int(d["thp_split_page"])
            snap["folio_merges"] = int(d["thp_collapse_alloc"])
        else:
            snap["mapping_demotions"] = snap["folio_splits"] = snap["folio_merges"] = 0
        snap["not_measurable"] = {
            "stage2_huge_share": "not measurable on this host: KVM counts stage-2 pages per VM "
                                 "(debugfs pages_4k/2m/1g), not per memslot, and guest_memfd "
                                 "folios are 4K here",
            "host_pmd_mapped_share": "read once at the end of the run (smaps perturbs timing)"}
        return snap

    def final_state(self) -> dict:
        """End-of-run host memory facts, read after the last timed step: free blocks per
        zone (/proc/buddyinfo), pageblock migratetype labels (/proc/pagetypeinfo), shared
        memory PMD-mapped (smaps ShmemPmdMapped + AnonHugePages), and how many 2M / 1G pages
        could still be allocated (hugetlb pools grown, then restored)."""
        from bench.fragmentation import parse_pagetypeinfo, read_buddyinfo
        out: dict = {"notes": {}}
        try:
            out["zones"] = read_buddyinfo("/proc/buddyinfo")
        except InputError as e:
            out["zones"], out["notes"]["zones"] = {}, str(e)
        try:
            with open("/proc/pagetypeinfo", encoding="ascii") as f:
                out["pageblocks"] = parse_pagetypeinfo(f.read())
            out["notes"]["pageblocks"] = ("migratetype labels per zone (/proc/pagetypeinfo); "
                                          "pageblocks mixing unmovable and movable pages "
                                          "need page_owner to count")
        except (OSError, InputError) as e:
            out["pageblocks"], out["notes"]["pageblocks"] = None, f"not readable: {e}"
        shared = [(m["shared_base"], m["size"]) for m in self._slots_meta if m["shared_base"]]
        gmem = [(m["gmem_base"], m["size"]) for m in self._slots_meta]
        sm = read_smaps(shared + gmem)
        out["host_pmd_mapped_bytes"] = int((sm["ShmemPmdMapped"] + sm["AnonHugePages"]
                                            + sm["FilePmdMapped"]) * self.scale)
        if _param_bool(self.params, "allocatable_probe", True):
            out["allocatable_huge"], note = sysfs.allocatable_huge_pages(
                cap_bytes=min(self.layout.guest_size // self.scale, self.mem_available // 4))
            out["notes"]["allocatable_huge"] = note
        else:
            out["allocatable_huge"] = None
            out["notes"]["allocatable_huge"] = "not probed (allocatable_probe=no)"
        return out

    def _fidelity_table(self, probe_mod) -> dict:
        name = "dual" if getattr(self.strategy, "needs_shared_backing", False) else "in-place"
        return {k: v["fidelity"] for k, v in self.probe["steps"][name].items()}

    def fidelity(self) -> dict[str, str]:
        fid = dict(self._fidelity)
        if self.layout.gmem_page_size != PAGE_SIZE:
            fid["gmem_huge_folios"] = "unavailable"     # ran with 4K folios (see metadata)
        return fid

    def breakdown(self) -> dict[str, dict]:
        out = {}
        for s in Step:
            if self._bd_count[s]:
                out[s.name] = {"count": int(self._bd_count[s]), "ns": int(self._bd_ns[s])}
        return out

    def metadata(self) -> dict:
        from bench.host.probe import summary
        return {
            "backend": "host",
            "harness_overhead": self.harness,
            # harness - bare for the same ioctl (not the NOP figure: that is the clock pair)
            "harness_overhead_ns": self.harness["overhead_ns"],
            "scale": self.scale,
            # > 1 only when a regression gate is being tested: a delay was injected
            "slowdown": float(self.params.get("slowdown", 1.0)),
            # which conversions carry the delay: both, to_shared or to_private
            "slowdown_direction": self.slowdown_direction,
            "guard_share": _param_number(self.params, "guard_share", GUARD_SHARE),
            "mem_available_bytes": self.mem_available,
            "warmup_bytes": self.warmup_bytes,
            "slot_sizes": list(self.slot_sizes),
            "gmem_flags": [m["gmem_flags"] for m in self._slots_meta],
            "emulation": list(self.labels),
            "fidelity": self.fidelity(),
            "settings_changed": dict(self.settings.changed),
            "sigbus_steps": self._bd_sigbus,
            "skipped_steps": self._bd_skipped,
            **({"startup": self.startup} if getattr(self, "startup", None) else {}),
            "probe": summary(self.probe),
            "clock": ("CLOCK_MONOTONIC, two reads around each step's primitive; "
                      "harness_overhead_ns: what gm_execute adds over a bare loop timing "
                      "the same ioctl with the same clock pair"),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if getattr(self, "_ctx", None) is not None:
                self._lib.gm_unpin_all(self._ctx)
            self._kvm.release(self._maps, self._fds)
        finally:
            try:
                self.settings.close()
            finally:
                host, self._host = getattr(self, "_host", None), None
                if host is not None:
                    host.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
