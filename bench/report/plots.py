"""PNG figures for a results dir, readable in a mailing-list archive and on a slide.

Per workload: conversion latency CDFs per direction (log x); the time accounting (conversion
and induced time per direction and strategy); footprint over the run and the huge-page
measures over the run, both against time (simulated or measured); copy-time share when
anything was copied.  One summary figure: dual / in-place ratios of total and conversion
time per workload on a log scale with the spread of per-repetition ratios, the absolute
times beside them, and per workload the verdict and the primitives behind it.

A figure with nothing to show (no data, or every line constant) is not drawn; write_plots
reports it in `skipped` with the reason, and the report says so.

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
    # zlib level 3 instead of 6: the same pixels, files ~10% larger, encoding ~40% faster
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
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


DIRS = ("to_shared", "to_private")
DIR_TITLE = {"to_shared": "to-shared (private -> shared)", "to_private": "to-private (shared -> private)"}
_TIME_UNITS = ((1e9, "s"), (1e6, "ms"), (1e3, "us"), (1.0, "ns"))
_BYTE_UNITS = ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"), (1, "B"))


def time_unit(max_ns: float) -> tuple[float, str]:
    """(divisor, unit) so that the largest value reads between 1 and 1000."""
    for div, unit in _TIME_UNITS:
        if max_ns >= div:
            return div, unit
    return 1.0, "ns"


def byte_unit(max_bytes: float) -> tuple[float, str]:
    for div, unit in _BYTE_UNITS:
        if max_bytes >= div:
            return float(div), unit
    return 1.0, "B"


def fmt_time(ns: float) -> str:
    div, unit = time_unit(abs(ns))
    return f"{ns / div:.3g} {unit}"


def emulated_mark(run: dict) -> str:
    """' [emulated: STEP, ...]' for host runs with steps that were not native."""
    if run.get("backend") == "sim":
        return ""
    from bench.report.headline import emulated_steps
    em = emulated_steps(run)
    return f" [emulated: {', '.join(em)}]" if em else ""


def direction_samples(run: dict, samples: dict, direction: str) -> np.ndarray:
    """All repetitions' latencies of one direction (samples.npz direction arrays)."""
    from bench.metrics import DIRECTIONS
    kind = int(DIRECTIONS[direction])
    reps = int(run.get("repetitions") or len(run.get("per_rep") or []))
    out = []
    for i in range(reps):
        a = samples.get(f"{run['key']}/rep{i}")
        d = samples.get(f"{run['key']}/rep{i}/direction")
        if a is None or d is None or len(a) != len(d):
            continue
        out.append(np.asarray(a)[np.asarray(d) == kind])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def plot_latency_cdf(workload: str, runs: list[dict], samples: dict, path: Path,
                     skipped: list | None = None) -> Path | None:
    """One panel per direction that has conversions; x in the unit the data needs."""
    data = {d: [(r, direction_samples(r, samples, d)) for r in runs] for d in DIRS}
    data = {d: [(r, a) for r, a in v if len(a)] for d, v in data.items()}
    dirs = [d for d in DIRS if data[d]]
    if not dirs:
        _skip(skipped, workload, "latency CDF", "no successful conversion recorded")
        return None
    fig = _figure(6.0 * len(dirs) + 1, 5.0)
    axes = fig.subplots(1, len(dirs), squeeze=False)[0]
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    for ax, d in zip(axes, dirs):
        lo = max(1.0, min(float(a.min()) for _, a in data[d]))
        hi = max(float(a.max()) for _, a in data[d])
        div, unit = time_unit(hi)
        for i, (r, a) in enumerate(data[d]):
            lat = np.maximum(np.sort(a).astype(float), 1.0) / div   # log axis: 0 ns -> 1 ns
            y = np.arange(1, len(lat) + 1) / len(lat) * 100
            # the same steps from the first point and the last of each run of equal values
            # (latencies repeat: 500k samples are often a few dozen values)
            keep = np.flatnonzero(np.diff(lat, append=np.inf))
            keep = np.concatenate(([0], keep)) if len(keep) and keep[0] else keep
            lat, y = lat[keep], y[keep]
            p50, p99 = np.percentile(a, 50), np.percentile(a, 99)
            ax.step(lat, y, where="post", color=colour(r["strategy"], i),
                    linestyle=STYLES.get(r["strategy"], "-."), linewidth=2,
                    label=f"{r['strategy']}{emulated_mark(r)}: p50 {fmt_time(p50)}, "
                          f"p99 {fmt_time(p99)} (n={len(a)})")
        ax.set_xscale("log")
        if hi / lo < 1.5:      # a narrow range: widen so the steps are visible
            ax.set_xlim(lo / div / 1.5, hi / div * 1.5)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"conversion latency ({unit}, log scale)")
        ax.set_ylabel("conversions at or below (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=FONT - 2)
        ax.set_title(DIR_TITLE[d])
    fig.suptitle(f"{workload}: conversion latency CDF per direction, all repetitions\n"
                 f"{fidelity_text(runs)}")
    return _save(fig, path)


def _series_time(r: dict):
    """x values of a run's series in ns since the repetition started (None if absent)."""
    s = r.get("series") or {}
    t = s.get("time_ns")
    if t is None and s.get("t_ns"):
        t = [x - s["t_ns"][0] for x in s["t_ns"]]
    return None if t is None else np.asarray(t, dtype=float)


def _skip(skipped, workload, figure, why):
    if skipped is not None:
        skipped.append({"workload": workload, "figure": figure, "why": why})


def _constant(arrays) -> bool:
    vals = np.concatenate([np.asarray(a, dtype=float) for a in arrays]) if arrays else np.zeros(0)
    return len(vals) == 0 or float(np.nanmax(vals)) == float(np.nanmin(vals))


def _time_lines(workload, runs, values_of, path, ylabel, title, skipped, figure_name,
                unit="bytes", guest_lines=False):
    lines = []
    for i, r in enumerate(runs):
        x, y = _series_time(r), values_of(r)
        if x is None or y is None or len(x) != len(y) or not len(y):
            continue
        lines.append((i, r, x, np.asarray(y, dtype=float)))
    if not lines:
        _skip(skipped, workload, figure_name, "no series recorded")
        return None
    if all(_constant([y]) for *_, y in lines) and _constant([y for *_, y in lines]):
        _skip(skipped, workload, figure_name,
              f"constant over the run for every strategy ({lines[0][3][0]:g})")
        return None
    fig = _figure()
    ax = fig.add_subplot()
    tdiv, tunit = time_unit(max(float(x.max()) for _, _, x, _ in lines))
    if unit == "bytes":
        ydiv, yunit = byte_unit(max(float(y.max()) for *_, y in lines))
    else:
        ydiv, yunit = 0.01, "%"
    for i, r, x, y in lines:
        ax.plot(x / tdiv, y / ydiv, color=colour(r["strategy"], i), drawstyle="steps-post",
                linestyle=STYLES.get(r["strategy"], "-."), linewidth=2,
                label=r["strategy"] + emulated_mark(r))
    if guest_lines:
        m = runs[0].get("metrics") or {}
        peak, ratio = (m.get("footprint_bytes") or {}).get("peak"), (m.get("footprint_ratio") or {}).get("peak")
        if peak and ratio:
            guest = peak / ratio
            for k, ls in ((1, ":"), (2, "-.")):
                ax.axhline(k * guest / ydiv, color="0.4", linestyle=ls, linewidth=1,
                           label=f"{k}x guest memory")
    clock = "simulated" if all(r.get("backend") == "sim" for r in runs) else "measured"
    ax.set_xlabel(f"time since the repetition started ({tunit}, {clock}; repetition 0)")
    ax.set_ylabel(f"{ylabel} ({yunit})")
    if unit != "bytes":
        ax.set_ylim(-2, 102)
    else:
        ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=FONT - 2)
    ax.set_title(f"{workload}: {title}\n{fidelity_text(runs)}")
    return _save(fig, path)


def plot_footprint(workload: str, runs: list[dict], path: Path,
                   skipped: list | None = None) -> Path | None:
    return _time_lines(workload, runs, lambda r: (r.get("series") or {}).get("footprint_bytes"),
                       path, "host memory held for the guest", "memory footprint over time",
                       skipped, "footprint", guest_lines=True)


HUGE_SERIES = {
    "stage2": ("guest memory mapped huge in stage 2",
               lambda s, g: None if not s.get("stage2_bytes") or None in s["stage2_bytes"] else
               [(d.get("2m", 0) + d.get("1g", 0)) / g for d in s["stage2_bytes"]]),
    "host-pmd": ("shared memory PMD-mapped by the host, of guest memory",
                 lambda s, g: None if not s.get("host_pmd_mapped_bytes")
                 or None in s["host_pmd_mapped_bytes"] else
                 [x / g for x in s["host_pmd_mapped_bytes"]]),
    "intact-folios": ("physically intact huge folios, of those possible",
                      lambda s, g: None if not s.get("intact_huge_folios")
                      or not s.get("huge_folios_possible")
                      or None in s["intact_huge_folios"] or not all(s["huge_folios_possible"])
                      else [x / p for x, p in zip(s["intact_huge_folios"],
                                                  s["huge_folios_possible"])]),
}


def _guest_size(r: dict) -> float | None:
    m = r.get("metrics") or {}
    peak, ratio = (m.get("footprint_bytes") or {}).get("peak"), (m.get("footprint_ratio") or {}).get("peak")
    return peak / ratio if peak and ratio else None


def plot_huge_pages(workload: str, runs: list[dict], outdir: Path, safe: str,
                    skipped: list | None = None) -> list[Path]:
    """One figure per huge-page measure that changes or differs between strategies."""
    out = []
    no_huge = all(not any((r.get("series") or {}).get("huge_folios_possible") or [0])
                  for r in runs)
    for name, (label, fn) in HUGE_SERIES.items():
        if name == "intact-folios" and no_huge:
            _skip(skipped, workload, f"huge pages: {label}",
                  "not applicable: no huge folio size in this layout")
            continue
        def values(r, fn=fn):
            g = _guest_size(r)
            return fn(r.get("series") or {}, g) if g else None
        p = _time_lines(workload, runs, values, outdir / f"{safe}-huge-{name}.png", label,
                        f"{label} over time", skipped, f"huge pages: {label}", unit="share")
        if p:
            out.append(p)
    return out


def plot_time_accounting(workload: str, runs: list[dict], path: Path,
                         skipped: list | None = None) -> Path | None:
    """Per strategy and direction: conversion time and induced time per repetition,
    stacked, with each repetition's total as a dot (the spread)."""
    bars = []
    for r in runs:
        m = r.get("metrics") or {}
        n = max(1, r.get("repetitions") or 1)
        for d in DIRS:
            dd = (m.get("directions") or {}).get(d) or {}
            if not dd.get("conversions"):
                continue
            reps = [((q.get("directions") or {}).get(d) or {}).get("total_time_ns")
                    for q in r.get("per_rep") or []]
            bars.append((r, d, dd.get("conversion_time_ns", 0) / n,
                         dd.get("induced_time_ns", 0) / n, [x for x in reps if x is not None]))
    if not bars or all(c + i == 0 for _, _, c, i, _ in bars):
        _skip(skipped, workload, "time accounting", "no conversion time recorded")
        return None
    fig = _figure(max(7.0, 1.3 * len(bars) + 3), 5.0)
    ax = fig.add_subplot()
    div, unit = time_unit(max(c + i for _, _, c, i, _ in bars))
    x = np.arange(len(bars))
    conv = np.array([c for _, _, c, _, _ in bars]) / div
    ind = np.array([i for _, _, _, i, _ in bars]) / div
    cols = [colour(r["strategy"], k) for k, (r, *_) in enumerate(bars)]
    ax.bar(x, conv, color=cols, edgecolor="black", label="conversion time")
    ax.bar(x, ind, bottom=conv, color=cols, edgecolor="black", hatch="//", alpha=0.55,
           label="induced time (later accesses, faults, zeroing, firmware)")
    for k, (r, d, c, i, reps) in enumerate(bars):
        if reps:
            ax.plot([k] * len(reps), np.asarray(reps) / div, "k.", markersize=6,
                    label="total of each repetition" if k == 0 else None)
        ax.annotate(fmt_time(c + i), (k, (c + i) / div), ha="center", va="bottom",
                    xytext=(0, 3), textcoords="offset points", fontsize=FONT - 1)
    ax.set_xticks(x, [f"{r['strategy']}{'*' if emulated_mark(r) else ''}\n"
                      f"{d.replace('_', '-')}" for r, d, *_ in bars])
    ax.set_ylabel(f"time per repetition ({unit})")
    ax.set_ylim(0, max(conv + ind) * 1.2)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=FONT - 2)
    em = "; ".join(f"{r['strategy']}{emulated_mark(r)}" for r in runs if emulated_mark(r))
    ax.set_title(f"{workload}: conversion and induced time per direction\n"
                 f"{fidelity_text(runs)}" + (f"\n* {em}" if em else ""))
    return _save(fig, path)


def conversion_time_ns(run: dict, samples: dict) -> float:
    """Total time spent in conversions over all repetitions."""
    m = run.get("metrics") or {}
    if m.get("conversion_time_ns") is not None:
        return float(m["conversion_time_ns"])
    reps = rep_samples(run, samples)
    return float(sum(int(a.sum()) for a in reps))


def copy_share(run: dict, samples: dict) -> float | None:
    total = conversion_time_ns(run, samples)
    if total <= 0:
        return None
    return float((run.get("metrics") or {}).get("copy_time_ns", 0)) / total


def plot_copy_share(workload: str, runs: list[dict], samples: dict, path: Path,
                    skipped: list | None = None) -> Path | None:
    if not any((r.get("metrics") or {}).get("bytes_copied") for r in runs):
        _skip(skipped, workload, "copy share", "no strategy copied anything")
        return None
    shares = [(r, copy_share(r, samples)) for r in runs]
    shares = [(r, s) for r, s in shares if s is not None]
    if not shares:
        _skip(skipped, workload, "copy share", "no conversion time recorded")
        return None
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    names = [r["strategy"] for r, _ in shares]
    vals = [100 * s for _, s in shares]
    bars = ax.bar(names, vals, color=[colour(n, i) for i, n in enumerate(names)],
                  hatch=[HATCHES.get(n, "..") for n in names], edgecolor="black")
    for b, (r, s) in zip(bars, shares):
        copied = (r.get("metrics") or {}).get("bytes_copied", 0)
        cdiv, cunit = byte_unit(copied)
        ax.annotate(f"{100 * s:.1f}%\n{copied / cdiv:.3g} {cunit} copied",
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=FONT - 1)
    ax.set_ylabel("copy time / total conversion time (%)")
    ax.set_ylim(0, max(100.0, max(vals) * 1.25))
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"{workload}: share of conversion time spent copying\n{fidelity_text(runs)}")
    return _save(fig, path)


def plot_summary(results: dict, samples: dict, path: Path,
                 skipped: list | None = None) -> Path | None:
    """Left: dual / in-place of total and conversion time per workload, log scale, whiskers
    = 25th-75th percentile and dots = min/max of the ratios of every pair of repetitions.
    Right: the absolute total time per repetition of each strategy.  Below: per workload
    the verdict per direction and the primitives behind the difference."""
    from bench.report.headline import (DIR_LABEL, per_rep_time, winner_text,
                                       workload_headlines, fmt_x)
    heads = [h for h in workload_headlines(results) if h["ratios"]]
    if not heads:
        _skip(skipped, "(all)", "summary", "no workload ran under both strategies")
        return None
    all_runs = [r for h in heads for r in h["runs"].values()]
    n = len(heads)
    fig = _figure(13.0, 5.3 + 0.36 * n)
    gs = fig.add_gridspec(2, 2, height_ratios=[4.4, 0.36 * n + 0.1], width_ratios=[1.15, 1])
    ax, ax2, axt = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, :])
    y = np.arange(n)[::-1]
    names = [h["workload"] + ("*" if any(emulated_mark(r) for r in h["runs"].values()) else "")
             for h in heads]
    series = (("all", "total", "total time (conversion + induced)", "#CC79A7", ""),
              ("all", "conversion", "conversion time only", "#009E73", "//"))
    hgt = 0.38
    lo_all, hi_all = [], []
    for j, (d, part, label, col, hatch) in enumerate(series):
        mid = np.array([h["ratios"][(d, part)][0] for h in heads])
        q1 = np.array([h["ratios"][(d, part)][1] for h in heads])
        q3 = np.array([h["ratios"][(d, part)][2] for h in heads])
        pos = y + (0.5 - j) * hgt
        # bars grow from 1 (no difference): right = in-place faster, left = dual faster
        ax.barh(pos, mid - 1, hgt, left=1, color=col, hatch=hatch, edgecolor="black",
                label=label, alpha=0.85)
        err = np.vstack([np.clip(mid - q1, 0, None), np.clip(q3 - mid, 0, None)])
        ax.errorbar(mid, pos, xerr=err, fmt="none", ecolor="black", capsize=3)
        for k, h in enumerate(heads):
            du, ip = h["runs"]["dual"], h["runs"]["in-place"]
            a = np.array([v for v in per_rep_time(du, d, part) if v is not None], float)
            b = np.array([v for v in per_rep_time(ip, d, part) if v], float)
            right = max(mid[k], q3[k]) if np.isfinite(q3[k]) else mid[k]
            if len(a) and len(b):
                rr = (a[:, None] / b[None, :]).ravel()
                ax.plot([rr.min(), rr.max()], [pos[k]] * 2, "k|", markersize=8)
                right = max(right, float(rr.max()))
            if np.isfinite(mid[k]):
                # the label right of the bar, the whisker and the ticks, never on them
                ax.annotate(fmt_x(mid[k]), (max(right, 1.0), pos[k]), xytext=(5, 0),
                            textcoords="offset points", va="center", fontsize=FONT - 2)
                hi_all.append(right)
                lo_all.append(mid[k])
                hi_all.append(mid[k])
    ax.set_xscale("log")
    if lo_all:
        ax.set_xlim(min(0.5, min(lo_all) / 2), max(2.0, max(hi_all) * 4))
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    # ratio ticks as plain numbers ("0.5x"), only where they do not crowd each other
    lo, hi = ax.get_xlim()
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if lo <= t <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda val, _: f"{val:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(y, names)
    ax.set_xlabel("dual / in-place (log scale; > 1: in-place faster)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=FONT - 2)
    ax.set_title("ratio; whiskers: IQR, ticks: min/max of per-repetition ratios", fontsize=FONT)
    # absolute values beside the ratios
    tot = []
    for k, h in enumerate(heads):
        for j, s in enumerate(("in-place", "dual")):
            v = [x for x in per_rep_time(h["runs"][s], "all", "total") if x is not None]
            tot.append((k, j, s, float(np.median(v)) if v else np.nan, v))
    top = np.nanmax([t[3] for t in tot]) if tot else 1.0
    div, unit = time_unit(top if np.isfinite(top) else 1.0)
    for k, j, s, med, v in tot:
        pos = y[k] + (0.5 - j) * hgt
        ax2.barh(pos, med / div, hgt, color=colour(s), hatch=HATCHES.get(s, ""),
                 edgecolor="black", label=s if k == 0 else None)
        if v:
            ax2.plot(np.asarray(v) / div, [pos] * len(v), "k.", markersize=5)
        if np.isfinite(med):
            right = max([med] + [float(x) for x in v]) / div
            ax2.annotate(fmt_time(med), (right, pos), xytext=(5, 0), textcoords="offset points",
                         va="center", fontsize=FONT - 2)
    ax2.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax2.xaxis.set_major_formatter(FuncFormatter(lambda val, _: f"{val:g}"))
    ax2.xaxis.set_minor_formatter(NullFormatter())
    vals = [t[3] / div for t in tot if np.isfinite(t[3]) and t[3] > 0]
    if vals:
        ax2.set_xlim(min(vals) / 3, max(vals) * 6)
    ax2.set_yticks(y, names)
    ax2.set_xlabel(f"total time per repetition ({unit}, log scale; dots: repetitions)")
    ax2.grid(True, axis="x", which="both", alpha=0.3)
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=FONT - 2)
    ax2.set_title("absolute: conversion + induced time", fontsize=FONT)
    # the verdicts in words
    axt.axis("off")
    rows = []
    for h in heads:
        rt = h["ratios"]
        per_dir = ", ".join(f"{DIR_LABEL[d]} {fmt_x(rt[(d, 'total')][0])}"
                            for d in ("to_shared", "to_private"))
        why = ", ".join(f"{k} {'+' if v > 0 else '-'}{fmt_time(abs(v))}" for k, v in h["top"])
        rows.append(f"{h['workload']}: total time {winner_text(rt[('all', 'total')][0])} "
                    f"({per_dir}); conversion only {winner_text(rt[('all', 'conversion')][0])}"
                    f"{h['caveat']}")
        rows.append(f"    why (dual - in-place per run): {why}")
    axt.text(0, 1, "\n".join(rows), va="top", ha="left", fontsize=FONT - 2.5,
             family="monospace", transform=axt.transAxes)
    em = sorted({f"{r['strategy']}{emulated_mark(r)}" for r in all_runs if emulated_mark(r)})
    import textwrap
    em_text = textwrap.fill("* " + "; ".join(em), 150) if em else ""
    fig.suptitle("dual backing relative to in-place conversion, per workload\n"
                 f"{fidelity_text(all_runs)}" + (f"\n{em_text}" if em else ""),
                 fontsize=FONT + 1)
    return _save(fig, path)


def _plot_job(fn, *args):
    """Run one plot function with its own skip list: (what it wrote, what it skipped).
    Jobs may run in another process, so skips travel back in the return value."""
    skipped: list = []
    return fn(*args, skipped=skipped), skipped


def figure_jobs(results: dict, samples: dict, outdir) -> list[tuple]:
    """Every figure as an independent job (workload or None for the summary, job function,
    its arguments); a job returns (path, list of paths or None; skipped figures).
    write_plots runs them in order; the report (bench/report/report.py) renders them in
    parallel."""
    outdir = Path(outdir)
    jobs = [(None, _plot_job, (plot_summary, results, samples, outdir / "summary.png"))]
    for w, runs in runs_by_workload(results).items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in w)
        jobs += [(w, _plot_job, (plot_time_accounting, w, runs, outdir / f"{safe}-time.png")),
                 (w, _plot_job, (plot_latency_cdf, w, runs, samples,
                                 outdir / f"{safe}-latency-cdf.png")),
                 (w, _plot_job, (plot_footprint, w, runs, outdir / f"{safe}-footprint.png")),
                 (w, _plot_job, (plot_huge_pages, w, runs, outdir, safe)),
                 (w, _plot_job, (plot_copy_share, w, runs, samples,
                                 outdir / f"{safe}-copy-share.png"))]
    return jobs


def collect_figures(jobs: list[tuple], outputs: list, skipped: list | None = None
                    ) -> tuple[Path | None, dict[str, list[Path]]]:
    """(summary figure or None, {workload: [paths written]}) from figure_jobs' jobs and
    what each returned, in the same order; skipped figures are appended to `skipped`."""
    summary, written = None, {}
    for (workload, _, _), out in zip(jobs, outputs):
        path, sk = out if isinstance(out, tuple) else (out, [])
        if skipped is not None:
            skipped.extend(sk)
        if workload is None:
            summary = path
            continue
        written.setdefault(workload, [])
        for p in (path if isinstance(path, list) else [path]):
            if p:
                written[workload].append(p)
    return summary, written


def write_plots(results: dict, samples: dict, outdir,
                skipped: list | None = None) -> tuple[Path | None, dict[str, list[Path]]]:
    """All figures into outdir, in this process; returns (summary figure or None,
    {workload: [paths]}).  Figures not drawn are appended to `skipped` as {"workload",
    "figure", "why"}."""
    Path(outdir).mkdir(parents=True, exist_ok=True)
    jobs = figure_jobs(results, samples, outdir)
    return collect_figures(jobs, [fn(*args) for _, fn, args in jobs], skipped)
