"""Per-row gate thresholds learned from identical runs (`gmembench thresholds`) and their use
by `gmembench compare --thresholds`, on synthetic runs whose run-to-run drift is planted."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_results import make_results_dir  # noqa: E402

from bench.cli import main  # noqa: E402
from bench.compare import DEFAULT_THRESHOLDS  # noqa: E402

NOISY = "bounce/in-place"       # the row whose whole runs drift
# whole-run multipliers of NOISY's latencies in the identical "calibration" runs
DRIFT = (1.00, 1.12, 0.90, 1.08, 0.94, 1.03)
KW = dict(reps=8, directions=True, rep_sigma=0.005, sample_sigma=0.01)
M = "to_shared.latency_min,to_private.latency_min"


def calibration_runs(tmp_path, drift=DRIFT):
    return [make_results_dir(tmp_path / f"c{i}", seed=10 + i, latency_factor={NOISY: f}, **KW)
            for i, f in enumerate(drift)]


def learn(tmp_path, runs, *extra) -> tuple[int, Path]:
    out = tmp_path / "th.json"
    status = main(["thresholds", *map(str, runs), "--out", str(out), "--metrics", M, *extra])
    return status, out


def test_learned_threshold_follows_the_formula_and_raises_only_the_drifting_row(tmp_path, capsys):
    status, out = learn(tmp_path, calibration_runs(tmp_path))
    assert status == 0
    doc = json.loads(out.read_text())
    noisy = doc["rows"][NOISY]["to_shared.latency_min"]
    # recompute from the per-run values the file records, independently of the module
    logs = np.log(noisy["values"])
    m = doc["rows_varying"]
    q = student_t.ppf(1 - 0.05 / m, len(logs) - 1)
    assert noisy["threshold"] == pytest.approx(math.expm1(q * np.std(logs, ddof=1) * math.sqrt(2)))
    assert noisy["threshold"] > 0.3          # drift of ~8% over 6 runs needs a wide band
    # the per-run values really are the planted drift (median of each run's minima)
    ratios = np.array(noisy["values"]) / noisy["values"][0]
    assert ratios == pytest.approx(np.array(DRIFT) / DRIFT[0], rel=0.03)
    stable = doc["rows"]["virtio/dual"]["to_private.latency_min"]
    assert stable["threshold"] < DEFAULT_THRESHOLDS["to_private.latency_min"]
    text = capsys.readouterr().out
    assert "(raised)" in text and "wrote" in text


def test_compare_with_learned_thresholds_passes_drift_and_still_catches_a_regression(tmp_path, capsys):
    runs = calibration_runs(tmp_path)
    assert learn(tmp_path, runs)[0] == 0
    th = tmp_path / "th.json"
    base = make_results_dir(tmp_path / "base", seed=40, latency_factor={NOISY: 1.0}, **KW)
    # identical code whose run landed 15% slower on the drifting row only
    drifted = make_results_dir(tmp_path / "drift", seed=41, latency_factor={NOISY: 1.15}, **KW)
    assert main(["compare", str(base), str(drifted), "--metrics", M]) == 1   # configured 5%
    capsys.readouterr()
    assert main(["compare", str(base), str(drifted), "--metrics", M, "--thresholds", str(th)]) == 0
    out = capsys.readouterr().out
    assert "raised on" in out and "L " in out
    # a real 10% slowdown of a stable row is still a regression with the file
    slow = make_results_dir(tmp_path / "slow", seed=42,
                            latency_factor={NOISY: 1.0, "virtio/dual": 1.10}, **KW)
    assert main(["compare", str(base), str(slow), "--metrics", M, "--thresholds", str(th)]) == 1
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith("virtio/dual") and "to_private.latency_min" in ln)
    assert "REGRESSION" in line


def test_a_learned_threshold_never_lowers_the_configured_one(tmp_path, capsys):
    runs = calibration_runs(tmp_path)
    learn(tmp_path, runs)
    base = make_results_dir(tmp_path / "base", seed=40, **KW)
    cur = make_results_dir(tmp_path / "cur", seed=41, latency_factor={"virtio/dual": 1.08}, **KW)
    js = tmp_path / "gate.json"
    main(["compare", str(base), str(cur), "--metrics", M, "--thresholds",
          str(tmp_path / "th.json"), "--metric-threshold", "to_private.latency_min=20",
          "--json", str(js)])
    rows = {(r["key"], r["metric"]): r for r in json.loads(js.read_text())["rows"]}
    r = rows[("virtio/dual", "to_private.latency_min")]
    assert r["threshold"] == pytest.approx(0.20) and r["threshold_from"] == "configured"
    assert r["verdict"] == "no-change"
    noisy = rows[(NOISY, "to_shared.latency_min")]
    assert noisy["threshold_from"] == "learned" and noisy["threshold"] > 0.05


def test_too_few_or_delayed_or_mixed_runs_are_refused(tmp_path, capsys):
    runs = calibration_runs(tmp_path, drift=(1.0, 1.1, 0.9))
    assert learn(tmp_path, runs[:2])[0] == 2
    assert "at least 3 runs" in capsys.readouterr().err
    delayed = runs[2] / "results.json"
    doc = json.loads(delayed.read_text())
    for r in doc["runs"]:
        r.setdefault("params", {})["slowdown"] = 1.1
    delayed.write_text(json.dumps(doc))
    status, out = learn(tmp_path, runs)
    assert status == 2 and not out.exists()
    assert "gate-testing delay" in capsys.readouterr().err
    other = make_results_dir(tmp_path / "other", seed=9, quick=True, **KW)
    assert learn(tmp_path, [runs[0], runs[1], other])[0] == 2
    assert "not comparable" in capsys.readouterr().err


def test_a_file_learned_on_another_host_or_malformed_is_refused(tmp_path, capsys):
    learn(tmp_path, calibration_runs(tmp_path, drift=(1.0, 1.1, 0.9)))
    host = {"hostname": "elsewhere", "kernel": "6.18.0-test", "cpu": "Test CPU @ 2.0GHz",
            "thp": {}, "hugetlb": {}}
    a = make_results_dir(tmp_path / "a", seed=50, host=host, **KW)
    b = make_results_dir(tmp_path / "b", seed=51, host=host, **KW)
    assert main(["compare", str(a), str(b), "--metrics", M,
                 "--thresholds", str(tmp_path / "th.json")]) == 2
    assert "thresholds file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    doc = json.loads((tmp_path / "th.json").read_text())
    doc["rows"][NOISY]["to_shared.latency_min"]["threshold"] = -1
    bad.write_text(json.dumps(doc))
    assert main(["compare", str(a), str(b), "--metrics", M, "--thresholds", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "threshold" in err
    assert main(["compare", str(a), str(b), "--thresholds", str(tmp_path / "none.json")]) == 2


def test_a_pooled_base_uses_the_prediction_interval_of_its_runs(tmp_path, capsys):
    """BASE given as several runs: their repetitions form one side, and each learned
    threshold is recomputed from the file's drift for a comparison with the mean of J runs
    (s * sqrt(1 + 1/J) instead of s * sqrt(2)); one run gives the file's threshold."""
    runs = calibration_runs(tmp_path)
    assert learn(tmp_path, runs)[0] == 0
    th = tmp_path / "th.json"
    doc = json.loads(th.read_text())
    row = doc["rows"][NOISY]["to_shared.latency_min"]
    q = student_t.ppf(1 - doc["alpha_per_row"], row["runs"] - 1)
    cur = make_results_dir(tmp_path / "cur", seed=60, latency_factor={NOISY: 1.0}, **KW)
    js = tmp_path / "gate.json"

    def gate(bases):
        status = main(["compare", *map(str, bases), str(cur), "--metrics", M,
                       "--thresholds", str(th), "--json", str(js)])
        out = json.loads(js.read_text())
        rows = {(r["key"], r["metric"]): r for r in out["rows"]}
        return status, out, rows[(NOISY, "to_shared.latency_min")]

    _, out1, one = gate(runs[:1])
    assert one["threshold"] == pytest.approx(row["threshold"])
    assert out1["base_dirs"] == [str(runs[0])] and out1["base_runs_effective"] == 1
    status, out6, pooled = gate(runs)
    s = row["drift_sd_log"]
    assert pooled["threshold"] == pytest.approx(math.expm1(q * s * math.sqrt(1 + 1 / 6)))
    assert pooled["threshold"] < one["threshold"]
    assert pooled["n_base"] + pooled["set_aside_base"] == 6 * KW["reps"]
    assert out6["base_dirs"] == [str(r) for r in runs]
    text = capsys.readouterr().out
    assert text.count("BASE ") >= 6 and "for a BASE of 6 run(s)" in text


def test_a_pooled_base_refuses_runs_that_differ(tmp_path, capsys):
    runs = calibration_runs(tmp_path, drift=(1.0, 1.1, 0.9))
    other = make_results_dir(tmp_path / "other", seed=9, quick=True, **KW)
    assert main(["compare", str(runs[0]), str(other), str(runs[1]), "--metrics", M]) == 2
    err = capsys.readouterr().err
    assert "cannot be pooled with BASE" in err and "other" in err
    # a dir given twice (pooled with itself, or as CUR too) is refused, not counted twice
    assert main(["compare", str(runs[0]), str(runs[0]), str(runs[1]), "--metrics", M]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["compare", str(runs[0]), str(runs[1]), str(runs[1]), "--metrics", M]) == 2
    assert "as BASE and CUR" in capsys.readouterr().err


def test_a_pooled_base_of_unequal_runs_counts_as_fewer_runs(tmp_path, capsys):
    runs = calibration_runs(tmp_path)
    assert learn(tmp_path, runs)[0] == 0
    doc = json.loads((tmp_path / "th.json").read_text())
    row = doc["rows"][NOISY]["to_shared.latency_min"]
    q = student_t.ppf(1 - doc["alpha_per_row"], row["runs"] - 1)
    short = make_results_dir(tmp_path / "short", seed=70, **dict(KW, reps=4))
    cur = make_results_dir(tmp_path / "cur", seed=71, **KW)
    js = tmp_path / "g.json"
    main(["compare", str(runs[0]), str(short), str(cur), "--metrics", M,
          "--thresholds", str(tmp_path / "th.json"), "--json", str(js)])
    out = json.loads(js.read_text())
    j = (8 + 4) ** 2 / (8 * 8 + 4 * 4)                 # 1.8 equal runs, not 2
    assert out["base_runs_effective"] == pytest.approx(j)
    r = next(r for r in out["rows"] if r["key"] == NOISY and r["metric"] == "to_shared.latency_min")
    s = row["drift_sd_log"]
    assert r["threshold"] == pytest.approx(math.expm1(q * s * math.sqrt(1 + 1 / j)))
    assert "as 1.80 equal runs" in capsys.readouterr().out
