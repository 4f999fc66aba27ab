"""Harness overhead per timed step: NOP steps through the host backend's C batch path.

Each timed step is bracketed by two CLOCK_MONOTONIC reads in C; a NOP step's time is
therefore exactly what the harness adds to every measured primitive.  Run as root with
/dev/kvm to go through HostTarget.execute (the same path as real steps); otherwise the
same C executor is called directly.

    python benchmarks/harness_overhead.py [--steps N] [--batches B]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.ops import RESULT_DTYPE, STEP_DTYPE  # noqa: E402


def nop_steps(n: int) -> np.ndarray:
    steps = np.zeros(n, dtype=STEP_DTYPE)      # code 0 = Step.NOP
    steps["op"] = np.arange(n)
    return steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000, help="NOP steps per batch")
    ap.add_argument("--batches", type=int, default=6, help="batches; the first is discarded")
    args = ap.parse_args()
    from bench.host import load_helper
    load_helper()
    target = None
    if os.path.exists("/dev/kvm") and os.geteuid() == 0:
        from bench.host.backend import HostTarget
        from bench.layout import Layout, Memslot
        from bench.strategies import InPlace
        target = HostTarget(Layout(memslots=(Memslot(0, 2 << 20),)), InPlace(),
                            {"warmup_bytes": 0, "overhead_reps": 1001})
        execute, path = target.execute, "HostTarget.execute -> gm_execute"
    else:
        from bench.host._helper import ffi, lib
        ctx = ffi.new("struct gm_ctx *")

        def execute(steps):
            res = np.zeros(len(steps), dtype=RESULT_DTYPE)
            lib.gm_execute(ctx, ffi.from_buffer(steps), ffi.from_buffer(res), len(steps))
            return res
        path = "gm_execute directly (no /dev/kvm or not root)"
    try:
        kept, wall = [], []
        for b in range(args.batches):
            steps = nop_steps(args.steps)
            t0 = time.perf_counter_ns()
            res = execute(steps)
            t1 = time.perf_counter_ns()
            if b:
                kept.append(res["ns"])
                wall.append((t1 - t0) / args.steps)
        ns = np.concatenate(kept).astype(np.float64)
    finally:
        if target is not None:
            target.close()
    print(f"harness overhead per timed step ({path}), {len(ns)} NOP steps "
          f"in {args.batches - 1} batches (first discarded):")
    print(f"  median {np.median(ns):.1f} ns   p10 {np.percentile(ns, 10):.1f}   "
          f"p90 {np.percentile(ns, 90):.1f}   p99 {np.percentile(ns, 99):.1f}   "
          f"max {ns.max():.0f}")
    print(f"  whole batch incl. Python call and dispatch: {np.median(wall):.1f} ns per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
