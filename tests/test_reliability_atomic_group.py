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
