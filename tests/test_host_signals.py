"""A host run that is interrupted leaves the host as it found it (real kernel, root).

SIGINT, SIGTERM and SIGHUP, during the warm-up (in the parent) and during a measured
repetition (in a spawned worker): exit 128+signal, settings restored, no .partial, no
worker left behind.  SIGKILL cannot be handled: the next run finds the journal, restores
and says so.  Two host runs started together take turns (host lock) and leave the host
as it was.  shmem_enabled is set to "never" first, so the memfd-THP workload must change
it (to "advise") - that is the setting whose restoration is checked.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.host import sysfs
from bench.host.state import host_lock, journal_path

SHMEM = sysfs.THP_SHMEM_ENABLED
POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine"),
    pytest.mark.skipif(os.geteuid() != 0, reason="host runs and sysfs writes need root"),
    pytest.mark.skipif(not os.access(SHMEM, os.W_OK), reason=f"{SHMEM} not writable here"),
]

WORKLOAD = """\
[workload]
name = "{name}"
description = "host signal test: dual backing on {backing}/{page}"
repetitions = 1
[layout]
shared_backing = "{backing}"
shared_page = "{page}"
[[layout.memslot]]
gpa = 0
size = "64M"
[[phase]]
generator = "dma-churn"
buffers = 12000
"""
FAST = ["-r", "1", "-p", "warmup_bytes=0", "-p", "overhead_reps=2", "-p", "overhead_pairs=1",
        "-p", "series_points=4",
        "--no-progress", "--no-report"]


@pytest.fixture
def baseline():
    """shmem_enabled = never for the test (under the host lock), the host's own value back after."""
    with host_lock():
        own = sysfs.read_setting(SHMEM)
        sysfs._write(SHMEM, "never")
        pool = sysfs.read_setting(POOL)
    yield {"shmem": "never", "pool": pool}
    with host_lock():
        sysfs._write(SHMEM, own)


def host_state() -> dict:
    with host_lock(timeout=120):
        return {"shmem": sysfs.read_setting(SHMEM), "pool": sysfs.read_setting(POOL)}


def _default_dispositions():
    # the run starts as from an interactive shell, whatever launched this suite (a background
    # job or nohup starts it with SIGINT / SIGHUP ignored, and an ignored signal stays ignored)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start(tmp_path, name="hs", backing="memfd", page="thp", out="out", env=None, extra=()):
    wl = tmp_path / f"{name}.toml"
    wl.write_text(WORKLOAD.format(name=name, backing=backing, page=page))
    return subprocess.Popen([sys.executable, "-m", "bench", "run", "-b", "host", "-w", str(wl),
                             "--out", str(tmp_path / out), *FAST, *extra],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, preexec_fn=_default_dispositions)


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def journalled_by(pid: int, journal: Path | None = None) -> bool:
    try:
        doc = json.loads((journal or journal_path()).read_text())
    except (OSError, ValueError):
        return False
    return doc.get("pid") == pid and SHMEM in doc.get("settings", {})


def own_lines(stderr: str) -> list[str]:
    """The run's stderr without what it says about other runs on this machine: that it
    waited for the host lock, or restored what a killed run (another test suite's SIGKILL
    test, say) left changed."""
    out, other = [], False
    for ln in stderr.strip().splitlines():
        if ln.startswith(("gmembench: waiting for the host",
                          "gmembench: restored host settings left changed by a run that did "
                          "not finish")):
            other = True
        elif not (other and ln.startswith("  ")):
            other = False
            out.append(ln)
    return out


def stopped(pid: int) -> bool:
    try:
        return "\nState:\tT" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def in_phase(proc, phase: str, journal: Path | None = None) -> list[int] | None:
    """The run's alive children if it is in `phase` now: warm-up (the setting changed by this
    run, no child yet: the first repetition worker also starts a resource tracker that
    stays) or worker (the setting changed, children alive); else None."""
    kids = [k for k in children(proc.pid) if alive(k)]
    # changed by this run: its journal names it (not another process on this machine)
    changed = sysfs.read_setting(SHMEM) == "advise" and journalled_by(proc.pid, journal)
    return kids if changed and (phase == "warmup") == (not kids) else None


def signal_in(proc, phase: str, sig: int, timeout: float = 90,
              journal: Path | None = None) -> list[int]:
    """Send `sig` to the run while it is in `phase`; returns its children then.  What is
    seen from outside can be stale by the time a signal lands (this process may be
    descheduled between looking and sending), so the run is stopped (SIGSTOP), its phase
    checked again, the signal queued, and the run continued: the signal is delivered in
    the phase that was seen."""
    t0 = time.monotonic()
    seen_worker = False
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"run ended before {phase}: {proc.stderr.read()}")
        kids = [k for k in children(proc.pid) if alive(k)]
        seen_worker |= bool(kids)
        if phase == "warmup" and seen_worker:
            pytest.fail("the warm-up passed unseen (a worker already ran)")
        if in_phase(proc, phase, journal) is not None:
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                deadline = time.monotonic() + 10
                while not stopped(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.001)
                kids = in_phase(proc, phase, journal) if stopped(proc.pid) else None
                if kids is not None:
                    os.kill(proc.pid, sig)
                    return kids
            finally:
                os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.005)
    pytest.fail(f"run never reached {phase}")


@pytest.mark.parametrize("phase", ["warmup", "worker"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupted_host_run_restores_and_leaves_nothing(tmp_path, baseline, phase, sig):
    proc = start(tmp_path)
    kids = signal_in(proc, phase, sig)
    rc = proc.wait(60)
    err = own_lines(proc.stderr.read())
    assert rc == 128 + sig, (rc, err)
    assert len(err) == 1 and "Traceback" not in err[0], err
    deadline = time.monotonic() + 10
    while any(alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(k) for k in kids), "a repetition worker outlived its parent"
    assert host_state() == baseline
    assert not journal_path().exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hs.toml"]     # no out, no .partial


def test_after_sigkill_the_next_run_restores_and_says_so(tmp_path, baseline):
    proc = start(tmp_path, out="killed")
    signal_in(proc, "warmup", signal.SIGKILL)
    proc.wait(30)
    assert sysfs.read_setting(SHMEM) == "advise"          # left changed: it could not help it
    assert journal_path().exists()
    nxt = start(tmp_path, name="next", backing="anon", page="4k", out="next")
    out, err = nxt.communicate(timeout=120)
    assert nxt.returncode == 0, err
    # whoever takes the host lock next restores the journal and says so: our next run,
    # unless another gmembench on this machine (another test suite's host target, which
    # also takes the lock) got it first - the host is restored either way
    if "restored host settings left changed by a run that did not finish" in err:
        assert f"{SHMEM}: advise -> never" in err
    assert host_state() == baseline
    assert not journal_path().exists()


def test_two_host_runs_at_once_take_turns_and_leave_the_host_as_it_was(tmp_path, baseline):
    a = start(tmp_path, name="thp", backing="memfd", page="thp", out="a")
    b = start(tmp_path, name="hugetlb", backing="anon", page="hugetlb", out="b")
    (_, ea), (_, eb) = a.communicate(timeout=180), b.communicate(timeout=180)
    assert a.returncode == 0 and b.returncode == 0, (ea, eb)
    assert "waiting for the host" in ea + eb             # one of them waited for the other
    assert host_state() == baseline
    assert not journal_path().exists()
    assert (tmp_path / "a" / "results.json").exists() and (tmp_path / "b" / "results.json").exists()
