"""How fast the buddy model is on the simulator's hot paths, and what it costs in memory.

Run: PYTHONPATH=. python benchmarks/buddy_speed.py [--gib 160]
Prints one line per measurement.  Each case uses a fresh allocator.
"""
import argparse
import resource
import time

import numpy as np

from bench.sim.buddy import BuddyAllocator

PAGES_PER_GIB = 1 << 18


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rate(label: str, n: int, seconds: float) -> None:
    print(f"{label}: {n} ops in {seconds:.3f} s = {n / seconds:,.0f} ops/s "
          f"({seconds / n * 1e6:.2f} us/op)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=160)
    ap.add_argument("--ops", type=int, default=1_000_000)
    args = ap.parse_args()
    pages = args.gib * PAGES_PER_GIB

    rss0 = _rss_mib()
    t0 = time.perf_counter()
    b = BuddyAllocator(pages)
    t1 = time.perf_counter()
    print(f"construct {args.gib} GiB ({pages} pages): {(t1 - t0) * 1e3:.1f} ms, "
          f"RSS +{_rss_mib() - rss0:.0f} MiB")

    # worst case: every order-0 allocation splits a 1G block, every free merges it back
    n = args.ops
    alloc, free = b.alloc, b.free
    t0 = time.perf_counter()
    for _ in range(n // 2):
        free(alloc(0), 0)
    _rate("alloc(0)/free(0) alternating, fresh allocator (split+merge 18 levels)", n,
          time.perf_counter() - t0)

    # steady state: memory mostly allocated, so frees rarely merge far (the guest's case)
    b = BuddyAllocator(pages)
    held = b.alloc_pages(pages - pages // 8)
    rng = np.random.default_rng(1)
    runs = len(held)
    t0 = time.perf_counter()
    pfns = [b.alloc(0) for _ in range(n // 4)]
    order = rng.permutation(len(pfns)).tolist()
    for i in order:
        b.free(pfns[i], 0)
    pfns = [b.alloc(0) for _ in range(n // 4)]
    for p in pfns:
        b.free(p, 0)
    _rate(f"alloc(0) then free(0) in random order, 7/8 of memory in use ({runs} runs)", n,
          time.perf_counter() - t0)

    # 2M blocks whose 4K pieces are freed one sub-range at a time (a split huge folio)
    b = BuddyAllocator(pages)
    n2 = args.ops // 10
    rng = np.random.default_rng(2)
    cuts = np.sort(rng.integers(1, 512, size=(n2, 2)), axis=1)
    t0 = time.perf_counter()
    for lo, hi in cuts.tolist():
        p = b.alloc(9)
        if hi == lo:
            hi += 1
        b.free_range(p + lo, hi - lo)
        b.free_range(p, lo)
        b.free_range(p + hi, 512 - hi)
    _rate("alloc(9) + free_range of 3 random 4K sub-ranges (1 op = 1 alloc + 3 frees)", n2,
          time.perf_counter() - t0)

    b = BuddyAllocator(pages)
    blocks = [b.alloc(9) for _ in range(n2)]
    t0 = time.perf_counter()
    for p in blocks:
        b.free_range(p, 512)
    _rate("free_range of a whole 2M run", n2, time.perf_counter() - t0)

    b = BuddyAllocator(pages)
    t0 = time.perf_counter()
    runs = b.alloc_pages(128 * PAGES_PER_GIB)
    _rate(f"alloc_pages(128 GiB of 4K) -> {len(runs)} runs", 1, time.perf_counter() - t0)

    for fraction in (0.1, 0.5):
        b = BuddyAllocator(pages)
        t0 = time.perf_counter()
        pinned = b.prefragment(np.random.default_rng(3), fraction)
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        runs = b.alloc_pages(128 * PAGES_PER_GIB)
        dt2 = time.perf_counter() - t1
        print(f"prefragment({fraction}): {pinned} pins in {dt:.3f} s; then alloc_pages(128 GiB)"
              f" -> {len(runs)} runs in {dt2:.3f} s; pageblocks {b.pageblock_counts()}")

    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
