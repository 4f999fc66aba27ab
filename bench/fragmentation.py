"""The kernel's fragmentation indices (mm/vmstat.c), computed from free block counts.

Both the simulator (its buddy model) and the real host (/proc/buddyinfo, no debugfs
needed) feed the same lists in, so the figures mean the same thing on both backends.

nr_free[o] is the number of free blocks of order o.  For a target order j:
  free_pages = sum nr_free[o] * 2^o,  free_blocks = sum nr_free[o],
  suitable   = sum over o >= j of nr_free[o] * 2^(o-j)      (0 if j is past the list).
The kernel reports both indices in thousandths with integer division; here they are exact
floats in [0, 1] (fragmentation index: -1 when a suitable block exists).
"""
import re
from typing import Sequence

from bench.errors import InputError

_ORDER_NAMES = {"order9": 9, "order18": 18}


def _totals(nr_free: Sequence[int], order: int) -> tuple[int, int, int]:
    if order < 0:
        raise ValueError(f"negative order {order}")
    free_pages = free_blocks = suitable = 0
    for o, n in enumerate(nr_free):
        n = int(n)
        if n < 0:
            raise ValueError(f"negative free block count {n} at order {o}")
        free_pages += n << o
        free_blocks += n
        if o >= order:
            suitable += n << (o - order)
    return free_pages, free_blocks, suitable


def unusable_index(nr_free: Sequence[int], order: int) -> float:
    """Share of free memory that cannot serve an allocation of `order` (unusable_free_index):
    0 = all of it can, 1 = none can (also when nothing is free)."""
    free_pages, _, suitable = _totals(nr_free, order)
    if free_pages == 0:
        return 1.0
    return (free_pages - (suitable << order)) / free_pages


def fragmentation_index(nr_free: Sequence[int], order: int) -> float:
    """Why an allocation of `order` would fail (__fragmentation_index): -1 if a free block
    of at least that order exists, 0 if nothing is free; otherwise near 0 means lack of
    memory and near 1 means fragmentation."""
    free_pages, free_blocks, suitable = _totals(nr_free, order)
    if free_blocks == 0:
        return 0.0
    if suitable:
        return -1.0
    return 1.0 - (1.0 + free_pages / (1 << order)) / free_blocks


def indices(nr_free: Sequence[int]) -> dict:
    """The indices the results carry: unusable index at 2M and 1G ("order9", "order18") and
    the fragmentation index at the same orders ("frag_order9", "frag_order18")."""
    out = {}
    for name, order in _ORDER_NAMES.items():
        out[name] = unusable_index(nr_free, order)
    for name, order in _ORDER_NAMES.items():
        out["frag_" + name] = fragmentation_index(nr_free, order)
    return out


_LINE = re.compile(r"^Node\s+(\d+)\s*,\s*zone\s+(\S+)((?:\s+\d+)+)\s*$")


def parse_buddyinfo(text: str, path: str = "/proc/buddyinfo") -> dict[str, list[int]]:
    """Parse buddyinfo text: {"node0/Normal": [nr_free order 0, 1, ...], ...}."""
    out: dict[str, list[int]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise InputError(f"expected 'Node N, zone NAME count count ...', got {line.strip()!r}",
                             path, lineno)
        key = f"node{int(m.group(1))}/{m.group(2)}"
        if key in out:
            raise InputError(f"zone {key} listed twice", path, lineno)
        out[key] = [int(x) for x in m.group(3).split()]
    return out


def read_buddyinfo(path: str = "/proc/buddyinfo") -> dict[str, list[int]]:
    """/proc/buddyinfo (or a saved copy) as {"node0/Normal": [nr_free per order], ...}."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read buddyinfo: {e}", path) from None
    return parse_buddyinfo(text, path)


def total_nr_free(buddyinfo: dict, zones: Sequence[str] = ("Normal", "DMA32", "Movable")
                  ) -> list[int]:
    """Free blocks per order summed over all nodes' zones named in `zones` (the zones a
    guest's memory can come from; DMA is left out by default)."""
    total: list[int] = []
    for key, counts in buddyinfo.items():
        if key.split("/", 1)[-1] not in zones:
            continue
        if len(counts) > len(total):
            total.extend([0] * (len(counts) - len(total)))
        for o, n in enumerate(counts):
            total[o] += int(n)
    return total
