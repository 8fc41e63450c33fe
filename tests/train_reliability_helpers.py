"""Shared pieces of the inclust-train / inclust-map reliability tests (issue 25): a small config and
data, the real commands as subprocesses, and a real small file system (tmpfs) to fill up."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from reliability_helpers import run_temporaries as temporaries  # noqa: F401 - the tests import it from here
from runtime_fixtures import RNA, make_cells, write_h5ad

SECTION_GENES = RNA[2:9]  # the new cells' panel: no feature set of the toy model has exactly these


def toy_config(folder: Path, extra: str = "", top: str = "", n: int = 60) -> Path:
    """``cfg.toml`` in ``folder``: one RNA dataset of ``n`` cells (ref.h5ad), two epochs, one network."""
    write_h5ad(folder / "ref.h5ad", make_cells(n, RNA, seed=5), RNA, ["a" if i % 2 else "b" for i in range(n)])
    cfg = folder / "cfg.toml"
    cfg.write_text(f'name = "toy"\n{top}\n[[datasets]]\nname = "ref"\npath = "ref.h5ad"\ncovariate_keys = ["dataset"]\n'
                   f'[training]\nepochs = 2\n{extra}\n')
    return cfg


def section_data(path: Path, n: int = 50, seed: int = 9) -> Path:
    """New cells for inclust-map: a 7-gene panel, no labels, no covariate column (the batch is named by --name
    or the file name)."""
    write_h5ad(path, make_cells(n, SECTION_GENES, seed=seed), SECTION_GENES)
    return path


def command(name: str, *args) -> list[str]:
    """The installed console script ``inclust-<name>`` (or the same launcher through this Python)."""
    exe = Path(sys.executable).with_name(f"inclust-{name}")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "inclust_plus.launch", name]
    return argv + [str(a) for a in args]


def run(name: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(name, *args), capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """Exit ``code`` and exactly one stderr line ``error: ...; ...`` holding ``words``, no traceback."""
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def tmpfs_available() -> bool:
    """Whether this machine lets the tests mount a small tmpfs (root, or a user namespace's root)."""
    probe = Path(f"/tmp/inclust-tmpfs-probe-{uuid.uuid4().hex[:8]}")
    probe.mkdir()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe)], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    except OSError:
        return False
    finally:
        probe.rmdir()


needs_tmpfs = pytest.mark.skipif(not tmpfs_available(), reason="mounting a tmpfs needs root here (the injected-ENOSPC tests still run)")


@contextlib.contextmanager
def small_disk(folder: Path, size: int, options: str = ""):
    """A real tmpfs of ``size`` bytes (rounded up to pages) mounted at ``folder``, unmounted after."""
    folder.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{',' + options if options else ''}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path, leave: int) -> int:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free; returns the bytes free after."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free > leave:
        (folder / "filler").write_bytes(b"\0" * (free - leave))
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def history_of(model: Path) -> dict:
    from inclust_plus.training.checkpoint import load_checkpoint

    return load_checkpoint(model)[1].training.history


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model.pt from the real inclust-train, and new cells (section2.h5ad) to map onto it."""
    from click.testing import CliRunner

    from inclust_plus.training.cli import main as train

    folder = tmp_path_factory.mktemp("trained")
    cfg = toy_config(folder)
    res = CliRunner().invoke(train, [str(cfg), "--out", str(folder / "model.pt"), "--quiet"])
    assert res.exit_code == 0, res.output
    section_data(folder / "section2.h5ad")
    return folder


def map_args(trained: Path, out: Path, *extra) -> list:
    """inclust-map of section2.h5ad onto the ``trained`` model.pt (20 steps) to ``out``."""
    return [trained / "model.pt", "--data", trained / "section2.h5ad", "--out", out, "--steps", "20", "--quiet", *extra]
