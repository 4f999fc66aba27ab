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
