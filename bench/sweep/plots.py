"""Sweep figures (matplotlib, Agg): the dual / in-place ratio against one axis with its
spread over repetitions and crossovers marked, a heat map over two axes, and the tornado
chart of the headline ratio's sensitivity.  Every title names the ratio's unit, the backend
and the fidelity."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.sweep.analysis import A, B, CONCLUSIONS, HEADLINE

PLOTTED = ("total time", "conversion time", "peak footprint", "intact huge folios at end")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _title(result, what: str) -> str:
    fid = "/".join(result.get("fidelity") or ["?"])
    return f"{what}\nbackend {result.get('backend')}, {fid}"


def _results(result, idx):
    return result["points"][idx]["results"]


def write_plots(plan, result: dict, out: Path) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = []
    if plan.sensitivity:
        figs += [f for f in (_tornado(plan, result, out), _oat(plan, result, out)) if f]
        return figs
    axes = plan.spec.axes
    for a in axes:
        f = _ratio_vs_axis(plan, result, a, out)
        if f:
            figs.append(f)
    if plan.spec.mode == "grid" and len(axes) >= 2:
        f = _heatmap(plan, result, axes[0], axes[1], out)
        if f:
            figs.append(f)
    return figs


def _others_at_baseline(plan, p, axis) -> bool:
    from bench.sweep.plan import column_values
    for a in plan.spec.axes:
        if a.name != axis.name and p.columns.get(a.name) != column_values(a)[a.baseline_index]:
            return False
    return True


def _ratio_vs_axis(plan, result, axis, out: Path) -> Path | None:
    from bench.sweep.plan import column_values
    plt = _plt()
    order = column_values(axis)
    if len(order) < 2:
        return None
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in order)
    xs_all = np.array(order, dtype=float) if numeric else np.arange(len(order), dtype=float)
    names = [n for n in PLOTTED if any(n == c[0] for c in CONCLUSIONS)]
    fig, axs = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    drew = False
    for ax, name in zip(axs[0], names):
        for wname in plan.spec.workloads:
            pts = [p for p in plan.points if p.workload == wname and _others_at_baseline(plan, p, axis)]
            rows = []
            for p in pts:
                r = _results(result, p.index).get(name)
                if r and r["ratio"] is not None and p.columns.get(axis.name) in order:
                    rows.append((order.index(p.columns[axis.name]), r))
            if len(rows) < 2:
                continue
            rows.sort(key=lambda t: t[0])
            x = xs_all[[i for i, _ in rows]]
            y = np.array([r["ratio"] for _, r in rows])
            lo = np.array([r["lo"] if r["lo"] is not None else r["ratio"] for _, r in rows])
            hi = np.array([r["hi"] if r["hi"] is not None else r["ratio"] for _, r in rows])
            line, = ax.plot(x, y, "o-", label=wname)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
            for i in range(len(y) - 1):
                if (y[i] - 1) * (y[i + 1] - 1) < 0:
                    t = (1 - y[i]) / (y[i + 1] - y[i])
                    xc = x[i] + t * (x[i + 1] - x[i])
                    ax.axvline(xc, color=line.get_color(), ls=":", lw=1)
                    ax.annotate("crossover", (xc, 1), fontsize=7, rotation=90, va="bottom")
            drew = True
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(axis.name)
        ax.set_ylabel(f"{B} / {A} (ratio of medians)")
        if numeric and max(xs_all) / max(min(xs_all), 1e-12) > 50 and min(xs_all) > 0:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(xs_all, axis.labels, fontsize=7, rotation=20)
        if any(n > 20 for n in [abs(v) for v in ax.get_ylim()]):
            ax.set_yscale("log")
    if not drew:
        plt.close(fig)
        return None
    axs[0][0].legend(fontsize=7)
    fig.suptitle(_title(result, f"{plan.spec.name}: {B}/{A} vs {axis.name} (>1: {A} better on "
                 f"time/footprint; band: min..max over paired repetitions)"), fontsize=9)
    fig.tight_layout()
    path = out / f"ratio_vs_{_safe(axis.name)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _heatmap(plan, result, ax_x, ax_y, out: Path) -> Path | None:
    from bench.sweep.plan import column_values
    plt = _plt()
    xs = column_values(ax_x)
    ys = column_values(ax_y)
    wl = plan.spec.workloads
    fig, axs = plt.subplots(1, len(wl), figsize=(4.6 * len(wl), 3.8), squeeze=False)
    drew = False
    for ax, wname in zip(axs[0], wl):
        grid = np.full((len(ys), len(xs)), np.nan)
        for p in plan.points:
            if p.workload != wname:
                continue
            others_ok = all(p.columns.get(a.name) == column_values(a)[a.baseline_index]
                            for a in plan.spec.axes if a.name not in (ax_x.name, ax_y.name))
            r = _results(result, p.index).get(HEADLINE)
            if others_ok and r and r["ratio"] is not None:
                grid[ys.index(p.columns[ax_y.name]), xs.index(p.columns[ax_x.name])] = r["ratio"]
        if np.isnan(grid).all():
            continue
        lg = np.log2(grid)
        lim = max(np.nanmax(np.abs(lg)), 0.1)
        im = ax.imshow(lg, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower", aspect="auto")
        for i in range(len(ys)):
            for j in range(len(xs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(xs)), ax_x.labels, fontsize=7, rotation=20)
        ax.set_yticks(range(len(ys)), ax_y.labels, fontsize=7)
        ax.set_xlabel(ax_x.name)
        ax.set_ylabel(ax_y.name)
        ax.set_title(wname, fontsize=9)
        fig.colorbar(im, ax=ax, label=f"log2({B}/{A})")
        drew = True
    if not drew:
        plt.close(fig)
        return None
    fig.suptitle(_title(result, f"{plan.spec.name}: {HEADLINE}, {B}/{A} (ns/ns; red: {A} faster)"),
                 fontsize=9)
    fig.tight_layout()
    path = out / f"heatmap_{_safe(ax_x.name)}_{_safe(ax_y.name)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tornado(plan, result, out: Path) -> Path | None:
    plt = _plt()
    s = result.get("sensitivity") or {}
    ts = [t for t in s.get("tornado", []) if t["bars"]]
    if not ts:
        return None
    fig, axs = plt.subplots(1, len(ts), figsize=(5.5 * len(ts), 0.5 * max(len(t["bars"]) for t in ts) + 1.8),
                            squeeze=False)
    for ax, t in zip(axs[0], ts):
        bars = list(reversed(t["bars"]))
        base = t["baseline_ratio"] or 1.0
        for i, b in enumerate(bars):
            lo, hi = b["ratio_low"], b["ratio_high"]
            if lo is None or hi is None:
                continue
            ax.barh(i, hi - base, left=base, color="tab:red", alpha=0.7)
            ax.barh(i, lo - base, left=base, color="tab:blue", alpha=0.7)
        ax.set_yticks(range(len(bars)), [b["parameter"] for b in bars], fontsize=7)
        ax.axvline(base, color="k", lw=0.8)
        ax.axvline(1.0, color="grey", ls=":", lw=0.8)
        ax.set_xlabel(f"{HEADLINE}: {B}/{A} (ns/ns)\nblue: cost at low end, red: at high end")
        ax.set_title(t["workload"], fontsize=9)
    fig.suptitle(_title(result, f"{plan.spec.name}: sensitivity of the {HEADLINE} ratio to each "
                 f"uncertain cost (one at a time)"), fontsize=9)
    fig.tight_layout()
    path = out / "tornado.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _oat(plan, result, out: Path) -> Path | None:
    """The headline and conversion-time ratios against each uncertain cost (one at a time),
    crossovers of 1 marked: where a conclusion flips inside the documented range."""
    plt = _plt()
    names = list(plan.uncertain)
    if not names:
        return None
    fig, axs = plt.subplots(len(names), 2, figsize=(8.4, 2.2 * len(names)), squeeze=False)
    for row, k in zip(axs, names):
        for ax, concl in zip(row, (HEADLINE, "conversion time")):
            for wname in plan.spec.workloads:
                pts = [p for p in plan.points if p.workload == wname and p.kind == "oat" and p.varied == k]
                xy = []
                for p in pts:
                    x = p.columns.get(f"cost.{k}", p.columns.get(f"cost.{k}.4k"))
                    r = _results(result, p.index).get(concl)
                    if r and r["ratio"] is not None and x is not None:
                        xy.append((x, r["ratio"]))
                if len(xy) < 2:
                    continue
                xy.sort()
                x, y = np.array(xy).T
                line, = ax.plot(x, y, "o-", label=wname, ms=3)
                for i in range(len(y) - 1):
                    if (y[i] - 1) * (y[i + 1] - 1) < 0:
                        xc = x[i] + (1 - y[i]) / (y[i + 1] - y[i]) * (x[i + 1] - x[i])
                        ax.axvline(xc, color=line.get_color(), ls=":", lw=1)
                        ax.annotate(f"{xc:.3g}", (xc, 1), fontsize=6)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xlabel(f"{k} (ns" + (", 4K figure)" if any(c == f"cost.{k}.4k" for c in plan.columns) else ")"),
                          fontsize=7)
            ax.set_ylabel(f"{concl}\n{B}/{A}", fontsize=7)
            ax.tick_params(labelsize=6)
    axs[0][0].legend(fontsize=6)
    fig.suptitle(_title(result, f"{plan.spec.name}: ratios against each uncertain cost, one at a "
                 f"time (dotted: crossover, interpolated)"), fontsize=9)
    fig.tight_layout()
    path = out / "one_at_a_time.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)
