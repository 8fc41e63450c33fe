"""One call run in a forked child process while this process goes on: ``inclust-train`` reads and
assembles its training data there while it imports torch.

Why: a run spends ~1.8 s importing torch, and ~1.5 s importing anndata, pandas and scipy and reading
and checking the files. Neither needs the other, so on two cores they take the time of the longer
one. A thread would not help: imports hold the GIL.

Forking is safe only before this process has started a thread or imported torch (whose thread
pools do not survive a fork), and only on Linux (macOS system libraries do not allow a fork
without exec). Elsewhere, and in a notebook or a test where torch is already loaded, the call
simply runs when its result is asked for. The child's result comes back pickled through a pipe;
an :class:`InclustError` it raises comes back as the same one-line error. Any other failure, or a
child that died, makes :meth:`Background.result` run the call here, so that the real error (with
its traceback) is the one shown; unless a stop was requested (Ctrl-C ends the child too), which
stops the run there.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from typing import Any, Callable

from inclust_plus import interrupt
from inclust_plus.errors import InclustError
from inclust_plus.launch import exit_now


def fork_is_safe() -> bool:
    """Whether this process can fork a child that runs Python code: Linux, one thread, no torch."""
    return sys.platform.startswith("linux") and threading.active_count() == 1 and "torch" not in sys.modules


class Background:
    """``fn(*args)``, started in a forked child now (where :func:`fork_is_safe`), its value from
    :meth:`result`. Call :meth:`cancel` (or :meth:`result`) on every path: the child is reaped there."""

    def __init__(self, fn: Callable[..., Any], *args, fork: bool | None = None):
        self._fn, self._args = fn, args
        self._pid: int | None = None
        self._fd: int | None = None
        if fork_is_safe() if fork is None else fork:
            self._start()

    @property
    def forked(self) -> bool:
        return self._pid is not None

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        sys.stdout.flush(), sys.stderr.flush()  # nothing buffered is written twice
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            _child(write_fd, self._fn, self._args)
        os.close(write_fd)
        self._pid, self._fd = pid, read_fd

    def result(self) -> Any:
        """The call's value: the child's, or (not forked, or the child failed) computed here."""
        if self._pid is None:
            return self._fn(*self._args)
        try:
            with os.fdopen(self._fd, "rb") as pipe:
                self._fd = None
                kind, value = pickle.load(pipe)
        except (EOFError, OSError, pickle.UnpicklingError):  # the child died (killed, out of memory)
            kind, value = "failed", None
        finally:
            self._reap(kill=False)
        if kind == "ok":
            return value
        if kind == "error":
            raise InclustError(*value)
        interrupt.check()  # a Ctrl-C reaches the child too: stop here rather than read again
        return self._fn(*self._args)  # here, so that the real error and its traceback show

    def cancel(self) -> None:
        """Stop the child, if one is still running (an error or Ctrl-C ended the run first)."""
        if self._pid is not None:
            self._reap(kill=True)

    def _reap(self, kill: bool) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if kill:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self._pid, 0)
        except ChildProcessError:
            pass
        self._pid = None


def _child(write_fd: int, fn: Callable[..., Any], args: tuple) -> None:
    """Run ``fn(*args)`` and send ``(kind, value)`` to the parent; exit without the parent's
    cleanups (atexit handlers, buffered files), its warnings flushed (:func:`exit_now`)."""
    status = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C reaches the whole group: the parent reports it
        try:
            payload = ("ok", fn(*args))
        except InclustError as err:
            payload = ("error", (err.problem, err.fix))
        except BaseException:  # noqa: BLE001 - the parent runs the call itself and shows this error
            payload = ("failed", None)
        with os.fdopen(write_fd, "wb") as pipe:
            pickle.dump(payload, pipe, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:  # noqa: BLE001 - e.g. the parent has gone: nothing left to tell
        status = 1
    finally:
        try:
            exit_now(status)
        finally:
            os._exit(1)  # never back into the parent's code, whatever exit_now met
