"""The host is shared state: one gmembench at a time touches or measures it, and every
setting it changes is journalled before it is changed.

host_lock()      an exclusive flock on <state dir>/host.lock for any run that changes host
                 settings or measures the host; a second run waits for it (saying so),
                 up to $GMEMBENCH_LOCK_TIMEOUT seconds (600), then exits 2.  Spawned
                 repetition workers run under their parent's lock ($GMEMBENCH_HOST_LOCK).
journal          <state dir>/host-state.json: the original value of every sysfs/proc file
                 a run changes, written (fsync) BEFORE the change, removed when restored.
recover()        run on taking the lock: a journal left behind (the run was SIGKILLed, the
                 machine lost power) is restored and reported; if it cannot be, the run is
                 refused with what to do.  `gmembench restore` does the same on demand.

The state dir is $GMEMBENCH_STATE_DIR, else /run/gmembench when writable (root), else
$XDG_RUNTIME_DIR/gmembench or <tmp>/gmembench-<uid>.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from bench.errors import InputError

LOCK_ENV = "GMEMBENCH_HOST_LOCK"
_held = 0                      # nesting depth of host_lock() in this process
_lock_fd: int | None = None
_mutex = threading.RLock()


def state_dir() -> Path:
    env = os.environ.get("GMEMBENCH_STATE_DIR")
    if env:
        d = Path(env)
    elif os.geteuid() == 0 or os.access("/run", os.W_OK):
        d = Path("/run/gmembench")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "gmembench"
    else:
        d = Path(tempfile.gettempdir()) / f"gmembench-{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True, mode=0o755)
    return d


def journal_path() -> Path:
    return state_dir() / "host-state.json"


# ---- journal ---------------------------------------------------------------------------------

@contextmanager
def _journal_locked():
    """Read-modify-write of the journal, serialised between the parent and its workers."""
    d = state_dir()
    fd = os.open(d / "host-state.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield journal_path()
    finally:
        os.close(fd)


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise InputError(f"host state journal unreadable ({e}): check the settings it may "
                         f"list by hand, then remove it", str(path)) from None
    return doc if isinstance(doc, dict) else {}


def _write(path: Path, doc: dict) -> None:
    if not doc.get("settings"):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def journal_record(path: str, original: str) -> None:
    """Remember `path`'s original value (the first one recorded wins) before it changes."""
    with _journal_locked() as jp:
        doc = _read(jp)
        doc.setdefault("pid", int(os.environ.get(LOCK_ENV, "0") or 0) or os.getpid())
        doc.setdefault("started", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        doc.setdefault("command", " ".join(["gmembench"] + sys.argv[1:]))
        doc.setdefault("settings", {}).setdefault(path, original)
        _write(jp, doc)


def journal_forget(path: str) -> None:
    """`path` is back to its original value."""
    with _journal_locked() as jp:
        doc = _read(jp)
        if path in doc.get("settings", {}):
            del doc["settings"][path]
            _write(jp, doc)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(echo=print) -> list[str]:
    """Restore what a run that died left changed (call with the host lock held).  Returns
    the lines reported; raises InputError if something cannot be restored."""
    from bench.host.sysfs import _write as write_setting, read_setting
    with _journal_locked() as jp:
        doc = _read(jp)
        left = doc.get("settings") or {}
        if not left:
            return []
        owner = int(doc.get("pid", 0) or 0)
        # the lock is ours, so whoever wrote this journal is gone
        lines, failed = [], []
        for path, original in list(left.items()):
            try:
                now = read_setting(path)
                if now != original:
                    write_setting(path, original)
                lines.append(f"{path}: {now} -> {original}")
                del left[path]
            except OSError as e:
                failed.append(f"{path} (to {original!r}: {e.strerror or e})")
        _write(jp, doc)
    head = (f"gmembench: restored host settings left changed by a run that did not finish "
            f"(pid {owner}, started {doc.get('started')}, `{doc.get('command')}`):")
    echo(head, file=sys.stderr) if echo is print else echo(head)
    for ln in lines:
        echo(f"  {ln}", file=sys.stderr) if echo is print else echo(f"  {ln}")
    if failed:
        raise InputError(f"could not restore host settings left by pid {owner}: "
                         f"{'; '.join(failed)}; set them by hand, then remove the journal",
                         str(jp))
    return lines


# ---- the lock --------------------------------------------------------------------------------

def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode(errors="replace").strip() or "another gmembench"
    except OSError:
        return "another gmembench"


@contextmanager
def host_lock(timeout: float | None = None, echo=None):
    """Exclusive use of the host for this process (and the workers it spawns); re-entrant.
    Restores leftovers of a dead run on entry."""
    global _held, _lock_fd
    with _mutex:
        inherited = os.environ.get(LOCK_ENV)
        if _held or (inherited and _pid_alive(int(inherited)) and int(inherited) == os.getppid()):
            _held += 1
            try:
                yield
            finally:
                _held = max(0, _held - 1)
            return
        if timeout is None:
            timeout = float(os.environ.get("GMEMBENCH_LOCK_TIMEOUT", "600"))
        path = state_dir() / "host.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder(fd)
                msg = (f"gmembench: waiting for the host, in use by {who} (lock {path}; "
                       f"up to {timeout:.0f} s)")
                print(msg, file=sys.stderr, flush=True) if echo is None else echo(msg)
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > deadline:
                            raise InputError(f"the host is in use by {who} (lock {path}); "
                                             f"gave up after {timeout:.0f} s") from None
                        time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}: {' '.join(['gmembench'] + sys.argv[1:])}\n".encode())
            recover()
        except BaseException:
            os.close(fd)
            raise
        _lock_fd, _held = fd, 1
        old_env = os.environ.get(LOCK_ENV)
        os.environ[LOCK_ENV] = str(os.getpid())
        try:
            yield
        finally:
            _held = 0
            if old_env is None:
                os.environ.pop(LOCK_ENV, None)
            else:
                os.environ[LOCK_ENV] = old_env
            _lock_fd = None
            os.close(fd)           # releases the flock


def lock_held() -> bool:
    inherited = os.environ.get(LOCK_ENV)
    return bool(_held) or bool(inherited and int(inherited) == os.getppid())


# ---- gmembench restore -----------------------------------------------------------------------

def add_restore_arguments(parser) -> None:
    parser.add_argument("--wait", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds for a running gmembench to finish (0)")


def cli_restore(args) -> int:
    jp = journal_path()
    if not jp.exists():
        print(f"nothing to restore: no host state journal ({jp})")
        return 0
    with host_lock(timeout=args.wait):    # restores what the journal lists, line by line
        pass
    print(f"done: {jp} is gone, nothing is left to restore")
    return 0
