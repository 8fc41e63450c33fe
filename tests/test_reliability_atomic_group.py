"""atomic_outputs (issue 25): several outputs of one command, files and folders, appear together or not
at all; a move that fails puts back the ones already made, previous outputs byte for byte."""

from __future__ import annotations

import pytest

from inclust_plus import atomic
from inclust_plus.atomic import Output, atomic_outputs
from inclust_plus.errors import InclustError
from reliability_helpers import snapshot


def test_files_and_a_folder_appear_together(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"old model")
    outs = (Output(tmp_path / "model.pt", force=True), Output(tmp_path / "loss.png"), Output(tmp_path / "export", folder=True))
    with atomic_outputs(*outs) as (model, plot, folder):
        model.write_bytes(b"new model")
        plot.write_bytes(b"plot")
        (folder / "manifest.json").write_text("{}")
        assert snapshot(tmp_path)["model.pt"] == b"old model"  # nothing in place before the block ends
    assert snapshot(tmp_path) == {"model.pt": b"new model", "loss.png": b"plot", "export": None, "export/manifest.json": b"{}"}


def test_a_late_failure_puts_back_what_was_moved(tmp_path, monkeypatch):
    (tmp_path / "model.pt").write_bytes(b"old model")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text("old")
    before = snapshot(tmp_path)
    real = atomic._move_in

    def move_in(out, tmp):
        if out.path.name == "loss.png":
            (tmp_path / "loss.png").write_bytes(b"another run's")  # appeared between the check and the move
        return real(out, tmp)

    monkeypatch.setattr(atomic, "_move_in", move_in)
    outs = (Output(tmp_path / "model.pt", force=True), Output(tmp_path / "export", folder=True, force=True), Output(tmp_path / "loss.png"))
    with pytest.raises(InclustError, match="appeared while this run was writing it"):
        with atomic_outputs(*outs) as (model, folder, plot):
            model.write_bytes(b"new model")
            (folder / "manifest.json").write_text("new")
            plot.write_bytes(b"plot")
    after = snapshot(tmp_path)
    assert after.pop("loss.png") == b"another run's"
    assert after == before  # model.pt and export/ are the previous ones again, no temporaries


def test_an_error_in_the_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_outputs(Output(tmp_path / "a"), Output(tmp_path / "b", folder=True)) as (a, b):
            a.write_bytes(b"x")
            raise RuntimeError("failed")
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize("n", [1, 2], ids=["one output", "two outputs"])
def test_no_hard_links_one_commit_for_one_output_or_several(tmp_path, monkeypatch, n):
    """A file system without hard links (FAT, some FUSE): the rename fallback the single-file commit
    had is the one commit's, so a group of outputs works there too (it failed with EPERM before)."""
    import errno
    import os

    def no_links(src, dst, **kw):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), str(dst))

    monkeypatch.setattr(atomic.os, "link", no_links)
    names = ["a.txt", "b.txt"][:n]
    with atomic_outputs(*(Output(tmp_path / name) for name in names)) as tmps:
        for tmp, name in zip(tmps, names):
            tmp.write_text(name)
    assert snapshot(tmp_path) == {name: name.encode() for name in names}  # no temporary left
    (tmp_path / "a.txt").unlink()
    (tmp_path / "late.txt").write_text("another run's")
    with pytest.raises(InclustError, match="late.txt appeared while this run was writing it"):
        with atomic_outputs(*(Output(tmp_path / name) for name in ["a.txt", "late.txt"][2 - n:])) as tmps:
            for tmp in tmps:
                tmp.write_text("new")
    assert (tmp_path / "late.txt").read_text() == "another run's" and not (tmp_path / "a.txt").exists()


@pytest.mark.parametrize("n", [1, 2], ids=["one output", "two outputs"])
def test_a_folder_where_a_file_goes_is_refused_even_with_force(tmp_path, n):
    """Never moved aside as the 'previous file' and then removed (what a group of outputs did before)."""
    (tmp_path / "model.pt").mkdir()
    (tmp_path / "model.pt" / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    outs = [Output(tmp_path / "model.pt", force=True), Output(tmp_path / "loss.png", force=True)][:n]
    with pytest.raises(IsADirectoryError) as err:
        with atomic_outputs(*outs) as tmps:
            for tmp in tmps:
                tmp.write_bytes(b"new")
    assert err.value.filename == str(tmp_path / "model.pt")
    assert snapshot(tmp_path) == before
