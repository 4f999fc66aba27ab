"""Progress display for long runs: which workload, how far, time left.

    with progress(total=n_steps, desc="w1/in-place", unit="op", enabled=None) as bar:
        bar.update(k)
        bar.set_description("w2/dual")

enabled=None means automatic: shown only when stderr is a terminal and CI is not "true"
(logs of CI jobs and redirected runs must not fill with carriage-return lines).
enabled=True forces it on, enabled=False off.  When disabled, the returned object accepts the
same calls and does nothing, so callers never branch on it.
"""
import os
import sys
from contextlib import contextmanager


def progress_enabled(enabled: bool | None = None) -> bool:
    """The automatic rule, or the caller's explicit choice."""
    if enabled is not None:
        return bool(enabled)
    if os.environ.get("CI", "").strip().lower() == "true":
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):    # replaced or closed stderr
        return False


class _NullBar:
    """Same interface as the tqdm bar; counts so callers/tests can still read .n."""

    def __init__(self, total, desc):
        self.total = total
        self.desc = desc
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix_str(self, s: str) -> None:
        pass

    def write(self, s: str) -> None:
        print(s, file=sys.stderr)


class _TqdmBar:
    def __init__(self, bar):
        self._bar = bar

    @property
    def n(self):
        return self._bar.n

    @n.setter
    def n(self, value):
        self._bar.n = value

    @property
    def total(self):
        return self._bar.total

    @total.setter
    def total(self, value):
        # a new phase (next workload or repetition) with its own length: ETA starts over
        self._bar.reset(total=value)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_description(self, desc: str) -> None:
        self._bar.set_description(desc, refresh=True)

    def set_postfix_str(self, s: str) -> None:
        self._bar.set_postfix_str(s, refresh=True)

    def write(self, s: str) -> None:
        # tqdm.write keeps the bar intact below the printed line
        self._bar.write(s, file=sys.stderr)


@contextmanager
def progress(total: int | None, desc: str = "", unit: str = "it", enabled: bool | None = None):
    """Context manager yielding a bar with .update(n), .set_description(s), .write(s)."""
    if not progress_enabled(enabled):
        yield _NullBar(total, desc)
        return
    from tqdm import tqdm
    # ETA smoothing 0.1: conversion phases differ in speed, so a short memory misleads
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
               smoothing=0.1, leave=False, mininterval=0.5)
    try:
        yield _TqdmBar(bar)
    finally:
        bar.close()


def add_progress_arguments(parser) -> None:
    """--progress / --no-progress (default: automatic, see progress_enabled)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                   help="show a progress bar even when not on a terminal")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                   help="never show a progress bar")
