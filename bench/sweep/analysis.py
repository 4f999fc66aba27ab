"""Conclusions of a sweep: at each point, who wins each comparison (median over
repetitions, dual / in-place ratio with its spread over the paired repetitions: both
strategies of repetition N replay the same op stream), whether the winner holds over every
point, and where it flips (between which axis values; on a numeric axis the crossover is
interpolated linearly in the ratio).

For --sensitivity the same is done over the cost samples: the one-at-a-time levels of each
uncertain cost (with the crossover value when a conclusion flips between two levels) and
the Latin-hypercube points; the tornado data is the headline ratio at each cost's low and
high end.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

# (name, metric, direction, better): the conclusions a sweep reports
CONCLUSIONS = [
    ("total time", "total_time_ns", "all", "lower"),
    ("conversion time", "conversion_time_ns", "all", "lower"),
    ("to-shared p50 latency", "latency_ns.p50", "to_shared", "lower"),
    ("to-private p50 latency", "latency_ns.p50", "to_private", "lower"),
    ("peak footprint", "footprint_bytes.peak", "all", "lower"),
    ("huge-page coverage at end", "hugepage_coverage.end", "all", "higher"),
    ("huge-page splits", "huge_splits", "all", "lower"),
    ("intact huge folios at end", "intact_huge_share.end", "all", "higher"),
    ("stage-2 huge mappings at end", "stage2_huge_share.end", "all", "higher"),
]
HEADLINE = "total time"
TIE = 0.01          # medians within 1% of each other: neither wins
A, B = "in-place", "dual"
ACCOUNTING = {
    "total time": "sum of every step's time in the repetition (conversions, copies, faults, "
                  "touches) - ns, simulated: charged by the cost model; host: measured",
    "conversion time": "sum of the conversion steps' time (the ioctl / punch / zap / copy of "
                       "each conversion request) - ns",
    "to-shared p50 latency": "median latency of successful to-shared conversions - ns",
    "to-private p50 latency": "median latency of successful to-private conversions - ns",
    "peak footprint": "peak host memory backing the guest (guest_memfd + shared backing) - bytes",
    "huge-page coverage at end": "fraction of guest memory in intact huge pages at the end",
    "huge-page splits": "huge pages split during the repetition - count",
    "intact huge folios at end": "physically intact huge folios (guest_memfd + shared backing) "
                                 "over the huge folios the guest memory could hold - fraction",
    "stage-2 huge mappings at end": "guest memory mapped in stage 2 by 2M/1G leaves over all "
                                    "mapped guest memory - fraction",
}


class Collector:
    """Keeps, per point x strategy, the per-repetition values of the conclusion metrics
    (a few numbers per task: never the samples)."""

    def __init__(self):
        self.wanted = {(m, d): name for name, m, d, _ in CONCLUSIONS}
        self.values: dict = defaultdict(dict)     # (point, strategy, name) -> {rep: value}

    def __call__(self, point, strategy, rep, direction, metric, value):
        name = self.wanted.get((metric, direction))
        if name is not None and value is not None:
            self.values[(point.index, strategy, name)][rep] = float(value)


def compare_point(col: Collector, point_index: int) -> dict:
    """name -> {winner, ratio, lo, hi, in-place, dual} at one point."""
    out = {}
    for name, _m, _d, better in CONCLUSIONS:
        a = col.values.get((point_index, A, name))
        b = col.values.get((point_index, B, name))
        if not a or not b:
            continue
        ma, mb = float(np.median(list(a.values()))), float(np.median(list(b.values())))
        reps = sorted(set(a) & set(b))
        pr = [_ratio(b[r], a[r]) for r in reps]
        pr = [x for x in pr if x is not None]
        ratio = _ratio(mb, ma)
        out[name] = {"winner": winner(ma, mb, better), "ratio": ratio,
                     "lo": min(pr) if pr else None, "hi": max(pr) if pr else None,
                     A: ma, B: mb}
    return out


def _ratio(b, a):
    if a == 0:
        return None if b != 0 else 1.0
    return b / a


def winner(ma: float, mb: float, better: str) -> str:
    """Who is better: in-place (ma) or dual (mb), or tie within TIE."""
    if ma == mb or abs(mb - ma) <= TIE * max(abs(ma), abs(mb)):
        return "tie"
    a_better = ma < mb if better == "lower" else ma > mb
    return A if a_better else B


def _num(v):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def crossover(x0, x1, r0, r1):
    """Where the ratio crosses 1 between two numeric axis values (linear), else None."""
    x0, x1 = _num(x0), _num(x1)
    if None in (x0, x1, r0, r1) or r0 == r1:
        return None
    t = (1.0 - r0) / (r1 - r0)
    return x0 + t * (x1 - x0) if 0 <= t <= 1 else None


def analyse(plan, col: Collector) -> dict:
    """Per workload and conclusion: does the winner hold over all points, and where it
    flips.  Returns a JSON-able dict (conclusions.json)."""
    per_point = {p.index: compare_point(col, p.index) for p in plan.points}
    out = {"tie_tolerance": TIE, "ratio": f"{B} / {A} (median over repetitions)",
           "accounting": ACCOUNTING, "points": [], "conclusions": [], "sensitivity": None}
    for p in plan.points:
        out["points"].append({"point": p.index, "workload": p.workload, "kind": p.kind,
                              "varied": p.varied, "columns": p.columns,
                              "results": per_point[p.index]})
    for wname in plan.spec.workloads:
        pts = [p for p in plan.points if p.workload == wname]
        for name, *_ in CONCLUSIONS:
            have = [(p, per_point[p.index][name]) for p in pts if name in per_point[p.index]]
            if not have:
                continue
            winners = defaultdict(list)
            for p, r in have:
                winners[r["winner"]].append(p.index)
            entry = {"workload": wname, "conclusion": name, "points": len(have),
                     "winners": {w: len(ix) for w, ix in winners.items()},
                     "holds": len(winners) == 1,
                     "winner": next(iter(winners)) if len(winners) == 1 else None,
                     "flips": _flips(plan, have) if len(winners) > 1 else [],
                     "exceptions": _exceptions(have) if len(winners) > 1 else []}
            out["conclusions"].append(entry)
    if plan.sensitivity:
        out["sensitivity"] = _sensitivity(plan, per_point)
    return out


def _exceptions(have) -> list[dict]:
    """The points that disagree with the most common winner."""
    counts = defaultdict(int)
    for _, r in have:
        counts[r["winner"]] += 1
    major = max(counts, key=counts.get)
    return [{"point": p.index, "columns": p.columns, "winner": r["winner"], "ratio": r["ratio"]}
            for p, r in have if r["winner"] != major][:20]


def _flips(plan, have) -> list[dict]:
    """Along each axis (the others held): adjacent values where the winner changes."""
    flips = []
    by_index = {p.index: (p, r) for p, r in have}
    from bench.sweep.plan import column_values
    axes = [(a.name, column_values(a)) for a in plan.spec.axes] if not plan.sensitivity \
        else [(f"cost.{k}", None) for k in plan.uncertain]
    for aname, order in axes:
        groups = defaultdict(list)
        for idx, (p, r) in by_index.items():
            if plan.sensitivity and not (p.kind == "oat" and f"cost.{p.varied}" == aname):
                continue
            if aname not in p.columns and not any(c.startswith(aname + ".") for c in p.columns):
                continue
            others = tuple(sorted((k, str(v)) for k, v in p.columns.items()
                                  if k != aname and not k.startswith(aname + ".")))
            groups[others].append((p, r))
        for others, items in groups.items():
            if order is not None:
                items.sort(key=lambda pr: order.index(pr[0].columns[aname])
                           if pr[0].columns.get(aname) in order else 0)
            else:
                items.sort(key=lambda pr: _xval(pr[0].columns, aname))
            for (p0, r0), (p1, r1) in zip(items, items[1:]):
                if r0["winner"] != r1["winner"]:
                    x0, x1 = _xval(p0.columns, aname), _xval(p1.columns, aname)
                    flips.append({"axis": aname, "from": x0, "to": x1,
                                  "winner_before": r0["winner"], "winner_after": r1["winner"],
                                  "crossover": crossover(x0, x1, r0["ratio"], r1["ratio"]),
                                  # one cost at a time: the others are the profile's values
                                  "others": {} if plan.sensitivity else dict(others)})
    return flips[:40]


def _xval(columns: dict, aname: str):
    if aname in columns:
        return columns[aname]
    four = columns.get(aname + ".4k")     # a {4k, 2m} cost: its 4K figure
    return four


def _sensitivity(plan, per_point) -> dict:
    """Tornado data and, per workload, the OAT range of the headline ratio and the LHS
    tally of winners."""
    out = {"uncertain": {k: {"low": lo, "high": hi} for k, (lo, hi) in plan.uncertain.items()},
           "tornado": [], "lhs": []}
    for wname in plan.spec.workloads:
        pts = [p for p in plan.points if p.workload == wname]
        base = next((p for p in pts if p.kind == "baseline"), None)
        base_r = per_point[base.index].get(HEADLINE, {}).get("ratio") if base else None
        bars = []
        for k in plan.uncertain:
            oat = [p for p in pts if p.kind == "oat" and p.varied == k]
            if not oat:
                continue
            lo_r = per_point[oat[0].index].get(HEADLINE, {}).get("ratio")
            hi_r = per_point[oat[-1].index].get(HEADLINE, {}).get("ratio")
            bars.append({"parameter": k, "low": plan.uncertain[k][0], "high": plan.uncertain[k][1],
                         "ratio_low": lo_r, "ratio_high": hi_r,
                         "width": abs((hi_r or 0) - (lo_r or 0))})
        bars.sort(key=lambda b: -b["width"])
        out["tornado"].append({"workload": wname, "conclusion": HEADLINE, "baseline_ratio": base_r,
                               "bars": bars})
        lhs = [p for p in pts if p.kind == "lhs"]
        for name, *_ in CONCLUSIONS:
            tally = defaultdict(int)
            for p in lhs:
                r = per_point[p.index].get(name)
                if r:
                    tally[r["winner"]] += 1
            if tally:
                out["lhs"].append({"workload": wname, "conclusion": name, "samples": len(lhs),
                                   "winners": dict(tally)})
    return out


def _fmt_x(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_lines(result: dict) -> list[str]:
    """One line per workload x conclusion, in words."""
    lines = []
    for c in result["conclusions"]:
        head = f"{c['workload']}: {c['conclusion']}: "
        if c["holds"]:
            w = c["winner"]
            lines.append(head + (f"{w} wins at every point ({c['points']})" if w != "tie"
                                 else f"no strategy wins by more than {TIE:.0%} at any point ({c['points']})"))
            continue
        tally = ", ".join(f"{w} {n}" for w, n in sorted(c["winners"].items()))
        parts = []
        for f in c["flips"][:4]:
            x = f" (ratio crosses 1 at ~{_fmt_x(f['crossover'])})" if f["crossover"] is not None else ""
            where = (", with " + ", ".join(f"{k}={v}" for k, v in list(f["others"].items())[:3])) \
                if f["others"] else ""
            parts.append(f"{f['winner_before']} -> {f['winner_after']} between {f['axis']}="
                         f"{_fmt_x(f['from'])} and {_fmt_x(f['to'])}{x}{where}")
        if not parts:
            parts = [f"point {e['point']} ({', '.join(f'{k}={v}' for k, v in e['columns'].items())}): "
                     f"{e['winner']}" for e in c["exceptions"][:3]]
        lines.append(head + f"flips ({tally} points): " + "; ".join(parts))
    s = result.get("sensitivity")
    if s:
        for t in s["tornado"]:
            if t["bars"]:
                b = t["bars"][0]
                lines.append(f"{t['workload']}: {HEADLINE} ratio {B}/{A} {_fmt_x(t['baseline_ratio'])} at "
                             f"the profile's values; most sensitive to {b['parameter']} "
                             f"({_fmt_x(b['ratio_low'])} at low .. {_fmt_x(b['ratio_high'])} at high)")
        for row in s["lhs"]:
            tally = ", ".join(f"{w} {n}" for w, n in sorted(row["winners"].items()))
            lines.append(f"{row['workload']}: {row['conclusion']} over {row['samples']} "
                         f"Latin-hypercube cost samples: {tally}")
    return lines
