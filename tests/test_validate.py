"""gmembench validate: the comparison logic on synthetic result pairs, bad input, and one
small real run on this host (skipped without root or /dev/kvm)."""
import json
import os
import textwrap
from importlib import resources

import pytest

from bench.cli import main
from bench.workload import workload_dirs
from bench.validate import (FAIL, INFO, MISSING, NONDET, PASS, compare_exact, compare_relative,
                            compare_runs, disagreement, table)

# the installed package's own files, whatever the working directory
PROFILE = str(resources.files("bench") / "profiles" / "default.toml")
VALIDATE_WL = str(next(d / "validate" / "dma-churn-4k.toml" for d in workload_dirs()
                       if (d / "validate" / "dma-churn-4k.toml").is_file()))

M = 1 << 20


def run_doc(runs):
    return {"runs": runs}


def run(workload="w", strategy="dual", p50=1000.0, fp=8 * M, splits=0, merges=0, copied=0,
        shared_page="4k", backing="anon", scale=1):
    return {
        "key": f"{workload}/{strategy}", "workload": workload, "strategy": strategy,
        "layout": {"shared_page": shared_page, "shared_backing": backing},
        "scale": scale, "repetitions": 1,
        "metrics": {"latency_ns": {"p50": p50}, "footprint_bytes": {"peak": fp},
                    "huge_splits": splits, "huge_merges": merges, "bytes_copied": copied},
    }


def by_metric(rows):
    return {(r.workload, r.strategy, r.metric): r for r in rows}


def test_relative_tolerance_is_relative_to_the_host():
    assert disagreement(1000, 1250) == pytest.approx(0.25)
    assert compare_relative("w", "s", "m", 1000, 1250).verdict == PASS    # edge: 25% is in
    assert compare_relative("w", "s", "m", 1000, 751).verdict == PASS
    r = compare_relative("w", "s", "m", 1000, 1260)
    assert r.verdict == FAIL and r.disagreement == pytest.approx(0.26)
    assert compare_relative("w", "s", "m", 1000, 740).verdict == FAIL
    assert compare_relative("w", "s", "m", None, 740).verdict == MISSING
    assert compare_relative("w", "s", "m", 1000, 5000, decides=False).verdict == INFO


def test_exact_counts_and_nondeterministic_label():
    assert compare_exact("w", "s", "m", 32, 32).verdict == PASS
    r = compare_exact("w", "s", "m", 33, 32)
    assert r.verdict == FAIL and r.disagreement == pytest.approx(-1 / 33)
    r = compare_exact("w", "s", "m", 100, 32, nondeterministic="khugepaged")
    assert r.verdict == NONDET and r.reason == "khugepaged" and not r.decides
    assert compare_exact("w", "s", "m", 0, 0).disagreement == 0.0
    assert compare_exact("w", "s", "m", 0, 5).disagreement is None      # no relative figure


def test_compare_runs_within_and_outside_tolerance():
    host = run_doc([run(strategy="in-place", p50=2000), run(strategy="dual", p50=4000, copied=8192)])
    sim = run_doc([run(strategy="in-place", p50=2300), run(strategy="dual", p50=2000, copied=4096)])
    rows = by_metric(compare_runs(host, sim))
    assert rows[("w", "in-place", "median conversion latency (ns)")].verdict == PASS
    lat = rows[("w", "dual", "median conversion latency (ns)")]
    assert lat.verdict == FAIL and lat.disagreement == pytest.approx(-0.5)
    assert rows[("w", "dual", "bytes copied")].verdict == FAIL
    assert rows[("w", "in-place", "bytes copied")].verdict == PASS
    assert rows[("w", "dual", "footprint peak (bytes)")].verdict == PASS
    text = table(list(rows.values()))
    assert "MISS" in text and "-50.0%" in text


def test_compare_runs_labels_what_the_host_cannot_reproduce():
    host = run_doc([run(shared_page="thp", splits=100, merges=3, fp=63 * M),
                    run(workload="s", scale=8, fp=8 * M, splits=1)])
    sim = run_doc([run(shared_page="thp", splits=32, merges=0, fp=64 * M),
                   run(workload="s", fp=9 * M, splits=2)])
    rows = by_metric(compare_runs(host, sim))
    # anon THP: merges come from khugepaged, footprint from the deferred split
    assert rows[("w", "dual", "huge merges")].verdict == NONDET
    assert "khugepaged" in rows[("w", "dual", "huge merges")].reason
    assert rows[("w", "dual", "footprint peak (bytes)")].verdict == NONDET
    # system-wide THP counters: other processes' splits land in the host's count
    assert rows[("w", "dual", "huge splits")].verdict == NONDET
    assert "system-wide" in rows[("w", "dual", "huge splits")].reason
    # a scaled-down host run cannot match counts of the full-size simulation
    for m in ("footprint peak (bytes)", "huge splits"):
        r = rows[("s", "dual", m)]
        assert r.verdict == NONDET and "scaled down by 8" in r.reason


def test_a_key_missing_on_the_simulator_is_a_miss():
    rows = compare_runs(run_doc([run()]), run_doc([]))
    assert [r.verdict for r in rows] == [MISSING]


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["validate", "--profile", str(tmp_path / "nope.toml"), "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 2
    assert "cannot read cost profile" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep").write_text("x")
    assert main(["validate", "--profile", PROFILE, "--out", str(busy),
                 "--no-progress", "-w", VALIDATE_WL]) == 2
    assert (busy / "keep").exists()
    assert main(["validate", "-r", "0", "--out", str(tmp_path / "o2")]) == 2


SMALL = textwrap.dedent("""
    # a tiny pKVM-style share with copies: every metric row of both strategies
    [workload]
    description = "test: small shares with copies"
    repetitions = 1
    seed = 5
    [layout]
    shared_backing = "memfd"
    platform = "preserve"
    [[layout.memslot]]
    gpa = 0
    size = "16M"
    [strategy.dual]
    copy = true
    [[phase]]
    generator = "pkvm-share"
    buffers = 100
    sizes = ["4K", "16K"]
""")


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/kvm"),
                    reason="the host backend needs root and /dev/kvm")
def test_end_to_end_on_this_host(tmp_path, capsys):
    wl = tmp_path / "small.toml"
    wl.write_text(SMALL)
    out = tmp_path / "val"
    code = main(["validate", "--profile", PROFILE, "-w", str(wl),
                 "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    doc = json.loads((out / "validation.json").read_text())
    assert code == (0 if doc["within_tolerance"] else 1)
    rows = {(r["strategy"], r["metric"]): r for r in doc["rows"]}
    for s in ("in-place", "dual"):
        lat = rows[(s, "median conversion latency (ns)")]
        assert lat["host"] > 0 and lat["sim"] > 0 and lat["tolerance"] == "25%"
        for d in ("to-shared", "to-private"):       # each direction decides
            assert rows[(s, f"  median {d} (ns)")]["decides"]
        assert doc["within_tolerance"] == all(r["verdict"] == PASS for r in doc["rows"]
                                              if r["decides"])
        # both backends replayed the same ops: what is counted, not timed, is equal
        assert rows[(s, "footprint peak (bytes)")]["verdict"] == PASS
        assert rows[(s, "huge splits")]["verdict"] == PASS
    copied = rows[("dual", "bytes copied")]
    assert copied["verdict"] == PASS and copied["host"] > 0
    assert rows[("in-place", "bytes copied")]["host"] == 0
    assert (out / "host" / "results.json").exists() and (out / "sim" / "results.json").exists()
    assert "median conversion latency" in printed and "validation.json" in printed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]     # atomic, no temp left


def test_direction_medians_decide_when_the_streams_give_them(tmp_path):
    """Half the conversions go each way: the pooled median sits between the two clusters
    (here it moves by 2x with the host's tail) while each direction agrees within 10%."""
    import numpy as np
    from bench.ops import OpKind
    from bench.runner import build_ops
    from bench.workload import load_workload
    f = tmp_path / "w.toml"
    f.write_text(SMALL)
    wl = load_workload(str(f))
    ops, _ = build_ops(wl, 0)
    kinds = ops["kind"][np.isin(ops["kind"], (OpKind.TO_SHARED, OpKind.TO_PRIVATE))]
    to_shared = kinds == OpKind.TO_SHARED
    host_lat = np.where(to_shared, 300, 2000).astype(np.int64)
    host_lat[np.flatnonzero(to_shared)[:3]] = 1800            # a noise tail of the cheap side
    sim_lat = np.where(to_shared, 280, 2100).astype(np.int64)
    h = run(workload=wl.name, p50=float(np.median(host_lat)))
    s = run(workload=wl.name, p50=float(np.median(sim_lat)))
    rows = by_metric(compare_runs(run_doc([h]), run_doc([s]),
                                  {f"{wl.name}/dual/rep0": host_lat},
                                  {f"{wl.name}/dual/rep0": sim_lat}, {wl.name: wl}))
    pooled = rows[(wl.name, "dual", "median conversion latency (ns)")]
    assert pooled.verdict == INFO and abs(pooled.disagreement) > 0.25
    assert rows[(wl.name, "dual", "  median to-shared (ns)")].verdict == PASS
    assert rows[(wl.name, "dual", "  median to-private (ns)")].verdict == PASS
    # a direction outside the tolerance decides the verdict
    sim_lat[~to_shared] = 3000
    rows = by_metric(compare_runs(run_doc([h]), run_doc([s]),
                                  {f"{wl.name}/dual/rep0": host_lat},
                                  {f"{wl.name}/dual/rep0": sim_lat}, {wl.name: wl}))
    assert rows[(wl.name, "dual", "  median to-private (ns)")].verdict == FAIL
