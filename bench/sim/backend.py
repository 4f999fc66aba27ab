"""SimTarget: executes strategy steps on the model, charging the cost model.

A step's latency is the sum of the primitives the model performed for it (Ledger), so
every number in a simulated result can be listed by its parts (breakdown()).
"""
import errno
import time

import numpy as np

from bench.costs import load_profile
from bench.errors import InputError
from bench.fragmentation import indices
from bench.ops import (KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, PAGE_SIZE, RESULT_DTYPE,
                       SIGBUS_STATUS, SKIPPED, STEP_ABORT_ON_FAIL, STEP_CONVERSION, Obj, Step,
                       Via)
from bench.sim.buddy import OutOfMemory
from bench.sim.model import (GuestMemfd, Host, Ledger, PLATFORM_VM_TYPE, SHARED, SIGBUS,
                             SharedBacking, VM, pin_pages)

GiB = 1 << 30
ORDER_OF = {PAGE_SIZE: 0, 2 << 20: 9, 1 << 30: 18}
TDX_MAP_GPA_MAX_LEN = 2 << 20   # KVM hands a TDX MapGPA to userspace in 2 MiB chunks
STEP_NS_MAX = 1e12      # a step's charge saturates here (the profile's bound on one value)


def parse_size(v, what: str) -> int:
    if isinstance(v, int):
        return v
    s = str(v).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if s and s[-1] in mult:
            return int(float(s[:-1]) * mult[s[-1]])
        return int(s)
    except ValueError:
        raise InputError(f"{what}: {v!r} is not a size (expected e.g. 4096, 64M, 2G)")


def model_parameters(layout, params: dict) -> tuple[int, int]:
    """Check a layout and the model parameters against what the model can build:
    returns (guest_memfd folio order, host memory bytes).  Both engines call this."""
    order = ORDER_OF.get(layout.gmem_page_size)
    if order is None:
        raise InputError(f"gmem_page_size {layout.gmem_page_size} is not 4K, 2M or 1G")
    guest = layout.guest_size
    default_host = max(16 * GiB, (2 * guest + 2 * GiB + GiB - 1) // GiB * GiB)
    host_bytes = parse_size(params.get("host_memory", default_host), "host_memory")
    if host_bytes % PAGE_SIZE:
        raise InputError(f"host_memory {host_bytes} is not a multiple of 4096")
    if order == 18 and host_bytes < GiB:
        raise InputError("host_memory is smaller than one 1G folio")
    for i, m in enumerate(layout.memslots):
        if m.size % layout.gmem_page_size or m.size == 0:
            raise InputError(f"memslot {i}: size {m.size} is not a positive multiple of the "
                             f"guest_memfd page size {layout.gmem_page_size}")
        if m.gpa % PAGE_SIZE:
            raise InputError(f"memslot {i}: gpa {m.gpa:#x} is not 4K aligned")
    return order, host_bytes


def startup_record(total_ns: float, vmm_ns: float, breakdown: dict, layout) -> dict:
    """The start-up as both engines report it (metadata "startup", apart from the run):
    its time and primitives, split into the VMM's part and the guest's accept."""
    return {"ns": int(round(total_ns)), "breakdown": breakdown,
            "vmm_ns": int(round(vmm_ns)), "accept_ns": int(round(total_ns - vmm_ns)),
            "accepted_bytes": layout.guest_size if layout.accepted else 0}


def huge_mode(strategy) -> str:
    """in-place.huge: "split" (the HugeTLB guest_memfd design, default) or "demote"."""
    return strategy.huge_mode() if hasattr(strategy, "huge_mode") else "split"


class SimTarget:
    backend = "sim"

    def __init__(self, layout, strategy, params: dict | None = None):
        params = dict(params or {})
        self.layout, self.strategy, self.params = layout, strategy, params
        self.profile = params.get("_profile") or load_profile(params.get("profile"))
        self.ledger = Ledger(self.profile)
        order, host_bytes = model_parameters(layout, params)
        rng = np.random.default_rng(int(params.get("seed", 0)))
        self.host = Host(host_bytes // PAGE_SIZE, self.ledger, rng,
                         float(params.get("prefragment", 0.0)))
        in_place = strategy.name == "in-place"
        self.vm = VM(PLATFORM_VM_TYPE[layout.platform], self.ledger, in_place=in_place,
                     vcpus=layout.vcpus)
        flags = strategy.gmem_flags(layout)
        promote = bool(strategy.options.get("promote", layout.platform != "zero"))
        initial = SHARED if layout.init_shared else PRIVATE
        self.gmem: list[GuestMemfd] = []
        self.shared: list[SharedBacking | None] = []
        try:
            for m in layout.memslots:
                g = GuestMemfd(self.host, self.vm, m.size, flags, order, layout.platform, promote,
                               huge_mode(strategy), layout.tdx_private_2m)
                # the VM's attribute xarray starts empty (shared); start-up marks it private
                self.vm.add_slot(g, initial if in_place else SHARED)
                if not in_place:
                    g.attr_view = self.vm.slot_attrs[-1]
                self.gmem.append(g)
                sh = None
                if strategy.needs_shared_backing:
                    sh = SharedBacking(self.host, m.size // PAGE_SIZE, layout.shared_backing,
                                       layout.shared_page, self.vm.slot_attrs[-1])
                    self.vm.attach_shared(len(self.gmem) - 1, sh)
                self.shared.append(sh)
        except OutOfMemory as e:
            raise InputError(f"host_memory {host_bytes} too small for this layout: {e}")
        self.startup = self._start_up(in_place, initial)
        self.wall_s = 0.0
        self._proc = 0             # host process of the step being executed
        self.saturated = 0               # steps whose charge was cut at STEP_NS_MAX
        self._arrivals, self._last_op = [], -1
        self._conv = None          # the last conversion request: (op, slot, attrs, end, size)
        self._dispatch = {
            Step.NOP: lambda *a: (0, 0),
            Step.GMEM_SET_ATTRS: self._set_attrs2,
            Step.VM_SET_ATTRS: self._vm_set_attrs,
            Step.GMEM_PUNCH: self._punch,
            Step.SHARED_DISCARD: self._discard,
            Step.COPY: self._copy,
            Step.WRITE: self._write,
            Step.READ: self._read,
            Step.PIN: self._pin,
            Step.UNPIN: self._unpin,
        }

    def _start_up(self, in_place: bool, initial: int) -> dict:
        """What the VMM does before the guest runs, charged and then taken off the ledger
        (reported apart from the workload): dual - QEMU marks all guest RAM private with
        KVM_SET_MEMORY_ATTRIBUTES (kvm_set_memory_attributes_private per memslot: one xarray
        store per 4K page); in-place - each guest_memfd's attributes start as one range.
        Then, if the layout says the guest accepted its memory, the guest's accept of it."""
        led = self.ledger
        for i, g in enumerate(self.gmem):
            if in_place:
                led.op("attr_update")
            elif initial == PRIVATE:
                self.vm.set_memory_attributes(i, 0, g.size, PRIVATE)
        vmm_ns = sum(t for _, t in led.totals.values())
        if self.layout.accepted:
            # the guest accepted its memory before the workload (TDX/SNP: memblock and the
            # buddy allocator hand out accepted memory, accept_memory()): a guest private
            # write of every memslot allocates it in guest_memfd, prepares it (AUG/accept,
            # RMPUPDATE) and maps it in stage 2
            for g in self.gmem:
                try:
                    st, _ = g.access(0, g.npages, guest=True, write=True, token=0)
                except OutOfMemory as e:
                    raise InputError("host memory too small to accept the guest's memory") from e
                assert st == 0, st
        total = sum(t for _, t in led.totals.values())
        out = startup_record(total, vmm_ns, self.breakdown(), self.layout)
        led.totals, led.step_ns, led.clock_ns = {}, 0.0, 0.0
        return out

    # ---- steps ------------------------------------------------------------------------
    def _set_attrs2(self, slot, obj, via, offset, size, arg):
        ret, err_off = self.gmem[slot].set_memory_attributes2(offset, size, arg)
        return ret, err_off or 0

    def _vm_set_attrs(self, slot, obj, via, offset, size, arg):
        return self.vm.set_memory_attributes(slot, offset, size, arg), 0

    def _punch(self, slot, obj, via, offset, size, arg):
        return self.gmem[slot].fallocate_punch_hole(offset, size), 0

    def _discard(self, slot, obj, via, offset, size, arg):
        p0, p1 = offset >> 12, (offset + size) >> 12
        return self.shared[slot].discard(p0, p1), 0

    def _copy(self, slot, obj, via, offset, size, arg):
        """Copy the range to `obj` from the other object (only allocated source pages hold
        data; holes read as zeros and need no copy)."""
        p0, p1 = offset >> 12, (offset + size) >> 12
        g, s = self.gmem[slot], self.shared[slot]
        src, dst = (g, s) if obj == Obj.SHARED else (s, g)
        n = src.count_present(p0, p1) if p0 < p1 else 0
        if n:
            dst.populate(p0, p1)
            dst.data.copy_from(src.data, p0, p1)
            self.ledger.op("memcpy", n)
        return 0, n * PAGE_SIZE

    def _access(self, slot, obj, via, offset, size, arg, write):
        p0, p1 = offset >> 12, (offset + size) >> 12
        if obj == Obj.SHARED:
            st, mism = self._access_shared(slot, via, p0, p1, arg, write)
        else:
            st, mism = self.gmem[slot].access(p0, p1, via != Via.HOST, write, arg, self._proc,
                                              shared=via == Via.GUEST_SHARED)
        return (SIGBUS_STATUS if st == SIGBUS else st), mism

    def _access_shared(self, slot, via, p0, p1, arg, write):
        """Dual backing's shared memory.  The VMM reaches every GPA through it, so a host
        touch of a GPA that is private now does not fault: it allocates (or reads) a page
        of the shared backing there, memory the guest cannot use (counted)."""
        attrs = self.vm.slot_attrs[slot]
        sh = self.shared[slot]
        if via == Via.GUEST:
            return errno.EFAULT, 0          # a private access never maps the shared backing
        if via == Via.GUEST_SHARED:
            if not attrs.is_uniform(p0, p1, SHARED):
                return errno.EFAULT, 0      # KVM_EXIT_MEMORY_FAULT
            return sh.guest_access(p0, p1, write, arg, self.gmem[slot])
        st, mism = sh.access(p0, p1, write, arg, self._proc)
        if st == 0:
            self.host.private_host_touch_pages += sum(
                b - a for a, b, v in attrs.segments(p0, p1) if v == PRIVATE)
        return st, mism

    def _write(self, *a):
        return self._access(*a, write=True)

    def _read(self, *a):
        return self._access(*a, write=False)

    def _pin(self, slot, obj, via, offset, size, arg):
        target = self.gmem[slot] if obj == Obj.GMEM else self.shared[slot]
        p0, p1 = offset >> 12, (offset + size) >> 12
        if obj == Obj.GMEM:
            target.populate(p0, p1)     # GUP faults the pages in
        return target.pin(p0, p1, +1) if hasattr(target, "pin") else self._pin_shared(target, p0, p1, 1), 0

    def _unpin(self, slot, obj, via, offset, size, arg):
        target = self.gmem[slot] if obj == Obj.GMEM else self.shared[slot]
        p0, p1 = offset >> 12, (offset + size) >> 12
        return target.pin(p0, p1, -1) if hasattr(target, "pin") else self._pin_shared(target, p0, p1, -1), 0

    @staticmethod
    def _pin_shared(target, p0, p1, delta):
        # dual backing: the VM ioctl has no pin check, so a pin only holds a reference
        return pin_pages(target.pins, p0, p1, delta)

    # ---- Target interface -------------------------------------------------------------
    @property
    def clock_ns(self) -> int:
        """Simulated time now (ns): ops advance it to their arrival, work adds its cost."""
        return int(self.ledger.clock_ns)

    def set_arrivals(self, t_ns: np.ndarray) -> None:
        """Arrival time of every op (ns, -1 = untimed) of the steps executed from now on."""
        self._arrivals = np.asarray(t_ns, dtype=np.int64).tolist()
        self._last_op = -1
        self._conv = None

    def execute(self, steps: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        n = len(steps)
        out = np.zeros(n, dtype=RESULT_DTYPE)
        status, ns, aux = [0] * n, [0] * n, [0] * n
        cols = (steps["code"].tolist(), steps["slot"].tolist(), steps["obj"].tolist(),
                steps["via"].tolist(), steps["offset"].tolist(), steps["size"].tolist(),
                steps["arg"].tolist(), steps["flags"].tolist(), steps["op"].tolist(),
                steps["proc"].tolist())
        dispatch = [self._dispatch.get(Step(c)) for c in range(max(Step) + 1)]
        ledger = self.ledger
        failed_op = -1
        arrivals = self._arrivals
        for i, (code, slot, obj, via, off, size, arg, flags, op, proc) in enumerate(zip(*cols)):
            self._proc = proc
            if op != self._last_op:
                # an op arrives: the clock waits for it (idle time is not billed)
                self._last_op = op
                if op < len(arrivals) and arrivals[op] >= 0 and arrivals[op] > ledger.clock_ns:
                    ledger.clock_ns = float(arrivals[op])
            if op == failed_op:
                status[i] = SKIPPED
                continue
            ledger.step_ns = 0.0
            try:
                if code in (Step.GMEM_SET_ATTRS, Step.VM_SET_ATTRS) and flags & STEP_CONVERSION:
                    # the guest's request reaches the VMM the same way in both strategies;
                    # a TDX MapGPA chunk right after a full 2 MiB chunk of the same request
                    # continues it (tdx_complete_vmcall_map_gpa): no new TD exit
                    prev = self._conv
                    cont = (prev is not None and self.vm.plat == "tdx" and op == prev[0] + 1
                            and (slot, arg, off) == prev[1:4] and prev[4] == TDX_MAP_GPA_MAX_LEN)
                    self._conv = (op, slot, arg, off + size, size)
                    self.vm.conversion_request(size >> 12, cont)
                st, ax = dispatch[code](slot, obj, via, off, size, arg)
            except OutOfMemory:
                st, ax = errno.ENOMEM, 0
            if ledger.step_ns > STEP_NS_MAX:    # bounded, so sums stay far from int64
                ledger.clock_ns -= ledger.step_ns - STEP_NS_MAX
                ledger.step_ns = STEP_NS_MAX
                self.saturated += 1
            status[i], ns[i], aux[i] = st, int(round(ledger.step_ns)), ax
            if st and flags & STEP_ABORT_ON_FAIL:
                failed_op = op
        out["status"], out["ns"], out["aux"] = status, ns, aux
        self.wall_s += time.perf_counter() - t0
        return out

    def snapshot(self, recount: bool = False) -> dict:
        """The model's state now.  The huge-page measures come from counters kept as folios
        and mappings change (Host.st_*); recount=True computes them by a full scan of every
        page and folio instead (for tests: both must agree)."""
        h = self.host
        if recount:
            stage2, host_huge, intact, stale = self._recount()
        else:
            stage2 = {"4k": h.st_s2_4k_pages * PAGE_SIZE, **h.st_s2_huge_bytes}
            host_huge, intact, stale = h.st_host_huge_bytes, h.st_intact_folios, h.st_stale_pages
        possible = 0
        for g, s in zip(self.gmem, self.shared):
            possible += g.npages >> g.order if g.order else 0
            if s is not None:
                possible += len(s.chunk) if s.huge else 0
        return {
            "footprint_bytes": h.footprint_pages * PAGE_SIZE,
            "huge_bytes": min(h.huge_pages * PAGE_SIZE, self.layout.guest_size),
            "huge_splits": h.huge_splits,
            "huge_merges": h.huge_merges,
            "nr_free": h.buddy.nr_free(),
            "t_ns": int(self.ledger.clock_ns),
            "stage2_bytes": stage2,
            "host_pmd_mapped_bytes": host_huge,
            "intact_huge_folios": intact,
            "huge_folios_possible": possible,
            "mapping_demotions": h.mapping_demotions,
            "folio_splits": h.folio_splits,
            "folio_merges": h.folio_merges,
            "allocatable_huge": h.buddy.allocatable_huge(h.pool_blocks()),
            "private_host_touch_pages": h.private_host_touch_pages,
            "shared_at_private_bytes": stale * PAGE_SIZE,
        }

    def _recount(self) -> tuple[dict, int, int, int]:
        """The counted snapshot measures by a full scan: stage-2 bytes by leaf size, bytes
        mapped huge by the host, intact huge folios, shared pages at private GPAs."""
        stage2 = {"4k": 0, "2m": 0, "1g": 0}
        host_huge = intact = stale = 0
        for i, (g, s) in enumerate(zip(self.gmem, self.shared)):
            small, huge = g.stage2_bytes()
            stage2["4k"] += small
            if huge:
                stage2["2m" if g.order == 9 else "1g"] += huge
            host_huge += g.host_huge_mapped_bytes()
            intact += g.intact_folios()
            if s is not None:
                host_huge += s.host_huge_mapped_bytes()
                intact += s.intact_folios()
                stale += s.present_at(self.vm.slot_attrs[i], PRIVATE)
        return stage2, host_huge, intact, stale

    def fidelity(self) -> dict[str, str]:
        return {s.name: "simulated" for s in Step}

    def breakdown(self) -> dict[str, dict]:
        return {k: {"count": int(c), "ns": int(round(t))}
                for k, (c, t) in sorted(self.ledger.totals.items(), key=lambda kv: -kv[1][1])}

    def metadata(self) -> dict:
        b = self.host.buddy
        return {
            "model": {
                "host_memory_bytes": b.total_pages * PAGE_SIZE,
                "prefragment": float(self.params.get("prefragment", 0.0)),
                "pinned_by_aging_pages": self.host.pinned_by_aging,
                "vm_type": self.vm.vm_type,
                "gmem_folio_order": self.gmem[0].order if self.gmem else 0,
                "promote": self.gmem[0].promote if self.gmem else None,
                "huge": huge_mode(self.strategy),
            },
            "huge_fallbacks": self.host.huge_fallbacks,
            "pageblocks": b.pageblock_counts(),
            "fragmentation": indices(b.nr_free()),
            "engine": "python",
            "sim_wall_s": round(self.wall_s, 3),
            "saturated_steps": self.saturated,
            "startup": self.startup,
        }

    def close(self) -> None:
        self.gmem.clear()
        self.shared.clear()
