"""PNG figures for a results dir, readable in a mailing-list archive and on a slide.

Per workload: latency CDF of both strategies (log x), footprint over the run, huge-page
coverage over the run, copy-time share.  One summary figure: dual / in-place ratios of median
latency and footprint peak for every workload, with the spread of per-repetition ratios.

Style rules: 150 dpi, fonts >= 10 pt, Okabe-Ito colours (colour-blind safe) plus distinct
line styles and hatches (survive greyscale printing), units on every axis, and backend and
fidelity in every title.  matplotlib's object API with the Agg canvas: no pyplot global state,
no display needed.
"""
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 150
FONT = 11
# Okabe-Ito
COLOURS = {"in-place": "#0072B2", "dual": "#D55E00"}
EXTRA_COLOURS = ["#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
STYLES = {"in-place": "-", "dual": "--"}
HATCHES = {"in-place": "", "dual": "//"}
STRATEGY_ORDER = ("in-place", "dual")

_RC = {"font.size": FONT, "axes.titlesize": FONT + 1, "axes.labelsize": FONT,
       "xtick.labelsize": FONT - 1, "ytick.labelsize": FONT - 1, "legend.fontsize": FONT - 1,
       "figure.titlesize": FONT + 2}


def colour(strategy: str, i: int = 0) -> str:
    return COLOURS.get(strategy, EXTRA_COLOURS[i % len(EXTRA_COLOURS)])


def _figure(width=8.0, height=5.0):
    import matplotlib
    matplotlib.rcParams.update(_RC)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    from bench.results import atomic_write_bytes
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return path


def runs_by_workload(results: dict) -> dict[str, list[dict]]:
    """workload -> its runs, in-place first, then dual, then anything else."""
    out: dict[str, list[dict]] = {}
    for r in results.get("runs", []):
        out.setdefault(r["workload"], []).append(r)
    rank = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    for runs in out.values():
        runs.sort(key=lambda r: rank.get(r["strategy"], len(rank)))
    return out


def fidelity_text(runs: list[dict]) -> str:
    """'backend host, fidelity: in-place emulated, dual native' (or one word if all agree)."""
    backends = sorted({r.get("backend", "?") for r in runs})
    fids = {r["strategy"]: r.get("fidelity", "?") for r in runs}
    if len(set(fids.values())) == 1:
        fid = next(iter(fids.values()))
    else:
        fid = ", ".join(f"{s} {f}" for s, f in fids.items())
    scale = sorted({r.get("scale") for r in runs if r.get("scale") is not None})
    extra = f", scale {scale[0]:g}" if len(scale) == 1 and scale[0] != 1 else ""
    quick = ", quick" if any(r.get("quick") for r in runs) else ""
    return f"backend {'/'.join(backends)}, fidelity: {fid}{extra}{quick}"


def rep_samples(run: dict, samples: dict) -> list[np.ndarray]:
    reps = int(run.get("repetitions") or len(run.get("per_rep") or []))
    out = []
    for i in range(reps):
        a = samples.get(f"{run['key']}/rep{i}")
        if a is not None and len(a):
            out.append(np.asarray(a))
    return out


def plot_latency_cdf(workload: str, runs: list[dict], samples: dict, path: Path) -> Path | None:
    fig = _figure()
    ax = fig.add_subplot()
    drew = False
    for i, r in enumerate(runs):
        reps = rep_samples(r, samples)
        if not reps:
            continue
        lat = np.sort(np.concatenate(reps)) / 1e3
        lat = np.maximum(lat, 1e-3)          # log axis: 0 ns means below clock resolution
        y = np.arange(1, len(lat) + 1) / len(lat) * 100
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
        ax.step(lat, y, where="post", color=colour(r["strategy"], i),
                linestyle=STYLES.get(r["strategy"], "-."), linewidth=2,
                label=f"{r['strategy']}: p50 {p50:.3g} us, p99 {p99:.3g} us (n={len(lat)})")
        drew = True
    if not drew:
        return None
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_xscale("log")
    # 1-2-5 ticks with plain numbers: "20" reads faster than "2x10^1" on a slide
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("conversion latency (us, log scale)")
    ax.set_ylabel("conversions at or below (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{workload}: conversion latency CDF, all repetitions\n{fidelity_text(runs)}")
    return _save(fig, path)


def _series_x(r: dict):
    s = r.get("series") or {}
    return np.asarray(s.get("op_index") or [], dtype=float)


def plot_footprint(workload: str, runs: list[dict], path: Path) -> Path | None:
    fig = _figure()
    ax = fig.add_subplot()
    drew = False
    guest = None
    for i, r in enumerate(runs):
        s = r.get("series") or {}
        fp = np.asarray(s.get("footprint_bytes") or [], dtype=float)
        x = _series_x(r)
        if not len(fp) or len(x) != len(fp):
            continue
        ax.plot(x, fp / 2**20, color=colour(r["strategy"], i),
                linestyle=STYLES.get(r["strategy"], "-."), linewidth=2, label=r["strategy"])
        m = r.get("metrics") or {}
        peak, ratio = (m.get("footprint_bytes") or {}).get("peak"), (m.get("footprint_ratio") or {}).get("peak")
        if peak and ratio:
            guest = peak / ratio
        drew = True
    if not drew:
        return None
    if guest:
        for k, ls in ((1, ":"), (2, "-.")):
            ax.axhline(k * guest / 2**20, color="0.4", linestyle=ls, linewidth=1,
                       label=f"{k}x guest memory")
    ax.set_xlabel("workload op index (repetition 0)")
    ax.set_ylabel("host memory held for the guest (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"{workload}: memory footprint over the run\n{fidelity_text(runs)}")
    return _save(fig, path)


def plot_coverage(workload: str, runs: list[dict], path: Path) -> Path | None:
    fig = _figure()
    ax = fig.add_subplot()
    drew = False
    for i, r in enumerate(runs):
        s = r.get("series") or {}
        cov = np.asarray(s.get("hugepage_coverage") or [], dtype=float)
        x = _series_x(r)
        if not len(cov) or len(x) != len(cov):
            continue
        ax.plot(x, cov * 100, color=colour(r["strategy"], i),
                linestyle=STYLES.get(r["strategy"], "-."), linewidth=2, label=r["strategy"])
        drew = True
    if not drew:
        return None
    ax.set_xlabel("workload op index (repetition 0)")
    ax.set_ylabel("guest memory backed by huge pages (%)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    ax.set_title(f"{workload}: huge-page coverage over the run\n{fidelity_text(runs)}")
    return _save(fig, path)


def conversion_time_ns(run: dict, samples: dict) -> float:
    """Total time spent in conversions over all repetitions."""
    reps = rep_samples(run, samples)
    if reps:
        return float(sum(int(a.sum()) for a in reps))
    m = run.get("metrics") or {}
    return float((m.get("latency_ns") or {}).get("mean", 0.0)) * float(m.get("conversions", 0))


def copy_share(run: dict, samples: dict) -> float | None:
    total = conversion_time_ns(run, samples)
    if total <= 0:
        return None
    return float((run.get("metrics") or {}).get("copy_time_ns", 0)) / total


def plot_copy_share(workload: str, runs: list[dict], samples: dict, path: Path) -> Path | None:
    shares = [(r, copy_share(r, samples)) for r in runs]
    shares = [(r, s) for r, s in shares if s is not None]
    if not shares:
        return None
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    names = [r["strategy"] for r, _ in shares]
    vals = [100 * s for _, s in shares]
    bars = ax.bar(names, vals, color=[colour(n, i) for i, n in enumerate(names)],
                  hatch=[HATCHES.get(n, "..") for n in names], edgecolor="black")
    for b, (r, s) in zip(bars, shares):
        copied = (r.get("metrics") or {}).get("bytes_copied", 0)
        ax.annotate(f"{100 * s:.1f}%\n{copied / 2**20:.1f} MiB copied",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=FONT - 1)
    ax.set_ylabel("copy time / total conversion time (%)")
    ax.set_ylim(0, max(100.0, max(vals) * 1.25))
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{workload}: share of conversion time spent copying\n{fidelity_text(runs)}")
    return _save(fig, path)


def _per_rep(run: dict, samples: dict, metric: str) -> np.ndarray:
    if metric == "latency_p50":
        reps = rep_samples(run, samples)
        if reps:
            return np.array([np.median(a) for a in reps], dtype=float)
        return np.array([r["latency_ns"]["p50"] for r in run.get("per_rep") or []
                         if (r.get("latency_ns") or {}).get("p50") is not None], dtype=float)
    vals = [r["footprint_bytes"]["peak"] for r in run.get("per_rep") or []
            if (r.get("footprint_bytes") or {}).get("peak") is not None]
    if not vals:
        vals = [((run.get("metrics") or {}).get("footprint_bytes") or {}).get("peak", np.nan)]
    return np.array(vals, dtype=float)


def ratio_with_spread(num: np.ndarray, den: np.ndarray) -> tuple[float, float, float]:
    """Ratio of medians, and the 25th/75th percentiles of the ratios of every pair of
    repetitions (repetitions are not paired across strategies, so all pairs count)."""
    num, den = num[np.isfinite(num)], den[np.isfinite(den) & (den > 0)]
    if not len(num) or not len(den):
        return float("nan"), float("nan"), float("nan")
    ratios = (num[:, None] / den[None, :]).ravel()
    return (float(np.median(num) / np.median(den)), float(np.percentile(ratios, 25)),
            float(np.percentile(ratios, 75)))


def summary_ratios(results: dict, samples: dict) -> list[dict]:
    out = []
    for w, runs in runs_by_workload(results).items():
        by = {r["strategy"]: r for r in runs}
        if "in-place" not in by or "dual" not in by:
            continue
        row = {"workload": w, "runs": runs}
        for metric in ("latency_p50", "footprint_peak"):
            row[metric] = ratio_with_spread(_per_rep(by["dual"], samples, metric),
                                            _per_rep(by["in-place"], samples, metric))
        out.append(row)
    return out


def plot_summary(results: dict, samples: dict, path: Path) -> Path | None:
    rows = summary_ratios(results, samples)
    if not rows:
        return None
    all_runs = [r for row in rows for r in row["runs"]]
    fig = _figure(max(8.0, 1.2 * len(rows) + 3), 5.5)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.38
    for j, (metric, label, col, hatch) in enumerate((
            ("latency_p50", "median conversion latency", "#CC79A7", ""),
            ("footprint_peak", "peak memory footprint", "#009E73", "//"))):
        mid = np.array([row[metric][0] for row in rows])
        lo = np.array([row[metric][1] for row in rows])
        hi = np.array([row[metric][2] for row in rows])
        err = np.vstack([np.clip(mid - lo, 0, None), np.clip(hi - mid, 0, None)])
        bars = ax.bar(x + (j - 0.5) * width, mid, width, yerr=err, capsize=4, color=col,
                      hatch=hatch, edgecolor="black", label=label)
        for b, v, top in zip(bars, mid, hi):
            if np.isfinite(v):
                # above the whisker, so the label never sits on it
                y = max(v, top) if np.isfinite(top) else v
                ax.annotate(f"{v:.2f}x" if v < 10 else f"{v:.3g}x", (b.get_x() + b.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=FONT - 1,
                            xytext=(0, 3), textcoords="offset points")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(x, [row["workload"] for row in rows], rotation=20 if len(rows) > 4 else 0,
                  ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel("dual / in-place (ratio; > 1: in-place better)")
    top = np.nanmax([row[m][2] for row in rows for m in ("latency_p50", "footprint_peak")])
    ax.set_ylim(0, max(1.5, float(top) * 1.15) if np.isfinite(top) else None)
    ax.grid(True, axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2)
    ax.set_title("dual backing relative to in-place conversion, per workload\n"
                 f"{fidelity_text(all_runs)}; whiskers: IQR of per-repetition ratios")
    return _save(fig, path)


def figure_jobs(results: dict, samples: dict, outdir) -> list[tuple]:
    """Every figure as an independent job (workload or None for the summary, plot function,
    its arguments); a job returns the path it wrote or None.  write_plots runs them in
    order; the report (bench/report/report.py) renders them in parallel."""
    outdir = Path(outdir)
    jobs = [(None, plot_summary, (results, samples, outdir / "summary.png"))]
    for w, runs in runs_by_workload(results).items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in w)
        jobs += [(w, plot_latency_cdf, (w, runs, samples, outdir / f"{safe}-latency-cdf.png")),
                 (w, plot_footprint, (w, runs, outdir / f"{safe}-footprint.png")),
                 (w, plot_coverage, (w, runs, outdir / f"{safe}-hugepage-coverage.png")),
                 (w, plot_copy_share, (w, runs, samples, outdir / f"{safe}-copy-share.png"))]
    return jobs


def collect_figures(jobs: list[tuple], paths: list) -> tuple[Path | None, dict[str, list[Path]]]:
    """(summary figure or None, {workload: [paths written]}) from figure_jobs' jobs and
    what each returned, in the same order."""
    summary, written = None, {}
    for (workload, _, _), path in zip(jobs, paths):
        if workload is None:
            summary = path
        else:
            written.setdefault(workload, [])
            if path:
                written[workload].append(path)
    return summary, written


def write_plots(results: dict, samples: dict, outdir) -> tuple[Path | None, dict[str, list[Path]]]:
    """All figures into outdir; returns (summary figure or None, {workload: [paths]})."""
    Path(outdir).mkdir(parents=True, exist_ok=True)
    jobs = figure_jobs(results, samples, outdir)
    return collect_figures(jobs, [fn(*args) for _, fn, args in jobs])
