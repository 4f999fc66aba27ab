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


def _pow2(n: int) -> int:
    size = 1
    while size < n:
        size *= 2
    return size


def _earliest_cover(starts: np.ndarray, ends: np.ndarray, idx: np.ndarray, nseg: int) -> np.ndarray:
    """Per segment 0..nseg-1: the smallest idx of the intervals [starts, ends) (segment
    numbers) that cover it, _NEVER where none does.  A segment tree over the segments, each
    interval marking its O(log) canonical nodes, all intervals at once per tree level."""
    size = _pow2(nseg)
    tree = np.full(2 * size, _NEVER, dtype=np.int64)
    keep = ends > starts
    lo, hi, v = starts[keep] + size, ends[keep] + size, idx[keep]
    while len(lo):
        left = (lo & 1) == 1
        np.minimum.at(tree, lo[left], v[left])
        lo = lo + left
        right = (hi & 1) == 1
        np.minimum.at(tree, hi[right] - 1, v[right])
        hi = hi - right
        lo, hi = lo >> 1, hi >> 1
        live = lo < hi
        lo, hi, v = lo[live], hi[live], v[live]
    k = 1
    while k < size:                 # push every node's value down to its children
        np.minimum(tree[2 * k:4 * k:2], tree[k:2 * k], out=tree[2 * k:4 * k:2])
        np.minimum(tree[2 * k + 1:4 * k:2], tree[k:2 * k], out=tree[2 * k + 1:4 * k:2])
        k *= 2
    return tree[size:size + nseg]


def _range_min(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """min(values[starts[i]:ends[i]]) for every i (_NEVER for an empty range)."""
    size = _pow2(len(values))
    tree = np.full(2 * size, _NEVER, dtype=np.int64)
    tree[size:size + len(values)] = values
    k = size // 2
    while k >= 1:
        np.minimum(tree[2 * k:4 * k:2], tree[2 * k + 1:4 * k:2], out=tree[k:2 * k])
        k //= 2
    out = np.full(len(starts), _NEVER, dtype=np.int64)
    lo, hi = starts + size, ends + size
    live = lo < hi
    while live.any():
        left = live & ((lo & 1) == 1)
        out[left] = np.minimum(out[left], tree[lo[left]])
        lo = lo + left
        right = live & ((hi & 1) == 1)
        out[right] = np.minimum(out[right], tree[hi[right] - 1])
        hi = hi - right
        lo, hi = lo >> 1, hi >> 1
        live = lo < hi
    return out


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
    begin = ops["offset"].astype(np.int64)
    end = begin + ops["size"].astype(np.int64)
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
            # the address space cut at every range end: segment i = [cuts[i], cuts[i + 1]),
            # so memory costs per op, not per page of the guest
            cuts = np.sort(np.concatenate([begin[c], end[c], begin[t], end[t]]))
            cuts = cuts[np.concatenate(([True], cuts[1:] != cuts[:-1]))]
            # first[s] = index of the first op that converted segment s to this state
            first = _earliest_cover(np.searchsorted(cuts, begin[c]),
                                    np.searchsorted(cuts, end[c]), c.astype(np.int64),
                                    max(len(cuts) - 1, 1))
            # a touch is induced when a page of it was converted before it
            umin = _range_min(first, np.searchsorted(cuts, begin[t]),
                              np.searchsorted(cuts, end[t]))
            out[t[umin < t]] = label
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
