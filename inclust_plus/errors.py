"""User-facing errors: one line, naming the problem and the fix, exit code 2.

Every command catches :class:`InclustError` at its top and prints it without a traceback, so a
biologist sees ``error: <what is wrong>; <what to do>`` rather than a stack of Python frames.
File-system failures (no permission, read-only mount, full disk, a name too long) are reported
the same way (:func:`filesystem_error`), and a stop request (Ctrl-C, SIGTERM) exits 130 once the
temporary output is removed (:mod:`inclust_plus.interrupt`).
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from typing import Callable, TypeVar

import click

EXIT_USAGE = 2
SHOWN = 5  # how many names an error message lists before "..."


def names_shown(items) -> str:
    """``items`` for an error message: the first few, then how many more."""
    items = list(items)
    return ", ".join(items[:SHOWN]) + (f", ... ({len(items) - SHOWN} more)" if len(items) > SHOWN else "")

F = TypeVar("F", bound=Callable)

# errno -> what the user can do about it
_FS_FIXES = {
    errno.EACCES: "check the permissions of that path or choose another one",
    errno.EPERM: "check the permissions of that path or choose another one",
    errno.EROFS: "that file system is read-only; write to another folder",
    errno.ENOSPC: "free some disk space or write to another disk",
    errno.EDQUOT: "your disk quota is used up; free some space or write elsewhere",
    errno.EFBIG: "the file system cannot hold a file this large; write to another disk",
    errno.ENAMETOOLONG: "choose a shorter file or folder name",
    errno.ENOTDIR: "a part of that path is a file, not a folder; fix the path",
    errno.EISDIR: "that path is a folder; pass a file path",
    errno.ENOENT: "a folder on that path does not exist (or was removed while running); fix the path",
    errno.EIO: "the disk reported an input/output error; check it or write elsewhere",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.EXDEV: "keep the output on one file system",
    errno.ELOOP: "that path has a symbolic-link loop; fix the path",
}


class InclustError(Exception):
    """A problem with the user's input that they can fix (exit code 2)."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.problem.rstrip(".")
        if self.fix:
            text += f"; {self.fix.rstrip('.')}"
        return " ".join(text.split())


def _errno_of(err: OSError) -> int | None:
    if err.errno is not None:
        return err.errno
    found = re.search(r"errno = (\d+)", str(err))  # h5py reports HDF5's errno in the message only
    return int(found.group(1)) if found else None


def filesystem_error(err: OSError) -> InclustError | None:
    """The one-line error for a failed file operation, or None when it is not one we can explain."""
    code = _errno_of(err)
    if code not in _FS_FIXES:
        return None
    where = err.filename or (re.search(r"name = '([^']*)'", str(err)) or [None, None])[1]
    what = os.strerror(code)
    problem = f"{what}: {where}" if where else what
    return InclustError(problem, _FS_FIXES[code])


def report_errors(func: F) -> F:
    """Decorate a click command: :class:`InclustError` and file-system errors become one stderr
    line and exit 2; Ctrl-C/SIGTERM become a stop request that exits 130 once cleaned up."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from . import interrupt

        with interrupt.stop_on_signals():
            try:
                interrupt.check()
                return func(*args, **kwargs)
            except InclustError as err:
                if interrupt.requested():  # a failure caused by the stop (a worker killed by it)
                    _interrupted(interrupt.Interrupted())
                click.echo(f"error: {err.one_line()}", err=True)
                sys.exit(EXIT_USAGE)
            except (interrupt.Interrupted, KeyboardInterrupt) as err:
                _interrupted(err)
            except OSError as err:
                known = filesystem_error(err)
                if known is None:
                    raise
                click.echo(f"error: {known.one_line()}", err=True)
                sys.exit(EXIT_USAGE)

    return wrapper  # type: ignore[return-value]


def _interrupted(err: BaseException) -> None:
    from .interrupt import EXIT_INTERRUPTED

    name = getattr(err, "signal_name", "Ctrl-C")
    click.echo(f"error: interrupted by {name}; no output was written (an existing one is unchanged)", err=True)
    sys.exit(EXIT_INTERRUPTED)
