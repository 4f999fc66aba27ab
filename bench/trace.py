"""Replay of QEMU conversion traces (`-trace enable=kvm_convert_memory,file=F`).

A line reads (QEMU's kvm_convert_memory trace event)
    kvm_convert_memory start 0x<hex> size 0x<hex> <shared_to_private|private_to_shared>
optionally prefixed by `<tid>@<seconds>.<microseconds>:` when QEMU runs with
`-msg timestamp=on`.  QEMU traces a request before validating it, so a trace may hold
requests that failed; other events (kvm_memory_fault, ...) may be interleaved.

Nothing is dropped silently: the info dict counts every line by what it was (comment,
blank, conversion, other event, unparsable) and every conversion that the replay skips
because it would fail validation (zero size, unaligned, outside every memslot), with the
first few line numbers of each.  Lines starting with '#' are comments (real QEMU logs
have none; the synthetic traces shipped with the suite use them for their header).
With strict=True the first unparsable line or invalid request raises InputError FILE:LINE.
"""
from __future__ import annotations

import re
from array import array
from pathlib import Path

import numpy as np

from bench.errors import InputError
from bench.layout import Layout
from bench.ops import OP_DTYPE, PAGE_SIZE, OpKind

EVENT = "kvm_convert_memory"
DIRECTIONS = {"private_to_shared": OpKind.TO_SHARED, "shared_to_private": OpKind.TO_PRIVATE}
EXAMPLES_KEPT = 5

MAX_SECONDS = (1 << 63) // 1_000_000_000 - 1      # timestamps are int64 nanoseconds

# optional timestamp prefix, then an event name, then its arguments.  QEMU's trace event
# names are lowercase words joined by underscores (kvm_memory_fault): a line whose first
# word is not such a name is not a trace line at all (unparsable), not a foreign event.
_LINE = re.compile(r"^(?:(?P<tid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{1,9}):)?"
                   r"(?P<event>[a-z][a-z0-9]*(?:_[a-z0-9]+)+) (?P<args>.*)$")
# addresses and sizes are 64-bit: at most 16 hex digits
_CONVERT = re.compile(r"^start 0x(?P<start>[0-9a-fA-F]{1,16}) size 0x(?P<size>[0-9a-fA-F]{1,16}) "
                      r"(?P<dir>shared_to_private|private_to_shared)[ \t]*$")


def _keep(lst: list, item) -> None:
    if len(lst) < EXAMPLES_KEPT:
        lst.append(item)


def parse_trace(path: str | Path, layout: Layout, *, strict: bool = False,
                limit: int | None = None, replay_invalid: bool = False) -> tuple[np.ndarray, dict]:
    """Read a QEMU kvm_convert_memory trace into conversion ops for `layout`.

    Returns (ops, info).  ops hold the valid requests in file order with offsets relative
    to their memslot; t_ns is relative to the first conversion event when every conversion
    line has a timestamp, else -1.  `limit` keeps the first N valid requests (and stops
    reading there: info says so).  replay_invalid keeps the requests that QEMU rejects
    (size 0, unaligned) when they lie in a memslot, so the replay measures the failure path
    too; they are still counted under invalid, and also as replayed_invalid."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a directory, not a trace file", str(path))
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"cannot read trace: {e.strerror}", str(path)) from None

    info = {
        "file": str(path), "lines": 0, "comments": 0, "blank": 0, "parsed": 0,
        "foreign_events": 0, "foreign_by_event": {},
        "unparsable": 0, "unparsable_examples": [],
        "invalid": {"zero_size": 0, "unaligned": 0, "outside_memslot": 0, "examples": []},
        "valid": 0, "to_shared": 0, "to_private": 0, "bytes_to_shared": 0, "bytes_to_private": 0,
        "replayed_invalid": 0, "timestamps": "none", "time_backwards": 0, "last_line_unterminated": False,
        "stopped_at_limit": None,
    }
    foreign = info["foreign_by_event"]
    inv = info["invalid"]
    # the file is read as a stream, a line at a time; what is kept per request is a few
    # machine words in typed arrays (a Python list would cost ~10x as much)
    slot_l, off_l, size_l = array("H"), array("Q"), array("Q")
    kind_l, ts_l = array("B"), array("q")
    with_ts = without_ts = 0
    starts = [m.gpa for m in layout.memslots]
    ends = [m.gpa + m.size for m in layout.memslots]

    def bad_line(no, raw, why, last):
        if last:
            why = "truncated line"      # the log was cut off while QEMU was writing it
        if strict:
            raise InputError(f"{why}: {raw[:80]!r} (expected `[tid@sec.usec:]{EVENT} start 0xHEX "
                             f"size 0xHEX private_to_shared|shared_to_private`)", str(path), no)
        info["unparsable"] += 1
        _keep(info["unparsable_examples"], {"line": no, "text": raw[:120], "why": why})

    no = 0
    with f:
        for rawb in f:
            no += 1
            last = not rawb.endswith(b"\n")        # only the final line can lack it
            if last:
                info["last_line_unterminated"] = True
            raw = rawb.decode("utf-8", errors="replace").rstrip("\n")
            line = raw.rstrip("\r")
            stripped = line.strip()
            if not stripped:
                info["blank"] += 1
                continue
            if stripped.startswith("#"):
                info["comments"] += 1
                continue
            # QEMU writes "<name> <args>": the space follows the name even without arguments
            m = _LINE.match(line.lstrip())
            if not m:
                bad_line(no, line, "not a trace event line", last)
                continue
            event = m.group("event")
            if event != EVENT:
                info["foreign_events"] += 1
                foreign[event] = foreign.get(event, 0) + 1
                continue
            c = _CONVERT.match(m.group("args"))
            if not c:
                bad_line(no, line, "malformed " + EVENT, last)
                continue
            if m.group("sec") is not None and int(m.group("sec")) > MAX_SECONDS:
                bad_line(no, line, f"timestamp past {MAX_SECONDS} s (64-bit nanoseconds)", last)
                continue
            info["parsed"] += 1
            start = int(c.group("start"), 16)
            size = int(c.group("size"), 16)
            kind = DIRECTIONS[c.group("dir")]
            # the same checks, in the same order, as QEMU's kvm_convert_memory()
            problem = None
            slot = None
            for i, (s0, e0) in enumerate(zip(starts, ends)):
                if s0 <= start and start + max(size, 1) <= e0:
                    slot = i
                    break
            if size == 0:
                problem = "zero_size"
            elif start % PAGE_SIZE or size % PAGE_SIZE:
                problem = "unaligned"
            elif slot is None:
                problem = "outside_memslot"
            if problem:
                if strict:
                    raise InputError(f"{EVENT} request start 0x{start:x} size 0x{size:x} would fail "
                                     f"validation: {problem.replace('_', ' ')}", str(path), no)
                inv[problem] += 1
                _keep(inv["examples"], {"line": no, "problem": problem, "start": start, "size": size})
                if not (replay_invalid and slot is not None):
                    continue
                info["replayed_invalid"] += 1
            if m.group("sec") is not None:
                with_ts += 1
                # the digits after the dot are a fraction of a second (QEMU prints %06 usec)
                ts_l.append(int(m.group("sec")) * 1_000_000_000 + int(m.group("usec").ljust(9, "0")))
            else:
                without_ts += 1
                ts_l.append(-1)
            slot_l.append(slot)
            off_l.append(start - starts[slot])
            size_l.append(size)
            kind_l.append(kind)
            if kind == OpKind.TO_SHARED:
                info["to_shared"] += 1
                info["bytes_to_shared"] += size
            else:
                info["to_private"] += 1
                info["bytes_to_private"] += size
            if limit is not None and len(slot_l) >= limit:
                info["stopped_at_limit"] = no
                break
    info["lines"] = no

    n = len(slot_l)
    info["valid"] = n
    ops = np.zeros(n, dtype=OP_DTYPE)
    ops["kind"] = np.frombuffer(kind_l, dtype=np.uint8)
    ops["slot"] = np.frombuffer(slot_l, dtype=np.uint16)
    ops["offset"] = np.frombuffer(off_l, dtype=np.uint64)
    ops["size"] = np.frombuffer(size_l, dtype=np.uint64)
    ops["t_ns"] = -1
    if n and without_ts == 0:
        ts = np.frombuffer(ts_l, dtype=np.int64).copy()
        ts -= ts[0]
        info["timestamps"] = "all"
        backwards = np.diff(ts) < 0
        info["time_backwards"] = int(backwards.sum())
        # requests are replayed in file order; a request never runs before the one above it
        ops["t_ns"] = np.maximum.accumulate(ts)
    elif with_ts and without_ts:
        info["timestamps"] = "partial"      # mixed lines: replayed untimed
    if n == 0:
        info["warning"] = "the trace holds no valid conversion request"
    return ops, info


def format_trace(ops: np.ndarray, layout: Layout, *, timestamps: bool = False, tid: int = 4242,
                 t0_s: float = 1700000000.0, foreign: np.ndarray | None = None) -> list[str]:
    """The trace lines QEMU would write for the conversion ops (other kinds are skipped).
    foreign: optional bool mask per op; a kvm_memory_fault line precedes those ops, as when
    the conversion was triggered by a guest fault (KVM_EXIT_MEMORY_FAULT)."""
    out = []
    base_ns = int(t0_s * 1e9)
    for i, op in enumerate(ops):
        kind = int(op["kind"])
        if kind not in (OpKind.TO_SHARED, OpKind.TO_PRIVATE):
            continue
        gpa = layout.memslots[int(op["slot"])].gpa + int(op["offset"])
        size = int(op["size"])
        direction = "private_to_shared" if kind == OpKind.TO_SHARED else "shared_to_private"
        prefix = ""
        if timestamps:
            t = base_ns + max(0, int(op["t_ns"]))
            prefix = f"{tid}@{t // 1_000_000_000}.{(t % 1_000_000_000) // 1000:06d}:"
        if foreign is not None and foreign[i]:
            flags = 0 if kind == OpKind.TO_SHARED else 8
            out.append(f"{prefix}kvm_memory_fault start 0x{gpa:x} size 0x{size:x} flags 0x{flags:x}")
        out.append(f"{prefix}{EVENT} start 0x{gpa:x} size 0x{size:x} {direction}")
    return out


# Recipes of the synthetic traces shipped in workloads/traces/: each file's header names its
# recipe, and tests regenerate the files from it, so what they contain is never a mystery.
SYNTHETIC = {
    "snp-boot-churn": dict(
        slots=((0, 2 << 30, 0), (4 << 30, 6 << 30, 0)), timestamps=True, fault_fraction=0.3,
        boot=dict(chunk=2 << 20, rate=2000.0), churn=dict(buffers=1000, in_flight=16, rate=20000.0),
        seed=7,
        what="an 8 GiB SNP-like guest: SWIOTLB pool (6%) converted at boot in 2 MiB requests, "
             "then 1000 DMA buffers (4K-64K) converted to shared and back; with -msg timestamp=on "
             "prefixes and kvm_memory_fault lines before 30% of the conversions"),
    "tdx-boot-plain": dict(
        slots=((0, 2 << 30, 0), (4 << 30, 2 << 30, 0)), timestamps=False, fault_fraction=0.0,
        boot=dict(chunk=2 << 20, rate=0.0), churn=dict(buffers=500, in_flight=8, rate=0.0),
        seed=11,
        what="a 4 GiB TDX-like guest: SWIOTLB pool (6% = 245.8 MiB) converted at boot in "
             "2 MiB MapGPA chunks (one exit to QEMU each, as upstream KVM splits MapGPA), then "
             "500 DMA buffers converted to shared and back; no timestamps"),
}


def synthetic_trace(name: str) -> list[str]:
    """The lines of shipped synthetic trace `name` (header comment included)."""
    from bench.generators import GENERATORS
    from bench.layout import Memslot
    r = SYNTHETIC[name]
    layout = Layout(memslots=tuple(Memslot(g, s, n) for g, s, n in r["slots"]))
    rng = np.random.default_rng(r["seed"])

    def params(gen, **over):
        p = {k: v.default for k, v in GENERATORS[gen].params.items()}
        p.update(over)
        return p

    boot, _ = GENERATORS["swiotlb-boot"].func(layout, rng, params("swiotlb-boot", bounces=0, **r["boot"]), None)
    from bench.generators import Touch
    churn, _ = GENERATORS["dma-churn"].func(layout, rng, params("dma-churn", slots=[1], **r["churn"]),
                                             Touch())
    if r["timestamps"]:
        gap = int(boot["t_ns"].max()) + 5_000_000 if len(boot) else 0   # churn starts after boot
        churn["t_ns"] += gap
    ops = np.concatenate([boot, churn])
    foreign = rng.random(len(ops)) < r["fault_fraction"]
    header = [f"# SYNTHETIC trace, not captured from a guest. Recipe {name!r} in bench/trace.py "
              f"(SYNTHETIC), written by bench.trace.synthetic_trace({name!r}):",
              f"# {r['what']}."]
    return header + format_trace(ops, layout, timestamps=r["timestamps"], foreign=foreign)
