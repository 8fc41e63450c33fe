"""Console-script entry points: the stop handler first, then the (slow to import) command.

Importing a command pulls in numpy, h5py, anndata (and torch for training and export), which
takes a second or more. A Ctrl-C or SIGTERM in that window would otherwise end the process with a
KeyboardInterrupt traceback; with :func:`inclust_plus.interrupt.install` run before the import it
is a stop request like any other, honoured as soon as the command starts (exit 130).
"""

from __future__ import annotations

import importlib

from . import interrupt


def _launch(module: str, attribute: str = "main") -> None:
    interrupt.install()
    getattr(importlib.import_module(module), attribute)()


def inclust_train() -> None:
    _launch("inclust_plus.training.cli")


def inclust_export() -> None:
    _launch("inclust_plus.export.cli")


def inclust_run() -> None:
    _launch("inclust_plus.runtime.cli")
