"""Write outputs atomically: a temporary file beside the target, renamed into place at the end.

An interrupted or failed run therefore never leaves a partial file, and never clobbers an
existing one unless the caller allowed it (``force``) and the new file was complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InclustError


def check_output_path(path: str | os.PathLike, force: bool, inputs: tuple = ()) -> Path:
    """Validate an output path before any work is done."""
    out = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and out.exists() and os.path.samefile(src, out):
            raise InclustError(f"output {out} is the same file as input {src}", "choose another --output path")
        if src is not None and Path(src).resolve() == out.resolve():
            raise InclustError(f"output {out} is the same file as input {src}", "choose another --output path")
    if out.exists() and not force:
        raise InclustError(f"output {out} already exists", "pass --force to overwrite it or choose another path")
    if not out.parent.exists():
        raise InclustError(f"folder {out.parent} does not exist", "create it first or choose another output path")
    return out


def _umask_mode(path: Path, base: int) -> None:
    """Give a temp file/folder the permissions a normally created one would have (mkstemp uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, base & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _umask_mode(tmp_path, 0o666)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only if the block succeeds."""
    target = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    _umask_mode(tmp, 0o777)  # mkdtemp makes it private (0700); exports are shared with servers
    try:
        yield tmp
        if target.exists():
            if not force:
                raise InclustError(f"output folder {target} already exists", "pass --force to replace it")
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
