"""sysfs/proc settings are restored on close, on exceptions and on SIGINT (root only)."""
import os
import signal

import pytest

from bench.host import sysfs

SHMEM = sysfs.THP_SHMEM_ENABLED
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="writing sysfs needs root"),
    pytest.mark.skipif(not os.access(SHMEM, os.W_OK), reason=f"{SHMEM} not writable here"),
]


def other_value(path):
    cur = sysfs.read_setting(path)
    return "advise" if cur != "advise" else "never"


def test_restored_on_close_and_change_recorded():
    before = sysfs.read_setting(SHMEM)
    new = other_value(SHMEM)
    s = sysfs.Settings()
    s.set(SHMEM, new)
    assert sysfs.read_setting(SHMEM) == new
    assert s.changed[SHMEM] == {"from": before, "to": new}
    s.set(SHMEM, before)               # a second write keeps the first original
    s.set(SHMEM, new)
    s.close()
    assert sysfs.read_setting(SHMEM) == before


def test_restored_on_exception():
    before = sysfs.read_setting(SHMEM)
    with pytest.raises(RuntimeError):
        with sysfs.Settings() as s:
            s.set(SHMEM, other_value(SHMEM))
            raise RuntimeError("boom")
    assert sysfs.read_setting(SHMEM) == before


def test_restored_on_sigint_then_keyboardinterrupt():
    before = sysfs.read_setting(SHMEM)
    handler_before = signal.getsignal(signal.SIGINT)
    s = sysfs.Settings()
    s.set(SHMEM, other_value(SHMEM))
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)   # the handler runs before kill() returns to us
    assert sysfs.read_setting(SHMEM) == before
    assert s.closed
    assert signal.getsignal(signal.SIGINT) == handler_before


def test_hugepage_pool_grow_and_restore():
    pool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    before = int(sysfs.read_setting(pool))
    with sysfs.Settings() as s:
        free = sysfs.ensure_hugepages(s, 2)
        assert free >= 2
    assert int(sysfs.read_setting(pool)) == before


# A signal that lands while a setting and its journal entry are being written or restored
# must wait for that step to end: run in the middle, the handler's own restore would find
# the registry half-updated and its locks held by the code it interrupted (it hung there).
INTERRUPTED_STEP = """
import os, signal, sys
from bench.host import state, sysfs
step, path, value = sys.argv[1:]
hooked = getattr(state, "journal_" + step)
def interrupted(*a):
    hooked(*a)
    os.kill(os.getpid(), signal.SIGTERM)      # the handler is due before this step ends
setattr(state, "journal_" + step, interrupted)
signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
s = sysfs.Settings()
try:
    s.set(path, value)
    s.close()
except SystemExit as e:
    print("exit", e.code, s.closed)
"""


@pytest.mark.parametrize("step", ["record", "forget"])
def test_a_signal_while_a_setting_is_written_or_restored_waits_then_restores(step):
    from bench.host.state import host_lock, journal_path
    import subprocess
    import sys
    before = sysfs.read_setting(SHMEM)
    out = subprocess.run([sys.executable, "-c", INTERRUPTED_STEP, step, SHMEM, other_value(SHMEM)],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["exit", "143", "True"], (out.stdout, out.stderr)
    with host_lock(timeout=120):
        assert sysfs.read_setting(SHMEM) == before
        assert not journal_path().exists()
