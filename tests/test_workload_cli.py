"""`gmembench workloads` and `gmembench workloads show` through the CLI entry point."""
import re
from pathlib import Path

from bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
# workload files are the .toml files with a [workload] table (others, e.g. qualify specs,
# may share the directory)
SHIPPED = sorted(p.stem for p in (ROOT / "workloads").glob("*.toml")
                 if re.search(r"^\[workload\]", p.read_text(), re.M))


def test_list_names_every_workload_with_its_description(capsys):
    assert main(["workloads"]) == 0
    out = capsys.readouterr().out.splitlines()
    names = [l.split()[0] for l in out]
    assert names == SHIPPED
    hog = next(l for l in out if l.startswith("hogger-120g "))
    assert "120 GiB" in hog
    assert main(["workloads", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == out


def test_show_prints_the_resolved_definition(capsys):
    assert main(["workloads", "show", "swiotlb-boot"]) == 0
    out = capsys.readouterr().out
    assert "workload swiotlb-boot" in out
    assert "slot 0: gpa 0x0  size 2 GiB  numa node 0" in out
    assert "slot 1: gpa 0x100000000  size 6 GiB" in out
    assert "generator swiotlb-boot" in out
    assert "chunk = 2 MiB" in out and "pool_max = 1 GiB" in out
    assert "platform zero" in out and "vcpus 8" in out


def test_show_quick_is_scaled(capsys):
    assert main(["workloads", "show", "dma-churn", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "quick variant (scale 0.0625)" in out
    assert "size 256 MiB" in out and "buffers = 3125" in out


def test_show_stats_generates_the_stream(capsys):
    assert main(["workloads", "show", "pkvm-share", "--quick", "--stats"]) == 0
    out = capsys.readouterr().out
    assert "TO_SHARED" in out and "SHARED_PROBE" in out and "625 ops" in out


def test_show_trace_workload(capsys):
    assert main(["workloads", "show", "trace-tdx-boot", "--stats"]) == 0
    out = capsys.readouterr().out
    assert "replay trace" in out and "tdx-boot-plain.log" in out
    assert "valid=1123" in out          # 123 2 MiB MapGPA chunks + 1000 DMA conversions
    assert "# SYNTHETIC trace" in out          # the trace header says what it is


def test_errors_exit_2_with_file_and_line(tmp_path, capsys):
    assert main(["workloads", "show", "no-such-workload"]) == 2
    assert "unknown workload 'no-such-workload'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[workload]\ndescription = "x"\n\n[[layout.memslot]]\ngpa = 0\nsize = "1G"\n\n'
                   '[[phase]]\ngenerator = "dma-churn"\nbufers = 10\n')
    assert main(["workloads", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:10: phase[0].bufers: unknown key 'bufers'" in err
    assert main(["workloads", "show"]) == 2
    assert "needs a workload name" in capsys.readouterr().err


def test_every_shipped_workload_runs_on_the_simulator_under_both_strategies(tmp_path, capsys):
    import json
    args = ["run", "--quick", "--repetitions", "1", "--no-progress", "--no-report",
            "--out", str(tmp_path / "res")]
    for name in SHIPPED:
        args += ["--workload", name]
    assert main(args) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "res" / "results.json").read_text())
    runs = {(r["workload"], r["strategy"]): r for r in doc["runs"]}
    assert set(runs) == {(w, s) for w in SHIPPED for s in ("in-place", "dual")}
    for key, r in runs.items():
        m = r["metrics"]
        assert m["conversions"] > 0 and m["failed_conversions"] == 0, key
        assert m["checks"]["content_mismatch_pages"] == 0, key
        assert m["checks"]["unexpected_sigbus"] == 0, key
    # pkvm-share's contents were checked both ways and survived; its host probes of private
    # memory faulted in-place, and under dual reached the shared backing (no fault expected)
    for s in ("in-place", "dual"):
        c = runs[("pkvm-share", s)]["metrics"]["checks"]
        assert c["content_pages_checked"] > 0 and c["sigbus_seen"] == c["sigbus_expected"]
        assert (c["sigbus_expected"] > 0) == (s == "in-place")


def test_malformed_workload_run_exits_2_and_writes_no_results(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[workload]\ndescription = "x"\n\n[[layout.memslot]]\ngpa = 0\nsize = "1000K"\n\n'
                   '[[phase]]\ngenerator = "dma-churn"\n')
    out = tmp_path / "res"
    assert main(["run", "--workload", str(bad), "--no-progress", "--out", str(out)]) == 2
    # 1000K is 4K aligned, but 64 buffers in flight do not fit: found when generating
    assert f"{bad}:8: phase 'phase1' (dma-churn): the region holds 15 buffers" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    bad.write_text(bad.read_text().replace("1000K", "1001K"))
    assert main(["run", "--workload", str(bad), "--no-progress", "--out", str(out)]) == 2
    assert f"{bad}:6: layout.memslot[0].size: '1001K' is not a multiple of 4 KiB" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_invalid_requests_fail_under_both_strategies(tmp_path, capsys):
    import json
    wl = tmp_path / "inv.toml"
    wl.write_text('[workload]\ndescription = "x"\nrepetitions = 1\n\n[[layout.memslot]]\ngpa = 0\n'
                  'size = "64M"\n\n[[phase]]\ngenerator = "mixed"\nrequests = 2000\n'
                  'invalid_fraction = 0.05\nsizes = ["4K", "64K"]\n')
    out = tmp_path / "res"
    assert main(["run", "-w", str(wl), "--no-progress", "--no-report", "--out", str(out)]) == 0
    capsys.readouterr()
    doc = json.loads((out / "results.json").read_text())
    n_invalid = doc["runs"][0]["phases"]["phase1"]["invalid_requests"]
    assert n_invalid > 50
    for r in doc["runs"]:
        assert r["metrics"]["failed_conversions"] == n_invalid, r["strategy"]
