"""Run parameters and strategy options: every key a user can set, its type, its bounds and
what it means, checked by one function whatever the source (a workload file's [params],
`--param KEY=VALUE`, `--option STRATEGY.KEY=VALUE`, a qualification spec).

A value from the command line is text and is read as its kind says ("yes" is a bool only
where a bool is expected); a value from TOML keeps its TOML type and must already be of
the right kind.  Anything else - an unknown key (with the closest known one suggested), a
value out of bounds, NaN or infinity, a key of the other backend - is an InputError that
names the source and says what was expected, before anything runs.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.errors import InputError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
PAGE = 4096
# Largest guest-physical address + size anything accepts: 52 bits, the widest MAXPHYADDR
# an x86-64 or arm64 CPU has.  Anything past it is a typo, never a machine.
MAX_ADDRESS = 1 << 52
MAX_SEED = (1 << 63) - 1            # stored as int64 in results and by numpy's seeding
MAX_REPETITIONS = 10_000
MAX_COUNT = 1_000_000_000           # generator counts; memory is checked separately


@dataclass(frozen=True)
class Spec:
    """One parameter.  kind: size | int | float | bool | choice."""
    kind: str
    doc: str
    backends: tuple = ("sim", "host")
    low: float | None = None           # inclusive bounds (low_open: exclusive low)
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    internal: bool = False             # set by code, never by a user

    def expected(self) -> str:
        k = self.kind
        if k == "bool":
            return "yes or no (true/false)"
        if k == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        what = {"size": "a size like 4K, 64M, 16G", "int": "an integer", "float": "a number"}[k]
        lo = ("> " if self.low_open else ">= ") + _num(self.low, k) if self.low is not None else ""
        hi = ("< " if self.high_open else "<= ") + _num(self.high, k) if self.high is not None else ""
        bounds = " and ".join(b for b in (lo, hi) if b)
        return what + (f" {bounds}" if bounds else "")


def _num(v, kind) -> str:
    if kind == "size":
        from bench.generators import format_size
        return format_size(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


# Every key the runner and the backends read from params.  Defaults live with the code
# that uses them (documented there); the bounds here are what makes a run meaningful.
PARAMS: dict[str, Spec] = {
    # the run (both backends)
    "warmup_repetitions": Spec("int", "repetitions run first and discarded (host default 1, "
                               "sim 0)", low=0, high=100),
    "series_points": Spec("int", "snapshots per repetition for the time series (200)",
                          low=1, high=100_000),
    "process_per_repetition": Spec("bool", "host: each measured repetition in a fresh process "
                                   "(yes)", backends=("host",)),
    # the simulator
    "host_memory": Spec("size", "simulated host memory (default 2 x guest + 2 GiB, at least "
                        "16 GiB); less than the guest makes allocations fail, which the "
                        "results count", backends=("sim",),
                        low=2 * MiB, high=MAX_ADDRESS, high_open=True),
    "prefragment": Spec("float", "share of 2M pageblocks holding a pinned unmovable page",
                        backends=("sim",), low=0.0, high=1.0),
    "engine": Spec("choice", "simulator engine (c)", backends=("sim",), choices=("c", "python")),
    # the real host
    "guard_share": Spec("float", "share of MemAvailable a host run may use (0.5)",
                        backends=("host",), low=0.0, low_open=True, high=1.0),
    "mem_available": Spec("size", "the MemAvailable figure the memory guard uses (now)",
                          backends=("host",), low=64 * MiB, high=MAX_ADDRESS, high_open=True),
    "max_scale": Spec("int", "largest down-scaling the memory guard may apply (1024)",
                      backends=("host",), low=1, high=1 << 20),
    "warmup_bytes": Spec("size", "anonymous memory touched before measuring (1 GiB)",
                         backends=("host",), low=0, high=MAX_ADDRESS, high_open=True),
    "overhead_reps": Spec("int", "NOP steps timed for the harness overhead (20001)",
                          backends=("host",), low=2, high=10_000_000),
    "overhead_pairs": Spec("int", "batch pairs (harness, bare) timed for the harness overhead "
                           "(10)", backends=("host",), low=1, high=10_000),
    "folio_fallback": Spec("bool", "run a 2M/1G guest_memfd workload on this kernel's 4K folios, "
                           "labelled (no)", backends=("host",)),
    "kpageflags": Spec("bool", "count intact huge folios from pagemap + kpageflags (yes)",
                       backends=("host",)),
    "snapshot_detail": Spec("bool", "also read /proc/self/smaps in every snapshot (no)",
                            backends=("host",)),
    "slowdown": Spec("float", "gate testing: a real delay inside each timed conversion step, "
                     "as a factor (1.0 = none)", backends=("host",), low=1.0, high=100.0),
    "slowdown_direction": Spec("choice", "gate testing: which conversions the slowdown delays "
                               "(both)", backends=("host",),
                               choices=("both", "to_shared", "to_private")),
    "allocatable_probe": Spec("bool", "after the run, grow the hugetlb pools to count the 2M / 1G "
                              "pages still allocatable, then restore them (yes)",
                              backends=("host",)),
    # set by the runner, never by a user
    "seed": Spec("int", "the workload's seed", low=0, high=MAX_SEED, internal=True),
}


def suggestion(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_key(key: str, known, what: str = "key") -> str:
    known = sorted(known)
    return (f"unknown {what} {key!r}{suggestion(key, known)}; expected one of: "
            + ", ".join(known))


_YES = ("yes", "true", "on", "1")
_NO = ("no", "false", "off", "0")


def coerce(spec: Spec, value: Any, text: bool) -> Any:
    """The value as its kind, or ValueError saying what was expected.  text: the value is
    command-line text (read by kind); else it is a TOML value (must have the right type)."""
    from bench.generators import parse_size
    bad = ValueError(f"expected {spec.expected()}, got {value!r}")
    k = spec.kind
    if k == "bool":
        if text and isinstance(value, str):
            low = value.strip().lower()
            if low in _YES:
                return True
            if low in _NO:
                return False
            raise bad
        if isinstance(value, bool):
            return value
        raise bad
    if k == "choice":
        if value in spec.choices:
            return value
        raise ValueError(f"expected {spec.expected()}, got {value!r}"
                         + suggestion(str(value), map(str, spec.choices)))
    if isinstance(value, bool):
        raise bad
    if k == "size":
        try:
            v = parse_size(value.strip() if isinstance(value, str) else value)
        except ValueError:
            raise bad from None
        if v % PAGE and v:
            raise ValueError(f"expected a multiple of 4K, got {value!r}")
    elif k == "int":
        if text and isinstance(value, str):
            try:
                v = int(value.strip(), 10)
            except ValueError:
                raise bad from None
        elif isinstance(value, int):
            v = value
        else:
            raise bad
    elif k == "float":
        if text and isinstance(value, str):
            try:
                v = float(value.strip())
            except ValueError:
                raise bad from None
        elif isinstance(value, (int, float)):
            v = float(value)
        else:
            raise bad
        if not math.isfinite(v):
            raise bad
    else:
        raise AssertionError(k)
    if spec.low is not None and (v < spec.low or (spec.low_open and v == spec.low)):
        raise bad
    if spec.high is not None and (v > spec.high or (spec.high_open and v == spec.high)):
        raise bad
    return v


def check_params(raw: dict, backend: str | None, text: bool,
                 fail: Callable[[str, str], None]) -> dict:
    """Checked and converted params.  fail(key, message) raises the source's InputError.
    backend: the backend that will run (a key of the other backend is refused), or None
    for a workload file, which may carry keys of both backends."""
    out = {}
    for key, value in raw.items():
        spec = PARAMS.get(key)
        if spec is None or spec.internal:
            fail(key, unknown_key(key, [k for k, s in PARAMS.items() if not s.internal],
                                  "parameter"))
        if backend is not None and backend not in spec.backends:
            fail(key, f"applies to the {' and '.join(spec.backends)} backend only, "
                      f"not to --backend {backend}")
        try:
            out[key] = coerce(spec, value, text)
        except ValueError as e:
            fail(key, str(e))
    return out


def cli_params(items: list[str], backend: str | None) -> dict:
    """--param KEY=VALUE ... checked; errors read `--param KEY: ...`."""
    raw = {}
    for it in items:
        key, value = split_kv(it, "--param", "KEY=VALUE")
        raw[key] = value

    def fail(key, msg):
        raise InputError(f"--param {key}: {msg}")
    return check_params(raw, backend, True, fail)


def split_kv(item: str, flag: str, form: str) -> tuple[str, str]:
    if "=" not in item:
        raise InputError(f"{flag} {item!r}: expected {form}")
    k, v = item.split("=", 1)
    k = k.strip()
    if not k:
        raise InputError(f"{flag} {item!r}: the key is empty (expected {form})")
    if not v.strip():
        raise InputError(f"{flag} {k}: the value is empty (expected {form})")
    return k, v.strip()


# ---- strategy options ----------------------------------------------------------------------

def option_value(strategy: str, key: str, value: Any, text: bool, allowed: dict) -> Any:
    """One strategy option checked against `allowed` (bench.workload.STRATEGY_OPTIONS:
    strategy -> key -> tuple of accepted values, True/False/strings); ValueError if not."""
    choices = allowed[strategy][key]
    if text and isinstance(value, str):
        low = value.strip().lower()
        if low in _YES and True in choices:
            return True
        if low in _NO and False in choices:
            return False
        for c in choices:
            if isinstance(c, str) and c == low:
                return c
    else:
        for c in choices:
            if value is c or (isinstance(c, str) and value == c):
                return c
    shown = ", ".join({True: "yes", False: "no"}.get(c, c) if isinstance(c, bool) else str(c)
                      for c in choices)
    raise ValueError(f"expected one of {shown}, got {value!r}")


def cli_options(items: list[str], allowed: dict) -> dict:
    """--option STRATEGY.KEY=VALUE ... checked; errors read `--option STRATEGY.KEY: ...`."""
    out: dict = {}
    for it in items:
        k, v = split_kv(it, "--option", "STRATEGY.KEY=VALUE")
        if "." not in k:
            raise InputError(f"--option {k}: expected STRATEGY.KEY=VALUE")
        s, key = k.split(".", 1)
        if s not in allowed:
            raise InputError(f"--option {k}: " + unknown_key(s, allowed, "strategy"))
        if key not in allowed[s]:
            raise InputError(f"--option {k}: " + unknown_key(key, allowed[s], f"{s} option"))
        try:
            out.setdefault(s, {})[key] = option_value(s, key, v, True, allowed)
        except ValueError as e:
            raise InputError(f"--option {k}: {e}") from None
    return out


def check_value(flag: str, value: int | None, low: int, high: int) -> None:
    """An integer command-line value (--seed, --repetitions) within bounds."""
    if value is not None and not low <= value <= high:
        raise InputError(f"{flag}: expected an integer from {low} to {high}, got {value}")


@dataclass
class Estimate:
    """Memory a run will need at its peak, by part (bytes), for the up-front check."""
    parts: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        from bench.generators import format_size
        return ", ".join(f"{k} {format_size(int(v))}" for k, v in self.parts.items() if v)


# ---- what a run needs ------------------------------------------------------------------------

def mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def sim_default_host_memory(guest: int) -> int:
    """bench.sim.backend.model_parameters' default: 2 x guest + 2 GiB, at least 16 GiB."""
    return max(16 * GiB, (2 * guest + 2 * GiB + GiB - 1) // GiB * GiB)


def sim_state_estimate(guest: int, host: int, engine: str) -> Estimate:
    """Peak memory of the simulator's state, by the per-page arrays each engine keeps
    (bench/sim/core.c: a state byte per host page, a pfn and map bytes per guest page;
    bench/sim/model.py + buddy.py: numpy arrays of 16+ bytes per guest page, two bytes
    per host page), for both the guest_memfd and dual's shared backing."""
    hp, gp = host // PAGE, guest // PAGE
    if engine == "python":
        return Estimate({"simulated host pages": 2 * hp, "simulated guest pages": 36 * gp})
    return Estimate({"simulated host pages": hp, "simulated guest pages": 12 * gp})


def check_run(wl, params: dict, backend: str, available: int | None = None) -> None:
    """Cross-checks of one workload with the params in force, and whether the run fits in
    memory: InputError with the estimate if not (before anything runs)."""
    from bench.generators import format_size
    guest = wl.layout.guest_size
    if backend == "sim":
        host = params.get("host_memory")
        host = host if host is not None else sim_default_host_memory(guest)
        est = sim_state_estimate(guest, host, params.get("engine", "c"))
        available = mem_available() if available is None else available
        if available is not None and est.total > available:
            raise InputError(f"workload {wl.name!r} cannot fit in memory: the simulator needs "
                             f"about {format_size(est.total)} ({est.describe()}) and "
                             f"MemAvailable is {format_size(available)} (a smaller guest, or "
                             f"host_memory closer to the guest size)")


MAX_OPS = (1 << 32) - 1      # bench.ops.STEP_DTYPE numbers ops with 32 bits


def stream_budget_error(wl, n_ops: int, nbytes: int, available: int | None, done: int,
                        total: int) -> str | None:
    """Why one repetition's op stream cannot be held (projected from the streams generated
    so far), or None.  Held per op: the op, its compiled steps and their results (at most
    four steps per op: conversion, copy, punch or discard, touch) and its latency sample."""
    from bench.generators import format_size
    from bench.ops import OP_DTYPE, RESULT_DTYPE, STEP_DTYPE
    what = "phase" if type(wl).__name__ == "_Named" else "workload"
    if n_ops > MAX_OPS:
        return (f"{what} {wl.name!r}: one repetition would hold about {n_ops:,} ops "
                f"(projected from {done} of {total} streams); at most {MAX_OPS:,} are supported")
    per_op = OP_DTYPE.itemsize + 4 * (STEP_DTYPE.itemsize + RESULT_DTYPE.itemsize) + 8
    need = nbytes // OP_DTYPE.itemsize * per_op
    if available is not None and need > available:
        return (f"{what} {wl.name!r} cannot fit in memory: one repetition needs about "
                f"{format_size(need)} for {n_ops:,} ops (ops, compiled steps, results; "
                f"projected from {done} of {total} streams) and MemAvailable is "
                f"{format_size(available)}")
    return None
