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
        """Table-driven: every op of a kind expands to the same step template, so each step
        is one row of a flat table of all templates, gathered by index."""
        rows, is_token, length, first_row = _template_table(self.templates(layout))
        kind = ops["kind"]
        counts = length[kind]
        if len(ops) and counts.min() < 0:
            i = int(np.flatnonzero(counts < 0)[0])
            raise InputError(f"op {i}: kind {int(kind[i])} is not supported by {self.name}")
        bad_proc = ops["proc"] >= MAX_HOST_PROCS
        if bad_proc.any():
            i = int(np.flatnonzero(bad_proc)[0])
            raise InputError(f"op {i}: host process {int(ops['proc'][i])} out of range "
                             f"(0..{MAX_HOST_PROCS - 1})")
        ends = np.cumsum(counts)
        n = int(ends[-1]) if len(ops) else 0
        # table row of each step = first row of its op's template + position in the template
        row = np.arange(n) - np.repeat(ends - counts - first_row[kind], counts)
        out = np.take(rows, row)      # np.take: a structured fancy index is ~10x slower
        out["op"] = np.repeat(np.arange(len(ops), dtype=np.uint32), counts)
        out["slot"] = np.repeat(ops["slot"], counts)
        out["offset"] = np.repeat(ops["offset"], counts)
        out["size"] = np.repeat(ops["size"], counts)
        out["proc"] = np.repeat(ops["proc"], counts)
        tok = is_token[row]
        if tok.any():
            out["arg"][tok] = np.repeat(ops["token"], counts)[tok]
        return out

    def describe(self) -> dict:
        return {"name": self.name, "options": dict(self.options)}


def _template_table(tmpl: dict):
    """Flatten {OpKind: [(Step, Obj, Via, flags, arg), ...]} into one STEP_DTYPE row per
    template step (op, slot, offset, size left 0), a mask of rows whose arg is the op's
    token, and per op kind (0-255) its template length (-1: unsupported) and first row."""
    rows = np.zeros(sum(len(v) for v in tmpl.values()), dtype=STEP_DTYPE)
    is_token = np.zeros(len(rows), dtype=bool)
    length = np.full(256, -1, dtype=np.int64)
    first_row = np.zeros(256, dtype=np.int64)
    r = 0
    for kind, steps in tmpl.items():
        length[kind], first_row[kind] = len(steps), r
        for code, obj, via, flags, arg in steps:
            rows[r]["code"], rows[r]["obj"], rows[r]["via"], rows[r]["flags"] = code, obj, via, flags
            if arg == TOKEN:
                is_token[r] = True
            else:
                rows[r]["arg"] = arg
            r += 1
    return rows, is_token, length, first_row


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
        # QEMU never copies (kvm_convert_memory discards): copying is an opt-in hypothetical,
        # "auto" = copy where the platform preserves contents (pKVM-style sharing)
        copy = self.options.get("copy", False)
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
