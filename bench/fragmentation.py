"""The kernel's fragmentation indices (mm/vmstat.c), computed from free block counts.

Both the simulator (its buddy model) and the real host (/proc/buddyinfo, no debugfs
needed) feed the same lists in, so the figures mean the same thing on both backends.

nr_free[o] is the number of free blocks of order o.  For a target order j:
  free_pages = sum nr_free[o] * 2^o,  free_blocks = sum nr_free[o],
  suitable   = sum over o >= j of nr_free[o] * 2^(o-j)      (0 if j is past the list).
The kernel reports both indices in thousandths with integer division; here they are exact
floats in [0, 1] (fragmentation index: -1 when a suitable block exists).

Only orders the kernel defines are reported: the buddy allocator has no free block above
MAX_PAGE_ORDER (10 on x86: 4 MiB), so an index "at 1G" would be 1.0 on every real host
and is not computed.  A model whose free runs are larger (the simulator's 1G blocks) is
folded into order-10 blocks first, as the kernel's free lists would hold them.  The
fragmentation index is reported only where it means something: undefined (None) when a
free block of the order exists, and never below 0 (the formula dips below 0 when a
handful of small blocks is all that is free: lack of memory, reported as 0).
"""
import re
from typing import Sequence

from bench.errors import InputError

MAX_PAGE_ORDER = 10          # x86-64 (include/linux/mmzone.h); buddyinfo has orders 0..10
_ORDER_NAMES = {"order9": 9, "order10": 10}


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


def fold_to_max_order(nr_free: Sequence[int], max_order: int = MAX_PAGE_ORDER) -> list[int]:
    """Free block counts as the kernel's lists would hold them: a free block above
    max_order is 2^(o - max_order) blocks of max_order."""
    out = [int(n) for n in list(nr_free)[:max_order + 1]]
    out += [0] * (max_order + 1 - len(out))
    for o in range(max_order + 1, len(nr_free)):
        out[max_order] += int(nr_free[o]) << (o - max_order)
    return out


def reported_fragmentation_index(nr_free: Sequence[int], order: int) -> float | None:
    """fragmentation_index as reported: None when a block of `order` is free (an
    allocation would succeed: nothing to explain), clamped at 0 from below."""
    v = fragmentation_index(nr_free, order)
    if v == -1.0:
        return None
    return max(0.0, v)


def indices(nr_free: Sequence[int]) -> dict:
    """The headline indices, at 2M (order 9) and at MAX_PAGE_ORDER (order 10, 4M), after
    folding larger runs: unusable index ("order9", "order10") and fragmentation index
    ("frag_order9", "frag_order10"; None where a block of that order is free)."""
    folded = fold_to_max_order(nr_free)
    out = {}
    for name, order in _ORDER_NAMES.items():
        out[name] = unusable_index(folded, order)
    for name, order in _ORDER_NAMES.items():
        out["frag_" + name] = reported_fragmentation_index(folded, order)
    return out


def zone_indices(nr_free: Sequence[int], max_order: int = MAX_PAGE_ORDER) -> dict:
    """Both indices for every order 0..max_order of one zone (the layout of the kernel's
    /sys/kernel/debug/extfrag/{unusable_index,extfrag_index}), plus the counts."""
    folded = fold_to_max_order(nr_free, max_order)
    return {
        "nr_free": folded,
        "unusable_index": {f"order{o}": unusable_index(folded, o) for o in range(max_order + 1)},
        "fragmentation_index": {f"order{o}": reported_fragmentation_index(folded, o)
                                for o in range(max_order + 1)},
    }


def fragmentation_summary(zones: dict[str, Sequence[int]]) -> dict:
    """{zone: zone_indices(...)} for every zone given (e.g. read_buddyinfo())."""
    return {z: zone_indices(nr) for z, nr in zones.items()}


_PT_HEAD = re.compile(r"^Number of blocks type\s+(.*)$")
_PT_ROW = re.compile(r"^Node\s+(\d+)\s*,\s*zone\s+(\S+)((?:\s+\d+)+)\s*$")


def parse_pagetypeinfo(text: str, path: str = "/proc/pagetypeinfo") -> dict[str, dict]:
    """The "Number of blocks type" table of /proc/pagetypeinfo: {"node0/Normal":
    {"Unmovable": n, "Movable": n, ...}} - how many pageblocks carry each migratetype
    label."""
    lines = text.splitlines()
    out: dict[str, dict] = {}
    for i, line in enumerate(lines):
        m = _PT_HEAD.match(line.strip())
        if not m:
            continue
        types = m.group(1).split()
        for j in range(i + 1, len(lines)):
            row = lines[j].strip()
            if not row:
                break
            r = _PT_ROW.match(row)
            if not r:
                break
            counts = [int(x) for x in r.group(3).split()]
            if len(counts) != len(types):
                raise InputError(f"expected {len(types)} counts, got {len(counts)}", path, j + 1)
            out[f"node{int(r.group(1))}/{r.group(2)}"] = dict(zip(types, counts))
        return out
    raise InputError("no 'Number of blocks type' table", path)


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
