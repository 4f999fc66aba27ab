"""`gmembench compare BASE [BASE...] CUR`: a regression gate for CI that says when it cannot see.

Exit status
-----------
  0  no regression, and every row was decided: no metric changed by its threshold or more
     in the worse direction, and each could have shown such a change (see 4)
  1  regression: at least one metric is worse by its threshold or more, significantly
  2  error: bad input or options, unreadable or malformed results, or runs that must not be
     compared (the reason is printed); nothing is judged
  3  inconclusive: no regression shown, but at least one row could not be decided - a change
     beyond its threshold that is not significant, or a row whose minimum detectable effect
     exceeds its threshold.  The table says, per row, how many repetitions per side would
     decide it; `--rerun CMD` measures more and decides again.  A CI job must not read 3 as
     a pass.

Method
------
1. Input and comparability.  Both dirs are validated before anything is judged: results.json
   must parse and hold, for every value the gate reads, the type and range the schema gives
   (latencies finite and > 0, counts integers >= 0, one per_rep entry per repetition, unique
   run keys); samples.npz must be readable and agree with results.json.  Matched runs (same
   "<workload>/<strategy>" key) must have the same backend, scale, quick flag, seed, model
   parameters, layout, strategy options and fidelity; simulator runs the same cost-profile
   values; host runs the same host (hostname, kernel, cpu) and the same THP and hugetlb
   settings.  The gate-testing parameters slowdown/slowdown_direction are not compared (a
   delayed run is meant to be compared with its baseline); a side carrying a delay is named
   in the output.  A run present on one side only is an error unless --allow-missing.

2. Values.  Every metric is taken once per repetition (one repetition = one measuring
   process, pyperf's "run"), never from samples pooled across repetitions: conversions
   inside one repetition share that process's state (cache, THP pool, CPU frequency), so
   pooling them overstates the evidence by the number of conversions.  Latency min/p50/p99
   per repetition come from samples.npz (that repetition's own samples), else from per_rep;
   the per-direction latencies ("to_shared.latency_p50", ...) from the samples whose
   direction array says so, else from per_rep[i].directions.  footprint peak, bytes copied
   and huge_splits come from per_rep.  All metrics are "lower is better".

3. Outlying repetitions.  On each side, separately and by the same rule, a repetition whose
   value lies more than OUTLIER_MADS (2.5) scaled MADs (1.4826 x MAD, the normal-consistent
   scale) from that side's median is set aside, the farthest first and at most a quarter of
   the side's repetitions (2.5 is Leys et al.'s (2013) "moderately conservative" cut-off); the MAD is floored at
   OUTLIER_FLOOR (0.5%) of the median so that a side whose values mostly tie does not set
   aside every other value.  A repetition hit by other load (a slow one) then does not blind
   the test.  The rule is symmetric (fast outliers go too), it is applied to BASE and CUR
   alike, and every row records how many values it set aside per side.

4. Decision per row, on the kept values:
      change = median(cur) / median(base) - 1
   - Deterministic rows (simulator backend, or both sides constant over >= 2 repetitions):
     |change| >= threshold is a regression or improvement, else no-change.
   - Otherwise a one-sided exact Mann-Whitney rank test (scipy.stats.mannwhitneyu with a
     permutation null: exact when C(n+m, n) <= 20,000, else 20,000 seeded relabellings) in
     the direction of the change, p-values adjusted over all tested rows with Holm.
   - The minimum detectable effect (MDE) of a row: the smallest relative change its
     repetitions could show with 80% power at level alpha/k (k tested rows: Holm's first
     step), from both sides' spread of the kept values,
        MDE = (z(1 - alpha/k) + z(0.8)) * sqrt(s_b^2/n_b + s_c^2/n_c) / sqrt(3/pi) / median(base)
     (normal approximation; 3/pi is the rank test's efficiency against the t-test); infinite
     when even a complete separation of the two sides could not reach alpha/k
     (1/C(n_b+n_c, n_b) > alpha/k) or a side has fewer than 3 values.
   Verdicts:
     regression    change >= threshold and significant               -> exit 1
     inconclusive  change >= threshold, not significant              -> exit 3
     undecided     change < threshold, but MDE > threshold: a change
                   of the threshold's size could have been missed      -> exit 3
     improvement   change <= -threshold and significant
     noisy         change <= -threshold, not significant (it points the better way)
     no-change     |change| < threshold and MDE <= threshold
   For inconclusive and undecided rows the output gives the repetitions per side that would
   bring the MDE to the observed change (inconclusive) or to the threshold (undecided).

5. Why this test and this family rule: the rank test assumes nothing about the distribution
   (per-repetition values are skewed and few), it is exact for small n, and on ranks one
   disturbed repetition cannot carry the result.  Holm keeps the chance that an unchanged
   set of benchmarks gets any row flagged <= alpha *if the repetitions of one run are
   exchangeable with those of the other*.  They are not quite: a whole run shares the
   machine's state, so runs differ by more than their repetitions do.  The threshold is
   what absorbs that between-run drift, so it must be at least the drift identical runs
   show on the machine, row by row: `gmembench thresholds RUN...` measures it from K
   identical runs and writes per-row thresholds (bench/thresholds.py), and `--thresholds
   FILE` makes each row's threshold max(configured, learned) - marked "L" in the table.
   benchmarks/gate_quality.py measures the resulting false-alarm, detection and
   inconclusive rates.
   One baseline run carries its own share of that drift into every comparison made against
   it.  BASE may therefore be several runs of the baseline build (`compare B1 B2 ... CUR`,
   e.g. the calibration runs themselves): their repetitions are pooled into one side (each
   run checked comparable with the first), and each learned threshold is recomputed from
   the file's drift s for a comparison with the mean of J runs, exp(t * s * sqrt(1 + 1/J))
   - 1 instead of sqrt(2) - the prediction interval of one new run.  Approximate: the
   pooled median of the repetitions stands for the mean of the runs' values (J counts
   runs as equal ones, (sum n)^2 / sum n^2 for repetition counts n); when runs drift much
   more than repetitions spread, the pooled median varies somewhat more than that mean
   (the threshold is then a few % of itself too narrow).  The BASE dirs must hold the same
   runs (--allow-missing does not apply between them), and a dir may appear only once.
   With a pooled BASE the table's base spread and the MDE include the runs' drift.

6. Re-measuring (`--rerun CMD`, `--rerun-base CMD`, `--rerun-budget N`): while the verdict is
   inconclusive, run CMD (a `gmembench run` command line; "{out}" in it is replaced by a
   fresh directory, else `--out DIR` is appended), check that its results are comparable,
   add its repetitions to CUR (BASE for --rerun-base) and decide again, at most N times.
   Deciding after every look would raise the false-alarm rate, so with a budget of N each
   look is made at alpha/(N+1) (Bonferroni over the looks).

Defaults (--threshold sets all, --metric-threshold NAME=PCT one): latency_min 5%, latency p50
7%, latency p99 35% (also per direction), footprint peak, bytes copied, huge splits 5%;
--alpha 0.05.  --metrics chooses the metrics decided on.  --thresholds FILE (written by
`gmembench thresholds`) raises rows whose run-to-run drift on this host needs more; it is
refused (exit 2) for results from another host, kernel or run configuration.
"""
import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from math import comb
from pathlib import Path

import numpy as np

from bench.errors import InputError
from bench.results import SCHEMA, atomic_write_json

EXIT_OK, EXIT_REGRESSION, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3
DIRECTION_NAMES = ("to_shared", "to_private")
_DIRECTION_KIND = {"to_shared": 1, "to_private": 2}      # bench.ops.OpKind values
_LATENCY_STATS = {"latency_min": (0, "min"), "latency_p50": (50, "p50"),
                  "latency_p99": (99, "p99")}
METRICS = (("latency_min", "latency_p50", "latency_p99")
           + tuple(f"{d}.{m}" for d in DIRECTION_NAMES for m in _LATENCY_STATS)
           + ("footprint_peak", "bytes_copied", "huge_splits"))
DEFAULT_METRICS = ("latency_p50", "latency_p99", "footprint_peak", "bytes_copied", "huge_splits")
# the README's CI configuration for the host backend, measured by benchmarks/gate_quality.py:
# each direction's fastest conversion sees a slowdown (also one confined to one direction)
# that the medians' run-to-run drift hides.  Left out on a shared host: latency_p50 (runs
# minutes apart drifted by 7-10%: false alarms) and huge_splits (the kernel's split counter
# is system-wide, so other processes' splits land in it)
CI_METRICS = ("latency_p99", "to_shared.latency_min", "to_private.latency_min",
              "footprint_peak", "bytes_copied")
UNITS = {m: "ns" for m in METRICS if "latency" in m}
UNITS.update({"footprint_peak": "byte", "bytes_copied": "byte", "huge_splits": "count"})
# latency_min (each repetition's fastest conversion): interference only ever adds time, so
# the minimum barely drifts between runs; p50 7% and p99 35% sit above the run-to-run drift
# measured on the 2-vCPU reference VM (benchmarks/gate_quality.py)
_LAT_TH = {"latency_min": 0.05, "latency_p50": 0.07, "latency_p99": 0.35}
DEFAULT_THRESHOLDS = {m: _LAT_TH[m.split(".")[-1]] for m in METRICS if "latency" in m}
DEFAULT_THRESHOLDS.update({"footprint_peak": 0.05, "bytes_copied": 0.05, "huge_splits": 0.05})
DEFAULT_ALPHA = 0.05
MAX_THRESHOLD = 1.0          # a threshold of 100% or more could not fail on a doubling
POWER = 0.8
RANK_EFFICIENCY = 3 / math.pi
PERMUTATIONS = 20_000
OUTLIER_MADS = 2.5
OUTLIER_FLOOR = 0.005
OUTLIER_RULE = (f"per side, values more than {OUTLIER_MADS:g} scaled MADs (1.4826 x MAD, "
                f"at least {100 * OUTLIER_FLOOR:g}% of the median) from that side's median "
                f"are set aside, farthest first, at most a quarter of the side")
# what a host run must share with the run it is compared with (results.json "host")
HOST_FIELDS = ("hostname", "kernel", "cpu", "thp", "hugetlb")
# the gate-testing delay: a delayed run is compared with its baseline on purpose
_GATE_TEST_PARAMS = ("slowdown", "slowdown_direction")

REGRESSION, IMPROVEMENT, NO_CHANGE = "regression", "improvement", "no-change"
NOISY, INCONCLUSIVE, UNDECIDED = "noisy", "inconclusive", "undecided"


class Incomparable(Exception):
    """BASE and CUR measured different things; exit 2."""


@dataclass
class Row:
    key: str
    metric: str
    unit: str
    base: float             # median of BASE's kept per-repetition values
    base_spread: float      # MAD / median of those values
    cur: float
    change: float           # cur/base - 1 (inf when base is 0 and cur is not)
    p: float | None         # Holm-adjusted one-sided p, None when not tested
    n_base: int             # values kept
    n_cur: int
    set_aside_base: int     # outlying repetitions set aside (rule: OUTLIER_RULE)
    set_aside_cur: int
    method: str             # "exact" (deterministic) | "rank-test" | "too-few"
    threshold: float
    mde: float              # minimum detectable effect (relative; inf when none)
    reps_needed: int | None  # per side, to decide an inconclusive/undecided row
    verdict: str
    p_raw: float | None = None
    threshold_from: str = "configured"   # "configured" | "learned" (a --thresholds file)


# --- loading and validating ------------------------------------------------------------

def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def load_side(path) -> tuple[dict, dict]:
    """results.json and samples.npz of one results dir, validated; InputError otherwise."""
    p = Path(path)
    f = p / "results.json" if p.is_dir() else p
    if not f.is_file():
        raise InputError("no results.json here (expected a results/<run-id>/ directory)", str(p))
    try:
        text = f.read_bytes().decode("utf-8")
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", str(f), e.lineno)
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise InputError(f"cannot read results.json: {type(e).__name__}: {e}", str(f))
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"schema is {got!r}, expected {SCHEMA!r}", str(f))
    doc["_dir"] = str(f.parent)
    _validate_doc(doc, str(f))
    samples = _load_samples(f.parent / "samples.npz")
    _validate_samples(doc, samples, str(f.parent / "samples.npz"))
    return doc, samples


def _load_samples(f: Path) -> dict:
    if not f.exists():
        return {}
    try:
        with np.load(f, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
            RuntimeError) as e:
        raise InputError(f"unreadable (truncated or corrupt?): {type(e).__name__}: {e}", str(f))


def _validate_doc(doc: dict, where: str) -> None:
    def bad(path, what, got):
        g = json.dumps(got, default=str)
        raise InputError(f"{path}: expected {what}, got {g[:60]}", where)
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        bad("runs", "a non-empty list of runs", runs)
    if not isinstance(doc.get("host", {}), dict):
        bad("host", "an object", doc.get("host"))
    seen = set()
    for i, run in enumerate(runs):
        at = f"runs[{i}]"
        if not isinstance(run, dict):
            bad(at, "an object", run)
        key = run.get("key")
        if not isinstance(key, str) or not key:
            bad(f"{at}.key", "a non-empty string", key)
        if key in seen:
            raise InputError(f"{at}.key: run {key!r} appears twice (one copy would hide the "
                             f"other)", where)
        seen.add(key)
        if run.get("backend") not in ("sim", "host"):
            bad(f"{at}.backend", '"sim" or "host"', run.get("backend"))
        reps = run.get("repetitions")
        if not _is_count(reps) or reps < 1:
            bad(f"{at}.repetitions", "an integer >= 1", reps)
        per_rep = run.get("per_rep")
        if not isinstance(per_rep, list) or not per_rep:
            bad(f"{at}.per_rep", "a non-empty list (one entry per repetition)", per_rep)
        if len(per_rep) != reps:
            bad(f"{at}.per_rep", f"{reps} entries (repetitions)", f"{len(per_rep)} entries")
        for j, r in enumerate(per_rep):
            _validate_rep(r, f"{at}.per_rep[{j}]", bad)


def _validate_rep(r, at: str, bad) -> None:
    if not isinstance(r, dict):
        bad(at, "an object", r)
    for k in ("conversions", "failed_conversions", "bytes_copied", "huge_splits"):
        if k in r and not _is_count(r[k]):
            bad(f"{at}.{k}", "an integer >= 0", r[k])
    if _is_count(r.get("conversions")) and _is_count(r.get("failed_conversions")) \
            and r["failed_conversions"] > r["conversions"]:
        bad(f"{at}.failed_conversions", "at most conversions", r["failed_conversions"])
    fp = r.get("footprint_bytes")
    if fp is not None:
        if not isinstance(fp, dict) or not _is_count(fp.get("peak")):
            bad(f"{at}.footprint_bytes.peak", "a byte count (integer >= 0)",
                fp.get("peak") if isinstance(fp, dict) else fp)
    _validate_latency(r.get("latency_ns"), f"{at}.latency_ns", bad)
    dirs = r.get("directions")
    if dirs is not None:
        if not isinstance(dirs, dict):
            bad(f"{at}.directions", "an object", dirs)
        for d, v in dirs.items():
            if d not in DIRECTION_NAMES or not isinstance(v, dict):
                bad(f"{at}.directions.{d}", f"one of {DIRECTION_NAMES} with an object", v)
            _validate_latency(v.get("latency_ns"), f"{at}.directions.{d}.latency_ns", bad)


def _validate_latency(lat, at: str, bad) -> None:
    if lat is None:
        return
    if not isinstance(lat, dict):
        bad(at, "an object", lat)
    for name in ("min", "p50", "p99"):
        v = lat.get(name)
        if v is not None and not (_is_num(v) and v > 0):
            bad(f"{at}.{name}", "a finite latency > 0 ns (or null: no conversion)", v)


def _validate_samples(doc: dict, samples: dict, where: str) -> None:
    if not samples:
        return
    for run in doc["runs"]:
        for i, rep in enumerate(run["per_rep"]):
            name = f"{run['key']}/rep{i}"
            lat = samples.get(name)
            if lat is None:
                continue
            if lat.ndim != 1 or lat.dtype.kind not in "iuf":
                raise InputError(f"{name}: expected a 1-D array of latencies, got "
                                 f"{lat.dtype} shape {lat.shape}", where)
            if len(lat) and not (np.all(np.isfinite(lat)) and np.all(lat > 0)):
                raise InputError(f"{name}: latencies must be finite and > 0 ns", where)
            if _is_count(rep.get("conversions")) and _is_count(rep.get("failed_conversions")):
                ok = rep["conversions"] - rep["failed_conversions"]
                if ok != len(lat):
                    raise InputError(f"{name}: {len(lat)} latencies, but results.json says "
                                     f"{ok} successful conversions", where)
            dirs = samples.get(name + "/direction")
            if dirs is not None:
                if dirs.shape != lat.shape or not np.isin(dirs, (1, 2)).all():
                    raise InputError(f"{name}/direction: expected {len(lat)} values, each 1 "
                                     f"(to_shared) or 2 (to_private)", where)


# --- per-repetition values -------------------------------------------------------------

def per_rep_values(run: dict, samples: dict, metric: str) -> np.ndarray:
    """One value per repetition of `metric` for one run (see module docstring, 2); a
    repetition without the value (no successful conversion of that kind) gives none."""
    per_rep = run["per_rep"]
    key = run["key"]
    direction, _, base_metric = metric.rpartition(".")
    if base_metric in _LATENCY_STATS:
        q, name = _LATENCY_STATS[base_metric]
        vals = []
        for i, rep in enumerate(per_rep):
            arr = samples.get(f"{key}/rep{i}")
            dirs = samples.get(f"{key}/rep{i}/direction")
            if arr is not None and (not direction or dirs is not None):
                if direction:
                    arr = arr[dirs == _DIRECTION_KIND[direction]]
                if len(arr):
                    vals.append(float(np.percentile(arr, q)))
                continue
            stats = rep.get("latency_ns") if not direction else \
                ((rep.get("directions") or {}).get(direction) or {}).get("latency_ns")
            if (stats or {}).get(name) is not None:
                vals.append(float(stats[name]))
        return np.array(vals, dtype=float)
    if metric == "footprint_peak":
        vals = [r["footprint_bytes"]["peak"] for r in per_rep
                if (r.get("footprint_bytes") or {}).get("peak") is not None]
    elif metric in ("bytes_copied", "huge_splits"):
        vals = [r[metric] for r in per_rep if r.get(metric) is not None]
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return np.array(vals, dtype=float)


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


def set_aside_outliers(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The kept values (in their order) and how many were set aside (OUTLIER_RULE)."""
    v = np.asarray(values, dtype=float)
    limit = len(v) // 4
    if limit == 0:
        return v, 0
    med = float(np.median(v))
    scale = max(1.4826 * float(np.median(np.abs(v - med))), OUTLIER_FLOOR * abs(med))
    if scale == 0:
        return v, 0
    dist = np.abs(v - med) / scale
    order = np.argsort(-dist, kind="stable")
    drop = [i for i in order[:limit] if dist[i] > OUTLIER_MADS]
    keep = np.ones(len(v), bool)
    keep[drop] = False
    return v[keep], len(drop)


def rank_test_p(base, cur, greater: bool, seed: int = 0) -> float:
    """One-sided Mann-Whitney p-value that CUR tends to be greater (or smaller) than BASE,
    from the permutation distribution of U (exact up to PERMUTATIONS arrangements; ties
    handled by the permutation null, not by a correction)."""
    from scipy.stats import PermutationMethod, mannwhitneyu
    cur, base = np.asarray(cur, float), np.asarray(base, float)
    pooled = np.concatenate([cur, base])
    # without ties scipy's exact U distribution is exact (and fast); with ties (integer
    # minima) only the permutation null is, enumerated when small enough
    method = "exact" if len(np.unique(pooled)) == len(pooled) else \
        PermutationMethod(n_resamples=PERMUTATIONS, rng=np.random.default_rng(seed))
    res = mannwhitneyu(cur, base, alternative="greater" if greater else "less", method=method)
    return float(res.pvalue)


def _z(p: float) -> float:
    from scipy.stats import norm
    return float(norm.ppf(p))


def minimum_detectable_effect(base: np.ndarray, cur: np.ndarray, alpha_row: float) -> float:
    """The relative change these repetitions would show with POWER at level alpha_row
    (module docstring, 4); inf when none could."""
    nb, nc = len(base), len(cur)
    med = float(np.median(base))
    if min(nb, nc) < 3 or med <= 0 or 1 / comb(nb + nc, nb) > alpha_row:
        return math.inf
    se = math.sqrt(np.var(base, ddof=1) / nb + np.var(cur, ddof=1) / nc)
    return (_z(1 - alpha_row) + _z(POWER)) * se / math.sqrt(RANK_EFFICIENCY) / med


def repetitions_needed(base: np.ndarray, cur: np.ndarray, effect: float,
                       alpha_row: float) -> int | None:
    """Repetitions per side for an MDE of `effect` with the present spread; None when
    that spread is unknown (fewer than 2 values on a side) or the effect is 0."""
    if min(len(base), len(cur)) < 2 or not effect > 0 or not math.isfinite(effect):
        return None
    med = float(np.median(base))
    if med <= 0:
        return None
    var = float(np.var(base, ddof=1) + np.var(cur, ddof=1))
    k = (_z(1 - alpha_row) + _z(POWER)) ** 2 / RANK_EFFICIENCY
    n = max(3, math.ceil(k * var / (effect * med) ** 2))
    while 1 / comb(2 * n, n) > alpha_row:       # the exact test's own floor
        n += 1
    return n


def decide_rows(values: dict, thresholds: dict, alpha: float, deterministic: dict,
                learned: dict | None = None) -> list[Row]:
    """values: {(key, metric): (base array, cur array)}; deterministic: {key: bool};
    learned: {(key, metric): threshold} from a thresholds file, which can only raise the
    configured threshold (bench.thresholds).  Returns the rows with their verdicts (module
    docstring, 4)."""
    learned = learned or {}
    rows, tested = [], []
    for (key, metric), (vb_all, vc_all) in values.items():
        vb, out_b = set_aside_outliers(vb_all)
        vc, out_c = set_aside_outliers(vc_all)
        mb, mc = float(np.median(vb)), float(np.median(vc))
        change = relative_change(mb, mc)
        single = len(vb) < 2 or len(vc) < 2
        constant = not single and bool(np.all(vb == vb[0]) and np.all(vc == vc[0]))
        if deterministic[key] or constant:
            method = "exact"
        elif min(len(vb), len(vc)) < 3:
            method = "too-few"
        else:
            method = "rank-test"
        threshold, source = thresholds[metric], "configured"
        if learned.get((key, metric), 0.0) > threshold:
            threshold, source = learned[(key, metric)], "learned"
        row = Row(key=key, metric=metric, unit=UNITS[metric], base=mb,
                  base_spread=mad_spread(vb), cur=mc, change=change, p=None,
                  n_base=len(vb), n_cur=len(vc), set_aside_base=out_b, set_aside_cur=out_c,
                  method=method, threshold=threshold, threshold_from=source,
                  mde=0.0 if method == "exact" else math.inf, reps_needed=None,
                  verdict=NO_CHANGE)
        row._vals = (vb, vc)
        if method == "rank-test":
            row.p_raw = rank_test_p(vb, vc, greater=change > 0,
                                    seed=zlib.crc32(f"{key}|{metric}".encode()))
            tested.append(row)
        rows.append(row)
    k = max(1, len(tested))
    # Holm step-down over every tested row, whatever its change
    running = 0.0
    for i, r in enumerate(sorted(tested, key=lambda r: r.p_raw)):
        running = max(running, min(1.0, r.p_raw * (k - i)))
        r.p = running
    for r in rows:
        vb, vc = r._vals
        del r._vals
        t = r.threshold
        if r.method == "exact":
            r.verdict = (NO_CHANGE if abs(r.change) < t else
                         REGRESSION if r.change > 0 else IMPROVEMENT)
            continue
        if r.method == "rank-test":
            r.mde = minimum_detectable_effect(vb, vc, alpha / k)
        significant = r.p is not None and r.p <= alpha
        if r.change >= t:
            r.verdict = REGRESSION if significant else INCONCLUSIVE
        elif r.mde > t:
            r.verdict = UNDECIDED
        elif r.change <= -t:
            r.verdict = IMPROVEMENT if significant else NOISY
        else:
            r.verdict = NO_CHANGE
        if r.verdict == INCONCLUSIVE:
            r.reps_needed = repetitions_needed(vb, vc, min(r.change, 10.0), alpha / k)
        elif r.verdict == UNDECIDED:
            r.reps_needed = repetitions_needed(vb, vc, t, alpha / k)
    return rows


def exit_status(rows: list[Row]) -> int:
    if any(r.verdict == REGRESSION for r in rows):
        return EXIT_REGRESSION
    if any(r.verdict in (INCONCLUSIVE, UNDECIDED) for r in rows):
        return EXIT_INCONCLUSIVE
    return EXIT_OK


# --- comparability ---------------------------------------------------------------------

_RUN_FIELDS = ("backend", "scale", "quick", "seed", "layout", "strategy_options", "fidelity",
               "fidelity_steps")


def _params(run: dict) -> dict:
    p = run.get("params")
    return {k: v for k, v in p.items() if k not in _GATE_TEST_PARAMS} if isinstance(p, dict) else p


def _costs(run: dict):
    prof = run.get("cost_profile")
    if not isinstance(prof, dict):
        return prof
    return {k: prof.get(k) for k in ("name", "costs", "raw", "overrides") if k in prof}


def check_comparable(base: dict, cur: dict, allow_missing: bool = False) -> list[str]:
    """Raise Incomparable with every reason found; return the matched keys in base order."""
    reasons = []
    bruns = {r["key"]: r for r in base["runs"]}
    cruns = {r["key"]: r for r in cur["runs"]}
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
        if _params(rb) != _params(rc):
            reasons.append(f"{k}: model parameters differ ({_short(_params(rb))} vs "
                           f"{_short(_params(rc))})")
        if rb.get("backend") == "sim" == rc.get("backend") and _costs(rb) != _costs(rc):
            reasons.append(f"{k}: cost profile differs ({_short(_costs(rb))} vs "
                           f"{_short(_costs(rc))})")
        if rb.get("backend") == "host" and not host_checked:
            host_checked = True
            hb, hc = base.get("host") or {}, cur.get("host") or {}
            for f in HOST_FIELDS:
                if hb.get(f) != hc.get(f):
                    reasons.append(f"host {f} differs ({_short(hb.get(f))} vs "
                                   f"{_short(hc.get(f))})")
    if reasons:
        raise Incomparable("; ".join(reasons))
    return keys


def _short(v, n=60) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= n else s[:n - 3] + "..."


def injected_delay(doc: dict) -> list[str]:
    """Runs of a results dir that carry the gate-testing delay, as 'key (slowdown x, dir)'."""
    out = []
    for r in doc["runs"]:
        meta = r.get("metadata") if isinstance(r.get("metadata"), dict) else {}
        params = r.get("params") if isinstance(r.get("params"), dict) else {}
        s = meta.get("slowdown", params.get("slowdown", 1.0))
        if _is_num(s) and s != 1.0:
            d = meta.get("slowdown_direction", params.get("slowdown_direction", "both"))
            out.append(f"{r['key']} (slowdown {s:g}, {d})")
    return out


# --- the gate --------------------------------------------------------------------------

def collect_values(base: dict, sb: dict, cur: dict, sc: dict, keys: list[str],
                   metrics) -> tuple[dict, dict]:
    """{(key, metric): (base values, cur values)} and {key: deterministic}; a metric with
    values on one side only cannot be judged: Incomparable."""
    bruns = {r["key"]: r for r in base["runs"]}
    cruns = {r["key"]: r for r in cur["runs"]}
    values, det = {}, {}
    for k in keys:
        rb, rc = bruns[k], cruns[k]
        det[k] = rb.get("backend") == "sim"
        for metric in metrics:
            vb, vc = per_rep_values(rb, sb, metric), per_rep_values(rc, sc, metric)
            if len(vb) == 0 and len(vc) == 0:
                continue    # e.g. a workload without conversions of that direction
            if len(vb) == 0 or len(vc) == 0:
                side = "BASE" if len(vb) == 0 else "CUR"
                raise Incomparable(f"{k}: {metric} has no value in {side} (no successful "
                                   f"conversion of that kind, or results without "
                                   f"per-direction data)")
            values[(k, metric)] = (vb, vc)
    return values, det


def compare_results(base: dict, cur: dict, thresholds: dict | None = None,
                    alpha: float = DEFAULT_ALPHA, allow_missing: bool = False,
                    metrics=DEFAULT_METRICS, samples: tuple[dict, dict] | None = None,
                    learned: dict | None = None) -> list[Row]:
    """Rows for every matched run x metric; raises Incomparable.  samples: (BASE's, CUR's)
    samples.npz contents; read from the dirs when not given.  learned: per-row thresholds
    (bench.thresholds.row_thresholds), applied as max(configured, learned)."""
    th = dict(DEFAULT_THRESHOLDS)
    th.update(thresholds or {})
    keys = check_comparable(base, cur, allow_missing)
    if samples is None:
        samples = (_load_samples(Path(base["_dir"]) / "samples.npz"),
                   _load_samples(Path(cur["_dir"]) / "samples.npz"))
    values, det = collect_values(base, samples[0], cur, samples[1], keys, metrics)
    return decide_rows(values, th, alpha, det, learned)


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


def _pct(x: float) -> str:
    return "inf" if math.isinf(x) else f"{100 * x:.1f}%"


def format_table(rows: list[Row]) -> str:
    head = ("benchmark", "metric", "base", "spread", "cur", "change", "threshold", "MDE",
            "p(Holm)", "n b/c (-out)", "verdict")
    lines = [head]
    for r in rows:
        change = "+inf" if math.isinf(r.change) else f"{100 * r.change:+.1f}%"
        p = f"{r.p:.3g}" if r.p is not None else ("exact" if r.method == "exact" else "-")
        n = f"{r.n_base}/{r.n_cur}"
        if r.set_aside_base or r.set_aside_cur:
            n += f" (-{r.set_aside_base}/-{r.set_aside_cur})"
        lines.append((r.key, r.metric, format_value(r.base, r.unit),
                      f"±{100 * r.base_spread:.1f}%", format_value(r.cur, r.unit), change,
                      f"{100 * r.threshold:.3g}%" + ("L" if r.threshold_from == "learned" else ""),
                      _pct(r.mde), p, n,
                      r.verdict.upper() if r.verdict in (REGRESSION, INCONCLUSIVE, UNDECIDED)
                      else r.verdict))
    return align_columns(lines, right=range(2, len(head) - 1))


def align_columns(lines: list, right=()) -> str:
    """A text table: the first line is the header, underlined; columns padded to their
    widest cell, left-aligned except the column indices in `right`."""
    right = set(right)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    out = []
    for j, line in enumerate(lines):
        out.append("  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def explain_undecided(rows: list[Row]) -> list[str]:
    """One line per row that kept the gate from deciding: why, and what would decide it."""
    out = []
    for r in rows:
        need = (f"about {r.reps_needed} repetitions per side would decide it"
                if r.reps_needed else "more repetitions per side (>= 3 that vary) are needed")
        if r.verdict == INCONCLUSIVE:
            out.append(f"  {r.key} {r.metric}: {100 * r.change:+.1f}% is beyond the "
                       f"{100 * r.threshold:g}% threshold but not significant (p {r.p if r.p is not None else '-'}"
                       f", MDE {_pct(r.mde)}); {need}, or --rerun")
        elif r.verdict == UNDECIDED:
            out.append(f"  {r.key} {r.metric}: cannot be decided - with this spread and "
                       f"{r.n_base}/{r.n_cur} repetitions only a change of {_pct(r.mde)} "
                       f"would be seen, more than the {100 * r.threshold:g}% threshold; {need}")
    return out


# --- command line ----------------------------------------------------------------------

def _percent_value(text: str, what: str) -> float:
    try:
        v = float(str(text).strip().rstrip("%")) / 100
    except ValueError:
        raise InputError(f"{what}: not a percentage: {text!r}")
    if not (math.isfinite(v) and 0 < v <= MAX_THRESHOLD):
        raise InputError(f"{what}: expected a percentage > 0 and <= {100 * MAX_THRESHOLD:g}, "
                         f"got {text!r}")
    return v


def parse_alpha(text: str) -> float:
    """--alpha: a significance level in (0, 0.5)."""
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0 < alpha < 0.5:
        raise InputError(f"--alpha: expected a number in (0, 0.5), got {text!r}")
    return alpha


def _parse_metrics(text: str) -> tuple:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names or len(set(names)) != len(names):
        raise InputError(f"--metrics: expected a comma-separated list of distinct metrics "
                         f"from {', '.join(METRICS)}; got {text!r}")
    return names


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("exit status: 0 no regression and every row decided; 1 regression; "
                     "2 error or not comparable (nothing judged); 3 inconclusive - no "
                     "regression shown, but a change beyond a threshold was not significant "
                     "or a row could not have seen one (the output says how many "
                     "repetitions would decide it). CI must treat 3 as not passed.")
    parser.add_argument("base", metavar="BASE", nargs="+",
                        help="baseline results dir (results/<run-id>/); several runs of the "
                             "baseline build (e.g. the calibration runs) are pooled: their "
                             "repetitions form one side, and learned thresholds shrink to "
                             "what a comparison with their mean needs")
    parser.add_argument("cur", metavar="CUR", help="current results dir")
    parser.add_argument("--threshold", default=None, metavar="PCT",
                        help="minimum change that counts, in %%, for every metric; > 0 and "
                             "<= 100 (default: latency_min 5, p50 7, p99 35, others 5)")
    parser.add_argument("--metric-threshold", action="append", default=[], metavar="METRIC=PCT",
                        help=f"per-metric minimum change; METRIC one of {', '.join(METRICS)}")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), metavar="M1,M2,...",
                        help=f"metrics to decide on, from {', '.join(METRICS)} "
                             f"(default: {','.join(DEFAULT_METRICS)})")
    parser.add_argument("--alpha", default=str(DEFAULT_ALPHA),
                        help="family-wise significance level (Holm over the tested rows) of "
                             "the one-sided exact rank test, in (0, 0.5) (default %(default)s)")
    parser.add_argument("--thresholds", metavar="FILE",
                        help="per-row thresholds learned from identical runs on this host "
                             "(`gmembench thresholds`); a row's threshold becomes "
                             "max(configured, learned), marked L in the table")
    parser.add_argument("--allow-missing", action="store_true",
                        help="compare the runs both dirs have instead of refusing")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--rerun", metavar="CMD",
                        help="while inconclusive, run CMD (a `gmembench run ...` command; "
                             "{out} is replaced by a new directory, else --out DIR is "
                             "appended) and add its repetitions to CUR")
    parser.add_argument("--rerun-base", metavar="CMD",
                        help="likewise, adding repetitions to BASE (LKP re-tests both)")
    parser.add_argument("--rerun-budget", default="3", metavar="N",
                        help="at most N re-measurements (default 3); every look is made at "
                             "alpha/(N+1)")


def _options(args) -> tuple[dict, float, tuple, int]:
    thresholds = {}
    if args.threshold is not None:
        v = _percent_value(args.threshold, "--threshold")
        thresholds = {m: v for m in METRICS}
    for item in args.metric_threshold:
        name, sep, pct = item.partition("=")
        if not sep or name not in METRICS:
            raise InputError(f"--metric-threshold: expected METRIC=PERCENT with METRIC one of "
                             f"{', '.join(METRICS)}; got {item!r}")
        thresholds[name] = _percent_value(pct, f"--metric-threshold {name}")
    alpha = parse_alpha(args.alpha)
    metrics = _parse_metrics(args.metrics)
    try:
        budget = int(args.rerun_budget)
    except ValueError:
        budget = -1
    if not 0 <= budget <= 100:
        raise InputError(f"--rerun-budget: expected an integer 0..100, got {args.rerun_budget!r}")
    return thresholds, alpha, metrics, budget


def _check_json_path(path: str, option: str = "--json") -> None:
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option}: is a directory", path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{option}: its directory does not exist", path)
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"{option}: not writable", path)


def _rerun(cmd: str, keys_from: dict, what: str) -> tuple[dict, dict]:
    """Run one re-measurement; its results dir, loaded and validated."""
    work = Path(tempfile.mkdtemp(prefix="gmembench-rerun-"))
    out = work / "run"
    argv = shlex.split(cmd)
    argv = [a.replace("{out}", str(out)) for a in argv] if "{out}" in cmd else argv + ["--out", str(out)]
    print(f"re-measuring {what}: {shlex.join(argv)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(argv)
    except OSError as e:
        raise InputError(f"--rerun: cannot run {argv[0]!r}: {e.strerror}")
    if proc.returncode != 0:
        raise InputError(f"--rerun: the command exited {proc.returncode}; nothing decided")
    return load_side(out)


def _merge(doc: dict, samples: dict, extra: dict, extra_samples: dict) -> None:
    """Append the repetitions of `extra` to `doc` (same keys; comparability checked)."""
    runs = {r["key"]: r for r in extra["runs"]}
    for r in doc["runs"]:
        e = runs.get(r["key"])
        if e is None:
            continue
        n = len(r["per_rep"])
        for i in range(len(e["per_rep"])):
            for suffix in ("", "/direction"):
                a = extra_samples.get(f"{r['key']}/rep{i}{suffix}")
                if a is not None:
                    samples[f"{r['key']}/rep{n + i}{suffix}"] = a
        r["per_rep"] = r["per_rep"] + e["per_rep"]
        r["repetitions"] = len(r["per_rep"])


def effective_runs(docs) -> float:
    """How many equal runs a pooled BASE is worth: (sum n)^2 / sum n^2 over the runs'
    repetition counts (the pooled median weights each run by its repetitions, so 24 + 8
    repetitions average like 1.6 runs, not 2)."""
    n = [max((len(r.get("per_rep") or []) for r in d["runs"]), default=0) for d in docs]
    return sum(n) ** 2 / sum(x * x for x in n) if any(n) else 1.0


def _json_row(r: Row) -> dict:
    d = asdict(r)
    for k in ("change", "mde"):
        if isinstance(d[k], float) and math.isinf(d[k]):      # strict JSON has no Infinity
            d[k] = "inf" if d[k] > 0 else "-inf"
    return d


def cli_compare(args) -> int:
    """The gate.  Whatever goes wrong, it never exits 1 (= regression) for it: bad input
    is an InputError (exit 2 via the CLI), anything unforeseen is reported in one line
    and exits 2 too."""
    try:
        return _cli_compare(args)
    except (InputError, KeyboardInterrupt):
        raise
    except Exception as e:     # a bug or an input no check foresaw: still not a verdict
        print(f"gmembench compare: error, nothing judged: {type(e).__name__}: {e}",
              file=sys.stderr)
        return EXIT_ERROR


def _cli_compare(args) -> int:
    thresholds, alpha, metrics, budget = _options(args)
    if args.json:
        _check_json_path(args.json)
    # a dir twice in a pooled BASE (or CUR inside one) would count as evidence twice;
    # `compare A A` alone stays allowed (a sanity check that must pass)
    seen = {}
    for i, b in enumerate([*args.base, args.cur] if len(args.base) > 1 else args.base):
        side, r = ("CUR" if i == len(args.base) else "BASE"), Path(b).resolve()
        if r in seen:
            raise InputError(f"given twice (as {seen[r]} and {side}): a run pooled or compared "
                             f"with itself adds no evidence", b)
        seen[r] = side
    bases = [load_side(b) for b in args.base]
    cur, sc = load_side(args.cur)
    base, sb = bases[0]
    pooled_j = effective_runs(d for d, _ in bases)
    learned_doc = learned = None
    if args.thresholds:
        from bench import thresholds as thr
        learned_doc = thr.load(args.thresholds)
        learned = thr.row_thresholds(learned_doc, base_runs=pooled_j)
    reruns = bool(args.rerun or args.rerun_base)
    looks = budget + 1 if reruns else 1
    alpha_look = alpha / looks
    try:
        # several BASE runs: one side of all their repetitions (each checked comparable
        # with the first, as a re-measurement is)
        for path, (extra, extra_s) in zip(args.base[1:], bases[1:]):
            try:
                check_comparable(base, extra)
            except Incomparable as e:
                raise Incomparable(f"BASE {path} cannot be pooled with BASE {args.base[0]} "
                                   f"(below, CUR means {path}): {e}")
            _merge(base, sb, extra, extra_s)
        if learned_doc is not None:
            thr.check_applies(learned_doc, base, "BASE")
            thr.check_applies(learned_doc, cur, "CUR")
        rows = compare_results(base, cur, thresholds, alpha_look, args.allow_missing, metrics,
                               samples=(sb, sc), learned=learned)
        spent = 0
        while reruns and exit_status(rows) == EXIT_INCONCLUSIVE and spent < budget:
            spent += 1
            for cmd, doc, smp, what in ((args.rerun, cur, sc, "CUR"),
                                        (args.rerun_base, base, sb, "BASE")):
                if not cmd:
                    continue
                extra, extra_s = _rerun(cmd, doc, what)
                check_comparable(doc, extra, allow_missing=True)
                _merge(doc, smp, extra, extra_s)
            rows = compare_results(base, cur, thresholds, alpha_look, args.allow_missing,
                                   metrics, samples=(sb, sc), learned=learned)
    except Incomparable as e:
        print(f"gmembench compare: not comparable: {e}", file=sys.stderr)
        return EXIT_ERROR
    status = exit_status(rows)
    for path, (doc, _) in zip(args.base, bases):
        print(f"BASE {path} ({doc.get('run_id')})")
    print(f"CUR  {args.cur} ({cur.get('run_id')})")
    for side, doc in [(f"BASE {p}", d) for p, (d, _) in zip(args.base, bases)] + [("CUR", cur)]:
        delayed = injected_delay(doc)
        if delayed:
            print(f"note: {side} carries an injected gate-testing delay: {', '.join(delayed)}")
    print(format_table(rows))
    if learned_doc is not None:
        raised = [r for r in rows if r.threshold_from == "learned"]
        print(f"thresholds: max(configured, learned per row) - learned {learned_doc.get('created')} "
              f"from {len(learned_doc.get('learned_from') or [])} identical runs "
              f"({args.thresholds}), for a BASE of {len(bases)} run(s)"
              + (f" (as {pooled_j:.2f} equal runs: repetition counts differ)"
                 if abs(pooled_j - len(bases)) > 1e-9 else "") + "; raised on "
              f"{len(raised)} of {len(rows)} rows (L)")
        for r in raised:
            if r.threshold >= MAX_THRESHOLD:
                print(f"  {r.key} {r.metric}: drifts so much between identical runs that it "
                      f"cannot gate less than a doubling on this host")
    print(f"outlier rule: {OUTLIER_RULE}; set aside: "
          f"{sum(r.set_aside_base for r in rows)} BASE / {sum(r.set_aside_cur for r in rows)} "
          f"CUR values over {len(rows)} rows")
    if reruns:
        print(f"re-measured {spent} time(s) of at most {budget}; each look at alpha "
              f"{alpha:g}/{looks} = {alpha_look:.3g}")
    why = explain_undecided(rows)
    if why:
        print("not decided:")
        print("\n".join(why))
    count = {v: sum(r.verdict == v for r in rows)
             for v in (REGRESSION, INCONCLUSIVE, UNDECIDED, IMPROVEMENT, NOISY, NO_CHANGE)}
    print(", ".join(f"{n} {v}" for v, n in count.items())
          + f" -> exit {status} ({ {0: 'pass', 1: 'REGRESSION', 3: 'INCONCLUSIVE'}[status] })")
    if args.json:
        doc = {"base": args.base[0], "base_dirs": list(args.base),
               "base_runs_effective": pooled_j, "cur": args.cur,
               "alpha": alpha, "alpha_per_look": alpha_look,
               "thresholds_file": args.thresholds,
               "metrics": list(metrics), "outlier_rule": OUTLIER_RULE,
               "power_for_mde": POWER, "reruns": spent if reruns else 0,
               "exit_status": status, "counts": count,
               "rows": [_json_row(r) for r in rows], "regressions": count[REGRESSION]}
        try:
            atomic_write_json(args.json, doc)
        except OSError as e:
            raise InputError(f"--json: cannot write: {e.strerror}", args.json)
    return status
