"""`gmembench thresholds RUN RUN RUN ... --out FILE`: gate thresholds learned per row from
identical runs, for `gmembench compare --thresholds FILE`.

Why
---
compare's rank test treats the repetitions of BASE and CUR as draws from one distribution
when nothing changed.  Repetitions of one run share that run's machine state (where its
memory landed, what the host's caches and TLBs hold, other load), so two runs of identical
code differ by more than their repetitions do.  The threshold is what must absorb that
run-to-run drift, and the drift is a property of each row on each host: on the 2-vCPU
nested-virtualised VM this suite was built on, dma-churn's in-place to-shared minimum (a
conversion that zeroes a page cold in cache and TLB) moved by up to 29% between identical
runs while the to-private minimum moved by 3%.  One threshold per metric is then too tight
for one row (false alarms, or rows that are never decided) or too loose for the other.

Method
------
1. The RUNs are K >= 3 results dirs of the same code on the same host (the baseline build,
   run K times, ideally spread over the time a CI baseline would be reused; 8 or more: the
   drift estimated from K runs enters through t(K-1), whose quantile below is 3.5 for K = 6
   and 3.1 for K = 8 with 6 varying rows).  They must be comparable to each other by
   compare's rules, and none may carry the gate-testing delay.
2. Per row (workload/strategy x metric), each run contributes one value: the median of its
   per-repetition values after compare's outlier rule, i.e. exactly what compare compares.
3. The row's drift is s = sample standard deviation of log(value) over the K runs.  If runs
   are independent, log(CUR/BASE) of two new identical runs has standard deviation s*sqrt(2),
   and (log(CUR/BASE)) / (s*sqrt(2)) follows Student's t with K-1 degrees of freedom (s is an
   estimate from K runs).  The learned threshold is
       threshold = exp(t(K-1, 1 - alpha/m) * s * sqrt(2)) - 1
   with m the number of rows that vary (one-sided: only a regression alarms; alpha/m:
   Bonferroni over the rows, so identical code alarms on some row with probability <= alpha
   from drift alone).
4. With BASE pooled from J runs (`compare B1 ... BJ CUR`), compare recomputes the row's
   threshold from s for a comparison with their mean: exp(t * s * sqrt(1 + 1/J)) - 1.
5. compare uses max(configured threshold, learned threshold): a learned threshold only ever
   raises the one you chose (default or --threshold/--metric-threshold), never lowers it.
   A row whose learned threshold reaches 100% cannot gate anything short of a doubling on
   this host; it is capped at 100% and named.  Rows that do not vary (footprint, bytes
   copied) keep the configured threshold.

The file records the runs it learned from, their host and run settings; compare refuses
(exit 2) a thresholds file learned on another host, kernel or run configuration.
"""
import argparse
import datetime
import json
import math
from pathlib import Path

import numpy as np

from bench import compare as cmp
from bench.errors import InputError
from bench.results import atomic_write_json

FORMAT = "gmembench-thresholds/1"
MIN_RUNS = 3
DEFAULT_ALPHA = 0.05


def run_value(run: dict, samples: dict, metric: str) -> float | None:
    """The row's value for one run: the median of its kept per-repetition values."""
    vals = cmp.per_rep_values(run, samples, metric)
    if len(vals) == 0:
        return None
    kept, _ = cmp.set_aside_outliers(vals)
    return float(np.median(kept))


def threshold_from_drift(s: float, runs: int, alpha_row: float, base_runs: float = 1) -> float:
    """The change identical code exceeds from drift alone with probability alpha_row, for
    drift s estimated from `runs` runs and a BASE of `base_runs` runs (uncapped)."""
    from scipy.stats import t as student_t
    q = float(student_t.ppf(1 - alpha_row, runs - 1))
    return math.expm1(q * s * math.sqrt(1 + 1 / base_runs))


def learned_threshold(values: list[float], alpha_row: float) -> tuple[float, float]:
    """(drift s = sd of log values, threshold for a one-run BASE) for one row; (0, 0) when
    it does not vary."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2 or np.all(v == v[0]) or np.any(v <= 0):
        return 0.0, 0.0
    s = float(np.std(np.log(v), ddof=1))
    return s, threshold_from_drift(s, len(v), alpha_row)


def fingerprint(doc: dict) -> dict:
    """What a results dir must share with the calibration runs to use their thresholds
    (compare.check_comparable's fields), without the measurements."""
    runs = []
    for r in doc["runs"]:
        f = {k: r.get(k) for k in ("key",) + cmp._RUN_FIELDS if k in r}
        f["params"] = cmp._params(r)
        if r.get("cost_profile") is not None:
            f["cost_profile"] = cmp._costs(r)
        runs.append(f)
    host = doc.get("host") or {}
    return {"host": {k: host.get(k) for k in cmp.HOST_FIELDS}, "runs": runs}


def learn(paths: list[str], metrics, alpha: float = DEFAULT_ALPHA) -> dict:
    """The thresholds document for these runs; InputError on anything unusable."""
    if len(paths) < MIN_RUNS:
        raise InputError(f"need at least {MIN_RUNS} runs of identical code to measure their "
                         f"drift, got {len(paths)} (more runs give tighter thresholds: "
                         f"the t quantile falls quickly from 3 to 8 runs)")
    sides = [cmp.load_side(p) for p in paths]
    for p, (doc, _) in zip(paths, sides):
        delayed = cmp.injected_delay(doc)
        if delayed:
            raise InputError(f"carries the gate-testing delay ({', '.join(delayed)}); "
                             f"thresholds must be learned from undelayed runs", p)
    first = sides[0][0]
    for p, (doc, _) in zip(paths[1:], sides[1:]):
        try:
            cmp.check_comparable(first, doc)
        except cmp.Incomparable as e:
            raise InputError(f"not comparable with {paths[0]}: {e}", p)
    by_key = [({r["key"]: r for r in doc["runs"]}, smp) for doc, smp in sides]
    rows = {}
    for run in first["runs"]:
        key = run["key"]
        for metric in metrics:
            vals = [v for runs, smp in by_key
                    if (v := run_value(runs[key], smp, metric)) is not None]
            if vals:
                rows.setdefault(key, {})[metric] = vals
    varying = sum(1 for k in rows for m, v in rows[k].items()
                  if len(v) >= 2 and not all(x == v[0] for x in v))
    alpha_row = alpha / max(1, varying)
    out = {}
    for key, per_metric in rows.items():
        for metric, vals in per_metric.items():
            s, th = learned_threshold(vals, alpha_row)
            out.setdefault(key, {})[metric] = {
                "runs": len(vals), "values": vals, "drift_sd_log": s,
                "threshold": min(th, cmp.MAX_THRESHOLD), "capped": th > cmp.MAX_THRESHOLD}
    return {"format": FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "method": ("threshold = exp(t(K-1, 1 - alpha/m) * s * sqrt(2)) - 1, s = sd of "
                       "log(per-run median) over K identical runs, m = rows that vary; "
                       "compare uses max(configured, learned)"),
            "alpha": alpha, "alpha_per_row": alpha_row, "rows_varying": varying,
            "metrics": list(metrics), "learned_from": [str(p) for p in paths],
            "run_ids": [d.get("run_id") for d, _ in sides],
            "fingerprint": fingerprint(first), "rows": out}


def load(path: str) -> dict:
    """A thresholds file, validated (InputError naming the file and field otherwise)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no such thresholds file", path)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", path, e.lineno)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read: {type(e).__name__}: {e}", path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"format is {got!r}, expected {FORMAT!r} (written by `gmembench "
                         f"thresholds`)", path)
    fp, rows = doc.get("fingerprint"), doc.get("rows")
    if not isinstance(fp, dict) or not isinstance(fp.get("runs"), list) \
            or not isinstance(fp.get("host"), dict):
        raise InputError("fingerprint: expected an object with host and runs", path)
    if not isinstance(rows, dict):
        raise InputError("rows: expected an object {benchmark: {metric: {...}}}", path)
    for key, per in rows.items():
        if not isinstance(per, dict):
            raise InputError(f"rows.{key}: expected an object", path)
        for metric, r in per.items():
            th = r.get("threshold") if isinstance(r, dict) else None
            if metric not in cmp.METRICS:
                raise InputError(f"rows.{key}.{metric}: unknown metric", path)
            if not (cmp._is_num(th) and 0 <= th <= cmp.MAX_THRESHOLD):
                raise InputError(f"rows.{key}.{metric}.threshold: expected a number in "
                                 f"[0, {cmp.MAX_THRESHOLD:g}], got {th!r}", path)
    doc["_path"] = str(path)
    return doc


def check_applies(doc: dict, results: dict, side: str) -> None:
    """Raise Incomparable unless `results` was measured like the calibration runs."""
    try:
        cmp.check_comparable(doc["fingerprint"], results, allow_missing=True)
    except cmp.Incomparable as e:
        raise cmp.Incomparable(f"thresholds file {doc['_path']} was learned from runs that "
                               f"differ from {side}: {e}")


def row_thresholds(doc: dict, base_runs: float = 1) -> dict:
    """{(key, metric): learned threshold} for a BASE of `base_runs` pooled runs.

    The file's threshold is for one BASE run against one CUR run (spread s*sqrt(2)).  A
    BASE pooled from J runs stands for their mean, so CUR - BASE spreads by s*sqrt(1 + 1/J)
    (the prediction interval of one new run; approximate, see compare's docstring)."""
    out = {}
    for k, per in doc["rows"].items():
        for m, r in per.items():
            th = r["threshold"]
            if base_runs > 1 and (th > 0 or r.get("capped")):
                th = _threshold_for(r, doc, base_runs)
            out[(k, m)] = th
    return out


def _threshold_for(row: dict, doc: dict, base_runs: float) -> float:
    s, k = row.get("drift_sd_log"), row.get("runs")
    alpha_row = doc.get("alpha_per_row")
    if not (cmp._is_num(s) and s > 0 and isinstance(k, int) and k >= 2
            and cmp._is_num(alpha_row) and 0 < alpha_row < 1):
        raise InputError("a row lacks drift_sd_log, runs or alpha_per_row needed for a "
                         "pooled BASE", doc.get("_path"))
    return min(threshold_from_drift(s, k, alpha_row, base_runs), cmp.MAX_THRESHOLD)


# --- command line ----------------------------------------------------------------------

def add_thresholds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("exit status: 0 written; 2 error (fewer than 3 runs, runs that are not "
                     "comparable or carry the gate-testing delay, unwritable --out).")
    parser.add_argument("runs", metavar="RUN", nargs="+",
                        help="results dirs of identical code on this host (>= 3; 8 or more "
                             "recommended)")
    parser.add_argument("--out", "-o", required=True, metavar="FILE",
                        help="thresholds file to write (JSON, atomically)")
    parser.add_argument("--metrics", default=",".join(cmp.CI_METRICS), metavar="M1,M2,...",
                        help=f"metrics to learn (default: the CI configuration, "
                             f"{','.join(cmp.CI_METRICS)})")
    parser.add_argument("--alpha", default=str(DEFAULT_ALPHA),
                        help="chance that identical code alarms on some row from run-to-run "
                             "drift alone, in (0, 0.5) (default %(default)s)")


def format_table(doc: dict) -> str:
    lines = [("benchmark", "metric", "runs", "per-run spread (min..max / median)", "drift",
              "default", "learned")]
    for key, per in doc["rows"].items():
        for metric, r in per.items():
            v = np.asarray(r["values"], float)
            med = float(np.median(v))
            spread = (f"{100 * (v.min() / med - 1):+.1f}%..{100 * (v.max() / med - 1):+.1f}%"
                      if med > 0 else "-")
            default = cmp.DEFAULT_THRESHOLDS[metric]
            learned = r["threshold"]
            note = (" (capped: cannot gate less than a doubling here)" if r["capped"] else
                    " (raised)" if learned > default else "")
            lines.append((key, metric, str(r["runs"]), spread,
                           f"{100 * r['drift_sd_log']:.1f}%", f"{100 * default:g}%",
                           f"{100 * max(learned, default):.1f}%{note}"))
    return cmp.align_columns(lines)


def cli_thresholds(args) -> int:
    alpha = cmp.parse_alpha(args.alpha)
    metrics = cmp._parse_metrics(args.metrics)
    cmp._check_json_path(args.out, "--out")
    doc = learn(args.runs, metrics, alpha)
    print(f"learned from {len(args.runs)} runs; rows that vary: {doc['rows_varying']}; "
          f"alpha {alpha:g} -> {doc['alpha_per_row']:.3g} per row")
    print(format_table(doc))
    print("'drift' is the standard deviation of log(per-run median) over the runs; "
          "'learned' is what compare --thresholds uses (never below the default or your "
          "--threshold/--metric-threshold).")
    try:
        atomic_write_json(args.out, doc)
    except OSError as e:
        raise InputError(f"--out: cannot write: {e.strerror}", args.out)
    print(f"wrote {args.out}")
    return 0
