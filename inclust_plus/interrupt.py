"""Ctrl-C and SIGTERM as a stop request that the long loops check, never as an exception mid-frame.

Python's default SIGINT handler (and a SIGTERM handler that raises) throws the exception wherever
the main thread happens to be. When that is inside a weakref callback or a ``__del__`` (the
thread pool of the run loop and h5py's objects run such callbacks all the time), Python prints
"Exception ignored" and drops it: the run went on, exited 0 and replaced the output. So the
handler here only sets a flag; the loops (batches, chunks, epochs, graphs) and the final rename of
every output call :func:`check`, which raises :class:`Interrupted` from ordinary code, where the
temporary output is removed and the command exits with :data:`EXIT_INTERRUPTED`.

A second Ctrl-C/SIGTERM while the first is being honoured raises KeyboardInterrupt at once (for a
call that does not return); the temporary file it may leave carries the pid and is removed by the
next run to that output (:func:`inclust_plus.atomic.remove_stale`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_INTERRUPTED = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = threading.Event()
_received: list[str] = []


class Interrupted(Exception):
    """A stop was requested (Ctrl-C or SIGTERM); raised by :func:`check` at a safe point."""

    def __init__(self, name: str = "a stop request"):
        self.signal_name = name
        super().__init__(f"interrupted by {name}")


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    if _requested.is_set():
        raise KeyboardInterrupt  # the second request: the user wants out now
    _received.append(name)
    _requested.set()


def requested() -> bool:
    """Whether a stop was requested (cheap: loops call it per batch)."""
    return _requested.is_set()


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested."""
    if _requested.is_set():
        raise Interrupted(_received[0] if _received else "a stop request")


def request(name: str = "a stop request") -> None:
    """Ask the running command to stop, as a signal would (tests, embedding applications)."""
    _received.append(name)
    _requested.set()


def installed() -> bool:
    return all(signal.getsignal(s) is _handler for s in SIGNALS)


def install() -> None:
    """Make SIGINT and SIGTERM set the flag for the rest of the process (console-script launchers)."""
    for s in SIGNALS:
        signal.signal(s, _handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM set the stop flag; previous handlers come back after.

    Outside the main thread (where handlers cannot be installed) signals are left alone. A flag
    set before the block (a signal during start-up, caught by :func:`install`) is kept.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if installed():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _requested.clear()
    _received.clear()
    install()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _requested.clear()
        _received.clear()
