"""User-facing errors: one line, naming the problem and the fix, exit code 2.

Every command catches :class:`InclustError` at its top and prints it without a traceback, so a
biologist sees ``error: <what is wrong>; <what to do>`` rather than a stack of Python frames.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import click

EXIT_USAGE = 2

F = TypeVar("F", bound=Callable)


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


def report_errors(func: F) -> F:
    """Decorate a click command so :class:`InclustError` becomes one stderr line and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InclustError as err:
            click.echo(f"error: {err.one_line()}", err=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            click.echo("error: interrupted; no output was written", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
