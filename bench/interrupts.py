"""How gmembench stops on a signal.

SIGINT (Ctrl-C), SIGTERM and SIGHUP (a dropped ssh session) unwind the stack: every
`finally` runs, so host settings are restored, repetition workers stopped and partial
results removed, and the process exits 128 + signal (130 for Ctrl-C).  A signal the
process was started with ignored (nohup, a background job) stays ignored - except while
host settings are changed: bench.host.sysfs then restores them on any of the three.

A few steps must not be cut in half by that unwinding: writing a host setting together
with its journal entry, restoring it, handing a repetition to a new worker process.  They
run inside `uninterrupted()`: a signal that arrives there is noted, and acted on as soon
as the step is complete.  (A handler run in the middle would also find the step's locks
held by the very code it interrupted.)  Only the main thread runs Python signal handlers,
so only the main thread defers.

A handler's exception can be lost: C code that calls back into Python and then clears
whatever error it got swallows it, and the signal with it.  numpy does this when an
array is compared with an enum member (it looks up `__array_ufunc__` on the member's
class, which under Python 3.11 runs EnumType.__getattr__, and clears any error: a signal
handled there vanished, and the run went on to exit 0).  So the signal acted on is also
remembered, and a run calls check() where it makes progress - before each repetition
and chunk of steps, before writing results, and when a command ends - to act on it if
its exception never arrived.
"""
import os
import signal
import threading
from contextlib import contextmanager

_depth = 0                   # nesting of uninterrupted() in the main thread
_pending: list[int] = []     # signals noted meanwhile, in arrival order
_received: int | None = None  # the signal acted on last (check() acts on it again)


def exit_for(signum: int):
    """Unwind as `signum` asks: KeyboardInterrupt for SIGINT, else exit 128 + signum."""
    global _received
    _received = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def check() -> None:
    """Where work makes progress (never in cleanup code): if a signal was acted on but
    its exception was swallowed on the way, raise it again."""
    if _received is not None:
        exit_for(_received)


def forget() -> None:
    """A new run starts: a signal acted on before it is done with (whoever caught its
    exception - a test, say - handled it)."""
    global _received
    _received = None


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
