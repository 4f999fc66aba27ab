"""The two conversion strategies, as compilers from workload ops to kernel-level steps.

A workload cannot tell which strategy runs it, and a backend cannot tell either: each
strategy turns the same op array into the steps it would make the kernel do, and the
backend executes steps.  This is the one place where the strategies differ.

in-place  One MMAP guest_memfd per memslot; a conversion is KVM_SET_MEMORY_ATTRIBUTES2
          on it (v8 series).  Host and guest touch the same pages.
dual      Private guest_memfd + separate shared memory; a conversion is the VM ioctl
          KVM_SET_MEMORY_ATTRIBUTES followed by QEMU's discard: to-private discards the
          shared copy (skipped for hugetlb, assumed preallocated), to-shared punches the
          guest_memfd.  Options: copy contents before the discard (pKVM-style preserve),
          and keep both copies (no discard).
"""
from dataclasses import dataclass, field

import numpy as np

from bench.errors import InputError
from bench.ops import (KVM_MEMORY_ATTRIBUTE_PRIVATE as PRIVATE, MAX_HOST_PROCS,
                       STEP_ABORT_ON_FAIL, STEP_CONVERSION, STEP_DTYPE, NO_CHECK, Obj, OpKind,
                       Step, Via)

GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1

CONV = STEP_CONVERSION | STEP_ABORT_ON_FAIL
TOKEN = -1  # template marker: arg = the op's token


@dataclass
class Strategy:
    name: str = ""
    options: dict = field(default_factory=dict)

    needs_shared_backing = False

    def gmem_flags(self, layout) -> int:
        raise NotImplementedError

    def templates(self, layout) -> dict:
        """OpKind -> list of (Step, Obj, Via, flags, arg)."""
        raise NotImplementedError

    def compile(self, ops: np.ndarray, layout) -> np.ndarray:
        """Vectorised: every op of a kind expands to the same step template."""
        tmpl = self.templates(layout)
        counts = np.zeros(len(ops), dtype=np.int64)
        for kind, steps in tmpl.items():
            counts[ops["kind"] == kind] = len(steps)
        unknown = ~np.isin(ops["kind"], list(tmpl))
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise InputError(f"op {i}: kind {int(ops['kind'][i])} is not supported by {self.name}")
        bad_proc = ops["proc"] >= MAX_HOST_PROCS
        if bad_proc.any():
            i = int(np.flatnonzero(bad_proc)[0])
            raise InputError(f"op {i}: host process {int(ops['proc'][i])} out of range "
                             f"(0..{MAX_HOST_PROCS - 1})")
        out = np.zeros(int(counts.sum()), dtype=STEP_DTYPE)
        op_index = np.repeat(np.arange(len(ops), dtype=np.uint32), counts)
        first = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(ops) else counts
        pos = np.arange(len(out)) - np.repeat(first, counts)     # position within template
        src = ops[op_index]
        out["op"] = op_index
        out["slot"] = src["slot"]
        out["offset"] = src["offset"]
        out["size"] = src["size"]
        out["proc"] = src["proc"]
        for kind, steps in tmpl.items():
            is_kind = src["kind"] == kind
            for j, (code, obj, via, flags, arg) in enumerate(steps):
                m = is_kind & (pos == j)
                out["code"][m] = code
                out["obj"][m] = obj
                out["via"][m] = via
                out["flags"][m] = flags
                out["arg"][m] = src["token"][m] if arg == TOKEN else arg
        return out

    def describe(self) -> dict:
        return {"name": self.name, "options": dict(self.options)}


def _touch_templates(shared_obj: Obj) -> dict:
    return {
        OpKind.SHARED_WRITE: [(Step.WRITE, shared_obj, Via.HOST, 0, TOKEN)],
        OpKind.SHARED_READ: [(Step.READ, shared_obj, Via.HOST, 0, TOKEN)],
        OpKind.PRIVATE_WRITE: [(Step.WRITE, Obj.GMEM, Via.GUEST, 0, TOKEN)],
        OpKind.PRIVATE_READ: [(Step.READ, Obj.GMEM, Via.GUEST, 0, TOKEN)],
        # The host touches a GPA that is private through the memory it maps for it: in-place
        # maps the guest_memfd itself and must SIGBUS; dual's VMM reaches the shared backing
        # (its guest_memfd has no MMAP flag), where the touch silently allocates a zero page.
        OpKind.SHARED_PROBE: [(Step.READ, shared_obj, Via.HOST, 0, NO_CHECK)],
        # The guest's shared accesses reach the page the host sees: the guest_memfd page
        # (in-place, as on SW_PROTECTED VMs) or the shared backing's page (dual).
        OpKind.GUEST_SHARED_WRITE: [(Step.WRITE, shared_obj, Via.GUEST_SHARED, 0, TOKEN)],
        OpKind.GUEST_SHARED_READ: [(Step.READ, shared_obj, Via.GUEST_SHARED, 0, TOKEN)],
        OpKind.PIN: [(Step.PIN, shared_obj, Via.HOST, 0, 0)],
        OpKind.UNPIN: [(Step.UNPIN, shared_obj, Via.HOST, 0, 0)],
    }


HUGE_MODES = ("split", "demote")


@dataclass
class InPlace(Strategy):
    name: str = "in-place"

    def huge_mode(self) -> str:
        """What a partial conversion does to a huge guest_memfd folio: "split" it into 4K
        folios and merge it back once all private (the HugeTLB guest_memfd series), or
        "demote" only its mappings, the folio staying whole."""
        mode = self.options.get("huge", "split")
        if mode not in HUGE_MODES:
            raise InputError(f"in-place option huge={mode!r}: expected one of "
                             f"{', '.join(HUGE_MODES)}")
        return mode

    def describe(self) -> dict:
        d = super().describe()
        d["options"].setdefault("huge", self.huge_mode())
        return d

    def gmem_flags(self, layout) -> int:
        return GUEST_MEMFD_FLAG_MMAP | (GUEST_MEMFD_FLAG_INIT_SHARED if layout.init_shared else 0)

    def templates(self, layout) -> dict:
        t = _touch_templates(Obj.GMEM)
        t[OpKind.TO_SHARED] = [(Step.GMEM_SET_ATTRS, Obj.GMEM, Via.HOST, CONV, 0)]
        t[OpKind.TO_PRIVATE] = [(Step.GMEM_SET_ATTRS, Obj.GMEM, Via.HOST, CONV, PRIVATE)]
        return t


@dataclass
class DualBacking(Strategy):
    name: str = "dual"
    needs_shared_backing = True

    def gmem_flags(self, layout) -> int:
        return 0

    def copies(self, layout) -> bool:
        copy = self.options.get("copy", "auto")
        return layout.platform == "preserve" if copy == "auto" else bool(copy)

    def discards(self) -> bool:
        return bool(self.options.get("discard", True))

    def templates(self, layout) -> dict:
        t = _touch_templates(Obj.SHARED)
        to_shared = [(Step.VM_SET_ATTRS, Obj.GMEM, Via.HOST, CONV, 0)]
        to_private = [(Step.VM_SET_ATTRS, Obj.GMEM, Via.HOST, CONV, PRIVATE)]
        if self.copies(layout):
            to_shared.append((Step.COPY, Obj.SHARED, Via.HOST, STEP_CONVERSION, 0))
            to_private.append((Step.COPY, Obj.GMEM, Via.HOST, STEP_CONVERSION, 0))
        if self.discards():
            to_shared.append((Step.GMEM_PUNCH, Obj.GMEM, Via.HOST, STEP_CONVERSION, 0))
            if layout.shared_page != "hugetlb":   # QEMU assumes hugetlb is preallocated
                to_private.append((Step.SHARED_DISCARD, Obj.SHARED, Via.HOST, STEP_CONVERSION, 0))
        t[OpKind.TO_SHARED] = to_shared
        t[OpKind.TO_PRIVATE] = to_private
        return t


STRATEGIES = {"in-place": InPlace, "dual": DualBacking}


def make_strategy(name: str, options: dict | None = None) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise InputError(f"unknown strategy {name!r} (expected one of: {', '.join(STRATEGIES)})")
    return cls(options=dict(options or {}))
