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


class _Clock:
    """Wall and CPU time of a section: on a shared, loaded machine CPU time is the fairer
    figure for a single-threaded Python loop."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _rate(label: str, n: int, c: _Clock) -> None:
    print(f"{label}: {n} ops, {c.cpu / n * 1e6:.2f} us/op CPU = {n / c.cpu:,.0f} ops/s "
          f"(wall {c.wall / n * 1e6:.2f} us/op)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=int, default=160)
    ap.add_argument("--ops", type=int, default=1_000_000)
    args = ap.parse_args()
    pages = args.gib * PAGES_PER_GIB
    n = args.ops

    rss0 = _rss_mib()
    with _Clock() as c:
        b = BuddyAllocator(pages)
    print(f"construct {args.gib} GiB ({pages} pages): {c.wall * 1e3:.1f} ms, "
          f"RSS +{_rss_mib() - rss0:.0f} MiB")

    # worst case: every order-0 allocation splits a 1G block, every free merges it back
    alloc, free = b.alloc, b.free
    with _Clock() as c:
        for _ in range(n // 2):
            free(alloc(0), 0)
    _rate("alloc(0)/free(0) alternating, fresh allocator (split+merge 18 levels)", n, c)

    # steady state: memory mostly allocated, so frees rarely merge far (the guest's case)
    b = BuddyAllocator(pages)
    b.alloc_pages(pages - pages // 8)
    order = np.random.default_rng(1).permutation(n // 4).tolist()
    with _Clock() as c:
        pfns = [b.alloc(0) for _ in range(n // 4)]
        for i in order:
            b.free(pfns[i], 0)
        pfns = [b.alloc(0) for _ in range(n // 4)]
        for p in pfns:
            b.free_range(p, 1)
    _rate("alloc(0), then free in random order, 7/8 of memory in use", n, c)

    # 2M blocks whose 4K pieces are freed one sub-range at a time (a split huge folio)
    b = BuddyAllocator(pages)
    n2 = min(n // 10, 100_000)
    cuts = np.sort(np.random.default_rng(2).integers(1, 512, size=(n2, 2)), axis=1)
    with _Clock() as c:
        for lo, hi in cuts.tolist():
            p = b.alloc(9)
            if hi == lo:
                hi += 1
            b.free_range(p + lo, hi - lo)
            b.free_range(p, lo)
            b.free_range(p + hi, 512 - hi)
    _rate("alloc(9) + free_range of its 3 random 4K sub-ranges, fresh allocator", n2, c)

    b = BuddyAllocator(pages)
    b.alloc_pages(pages // 2, movable=True)      # the other half: blocks to free below
    blocks = [b.alloc(9) for _ in range(min(n2, pages // 2 // 512))]
    with _Clock() as c:
        for p in blocks:
            b.free_range(p, 512)
    _rate("free_range of a whole 2M run (merging up to 1G)", len(blocks), c)

    b = BuddyAllocator(pages)
    with _Clock() as c:
        runs = b.alloc_pages(128 * PAGES_PER_GIB)
    _rate(f"alloc_pages(128 GiB of 4K, unmovable) -> {len(runs)} runs", 1, c)

    for fraction in (0.1, 0.5):
        b = BuddyAllocator(pages)
        with _Clock() as c1:
            pinned = b.prefragment(np.random.default_rng(3), fraction)
        with _Clock() as c2:
            runs = b.alloc_pages(128 * PAGES_PER_GIB)
        print(f"prefragment({fraction}): {pinned} pins in {c1.cpu:.3f} s CPU; then "
              f"alloc_pages(128 GiB) -> {len(runs)} runs in {c2.cpu:.3f} s CPU; "
              f"pageblocks {b.pageblock_counts()}")

    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
