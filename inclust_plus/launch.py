"""Console-script entry points: the stop handler first, then the (slow to import) command.

Importing a command pulls in numpy, h5py, anndata (and torch for training and export), which
takes a second or more. A Ctrl-C or SIGTERM in that window would otherwise end the process with a
KeyboardInterrupt traceback; with :func:`inclust_plus.interrupt.install` run before the import it
is a stop request like any other, honoured as soon as the command starts (exit 130). Once the
command has returned, further signals are ignored and the process ends at once with the command's
exit code (:func:`exit_now`), without the interpreter's teardown of every module. That holds for a
command's error exits (``sys.exit(2)``) too: the teardown would release what the failed command
still held (an HDF5 file a full disk left half closed crashed it: rc 139, issue 25).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable

from . import interrupt


def _launch(load: Callable, prog_name: str | None = None) -> None:
    """Install the stop handler, then ``load()`` (a plain import of the command) and run it."""
    interrupt.install()
    try:
        code = _run_click(load(), prog_name)
    except SystemExit as done:  # the commands' errors (exit 2, 130) end here too, not in the interpreter's teardown
        code = _exit_code(done)
    finally:
        # The command is over (its output committed or cleaned up): a signal during interpreter
        # shutdown, where Python resets the handlers, would only turn its exit code into -SIGINT.
        for s in interrupt.SIGNALS:
            signal.signal(s, signal.SIG_IGN)
    exit_now(code)  # an exception (a bug's traceback) takes the normal way out above


def _exit_code(done: SystemExit) -> int:
    """The status ``sys.exit(value)`` would give: an int as is, None 0, anything else (a message) 1."""
    if done.code is None or isinstance(done.code, int):
        return done.code or 0
    print(done.code, file=sys.stderr)
    return 1


def exit_now(code: int) -> None:
    """End the process with ``code``, skipping the interpreter's teardown. Why: once torch is
    imported, freeing every module's objects at exit takes ~1 s on a 2-core machine, on top of
    every inclust-train and inclust-export run. Nothing is lost: a command's outputs are written,
    closed and renamed into place before it returns; the log handlers and stdout/stderr are
    flushed here."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be told
            pass
    os._exit(code)


def _run_click(command, prog_name: str | None = None) -> int:
    """Run a click command; a bad flag or argument is one line ``error: ...; ...`` and exit 2 like every
    other bad input, not click's usage block (``--help`` and the commands' own errors are unchanged)."""
    import click

    try:
        code = command.main(prog_name=prog_name, standalone_mode=False)
    except click.UsageError as err:
        where = err.ctx.command_path if err.ctx is not None else command.name
        print(f"error: {err.format_message().rstrip('.')}; see {where} --help", file=sys.stderr)
        return 2
    except click.ClickException as err:  # e.g. a file click itself could not open
        print(f"error: {err.format_message().rstrip('.')}; check the path and try again", file=sys.stderr)
        return err.exit_code
    except click.exceptions.Abort:
        print("error: aborted; run the command again", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def _command(name: str):
    """The click command behind console script ``inclust-<name>``, imported only now (plain imports:
    torch is loaded for train, export and map only)."""
    if name == "train":
        from inclust_plus.training.cli import main
    elif name == "export":
        from inclust_plus.export.cli import main
    elif name == "run":
        from inclust_plus.runtime.cli import cli as main  # the run commands, info and Triton's serve
    else:
        from inclust_plus.training.map_cli import main
    return main


def _script(name: str) -> Callable[[], None]:
    """The entry point ``inclust-<name>`` of pyproject.toml's [project.scripts]."""

    def entry() -> None:
        _launch(lambda: _command(name), prog_name=f"inclust-{name}")

    entry.__name__ = entry.__qualname__ = f"inclust_{name}"
    return entry


COMMANDS = {name: _script(name) for name in ("train", "export", "run", "map")}
inclust_train, inclust_export, inclust_run, inclust_map = COMMANDS.values()

if __name__ == "__main__":  # python -m inclust_plus.launch train|export|run|map ...: the console scripts without installing them
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"error: name a command; one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    COMMANDS[sys.argv.pop(1)]()
