#!/usr/bin/env python3
"""Strategy.compile speed (issue 9): the table-driven compile against the per-kind,
per-position implementation it replaced (kept as the oracle in
tests/test_strategy_compile.py), on sim_scale's stream: a 128 GiB guest writing all its
memory, then N conversions of 4K-2M at random offsets.  Both produce the same bytes
(checked here too); printed: median [min-max] seconds of --repeat calls, alternating.

    python benchmarks/compile_speed.py [--conversions 1000000] [--repeat 5]
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversions", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if a.conversions < 1 or a.repeat < 1:
        print("--conversions and --repeat: expected positive integers", file=sys.stderr)
        return 2
    oracle = os.path.join(os.path.dirname(HERE), "tests", "test_strategy_compile.py")
    if not os.path.exists(oracle):
        print(f"compile_speed: the reference implementation ({oracle}) is not here", file=sys.stderr)
        return 2
    reference_compile = _load(oracle, "_compile_oracle").reference_compile
    build_ops = _load(os.path.join(HERE, "sim_scale.py"), "_sim_scale").build_ops
    from bench.layout import Layout, Memslot
    from bench.strategies import make_strategy
    guest = 128 << 30
    ops = build_ops(guest, a.conversions, 1)
    layout = Layout((Memslot(0, guest),), gmem_page_size=2 << 20, shared_backing="anon",
                    shared_page="thp", platform="preserve")
    load = os.getloadavg()
    print(f"Strategy.compile on {len(ops):,} ops ({a.conversions:,} conversions + boot writes), "
          f"{a.repeat} alternating calls each; load average {load[0]:.2f}")
    print(f"  {'strategy':<9} {'steps':>10} {'previous s':>20} {'table-driven s':>20} {'speed-up':>9}")
    for name in ("in-place", "dual"):
        strat = make_strategy(name)
        old_t, new_t = [], []
        for _ in range(a.repeat):
            t = time.perf_counter()
            old = reference_compile(strat, ops, layout)
            old_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            new = strat.compile(ops, layout)
            new_t.append(time.perf_counter() - t)
        if old.tobytes() != new.tobytes():
            print(f"compile_speed: {name}: outputs differ", file=sys.stderr)
            return 1

        def fmt(x):
            return f"{np.median(x):.3f} [{min(x):.3f}-{max(x):.3f}]"
        print(f"  {name:<9} {len(new):>10,} {fmt(old_t):>20} {fmt(new_t):>20} "
              f"{np.median(old_t) / np.median(new_t):>8.1f}x")
    print("  byte-identical output: yes (both strategies)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
