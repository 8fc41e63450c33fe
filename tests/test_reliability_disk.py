"""A full disk (issue 25, defect 1) and outputs committed together (defect 3), through the real commands.

The disk is a real small file system: a tmpfs of a chosen size, mounted for the test where the
machine allows it (root, as CI runs). Elsewhere the same runs get a file-size limit instead
(``RLIMIT_FSIZE``, SIGXFSZ ignored): the write at that byte fails with EFBIG, a real failure of the
same write calls, reported with its own one line. Each case checks the exit code, the exact line,
and the file system before and after (a previous output byte for byte, no temporary left).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reliability_helpers import snapshot
from runtime_fixtures import COVARIATES, RNA, make_cells, make_toy_export, write_h5ad

N_CELLS = 20_000
FIXES = {errno.ENOSPC: "free some disk space or write to another disk",
         errno.EFBIG: "the file system cannot hold a file this large; write to another disk"}


def _can_mount(folder: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = folder / "probe"
    probe.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok


class SmallDisk:
    """``folder`` holds at most ``size`` bytes: a tmpfs, else a file-size limit on the commands run."""

    def __init__(self, base: Path, mountable: bool):
        self.base, self.mountable = base, mountable
        self.size: int | None = None

    @contextlib.contextmanager
    def of(self, size: int):
        self.size = size
        folder = self.base / f"disk{size}"
        folder.mkdir()
        if self.mountable:
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
        try:
            yield folder
        finally:
            if self.mountable:
                subprocess.run(["umount", str(folder)], check=True)
            shutil.rmtree(folder)

    @property
    def errno(self) -> int:
        return errno.ENOSPC if self.mountable else errno.EFBIG

    def line(self, path: Path) -> str:
        return f"error: {os.strerror(self.errno)}: {path}; {FIXES[self.errno]}"

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, resource.RLIM_INFINITY))  # ulimit -f: a soft limit

        return subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=None if self.mountable else limit)


def script(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(f"inclust-{name}")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "inclust_plus.launch", name]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("disk")
    make_toy_export(folder / "toy")
    write_h5ad(folder / "in.h5ad", make_cells(N_CELLS, RNA, seed=3), RNA, [COVARIATES[i % 3] for i in range(N_CELLS)])
    return folder


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    base = tmp_path_factory.mktemp("mounts")
    return SmallDisk(base, _can_mount(base) and not os.environ.get("INCLUST_TEST_NO_MOUNT"))


def impute(work: Path, out: Path, *extra: str) -> list[str]:
    return script("run") + ["impute", "--onnx", str(work / "toy"), "--input", str(work / "in.h5ad"), "--output", str(out),
                            "--combination", "panel_to_rna", "--quiet", *extra]


@pytest.mark.parametrize("size", [64 << 10, 400 << 10, 1200 << 10, 2 << 20], ids=["64k", "400k", "1200k", "2m"])
def test_full_disk_in_inclust_run_is_one_line_and_no_crash(work, disk, size):
    """Before issue 25 the right line came, then a segfault (rc 139) as HDF5's half-closed file was released.
    The sizes hit the obs copy (64k), the first chunks (400k, 1200k) and the closing flush (2m)."""
    with disk.of(size) as folder:
        out = folder / "o.h5ad"
        out.write_bytes(b"previous result")
        before = snapshot(folder)
        done = disk.run(impute(work, out, "--force"))
        assert (done.returncode, done.stderr.strip()) == (2, disk.line(out)), done.stderr[-3000:]
        assert snapshot(folder) == before  # the previous output byte for byte, no temporary left
        if disk.mountable:
            assert shutil.disk_usage(folder).used <= 4096 + len(b"previous result")  # the temporary's space was freed
