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
from pathlib import Path
from typing import Callable, Iterator

from . import interrupt
from .errors import InclustError

TEMP_TAG = ".inclust-"
_NAME_KEPT = 100  # characters of the target name kept in a temporary name (room for the tag, pid, suffix)
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


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


def commit_file(tmp: Path, target: Path, force: bool) -> None:
    """Move the complete ``tmp`` onto ``target``: replace it with ``force``, else only if absent."""
    interrupt.check()
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _appeared(target) from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        try:
            moved = _renameat2(tmp, target, _RENAME_NOREPLACE)  # no hard links here (FAT, some FUSE)
        except FileExistsError:
            raise _appeared(target) from None
        if not moved:
            if target.exists():
                raise _appeared(target) from None
            os.rename(tmp, target)
        return
    tmp.unlink()  # a crash right here leaves a complete target and a stale temp the next run removes


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


def commit_dir(tmp: Path, target: Path, force: bool, replaceable: Callable[[Path], None] | None = None) -> None:
    """Move the complete folder ``tmp`` onto ``target``; an existing one only with ``force``."""
    interrupt.check()
    if not (target.exists() or target.is_symlink()):
        try:
            if _renameat2(tmp, target, _RENAME_NOREPLACE):
                return
        except FileExistsError:
            raise _appeared(target) from None
        if target.exists():
            raise _appeared(target)
        os.rename(tmp, target)
        return
    if not force:
        raise _appeared(target)  # the callers refused an existing one up front: it came meanwhile
    if not target.is_dir() or target.is_symlink():
        raise InclustError(f"output {target} is not a folder", "choose another output folder")
    if replaceable is not None:
        replaceable(target)  # refuses a folder holding files this program did not write
    if _renameat2(tmp, target, _RENAME_EXCHANGE):
        shutil.rmtree(tmp)  # now the old folder, under this run's temporary name
        return
    old = temp_name(target, ".old")
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the umask applies, as for any new file


def _new_dir(path: Path) -> None:
    os.mkdir(path)  # 0777 less the umask: exports are shared with servers


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", force: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds."""
    target = Path(path)
    remove_stale(target)
    tmp = temp_name(target, suffix)
    _new_file(tmp)
    try:
        yield tmp
        commit_file(tmp, target, force)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, force: bool = False, replaceable: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only if the block succeeds.

    ``replaceable(existing)`` raises if an existing folder holds anything the caller did not write.
    With ``force`` it is called twice: on entry, so that a refusal comes before the work, and again
    just before the folder is replaced, in case it changed meanwhile.
    """
    target = Path(path)
    if force and replaceable is not None and target.is_dir():
        replaceable(target)
    remove_stale(target)
    tmp = temp_name(target)
    _new_dir(tmp)
    try:
        yield tmp
        commit_dir(tmp, target, force, replaceable)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- several outputs of one command: all or none --------------------------------------------------
def _keep_previous(target: Path) -> Path:
    """The current ``target`` under a temporary name (a hard link, else a copy), to put back on a rollback."""
    old = temp_name(target, ".old")
    try:
        os.link(target, old)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        shutil.copy2(target, old)
    return old


def commit_files(pairs: list[tuple[Path, Path]], force: bool) -> None:
    """Move each complete temporary onto its target (``commit_file``), all of them or none.

    Every temporary is complete before the first move, so what can still fail is a move itself
    (a file that appeared meanwhile, a stop request between two moves, the disk): then the targets
    already moved are put back as they were (the previous file, kept under a temporary name, or
    none). A SIGKILL or power loss in the microseconds between two moves cannot be undone by this
    process; the kept previous file is then a stale temporary the next run removes.
    """
    interrupt.check()
    if not force:
        for _, target in pairs:
            if target.exists() or target.is_symlink():
                raise _appeared(target)
    done: list[tuple[Path, Path | None]] = []  # (target moved into place, its previous file or None)
    kept: list[Path] = []
    try:
        for tmp, target in pairs:
            old = _keep_previous(target) if force and target.exists() else None
            if old is not None:
                kept.append(old)
            commit_file(tmp, target, force)
            done.append((target, old))
    except BaseException:
        for target, old in reversed(done):
            with contextlib.suppress(OSError):
                if old is None:
                    target.unlink()
                else:
                    os.replace(old, target)
        raise
    finally:
        for old in kept:
            with contextlib.suppress(OSError):
                old.unlink()


def _named(err: OSError, names: dict[str, Path], default: Path | None) -> OSError:
    """``err`` naming the output a temporary stands for (a write error names no file at all)."""
    where = names.get(str(err.filename)) if err.filename is not None else default
    if where is None or err.errno is None:
        return err
    return OSError(err.errno, err.strerror or os.strerror(err.errno), str(where))


@contextlib.contextmanager
def atomic_paths(paths, suffixes=None, force: bool = False) -> Iterator[list[Path]]:
    """Yield one temporary path beside each of ``paths``; once the block succeeds, all of them are
    moved into place together (:func:`commit_files`), else none, and every temporary is removed.

    For a command with several outputs (``inclust-train``'s model.pt and its loss plot): a failure
    or a stop request while writing any of them leaves every previous output as it was. A file
    system error names the output, not its temporary.
    """
    targets = [Path(p) for p in paths]
    suffixes = list(suffixes) if suffixes is not None else [""] * len(targets)
    tmps: list[Path] = []
    try:
        for target, suffix in zip(targets, suffixes):
            remove_stale(target)
            tmp = temp_name(target, suffix)
            _new_file(tmp)
            tmps.append(tmp)
        yield tmps
        commit_files(list(zip(tmps, targets)), force)
    except OSError as err:
        names = {str(t): target for t, target in zip(tmps, targets)}
        folders = {target.parent for target in targets}
        raise _named(err, names, folders.pop() if len(folders) == 1 else None) from None
    finally:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()


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
