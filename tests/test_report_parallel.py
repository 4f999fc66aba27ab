"""Figures rendered by worker processes are the figures a single process renders: the same
files, byte for byte, and the same report.md."""
import filecmp
import os

import pytest

from bench.report.report import write_report
from tests.synthetic_results import make_results_dir


def _files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="parallel rendering uses fork (not available here)")
def test_parallel_report_equals_serial(tmp_path):
    dirs = {}
    for jobs in (1, 3):
        d = make_results_dir(tmp_path / f"jobs{jobs}" / "run", n=300, reps=2, backend="sim",
                             workloads=("bounce",))
        timings = {}
        write_report(d, jobs=jobs, timings=timings)
        assert timings["plot_workers"] == jobs
        assert timings["plots_s"] > 0 and timings["report_s"] >= timings["plots_s"]
        dirs[jobs] = d
    serial, parallel = dirs[1], dirs[3]
    names = _files(serial)
    assert names == _files(parallel)
    pngs = [n for n in names if n.endswith(".png")]
    assert "plots/summary.png" in pngs and len(pngs) >= 3
    for n in names:
        if n.endswith((".png", ".md", ".txt")):
            assert filecmp.cmp(serial / n, parallel / n, shallow=False), n
    # report.md embeds every figure the workers wrote
    md = (parallel / "report.md").read_text()
    for n in pngs:
        assert os.path.basename(n) in md, n
