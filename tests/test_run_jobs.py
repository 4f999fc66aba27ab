"""Simulator repetitions in worker processes (`gmembench run --jobs N`) give the results
one process gives: the same results.json apart from wall-clock fields (values and key
order), the same samples in the same order, for several workloads queued at once."""
import json

import numpy as np
import pytest

from bench.cli import main
from tests.test_run_cli import write_workload

WALL_CLOCK = {"wall_s", "created", "elapsed_s", "run_id", "command", "sim_wall_s"}


def _strip(d):
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if k not in WALL_CLOCK}
    if isinstance(d, list):
        return [_strip(x) for x in d]
    return d


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(),
                    reason="parallel repetitions use fork (not available here)")
def test_jobs_do_not_change_results(tmp_path):
    wl = write_workload(tmp_path, extra='\n[[phase]]\nname = "more"\ngenerator = "mixed"\n'
                                         'requests = 300\n')
    docs, samples = {}, {}
    for jobs in (1, 3):
        out = tmp_path / f"j{jobs}"
        assert main(["run", "--no-progress", "--no-report", "--workload", str(wl),
                     "--workload", "bulk-roundtrip", "--repetitions", "3", "--jobs", str(jobs),
                     "--out", str(out)]) == 0
        docs[jobs] = json.loads((out / "results.json").read_text())
        with np.load(out / "samples.npz") as z:
            samples[jobs] = {k: z[k] for k in z.files}
    assert len(docs[1]["runs"]) == 4
    assert json.dumps(_strip(docs[1])) == json.dumps(_strip(docs[3]))
    assert list(samples[1]) == list(samples[3]) and len(samples[1]) == 2 * 2 * 3 * 2
    for k in samples[1]:
        assert np.array_equal(samples[1][k], samples[3][k]), k


def test_jobs_must_be_positive(tmp_path, capsys):
    assert main(["run", "--no-progress", "--jobs", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
