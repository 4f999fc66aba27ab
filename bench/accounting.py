"""Time accounting per conversion direction: what a conversion costs when it runs, and
what it makes later accesses cost.

A conversion's own time ("conversion time") is the sum of its steps (the ioctl, punch,
discard, copy...).  Its "induced time" is the time of the later accesses to the pages it
converted: the faults and refaults of the new state, zeroing and firmware work charged at
the access, and the access itself.  The two strategies shift work between the two: dual
backing frees the old side at conversion and faults the new side in at the next access;
in-place keeps the page and refaults only what it zapped.  Comparing conversion time alone
favours whichever strategy defers more.

The attribution rule (one rule for both backends, decided from the op stream alone, before
anything runs):

  A touch op is induced by the conversions that produced the state it uses, when at least
  one of its pages was converted to that state earlier in the same repetition.
    - shared-state accesses (SHARED_WRITE, SHARED_READ, GUEST_SHARED_*) -> "to_shared";
    - private-state accesses (PRIVATE_WRITE, PRIVATE_READ) and host probes of private
      pages (SHARED_PROBE) -> "to_private".
  A touch op none of whose pages was converted to that state yet touches memory in its
  initial state: "baseline" access time, the same work with or without conversions; it is
  reported separately and left out of both directions' totals.
  PIN/UNPIN ops are neither conversions nor accesses ("other").

Total time of a direction = its conversion time + its induced time.  All times include
failed conversions' steps (the time was spent).
"""
import numpy as np

from bench.ops import OpKind

# values of attribute_touches()'s array; 1 and 2 are the OpKind values of the directions
BASELINE = 0
TO_SHARED = int(OpKind.TO_SHARED)
TO_PRIVATE = int(OpKind.TO_PRIVATE)
OTHER = 255

SHARED_STATE_TOUCH = (OpKind.SHARED_WRITE, OpKind.SHARED_READ, OpKind.GUEST_SHARED_WRITE,
                      OpKind.GUEST_SHARED_READ)
PRIVATE_STATE_TOUCH = (OpKind.PRIVATE_WRITE, OpKind.PRIVATE_READ, OpKind.SHARED_PROBE)
_NEVER = np.iinfo(np.int64).max


def _unit(ops: np.ndarray) -> int:
    """Largest power-of-two granule (>= 4K) that every offset and size is a multiple of, so
    the page map stays small for guests converted in big chunks."""
    if not len(ops):
        return 4096
    g = np.bitwise_or.reduce(np.concatenate([ops["offset"], ops["size"]]).astype(np.uint64))
    if g == 0:
        return 4096
    low = int(g) & -int(g)
    return max(4096, low)


def _min_cover(a: np.ndarray, b: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """For every point p of [0, n): the least v over the ranges [a, b) that cover p, or
    _NEVER.  Each range is split into the aligned power-of-two blocks of a segment tree
    (at most two per level), minima are placed on the blocks, then pushed down to the
    points: O((ranges + n) log n) in a few dozen numpy calls, whatever the ranges."""
    size = 1 << max(0, (n - 1).bit_length())
    tree = [np.full(size >> k, _NEVER, dtype=np.int64) for k in range(size.bit_length())]
    lo, hi, val = a.astype(np.int64), b.astype(np.int64), v.astype(np.int64)
    for level in tree:
        keep = lo < hi
        if not keep.all():
            lo, hi, val = lo[keep], hi[keep], val[keep]
        if not len(lo):
            break
        odd = (lo & 1) == 1
        np.minimum.at(level, lo[odd], val[odd])
        lo = lo + odd
        odd = (hi & 1) == 1
        np.minimum.at(level, hi[odd] - 1, val[odd])
        hi = hi - odd
        lo >>= 1
        hi >>= 1
    for k in range(len(tree) - 1, 0, -1):
        np.minimum(tree[k - 1], np.repeat(tree[k], 2), out=tree[k - 1])
    return tree[0][:n]


def attribute_touches(ops: np.ndarray) -> np.ndarray:
    """Per op (uint8): for touch ops the direction that induced them (TO_SHARED /
    TO_PRIVATE) or BASELINE; for conversions their own direction; OTHER for the rest."""
    n = len(ops)
    out = np.full(n, OTHER, dtype=np.uint8)
    if not n:
        return out
    kinds = ops["kind"]
    out[kinds == OpKind.TO_SHARED] = TO_SHARED
    out[kinds == OpKind.TO_PRIVATE] = TO_PRIVATE
    unit = _unit(ops)
    for state_kinds, conv_kind, label in ((SHARED_STATE_TOUCH, OpKind.TO_SHARED, TO_SHARED),
                                          (PRIVATE_STATE_TOUCH, OpKind.TO_PRIVATE, TO_PRIVATE)):
        touch_idx = np.flatnonzero(np.isin(kinds, state_kinds))
        if not len(touch_idx):
            continue
        out[touch_idx] = BASELINE
        conv_idx = np.flatnonzero(kinds == conv_kind)
        if not len(conv_idx):
            continue
        for slot in np.unique(ops["slot"][touch_idx]):
            c = conv_idx[ops["slot"][conv_idx] == slot]
            t = touch_idx[ops["slot"][touch_idx] == slot]
            if not len(c):
                continue
            a = (ops["offset"][c] // unit).astype(np.int64)
            b = ((ops["offset"][c] + ops["size"][c]) // unit).astype(np.int64)
            ta = (ops["offset"][t] // unit).astype(np.int64)
            tb = ((ops["offset"][t] + ops["size"][t]) // unit).astype(np.int64)
            n = int(max(b.max(), tb.max())) + 1
            if n > 4 * (len(a) + len(ta)):
                # a large guest touched in few places: only the ranges' ends matter, so
                # number them (the units between two successive ends are covered by the
                # same ranges) and the work follows the op count, not the guest's size
                ends, idx = np.unique(np.concatenate([a, b, ta, tb]), return_inverse=True)
                a, b, ta, tb = np.split(idx.ravel(), np.cumsum([len(a), len(b), len(ta)]))
                n = len(ends)
            # first[k] = index of the first op that converted unit (or numbered end) k to
            # this state (the last one is a sentinel: every range end is a valid reduceat
            # index)
            first = _min_cover(a, b, c, n)
            # min of first[ta:tb] once per distinct touched range
            ukey, inv = np.unique(ta * n + tb, return_inverse=True)
            ua, ub = ukey // n, ukey % n
            # reduceat over (start, end) pairs: sorted by start, the gaps between pairs
            # add up to at most the array once (unique keys sort by start already)
            nonempty = ub > ua
            umin = np.full(len(ua), _NEVER, dtype=np.int64)
            if nonempty.any():
                pairs = np.stack([ua[nonempty], ub[nonempty]], axis=1).ravel()
                umin[nonempty] = np.minimum.reduceat(first, pairs)[::2]
            hit = t[umin[inv.ravel()] < t]
            out[hit] = label
    return out


def op_times(steps: np.ndarray, res: np.ndarray, n_ops: int) -> np.ndarray:
    """Total step time per op (ns, int64)."""
    return np.bincount(steps["op"].astype(np.int64), weights=res["ns"].astype(np.float64),
                       minlength=n_ops).astype(np.int64)


def direction_times(ops: np.ndarray, attribution: np.ndarray, per_op_ns: np.ndarray) -> dict:
    """{"to_shared"|"to_private": {"conversion_time_ns", "induced_time_ns", "total_time_ns",
    "induced_ops"}, "baseline_access_time_ns", "other_time_ns"} for one repetition."""
    kinds = ops["kind"]
    is_conv = np.isin(kinds, (OpKind.TO_SHARED, OpKind.TO_PRIVATE))
    out = {}
    for name, label in (("to_shared", TO_SHARED), ("to_private", TO_PRIVATE)):
        conv = int(per_op_ns[is_conv & (attribution == label)].sum())
        ind_mask = ~is_conv & (attribution == label)
        ind = int(per_op_ns[ind_mask].sum())
        out[name] = {"conversion_time_ns": conv, "induced_time_ns": ind,
                     "total_time_ns": conv + ind, "induced_ops": int(ind_mask.sum())}
    out["baseline_access_time_ns"] = int(per_op_ns[attribution == BASELINE].sum())
    out["other_time_ns"] = int(per_op_ns[attribution == OTHER].sum())
    return out


def step_breakdown(ops: np.ndarray, steps: np.ndarray, res: np.ndarray,
                   attribution: np.ndarray) -> dict:
    """Time by step kind, split by direction and by conversion/induced:
    {"to_shared"|"to_private"|"baseline": {"conversion"|"induced": {STEP: {"steps": n,
    "pages": 4K pages the steps covered, "ns": total}}}}.  "steps" counts operations
    (one per step executed, skipped steps excluded), "pages" counts 4K pages."""
    from bench.ops import PAGE_SIZE, SKIPPED, STEP_CONVERSION, Step
    ran = res["status"] != SKIPPED
    op = steps["op"].astype(np.int64)
    lab = attribution[op]
    conv = (steps["flags"] & STEP_CONVERSION) != 0
    out: dict = {}
    for name, label in (("to_shared", TO_SHARED), ("to_private", TO_PRIVATE),
                        ("baseline", BASELINE)):
        for part, mask in (("conversion", conv), ("induced", ~conv)):
            sel = ran & (lab == label) & mask
            if not sel.any():
                continue
            codes = steps["code"][sel]
            ns = res["ns"][sel].astype(np.int64)
            pages = (steps["size"][sel] // PAGE_SIZE).astype(np.int64)
            d = {}
            for c in np.unique(codes):
                m = codes == c
                d[Step(int(c)).name] = {"steps": int(m.sum()), "pages": int(pages[m].sum()),
                                        "ns": int(ns[m].sum())}
            out.setdefault("baseline" if name == "baseline" else name, {})[
                "access" if name == "baseline" else part] = d
    return out


def merge_step_breakdowns(items: list[dict]) -> dict:
    out: dict = {}
    for bd in items:
        for d, parts in bd.items():
            for part, steps in parts.items():
                tgt = out.setdefault(d, {}).setdefault(part, {})
                for s, v in steps.items():
                    t = tgt.setdefault(s, {"steps": 0, "pages": 0, "ns": 0})
                    for k in t:
                        t[k] += v[k]
    return out


def per_unit(total_ns: int, conversions: int, bytes_converted: int) -> dict:
    """Per conversion asked for and per GiB converted (None when there is none)."""
    return {"per_conversion_ns": total_ns / conversions if conversions else None,
            "per_gib_ns": total_ns * (1 << 30) / bytes_converted if bytes_converted else None}
