"""How gmembench stops on a signal.

SIGINT (Ctrl-C), SIGTERM and SIGHUP (a dropped ssh session) unwind the stack: every
`finally` runs, so host settings are restored, repetition workers stopped and partial
results removed, and the process exits 128 + signal (130 for Ctrl-C).  A signal the
process was started with ignored (nohup, a background job) stays ignored.

A few steps must not be cut in half by that unwinding: writing a host setting together
with its journal entry, restoring it, handing a repetition to a new worker process.  They
run inside `uninterrupted()`: a signal that arrives there is noted, and acted on as soon
as the step is complete.  (A handler run in the middle would also find the step's locks
held by the very code it interrupted.)  Only the main thread runs Python signal handlers,
so only the main thread defers.
"""
import os
import signal
import threading
from contextlib import contextmanager

_depth = 0                   # nesting of uninterrupted() in the main thread
_pending: list[int] = []     # signals noted meanwhile, in arrival order


def exit_for(signum: int):
    """Unwind as `signum` asks: KeyboardInterrupt for SIGINT, else exit 128 + signum."""
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def deferred(signum: int) -> bool:
    """Every handler asks this first: True (and the signal is noted) inside uninterrupted()."""
    if _depth:
        _pending.append(signum)
        return True
    return False


def on_signal(signum, frame):
    """The plain handler: unwind, unless a step in progress must end first."""
    if not deferred(signum):
        exit_for(signum)


@contextmanager
def uninterrupted():
    """Run the block whole; a signal that arrives meanwhile is handled when it ends, by the
    handler in force then (or, if there is none, by the signal's default action)."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending:
            signum = _pending[0]
            _pending.clear()
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, None)
            elif handler != signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)


def install() -> None:
    """on_signal for SIGINT, SIGTERM and SIGHUP, unless the process was started with one of
    them ignored or something else already handles it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler, None):
            signal.signal(sig, on_signal)
