"""File-system failures (issue 12): permission denied, read-only file system, full disk, name too
long: one line ``error: ...; ...``, exit 2, nothing left behind, an existing output intact.

These failures are injected where the operating system would report them (creating the temporary
file, writing into it) with the errno and message the real call gives. A real permission test runs
too: as root (CI) the command runs as the user nobody without capabilities (setpriv), since root
writes anywhere; a real full disk is tests/test_reliability_disk.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from inclust_plus import atomic
from inclust_plus.errors import filesystem_error
from inclust_plus.runtime import output as output_mod
from inclust_plus.runtime.cli import cli
from reliability_helpers import good_input, one_error, snapshot, temporaries
from runtime_fixtures import make_toy_export


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"))


def impute(toy, inp, out, *extra):
    return ["impute", "--onnx", toy.folder, "--input", inp, "--output", out, "--combination", "panel_to_rna", "--quiet", *extra]


def _refuse(code: int):
    def fail(path, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(path))

    return fail


@pytest.mark.parametrize("code, fix", [(errno.EACCES, "permissions"), (errno.EROFS, "read-only"), (errno.ENOSPC, "disk space")],
                         ids=["permission", "read-only", "full"])
def test_runtime_cannot_create_the_output(toy, tmp_path, monkeypatch, code, fix):
    inp = good_input(tmp_path / "in.h5ad")
    out = tmp_path / "o.h5ad"
    out.write_bytes(b"previous")
    monkeypatch.setattr(atomic, "_new_file", _refuse(code))
    line = one_error(cli, impute(toy, inp, out, "--force"), match=(os.strerror(code), fix), unchanged=tmp_path)
    assert str(tmp_path) in line  # names the place


def _as_nobody() -> list[str]:
    """The prefix that runs a command as the unprivileged user nobody, without root's capabilities
    (root writes anywhere: the permission check only happens for another user)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("root runs the tests but setpriv (util-linux) is missing: the permission case cannot drop privileges")
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]


def _ids() -> tuple[int, int]:
    import pwd

    user = pwd.getpwnam("nobody")
    return user.pw_uid, user.pw_gid


def test_real_permission_denied(toy):
    """A folder the user may not write to: as root (CI), the command runs as nobody on a root-owned 0755 folder."""
    root = Path(tempfile.mkdtemp(prefix="inclust-perm-"))  # pytest's tmp folders are 0700 to everyone but their owner
    try:
        root.chmod(0o755)
        shutil.copytree(toy.folder, root / "toy")
        inp = good_input(root / "in.h5ad")
        locked = root / "locked"
        locked.mkdir()
        (locked / "o.h5ad").write_bytes(b"previous")
        for p in (root, root / "toy", locked):
            p.chmod(0o755)
        for p in [inp, locked / "o.h5ad", *(root / "toy").iterdir()]:
            p.chmod(0o644)
        before = snapshot(root)
        exe = Path(sys.executable).with_name("inclust-run")
        command = [str(exe), "impute", "--onnx", str(root / "toy"), "--input", str(inp), "--output", str(locked / "o.h5ad"),
                   "--combination", "panel_to_rna", "--quiet", "--force"]
        if os.geteuid() == 0:
            command = _as_nobody() + command
            assert subprocess.run(_as_nobody() + ["sh", "-c", f"test -w {locked}"]).returncode != 0  # nobody really cannot write there
        else:
            locked.chmod(0o555)
        home = Path(tempfile.mkdtemp(prefix="inclust-home-"))  # a real user has a home to write to (onnxruntime keeps an id there)
        os.chown(home, *(_ids() if os.geteuid() == 0 else (-1, -1)))
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})
        shutil.rmtree(home, ignore_errors=True)
        locked.chmod(0o755)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == f"error: Permission denied: {locked / 'o.h5ad'}; check the permissions of that path or choose another one", done.stderr
        assert snapshot(root) == before
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_disk_full_while_writing_the_h5ad(toy, tmp_path, monkeypatch):
    """h5py reports HDF5's errno only inside its message: that is parsed too."""
    inp = good_input(tmp_path / "in.h5ad")
    out = tmp_path / "o.h5ad"
    out.write_bytes(b"previous")

    def full(self, *args):
        raise OSError(f"[Errno 28] Can't synchronously write data (file write failed: time = now, filename = '{self.f.filename}', "
                      "file descriptor = 7, errno = 28, error message = 'No space left on device', buf = 0x1, total write size = 4096)")

    monkeypatch.setattr(output_mod.OutputWriter, "write", full)
    one_error(cli, impute(toy, inp, out, "--force"), match=("No space left on device", "free some disk space"), unchanged=tmp_path)


def test_name_too_long_is_one_line(toy, tmp_path):
    inp = good_input(tmp_path / "in.h5ad")
    one_error(cli, impute(toy, inp, tmp_path / ("x" * 300 + ".h5ad")), match=("File name too long", "shorter"), unchanged=tmp_path)


def test_training_disk_full_and_read_only(tmp_path, monkeypatch):
    import torch

    from inclust_plus.training.cli import main as train

    good_input(tmp_path / "ref.h5ad", n=60)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[datasets]]\nname = "ref"\npath = "ref.h5ad"\n[training]\nepochs = 1\n')
    (tmp_path / "model.pt").write_bytes(b"previous")

    def full(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    one_error(train, [cfg, "--out", tmp_path / "model.pt", "--force", "--quiet"], match=("No space left", "disk space"), unchanged=tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr(atomic, "_new_file", _refuse(errno.EROFS))
    one_error(train, [cfg, "--out", tmp_path / "model.pt", "--force", "--quiet"], match=("Read-only file system", "read-only"), unchanged=tmp_path)


def test_export_disk_full_and_permission(tmp_path, monkeypatch):
    from export_toys import make_toy_checkpoint
    from inclust_plus.export.cli import main as export

    ckpt = make_toy_checkpoint(tmp_path / "model.pt", seed=2)
    real = Path.write_bytes

    def full(self, data):
        if self.suffix == ".onnx":
            real(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    one_error(export, [ckpt, "--out", tmp_path / "e", "--no-torchscript"], match=("No space left", "disk space"), unchanged=tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr(atomic, "_new_dir", _refuse(errno.EACCES))
    one_error(export, [ckpt, "--out", tmp_path / "e"], match=("Permission denied", "permissions"), unchanged=tmp_path)
    assert temporaries(tmp_path) == []


def test_filesystem_error_messages():
    err = filesystem_error(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/data/o.h5ad"))
    assert err.one_line() == f"{os.strerror(errno.EDQUOT)}: /data/o.h5ad; your disk quota is used up; free some space or write elsewhere"
    assert filesystem_error(OSError("no errno here")) is None  # not a file-system failure we can explain: re-raised
