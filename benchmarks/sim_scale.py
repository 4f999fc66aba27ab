#!/usr/bin/env python3
"""How fast and how big is the simulator at scale?  (issue 2's target)

A 128 GiB guest with 2M guest_memfd folios: the guest first writes all of its memory
(private), then 1,000,000 conversions of mixed sizes (4K-2M, random 4K-aligned offsets,
random direction) run under each strategy.  Each strategy runs in its own process so its
peak RSS is its own.  Prints wall time (op generation excluded and shown apart) and peak
RSS per strategy.  Target on the 2-core machine: <= 15 s and <= 1.5 GiB per strategy.

    python benchmarks/sim_scale.py                 # the full target
    python benchmarks/sim_scale.py --conversions 100000 --guest 16G
    python benchmarks/sim_scale.py --engine python --conversions 50000   # the reference
"""
import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

GiB = 1 << 30


def build_ops(guest: int, conversions: int, seed: int):
    from bench.ops import OP_DTYPE, OpKind
    rng = np.random.default_rng(seed)
    boot = np.zeros(guest // GiB, OP_DTYPE)
    boot["kind"] = OpKind.PRIVATE_WRITE
    boot["offset"] = np.arange(len(boot)) * GiB
    boot["size"] = GiB
    boot["token"] = 1
    conv = np.zeros(conversions, OP_DTYPE)
    pages = rng.integers(1, 513, conversions)                    # 4K .. 2M
    start = rng.integers(0, guest // 4096 - pages + 1)
    conv["kind"] = np.where(rng.random(conversions) < 0.5, OpKind.TO_SHARED, OpKind.TO_PRIVATE)
    conv["offset"] = start * 4096
    conv["size"] = pages * 4096
    conv["t_ns"] = -1
    boot["t_ns"] = -1
    return np.concatenate([boot, conv])


def one(strategy: str, guest: int, conversions: int, seed: int, engine: str) -> dict:
    from bench.sim.fast import make_sim_target
    from bench.layout import Layout, Memslot
    from bench.metrics import RepetitionRecord
    from bench.strategies import make_strategy
    t0 = time.perf_counter()
    ops = build_ops(guest, conversions, seed)
    layout = Layout((Memslot(0, guest),), gmem_page_size=2 << 20, shared_backing="anon",
                    shared_page="thp", platform="preserve")
    strat = make_strategy(strategy)
    steps = strat.compile(ops, layout)
    t_gen = time.perf_counter() - t0
    t1 = time.perf_counter()
    target = make_sim_target(layout, strat, {"seed": seed, "engine": engine})
    t_setup = time.perf_counter() - t1
    t2 = time.perf_counter()
    res = target.execute(steps)
    t_run = time.perf_counter() - t2
    rec = RepetitionRecord(ops, steps, res)
    snap = target.snapshot()
    return {
        "strategy": strategy, "engine": type(target).__name__, "conversions": rec.conversions, "failed": rec.failed_conversions,
        "gen_s": round(t_gen, 2), "setup_s": round(t_setup, 2), "run_s": round(t_run, 2),
        "total_s": round(t_gen + t_setup + t_run, 2),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "footprint_gib": round(snap["footprint_bytes"] / GiB, 2),
        "huge_coverage": round(snap["huge_bytes"] / guest, 3),
        "p50_us": round(float(np.median(rec.latency_ns)) / 1000, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--guest", default="128G")
    ap.add_argument("--conversions", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strategy", action="append", choices=["in-place", "dual"])
    ap.add_argument("--engine", choices=["c", "python"], default="c",
                    help="simulator engine: the C core (default) or the Python reference")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    from bench.sim.backend import parse_size
    guest = parse_size(a.guest, "--guest")
    if a.one:
        print(json.dumps(one(a.one, guest, a.conversions, a.seed, a.engine)))
        return 0
    print(f"simulator scale: guest {guest / GiB:.0f} GiB, 2M folios, {a.conversions:,} conversions"
          f" of 4K-2M at random offsets, after the guest wrote all memory ({a.engine} engine)")
    print(f"{'strategy':<9} {'run s':>7} {'total s':>8} {'peak RSS MiB':>13} {'footprint GiB':>14}"
          f" {'huge cov':>9} {'p50 us':>8}")
    for s in a.strategy or ["in-place", "dual"]:
        out = subprocess.run([sys.executable, __file__, "--one", s, "--guest", a.guest,
                              "--conversions", str(a.conversions), "--seed", str(a.seed),
                              "--engine", a.engine],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        r = json.loads(out.stdout)
        print(f"{s:<9} {r['run_s']:>7} {r['total_s']:>8} {r['peak_rss_mib']:>13} "
              f"{r['footprint_gib']:>14} {r['huge_coverage']:>9} {r['p50_us']:>8}")
    print("target: <= 15 s per strategy (total, incl. generation), peak RSS <= 1536 MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
