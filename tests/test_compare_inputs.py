"""The CI gate never lies: every malformed input or option makes `gmembench compare` exit 2
with one clear line - never 1 (which CI reads as "regression"), never a traceback, never a
partial --json.  Inputs are generated (hypothesis) from a valid results dir."""
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_results import make_results_dir  # noqa: E402

from bench.cli import main  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
TRIED = {"inputs": 0}


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    d = tmp_path_factory.mktemp("valid")
    return make_results_dir(d / "r", reps=4, n=40, directions=True)


def judge(base, cur, *opts, capsys):
    """Exit status and stderr of one compare; asserts the never-lie contract for exit 2."""
    TRIED["inputs"] += 1
    status = main(["compare", str(base), str(cur), *map(str, opts)])
    err = capsys.readouterr().err
    return status, err


def assert_clear_error(status, err):
    assert status == 2, f"exit {status}, stderr {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0], err
    assert "Traceback" not in err and "internal error" not in err


_SCRATCH: Path | None = None


@pytest.fixture(autouse=True, scope="module")
def _scratch(tmp_path_factory):
    # hypothesis examples cannot take the function-scoped tmp_path; their copies go under
    # pytest's own temporary tree (pruned by pytest), never straight into /tmp
    global _SCRATCH
    _SCRATCH = tmp_path_factory.mktemp("cmp")
    yield


def copy(valid) -> Path:
    d = Path(tempfile.mkdtemp(prefix="cmp-", dir=_SCRATCH)) / "r"
    shutil.copytree(valid, d)
    return d


def edit(path: Path, fn) -> None:
    doc = json.loads((path / "results.json").read_text())
    fn(doc)
    (path / "results.json").write_text(json.dumps(doc))


BAD_LATENCY = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -250, 0, 0.0, "320", True,
                               [], {}, "nan"])
BAD_COUNT = st.sampled_from([-1, -7, 1.5, math.nan, "3", True, [], {}, math.inf])
LAT_FIELDS = ["latency_ns.min", "latency_ns.p50", "latency_ns.p99",
              "directions.to_shared.latency_ns.min", "directions.to_private.latency_ns.p50"]
COUNT_FIELDS = ["conversions", "failed_conversions", "bytes_copied", "huge_splits"]


def set_path(d: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for k in head:
        d = d[k]
    d[last] = value


@SETTINGS
@given(side=st.sampled_from(["base", "cur"]), run=st.integers(0, 3), rep=st.integers(0, 3),
       field=st.sampled_from(LAT_FIELDS), value=BAD_LATENCY)
def test_bad_latency_values_in_per_rep_are_exit_2(valid, capsys, side, run, rep, field, value):
    bad = copy(valid)
    edit(bad, lambda doc: set_path(doc["runs"][run]["per_rep"][rep], field, value))
    args = (valid, bad) if side == "cur" else (bad, valid)
    assert_clear_error(*judge(*args, capsys=capsys))


@SETTINGS
@given(side=st.sampled_from(["base", "cur"]), run=st.integers(0, 3), rep=st.integers(0, 3),
       field=st.sampled_from(COUNT_FIELDS + ["footprint_bytes.peak"]), value=BAD_COUNT)
def test_wrong_types_in_per_rep_are_exit_2(valid, capsys, side, run, rep, field, value):
    bad = copy(valid)
    edit(bad, lambda doc: set_path(doc["runs"][run]["per_rep"][rep], field, value))
    args = (valid, bad) if side == "cur" else (bad, valid)
    assert_clear_error(*judge(*args, capsys=capsys))


STRUCTURAL = {
    "empty per_rep": lambda d: d["runs"][1].__setitem__("per_rep", []),
    "per_rep not a list": lambda d: d["runs"][1].__setitem__("per_rep", {"0": {}}),
    "per_rep entry missing": lambda d: d["runs"][2]["per_rep"].pop(),
    "per_rep entry not an object": lambda d: d["runs"][0]["per_rep"].__setitem__(1, 42),
    "duplicate run key": lambda d: d["runs"].append(json.loads(json.dumps(d["runs"][0]))),
    "duplicate key, regressed copy": lambda d: d["runs"].insert(
        1, {**json.loads(json.dumps(d["runs"][0]))}),
    "no runs": lambda d: d.__setitem__("runs", []),
    "runs not a list": lambda d: d.__setitem__("runs", "all"),
    "run not an object": lambda d: d["runs"].__setitem__(0, None),
    "key not a string": lambda d: d["runs"][0].__setitem__("key", 5),
    "empty key": lambda d: d["runs"][0].__setitem__("key", ""),
    "repetitions 0": lambda d: d["runs"][0].__setitem__("repetitions", 0),
    "repetitions a string": lambda d: d["runs"][0].__setitem__("repetitions", "4"),
    "repetitions a bool": lambda d: d["runs"][0].__setitem__("repetitions", True),
    "unknown backend": lambda d: d["runs"][0].__setitem__("backend", "gpu"),
    "host not an object": lambda d: d.__setitem__("host", ["x"]),
    "failed > conversions": lambda d: d["runs"][0]["per_rep"][0].__setitem__(
        "failed_conversions", 10 ** 6),
    "directions not an object": lambda d: d["runs"][0]["per_rep"][0].__setitem__("directions", 3),
    "unknown direction": lambda d: d["runs"][0]["per_rep"][0]["directions"].__setitem__(
        "sideways", {"latency_ns": {"min": 1}}),
    "schema wrong": lambda d: d.__setitem__("schema", "gmembench-results/0"),
    "document a list": None,
}


@SETTINGS
@given(side=st.sampled_from(["base", "cur"]), what=st.sampled_from(sorted(STRUCTURAL)))
def test_malformed_structure_is_exit_2(valid, capsys, side, what):
    bad = copy(valid)
    if STRUCTURAL[what] is None:
        (bad / "results.json").write_text("[1, 2, 3]")
    else:
        edit(bad, STRUCTURAL[what])
    args = (valid, bad) if side == "cur" else (bad, valid)
    assert_clear_error(*judge(*args, capsys=capsys))


@SETTINGS
@given(side=st.sampled_from(["base", "cur"]), cut=st.floats(0.0, 0.999),
       junk=st.binary(max_size=20))
def test_corrupt_or_truncated_results_json_is_exit_2(valid, capsys, side, cut, junk):
    bad = copy(valid)
    data = (bad / "results.json").read_bytes()
    (bad / "results.json").write_bytes(data[:int(cut * (len(data) - 2))] + junk)
    args = (valid, bad) if side == "cur" else (bad, valid)
    assert_clear_error(*judge(*args, capsys=capsys))


@SETTINGS
@given(side=st.sampled_from(["base", "cur"]), cut=st.floats(0.0, 0.999))
def test_truncated_samples_npz_is_exit_2(valid, capsys, side, cut):
    bad = copy(valid)
    data = (bad / "samples.npz").read_bytes()
    (bad / "samples.npz").write_bytes(data[:int(cut * len(data))])
    args = (valid, bad) if side == "cur" else (bad, valid)
    assert_clear_error(*judge(*args, capsys=capsys))


BAD_ARRAYS = {
    "nan latency": lambda a: np.where(np.arange(len(a)) == 3, np.nan, a.astype(float)),
    "negative latency": lambda a: np.where(np.arange(len(a)) == 0, -a, a),
    "zero latency": lambda a: np.zeros_like(a),
    "inf latency": lambda a: np.full(len(a), np.inf),
    "too short": lambda a: a[:-1],
    "two-dimensional": lambda a: np.stack([a, a]),
    "strings": lambda a: a.astype(str),
}


@SETTINGS
@given(side=st.sampled_from(["base", "cur"]), what=st.sampled_from(sorted(BAD_ARRAYS)),
       rep=st.integers(0, 3), direction=st.booleans())
def test_bad_samples_arrays_are_exit_2(valid, capsys, side, what, rep, direction):
    bad = copy(valid)
    with np.load(bad / "samples.npz") as z:
        arrays = {k: z[k] for k in z.files}
    key = f"bounce/dual/rep{rep}" + ("/direction" if direction else "")
    if direction:
        arrays[key] = np.full(len(arrays[key]) - (what == "too short"),
                              3 if what != "too short" else 1, np.uint8)
    else:
        arrays[key] = BAD_ARRAYS[what](arrays[key])
    np.savez_compressed(bad / "samples.npz", **arrays)
    args = (valid, bad) if side == "cur" else (bad, valid)
    assert_clear_error(*judge(*args, capsys=capsys))


@SETTINGS
@given(opt=st.sampled_from([
    ["--threshold", v] for v in ("nan", "inf", "-inf", "-5", "0", "abc", "1e9", "", "101")]
    + [["--metric-threshold", v] for v in ("latency_p50=nan", "latency_p50=inf",
                                           "latency_p50=-1", "latency_p50", "nosuch=5",
                                           "=5", "latency_p50=x")]
    + [["--alpha", v] for v in ("nan", "0", "1", "-0.1", "0.5", "x", "inf")]
    + [["--metrics", v] for v in ("", "latency_max", "latency_p50,latency_p50", ",")]
    + [["--rerun-budget", v] for v in ("-1", "x", "1000", "1.5")]))
def test_bad_options_are_exit_2_before_anything_is_read(valid, capsys, opt):
    # OPT=VALUE: argparse itself would take "-inf" for an option
    assert_clear_error(*judge(valid, valid, f"{opt[0]}={opt[1]}", capsys=capsys))


@pytest.mark.parametrize("where", ["dir", "missing-parent", "under-a-file", "readonly-dir"])
def test_unwritable_json_path_is_exit_2_and_nothing_is_judged(valid, capsys, tmp_path, where):
    f = tmp_path / "file"
    f.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    path = {"dir": tmp_path, "missing-parent": tmp_path / "no" / "gate.json",
            "under-a-file": f / "gate.json", "readonly-dir": ro / "gate.json"}[where]
    import os
    if where == "readonly-dir" and os.access(ro, os.W_OK):
        pytest.skip("running as a user who can write a 0500 directory (root)")
    status, err = judge(valid, valid, "--json", path, capsys=capsys)
    assert_clear_error(status, err)
    assert "--json" in err


def test_json_write_failure_after_judging_is_exit_2_not_a_verdict(valid, capsys, tmp_path):
    """/proc/self/... passes the up-front check as a path but cannot be written: the gate
    must still exit 2 (not 0, 1 or 3)."""
    status, err = judge(valid, valid, "--json", "/proc/self/gate.json", capsys=capsys)
    assert_clear_error(status, err)


def test_missing_dirs_and_a_directory_for_results_are_exit_2(valid, capsys, tmp_path):
    assert_clear_error(*judge(valid, tmp_path / "nothing", capsys=capsys))
    (tmp_path / "d" / "results.json").mkdir(parents=True)
    assert_clear_error(*judge(tmp_path / "d", valid, capsys=capsys))


def test_a_crash_still_exits_2_through_the_real_command(valid, tmp_path):
    """As CI runs it (a process): a results.json nested 100000 deep makes the JSON parser
    fail in its own way; the process must exit 2 with one line."""
    import subprocess
    bad = copy(valid)
    (bad / "results.json").write_text("[" * 100000 + "]" * 100000)
    p = subprocess.run([sys.executable, "-m", "bench", "compare", str(valid), str(bad)],
                       capture_output=True, text=True, cwd=bad.parent)   # the installed bench
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_valid_pairs_are_still_judged(valid, capsys):
    """The checks refuse only what is wrong: the valid dir against itself is decided."""
    status, err = judge(valid, valid, "--metrics", "to_shared.latency_p50", capsys=capsys)
    assert status in (0, 3) and not err


def test_count_of_generated_inputs(capsys):
    """Not a check: prints how many malformed inputs this module fed to compare (the
    figure the issue's closing note asks for)."""
    print(f"\ncompare: {TRIED['inputs']} generated malformed inputs, all exit 2 with one line")
