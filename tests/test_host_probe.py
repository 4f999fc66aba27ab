"""Probe: consistent with the kernel everywhere, exact on this project's machine kind."""
import json
import os
import platform

import pytest

from bench.host import probe as probe_mod

have_kvm = os.path.exists("/dev/kvm") and os.geteuid() == 0


@pytest.fixture(scope="module")
def p():
    from bench.host.build_helper import ensure_built
    ensure_built()
    return probe_mod.probe()


def test_probe_without_kvm_says_so(monkeypatch):
    monkeypatch.setattr(probe_mod, "KVM_PATH", "/nonexistent/kvm")
    out = probe_mod.probe()
    assert out["kvm"]["usable"] is False
    assert "does not exist" in out["kvm"]["reason"]
    for strat in ("in-place", "dual"):
        steps = out["steps"][strat]
        assert steps["NOP"]["fidelity"] == "native"
        conv = "GMEM_SET_ATTRS" if strat == "in-place" else "VM_SET_ATTRS"
        assert steps[conv]["fidelity"] == "unavailable"
    assert "NOT usable" in probe_mod.format_table(out)


def test_host_target_refuses_clearly_without_kvm(monkeypatch):
    from bench.errors import InputError
    from bench.host.backend import HostTarget
    from bench.layout import Layout, Memslot
    from bench.strategies import InPlace
    monkeypatch.setattr(probe_mod, "KVM_PATH", "/nonexistent/kvm")
    with pytest.raises(InputError, match="does not exist"):
        HostTarget(Layout(memslots=(Memslot(0, 1 << 21),)), InPlace(), {})


@pytest.mark.skipif(not have_kvm, reason="needs root and /dev/kvm")
def test_probe_consistent_with_kernel(p):
    f = p["features"]
    caps = f["caps"]
    types = caps["VM_TYPES"]
    from bench.host.kvm import VM_TYPES
    for t, name in VM_TYPES.items():
        assert (f["vm_types_created"][name] == "ok") == bool(types & (1 << t)), name
    for flags, res in f["gmem_flags_created"].items():
        assert (res == "ok") == (flags & ~caps["GUEST_MEMFD_FLAGS"] == 0)
    if caps["GUEST_MEMFD_FLAGS"] & 1:
        assert f["mmap_rules"]["flags=0"] == "mmap: ENODEV"
        assert f["mmap_rules"]["MMAP|INIT_SHARED"] == "host read: ok"
    native = f["attrs2"]["native"]
    assert p["steps"]["in-place"]["GMEM_SET_ATTRS"]["fidelity"] == ("native" if native else "emulated")
    for strat in p["steps"].values():
        for v in strat.values():
            assert v["fidelity"] in ("native", "emulated", "unavailable") and v["reason"]


@pytest.mark.skipif(not have_kvm or not platform.release().startswith("6.18"),
                    reason="exact values are those of this project's 6.18 machines (host-costs.md)")
def test_probe_matches_host_costs_reference(p):
    caps = p["features"]["caps"]
    assert caps["USER_MEMORY2"] == 1
    assert caps["MEMORY_ATTRIBUTES"] == 0
    assert caps["GUEST_MEMFD"] == 1
    assert caps["VM_TYPES"] == 0x1
    assert caps["GUEST_MEMFD_FLAGS"] == 0x3
    assert caps["GUEST_MEMFD_MEMORY_ATTRIBUTES@249"] == 0
    assert caps["GUEST_MEMFD_MEMORY_ATTRIBUTES@250"] == 0
    assert p["features"]["vm_types_created"]["DEFAULT"] == "ok"
    assert all(p["features"]["vm_types_created"][n] == "EINVAL"
               for n in ("SW_PROTECTED", "SEV", "SEV_ES", "SNP", "TDX"))
    assert p["features"]["mmap_rules"]["MMAP"] == "host read: SIGBUS"
    assert p["features"]["attrs2"]["native"] is False
    assert "ENOTTY" in p["features"]["attrs2"]["reason"]
    assert p["features"]["vm_attrs"]["native"] is False
    assert p["steps"]["in-place"]["GMEM_SET_ATTRS"]["fidelity"] == "emulated"
    assert p["steps"]["dual"]["GMEM_PUNCH"]["fidelity"] == "native"
    assert p["host"]["page_size"] == 4096


@pytest.mark.skipif(not have_kvm, reason="needs root and /dev/kvm")
def test_cli_probe_json_and_table(capsys):
    from bench.cli import main
    assert main(["probe", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kvm"]["usable"] is True and "steps" in out
    assert main(["probe"]) == 0
    text = capsys.readouterr().out
    assert "GUEST_MEMFD_FLAGS" in text and "GMEM_SET_ATTRS" in text
