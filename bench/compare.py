"""`gmembench compare BASE CUR`: a regression gate for CI.

Exit 0: no regression.  Exit 1: at least one metric regressed.  Exit 2: error, including
results that must not be compared.

Method
------
1. Comparability.  Both dirs must hold the same schema, and every matched run (same
   "<workload>/<strategy>" key) the same backend, scale, quick flag, seed, workload params,
   layout and strategy options; simulator runs also the same cost-profile name; host-backend
   runs also the same host (hostname, kernel, cpu).  Simulator results do not depend on the
   machine, so a sim baseline recorded elsewhere stays comparable.  A run present on one side
   only is an error unless --allow-missing (a benchmark that silently disappears would hide
   a regression).  Anything else -> exit 2 with the reason.

2. Values.  Every metric is taken once per repetition (one repetition = one measuring
   process, pyperf's "run"), never from samples pooled across repetitions: conversions
   inside one repetition share that process's state (cache, THP pool, CPU frequency), so
   pooling them overstates the evidence by the number of conversions.  Latency p50/p99 per
   repetition come from samples.npz (repetition N's own samples), else from per_rep.
   footprint peak and bytes copied come from per_rep; huge_splits from per_rep if recorded,
   else the run's single total.  All metrics are "lower is better".

3. Decision per metric, on the medians of the per-repetition values:
      change = median(cur) / median(base) - 1
   - |change| < threshold                      -> no-change (effect too small to matter)
   - deterministic metric, |change| >= threshold -> regression / improvement.  Deterministic:
     simulator backend (the model is exact), or both sides constant across >= 2 repetitions
     (counts such as bytes copied).  A host metric with a single value per side (a run
     total, e.g. huge_splits when per_rep lacks it) cannot be tested: "noisy" if it moved.
   - otherwise an exact one-sided permutation test of the per-repetition values: the
     Mann-Whitney rank sum of CUR over all C(n+m, n) relabellings (20,000 seeded random ones
     when there are more than 50,000), in the direction of the change.  Significant after
     the family adjustment (4) -> regression / improvement; else -> noisy (a change that
     size is within what the repetitions' own spread produces; exit 0, but shown).
   Why this test: it assumes nothing about the distribution (per-repetition medians are
   skewed and few), it is exact for small n, it is a permutation test as in Firecracker's
   A/B gate, and on ranks one disturbed repetition cannot carry the result.  (A permutation
   test on the difference of medians was tried first: its statistic ties, so with n=m=3 its
   smallest p is 0.1 and it could never fire.)  With n=m=3 the smallest one-sided p is
   1/20 = 0.05, reached only when every current repetition is worse than every baseline
   repetition: LKP's separation rule (new minimum above old median and new median above old
   maximum) is implied by significance at small n, so it is not applied separately.  Fewer
   than 3 values per side are not tested: such metrics come out "noisy" with a warning.
   Spread shown = MAD of the baseline's per-repetition values, as % of their median.

4. Family.  The p-values of all tested rows are adjusted with Holm-Bonferroni, so the
   chance that an unchanged set of benchmarks gets any row flagged stays <= alpha *if the
   repetitions of one run are exchangeable with those of the other*.  They are not quite:
   a whole run shares the machine's state (other load, THP pool, frequency), so runs differ
   by more than their repetitions do.  The effect threshold is what absorbs that
   between-run drift, so it must be at least the drift the machine shows between identical
   runs: benchmarks/gate_quality.py measures it (the 95th percentile of |A/A change| per
   metric) together with the false-alarm and detection rates.

Defaults (--threshold sets all, --metric-threshold NAME=PCT one): latency p50 7%, latency
p99 35% (tails drift far more between runs than medians), footprint peak 5%, bytes copied
5%, huge splits 5%; --alpha 0.05.  --metrics chooses the metrics decided on; latency_min
(each repetition's fastest conversion, threshold 5%) is opt-in: it barely drifts between
runs, so it catches a uniform slowdown that the medians' drift can hide.  Use >= 5 repetitions per run: with k tested rows the
exact test needs C(2n, n) >= k / alpha (a warning says so when it cannot be met).
"""
import argparse
import itertools
import json
import math
import sys
import zlib
from dataclasses import asdict, dataclass
from math import comb

import numpy as np

from bench.errors import InputError
from bench.results import atomic_write_json, load_results, load_samples

METRICS = ("latency_min", "latency_p50", "latency_p99", "footprint_peak", "bytes_copied",
           "huge_splits")
# what the gate decides on unless --metrics says otherwise; latency_min is opt-in (see
# DEFAULT_THRESHOLDS): on the reference VM it is what makes a 10% slowdown detectable
# without false alarms, but it only sees the fastest conversions
DEFAULT_METRICS = ("latency_p50", "latency_p99", "footprint_peak", "bytes_copied", "huge_splits")
UNITS = {"latency_min": "ns", "latency_p50": "ns", "latency_p99": "ns", "footprint_peak": "byte",
         "bytes_copied": "byte", "huge_splits": "count"}
# p50 7%, p99 35%: above the run-to-run drift measured on the 2-vCPU reference VM (95th
# percentile of |A/A change|: p50 5.6-6.7%, p99 18-28%; benchmarks/gate_quality.py)
# latency_min (each repetition's fastest conversion): interference only ever adds time, so
# the minimum barely drifts between runs (CV < 1% on the reference VM where p50 drifted by
# up to 7%); it sees a slowdown of the cheapest conversions, p50/p99 the rest.
DEFAULT_THRESHOLDS = {"latency_min": 0.05, "latency_p50": 0.07, "latency_p99": 0.35,
                      "footprint_peak": 0.05,
                      "bytes_copied": 0.05, "huge_splits": 0.05}
DEFAULT_ALPHA = 0.05
EXACT_LIMIT = 50_000
RANDOM_PERMUTATIONS = 20_000

REGRESSION, IMPROVEMENT, NO_CHANGE, NOISY = "regression", "improvement", "no-change", "noisy"
CANDIDATE = "candidate"    # internal: passed the threshold, awaiting the family-wise test


class Incomparable(Exception):
    """BASE and CUR measured different things; exit 2."""


@dataclass
class Row:
    key: str
    metric: str
    unit: str
    base: float
    base_spread: float     # MAD / median of the baseline's per-repetition values
    cur: float
    change: float          # cur/base - 1 (inf when base is 0 and cur is not)
    p: float | None        # one-sided permutation p-value, None when not tested
    n_base: int
    n_cur: int
    method: str            # "exact" (deterministic) | "permutation" | "too-few"
    threshold: float
    verdict: str


# --- per-repetition values -------------------------------------------------------------

def per_rep_values(run: dict, samples: dict, metric: str) -> np.ndarray:
    """One value per repetition of `metric` for one run (see module docstring, 2)."""
    per_rep = run.get("per_rep") or []
    reps = int(run.get("repetitions") or len(per_rep))
    key = run["key"]
    if metric in ("latency_min", "latency_p50", "latency_p99"):
        q, name = {"latency_min": (0, "min"), "latency_p50": (50, "p50"),
                   "latency_p99": (99, "p99")}[metric]
        vals = []
        for i in range(reps):
            arr = samples.get(f"{key}/rep{i}")
            if arr is not None and len(arr):
                vals.append(float(np.percentile(arr, q)))
            elif i < len(per_rep) and (per_rep[i].get("latency_ns") or {}).get(name) is not None:
                vals.append(float(per_rep[i]["latency_ns"][name]))
        return np.array(vals, dtype=float)
    if metric == "footprint_peak":
        vals = [r["footprint_bytes"]["peak"] for r in per_rep
                if (r.get("footprint_bytes") or {}).get("peak") is not None]
        if not vals and "footprint_bytes" in run.get("metrics", {}):
            vals = [run["metrics"]["footprint_bytes"]["peak"]]
        return np.array(vals, dtype=float)
    if metric == "bytes_copied":
        vals = [r["bytes_copied"] for r in per_rep if r.get("bytes_copied") is not None]
        if not vals and "bytes_copied" in run.get("metrics", {}):
            vals = [run["metrics"]["bytes_copied"] / max(reps, 1)]
        return np.array(vals, dtype=float)
    if metric == "huge_splits":
        vals = [r["huge_splits"] for r in per_rep if r.get("huge_splits") is not None]
        if not vals and "huge_splits" in run.get("metrics", {}):
            vals = [run["metrics"]["huge_splits"]]
        return np.array(vals, dtype=float)
    raise ValueError(f"unknown metric {metric!r}")


# --- statistics ------------------------------------------------------------------------

def relative_change(base: float, cur: float) -> float:
    if base == 0:
        return 0.0 if cur == 0 else math.inf
    return cur / base - 1.0


def mad_spread(values: np.ndarray) -> float:
    """Median absolute deviation relative to the median (0 when undefined)."""
    if len(values) < 2:
        return 0.0
    med = float(np.median(values))
    if med == 0:
        return 0.0
    return float(np.median(np.abs(values - med))) / abs(med)


def _midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N, ties sharing their mean rank (as Mann-Whitney U does)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(1, len(x) + 1)
    uniq, inv = np.unique(x, return_inverse=True)
    if len(uniq) < len(x):
        sums = np.bincount(inv, weights=ranks)
        counts = np.bincount(inv)
        ranks = (sums / counts)[inv]
    return ranks


def permutation_pvalue(base, cur, greater: bool = True, seed: int = 0) -> float:
    """One-sided exact Mann-Whitney test by permutation: the p-value of the rank sum of `cur`
    being this large (greater=True: cur tends to be higher) or this small, when the labels
    base/cur are exchangeable.  Ties get mid-ranks and count as "at least as extreme"."""
    base = np.asarray(base, dtype=float)
    cur = np.asarray(cur, dtype=float)
    n, m = len(base), len(cur)
    ranks = _midranks(np.concatenate([base, cur]))
    observed = ranks[n:].sum()
    total = comb(n + m, m)
    if total <= EXACT_LIMIT:
        cur_idx = np.array(list(itertools.combinations(range(n + m), m)), dtype=np.intp)
        stats = ranks[cur_idx].sum(axis=1)
        hits = (stats >= observed - 1e-9) if greater else (stats <= observed + 1e-9)
        return float(hits.sum()) / total
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((RANDOM_PERMUTATIONS, n + m)), axis=1)
    stats = ranks[perms[:, :m]].sum(axis=1)
    hits = (stats >= observed - 1e-9) if greater else (stats <= observed + 1e-9)
    return (float(hits.sum()) + 1) / (RANDOM_PERMUTATIONS + 1)


def decide(key: str, metric: str, base: np.ndarray, cur: np.ndarray, threshold: float,
           deterministic_backend: bool) -> Row:
    """One row.  A row that needs the test gets its p-value and verdict "candidate";
    holm() settles it against the whole family."""
    mb, mc = float(np.median(base)), float(np.median(cur))
    change = relative_change(mb, mc)
    single = len(base) < 2 or len(cur) < 2
    # constant over several repetitions on each side: a count the workload fixes (bytes
    # copied); one value per side says nothing about noise, so it is not "constant"
    constant = not single and bool(np.all(base == base[0]) and np.all(cur == cur[0]))
    deterministic = deterministic_backend or constant
    p = None
    if deterministic:
        method = "exact"
    elif min(len(base), len(cur)) < 3:
        method = "too-few"
    else:
        method = "permutation"
        # one-sided in the direction observed: only "worse" can fail the gate, and a
        # regression is flagged only when the "greater" test rejects
        p = permutation_pvalue(base, cur, greater=change > 0,
                               seed=zlib.crc32(f"{key}|{metric}".encode()))
    if abs(change) < threshold:
        verdict = NO_CHANGE
    elif method == "exact":
        verdict = REGRESSION if change > 0 else IMPROVEMENT
    elif method == "too-few":
        verdict = NOISY
    else:
        verdict = CANDIDATE
    return Row(key=key, metric=metric, unit=UNITS[metric], base=mb, base_spread=mad_spread(base),
               cur=mc, change=change, p=p, n_base=len(base), n_cur=len(cur), method=method,
               threshold=threshold, verdict=verdict)


def holm(rows: list[Row], alpha: float) -> list[Row]:
    """Holm-Bonferroni step-down at family level alpha over every tested row (whatever its
    change), so the chance that any row of an unchanged benchmark set is flagged stays
    <= alpha.  A candidate (change past its threshold) whose hypothesis is rejected becomes
    regression/improvement; one that is not becomes noisy.  Each row's p is replaced by its
    Holm-adjusted p (what it must be <= alpha)."""
    tested = sorted((r for r in rows if r.p is not None), key=lambda r: r.p)
    k = len(tested)
    running = 0.0
    for i, r in enumerate(tested):
        running = max(running, min(1.0, r.p * (k - i)))     # adjusted p is monotone
        r.p = running
        if r.verdict == CANDIDATE:
            if running <= alpha:
                r.verdict = REGRESSION if r.change > 0 else IMPROVEMENT
            else:
                r.verdict = NOISY
    return rows


# --- comparability ---------------------------------------------------------------------

_RUN_FIELDS = ("backend", "scale", "quick", "seed", "params", "layout", "strategy_options")


def check_comparable(base: dict, cur: dict, allow_missing: bool = False) -> list[str]:
    """Raise Incomparable with every reason found; return the matched keys in base order."""
    reasons = []
    if base.get("schema") != cur.get("schema"):
        reasons.append(f"schema {base.get('schema')!r} vs {cur.get('schema')!r}")
    bruns = {r["key"]: r for r in base.get("runs", [])}
    cruns = {r["key"]: r for r in cur.get("runs", [])}
    only_b = [k for k in bruns if k not in cruns]
    only_c = [k for k in cruns if k not in bruns]
    if not allow_missing:
        if only_b:
            reasons.append(f"runs only in BASE: {', '.join(only_b)}")
        if only_c:
            reasons.append(f"runs only in CUR: {', '.join(only_c)}")
    keys = [k for k in bruns if k in cruns]
    if not keys:
        reasons.append("no run in common")
    host_checked = False
    for k in keys:
        rb, rc = bruns[k], cruns[k]
        for f in _RUN_FIELDS:
            if rb.get(f) != rc.get(f):
                reasons.append(f"{k}: {f} differs ({_short(rb.get(f))} vs {_short(rc.get(f))})")
        if rb.get("backend") == "sim" == rc.get("backend"):
            pb = (rb.get("cost_profile") or {}).get("name")
            pc = (rc.get("cost_profile") or {}).get("name")
            if pb != pc:
                reasons.append(f"{k}: cost profile {pb!r} vs {pc!r}")
        if rb.get("backend") == "host" and not host_checked:
            host_checked = True
            hb, hc = base.get("host") or {}, cur.get("host") or {}
            for f in ("hostname", "kernel", "cpu"):
                if hb.get(f) != hc.get(f):
                    reasons.append(f"host {f} differs ({hb.get(f)!r} vs {hc.get(f)!r})")
    if reasons:
        raise Incomparable("; ".join(reasons))
    return keys


def _short(v, n=60) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= n else s[:n - 3] + "..."


# --- the gate --------------------------------------------------------------------------

def compare_results(base: dict, cur: dict, thresholds: dict | None = None,
                    alpha: float = DEFAULT_ALPHA, allow_missing: bool = False,
                    metrics=DEFAULT_METRICS) -> list[Row]:
    """Rows for every matched run x metric; raises Incomparable."""
    th = dict(DEFAULT_THRESHOLDS)
    th.update(thresholds or {})
    keys = check_comparable(base, cur, allow_missing)
    sb, sc = load_samples(base), load_samples(cur)
    bruns = {r["key"]: r for r in base["runs"]}
    cruns = {r["key"]: r for r in cur["runs"]}
    rows = []
    for k in keys:
        rb, rc = bruns[k], cruns[k]
        for metric in metrics:
            vb, vc = per_rep_values(rb, sb, metric), per_rep_values(rc, sc, metric)
            if len(vb) == 0 or len(vc) == 0:
                continue    # not recorded (e.g. no successful conversion): nothing to gate
            rows.append(decide(k, metric, vb, vc, th[metric],
                               deterministic_backend=rb.get("backend") == "sim"))
    return holm(rows, alpha)


def format_value(v: float, unit: str) -> str:
    if unit == "ns":
        for div, u in ((1e9, "s"), (1e6, "ms"), (1e3, "us")):
            if abs(v) >= div:
                return f"{v / div:.3g}{u}"
        return f"{v:.3g}ns"
    if unit == "byte":
        for div, u in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(v) >= div:
                return f"{v / div:.4g}{u}"
        return f"{v:.0f}B"
    return f"{v:.4g}"


def format_table(rows: list[Row]) -> str:
    head = ("benchmark", "metric", "base", "spread", "cur", "change", "p(Holm)", "verdict")
    lines = [head]
    for r in rows:
        change = "+inf" if math.isinf(r.change) else f"{100 * r.change:+.1f}%"
        p = f"{r.p:.3g}" if r.p is not None else ("exact" if r.method == "exact" else
                                                 f"n={min(r.n_base, r.n_cur)}")
        lines.append((r.key, r.metric, format_value(r.base, r.unit),
                      f"±{100 * r.base_spread:.1f}%", format_value(r.cur, r.unit), change, p,
                      r.verdict.upper() if r.verdict == REGRESSION else r.verdict))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for j, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) if i < 2 or i == 7 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(line, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _parse_metric_threshold(text: str) -> tuple[str, float]:
    name, sep, pct = text.partition("=")
    if not sep or name not in METRICS:
        raise argparse.ArgumentTypeError(
            f"expected METRIC=PERCENT with METRIC one of {', '.join(METRICS)}; got {text!r}")
    try:
        value = float(pct.rstrip("%")) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {pct!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"threshold must be >= 0: {pct!r}")
    return name, value


def _percent(text: str) -> float:
    try:
        v = float(text.rstrip("%")) / 100
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}")
    if v < 0:
        raise argparse.ArgumentTypeError("threshold must be >= 0")
    return v


def _json_row(r: Row) -> dict:
    d = asdict(r)
    if math.isinf(d["change"]):      # strict JSON has no Infinity
        d["change"] = "inf"
    return d


def _parse_metrics(text: str) -> tuple:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(METRICS)}; got {text!r}")
    return names


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE", help="baseline results dir (results/<run-id>/)")
    parser.add_argument("cur", metavar="CUR", help="current results dir")
    parser.add_argument("--threshold", type=_percent, default=None, metavar="PCT",
                        help="minimum change that counts, in %%, for every metric "
                             "(default: latency p50 7, p99 35, others 5)")
    parser.add_argument("--metric-threshold", type=_parse_metric_threshold, action="append",
                        default=[], metavar="METRIC=PCT",
                        help=f"per-metric minimum change; METRIC one of {', '.join(METRICS)}")
    parser.add_argument("--metrics", type=_parse_metrics, default=DEFAULT_METRICS,
                        metavar="M1,M2,...",
                        help=f"metrics to decide on, from {', '.join(METRICS)} "
                             f"(default: {','.join(DEFAULT_METRICS)}; add latency_min on "
                             "hosts whose runs drift, see benchmarks/gate_quality.py)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help="family-wise significance level (Holm over the tested rows) of "
                             "the one-sided exact rank test (default %(default)s)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="compare the runs both dirs have instead of refusing")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def cli_compare(args) -> int:
    if not 0 < args.alpha < 1:
        raise InputError(f"--alpha must be between 0 and 1, got {args.alpha}")
    thresholds = {}
    if args.threshold is not None:
        thresholds = {m: args.threshold for m in METRICS}
    thresholds.update(dict(args.metric_threshold))
    base, cur = load_results(args.base), load_results(args.cur)
    try:
        rows = compare_results(base, cur, thresholds, args.alpha, args.allow_missing,
                               args.metrics)
    except Incomparable as e:
        print(f"gmembench compare: not comparable: {e}", file=sys.stderr)
        return 2
    print(f"BASE {args.base} ({base.get('run_id')})\nCUR  {args.cur} ({cur.get('run_id')})")
    print(format_table(rows))
    few = [f"{r.key} {r.metric}" for r in rows if r.method == "too-few" and r.verdict == NOISY]
    if few:
        print(f"warning: fewer than 3 values per side, so no test, for: {', '.join(few)}; "
              f"these changes are shown as noisy (more repetitions, or per-repetition "
              f"values in results.json, make them testable)", file=sys.stderr)
    tested = [r for r in rows if r.method == "permutation"]
    if tested:
        # Holm's first step needs p <= alpha / k; the exact test's smallest p is 1/C(n+m, m)
        best = min(1 / comb(r.n_base + r.n_cur, r.n_cur) for r in tested) * len(tested)
        if best > args.alpha:
            need = next(n for n in range(3, 100) if len(tested) / comb(2 * n, n) <= args.alpha)
            print(f"warning: {len(tested)} tested rows with these repetition counts: the "
                  f"smallest possible adjusted p is {best:.3g} > alpha {args.alpha}, so no "
                  f"latency change can be flagged; run >= {need} repetitions per side",
                  file=sys.stderr)
    n_reg = sum(r.verdict == REGRESSION for r in rows)
    n_imp = sum(r.verdict == IMPROVEMENT for r in rows)
    n_noisy = sum(r.verdict == NOISY for r in rows)
    print(f"{n_reg} regression(s), {n_imp} improvement(s), {n_noisy} noisy, "
          f"{len(rows) - n_reg - n_imp - n_noisy} unchanged")
    if args.json:
        atomic_write_json(args.json, {"base": args.base, "cur": args.cur, "alpha": args.alpha,
                                      "rows": [_json_row(r) for r in rows],
                                      "regressions": n_reg})
    return 1 if n_reg else 0
