"""Write outputs atomically: a temporary file beside the target, moved into place at the end.

An interrupted or failed run therefore never leaves a partial file, and never clobbers an
existing one unless the caller allowed it (``force``) and the new file was complete:

* without ``force`` the final step is a hard link (``os.link`` fails if the target exists), so a
  file that appeared while this run was working (another run to the same path) is never
  replaced; folders use ``renameat2(RENAME_NOREPLACE)``;
* with ``force`` the last writer wins atomically (``os.replace``; for folders an atomic
  ``RENAME_EXCHANGE`` of the new and the old folder, then the old one is removed);
* a stop request (:mod:`inclust_plus.interrupt`) is checked right before that step;
* temporary names are ``.<name>.inclust-<pid>-<random>.tmp<suffix>``: one left behind by a killed
  run (SIGKILL, power loss) is recognisable, and the next run to that output removes it once no
  process has that pid (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from . import interrupt
from .errors import InclustError

TEMP_TAG = ".inclust-"
_NAME_KEPT = 100  # characters of the target name kept in a temporary name (room for the tag, pid, suffix)
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a write that failed for want of room: the folder's disk is named


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: str | os.PathLike, force: bool, inputs: tuple = ()) -> Path:
    """Validate an output path before any work is done: not an input, in an existing folder, new or forced."""
    out = Path(path)
    for src in inputs:
        if src is not None and _same(Path(src), out):
            raise InclustError(f"output {out} is the same file as input {src}", "choose another output path")
    if out.exists() and not force:
        raise InclustError(f"output {out} already exists", "pass --force to overwrite it or choose another path")
    parent = out.parent
    if not parent.exists():
        raise InclustError(f"folder {parent} does not exist", "create it first or choose another output path")
    if not parent.is_dir():
        raise InclustError(f"{parent} is not a folder", "choose an output path inside a folder")
    return out


def check_not_inside(folder: str | os.PathLike, inputs: tuple, flag: str = "--out") -> None:
    """A folder an output replaces must not hold (or be) any input of the run."""
    out = Path(folder).resolve()
    for src in inputs:
        if src is not None and (Path(src).resolve() == out or Path(src).resolve().is_relative_to(out)):
            raise InclustError(f"output folder {folder} holds the input {src}", f"choose another {flag} folder")


# --- temporary names and stale ones ---------------------------------------------------------------
def temp_name(target: Path, suffix: str = "") -> Path:
    """A fresh temporary path beside ``target`` that names this process."""
    return target.with_name(f".{target.name[:_NAME_KEPT]}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")


def _stale_pattern(target: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(target.name[:_NAME_KEPT])}{re.escape(TEMP_TAG)}(\d+)-[0-9a-f]+\.tmp")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process (or a pid no kernel hands out)
    return True


def remove_stale(target: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``target`` left by runs whose process is gone; returns what was removed."""
    target = Path(target)
    pattern = _stale_pattern(target)
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or pid_alive(int(m.group(1))):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass  # not ours to fight over: another cleaner, or no permission
    return removed


# --- the final step -------------------------------------------------------------------------------
def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2`` where libc has it; False when unavailable here (then the caller falls back)."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # this file system cannot do it
    raise OSError(err, os.strerror(err), str(dst))


def _appeared(target: Path) -> InclustError:
    return InclustError(f"output {target} appeared while this run was writing it", "pass --force to overwrite it or choose another path")


def refuse_foreign_entries(folder: Path, owned: set[str] | None, what: str, previous: str, option: str) -> None:
    """Raise unless every entry of ``folder`` is in ``owned`` (the files a previous run listed as its own).

    ``owned`` None means the previous run's index could not be read: then only an empty folder may be
    replaced. Used by the ``replaceable`` checks of :func:`atomic_dir`, so ``--force`` never deletes a
    file this program did not write (a model.pt, a user's notes)."""
    foreign = [e for e in sorted(os.listdir(folder)) if owned is None or e not in owned]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InclustError(f"{what} {folder} holds files inclust-export did not write ({shown}); --force replaces only a previous {previous}",
                           f"choose another {option} folder or move those files out first")


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for any new file


def _new_dir(path: Path) -> None:
    os.mkdir(path)  # 0777 less the umask: exports are shared with servers


@dataclass(frozen=True)
class Output:
    """One output of a command: a file, or a folder (``folder``), and how it may replace what is there."""

    path: Path
    folder: bool = False
    force: bool = False
    replaceable: Callable[[Path], None] | None = None  # folders: raises if an existing one holds foreign files
    suffix: str = ""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _check_commit(out: Output) -> None:
    """What :func:`_move_in` would refuse, asked of every output before any moves."""
    target = out.path
    if not (target.exists() or target.is_symlink()):
        return
    if not out.force:
        raise _appeared(target)
    if not out.folder and target.is_dir() and not target.is_symlink():  # never moved aside (and removed) as an "old file"
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    if out.folder and (not target.is_dir() or target.is_symlink()):
        raise InclustError(f"output {target} is not a folder", "choose another output folder")
    if out.folder and out.replaceable is not None:
        out.replaceable(target)


def _move_in(out: Output, tmp: Path) -> Path | None:
    """Put ``tmp`` at ``out.path``, keeping any previous output aside; returns where it is kept (None: there was none)."""
    target = out.path
    if not (target.exists() or target.is_symlink()):
        if out.folder:
            if not _renameat2(tmp, target, _RENAME_NOREPLACE):  # FileExistsError: it appeared meanwhile
                if target.exists():
                    raise _appeared(target)
                os.rename(tmp, target)
        else:
            _link_new(tmp, target)
        return None
    if not out.force:
        raise _appeared(target)  # it came after _check_commit
    if out.folder and _renameat2(tmp, target, _RENAME_EXCHANGE):
        return tmp  # the previous folder, under the temporary name
    old = temp_name(target, ".old")
    if out.folder:
        os.rename(target, old)
        os.rename(tmp, target)
        return old
    try:
        os.link(target, old)  # the previous file stays whole under a second name; the replace is atomic
    except OSError:
        os.rename(target, old)
    os.replace(tmp, target)
    return old


def _link_new(tmp: Path, target: Path) -> None:
    """``tmp`` at the absent ``target`` by a hard link, which fails if ``target`` appeared meanwhile
    (FileExistsError); where the file system has no hard links (FAT, some FUSE) by
    ``renameat2(RENAME_NOREPLACE)``, else a rename after one more look."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        if not _renameat2(tmp, target, _RENAME_NOREPLACE):
            if target.exists():
                raise _appeared(target) from None
            os.rename(tmp, target)


def _move_back(out: Output, tmp: Path, old: Path | None) -> None:
    """Undo :func:`_move_in`: the previous output (or nothing) back at ``out.path``."""
    target = out.path
    if old is None:
        os.rename(target, tmp) if out.folder else target.unlink()
    elif old == tmp:
        _renameat2(tmp, target, _RENAME_EXCHANGE)
    elif out.folder:
        os.rename(target, tmp)
        os.rename(old, target)
    else:
        os.replace(old, target)


def _commit(outputs: list[Output], tmps: list[Path]) -> None:
    """Move every temporary into place, or none: all are checked first, and a move that still fails
    (an output that appeared in between) puts back the ones already moved. One output is the case
    of one: the same checks and moves (a previous output kept aside until the move succeeded)."""
    interrupt.check()
    for out in outputs:
        _check_commit(out)
    moved: list[tuple[Output, Path, Path | None]] = []
    try:
        for out, tmp in zip(outputs, tmps):
            interrupt.check()  # a stop request between two moves: the ones already moved go back
            try:
                moved.append((out, tmp, _move_in(out, tmp)))
            except FileExistsError:
                raise _appeared(out.path) from None
    except BaseException:
        for out, tmp, old in reversed(moved):
            with contextlib.suppress(OSError):
                _move_back(out, tmp, old)
        raise
    for out, tmp, old in moved:
        if old is not None:
            _remove(old)
        if not out.folder:
            _remove(tmp)  # the file was linked into place: its temporary name goes


@contextlib.contextmanager
def atomic_outputs(*outputs: Output) -> Iterator[list[Path]]:
    """Yield one temporary path (file or folder) per output, beside it; they replace the outputs
    only if the block succeeds, and all of them together or none (issue 25: a command's outputs
    appear together or not at all).

    A folder's ``replaceable(existing)`` raises if an existing one holds anything the caller did not
    write; with ``force`` it is called on entry, so that a refusal comes before the work, and again
    just before the move, in case it changed meanwhile. :func:`_commit` moves them, one output or several.
    """
    outputs = tuple(Output(Path(o.path), o.folder, o.force, o.replaceable, o.suffix) for o in outputs)
    for out in outputs:
        if out.folder and out.force and out.replaceable is not None and out.path.is_dir():
            out.replaceable(out.path)
    tmps: list[Path] = []
    try:
        for out in outputs:
            remove_stale(out.path)
            tmp = temp_name(out.path, out.suffix)
            try:
                (_new_dir if out.folder else _new_file)(tmp)
            except OSError as err:  # the user asked for out.path: name it, not the temporary
                raise OSError(err.errno, err.strerror, str(out.path)) from err
            tmps.append(tmp)
        yield tmps
        _commit(list(outputs), tmps)
    except OSError as err:
        for tmp in tmps:
            _remove(tmp)
        where = _output_of(err.filename, outputs, tmps) if err.filename or err.errno in NO_SPACE else None
        if where is None:
            raise
        raise OSError(err.errno, err.strerror, str(where)) from err  # a full disk names the output asked for, not a temporary
    except BaseException:
        for tmp in tmps:
            _remove(tmp)
        raise


def _output_of(filename, outputs, tmps: list[Path]) -> Path | None:
    """The output whose temporary file (or a file in its temporary folder) is ``filename``, else None."""
    if not filename:  # a failed write() names no file: one folder holding every output is where space ran out
        parents = {out.path.parent for out in outputs}
        return parents.pop() if len(parents) == 1 else None
    path = Path(os.fsdecode(filename))
    for out, tmp in zip(outputs, tmps):
        if path == tmp or path.is_relative_to(tmp):
            return out.path
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds."""
    with atomic_outputs(Output(Path(path), force=force, suffix=suffix)) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False, replaceable: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only if the block succeeds
    (``replaceable``: see :func:`atomic_outputs`)."""
    with atomic_outputs(Output(Path(path), folder=True, force=force, replaceable=replaceable)) as (tmp,):
        yield tmp


def check_writable(path: str | os.PathLike) -> None:
    """Raise the file system's error now if no file can be created beside ``path`` (a read-only or
    locked folder), so that a command says so before it reads its inputs or trains, not after."""
    target = Path(path)
    probe = temp_name(target, ".probe")
    try:
        _new_file(probe)
    except OSError as err:
        raise OSError(err.errno, err.strerror or os.strerror(err.errno or 0), str(target.parent)) from None
    with contextlib.suppress(OSError):
        probe.unlink()
