"""Per-direction latency statistics (results.json "directions", samples.npz direction
arrays), checked on hand-built op/step/result streams whose answers are known."""
import numpy as np
import pytest

from bench.metrics import DIRECTIONS, RepetitionRecord, aggregate
from bench.ops import (OpKind, RESULT_DTYPE, SKIPPED, STEP_CONVERSION, Step, empty_ops,
                       empty_steps)


def stream(convs):
    """convs: list of (kind, [(step code, ns, status), ...]) -> ops, steps, res.  A WRITE
    touch op is put between conversions so that non-conversion steps are in the stream."""
    kinds, step_rows = [], []
    for kind, steps in convs:
        kinds.append(kind)
        step_rows.append([(code, ns, st, True) for code, ns, st in steps])
        kinds.append(OpKind.SHARED_WRITE)
        step_rows.append([(Step.WRITE, 999_999, 0, False)])
    ops = empty_ops(len(kinds))
    ops["kind"] = kinds
    ops["size"] = 4096
    flat = [(i, *s) for i, rows in enumerate(step_rows) for s in rows]
    steps = empty_steps(len(flat))
    res = np.zeros(len(flat), dtype=RESULT_DTYPE)
    for j, (op, code, ns, st, conv) in enumerate(flat):
        steps[j]["op"] = op
        steps[j]["code"] = code
        steps[j]["size"] = 4096
        steps[j]["flags"] = STEP_CONVERSION if conv else 0
        res[j]["ns"] = ns
        res[j]["status"] = st
    return ops, steps, res


S, P = OpKind.TO_SHARED, OpKind.TO_PRIVATE
G = Step.GMEM_SET_ATTRS


def test_each_direction_gets_its_own_latencies_counts_and_failures():
    # to_shared: 100, 300 (two steps 100+200), 500; to_private: 1000, 3000, and one failure
    ops, steps, res = stream([
        (S, [(G, 100, 0)]),
        (P, [(G, 1000, 0)]),
        (S, [(G, 100, 0), (Step.GMEM_PUNCH, 200, 0)]),
        (P, [(G, 50, 16), (Step.GMEM_PUNCH, 0, SKIPPED)]),   # EBUSY: failed
        (P, [(G, 3000, 0)]),
        (S, [(G, 500, 0)]),
    ])
    rec = RepetitionRecord(ops, steps, res)
    assert rec.latency_ns.tolist() == [100, 1000, 300, 3000, 500]
    assert rec.direction.tolist() == [S, P, S, P, S]
    assert rec.direction.dtype == np.uint8
    d = rec.summary()["directions"]
    assert set(d) == {"to_shared", "to_private"}
    assert d["to_shared"]["conversions"] == 3 and d["to_shared"]["failed_conversions"] == 0
    assert d["to_private"]["conversions"] == 3 and d["to_private"]["failed_conversions"] == 1
    ls, lp = d["to_shared"]["latency_ns"], d["to_private"]["latency_ns"]
    assert (ls["min"], ls["p50"], ls["max"], ls["mean"]) == (100, 300, 500, 300)
    assert ls["stdev"] == pytest.approx(np.std([100, 300, 500]))
    assert (lp["min"], lp["p50"], lp["max"], lp["mean"]) == (1000, 2000, 3000, 2000)
    assert lp["p90"] == pytest.approx(2800) and lp["p99"] == pytest.approx(2980)
    # the touch steps (999999 ns) are in neither direction
    assert ls["max"] < 999_999 and lp["max"] < 999_999


def test_a_direction_without_successful_conversions_has_null_latencies():
    ops, steps, res = stream([(S, [(G, 100, 0)]), (P, [(G, 7, 22)])])
    d = RepetitionRecord(ops, steps, res).summary()["directions"]
    assert d["to_private"]["conversions"] == 1 and d["to_private"]["failed_conversions"] == 1
    assert all(v is None for v in d["to_private"]["latency_ns"].values())
    assert d["to_shared"]["latency_ns"]["p50"] == 100


def test_aggregate_pools_directions_over_repetitions_and_totals_agree():
    r1 = RepetitionRecord(*stream([(S, [(G, 10, 0)]), (P, [(G, 40, 0)])]))
    r2 = RepetitionRecord(*stream([(S, [(G, 30, 0)]), (P, [(G, 60, 0)]), (P, [(G, 1, 5)])]))
    series = {"footprint_bytes": [1, 2], "hugepage_coverage": [0.0, 0.0],
              "huge_splits": [0, 0], "huge_merges": [0, 0]}
    m = aggregate([r1, r2], [series, series], [{"nr_free": [0] * 19}] * 2, 1 << 20)
    d = m["directions"]
    assert d["to_shared"]["latency_ns"]["p50"] == 20 and d["to_shared"]["conversions"] == 2
    assert d["to_private"]["latency_ns"]["min"] == 40 and d["to_private"]["latency_ns"]["max"] == 60
    assert d["to_private"]["conversions"] == 3 and d["to_private"]["failed_conversions"] == 1
    assert sum(v["conversions"] for v in d.values()) == m["conversions"]
    assert sum(v["failed_conversions"] for v in d.values()) == m["failed_conversions"]
    assert DIRECTIONS == {"to_shared": OpKind.TO_SHARED, "to_private": OpKind.TO_PRIVATE}


def test_a_run_writes_direction_arrays_aligned_with_the_latencies(tmp_path):
    """Through `gmembench run`: samples.npz holds a direction per latency, and the per-rep
    and run statistics in results.json are exactly those of the samples split by it."""
    from bench.cli import main
    from bench.results import load_results, load_samples
    wl = tmp_path / "tiny.toml"
    wl.write_text("""
[workload]
description = "tiny"
repetitions = 2
seed = 3
[layout]
gmem_page_size = "2m"
shared_backing = "memfd"
shared_page = "thp"
platform = "preserve"
[[layout.memslot]]
gpa = 0
size = "64M"
[[phase]]
name = "churn"
generator = "mixed"
requests = 300
""")
    out = tmp_path / "r"
    assert main(["run", "--no-progress", "--no-report", "-w", str(wl), "--out", str(out)]) == 0
    doc = load_results(out)
    samples = load_samples(doc)
    for run in doc["runs"]:
        pooled = {d: [] for d in DIRECTIONS}
        for i, rep in enumerate(run["per_rep"]):
            lat = samples[f"{run['key']}/rep{i}"]
            dirs = samples[f"{run['key']}/rep{i}/direction"]
            assert dirs.dtype == np.uint8 and len(dirs) == len(lat)
            assert set(np.unique(dirs)) <= {1, 2}
            for d, kind in DIRECTIONS.items():
                part = lat[dirs == kind]
                pooled[d].append(part)
                st = rep["directions"][d]
                assert st["conversions"] - st["failed_conversions"] == len(part)
                if len(part):
                    assert st["latency_ns"]["p50"] == pytest.approx(float(np.median(part)))
                    assert st["latency_ns"]["min"] == part.min()
        for d in DIRECTIONS:
            allv = np.concatenate(pooled[d])
            assert len(allv) > 0
            got = run["metrics"]["directions"][d]["latency_ns"]
            assert got["p99"] == pytest.approx(float(np.percentile(allv, 99)))
            assert got["max"] == allv.max()
