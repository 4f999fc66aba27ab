"""Workload files: declarative conversion workloads (TOML, read like fio job files).

A workload file gives the guest's memory layout, the conversion stream of each phase (a
generator from bench/generators.py with its parameters, or a QEMU trace to replay), what is
touched after each conversion, repetitions, seed and strategy options.  The schema is
documented in workloads/README.md; this module checks a file against it and reports every
mistake as InputError naming the file and the line of the offending key.

Both backends consume the same Workload: the runner asks each phase for its op stream
(bench.ops.OP_DTYPE) and hands it to a strategy and a backend.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import time
import tomllib
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.errors import InputError
from bench.generators import (GENERATORS, TOUCHES, Param, Touch,
                              check_ops, coerce_param, format_size, kind_counts, parse_size,
                              touch_stream)
from bench.layout import GMEM_PAGE_SIZES, PLATFORMS, SHARED_BACKINGS, SHARED_PAGES, Layout, Memslot
from bench.ops import MAX_HOST_PROCS, OP_DTYPE, PAGE_SIZE
from bench.params import MAX_ADDRESS, MAX_REPETITIONS, MAX_SEED
from bench.strategies import HUGE_MODES

# What plain `gmembench run` runs: the three (SWIOTLB boot, 4K DMA churn on 2M
# folios, bulk 4 GiB round trips) plus the huge-page fragmentation worst case.  pkvm-share
# is not a headline: its dual run copies on every conversion, which no deployed stack does
# (pKVM shares in place, SW_PROTECTED dual backing discards) - a labelled hypothetical.
DEFAULT_SUITE = ["swiotlb-boot", "dma-churn", "bulk-roundtrip", "huge-scatter-2m"]

# --quick without a [quick] table: counts, memslot sizes and regions are divided by this,
# so the stream keeps its shape (buffer sizes, rounds, mixes stay the same).
QUICK_FACTOR = 16
QUICK_MAX_REPETITIONS = 3

# Strategy options a workload may set; bench/strategies.py reads them.
STRATEGY_OPTIONS = {
    "dual": {"copy": ("auto", True, False), "discard": (True, False)},
    "in-place": {"promote": (True, False), "huge": HUGE_MODES},
}

WORKLOAD_KEYS = {"name", "description", "repetitions", "seed"}
LAYOUT_KEYS = {"gmem_page_size", "shared_backing", "shared_page", "platform", "init_shared", "vcpus",
               "accepted", "tdx_private_2m", "memslot"}
MEMSLOT_KEYS = {"gpa", "size", "numa_node"}
PHASE_KEYS = {"name", "repeat", "generator", "trace", "touch", "touch_fraction", "touch_size",
              "touch_process"}
TRACE_KEYS = {"strict", "limit", "invalid"}
QUICK_KEYS = {"scale", "repetitions", "memslot", "phase", "params"}
TOP_KEYS = {"workload", "layout", "strategy", "params", "phase", "quick"}

MAX_INT = (1 << 63) - 1
MAX_REPEAT = 1_000_000
# KVM's x86 limit of user memslots (KVM_USER_MEM_SLOTS); ops number slots with 16 bits
MAX_MEMSLOTS = 32764
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


# ----------------------------------------------------------------------------- line numbers

_BARE = r'[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEYS = rf'(?:{_BARE})(?:[ \t]*\.[ \t]*(?:{_BARE}))*'
_ARRAY_HDR = re.compile(rf'^\s*\[\[\s*({_KEYS})\s*\]\]')
_TABLE_HDR = re.compile(rf'^\s*\[\s*({_KEYS})\s*\]')
_KEYVAL = re.compile(rf'^\s*({_KEYS})\s*=(.*)$')
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _split_keys(s: str) -> tuple[str, ...]:
    return tuple(k[1:-1] if k[0] in "\"'" else k for k in re.findall(_BARE, s))


class TomlLines:
    """Where each key of a TOML file is written (tomllib gives values, not positions).

    Paths are tuples of keys with array-of-tables indices, e.g. ("phase", 1, "buffers").
    line(path) gives the line of the key, or of its closest enclosing table."""

    def __init__(self, text: str):
        self.where: dict[tuple, int] = {}
        arrays: dict[tuple, int] = {}
        current: tuple = ()
        depth = 0
        in_string = None

        def resolve(keys):
            out = ()
            for k in keys:
                out += (k,)
                if out in arrays:
                    out += (arrays[out] - 1,)
            return out

        for no, line in enumerate(text.splitlines(), 1):
            if in_string:
                if in_string in line:
                    in_string = None
                continue
            if depth > 0:
                depth += self._delta(line)
                continue
            m = _ARRAY_HDR.match(line)
            if m:
                keys = _split_keys(m.group(1))
                path = resolve(keys[:-1]) + (keys[-1],)
                idx = arrays.get(path, 0)
                arrays[path] = idx + 1
                current = path + (idx,)
                self.where.setdefault(path, no)
                self.where.setdefault(current, no)
                continue
            m = _TABLE_HDR.match(line)
            if m:
                current = resolve(_split_keys(m.group(1)))
                self.where.setdefault(current, no)
                continue
            m = _KEYVAL.match(line)
            if m:
                self.where.setdefault(current + _split_keys(m.group(1)), no)
                value = m.group(2)
                for q in ('"""', "'''"):
                    if value.count(q) == 1:
                        in_string = q
                depth = max(0, self._delta(value))

    @staticmethod
    def _delta(s: str) -> int:
        s = _STRINGS.sub("", s).split("#", 1)[0]
        return s.count("[") + s.count("{") - s.count("]") - s.count("}")

    def line(self, path) -> int | None:
        path = tuple(path)
        while path:
            if path in self.where:
                return self.where[path]
            path = path[:-1]
        return None


def _fmt_path(path) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out


class _Ctx:
    """One file being read: raises InputError at the right line."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = TomlLines(text)
        # keys of a phase that came from [quick.phase.NAME]: ("phase", i) -> (table path, keys)
        self.redirect: dict[tuple, tuple[tuple, set]] = {}

    def error(self, path, message):
        path = tuple(path)
        if len(path) >= 3 and path[:2] in self.redirect:
            target, keys = self.redirect[path[:2]]
            if path[2] in keys:
                path = target + path[2:]
        where = _fmt_path(path)
        raise InputError(f"{where}: {message}" if where else message, str(self.path),
                         self.lines.line(path))

    def table(self, value, path):
        if not isinstance(value, dict):
            self.error(path, f"expected a table, got {type(value).__name__}")
        return value

    def keys(self, table, allowed, path):
        for k in table:
            if k not in allowed:
                from bench.params import suggestion
                self.error(tuple(path) + (k,),
                           f"unknown key {k!r}{suggestion(str(k), allowed)} (expected one of: "
                           f"{', '.join(sorted(allowed))})")

    def int_(self, table, key, path, default=None, minimum=0, maximum=MAX_INT):
        if key not in table:
            if default is None:
                self.error(path, f"missing key {key!r}")
            return default
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
            self.error(tuple(path) + (key,), f"expected an integer from {minimum} to "
                       f"{maximum}, got {v!r}")
        return v

    def name_(self, table, key, path, default):
        """A name used in result keys and file names: short, no path separators."""
        v = self.str_(table, key, path, default)
        if not NAME_RE.fullmatch(v):
            self.error(tuple(path) + (key,), f"expected a name of 1-64 letters, digits, '.', "
                       f"'_', '+' or '-' (starting with a letter or digit), got {v!r}")
        return v

    def str_(self, table, key, path, default=None, choices=None):
        if key not in table:
            if default is None:
                self.error(path, f"missing key {key!r}")
            return default
        v = table[key]
        if not isinstance(v, str):
            self.error(tuple(path) + (key,), f"expected a string, got {v!r}")
        if choices is not None and v not in choices:
            self.error(tuple(path) + (key,), f"expected one of {', '.join(map(repr, choices))}, got {v!r}")
        return v

    def bool_(self, table, key, path, default):
        v = table.get(key, default)
        if not isinstance(v, bool):
            self.error(tuple(path) + (key,), f"expected true or false, got {v!r}")
        return v

    def size(self, table, key, path, default=None, aligned=PAGE_SIZE, allow_zero=False):
        if key not in table:
            if default is None:
                self.error(path, f"missing key {key!r}")
            return default
        try:
            n = parse_size(table[key])
        except ValueError as e:
            self.error(tuple(path) + (key,), str(e))
        if n >= MAX_ADDRESS:
            self.error(tuple(path) + (key,), f"expected a size below 4 PiB (2^52, the widest "
                       f"physical address of any CPU), got {table[key]!r}")
        if n == 0 and not allow_zero:
            self.error(tuple(path) + (key,), "expected a size > 0")
        if n % aligned:
            self.error(tuple(path) + (key,), f"{table[key]!r} is not a multiple of {format_size(aligned)}")
        return n


# ----------------------------------------------------------------------------- model

@dataclass
class _Named:
    name: str


@contextmanager
def memory_cap():
    """While a stream is generated, the address space may grow by at most half of
    MemAvailable (RLIMIT_AS): a stream too large for this machine is a MemoryError, turned
    into an InputError, instead of an exhausted machine.  Yields the cap in bytes."""
    import resource
    from bench.params import mem_available
    avail = mem_available()
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, StopIteration, ValueError):
        avail = None
    if avail is None:
        yield 0
        return
    cap = int(avail * 0.5)
    limit = vm + cap
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        yield cap
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Phase:
    """One phase of a workload: a generator with its parameters, or a trace to replay."""
    name: str
    repeat: int = 1                       # times this phase's stream is generated/appended
    generator: str | None = None
    params: dict = field(default_factory=dict)
    touch: Touch = field(default_factory=Touch)
    trace: Path | None = None
    strict: bool = False
    limit: int | None = None
    invalid: str = "skip"                 # trace requests QEMU rejects: skip | replay
    keep_fraction: float = 1.0            # --quick on a trace: share of its requests kept
    source: str = ""                      # workload file (for error messages)
    line: int | None = None

    def generate(self, layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Ops (OP_DTYPE, in execution order) and info about the stream."""
        with memory_cap() as cap:
            try:
                return self._generate(layout, rng)
            except MemoryError:
                raise InputError(f"phase {self.name!r}: its op stream does not fit in memory "
                                 f"(generating it needed more than the {format_size(cap)} "
                                 f"available; counts, sizes or the trace are too large)",
                                 self.source, self.line) from None

    def _generate(self, layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        if self.trace is not None:
            from bench.trace import parse_trace
            conv, info = parse_trace(self.trace, layout, strict=self.strict, limit=self.limit,
                                     replay_invalid=self.invalid == "replay")
            if self.keep_fraction < 1.0 and len(conv):
                keep = max(1, math.ceil(len(conv) * self.keep_fraction))
                info["quick_kept"] = keep
                conv = conv[:keep]
            ops = touch_stream(conv, self.touch, rng)
        else:
            gen = GENERATORS[self.generator]
            self._refuse_if_too_large(gen, layout)
            try:
                ops, info = gen.func(layout, rng, self.params, self.touch)
            except ValueError as e:
                raise InputError(f"phase {self.name!r} ({self.generator}): {e}", self.source, self.line)
        if len(ops) and int(ops["t_ns"].min()) < -1:
            raise InputError(f"phase {self.name!r}: arrival times overflow 64-bit nanoseconds "
                             f"(a rate too low, or timestamps too large)", self.source, self.line)
        asked_for_invalid = (self.trace is not None and self.invalid == "replay") or \
            self.params.get("invalid_fraction", 0) > 0
        problem = check_ops(ops, layout, allow_invalid_conversions=asked_for_invalid)
        if problem:   # a generator bug, or a trace replay bug: never hand it to a backend
            raise RuntimeError(f"phase {self.name!r} produced an invalid stream: {problem}")
        info = dict(info)
        info["ops"] = kind_counts(ops)
        return ops, info

    PROBE_COUNT = 1000

    def _refuse_if_too_large(self, gen, layout: Layout) -> None:
        """Estimate the stream's length before generating it: generate it with every
        count above PROBE_COUNT divided down to it, and multiply by the divisors (streams
        grow linearly with their counts; several large counts are taken as multiplying,
        an over-estimate).  Refuse, with the estimate, what cannot fit."""
        from bench.params import mem_available, stream_budget_error
        factor, probe = 1, dict(self.params)
        for k, p in gen.params.items():
            v = probe.get(k)
            if p.kind in ("count", "int") and isinstance(v, int) and v > self.PROBE_COUNT:
                f = -(-v // self.PROBE_COUNT)
                probe[k] = max(1, v // f)
                factor *= f
        if factor == 1:
            return
        try:
            small, _ = gen.func(layout, np.random.default_rng(0), probe, self.touch)
        except (ValueError, MemoryError):
            return                 # the probe itself is not a valid stream: the cap decides
        n = len(small) * factor
        problem = stream_budget_error(_Named(self.name), n, n * OP_DTYPE.itemsize,
                                      mem_available(), 1, 1)
        if problem:
            raise InputError(problem.replace("projected from 1 of 1 streams",
                                             f"estimated from the stream with counts / {factor}"),
                             self.source, self.line)

    def describe(self) -> dict:
        d = {"name": self.name, "repeat": self.repeat, "touch": self.touch.describe()}
        if self.trace is not None:
            d.update(trace=str(self.trace), strict=self.strict, limit=self.limit, invalid=self.invalid)
            if self.keep_fraction < 1.0:
                d["keep_fraction"] = self.keep_fraction
        else:
            d.update(generator=self.generator, params=dict(self.params))
        return d


@dataclass
class Workload:
    name: str
    description: str
    source: str
    layout: Layout
    phases: list[Phase]
    repetitions: int = 5
    seed: int = 0
    strategy_options: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    quick: bool = False
    scale: float = 1.0

    def rng(self, repetition: int = 0, phase_index: int = 0, repeat: int = 0) -> np.random.Generator:
        """The generator of one phase stream: reproducible from the seed, different per
        repetition, phase and repeat (the same seeding as bench.runner.build_ops)."""
        return np.random.default_rng([self.seed, repetition, phase_index, repeat])

    def streams(self, repetition: int = 0, rng: np.random.Generator | None = None):
        """Yield (phase, repeat_index, ops, info) in execution order.  Each stream gets
        self.rng(repetition, phase, repeat) unless one rng is given for all."""
        for pi, phase in enumerate(self.phases):
            for r in range(phase.repeat):
                g = rng if rng is not None else self.rng(repetition, pi, r)
                ops, info = phase.generate(self.layout, g)
                yield phase, r, ops, info

    def ops(self, repetition: int = 0, rng: np.random.Generator | None = None) -> tuple[np.ndarray, list[dict]]:
        """The whole stream of one repetition, phases and repeats appended, with the timed
        parts of later streams shifted to start after the last time so far (each stream's
        t_ns starts at 0).  Each info gets 'phase', 'repeat' and 'first_op'/'n_ops' (its
        slice of the stream)."""
        from bench.params import mem_available, stream_budget_error
        parts, infos = [], []
        t_end = 0
        n = 0
        nbytes = 0
        total_streams = sum(p.repeat for p in self.phases)
        budget = mem_available()
        for done, (phase, r, ops, info) in enumerate(self.streams(repetition, rng), 1):
            # the stream is held whole (ops, compiled steps, results): refuse, with the
            # estimate, a repetition that cannot fit, as soon as the first streams show it
            nbytes += ops.nbytes
            n += len(ops)
            problem = stream_budget_error(self, n * total_streams // done,
                                          nbytes * total_streams // done, budget, done,
                                          total_streams)
            if problem:
                raise InputError(problem, self.source)
            n -= len(ops)
            ops = ops.copy()
            timed = ops["t_ns"] >= 0
            if timed.any():
                if int(ops["t_ns"][timed].max()) + t_end >= (1 << 62):
                    raise InputError(f"phase {phase.name!r}: arrival times pass 2^62 ns "
                                     f"(146 years): a rate far too low or a trace timestamp "
                                     f"far too large", self.source, phase.line)
                ops["t_ns"][timed] += t_end
                t_end = int(ops["t_ns"][timed].max()) + 1
            info = dict(info, phase=phase.name, repeat=r, first_op=n, n_ops=len(ops))
            n += len(ops)
            parts.append(ops)
            infos.append(info)
        all_ops = np.concatenate(parts) if parts else np.zeros(0, dtype=OP_DTYPE)
        return all_ops, infos

    def describe(self) -> dict:
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "repetitions": self.repetitions, "seed": self.seed, "quick": self.quick,
            "scale": self.scale, "layout": self.layout.to_dict(),
            "strategy_options": self.strategy_options, "params": self.params,
            "phases": [p.describe() for p in self.phases],
        }

    def render(self) -> str:
        """The resolved definition in human units (gmembench workloads show)."""
        L = self.layout
        out = [f"workload {self.name}   ({self.source})",
               f"  {self.description}",
               f"  repetitions {self.repetitions}, seed {self.seed}"
               + (f", quick variant (scale {self.scale:g})" if self.quick else "")]
        out.append(f"layout: guest {format_size(L.guest_size)} in {len(L.memslots)} memslot(s); "
                   f"guest_memfd pages {_page_name(L.gmem_page_size)}; dual's shared backing "
                   f"{L.shared_backing}/{L.shared_page}; platform {L.platform}; "
                   f"init_shared {'yes' if L.init_shared else 'no'}; vcpus {L.vcpus}; "
                   f"accepted {'yes' if L.accepted else 'no'}"
                   + ("; TDX 2M private leaves (huge-page series)" if L.tdx_private_2m else ""))
        for i, m in enumerate(L.memslots):
            out.append(f"  slot {i}: gpa 0x{m.gpa:x}  size {format_size(m.size)}  numa node {m.numa_node}")
        if self.strategy_options:
            for s, opts in self.strategy_options.items():
                out.append(f"strategy {s}: " + ", ".join(f"{k} = {v}" for k, v in opts.items()))
        if self.params:
            out.append("params: " + ", ".join(
                f"{k} = {format_size(v) if isinstance(v, int) and _is_size_key(k) else v}"
                for k, v in self.params.items()))
        for i, ph in enumerate(self.phases, 1):
            head = f"phase {i}/{len(self.phases)} {ph.name!r} x{ph.repeat}: "
            if ph.trace is not None:
                out.append(head + f"replay trace {ph.trace}")
                for c in _trace_header(ph.trace):
                    out.append(f"    {c}")
                out.append(f"    strict = {ph.strict}, invalid = {ph.invalid!r}"
                           + (f", limit = {ph.limit}" if ph.limit else "")
                           + (f", keep first {ph.keep_fraction:g} of requests" if ph.keep_fraction < 1 else ""))
            else:
                gen = GENERATORS[ph.generator]
                out.append(head + f"generator {ph.generator} - {gen.summary}")
                out.append(f"    grounded in: {gen.grounding}")
                for k, v in ph.params.items():
                    out.append(f"    {k} = {_fmt_value(gen.params[k], v)}")
            out.append(f"    touch after each conversion: {ph.touch.describe()}")
        return "\n".join(out)


def _trace_header(path: Path, most: int = 3) -> list[str]:
    """The comment lines a trace starts with (the shipped synthetic traces say what they are)."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.startswith("#") or len(out) == most:
                    break
                out.append(line.rstrip("\n"))
    except OSError:
        pass
    return out


def _page_name(n: int) -> str:
    return {v: k.upper() for k, v in GMEM_PAGE_SIZES.items()}.get(n, format_size(n))


def _fmt_value(p: Param, v) -> str:
    if p.kind in ("size", "span", "offset") and isinstance(v, int):
        return format_size(v) if v else "0"
    if p.kind == "sizes":
        return "[" + ", ".join(format_size(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def _is_size_key(k: str) -> bool:
    return k.endswith(("_memory", "_size", "_bytes")) or k == "memory"


# ----------------------------------------------------------------------------- reading

def _read(path: Path) -> tuple[dict, _Ctx]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read workload file: {e.strerror}", str(path))
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 text file", str(path))
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise InputError("not valid TOML for a workload: arrays or tables nested too deep",
                         str(path)) from None
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = int(m.group(1)) if m else None
        msg = re.sub(r" *\(at line.*\)", "", msg)
        raise InputError(f"not valid TOML: {msg}", str(path), line)
    return doc, _Ctx(path, text)


def _layout(ctx: _Ctx, lay: dict, slots_raw, slots_path) -> Layout:
    P = ("layout",)
    ctx.keys(lay, LAYOUT_KEYS, P)
    page_raw = lay.get("gmem_page_size", "4k")
    page_key = str(page_raw).lower()
    if page_key not in GMEM_PAGE_SIZES:
        try:
            n = parse_size(page_raw)
        except ValueError:
            n = None
        if n not in GMEM_PAGE_SIZES.values():
            ctx.error(P + ("gmem_page_size",), f"expected one of 4k, 2m, 1g, got {page_raw!r}")
        page = n
    else:
        page = GMEM_PAGE_SIZES[page_key]
    backing = ctx.str_(lay, "shared_backing", P, "anon", SHARED_BACKINGS)
    shared_page = ctx.str_(lay, "shared_page", P, "4k", SHARED_PAGES)
    platform = ctx.str_(lay, "platform", P, "preserve", PLATFORMS)
    init_shared = ctx.bool_(lay, "init_shared", P, False)
    vcpus = ctx.int_(lay, "vcpus", P, Layout.vcpus, minimum=1)
    # TDX/SNP guests accept their memory before they convert it (memblock / buddy
    # allocations are accepted): the default there; a guest_memfd created shared has nothing
    # private to accept
    accepted = ctx.bool_(lay, "accepted", P, platform in ("zero", "destroy") and not init_shared)
    if accepted and init_shared:
        ctx.error(P + ("accepted",), "expected false with init_shared = true (a guest_memfd "
                  "created shared holds no private memory to accept)")
    tdx_private_2m = ctx.bool_(lay, "tdx_private_2m", P, False)
    if tdx_private_2m and platform != "zero":
        ctx.error(P + ("tdx_private_2m",), f"expected false: platform {platform!r} is not TDX "
                  f"(zero)")
    if not isinstance(slots_raw, list) or not slots_raw:
        ctx.error(slots_path, "expected at least one [[layout.memslot]] table with gpa and size")
    if len(slots_raw) > MAX_MEMSLOTS:
        ctx.error(slots_path + (MAX_MEMSLOTS,), f"{len(slots_raw)} memslots: at most "
                  f"{MAX_MEMSLOTS} (KVM's limit of user memslots on x86)")
    memslots = []
    for i, ms in enumerate(slots_raw):
        sp = slots_path + (i,)
        ctx.table(ms, sp)
        ctx.keys(ms, MEMSLOT_KEYS, sp)
        gpa = ctx.size(ms, "gpa", sp, aligned=page, allow_zero=True)
        size = ctx.size(ms, "size", sp, aligned=page)
        node = ctx.int_(ms, "numa_node", sp, 0, maximum=1023)
        if gpa + size > MAX_ADDRESS:
            ctx.error(sp + ("size",), f"memslot ends at {gpa + size:#x}, past 2^52 (the widest "
                      f"guest-physical address space)")
        memslots.append(Memslot(gpa=gpa, size=size, numa_node=node))
    order = sorted(range(len(memslots)), key=lambda i: memslots[i].gpa)
    for a, b in zip(order, order[1:]):
        if memslots[a].gpa + memslots[a].size > memslots[b].gpa:
            ctx.error(slots_path + (b, "gpa"), f"memslot {b} overlaps memslot {a}")
    return Layout(memslots=tuple(memslots), gmem_page_size=page, shared_backing=backing,
                  shared_page=shared_page, platform=platform, init_shared=init_shared,
                  vcpus=vcpus, accepted=accepted, tdx_private_2m=tdx_private_2m)


def _touch(ctx: _Ctx, ph: dict, path, default) -> Touch:
    raw = ph.get("touch", list(default))
    if raw == "none":
        raw = []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        ctx.error(path + ("touch",), f"expected a touch name or a list of them, got {raw!r}")
    for a in raw:
        if a not in TOUCHES:
            ctx.error(path + ("touch",), f"unknown touch {a!r} (expected \"none\" or any of "
                      f"{', '.join(TOUCHES)}; host touches follow a conversion to shared, "
                      f"guest touches a conversion to private)")
    if "touch_fraction" in ph and "touch_size" in ph:
        ctx.error(path + ("touch_size",), "give touch_fraction or touch_size, not both")
    fraction = 1.0
    size = None
    if "touch_fraction" in ph:
        f = ph["touch_fraction"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            ctx.error(path + ("touch_fraction",), f"expected a fraction in (0, 1], got {f!r}")
        fraction = float(f)
    if "touch_size" in ph:
        size = ctx.size(ph, "touch_size", path)
    process = ctx.int_(ph, "touch_process", path, 0, minimum=0)
    if process >= MAX_HOST_PROCS:
        ctx.error(path + ("touch_process",), f"expected a host process 0..{MAX_HOST_PROCS - 1} "
                  f"(0 = the VMM), got {process}")
    return Touch(tuple(raw), fraction, size, process)


def _phase(ctx: _Ctx, ph: dict, path, base: Path, index: int) -> Phase:
    ctx.table(ph, path)
    name = ctx.name_(ph, "name", path, f"phase{index + 1}")
    repeat = ctx.int_(ph, "repeat", path, 1, minimum=1, maximum=MAX_REPEAT)
    line = ctx.lines.line(path)
    if ("generator" in ph) == ("trace" in ph):
        ctx.error(path, "a phase needs exactly one of generator = \"NAME\" or trace = \"FILE\"")
    if "trace" in ph:
        ctx.keys(ph, PHASE_KEYS | TRACE_KEYS, path)
        rel = ctx.str_(ph, "trace", path)
        trace = (base / rel) if not os.path.isabs(rel) else Path(rel)
        if trace.is_dir():
            ctx.error(path + ("trace",), f"trace {rel!r} is a directory, not a trace file ({trace})")
        if not trace.is_file():
            ctx.error(path + ("trace",), f"trace file {rel!r} not found (looked for {trace})")
        strict = ctx.bool_(ph, "strict", path, False)
        limit = ctx.int_(ph, "limit", path, 0, minimum=0, maximum=(1 << 32) - 1) or None
        invalid = ctx.str_(ph, "invalid", path, "skip", ("skip", "replay"))
        touch = _touch(ctx, ph, path, ())
        return Phase(name=name, repeat=repeat, trace=trace, strict=strict, limit=limit,
                     invalid=invalid, touch=touch, source=str(ctx.path), line=line)
    gname = ctx.str_(ph, "generator", path)
    gen = GENERATORS.get(gname)
    if gen is None:
        ctx.error(path + ("generator",), f"unknown generator {gname!r} (expected one of: "
                  f"{', '.join(sorted(GENERATORS))})")
    touch_keys = {"touch", "touch_fraction", "touch_size", "touch_process"}
    allowed = (PHASE_KEYS - (set() if gen.takes_touch else touch_keys)) | set(gen.params)
    if not gen.takes_touch:
        for k in touch_keys & set(ph):
            ctx.error(path + (k,), f"generator {gname} has a fixed touch pattern; {k} does not apply")
    ctx.keys(ph, allowed, path)
    params = {}
    for k, p in gen.params.items():
        if k in ph:
            try:
                params[k] = coerce_param(p, ph[k])
            except ValueError as e:
                ctx.error(path + (k,), str(e))
        else:
            params[k] = p.default
    touch = _touch(ctx, ph, path, gen.default_touch) if gen.takes_touch else Touch()
    return Phase(name=name, repeat=repeat, generator=gname, params=params, touch=touch,
                 source=str(ctx.path), line=line)


def _strategy_options(ctx: _Ctx, raw) -> dict:
    P = ("strategy",)
    ctx.table(raw, P)
    ctx.keys(raw, set(STRATEGY_OPTIONS), P)
    out = {}
    for s, opts in raw.items():
        ctx.table(opts, P + (s,))
        ctx.keys(opts, set(STRATEGY_OPTIONS[s]), P + (s,))
        for k, v in opts.items():
            allowed = STRATEGY_OPTIONS[s][k]
            if not any(v is a or (isinstance(a, str) and v == a) for a in allowed):
                ctx.error(P + (s, k), f"expected one of {', '.join(_toml_repr(a) for a in allowed)}, got {v!r}")
        out[s] = dict(opts)
    return out


def _toml_repr(v) -> str:
    return {True: "true", False: "false"}.get(v, repr(v)) if isinstance(v, bool) else repr(v)


def _params(ctx: _Ctx, raw, path) -> dict:
    """[params]: the same keys, types and bounds as --param (bench.params), either backend."""
    from bench.params import check_params
    ctx.table(raw, path)

    def fail(key, msg):
        ctx.error(path + (key,), msg)
    return check_params(raw, None, False, fail)


def _scale_down(v: int, factor: int, align: int, minimum: int) -> int:
    return max(minimum, v // factor // align * align)


def apply_overrides(doc: dict, overrides: dict) -> None:
    """Set dotted keys in a workload file's TOML dict before it is validated (sweeps vary
    any key this way): "layout.gmem_page_size", "params.prefragment", "strategy.dual.copy",
    "layout.memslot.0.size" (an index into an array of tables), "phase.churn.rate" (a phase
    by name, or by index).  A path that leads nowhere raises InputError."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = doc
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                named = [j for j, t in enumerate(node) if isinstance(t, dict) and t.get("name") == part]
                if named:
                    j = named[0]
                elif part.isdigit() and int(part) < len(node):
                    j = int(part)
                else:
                    raise InputError(f"override {dotted}: no entry {part!r} in {'.'.join(parts[:i])}")
                if last:
                    node[j] = value
                else:
                    node = node[j]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise InputError(f"override {dotted}: {'.'.join(parts[:i])} is not a table")


def load_workload(name_or_path: str, quick: bool = False, overrides: dict | None = None) -> Workload:
    """Read a workload by name (searched in workload_dirs()) or by file path, with
    `overrides` (apply_overrides) set before validation.  Bad input raises InputError FILE:LINE."""
    path = _resolve(name_or_path)
    doc, ctx = _read(path)
    if overrides:
        apply_overrides(doc, overrides)
    if "workload" not in doc:
        raise InputError("not a workload file: it has no [workload] table "
                         f"(top-level tables: {', '.join(doc) or 'none'})", str(path), 1)
    ctx.keys(doc, TOP_KEYS, ())
    wl = ctx.table(doc.get("workload", {}), ("workload",))
    ctx.keys(wl, WORKLOAD_KEYS, ("workload",))
    name = ctx.name_(wl, "name", ("workload",), path.stem)
    description = ctx.str_(wl, "description", ("workload",))
    repetitions = ctx.int_(wl, "repetitions", ("workload",), 5, minimum=1, maximum=MAX_REPETITIONS)
    seed = ctx.int_(wl, "seed", ("workload",), 0, maximum=MAX_SEED)
    lay = ctx.table(doc.get("layout", {}), ("layout",))
    q = ctx.table(doc.get("quick", {}), ("quick",))
    ctx.keys(q, QUICK_KEYS, ("quick",))
    overrides = quick and bool(q)

    if overrides and "memslot" in q:
        layout = _layout(ctx, lay, q["memslot"], ("quick", "memslot"))
    else:
        layout = _layout(ctx, lay, lay.get("memslot"), ("layout", "memslot"))
    strategy_options = _strategy_options(ctx, doc.get("strategy", {}))
    params = _params(ctx, doc.get("params", {}), ("params",))

    raw_phases = doc.get("phase")
    if not isinstance(raw_phases, list) or not raw_phases:
        ctx.error(("phase",) if "phase" in doc else (), "expected at least one [[phase]] table")
    q_phases = ctx.table(q.get("phase", {}), ("quick", "phase")) if overrides else {}
    names = [p.get("name", f"phase{i + 1}") if isinstance(p, dict) else None for i, p in enumerate(raw_phases)]
    for i, n in enumerate(names):
        if n is not None and names.index(n) != i:   # results and [quick.phase.NAME] go by name
            ctx.error(("phase", i, "name"), f"phase name {n!r} is used twice")
    for qn in q_phases:
        if qn not in names:
            ctx.error(("quick", "phase", qn), f"no phase named {qn!r} (phases: {', '.join(map(str, names))})")
    phases = []
    for i, raw in enumerate(raw_phases):
        ctx.table(raw, ("phase", i))
        merged = dict(raw)
        if overrides and names[i] in q_phases:
            ov = ctx.table(q_phases[names[i]], ("quick", "phase", names[i]))
            merged.update(ov)
            ctx.redirect[("phase", i)] = (("quick", "phase", names[i]), set(ov))
        phases.append(_phase(ctx, merged, ("phase", i), path.parent, i))

    scale = 1.0
    if quick and overrides:
        if "scale" not in q:
            ctx.error(("quick",), "a [quick] table must give scale = quick size / full size")
        s = q["scale"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1:
            ctx.error(("quick", "scale"), f"expected a number in (0, 1], got {s!r}")
        scale = float(s)
        repetitions = ctx.int_(q, "repetitions", ("quick",), min(repetitions, QUICK_MAX_REPETITIONS),
                               minimum=1, maximum=MAX_REPETITIONS)
        if "params" in q:
            params.update(_params(ctx, q["params"], ("quick", "params")))
    elif quick:
        scale = 1.0 / QUICK_FACTOR
        repetitions = min(repetitions, QUICK_MAX_REPETITIONS)
        layout = _quick_layout(layout, phases)
        for ph in phases:
            _quick_phase(ph, layout)
    if not quick and q:
        load_workload(str(path), quick=True, overrides=overrides)    # a mistake in [quick] is found without --quick too
    return Workload(name=name, description=description, source=str(path), layout=layout,
                    phases=phases, repetitions=repetitions, seed=seed,
                    strategy_options=strategy_options, params=params, quick=quick, scale=scale)


def _quick_layout(layout: Layout, phases: list[Phase]) -> Layout:
    if any(ph.trace is not None for ph in phases):
        return layout       # a trace's addresses are fixed: keep the memslots, cut the trace
    page = max(layout.gmem_page_size, PAGE_SIZE)
    slots = tuple(Memslot(m.gpa, max(page, math.ceil(m.size / QUICK_FACTOR / page) * page), m.numa_node)
                  for m in layout.memslots)
    return dataclasses.replace(layout, memslots=slots)


def _quick_phase(ph: Phase, layout: Layout) -> None:
    if ph.trace is not None:
        ph.keep_fraction = 1.0 / QUICK_FACTOR
        return
    page = max(layout.gmem_page_size, PAGE_SIZE)
    gen = GENERATORS[ph.generator]
    for k, p in gen.params.items():
        v = ph.params[k]
        if not p.quick_scaled or isinstance(v, str):
            continue
        if p.kind in ("count", "int"):
            ph.params[k] = max(1, math.ceil(v / QUICK_FACTOR))
        elif p.kind == "offset":
            ph.params[k] = _scale_down(v, QUICK_FACTOR, page, 0)
        else:
            ph.params[k] = _scale_down(v, QUICK_FACTOR, page if p.kind == "span" else PAGE_SIZE,
                                       page if p.kind == "span" else PAGE_SIZE)


# ----------------------------------------------------------------------------- finding files

def _packaged_dir() -> Path | None:
    """The workloads installed with the package (bench.workloads_data = workloads/ in
    pyproject.toml), else the workloads/ directory of a source checkout."""
    try:
        # a package without __init__.py is a namespace package: its files() is a
        # MultiplexedPath, not a path, so ask for the package's directories instead
        mod = importlib.import_module("bench.workloads_data")
        for d in getattr(mod, "__path__", []):
            if Path(d).is_dir():
                return Path(d)
    except ModuleNotFoundError:
        pass
    src = Path(__file__).resolve().parent.parent / "workloads"   # a source checkout
    return src if src.is_dir() else None


def packaged_file(name: str) -> Path:
    """A file shipped with the package's workloads (e.g. qualify-default.toml); the path
    is returned even when missing so the caller's 'not found' names it."""
    pkg = _packaged_dir()
    return (pkg or Path("workloads")) / name


def workload_dirs() -> list[Path]:
    """Where workload names are looked up, first match wins: each entry of
    $GMEMBENCH_WORKLOADS (os.pathsep separated), ./workloads, then the packaged copy."""
    dirs = []
    env = os.environ.get("GMEMBENCH_WORKLOADS", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(Path.cwd() / "workloads")
    pkg = _packaged_dir()
    if pkg:
        dirs.append(pkg)
    out, seen = [], set()
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen and d.is_dir():
            seen.add(key)
            out.append(d)
    return out


def list_workloads() -> list[tuple[str, str, Path]]:
    """(name, one-line description, path) of every workload file, the first of each name.
    A .toml file without a [workload] table is some other kind of file (e.g. a qualify
    spec) and is not listed; a file that is not valid TOML is listed, marked unreadable."""
    found = {}
    for d in workload_dirs():
        for f in sorted(d.glob("*.toml")):
            if f.stem in found:
                continue
            try:
                doc = tomllib.loads(f.read_text(encoding="utf-8"))
                if "workload" not in doc:
                    continue
                desc = str(doc.get("workload", {}).get("description", "")).strip().splitlines()
                desc = desc[0] if desc else "(no description)"
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError) as e:
                desc = f"(unreadable: {e})"
            found[f.stem] = (f.stem, desc, f)
    return sorted(found.values())


def _resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if not name_or_path.strip():
        raise InputError("workload: expected a workload name or a .toml file, got an empty name")
    if p.is_dir():
        raise InputError("is a directory, not a workload file (give a .toml file or a "
                         "workload name)", str(p))
    if p.suffix == ".toml" or os.sep in name_or_path or p.is_file():
        if not p.is_file():
            raise InputError("workload file not found", str(p))
        return p
    for d in workload_dirs():
        f = d / f"{name_or_path}.toml"
        if f.is_file():
            return f
    names = [n for n, _, _ in list_workloads()]
    from bench.params import suggestion
    raise InputError(f"unknown workload {name_or_path!r}{suggestion(name_or_path, names)} "
                     f"(known: {', '.join(names) or 'none'}; or give a .toml file)")


# ----------------------------------------------------------------------------- CLI

def add_workloads_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="list", choices=("list", "show"),
                        help="list (default): names and descriptions; show NAME: the resolved definition")
    parser.add_argument("name", nargs="?", help="workload name or .toml file (for show)")
    parser.add_argument("--quick", action="store_true", help="show the scaled-down variant")
    parser.add_argument("--stats", action="store_true",
                        help="also generate the stream and count its ops per phase")


def cli_workloads(args) -> int:
    if args.action == "list":
        rows = list_workloads()
        if not rows:
            print("no workload files found in: " + ", ".join(map(str, workload_dirs())))
            return 0
        width = max(len(n) for n, _, _ in rows)
        for name, desc, _ in rows:
            print(f"{name:<{width}}  {desc}")
        return 0
    if not args.name:
        raise InputError("workloads show needs a workload name or file")
    w = load_workload(args.name, quick=args.quick)
    print(w.render())
    if args.stats:
        print("stream (seed %d, repetition 0):" % w.seed)
        t0 = time.perf_counter()
        for phase, r, ops, info in w.streams(0):
            print(f"  phase {phase.name!r} repeat {r}: {len(ops)} ops")
            for kind, c in info["ops"].items():
                print(f"    {kind:<14} {c['ops']:>10} ops  {format_size(c['bytes'])}")
            extra = {k: v for k, v in info.items() if k != "ops"}
            if extra:
                print("    info: " + ", ".join(f"{k}={v}" for k, v in extra.items()))
        print(f"  generated in {time.perf_counter() - t0:.2f} s")
    return 0
