"""Ctrl-C and SIGTERM, at any moment: stop, clean up, one line, exit 130/143, nothing partial at the output.

Python runs a signal handler only when control is back in the interpreter, and TVM's build calls back into Python
from C++: an exception raised there can be swallowed or turned into a RuntimeError. So the handler both raises
:class:`Interrupted` and *records* the signal, and the two places that decide the outcome ask the record: the
staged writers (:mod:`edgec.toolchain.writes`) refuse to move an output into place after a signal, and the CLI
turns any failure (or a command that completed anyway) into the interrupted exit. The record is process state by
nature (a signal belongs to the process); it lives here, set only by the handler, reset by :func:`handled`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """Raised by the handler; a KeyboardInterrupt so that code which stops cleanly on Ctrl-C (tuning) does here."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum: int, _frame: object) -> None:
    first = not _received
    _received.append(signum)
    if first:  # a second signal during clean-up is recorded, not raised: clean-up must finish
        raise Interrupted(signum)


def received() -> int | None:
    """The first signal received inside :func:`handled`, or None."""
    return _received[0] if _received else None


def exit_code(signum: int) -> int:
    """The shell convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


def raise_if_interrupted() -> None:
    """Called just before an output is moved into place: an interrupted run writes nothing."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Install the handlers for the block (main thread only: Python allows nothing else), then restore them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {sig: signal.signal(sig, _handler) for sig in HANDLED}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold the signals back for a short block that must not be cut in two (moving an output into place,
    removing a staging folder); one that arrives meanwhile is delivered, and raises, right after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def decided() -> None:
    """The command's output is in place: drop signals from now on, but only inside :func:`handled` (a library
    caller's own handlers are never touched). Call it with the signals blocked so a pending one is discarded."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(HANDLED[0]) is _handler:
        ignore_after_finish()


def ignore_after_finish() -> None:
    """Ignore the signals from now on: for a process whose outcome is decided and which is about to exit."""
    if threading.current_thread() is threading.main_thread():
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_IGN)
