"""Console-script entry points: the stop handler first, then the (slow to import) command.

Importing a command pulls in numpy, h5py, anndata (and torch for training and export), which
takes a second or more. A Ctrl-C or SIGTERM in that window would otherwise end the process with a
KeyboardInterrupt traceback; with :func:`inclust_plus.interrupt.install` run before the import it
is a stop request like any other, honoured as soon as the command starts (exit 130). Once the
command has returned, further signals are ignored while the interpreter shuts down.
"""

from __future__ import annotations

import importlib
import signal

from . import interrupt


def _launch(module: str, attribute: str = "main") -> None:
    interrupt.install()
    try:
        getattr(importlib.import_module(module), attribute)()
    finally:
        # The command is over (its output committed or cleaned up): a signal during interpreter
        # shutdown, where Python resets the handlers, would only turn its exit code into -SIGINT.
        for s in interrupt.SIGNALS:
            signal.signal(s, signal.SIG_IGN)


def inclust_train() -> None:
    _launch("inclust_plus.training.cli")


def inclust_export() -> None:
    _launch("inclust_plus.export.cli")


def inclust_run() -> None:
    _launch("inclust_plus.runtime.cli")


def inclust_map() -> None:
    _launch("inclust_plus.training.map_cli")
