"""gmembench calibrate on the real kernel: a small subset, loadable by the cost loader."""
import os
import tomllib

import pytest

from bench.errors import InputError

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine"),
    pytest.mark.skipif(os.geteuid() != 0, reason="/dev/kvm needs root here"),
]


def test_calibrate_subset_writes_loadable_profile(tmp_path, capsys):
    from bench.cli import main
    from bench.costs import load_profile
    from bench.host import sysfs
    shmem_before = sysfs.read_setting(sysfs.THP_SHMEM_ENABLED)
    out = tmp_path / "cal.toml"
    rc = main(["calibrate", "-o", str(out), "--rounds", "2", "--warmup-mib", "0", "--no-progress",
               "--keys", "ioctl_entry,host_zap_pte,thp_split_shmem,attr_update"])
    assert rc == 0
    text = out.read_text()
    doc = tomllib.loads(text)
    prof = load_profile(str(out))             # the simulator's loader accepts it
    assert prof.name.startswith("calibrated-")
    m = doc["measured"]
    assert set(m) >= {"ioctl_entry", "host_zap_pte", "thp_split_shmem"}
    assert 20 < doc["costs"]["ioctl_entry"] < 100_000
    z = doc["costs"]["host_zap_pte"]
    assert 0 < z["4k"] < z["2m"]
    assert m["host_zap_pte"]["4k"]["p10"] <= m["host_zap_pte"]["4k"]["median"] <= m["host_zap_pte"]["4k"]["p90"]
    assert "# attr_update: not measured" in text       # unmeasurable here: default kept, said so
    assert "# fault_anon: not requested" in text
    assert not list(tmp_path.glob(".*tmp*"))           # atomic write left no temp file
    assert sysfs.read_setting(sysfs.THP_SHMEM_ENABLED) == shmem_before
    assert "wrote" in capsys.readouterr().out


def test_calibrate_rejects_unknown_key(tmp_path):
    from bench.host.calibrate import add_calibrate_arguments, cli_calibrate
    import argparse
    p = argparse.ArgumentParser()
    add_calibrate_arguments(p)
    with pytest.raises(InputError, match="unknown cost key"):
        cli_calibrate(p.parse_args(["-o", str(tmp_path / "x.toml"), "--keys", "nonsense"]))


def test_emulated_host_profile_zeroes_work_the_host_path_skips(tmp_path):
    from bench.cli import main
    from bench.costs import load_profile
    out = tmp_path / "emu.toml"
    assert main(["calibrate", "-o", str(out), "--rounds", "2", "--warmup-mib", "0",
                 "--no-progress", "--emulated-host", "--keys", "ioctl_entry"]) == 0
    prof = load_profile(str(out))
    assert prof.raw["attr_update"] == 0 and prof.raw["stage2_zap_4k"] == 0
    assert prof.raw["ioctl_entry"] > 0
    assert prof.raw["fault_gmem"] == load_profile().raw["fault_gmem"]   # not requested: default
