"""Settings written to sysfs/procfs for a run, each restored afterwards.

A Settings registry remembers the original value of every file it writes and puts them all
back on close(), when its `with` block exits (also on exceptions), on SIGINT/SIGTERM/SIGHUP
(the handlers restore, then raise KeyboardInterrupt / exit as the signal would), and at
interpreter exit as a last resort.  Changing a setting and restoring one are each done
whole (bench.interrupts.uninterrupted): a signal in the middle waits for the end of it.
Values written are recorded for the results metadata.
Each original value is journalled (bench.host.state) before the first write, under the
host lock, so that what a SIGKILL leaves changed is restored by the next run.
"""
import atexit
import re
import signal
import threading

from bench import interrupts

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_SHMEM_ENABLED = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
THP_DEFRAG = "/sys/kernel/mm/transparent_hugepage/defrag"
NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages"

_live: list["Settings"] = []
_lock = threading.Lock()
_prev_handlers: dict[int, object] = {}


def read_setting(path: str) -> str:
    """The current value; for bracketed choice files ("always [madvise] never") the chosen one."""
    with open(path, encoding="ascii") as f:
        text = f.read().strip()
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def _write(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def restore_all() -> None:
    for s in list(_live):
        s.close()


def _on_signal(signum, frame):
    if interrupts.deferred(signum):      # a setting is being changed: restore once it is
        return
    prev = _prev_handlers.get(signum)
    restore_all()
    if callable(prev):
        prev(signum, frame)
    else:
        interrupts.exit_for(signum)


def _install_handlers() -> None:
    # Handlers can only be set from the main thread; elsewhere atexit/close still restore.
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        cur = signal.getsignal(sig)
        if cur is _on_signal:
            continue
        _prev_handlers[sig] = cur if cur not in (signal.SIG_DFL, signal.SIG_IGN, None) else None
        if sig == signal.SIGINT and cur is signal.default_int_handler:
            _prev_handlers[sig] = None     # exit_for raises KeyboardInterrupt
        signal.signal(sig, _on_signal)


def _uninstall_handlers() -> None:
    if _live or threading.current_thread() is not threading.main_thread():
        return
    for sig, prev in list(_prev_handlers.items()):
        if signal.getsignal(sig) is _on_signal:
            if prev is None:
                prev = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            signal.signal(sig, prev)
        del _prev_handlers[sig]


atexit.register(restore_all)


class Settings:
    """Registry of changed settings.  set() writes; close() restores in reverse order."""

    def __init__(self):
        self._original: list[tuple[str, str]] = []   # (path, original value), in write order
        self.changed: dict[str, dict] = {}            # path -> {"from": old, "to": new}
        self.closed = False
        self._host = None                             # the host lock, taken on first set()

    def set(self, path: str, value) -> None:
        from bench.host import state
        value = str(value)
        if self._host is None and not state.lock_held():
            self._host = state.host_lock()
            self._host.__enter__()
        old = read_setting(path)
        if old == value:
            return
        with interrupts.uninterrupted(), _lock:
            # the handlers first: from here on a signal restores what this registry holds
            if self not in _live:
                _live.append(self)
                _install_handlers()
            if path not in dict(self._original):
                state.journal_record(path, old)      # before the change, on disk
                self._original.append((path, old))
            _write(path, value)
            self.changed[path] = {"from": dict(self._original)[path], "to": read_setting(path)}

    def close(self) -> None:
        from bench.host import state
        errors, host = [], None
        try:
            with interrupts.uninterrupted():
                with _lock:
                    for path, old in reversed(self._original):
                        try:
                            _write(path, old)
                            state.journal_forget(path)
                        except OSError as e:   # keep restoring the others (the journal keeps it)
                            errors.append(f"{path}: {e}")
                    self._original.clear()
                    self.closed = True
                    if self in _live:
                        _live.remove(self)
                    host, self._host = self._host, None
                _uninstall_handlers()
        finally:
            if host is not None:
                host.__exit__(None, None, None)
        if errors:
            raise OSError("could not restore: " + "; ".join(errors))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def ensure_hugepages(settings: Settings, count: int, size_kb: int = 2048) -> int:
    """Make at least `count` free hugetlb pages of size_kb available; returns the free count."""
    base = f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB"
    free = int(read_setting(f"{base}/free_hugepages"))
    if free >= count:
        return free
    total = int(read_setting(f"{base}/nr_hugepages"))
    settings.set(f"{base}/nr_hugepages", total + (count - free))
    return int(read_setting(f"{base}/free_hugepages"))


HUGE_SIZES_KB = {"2m": 2048, "1g": 1048576}


def allocatable_huge_pages(cap_bytes: int) -> tuple[dict, str]:
    """How many 2M and 1G pages the kernel can still allocate, up to cap_bytes of each:
    grow each hugetlb pool by that many pages, count what the kernel managed to add (plus
    the pool's free pages), and restore the pool at once (a Settings registry of its own,
    so the memory is given back before anything else runs; signals restore too).
    Returns ({"2m": n | None, "1g": n | None}, note); None where the size is not offered
    or the pool cannot be written (not root)."""
    out: dict = {}
    notes = []
    for name, kb in HUGE_SIZES_KB.items():
        base = f"/sys/kernel/mm/hugepages/hugepages-{kb}kB"
        want = cap_bytes // (kb << 10)
        if name == "1g" and want == 0 and cap_bytes >= (512 << 20):
            want = 1
        if want <= 0:
            out[name] = None
            notes.append(f"{name}: not probed (cap {cap_bytes >> 20} MiB is below one page)")
            continue
        try:
            total = int(read_setting(f"{base}/nr_hugepages"))
            free = int(read_setting(f"{base}/free_hugepages"))
        except OSError as e:
            out[name] = None
            notes.append(f"{name}: pool not readable ({e.strerror})")
            continue
        s = Settings()
        try:
            s.set(f"{base}/nr_hugepages", total + want)
            got = int(read_setting(f"{base}/nr_hugepages")) - total
        except OSError as e:
            out[name] = None
            notes.append(f"{name}: pool not writable ({e.strerror})")
            continue
        finally:
            s.close()
        out[name] = free + max(got, 0)
        notes.append(f"{name}: {out[name]}" + (" (the probe's cap: at least this many)"
                                               if got >= want else "")
                     + f", probed up to {want} new pages, pool restored to {total}")
    return out, "; ".join(notes)
