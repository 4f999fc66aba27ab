"""`gmembench run` through the CLI: results directory, determinism, bad input."""
import json
from pathlib import Path

import numpy as np

from bench.cli import main
from bench.results import load_results, load_samples

SMALL = """
[workload]
description = "tiny test workload"
repetitions = 2
seed = 7

[layout]
gmem_page_size = "{page}"
shared_backing = "memfd"
shared_page = "thp"
platform = "preserve"

[[layout.memslot]]
gpa = 0
size = "64M"

[[phase]]
name = "churn"
generator = "mixed"
requests = 400
"""


def write_workload(tmp_path: Path, page: str = "2m", extra: str = "") -> Path:
    f = tmp_path / "tiny.toml"
    f.write_text(SMALL.format(page=page) + extra)
    return f


def run(tmp_path, *args) -> int:
    return main(["run", "--no-progress", "--no-report", *args])


COPY = '\n[strategy.dual]\ncopy = "auto"   # the hypothetical copy, opt-in\n'


def test_run_writes_results_with_the_promised_metrics(tmp_path, capsys):
    wl = write_workload(tmp_path, extra=COPY)
    out = tmp_path / "r"
    assert run(tmp_path, "-w", str(wl), "--out", str(out)) == 0
    doc = load_results(out)
    assert {r["key"] for r in doc["runs"]} == {"tiny/in-place", "tiny/dual"}
    for r in doc["runs"]:
        m = r["metrics"]
        for name in ("conversions", "failed_conversions", "bytes_converted", "bytes_copied",
                     "copy_time_ns", "huge_splits", "huge_merges"):
            assert isinstance(m[name], int), name
        assert set(m["latency_ns"]) >= {"p50", "p90", "p99", "max", "mean"}
        assert set(m["footprint_bytes"]) == {"peak", "mean"}
        assert set(m["footprint_ratio"]) == {"peak", "mean"}
        assert set(m["hugepage_coverage"]) == {"start", "end", "min"}
        assert set(m["unusable_index"]) == {"order9", "order10"}
        assert r["backend"] == "sim" and r["fidelity"] == "simulated"
        assert r["cost_profile"]["name"] == "default" and r["seed"] == 7
        assert len(r["series"]["footprint_bytes"]) == len(r["series"]["op_index"]) > 2
        assert m["conversions"] == 2 * 400 and len(r["per_rep"]) == 2
        # every latency can be explained by its parts
        assert sum(v["ns"] for v in r["breakdown"].values()) > 0
    inplace, dual = sorted(doc["runs"], key=lambda r: r["strategy"] != "in-place")
    assert inplace["metrics"]["bytes_copied"] == 0
    assert dual["metrics"]["bytes_copied"] > 0, "dual copies when the platform preserves"
    samples = load_samples(doc)
    assert len(samples["tiny/dual/rep1"]) == dual["per_rep"][1]["conversions"] - dual["per_rep"][1]["failed_conversions"]
    assert "tiny" in capsys.readouterr().out


def test_same_seed_same_results_bit_for_bit(tmp_path):
    wl = write_workload(tmp_path)
    docs = []
    for name in ("a", "b"):
        assert run(tmp_path, "-w", str(wl), "--out", str(tmp_path / name)) == 0
        docs.append(load_results(tmp_path / name))
    strip = ("metrics", "per_rep", "series", "breakdown")
    for ra, rb in zip(docs[0]["runs"], docs[1]["runs"]):
        for k in strip:
            a, b = ra[k], rb[k]
            if k == "per_rep":
                a = [{x: y for x, y in d.items() if x != "wall_s"} for d in a]
                b = [{x: y for x, y in d.items() if x != "wall_s"} for d in b]
            assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), k
    sa, sb = load_samples(docs[0]), load_samples(docs[1])
    assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_different_seed_changes_results(tmp_path):
    wl = write_workload(tmp_path)
    run(tmp_path, "-w", str(wl), "--out", str(tmp_path / "a"))
    run(tmp_path, "-w", str(wl), "--out", str(tmp_path / "b"), "--seed", "8")
    a, b = load_samples(load_results(tmp_path / "a")), load_samples(load_results(tmp_path / "b"))
    assert not np.array_equal(a["tiny/dual/rep0"], b["tiny/dual/rep0"])


def _fails_cleanly(tmp_path, capsys, args, expect):
    out = tmp_path / "never"
    assert run(tmp_path, *args, "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not out.exists()
    assert not list(tmp_path.glob(".never*")), "no partial results left behind"


def test_profile_missing_cost_is_one_line_exit_2(tmp_path, capsys):
    prof = tmp_path / "p.toml"
    prof.write_text("[costs]\nioctl_entry = 100\n")
    _fails_cleanly(tmp_path, capsys, ["-w", str(write_workload(tmp_path)), "--profile", str(prof)],
                   "missing cost")


def test_profile_negative_cost_names_file_and_line(tmp_path, capsys):
    from importlib import resources
    text = (resources.files("bench") / "profiles" / "default.toml").read_text()
    prof = tmp_path / "neg.toml"
    prof.write_text(text.replace("ioctl_entry = 148", "ioctl_entry = -5"))
    line = text.splitlines().index("ioctl_entry = 148") + 1
    _fails_cleanly(tmp_path, capsys, ["-w", str(write_workload(tmp_path)), "--profile", str(prof)],
                   f"neg.toml:{line}: cost 'ioctl_entry' is negative")


def test_unaligned_size_is_one_line_exit_2(tmp_path, capsys):
    wl = tmp_path / "bad.toml"
    wl.write_text(SMALL.format(page="4k").replace('size = "64M"', "size = 1000"))
    _fails_cleanly(tmp_path, capsys, ["-w", str(wl)], "bad.toml")


def test_folio_size_not_dividing_the_slot_is_exit_2(tmp_path, capsys):
    wl = write_workload(tmp_path, page="1g")
    _fails_cleanly(tmp_path, capsys, ["-w", str(wl)], "is not a multiple of 1 GiB")


def test_folio_order_the_host_cannot_provide_is_exit_2(tmp_path, capsys):
    wl = tmp_path / "big.toml"
    wl.write_text(SMALL.format(page="1g").replace('size = "64M"', 'size = "1G"'))
    _fails_cleanly(tmp_path, capsys, ["-w", str(wl), "-p", "host_memory=512M"],
                   "smaller than one 1G folio")


def test_host_memory_too_small_is_exit_2(tmp_path, capsys):
    wl = write_workload(tmp_path)
    _fails_cleanly(tmp_path, capsys, ["-w", str(wl), "-p", "host_memory=1000"], "host_memory")


def test_unknown_workload_is_exit_2(tmp_path, capsys):
    _fails_cleanly(tmp_path, capsys, ["-w", "no-such-workload"], "no-such-workload")


def test_dual_does_not_copy_unless_asked(tmp_path):
    out = tmp_path / "r"
    assert run(tmp_path, "-w", str(write_workload(tmp_path)), "--out", str(out), "-r", "1",
               "-s", "dual") == 0
    assert load_results(out)["runs"][0]["metrics"]["bytes_copied"] == 0   # QEMU never copies


def test_explain_lists_primitives(tmp_path, capsys):
    wl = write_workload(tmp_path, extra=COPY)
    assert run(tmp_path, "-w", str(wl), "--out", str(tmp_path / "x"), "--explain",
               "-s", "dual", "-r", "1") == 0
    out = capsys.readouterr().out
    assert "where the time went" in out and "punch_gmem" in out and "memcpy" in out


def test_accepted_memory_start_up_is_in_the_metadata_and_the_report(tmp_path):
    from bench.report.report import write_report
    wl = tmp_path / "tdx.toml"
    wl.write_text(SMALL.format(page="4k").replace('platform = "preserve"', 'platform = "zero"'))
    out = tmp_path / "r"
    assert run(tmp_path, "-w", str(wl), "--out", str(out), "-r", "1") == 0
    for r in load_results(out)["runs"]:
        su = r["metadata"]["startup"]
        assert su["accepted_bytes"] == 64 << 20 and su["accept_ns"] > 0
        assert su["ns"] == su["vmm_ns"] + su["accept_ns"]
        # the guest's accept of every 4K page happened at start-up
        assert su["breakdown"]["fw_tdx_to_private"]["count"] == (64 << 20) >> 12
    md = write_report(out).read_text()
    assert "Start-up, before measurement" in md and "the guest's accept of 64M" in md
