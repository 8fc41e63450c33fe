"""The files a manifest pins by sha256, read checked: the one check the runtime and Triton share.

Every graph file ``manifest.json`` names carries its sha256 (the reader requires one); a file that
differs was tampered with, corrupted or swapped, and is refused with a re-export hint. The runtime
loads graphs through :func:`read_verified`; the Triton repository writer checks the files it
copies with :func:`verify_file`. It lives in the contract, not the runtime, so that Triton needs
nothing from the runtime's internals.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from inclust_plus.errors import InclustError
from inclust_plus.hashing import file_sha256

from .schema import REEXPORT

__all__ = ["read_verified", "verify_file"]


def read_verified(path: Path | None, expected: str | None, what: str) -> bytes:
    """The bytes of a graph file, read once and checked against the manifest's sha256.

    Loading these bytes (not the path again) means the file that runs is the file that was
    checked, even if the path is swapped for another file or link in between.
    """
    _pinned(path, expected, what)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected.lower():
        raise _mismatch(path, what)
    return data


def _pinned(path: Path | None, expected: str | None, what: str) -> None:
    """The file exists and the manifest gives its sha256 (a missing one would switch the check off;
    load_manifest already requires one for every file, this guards entries built by hand)."""
    if path is None or not path.is_file():
        raise InclustError(f"{what} file {path} is missing", f"{REEXPORT} or copy the whole export folder")
    if not expected or len(expected) != 64:
        raise InclustError(f"{what} file {path} has no sha256 in the manifest", f"{REEXPORT} (every file the runtime loads is pinned by its sha256)")


def verify_file(path: Path | None, expected: str | None, what: str) -> Path:
    """Refuse a graph file whose sha256 differs from the manifest (tampered, corrupt or swapped)."""
    _pinned(path, expected, what)
    if file_sha256(path) != expected.lower():
        raise _mismatch(path, what)
    return path


def _mismatch(path: Path, what: str) -> InclustError:
    """The one refusal of a file whose bytes differ from the manifest's sha256 (both reads raise it)."""
    return InclustError(f"{what} file {path} does not match the sha256 in the manifest: tampered or corrupt", f"{REEXPORT} or copy the folder again")
