"""Conversion-stream generators: each turns a few parameters into an op stream (OP_DTYPE).

Every family is grounded in a fact about real guests (each generator's `grounding`, shown by
`gmembench workloads show`); the workload files say which.  Streams are built with numpy, a whole array at
a time, so a stream of millions of ops takes seconds, not minutes.

A generator is called as gen.func(layout, rng, params, touch) with params already checked
and converted (sizes in bytes, counts as ints) by bench.workload; it returns (ops, info).

Conventions shared by all generators:
- memory starts private (unless layout.init_shared) and every generator that converts to
  shared and back leaves its buffers private again at the end, except swiotlb-boot, whose
  pool stays shared as in a real guest;
- requests are 4K aligned and inside their memslot (mixed's invalid_fraction breaks the
  alignment of some on purpose);
- tokens are drawn at random per stream (never 0, never NO_CHECK), so two phases do not
  write the same values by construction;
- t_ns is -1 when the stream has no rate, else Poisson arrivals (ns from the phase start),
  and every op of one guest action (a conversion and its touches) shares one time.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from bench.layout import Layout
from bench.ops import NO_CHECK, OP_DTYPE, PAGE_SIZE, SIZE_1G, SIZE_2M, OpKind

MiB = 1 << 20
GiB = 1 << 30

# ----------------------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


MAX_COUNT = 1_000_000_000     # generator counts; the memory a stream needs is checked too
MAX_SIZE = 1 << 52            # sizes: the widest physical address space of any CPU
MAX_LIST = 4096               # list parameters (sizes, weights, slots)


def parse_size(value: Any) -> int:
    """'4K', '512M', '4G', '64KiB', '1.5G' or an int -> bytes (binary units).
    Raises ValueError with what was expected."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like \"4K\", \"512M\", \"4G\" or an integer, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a non-negative size, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            number, unit = m.group(1), m.group(2).lower()
            if "." in number:
                num, den = number.split(".")
                scaled = int(num + den) * _UNITS[unit]
                q, r = divmod(scaled, 10 ** len(den))
                if r:
                    raise ValueError(f"size {value!r} is not a whole number of bytes")
                return q
            return int(number) * _UNITS[unit]
    raise ValueError(f"expected a size like \"4K\", \"512M\", \"4G\" or an integer, got {value!r}")


def format_size(n: int) -> str:
    """Bytes in human units: exact when a binary unit divides them ("64 MiB"), else two
    decimals with the exact byte count ("491.52 MiB (515399680 B)")."""
    n = int(n)
    units = (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10))
    for unit, shift in units:
        if n >= (1 << shift) and n % (1 << shift) == 0 and (n >> shift) < 10000:
            return f"{n >> shift} {unit}"
    for unit, shift in units:
        if n >= (1 << shift):
            return f"{n / (1 << shift):.2f} {unit} ({n} B)"
    return f"{n} B"


def align_up(n, a):
    return (n + a - 1) // a * a


# ----------------------------------------------------------------------------- params

PARAM_KINDS = ("int", "count", "size", "span", "offset", "float", "fraction", "choice", "bool",
               "sizes", "floats", "slots")


@dataclass(frozen=True)
class Param:
    """One generator parameter.

    kind:  int       plain integer (not scaled by --quick)
           count     integer that --quick divides (numbers of buffers, requests, bounces)
           size      4K-aligned size in bytes (not scaled: buffer and chunk sizes keep the shape)
           span      4K-aligned size or "all" (a region; --quick divides it like memslots)
           offset    4K-aligned position inside a memslot, may be 0 (--quick divides it too)
           float, fraction (0..1), bool, choice (one of choices)
           sizes     list of 4K-aligned sizes;  floats: list of non-negative numbers
           slots     "all" or a list of memslot indices
    """
    kind: str
    default: Any
    doc: str
    choices: tuple = ()
    minimum: float | None = None
    scales: bool = False     # --quick divides it (implied for count, span and offset)

    @property
    def quick_scaled(self) -> bool:
        return self.scales or self.kind in ("count", "span", "offset")


def coerce_param(p: Param, value: Any) -> Any:
    """Check and convert a parameter value from a workload file.  ValueError says what was
    expected."""
    k = p.kind
    if isinstance(value, list) and len(value) > MAX_LIST:
        raise ValueError(f"expected at most {MAX_LIST} entries, got {len(value)}")
    if k in ("int", "count"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value > MAX_COUNT:
            raise ValueError(f"expected an integer <= {MAX_COUNT:,}, got {value}")
        if value < (p.minimum if p.minimum is not None else 0):
            raise ValueError(f"expected an integer >= {p.minimum if p.minimum is not None else 0}, got {value}")
        return value
    if k in ("size", "span", "offset"):
        if k == "span" and value == "all":
            return "all"
        n = parse_size(value)
        if n >= MAX_SIZE:
            raise ValueError(f"expected a size below 4 PiB (2^52), got {value!r}")
        if n % PAGE_SIZE:
            raise ValueError(f"size {value!r} is not a multiple of 4K")
        if n == 0 and k == "size":
            raise ValueError("expected a size > 0")
        return n
    if k in ("float", "fraction"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or abs(value) > 1e15:
            raise ValueError(f"expected a finite number (at most 1e15), got {value}")
        if k == "fraction" and not 0.0 <= value <= 1.0:
            raise ValueError(f"expected a fraction between 0 and 1, got {value}")
        if p.minimum is not None and value < p.minimum:
            raise ValueError(f"expected a number >= {p.minimum}, got {value}")
        return value
    if k == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if k == "choice":
        if value not in p.choices:
            raise ValueError(f"expected one of {', '.join(map(repr, p.choices))}, got {value!r}")
        return value
    if k == "sizes":
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a non-empty list of sizes, got {value!r}")
        out = []
        for v in value:
            n = parse_size(v)
            if n >= MAX_SIZE:
                raise ValueError(f"expected sizes below 4 PiB (2^52), got {v!r}")
            if n == 0 or n % PAGE_SIZE:
                raise ValueError(f"size {v!r} is not a positive multiple of 4K")
            out.append(n)
        return out
    if k == "floats":
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1e15
                for v in value):
            raise ValueError(f"expected a list of non-negative numbers, got {value!r}")
        return [float(v) for v in value]
    if k == "slots":
        if value == "all":
            return "all"
        if not isinstance(value, list) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 32768 for v in value):
            raise ValueError(f"expected \"all\" or a list of memslot indices, got {value!r}")
        return list(value)
    raise AssertionError(k)


# ----------------------------------------------------------------------------- touches

# after a conversion to shared: the host's touches, and the guest's own accesses to the pages
# it shared (virtio rings, bounce buffers it fills): the page the host sees
HOST_TOUCHES = ("host-write", "host-read", "guest-shared-write", "guest-shared-read")
GUEST_TOUCHES = ("guest-write", "guest-read")  # after a conversion to private
TOUCHES = HOST_TOUCHES + GUEST_TOUCHES


@dataclass(frozen=True)
class Touch:
    """What is touched right after each conversion: host touches follow a conversion to
    shared, guest touches follow a conversion to private, in the order listed.  The touched
    range starts at the converted offset and covers `fraction` of it (rounded up to 4K), or
    `size` bytes when size is set; never more than the converted range."""
    actions: tuple[str, ...] = ()
    fraction: float = 1.0
    size: int | None = None
    process: int = 0        # host process of the host-* touches (bench.ops OP_DTYPE proc)

    def after_shared(self) -> tuple[str, ...]:
        return tuple(a for a in self.actions if a in HOST_TOUCHES)

    def after_private(self) -> tuple[str, ...]:
        return tuple(a for a in self.actions if a in GUEST_TOUCHES)

    def lengths(self, sizes: np.ndarray) -> np.ndarray:
        sizes = sizes.astype(np.uint64)
        if self.size is not None:
            n = np.full(len(sizes), self.size, dtype=np.uint64)
        else:
            n = np.ceil(sizes.astype(np.float64) * self.fraction).astype(np.uint64)
            n = (n + np.uint64(PAGE_SIZE - 1)) // np.uint64(PAGE_SIZE) * np.uint64(PAGE_SIZE)
        return np.minimum(n, sizes)

    def describe(self) -> str:
        if not self.actions:
            return "none"
        amount = f"size {format_size(self.size)}" if self.size is not None else f"fraction {self.fraction:g}"
        proc = f", host process {self.process}" if self.process else ""
        return f"{', '.join(self.actions)} ({amount} of each converted range{proc})"


_TOUCH_KIND = {"host-write": OpKind.SHARED_WRITE, "host-read": OpKind.SHARED_READ,
               "guest-write": OpKind.PRIVATE_WRITE, "guest-read": OpKind.PRIVATE_READ,
               "guest-shared-write": OpKind.GUEST_SHARED_WRITE,
               "guest-shared-read": OpKind.GUEST_SHARED_READ}


# ----------------------------------------------------------------------------- helpers

class Tokens:
    """Fresh token values for one stream: a random base, counting up, skipping 0 and
    NO_CHECK, so reads can be checked against exactly the write they follow."""

    def __init__(self, rng: np.random.Generator):
        self.next = int(rng.integers(1, 1 << 31))

    def take(self, n: int) -> np.ndarray:
        vals = (np.arange(self.next, self.next + n, dtype=np.uint64) % np.uint64(0xFFFFFFFE)) + np.uint64(1)
        self.next += n
        return vals.astype(np.uint32)


def arrivals(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    """Poisson arrival times in ns for n events at `rate` events per second; -1 if rate 0."""
    if rate <= 0:
        return np.full(n, -1, dtype=np.int64)
    gaps = rng.exponential(1e9 / rate, size=n)
    return np.cumsum(gaps).astype(np.int64)


def arena(layout: Layout, slots, start: int, span) -> list[tuple[int, int, int]]:
    """(slot, offset, size) of the region a generator may use in each selected memslot."""
    idx = range(len(layout.memslots)) if slots == "all" else slots
    out = []
    for s in idx:
        if s >= len(layout.memslots):
            raise ValueError(f"slot {s} does not exist (the layout has {len(layout.memslots)} memslots)")
        m = layout.memslots[s]
        if start >= m.size:
            raise ValueError(f"start {format_size(start)} is beyond memslot {s} ({format_size(m.size)})")
        size = m.size - start if span == "all" else span
        if start + size > m.size:
            raise ValueError(f"start + span ({format_size(start)} + {format_size(size)}) exceeds "
                             f"memslot {s} ({format_size(m.size)})")
        out.append((s, start, size))
    return out


def cells(regions, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Split regions into cells of `cell` bytes: (slot, offset) of each whole cell."""
    slots, offs = [], []
    for s, start, size in regions:
        n = size // cell
        slots.append(np.full(n, s, dtype=np.uint16))
        offs.append(start + np.arange(n, dtype=np.uint64) * np.uint64(cell))
    if not slots:
        return np.zeros(0, np.uint16), np.zeros(0, np.uint64)
    return np.concatenate(slots), np.concatenate(offs)


def choose_sizes(rng, n, sizes, weights) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.uint64)
    if weights:
        if len(weights) != len(sizes):
            raise ValueError(f"size_weights has {len(weights)} entries for {len(sizes)} sizes")
        w = np.asarray(weights, dtype=np.float64)
        if w.sum() <= 0:
            raise ValueError("size_weights must not all be 0")
        p = w / w.sum()
    else:
        p = None
    return rng.choice(sizes, size=n, p=p)


def placement_sampler(rng, ncells, placement, zipf_s):
    """A function n -> n cell indices: uniform, or zipf over a random ranking of the cells
    (hot spots scattered over memory, as allocator reuse makes them)."""
    if placement == "uniform":
        return lambda n: rng.integers(0, ncells, size=n)
    ranks = np.arange(1, ncells + 1, dtype=np.float64)
    p = ranks ** -zipf_s
    p /= p.sum()
    perm = rng.permutation(ncells)
    return lambda n: perm[rng.choice(ncells, size=n, p=p)]


def interleave(groups: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """groups: per column j, (ops_j of length n, present_j bool mask of length n).
    Returns, for each row i, the present ops of columns 0..k-1 in column order, rows in
    order: the vectorised form of `for i: for j: if present: emit`."""
    n = len(groups[0][0])
    k = len(groups)
    mask = np.empty((n, k), dtype=bool)
    for j, (_, present) in enumerate(groups):
        mask[:, j] = present
    out = np.empty(int(mask.sum()), dtype=OP_DTYPE)
    # field by field: copying whole structured rows into a strided table is much slower
    for name in OP_DTYPE.names:
        col = np.empty((n, k), dtype=OP_DTYPE[name])
        for j, (ops, _) in enumerate(groups):
            col[:, j] = ops[name]
        out[name] = col[mask]
    return out


def make_ops(n, kind, slot, offset, size, token=0, t_ns=-1) -> np.ndarray:
    ops = np.zeros(n, dtype=OP_DTYPE)
    ops["kind"] = kind
    ops["slot"] = slot
    ops["offset"] = offset
    ops["size"] = size
    ops["token"] = token
    ops["t_ns"] = t_ns
    return ops


def touch_columns(touch: Touch, actions, conv: np.ndarray, tokens: Tokens,
                  write_tok: dict | None = None, read_tok: dict | None = None):
    """Touch op columns following the conversions `conv` (one column per action).
    write_tok / read_tok may supply per-row tokens for an action (e.g. the value a read must
    find); otherwise writes get fresh tokens and reads are unchecked (NO_CHECK)."""
    cols = []
    lengths = touch.lengths(conv["size"])
    for a in actions:
        kind = _TOUCH_KIND[a]
        if a.endswith("write"):
            tok = (write_tok or {}).get(a)
            tok = tokens.take(len(conv)) if tok is None else tok
        else:
            tok = (read_tok or {}).get(a)
            tok = np.full(len(conv), NO_CHECK, np.uint32) if tok is None else tok
        ops = make_ops(len(conv), kind, conv["slot"], conv["offset"], lengths, tok, conv["t_ns"])
        if a.startswith("host-"):
            ops["proc"] = touch.process
        cols.append((a, ops))
    return cols


def expected_after_private(layout: Layout, tokens: np.ndarray) -> np.ndarray:
    """What the guest finds in a private page that the host wrote while it was shared:
    the same data when the platform preserves contents (pKVM, SW_PROTECTED); unknowable
    otherwise (TDX zeroes on to-shared only, SNP turns contents into ciphertext)."""
    if layout.platform == "preserve":
        return tokens
    return np.full(len(tokens), NO_CHECK, np.uint32)


def expected_after_shared(layout: Layout, tokens: np.ndarray) -> np.ndarray:
    """What the host finds in a shared page that the guest wrote while it was private:
    the same data (preserve), zeros (TDX zeroes on to-shared), or ciphertext (SNP)."""
    if layout.platform == "preserve":
        return tokens
    if layout.platform == "zero":
        return np.zeros(len(tokens), np.uint32)
    return np.full(len(tokens), NO_CHECK, np.uint32)


def kind_counts(ops: np.ndarray) -> dict:
    out = {}
    for k in OpKind:
        m = ops["kind"] == k
        n = int(m.sum())
        if n:
            out[k.name] = {"ops": n, "bytes": int(ops["size"][m].sum())}
    return out


# ----------------------------------------------------------------------------- buffer lifecycles

def buffer_lifecycles(rng, layout, regions, n_buffers, in_flight, lifetime, sizes, weights,
                      placement, zipf_s):
    """Place n_buffers DMA-style buffers over time so that no two live buffers overlap.

    Buffer i is allocated (converted to shared) at tick i and freed (converted back) at tick
    i + L_i, with L_i = in_flight (fifo: a ring of in_flight descriptors) or exponential with
    mean in_flight (random completion order).  Frees of a tick come before its allocation;
    buffers still live at the end are freed after the last allocation, so the stream ends
    with everything private again.  Each buffer sits in a cell of the largest size; a cell
    is reused only after its previous buffer was freed (checked against the previous buffer
    in the same cell, which suffices: that one was itself placed after its predecessor's
    free).  Conflicting draws are redrawn from the same distribution, then uniformly when a
    hot spot stays busy - a real allocator cannot hand out a busy buffer either.

    Returns (events, info): events is a structured array in stream order with fields
    buf, alloc (bool), slot, offset, size.
    """
    cell = int(max(sizes))
    cell_slot, cell_off = cells(regions, cell)
    ncells = len(cell_slot)
    if ncells < 4 * in_flight:
        raise ValueError(f"the region holds {ncells} buffers of {format_size(cell)}; "
                         f"in_flight = {in_flight} needs at least {4 * in_flight}")
    n = n_buffers
    size = choose_sizes(rng, n, sizes, weights)
    if lifetime == "fifo":
        life = np.full(n, in_flight, dtype=np.int64)
    else:
        life = np.maximum(1, np.rint(rng.exponential(in_flight, size=n))).astype(np.int64)
    free_tick = np.arange(n, dtype=np.int64) + life
    sample = placement_sampler(rng, ncells, placement, zipf_s)
    cell_of = sample(n)
    rounds = 0
    redrawn_uniform = 0
    idx = np.arange(n)
    # a stable sort of keys below 2^16 is a radix sort: the same order, several times faster
    key_type = np.uint16 if ncells <= 1 << 16 else np.int64
    while True:
        order = np.argsort(cell_of.astype(key_type), kind="stable")  # by cell, then time
        same = cell_of[order][1:] == cell_of[order][:-1]
        prev_free = free_tick[order][:-1]
        later = order[1:]
        conflict = later[same & (prev_free > later)]
        if len(conflict) == 0:
            break
        rounds += 1
        if rounds > 10000:
            raise RuntimeError("buffer placement did not converge")
        if rounds <= 20:
            cell_of[conflict] = sample(len(conflict))
        else:
            cell_of[conflict] = rng.integers(0, ncells, size=len(conflict))
            redrawn_uniform += len(conflict)
    # natural alignment inside the cell (buddy allocations are size aligned)
    slots_in_cell = np.maximum(np.uint64(1), np.uint64(cell) // size)
    sub = (rng.random(n) * slots_in_cell).astype(np.uint64) * size
    sub = np.minimum(sub, np.uint64(cell) - size)
    offset = cell_off[cell_of] + sub
    slot = cell_slot[cell_of]

    ev = np.zeros(2 * n, dtype=[("tick", "<i8"), ("alloc", "?"), ("buf", "<i8"),
                                ("slot", "<u2"), ("offset", "<u8"), ("size", "<u8")])
    ev["tick"][:n] = np.arange(n)
    ev["alloc"][:n] = True
    ev["buf"][:n] = idx
    ev["tick"][n:] = free_tick
    ev["alloc"][n:] = False
    ev["buf"][n:] = idx
    ev["slot"] = np.concatenate([slot, slot])
    ev["offset"] = np.concatenate([offset, offset])
    ev["size"] = np.concatenate([size, size])
    # stream order: tick, frees before allocs, then buffer order (the stable sort keeps the
    # buffer order in which events were laid out)
    ev = ev[np.argsort(ev["tick"] * 2 + ev["alloc"], kind="stable")]
    live = np.cumsum(np.where(ev["alloc"], 1, -1))
    info = {"buffers": n, "cells": ncells, "cell_size": cell, "peak_live": int(live.max()) if n else 0,
            "mean_live": float(live.mean()) if n else 0.0, "placement_rounds": rounds,
            "redrawn_uniform": int(redrawn_uniform)}
    return ev, info


def lifecycle_stream(rng, layout, ev, touch: Touch, rate, tokens: Tokens, pin_mask=None):
    """Ops for buffer events: alloc -> TO_SHARED [PIN] [host touches];
    free -> [UNPIN] TO_PRIVATE [guest touches].  A guest-read after the free expects what
    the last host-write of that buffer left (platform permitting)."""
    m = len(ev)
    t = arrivals(rng, m, rate)
    alloc = ev["alloc"]
    kind = np.where(alloc, OpKind.TO_SHARED, OpKind.TO_PRIVATE).astype(np.uint8)
    conv = make_ops(m, kind, ev["slot"], ev["offset"], ev["size"], 0, t)
    pinned = np.zeros(m, bool) if pin_mask is None else pin_mask[ev["buf"]]
    nbuf = int(ev["buf"].max()) + 1 if m else 0

    columns = []
    unpin = make_ops(m, OpKind.UNPIN, ev["slot"], ev["offset"], ev["size"], 0, t)
    columns.append((unpin, ~alloc & pinned))
    columns.append((conv, np.ones(m, bool)))
    pin = make_ops(m, OpKind.PIN, ev["slot"], ev["offset"], ev["size"], 0, t)
    columns.append((pin, alloc & pinned))

    host_w = tokens.take(nbuf)          # per buffer: what the host writes while shared
    write_tok = {"host-write": host_w[ev["buf"]]}
    read_tok = {}
    if "host-write" in touch.after_shared():
        read_tok["guest-read"] = expected_after_private(layout, host_w[ev["buf"]])
    for a, ops in touch_columns(touch, touch.after_shared(), conv, tokens, write_tok, read_tok):
        columns.append((ops, alloc))
    for a, ops in touch_columns(touch, touch.after_private(), conv, tokens, write_tok, read_tok):
        columns.append((ops, ~alloc))
    return interleave(columns)


# ----------------------------------------------------------------------------- generators

@dataclass(frozen=True)
class Generator:
    name: str
    func: Callable
    params: dict
    summary: str
    grounding: str
    default_touch: tuple = ()
    takes_touch: bool = True


GENERATORS: dict[str, Generator] = {}


def _register(name, params, summary, grounding, default_touch=(), takes_touch=True):
    def deco(func):
        GENERATORS[name] = Generator(name, func, params, summary, grounding, tuple(default_touch),
                                     takes_touch)
        return func
    return deco


ARENA = {
    "slots": Param("slots", "all", "memslots the generator uses: \"all\" or a list of indices"),
    "start": Param("offset", 0, "offset of the region inside each memslot"),
    "span": Param("span", "all", "size of the region in each memslot (\"all\" = to the slot end)"),
}

RATE = Param("float", 0.0, "conversion requests per second (Poisson arrivals); 0 = untimed",
             minimum=0.0)


def swiotlb_pool_size(guest_size: int, percent: float = 6.0, lo: int = 64 * MiB, hi: int = GiB) -> int:
    """Linux SEV guests: 6% of memory, clamped to [64 MiB, 1 GiB], page aligned."""
    size = guest_size * int(round(percent * 100)) // 10000
    size = min(max(size, lo), hi)
    return align_up(size, PAGE_SIZE)


@_register("swiotlb-boot", {
    **ARENA,
    "percent": Param("float", 6.0, "pool size in percent of guest memory", minimum=0.0),
    "pool_min": Param("size", 64 * MiB, "lower clamp of the pool size"),
    "pool_max": Param("size", GiB, "upper clamp of the pool size"),
    "placement": Param("choice", "low-top", "where the pool sits: low-top (top of the region "
                       "below 4 GiB, as memblock's top-down low allocation puts it) or start",
                       choices=("low-top", "start")),
    "chunk": Param("size", 2 * MiB, "largest single conversion request: upstream KVM splits a "
                   "TDX MapGPA into 2 MiB chunks, one exit to the VMM each (TDX_MAP_GPA_MAX_LEN)"),
    "bounces": Param("count", 100000, "DMA bounces through the pool after boot"),
    "bounce_sizes": Param("sizes", [4096, 16384, 65536], "sizes of one bounce"),
    "bounce_weights": Param("floats", [], "weights of bounce_sizes (default equal)"),
    "rx_fraction": Param("fraction", 0.5, "share of bounces that are device writes (rx); "
                         "the rest are device reads (tx)"),
    "rate": RATE,
}, "SWIOTLB pool converted to shared at boot, then DMA bounces through it",
   "Linux SEV/SNP and TDX guests size SWIOTLB at 6% of memory clamped to [64 MiB, 1 GiB] "
   "(mem_encrypt_setup_arch) and convert it at boot; KVM hands a TDX MapGPA to the VMM in "
   "2 MiB chunks (TDX_MAP_GPA_MAX_LEN)", takes_touch=False)
def gen_swiotlb_boot(layout, rng, p, touch):
    pool = swiotlb_pool_size(layout.guest_size, p["percent"], p["pool_min"], p["pool_max"])
    regions = arena(layout, p["slots"], p["start"], p["span"])
    slot, rstart, rsize = regions[0]
    if p["placement"] == "low-top":
        slot_gpa = layout.memslots[slot].gpa
        top = rstart + rsize
        if slot_gpa + rstart < 4 * GiB:     # the region reaches below 4 GiB: stay there
            top = min(top, 4 * GiB - slot_gpa)
        base = top - pool
    else:
        base = rstart
    if base < rstart or pool > rsize:
        raise ValueError(f"the SWIOTLB pool ({format_size(pool)}) does not fit in memslot {slot}'s "
                         f"region ({format_size(rsize)} at {format_size(rstart)})")
    chunk = p["chunk"]
    starts = np.arange(base, base + pool, chunk, dtype=np.uint64)
    sizes = np.minimum(np.uint64(chunk), np.uint64(base + pool) - starts)
    n_conv = len(starts)
    t_all = arrivals(rng, n_conv + p["bounces"], p["rate"])
    conv = make_ops(n_conv, OpKind.TO_SHARED, slot, starts, sizes, 0, t_all[:n_conv])

    tokens = Tokens(rng)
    nb = p["bounces"]
    bsize = choose_sizes(rng, nb, p["bounce_sizes"], p["bounce_weights"])
    if nb and int(bsize.max()) > pool:
        raise ValueError("a bounce is larger than the SWIOTLB pool")
    boff = (rng.random(nb) * ((np.uint64(pool) - bsize) // np.uint64(PAGE_SIZE) + np.uint64(1))) \
        .astype(np.uint64) * np.uint64(PAGE_SIZE)
    rx = rng.random(nb) < p["rx_fraction"]
    kind = np.where(rx, OpKind.SHARED_WRITE, OpKind.SHARED_READ).astype(np.uint8)
    tok = np.where(rx, tokens.take(nb), np.uint32(NO_CHECK)).astype(np.uint32)
    bounces = make_ops(nb, kind, slot, np.uint64(base) + boff, bsize, tok, t_all[n_conv:])
    ops = np.concatenate([conv, bounces])
    info = {"pool_bytes": pool, "pool_slot": slot, "pool_offset": int(base),
            "conversions": n_conv, "bounces": nb, "rx_bounces": int(rx.sum())}
    return ops, info


CHURN = {
    **ARENA,
    "buffers": Param("count", 50000, "buffers converted to shared and back (2 conversions each)"),
    "in_flight": Param("int", 64, "mean number of buffers shared at once (queue depth)", minimum=1),
    "lifetime": Param("choice", "exponential", "fifo: buffers complete in order (a ring); "
                      "exponential: random completion order", choices=("fifo", "exponential")),
    "sizes": Param("sizes", [4096, 8192, 16384, 65536], "buffer sizes"),
    "size_weights": Param("floats", [], "weights of sizes (default equal)"),
    "placement": Param("choice", "uniform", "uniform, or zipf hot spots", choices=("uniform", "zipf")),
    "zipf_s": Param("float", 1.1, "zipf exponent for placement = zipf", minimum=0.0),
    "pin_fraction": Param("fraction", 0.0, "share of buffers pinned (in-flight DMA) between "
                          "their conversion to shared and back"),
    "rate": RATE,
}


@_register("dma-churn", CHURN,
           "many small DMA buffers converted to shared and back, never overlapping while shared",
           "Linux confidential guests convert DMA/bounce buffers and virtio rings "
           "(set_memory_decrypted / set_memory_encrypted)",
           default_touch=("host-write", "guest-read"))
def gen_dma_churn(layout, rng, p, touch):
    regions = arena(layout, p["slots"], p["start"], p["span"])
    ev, info = buffer_lifecycles(rng, layout, regions, p["buffers"], p["in_flight"], p["lifetime"],
                                 p["sizes"], p["size_weights"], p["placement"], p["zipf_s"])
    pin_mask = rng.random(p["buffers"]) < p["pin_fraction"]
    ops = lifecycle_stream(rng, layout, ev, touch, p["rate"], Tokens(rng), pin_mask)
    info["pinned_buffers"] = int(pin_mask.sum())
    return ops, info


@_register("pkvm-share", {
    **ARENA,
    "buffers": Param("count", 10000, "buffers shared with the host, one after another"),
    "sizes": Param("sizes", [4096, 16384, 65536, 262144], "buffer sizes"),
    "size_weights": Param("floats", [], "weights of sizes (default equal)"),
    "probe": Param("bool", True, "after each buffer is private again, the host touches it: "
                   "in-place must fault (SIGBUS); under dual the VMM reaches the shared "
                   "backing, where the touch allocates a zero page (counted, no fault)"),
    "rate": RATE,
}, "guest writes a buffer, shares it, host reads and writes it, guest unshares and reads it back",
   "the in-place series' cover letter: pKVM guests and host cooperate on data that "
   "must not be copied (its dual variant is hypothetical)",
   takes_touch=False)
def gen_pkvm_share(layout, rng, p, touch):
    regions = arena(layout, p["slots"], p["start"], p["span"])
    cell = int(max(p["sizes"]))
    cslot, coff = cells(regions, cell)
    if len(cslot) == 0:
        raise ValueError(f"the region is smaller than the largest buffer ({format_size(cell)})")
    n = p["buffers"]
    size = choose_sizes(rng, n, p["sizes"], p["size_weights"])
    c = rng.integers(0, len(cslot), size=n)
    slot, off = cslot[c], coff[c]
    t = arrivals(rng, n, p["rate"])
    tokens = Tokens(rng)
    a = tokens.take(n)      # the guest's data
    b = tokens.take(n)      # the host's reply
    cols = [
        (make_ops(n, OpKind.PRIVATE_WRITE, slot, off, size, a, t), np.ones(n, bool)),
        (make_ops(n, OpKind.TO_SHARED, slot, off, size, 0, t), np.ones(n, bool)),
        (make_ops(n, OpKind.SHARED_READ, slot, off, size, expected_after_shared(layout, a), t),
         np.ones(n, bool)),
        (make_ops(n, OpKind.SHARED_WRITE, slot, off, size, b, t), np.ones(n, bool)),
        (make_ops(n, OpKind.TO_PRIVATE, slot, off, size, 0, t), np.ones(n, bool)),
        (make_ops(n, OpKind.PRIVATE_READ, slot, off, size, expected_after_private(layout, b), t),
         np.ones(n, bool)),
        (make_ops(n, OpKind.SHARED_PROBE, slot, off, PAGE_SIZE, NO_CHECK, t),
         np.full(n, p["probe"])),
    ]
    return interleave(cols), {"buffers": n, "bytes_shared": int(size.sum())}


@_register("bulk-roundtrip", {
    **ARENA,
    "rounds": Param("int", 10, "round trips: whole region to shared, then back to private", minimum=1),
    "populate": Param("bool", True, "the guest writes the whole region before the first round"),
    "verify": Param("bool", False, "also read every page after each conversion and check it "
                    "holds what was written before (platform permitting)"),
}, "the whole region converted to shared and back, touching every 4K page each time",
   "the in-place series authors' TDX benchmark converts a 4 GiB slot whole to "
   "shared and back 10 times, the guest touching every 4K page each time",
   takes_touch=False)
def gen_bulk_roundtrip(layout, rng, p, touch):
    regions = arena(layout, p["slots"], p["start"], p["span"])
    tokens = Tokens(rng)
    rows = []
    last_private, last_host = {}, {}
    if p["populate"]:
        for s, off, size in regions:
            tok = int(tokens.take(1)[0])
            rows.append((OpKind.PRIVATE_WRITE, s, off, size, tok))
            last_private[s] = tok
    for _ in range(p["rounds"]):
        for s, off, size in regions:
            rows.append((OpKind.TO_SHARED, s, off, size, 0))
            if p["verify"]:
                prev = last_private.get(s)
                exp = int(expected_after_shared(layout, np.array([prev if prev is not None else 0],
                                                                  np.uint32))[0])
                rows.append((OpKind.SHARED_READ, s, off, size, exp))
            last_host[s] = int(tokens.take(1)[0])
            rows.append((OpKind.SHARED_WRITE, s, off, size, last_host[s]))
        for s, off, size in regions:
            rows.append((OpKind.TO_PRIVATE, s, off, size, 0))
            if p["verify"]:
                exp = int(expected_after_private(layout, np.array([last_host[s]], np.uint32))[0])
                rows.append((OpKind.PRIVATE_READ, s, off, size, exp))
            tok = int(tokens.take(1)[0])
            rows.append((OpKind.PRIVATE_WRITE, s, off, size, tok))
            last_private[s] = tok
    ops = np.zeros(len(rows), dtype=OP_DTYPE)
    ops["t_ns"] = -1
    for i, (k, s, off, size, tok) in enumerate(rows):
        ops[i]["kind"], ops[i]["slot"], ops[i]["offset"], ops[i]["size"], ops[i]["token"] = \
            k, s, off, size, tok
    region_bytes = sum(r[2] for r in regions)
    return ops, {"region_bytes": region_bytes, "rounds": p["rounds"]}


@_register("hogger", {
    **{k: v for k, v in CHURN.items() if k not in ("start", "span")},
    "io_span": Param("size", GiB, "I/O buffer region at the top of each memslot", scales=True),
    "fill": Param("fraction", 0.9, "share of the rest of memory the hogger fills"),
    "chunk": Param("size", 16 * MiB, "bytes the hogger writes per step"),
    "passes": Param("int", 1, "times the hogger rewrites its memory", minimum=1),
}, "a memory hogger fills private memory while I/O converts buffers (dma-churn)",
   "the series' testing: a 120 GiB SNP guest on two 60 GiB guest_memfd backends ran a memory "
   "hogger while its conversions were traced", default_touch=("host-write", "guest-read"))
def gen_hogger(layout, rng, p, touch):
    io_regions, hog_regions = [], []
    idx = range(len(layout.memslots)) if p["slots"] == "all" else p["slots"]
    for s in idx:
        if s >= len(layout.memslots):
            raise ValueError(f"slot {s} does not exist (the layout has {len(layout.memslots)} memslots)")
        m = layout.memslots[s]
        if p["io_span"] >= m.size:
            raise ValueError(f"io_span {format_size(p['io_span'])} leaves no memory for the hogger "
                             f"in memslot {s} ({format_size(m.size)})")
        io_regions.append((s, m.size - p["io_span"], p["io_span"]))
        hog_regions.append((s, 0, m.size - p["io_span"]))
    tokens = Tokens(rng)
    ev, info = buffer_lifecycles(rng, layout, io_regions, p["buffers"], p["in_flight"],
                                 p["lifetime"], p["sizes"], p["size_weights"], p["placement"],
                                 p["zipf_s"])
    pin_mask = rng.random(p["buffers"]) < p["pin_fraction"]
    io = lifecycle_stream(rng, layout, ev, touch, p["rate"], tokens, pin_mask)

    # the hogger's writes: chunk after chunk over fill x its memory, slot by slot
    hs, ho, hz = [], [], []
    for s, start, size in hog_regions:
        fill = int(size * p["fill"]) // PAGE_SIZE * PAGE_SIZE
        st = np.arange(start, start + fill, p["chunk"], dtype=np.uint64)
        hs.append(np.full(len(st), s, np.uint16))
        ho.append(st)
        hz.append(np.minimum(np.uint64(p["chunk"]), np.uint64(start + fill) - st))
    hs = np.tile(np.concatenate(hs), p["passes"])
    ho = np.tile(np.concatenate(ho), p["passes"])
    hz = np.tile(np.concatenate(hz), p["passes"])
    nh = len(hs)
    hog = make_ops(nh, OpKind.PRIVATE_WRITE, hs, ho, hz, tokens.take(nh), -1)

    # interleave hogger steps between I/O actions (never inside one), spread evenly at random
    starts = np.flatnonzero(np.isin(io["kind"], (OpKind.TO_SHARED, OpKind.UNPIN))
                            | ((io["kind"] == OpKind.TO_PRIVATE)
                               & ~np.r_[False, io["kind"][:-1] == OpKind.UNPIN]))
    bounds = np.r_[starts, len(io)]
    pos = np.sort(rng.choice(bounds, size=nh, replace=True)) if len(io) else np.zeros(nh, np.int64)
    if len(io):
        t_io = io["t_ns"]
        hog["t_ns"] = np.where(pos < len(io), t_io[np.minimum(pos, len(io) - 1)],
                               t_io[-1] if len(io) else -1)
    ops = np.insert(io, pos, hog)
    info.update({"hogger_steps": nh, "hogger_bytes": int(hz.sum()),
                 "io_conversions": int(np.isin(io["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE)).sum())})
    return ops, info


@_register("huge-scatter", {
    **ARENA,
    "folio": Param("choice", "2M", "huge folio size the scatter targets", choices=("2M", "1G")),
    "populate": Param("bool", True, "the guest writes the whole region first, so every huge "
                      "folio is allocated before it is broken up"),
    "revert": Param("bool", True, "convert every page back to private at the end"),
    "rate": RATE,
}, "one 4K conversion in every huge folio, in random order",
   "a 4K hole splits a huge page under dual backing; a 4K conversion splits a huge "
   "guest_memfd folio in place (HugeTLB guest_memfd design)", default_touch=("host-write",))
def gen_huge_scatter(layout, rng, p, touch):
    folio = SIZE_2M if p["folio"] == "2M" else SIZE_1G
    regions = arena(layout, p["slots"], p["start"], p["span"])
    for s, start, size in regions:
        if start % folio:
            raise ValueError(f"start {format_size(start)} is not aligned to the {p['folio']} folio")
    fslot, foff = cells(regions, folio)
    n = len(fslot)
    if n == 0:
        raise ValueError(f"the region holds no whole {p['folio']} folio")
    order = rng.permutation(n)
    fslot, foff = fslot[order], foff[order]
    page = rng.integers(0, folio // PAGE_SIZE, size=n).astype(np.uint64) * np.uint64(PAGE_SIZE)
    off = foff + page
    tokens = Tokens(rng)
    parts = []
    if p["populate"]:
        parts.append(np.concatenate([
            make_ops(1, OpKind.PRIVATE_WRITE, s, start, size // folio * folio, tokens.take(1), -1)
            for s, start, size in regions]))
    t = arrivals(rng, 2 * n if p["revert"] else n, p["rate"])
    conv = make_ops(n, OpKind.TO_SHARED, fslot, off, PAGE_SIZE, 0, t[:n])
    cols = [(conv, np.ones(n, bool))]
    host_w = tokens.take(n)
    for a, ops in touch_columns(touch, touch.after_shared(), conv, tokens, {"host-write": host_w}):
        cols.append((ops, np.ones(n, bool)))
    parts.append(interleave(cols))
    if p["revert"]:
        back = rng.permutation(n)
        conv2 = make_ops(n, OpKind.TO_PRIVATE, fslot[back], off[back], PAGE_SIZE, 0, t[n:])
        cols = [(conv2, np.ones(n, bool))]
        read_tok = {}
        if "host-write" in touch.after_shared():
            read_tok["guest-read"] = expected_after_private(layout, host_w[back])
        for a, ops in touch_columns(touch, touch.after_private(), conv2, tokens, None, read_tok):
            cols.append((ops, np.ones(n, bool)))
        parts.append(interleave(cols))
    return np.concatenate(parts), {"folios": n, "folio_size": folio}


@_register("mixed", {
    **ARENA,
    "requests": Param("count", 100000, "conversion requests"),
    "shared_fraction": Param("fraction", 0.5, "direction mix: share of requests that convert to "
                             "shared (the rest convert to private)"),
    "size_dist": Param("choice", "list", "list: sizes/size_weights; log-uniform: powers of two "
                       "from size_min to size_max, each equally likely", choices=("list", "log-uniform")),
    "sizes": Param("sizes", [4096, 65536, 2 * MiB], "request sizes (size_dist = list)"),
    "size_weights": Param("floats", [], "weights of sizes (default equal)"),
    "size_min": Param("size", 4096, "smallest request (size_dist = log-uniform)"),
    "size_max": Param("size", 2 * MiB, "largest request (size_dist = log-uniform)"),
    "locality": Param("choice", "uniform", "where requests land: uniform, zipf hot spots, or "
                      "sequential sweeps", choices=("uniform", "zipf", "sequential")),
    "zipf_s": Param("float", 1.1, "zipf exponent for locality = zipf", minimum=0.0),
    "invalid_fraction": Param("fraction", 0.0, "share of requests made invalid on purpose, half "
                              "with a start 2K off alignment, half with size 0 (both EINVAL), to "
                              "measure the failure path; they get no touches"),
    "rate": RATE,
}, "independent requests with a chosen size distribution, locality and direction mix",
   "parametric: for sweeps between the families above", default_touch=("host-write",))
def gen_mixed(layout, rng, p, touch):
    if p["size_dist"] == "log-uniform":
        if p["size_min"] > p["size_max"]:
            raise ValueError("size_min is larger than size_max")
        lo = int(np.log2(p["size_min"]))
        hi = int(np.log2(p["size_max"]))
        sizes = [1 << e for e in range(lo, hi + 1) if (1 << e) >= p["size_min"]
                 and (1 << e) <= p["size_max"] and (1 << e) % PAGE_SIZE == 0]
        if not sizes:
            raise ValueError("no power of two between size_min and size_max")
        weights = []
    else:
        sizes, weights = p["sizes"], p["size_weights"]
    regions = arena(layout, p["slots"], p["start"], p["span"])
    cell = int(max(sizes))
    cslot, coff = cells(regions, cell)
    if len(cslot) == 0:
        raise ValueError(f"the region is smaller than the largest request ({format_size(cell)})")
    n = p["requests"]
    size = choose_sizes(rng, n, sizes, weights)
    if p["locality"] == "sequential":
        c = np.arange(n) % len(cslot)
    else:
        c = placement_sampler(rng, len(cslot), p["locality"], p["zipf_s"])(n)
    sub = (rng.random(n) * np.maximum(np.uint64(1), np.uint64(cell) // size)).astype(np.uint64) * size
    sub = np.minimum(sub, np.uint64(cell) - size)
    to_shared = rng.random(n) < p["shared_fraction"]
    kind = np.where(to_shared, OpKind.TO_SHARED, OpKind.TO_PRIVATE).astype(np.uint8)
    t = arrivals(rng, n, p["rate"])
    conv = make_ops(n, kind, cslot[c], coff[c] + sub, size, 0, t)
    invalid = rng.random(n) < p["invalid_fraction"]
    if invalid.any():
        half = invalid & (rng.random(n) < 0.5)
        # 2K off alignment: still inside the slot (size shrinks by 4K, or stays 0 if 4K)
        unaligned = invalid & ~half
        conv["offset"][unaligned] += np.uint64(PAGE_SIZE // 2)
        conv["size"][unaligned] -= np.uint64(PAGE_SIZE)
        conv["size"][half] = 0
    tokens = Tokens(rng)
    cols = [(conv, np.ones(n, bool))]
    # requests overlap freely, so reads cannot know what they will find: unchecked
    for a, ops in touch_columns(touch, touch.after_shared(), conv, tokens):
        cols.append((ops, to_shared & ~invalid))
    for a, ops in touch_columns(touch, touch.after_private(), conv, tokens):
        cols.append((ops, ~to_shared & ~invalid))
    return interleave(cols), {"requests": n, "to_shared": int(to_shared.sum()),
                              "invalid_requests": int(invalid.sum())}


def touch_stream(conv: np.ndarray, touch: Touch, rng: np.random.Generator) -> np.ndarray:
    """Add the touches of `touch` after each conversion of a conversion-only stream (a
    replayed trace).  Nothing is known about contents there, so reads are unchecked."""
    if not touch.actions or len(conv) == 0:
        return conv
    tokens = Tokens(rng)
    ok = ~invalid_conversions(conv)     # a rejected request converts nothing to touch
    to_shared = (conv["kind"] == OpKind.TO_SHARED) & ok
    to_private = (conv["kind"] == OpKind.TO_PRIVATE) & ok
    cols = [(conv, np.ones(len(conv), bool))]
    for a, ops in touch_columns(touch, touch.after_shared(), conv, tokens):
        cols.append((ops, to_shared))
    for a, ops in touch_columns(touch, touch.after_private(), conv, tokens):
        cols.append((ops, to_private))
    return interleave(cols)


def invalid_conversions(ops: np.ndarray) -> np.ndarray:
    """Mask of conversions that the kernel (and QEMU before it) rejects with EINVAL:
    size 0, or start or size not 4K aligned."""
    conv = np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))
    return conv & ((ops["size"] == 0) | (ops["offset"] % PAGE_SIZE != 0) | (ops["size"] % PAGE_SIZE != 0))


def check_ops(ops: np.ndarray, layout: Layout, allow_invalid_conversions: bool = False) -> str | None:
    """First reason why `ops` are not valid requests for `layout` (None when all are):
    4K aligned, non-empty, inside their memslot, known kind.  With
    allow_invalid_conversions, conversions may be unaligned or empty (to exercise the
    failure path), but still lie inside their memslot; touches never may."""
    if len(ops) == 0:
        return None
    nslots = len(layout.memslots)
    if int(ops["slot"].max()) >= nslots:
        return f"op {int(np.argmax(ops['slot'] >= nslots))}: slot out of range"
    sizes = np.array([m.size for m in layout.memslots], dtype=np.uint64)
    malformed = (ops["offset"] % PAGE_SIZE != 0) | (ops["size"] % PAGE_SIZE != 0) | (ops["size"] == 0)
    if allow_invalid_conversions:
        malformed &= ~invalid_conversions(ops)
    bad = malformed | (ops["offset"] + ops["size"] > sizes[ops["slot"]]) \
        | ~np.isin(ops["kind"], [int(k) for k in OpKind])
    if bad.any():
        i = int(np.argmax(bad))
        return (f"op {i}: kind {int(ops['kind'][i])} slot {int(ops['slot'][i])} offset "
                f"0x{int(ops['offset'][i]):x} size 0x{int(ops['size'][i]):x} is not a valid request")
    t = ops["t_ns"]
    timed = t >= 0
    if timed.any() and (np.diff(t[timed]) < 0).any():
        return "t_ns goes backwards"
    return None
