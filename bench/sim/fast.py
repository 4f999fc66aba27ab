"""CoreTarget: the simulator's model run by the C core (bench/sim/core.c), one C call per
step batch.  It is a second implementation of SimTarget (bench/sim/backend.py), which stays
the readable reference: both give identical results, snapshots, breakdowns and metadata for
the same steps (tests/test_sim_engines.py), CoreTarget at ~100x the speed and with its state
kept as extents instead of per-page arrays (a 1 TiB guest with a million conversions runs in
seconds in a few hundred MiB; benchmarks/sim_scale.py).

make_sim_target() picks the engine: params["engine"] = "c" (default) or "python".
"""
import time

import numpy as np

from bench.costs import load_profile
from bench.errors import InputError
from bench.fragmentation import indices
from bench.ops import PAGE_SIZE, RESULT_DTYPE, STEP_DTYPE, Step
from bench.sim.backend import huge_mode, model_parameters, startup_record
from bench.sim.model import PLATFORM_VM_TYPE

ENGINES = ("c", "python")
_PLATFORM_CODE = {"preserve": 0, "zero": 1, "destroy": 2}
_SHARED_KIND = {"anon": 0, "memfd": 1}
_SHARED_PAGE = {"4k": 0, "thp": 1, "hugetlb": 2}
_PRIVATE = 8


def _core():
    from bench.sim.build_core import ensure_built
    ensure_built()
    from bench.sim import _core
    return _core


def core_available() -> bool:
    """True when the C core (compiled at install) is importable."""
    try:
        _core()
        return True
    except ImportError:   # installed without a compiler: the Python engine still works
        return False


def make_sim_target(layout, strategy, params: dict | None = None):
    """The simulator target for params["engine"]: "c" (CoreTarget, the default, falling back
    to SimTarget when the package was installed without it) or "python" (SimTarget)."""
    params = dict(params or {})
    engine = params.get("engine", "c")
    if engine not in ENGINES:
        raise InputError(f"engine {engine!r} is not one of: {', '.join(ENGINES)}")
    if engine == "c" and core_available():
        return CoreTarget(layout, strategy, params)
    from bench.sim.backend import SimTarget
    return SimTarget(layout, strategy, params)


def prefragment_draws(rng, fraction: float, total_pages: int):
    """BuddyAllocator.prefragment's random draws, made with numpy exactly as there:
    (sorted pageblocks, page offsets) as int64 arrays, or None when nothing is pinned."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction} outside [0, 1]")
    full_blocks = total_pages >> 9
    k = int(round(fraction * full_blocks))
    if k == 0:
        return None
    chosen = np.sort(rng.choice(full_blocks, size=k, replace=False)).astype(np.int64)
    offsets = rng.integers(0, 512, size=k).astype(np.int64)
    return np.ascontiguousarray(chosen), np.ascontiguousarray(offsets)


class CoreTarget:
    backend = "sim"
    engine = "c"

    def __init__(self, layout, strategy, params: dict | None = None):
        params = dict(params or {})
        mod = _core()
        self._ffi, self._lib = mod.ffi, mod.lib
        self.layout, self.strategy, self.params = layout, strategy, params
        self.profile = params.get("_profile") or load_profile(params.get("profile"))
        order, host_bytes = model_parameters(layout, params)   # as SimTarget
        total_pages = host_bytes // PAGE_SIZE
        if total_pages >= (1 << 32) - 1:
            raise InputError(f"host_memory {host_bytes} too large for the C engine (< 16 TiB)")
        lib, ffi = self._lib, self._ffi
        self.key_names = [ffi.string(lib.core_key_name(k)).decode()
                          for k in range(lib.core_nkeys())]
        fixed = [self.profile.linear[k][0] for k in self.key_names]
        per_page = [self.profile.linear[k][1] for k in self.key_names]
        self._c = ffi.gc(lib.core_new(total_pages, fixed, per_page), lib.core_free)
        if self._c == ffi.NULL:
            raise InputError(f"host_memory {host_bytes}: cannot build the model")
        prefragment = float(params.get("prefragment", 0.0))
        if prefragment:
            self._prefragment(np.random.default_rng(int(params.get("seed", 0))),
                              prefragment, total_pages)
        in_place = strategy.name == "in-place"
        self.vm_type = PLATFORM_VM_TYPE[layout.platform]
        lib.core_set_vm(self._c, self.vm_type, int(in_place))
        lib.core_set_vcpus(self._c, int(layout.vcpus))
        lib.core_set_tdx_private_2m(self._c, int(layout.tdx_private_2m))
        flags = strategy.gmem_flags(layout)
        self.promote = bool(strategy.options.get("promote", layout.platform != "zero"))
        initial = 0 if layout.init_shared else _PRIVATE
        self.order = order
        self.nslots = len(layout.memslots)
        self.huge = huge_mode(strategy)
        self.nslots_added = 0
        for m in layout.memslots:
            kind, page = -1, 0
            if strategy.needs_shared_backing:
                kind, page = _SHARED_KIND[layout.shared_backing], _SHARED_PAGE[layout.shared_page]
            # the VM's attribute xarray starts empty (shared); start-up marks it private
            if lib.core_add_slot(self._c, m.size, flags, order, _PLATFORM_CODE[layout.platform],
                                 int(self.promote), initial if in_place else 0, kind, page):
                raise InputError(f"host_memory {host_bytes} too small for this layout: "
                                 f"{self._error()}")
            lib.core_set_split_on_share(self._c, self.nslots_added, int(self.huge == "split"))
            self.nslots_added += 1
        # start-up (SimTarget._start_up): charged, reported apart, then off the ledger
        lib.core_start_up(self._c, initial)
        vmm_ns = self._ledger_total()
        if layout.accepted and lib.core_accept(self._c):
            raise InputError(self._error())
        total = self._ledger_total()
        self.startup = startup_record(total, vmm_ns, self.breakdown(), layout)
        lib.core_ledger_reset(self._c)
        self.wall_s = 0.0

    def _ledger(self) -> list[tuple[int, int, float]]:
        """The charged keys as (key index, count, ns), in the order of their first charge
        (the Python ledger's dict order)."""
        n = len(self.key_names)
        ffi = self._ffi
        count, ns, first = np.zeros(n, np.int64), np.zeros(n, np.float64), np.zeros(n, np.int64)
        self._lib.core_ledger(self._c, ffi.cast("int64_t *", ffi.from_buffer(count)),
                              ffi.cast("double *", ffi.from_buffer(ns)),
                              ffi.cast("int64_t *", ffi.from_buffer(first)))
        used = sorted((int(first[k]), k) for k in range(n) if first[k] >= 0)
        return [(k, int(count[k]), float(ns[k])) for _, k in used]

    def _ledger_total(self) -> float:
        # summed in first-charge order, as the Python ledger's dict
        return sum(t for _, _, t in self._ledger())

    def _prefragment(self, rng, fraction: float, total_pages: int) -> None:
        draws = prefragment_draws(rng, fraction, total_pages)
        if draws is None:
            return
        chosen, offsets = draws
        ffi = self._ffi
        self._lib.core_prefragment(self._c, ffi.cast("int64_t *", ffi.from_buffer(chosen)),
                                   ffi.cast("int64_t *", ffi.from_buffer(offsets)), len(chosen))

    def _error(self) -> str:
        return self._ffi.string(self._lib.core_error(self._c)).decode()

    def _counters(self) -> np.ndarray:
        out = np.zeros(self._lib.CORE_C_COUNT, np.int64)
        self._lib.core_counters(self._c, self._ffi.cast("int64_t *", self._ffi.from_buffer(out)))
        return out

    # ---- Target interface -------------------------------------------------------------
    @property
    def clock_ns(self) -> int:
        """Simulated time now (ns): ops advance it to their arrival, work adds its cost."""
        return int(self._lib.core_clock_ns(self._c))

    def set_arrivals(self, t_ns: np.ndarray) -> None:
        """Arrival time of every op (ns, -1 = untimed) of the steps executed from now on."""
        self._arrivals = np.ascontiguousarray(t_ns, dtype=np.int64)   # kept alive for C
        ffi = self._ffi
        self._lib.core_set_arrivals(self._c, ffi.cast("int64_t *", ffi.from_buffer(self._arrivals)),
                                    len(self._arrivals))

    def execute(self, steps: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        if steps.dtype != STEP_DTYPE:
            raise ValueError(f"steps must be STEP_DTYPE, got {steps.dtype}")
        steps = np.ascontiguousarray(steps)
        out = np.zeros(len(steps), dtype=RESULT_DTYPE)
        if len(steps):
            ffi = self._ffi
            rc = self._lib.core_execute(self._c, ffi.from_buffer(steps), len(steps),
                                        ffi.from_buffer(out))
            if rc:
                raise ValueError(self._error())
        self.wall_s += time.perf_counter() - t0
        return out

    def snapshot(self, recount: bool = False) -> dict:
        """The model's state now.  The huge-page measures come from counters the engine keeps
        as folios and mappings change; recount=True computes them by a full scan instead
        (for tests: both must agree)."""
        lib = self._lib
        cnt = self._counters()
        return {
            "footprint_bytes": int(cnt[lib.CORE_C_FOOTPRINT]) * PAGE_SIZE,
            "huge_bytes": min(int(cnt[lib.CORE_C_HUGE_PAGES]) * PAGE_SIZE, self.layout.guest_size),
            "huge_splits": int(cnt[lib.CORE_C_HUGE_SPLITS]),
            "huge_merges": int(cnt[lib.CORE_C_HUGE_MERGES]),
            "nr_free": self.nr_free(),
            "t_ns": int(lib.core_clock_ns(self._c)),
            **self._huge_stats(recount),
        }

    def _huge_stats(self, recount: bool = False) -> dict:
        lib, ffi = self._lib, self._ffi
        h = np.zeros(lib.CORE_H_COUNT, np.int64)
        (lib.core_huge_recount if recount else lib.core_huge_stats)(
            self._c, ffi.cast("int64_t *", ffi.from_buffer(h)))
        return {
            "stage2_bytes": {"4k": int(h[lib.CORE_H_S2_4K]), "2m": int(h[lib.CORE_H_S2_2M]),
                             "1g": int(h[lib.CORE_H_S2_1G])},
            "host_pmd_mapped_bytes": int(h[lib.CORE_H_HOST_HUGE]),
            "intact_huge_folios": int(h[lib.CORE_H_INTACT]),
            "huge_folios_possible": int(h[lib.CORE_H_POSSIBLE]),
            "mapping_demotions": int(h[lib.CORE_H_DEMOTIONS]),
            "folio_splits": int(h[lib.CORE_H_SPLITS]),
            "folio_merges": int(h[lib.CORE_H_MERGES]),
            "allocatable_huge": {"2m": int(h[lib.CORE_H_ALLOC_2M]),
                                 "1g": int(h[lib.CORE_H_ALLOC_1G])},
            "private_host_touch_pages": int(h[lib.CORE_H_PRIVATE_TOUCHES]),
            "shared_at_private_bytes": int(h[lib.CORE_H_STALE]),
        }

    def nr_free(self) -> list[int]:
        base = self._lib.CORE_C_NR_FREE
        return [int(x) for x in self._counters()[base:base + 19]]

    def fidelity(self) -> dict[str, str]:
        return {s.name: "simulated" for s in Step}

    def breakdown(self) -> dict[str, dict]:
        # the Python ledger's dict order (first charge) sorted by total, as SimTarget does
        items = [(self.key_names[k], c, t) for k, c, t in self._ledger()]
        items.sort(key=lambda kv: -kv[2])
        return {name: {"count": c, "ns": int(round(t))} for name, c, t in items}

    def metadata(self) -> dict:
        lib = self._lib
        cnt = self._counters()
        return {
            "model": {
                "host_memory_bytes": int(cnt[lib.CORE_C_TOTAL_PAGES]) * PAGE_SIZE,
                "prefragment": float(self.params.get("prefragment", 0.0)),
                "pinned_by_aging_pages": int(cnt[lib.CORE_C_PINNED_BY_AGING]),
                "vm_type": self.vm_type,
                "gmem_folio_order": self.order if self.nslots else 0,
                "promote": self.promote if self.nslots else None,
                "huge": self.huge,
            },
            "huge_fallbacks": int(cnt[lib.CORE_C_HUGE_FALLBACKS]),
            "pageblocks": {"unmovable": int(cnt[lib.CORE_C_PB_UNMOVABLE]),
                           "movable": int(cnt[lib.CORE_C_PB_MOVABLE])},
            "fragmentation": indices(self.nr_free()),
            "sim_wall_s": round(self.wall_s, 3),
            "saturated_steps": int(lib.core_saturated(self._c)),
            "startup": self.startup,
            "engine": "c",
        }

    def check(self) -> None:
        """Full consistency check of the C model's host memory (slow; for tests):
        free lists, block index, nr_free, and free + held pages = all pages."""
        if self._lib.core_check(self._c):
            raise AssertionError(self._error())
        lib, cnt = self._lib, self._counters()
        free, held = cnt[lib.CORE_C_FREE_PAGES], cnt[lib.CORE_C_FOOTPRINT]
        aging, total = cnt[lib.CORE_C_PINNED_BY_AGING], cnt[lib.CORE_C_TOTAL_PAGES]
        if free + held + aging != total:
            raise AssertionError(f"free {free} + held {held} + aging {aging} != total {total}")

    def close(self) -> None:
        self._c = None


__all__ = ["CoreTarget", "make_sim_target", "core_available", "ENGINES"]
