"""Where a run's results go, checked before the run and never lost after it.

A run writes into `.<name>.partial` next to its destination - a directory this process
creates exclusively (mkdir fails if it exists), so two runs can never share one, and a run
only ever deletes its own.  The destination is checked up front (not a file, not a
dangling symlink, not a mount point or the current directory, not under a regular file,
writable, enough free space), so a mistake costs nothing.  If the end still fails (the
disk filled up, another process created the destination), the finished run is kept -
in the partial directory, or failing that under the temporary directory - and the error
says where.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import shutil
import tempfile
from pathlib import Path

from bench.errors import InputError

OWNER_FILE = ".owner"          # pid of the run writing a partial directory
MIN_FREE = 16 << 20            # results.json, report and plots of a small run


class OutputError(InputError):
    """The results destination is unusable (exit 2, one line)."""


def _why(e: OSError) -> str:
    return {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.ENOSPC: "no space left on device",
            errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a path component is not a directory",
            }.get(e.errno, e.strerror or str(e))


def _file_ancestor(p: Path) -> Path | None:
    for a in [p, *p.parents]:
        if a.exists() and not a.is_dir():
            return a
    return None


def check_destination(out: Path, need_bytes: int = MIN_FREE) -> None:
    """Refuse a destination the run could not be renamed into, with the reason."""
    raw = str(out)
    if out.name in ("", ".", "..") or raw.rstrip("/") in ("", ".", ".."):
        raise OutputError(f"--out {raw}: expected a new or empty directory to create, not "
                          f"{'the current directory' if out.name in ('', '.') else raw}")
    if out.is_symlink() and not out.exists():
        raise OutputError(f"--out {raw}: is a dangling symbolic link (to {os.readlink(out)})")
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"--out {raw}: exists and is not a directory")
        if os.path.ismount(out):
            raise OutputError(f"--out {raw}: is a mount point; results are renamed into place "
                              f"when complete, which cannot replace a mount point (give a "
                              f"directory inside it)")
        if any(out.iterdir()):
            raise OutputError(f"--out {raw}: results directory exists and is not empty")
    f = _file_ancestor(out.parent)
    if f is not None:
        raise OutputError(f"--out {raw}: {f} is a regular file, not a directory")
    base = next((a for a in [out.parent, *out.parent.parents] if a.exists()), Path("/"))
    if not os.access(base, os.W_OK | os.X_OK):
        try:
            ro = os.statvfs(base).f_flag & os.ST_RDONLY
        except OSError:
            ro = False
        raise OutputError(f"--out {raw}: cannot create it in {base}: "
                          + ("read-only file system" if ro else "permission denied"))
    try:
        st = os.statvfs(base)
    except OSError:
        return
    if st.f_flag & os.ST_RDONLY:
        raise OutputError(f"--out {raw}: cannot create it in {base}: read-only file system")
    free = st.f_bavail * st.f_frsize
    if free < need_bytes:
        raise OutputError(f"--out {raw}: {base} has {free >> 20} MiB free; this run's results "
                          f"need about {need_bytes >> 20} MiB")


def new_run_id(backend: str) -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + f"-{backend}"


def _partial(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _owner_alive(partial: Path) -> int | None:
    try:
        pid = int((partial / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def claim(out_dir, backend: str) -> tuple[Path, Path]:
    """(destination, partial directory created by and for this run).  Without out_dir the
    destination is results/<run-id>, made unique (-2, -3, ...) against runs started in the
    same second.  With out_dir a partial directory of another run is never touched."""
    if out_dir is not None:
        out = Path(out_dir)
        check_destination(out)
        tmp = _partial(out)
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except FileExistsError:
            pid = _owner_alive(tmp)
            who = (f"another run (pid {pid}) is writing it" if pid else
                   "left by a run that did not finish: remove it or choose another --out")
            raise OutputError(f"--out {out}: {tmp} exists ({who})") from None
        except OSError as e:
            raise OutputError(f"--out {out}: cannot create {tmp}: {_why(e)}") from None
    else:
        base = Path("results")
        run_id = new_run_id(backend)
        check_destination(base / run_id)
        for n in range(1, 1000):
            out = base / (run_id if n == 1 else f"{run_id}-{n}")
            tmp = _partial(out)
            if out.exists():
                continue
            try:
                tmp.parent.mkdir(parents=True, exist_ok=True)
                tmp.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise OutputError(f"cannot create {tmp}: {_why(e)}") from None
        else:
            raise OutputError(f"no free run id under {base} for {run_id}")
    (tmp / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return out, tmp


def discard(tmp: Path) -> None:
    """Remove this run's own partial directory (interrupted or failed before the end)."""
    shutil.rmtree(tmp, ignore_errors=True)


def finish(tmp: Path, out: Path, write) -> Path:
    """write(directory) puts the last files in place, then the partial directory becomes
    `out`.  On failure the finished run is kept (the partial directory, or a copy under
    the temporary directory if it cannot be written) and OutputError says where."""
    try:
        write(tmp)
        try:
            (tmp / OWNER_FILE).unlink()
        except FileNotFoundError:
            pass
        if out.exists() and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        os.rename(tmp, out) if not out.exists() else _raise_exists(out)
        return out
    except OSError as e:
        kept = tmp
        try:
            write(tmp)
        except OSError:
            kept = Path(tempfile.mkdtemp(prefix=f"gmembench-{out.name}-"))
            try:
                shutil.copytree(tmp, kept, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns(OWNER_FILE))
                write(kept)
                discard(tmp)
            except OSError as e2:
                raise OutputError(f"the run finished but its results could not be written "
                                  f"to {out} ({_why(e)}) nor to {kept} ({_why(e2)})") from None
        raise OutputError(f"the run finished but could not be put in {out} ({_why(e)}); "
                          f"its results are kept in {kept}") from None


def _raise_exists(out: Path):
    raise OSError(errno.EEXIST, f"{out} was created by someone else during the run")
