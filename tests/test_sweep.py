"""gmembench sweep: spec errors, a small sweep on an embedded Dask cluster and on an
external scheduler + workers started here, resumption after a killed sweep, the tidy table
against single `gmembench run`s of the same points, the host lock and fleet qualification."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import InputError
from bench.results import load_results

pq = pytest.importorskip("pyarrow.parquet")

WORKLOAD = """
[workload]
description = "tiny sweep workload"
repetitions = 2
seed = 7

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
requests = {requests}
"""

SPEC = """
[sweep]
name = "tiny"
workloads = ["tiny.toml"]
repetitions = 2
mode = "{mode}"

[[axis]]
key = "layout.gmem_page_size"
name = "folio"
values = ["4k", "2m"]

[[axis]]
key = "cost.hyp_share_sw"
name = "firmware"
values = [0, 2000]
"""


def make(tmp_path, mode="grid", requests=300, spec=SPEC) -> Path:
    (tmp_path / "tiny.toml").write_text(WORKLOAD.format(requests=requests))
    f = tmp_path / "tiny-sweep.toml"
    f.write_text(spec.format(mode=mode))
    return f


def sweep(*args) -> int:
    return main(["sweep", "--no-progress", "--no-plots", *args])


def tidy(out: Path):
    return pq.read_table(out / "tidy.parquet").to_pylist()


def test_bad_spec_is_one_line_with_the_axis_line(tmp_path, capsys):
    f = make(tmp_path)
    text = f.read_text().replace('values = ["4k", "2m"]', 'values = ["4k", "3m"]')
    f.write_text(text)
    out = tmp_path / "out"
    assert sweep(str(f), "--out", str(out)) == 2
    err = capsys.readouterr().err.strip()
    line = text.splitlines().index('values = ["4k", "3m"]') + 1
    assert err.startswith(f"gmembench: error: {f}:{line}: ") and "3m" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()
    f.write_text(text.replace('values = ["4k", "3m"]', 'values = ["4k", "2m"]').replace("mode =", "modus ="))
    assert sweep(str(f), "--out", str(out)) == 2
    assert "unknown key 'modus'" in capsys.readouterr().err
    # an unknown cost is reported at its axis
    f.write_text(make(tmp_path).read_text().replace("cost.hyp_share_sw", "cost.no_such_cost"))
    assert sweep(str(f), "--out", str(out)) == 2
    assert "no_such_cost" in capsys.readouterr().err


def test_axis_without_effect_is_refused(tmp_path, capsys):
    f = make(tmp_path)
    f.write_text(f.read_text().replace('key = "layout.gmem_page_size"', 'key = "workload.seed"')
                 .replace('values = ["4k", "2m"]', 'values = [7, 8]'))
    # seed is replaced by [sweep] seed: 7 and 8 then resolve alike
    f.write_text(f.read_text().replace('repetitions = 2\n', 'repetitions = 2\nseed = 1\n', 1))
    assert sweep(str(f), "--out", str(tmp_path / "o")) == 2
    assert "no effect" in capsys.readouterr().err


def test_embedded_sweep_matches_single_runs(tmp_path, capsys):
    f = make(tmp_path, mode="grid")
    out = tmp_path / "out"
    assert main(["sweep", "--no-progress", str(f), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    plots = {p.name for p in (out / "plots").glob("*.png")}
    assert {"ratio_vs_folio.png", "ratio_vs_firmware.png", "heatmap_folio_firmware.png"} <= plots
    assert "4 points x 2 strategies x 2 repetitions = 16 tasks (0 cached)" in printed
    rows = tidy(out)
    # one row per point x strategy x direction x repetition x metric, axis values as columns
    assert {r["folio"] for r in rows} == {"4k", "2m"}
    assert {r["firmware"] for r in rows} == {0, 2000}
    assert {r["direction"] for r in rows} == {"all", "to_shared", "to_private"}
    assert {r["repetition"] for r in rows} == {0, 1}
    assert all(r["unit"] and r["backend"] == "sim" and r["fidelity"] == "simulated" for r in rows)
    csv_lines = (out / "tidy.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1
    concl = json.loads((out / "conclusions.json").read_text())
    assert concl["conclusions"] and (out / "report.md").is_file()

    # the same point as a single `gmembench run` (cost via --cost, folio via a workload file)
    (tmp_path / "tiny4k.toml").write_text((tmp_path / "tiny.toml").read_text().replace('"2m"', '"4k"', 1))
    run_dir = tmp_path / "single"
    assert main(["run", "--no-progress", "--no-report", "-w", str(tmp_path / "tiny4k.toml"),
                 "--cost", "hyp_share_sw=2000", "--out", str(run_dir)]) == 0
    doc = load_results(run_dir)
    checked = 0
    for run in doc["runs"]:
        for rep, pr in enumerate(run["per_rep"]):
            mine = {(r["direction"], r["metric"]): r["value"] for r in rows
                    if r["folio"] == "4k" and r["firmware"] == 2000 and r["strategy"] == run["strategy"]
                    and r["repetition"] == rep}
            assert mine[("all", "latency_ns.p50")] == pytest.approx(pr["latency_ns"]["p50"])
            assert mine[("all", "latency_ns.p99")] == pytest.approx(pr["latency_ns"]["p99"])
            assert mine[("all", "conversions")] == pr["conversions"]
            assert mine[("all", "bytes_copied")] == pr["bytes_copied"]
            assert mine[("all", "footprint_bytes.peak")] == pr["footprint_bytes"]["peak"]
            assert mine[("all", "huge_splits")] == pr["huge_splits"]
            for d in ("to_shared", "to_private"):
                assert mine[(d, "conversions")] == pr["directions"][d]["conversions"]
                assert mine[(d, "latency_ns.p50")] == pytest.approx(pr["directions"][d]["latency_ns"]["p50"])
            checked += 1
    assert checked == 4

    # a rerun computes nothing; a larger sweep computes only the new points
    assert sweep(str(f), "--out", str(out)) == 0
    assert "16 tasks (16 cached)" in capsys.readouterr().out
    f.write_text(f.read_text().replace("values = [0, 2000]", "values = [0, 2000, 4000]"))
    assert sweep(str(f), "--out", str(out), "--workers", "2") == 0
    text = capsys.readouterr().out
    assert "24 tasks (16 cached)" in text and "8 computed, 16 cached" in text


def test_external_scheduler_same_table(tmp_path, capsys):
    f = make(tmp_path, mode="one-at-a-time")
    sched_file = tmp_path / "scheduler.json"
    dask = shutil.which("dask") or str(Path(sys.executable).parent / "dask")
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [subprocess.Popen([dask, "scheduler", "--no-dashboard", "--port", "0",
                               "--scheduler-file", str(sched_file)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(200):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        procs.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(sched_file),
                                       "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ext = tmp_path / "ext"
        assert sweep(str(f), "--scheduler-file", str(sched_file), "--out", str(ext)) == 0
        emb = tmp_path / "emb"
        assert sweep(str(f), "--out", str(emb), "--workers", "1") == 0
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    key = lambda r: (r["point"], r["strategy"], r["direction"], r["repetition"], r["metric"])
    a = {key(r): r["value"] for r in tidy(ext) if r["metric"] != "wall_s"}
    b = {key(r): r["value"] for r in tidy(emb) if r["metric"] != "wall_s"}
    assert a == b and len(a) > 100
    # one-at-a-time: the baseline plus one other value per axis
    assert len({r["point"] for r in tidy(ext)}) == 3


def test_killed_sweep_resumes(tmp_path):
    f = make(tmp_path, requests=3000)
    f.write_text(f.read_text().replace("repetitions = 2", "repetitions = 4"))
    out = tmp_path / "out"
    cache = out / "cache"
    p = subprocess.Popen([sys.executable, "-m", "bench", "sweep", "--no-progress", "--no-plots",
                          str(f), "--out", str(out), "--workers", "2"],
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(cache.glob("*.json"))) < 3 and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = len(list(cache.glob("*.json")))
    assert 3 <= done < 32, done
    assert not list(out.glob("tidy.*"))
    # every cached result is whole (atomic writes): it parses
    for c in cache.glob("*.json"):
        json.loads(c.read_text())
    r = subprocess.run([sys.executable, "-m", "bench", "sweep", "--no-progress", "--no-plots",
                        str(f), "--out", str(out), "--workers", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"32 tasks ({done} cached)" in r.stdout
    assert f"{32 - done} computed, {done} cached" in r.stdout
    assert len(list(cache.glob("*.json"))) == 32


def test_hostlock_refuses_two_per_machine():
    from distributed import Client, LocalCluster
    from bench.sweep.engine import check_hostlocks
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      resources={"hostlock": 1}) as cluster, Client(cluster) as client:
        with pytest.raises(InputError, match="hostlock"):
            check_hostlocks(client)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      resources={"hostlock": 1}) as cluster, Client(cluster) as client:
        check_hostlocks(client)


def test_fleet_qualify_one_verdict_per_machine(tmp_path, capsys):
    (tmp_path / "tiny.toml").write_text(WORKLOAD.format(requests=200))
    q = tmp_path / "q.toml"
    q.write_text(f"""
[qualify]
name = "simfleet"
backend = "sim"
workloads = ["{tmp_path / 'tiny.toml'}"]
strategies = ["in-place", "dual"]
repetitions = 1

[[check]]
metric = "failed_conversions"
max = 0
""")
    out = tmp_path / "fleet"
    assert main(["sweep", "--qualify", str(q), "--workers", "2", "--out", str(out)]) == 0
    fleet = json.loads((out / "fleet.json").read_text())
    assert len(fleet["machines"]) == 1 and fleet["machines"][0]["pass"] is True
    assert "PASS" in capsys.readouterr().out


def test_table_of_n_runs(tmp_path, capsys):
    wl = tmp_path / "tiny.toml"
    wl.write_text(WORKLOAD.format(requests=200))
    dirs = []
    for seed in (1, 2, 3):
        d = tmp_path / f"r{seed}"
        assert main(["run", "--no-progress", "--no-report", "-w", str(wl), "--seed", str(seed),
                     "--out", str(d)]) == 0
        dirs.append(str(d))
    capsys.readouterr()
    assert main(["table", *dirs]) == 0
    text = capsys.readouterr().out
    assert all(len(l) <= 72 for l in text.splitlines()[:-2])
    assert "r1" in text and "r3" in text
    assert main(["table", dirs[0], dirs[0], "--hide-unchanged", "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip() == "group,metric,unit,run,mean,sd,cv,n,change_pct"
    from bench.runtable import build_rows
    docs = [load_results(d) for d in dirs[:2]]
    rows = build_rows(docs)
    r = next(r for r in rows if r["metric"] == "fp peak" and r["group"].endswith("/dual"))
    vals = [[p["footprint_bytes"]["peak"] / (1 << 20) for p in run["per_rep"]]
            for doc in docs for run in doc["runs"] if run["key"] == r["group"]]
    m0, m1 = sum(vals[0]) / len(vals[0]), sum(vals[1]) / len(vals[1])
    assert r["cells"][0]["mean"] == pytest.approx(m0)
    assert r["change"][1] == pytest.approx(100 * (m1 - m0) / m0)


def test_sensitivity_varies_uncertain_costs(tmp_path, capsys):
    from bench.costs import load_profile
    f = make(tmp_path)
    f.write_text(f.read_text() + """
[sensitivity]
levels = 2
samples = 3
parameters = ["hyp_share_sw", "lru_drain"]
""")
    out = tmp_path / "out"
    assert main(["sweep", "--no-progress", str(f), "--sensitivity", "--out", str(out),
                 "--workers", "2"]) == 0
    unc = load_profile().uncertain
    rows = tidy(out / "sensitivity")
    kinds = {r["kind"] for r in rows}
    assert kinds == {"baseline", "oat", "lhs"}
    fw = sorted({r["cost.hyp_share_sw"] for r in rows if r["varied"] == "hyp_share_sw"})
    assert fw == [pytest.approx(float(unc["hyp_share_sw"][0])), pytest.approx(float(unc["hyp_share_sw"][1]))]
    # Latin-hypercube points move both costs inside their ranges
    lhs = [r for r in rows if r["kind"] == "lhs"]
    for k in ("hyp_share_sw", "lru_drain"):
        lo, hi = unc[k]
        assert all(lo <= r[f"cost.{k}"] <= hi for r in lhs)
    concl = json.loads((out / "sensitivity" / "conclusions.json").read_text())
    bars = concl["sensitivity"]["tornado"][0]["bars"]
    assert {b["parameter"] for b in bars} == {"hyp_share_sw", "lru_drain"}
    # a dearer firmware step makes every conversion slower for both strategies: the
    # in-place total time at the high end exceeds the one at the low end
    pts = {p["point"]: p for p in concl["points"]}
    oat = sorted((p for p in pts.values() if p["varied"] == "hyp_share_sw"),
                 key=lambda p: p["columns"]["cost.hyp_share_sw"])
    assert oat[-1]["results"]["total time"]["in-place"] > oat[0]["results"]["total time"]["in-place"]
    assert (out / "sensitivity" / "plots" / "tornado.png").is_file()
    assert "Latin-hypercube" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/kvm"),
                    reason="host backend needs root and /dev/kvm")
def test_host_backend_sweep_holds_the_host_lock(tmp_path):
    (tmp_path / "tiny.toml").write_text(WORKLOAD.format(requests=100).replace('size = "64M"', 'size = "16M"')
                                        .replace('"2m"', '"4k"').replace('"thp"', '"4k"'))
    f = tmp_path / "h.toml"
    f.write_text("""
[sweep]
name = "h"
workloads = ["tiny.toml"]
strategies = ["in-place"]
backend = "host"
repetitions = 1
""")
    out = tmp_path / "out"
    assert sweep(str(f), "--out", str(out)) == 0
    rows = tidy(out)
    assert {r["backend"] for r in rows} == {"host"}
    assert all(r["fidelity"] != "simulated" for r in rows)
    conv = [r["value"] for r in rows if r["metric"] == "conversions" and r["direction"] == "all"]
    assert conv and conv[0] > 0


def test_batched_points_fail_alone_and_batches_keep_workers_busy():
    """Simulator points travel several per Dask task: one failing point is reported alone
    while its batch-mates still return; batches stay small enough that every worker thread
    gets at least 8 of them."""
    from bench.sweep.engine import batch_size, run_batch

    def func(t):
        if t == 2:
            raise ValueError("bad point")
        return {"key": str(t)}

    out = run_batch(func, [1, 2, 3])
    assert [r for r, _ in out] == [{"key": "1"}, None, {"key": "3"}]
    assert out[1][1] == "ValueError: bad point"
    assert batch_size(5, 2) == 1
    assert batch_size(400, 2) == 16
    for n in (1, 17, 100, 1000, 10000):
        for threads in (1, 2, 8, 64):
            b = batch_size(n, threads)
            assert 1 <= b <= 16
            assert b == 1 or -(-n // b) >= 8 * threads
