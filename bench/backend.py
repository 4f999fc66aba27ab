"""What a backend is: the simulator (bench/sim/) and the real kernel (bench/host/) both
implement this, so the runner drives them with the same step arrays and the same
measuring code (bench/metrics.py)."""
from typing import Protocol

import numpy as np

FIDELITY = ("native", "emulated", "simulated", "unavailable")


class Target(Protocol):
    """One guest's memory under one strategy, ready to execute steps."""

    backend: str   # "sim" | "host"

    def execute(self, steps: np.ndarray) -> np.ndarray:
        """Run a STEP_DTYPE array in order; return a RESULT_DTYPE array of the same length."""

    def snapshot(self) -> dict:
        """Memory state now, read from the model (sim) or the kernel (host):
        footprint_bytes   host bytes held for this guest (gmem + shared backing)
        huge_bytes        guest bytes backed by intact huge folios (gmem or shared)
        huge_splits       huge folios split so far (cumulative)
        huge_merges       huge folios (re)formed so far (cumulative)
        nr_free           list of free block counts per order, as in /proc/buddyinfo
        t_ns              clock of the snapshot (model time or CLOCK_MONOTONIC)
        The simulator adds (the host backend what it can read from the kernel):
        stage2_bytes      {"4k", "2m", "1g"}: guest memory mapped in stage 2 by leaf size
                          (as KVM's pages_4k / pages_2m / pages_1g count it)
        host_pmd_mapped_bytes  shared memory a host process maps with one huge entry
                          (PMD; PUD for 1G folios)
        intact_huge_folios     physically intact huge folios (guest_memfd + shared backing)
        huge_folios_possible   huge folios the guest memory objects could hold at their
                          folio size (guest_memfd + a THP/hugetlb shared backing)
        mapping_demotions huge mappings (stage-2 leaf or a process's PMD) split to 4K
        folio_splits      huge folios split into 4K folios (physically)
        folio_merges      4K folios merged back into a huge folio
                          (the last three cumulative)
        allocatable_huge  {"2m", "1g"}: aligned host ranges with no unmovable page in use
        """

    def fidelity(self) -> dict[str, str]:
        """Step name -> native | emulated | simulated."""

    def breakdown(self) -> dict[str, dict]:
        """Primitive name -> {"count": n, "ns": total}: what the latencies are made of."""

    def metadata(self) -> dict:
        """Backend facts for the results (model parameters, host facts, harness overhead)."""

    def close(self) -> None: ...


def open_target(backend: str, layout, strategy, params: dict | None = None) -> Target:
    params = params or {}
    if backend == "sim":
        # the C engine (bench/sim/core.c) unless params say engine = "python", the
        # reference it is tested equal to
        from bench.sim.fast import make_sim_target
        return make_sim_target(layout, strategy, params)
    if backend == "host":
        from bench.host.backend import HostTarget
        return HostTarget(layout, strategy, params)
    raise ValueError(f"unknown backend {backend!r} (expected sim or host)")
