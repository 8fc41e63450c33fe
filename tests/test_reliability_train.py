"""inclust-train (and inclust-map where the fault is the same) under hostile conditions (issue 25): a
full disk while saving, outputs committed together or not at all, misspelt modality names, a diverged
training, saving an untrained model, a read-only output folder. Each: exit 2, one line
``error: <problem>; <fix>``, nothing written, a previous output untouched. The rest of inclust-map's:
tests/test_reliability_map.py.

A full disk is a real tmpfs of a few kB where the machine lets the tests mount one (root); an
ENOSPC injected at the checkpoint's write call stands in elsewhere (and runs everywhere).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

import pytest
from click.testing import CliRunner

from inclust_plus import interrupt
from inclust_plus.errors import InclustError
from inclust_plus.training import checkpoint as checkpoint_mod
from inclust_plus.training.fitting import loss_plot
from inclust_plus.training.cli import main as train
from inclust_plus.training.map_cli import main as map_main
from reliability_helpers import one_error
from train_reliability_helpers import (fill, map_args, needs_tmpfs, one_line, run, small_disk, snapshot, temporaries,
                                       tmpfs_available, toy_config, trained)  # noqa: F401 - trained is a fixture

PAGE = 4096


# --- 2. a full disk while the checkpoint is written ------------------------------------------------
@needs_tmpfs
def test_train_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    cfg = toy_config(tmp_path)
    with small_disk(tmp_path / "disk", 64 * 1024) as disk:  # the model.pt of the toy config is ~130 kB
        proc = run("train", cfg, "--out", disk / "model.pt", "--quiet")
        line = one_line(proc, f"No space left on device: {disk / 'model.pt'}", "free some disk space")
        assert "unexpected pos" not in line
        assert sorted(os.listdir(disk)) == []  # no partial model.pt, no plot, no temporary


@contextlib.contextmanager
def trained_on_a_small_disk(tmp_path):
    """A 1 MiB file system holding the model.pt (and plot) of one toy training: (config, disk, model.pt)."""
    cfg = toy_config(tmp_path)
    with small_disk(tmp_path / "disk", 1024 * 1024) as disk:
        out = disk / "model.pt"
        assert CliRunner().invoke(train, [str(cfg), "--out", str(out), "--quiet"]).exit_code == 0
        yield cfg, disk, out


@needs_tmpfs
def test_train_on_a_full_disk_keeps_the_previous_outputs(tmp_path):
    with trained_on_a_small_disk(tmp_path) as (cfg, disk, out):
        fill(disk, 40 * 1024)
        before = snapshot(disk)
        proc = run("train", cfg, "--out", out, "--quiet", "--force", "--seed", "3")
        one_line(proc, "No space left on device", "free some disk space")
        assert snapshot(disk) == before


@needs_tmpfs
def test_map_on_a_full_disk_is_one_line_and_leaves_nothing(trained, tmp_path):
    with small_disk(tmp_path / "disk", 64 * 1024) as disk:
        proc = run("map", *map_args(trained, disk / "mapped.pt"))
        one_line(proc, f"No space left on device: {disk / 'mapped.pt'}", "free some disk space")
        assert sorted(os.listdir(disk)) == []


class _FullDisk:
    """A file whose write fails with ENOSPC, as on a full disk (the bytes before it were written)."""

    def __init__(self, path, mode):
        self.fh = open(path, mode)

    def write(self, data):
        self.fh.write(bytes(data)[: len(data) // 3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


@pytest.mark.parametrize("command", ["train", "map"])
def test_injected_full_disk_at_the_checkpoint_write(trained, tmp_path, monkeypatch, command):
    """Where no tmpfs can be mounted this stands in for the tests above: the same error at the write call."""
    out = tmp_path / "out.pt"
    out.write_bytes(b"previous")
    monkeypatch.setattr(checkpoint_mod, "open", _FullDisk, raising=False)
    if command == "train":
        cfg = toy_config(tmp_path)
        (tmp_path / "out.loss.svg").write_bytes(b"previous plot")
        argv, cmd = [cfg, "--out", out, "--quiet", "--force"], train
    else:
        argv, cmd = map_args(trained, out, "--force"), map_main
    line = one_error(cmd, argv, match=(f"No space left on device: {out}", "free some disk space"), unchanged=tmp_path)
    assert "unexpected pos" not in line


# --- 3. the outputs of inclust-train appear together or not at all ------------------------------------
@needs_tmpfs
def test_full_disk_at_the_plot_leaves_model_and_plot_as_they_were(tmp_path):
    """Room for the new model.pt but not for its plot: before, model.pt was replaced and the plot was not."""
    with trained_on_a_small_disk(tmp_path) as (cfg, disk, out):
        model_pages = -(-out.stat().st_size // PAGE)
        assert (disk / "model.loss.svg").stat().st_size > PAGE  # the plot needs two pages: one more than is left
        free = fill(disk, (model_pages + 1) * PAGE)
        assert (model_pages + 1) * PAGE <= free < (model_pages + 2) * PAGE
        before = snapshot(disk)
        proc = run("train", cfg, "--out", out, "--quiet", "--force", "--seed", "3")
        one_line(proc, f"No space left on device: {disk}", "free some disk space")
        assert snapshot(disk) == before


def test_ctrl_c_while_the_plot_is_written_changes_nothing(tmp_path, monkeypatch):
    cfg = toy_config(tmp_path)
    out = tmp_path / "model.pt"
    assert CliRunner().invoke(train, [str(cfg), "--out", str(out), "--quiet"]).exit_code == 0
    before = snapshot(tmp_path)
    drawn = loss_plot.loss_curves

    def interrupted(history, path, title=""):
        interrupt.request("SIGINT")  # Ctrl-C while the plot is drawn: model.pt is already complete
        return drawn(history, path, title)

    monkeypatch.setattr(loss_plot, "loss_curves", interrupted)
    res = CliRunner().invoke(train, [str(cfg), "--out", str(out), "--quiet", "--force", "--seed", "3"])
    assert res.exit_code == 130, res.output
    assert res.stderr.strip() == "error: interrupted by SIGINT; no output was written (an existing one is unchanged)"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("stop", ["SIGINT", "EIO"])
def test_a_stop_or_failure_between_the_two_moves_puts_model_pt_back(tmp_path, monkeypatch, stop):
    """model.pt is already in place when the plot's move is stopped (Ctrl-C) or fails (a disk error):
    the previous model.pt comes back, and the run says nothing was written."""
    from inclust_plus import atomic

    cfg = toy_config(tmp_path)
    out = tmp_path / "model.pt"
    assert CliRunner().invoke(train, [str(cfg), "--out", str(out), "--quiet"]).exit_code == 0
    before = snapshot(tmp_path)
    real, moved = atomic._move_in, []

    def then_stop(output, tmp):
        if moved:  # the second move
            if stop == "EIO":
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(output.path))
        kept = real(output, tmp)
        moved.append(output.path)
        if stop == "SIGINT":
            interrupt.request("SIGINT")
        return kept

    monkeypatch.setattr(atomic, "_move_in", then_stop)
    res = CliRunner().invoke(train, [str(cfg), "--out", str(out), "--quiet", "--force", "--seed", "3"])
    assert moved[0] == out
    if stop == "SIGINT":
        assert res.exit_code == 130, res.output
        assert res.stderr.strip() == "error: interrupted by SIGINT; no output was written (an existing one is unchanged)"
    else:
        assert res.exit_code == 2, res.output
        assert res.stderr.strip() == f"error: Input/output error: {tmp_path / 'model.loss.svg'}; the disk reported an input/output error; check it or write elsewhere"
    assert snapshot(tmp_path) == before


def test_a_plot_that_appears_meanwhile_leaves_no_model_behind(tmp_path, monkeypatch):
    """Without --force neither output may replace a file: the plot appearing while training is refused,
    and the model.pt of the same run is not left behind on its own."""
    cfg = toy_config(tmp_path)
    out = tmp_path / "model.pt"
    drawn = loss_plot.loss_curves

    def someone_else(history, path, title=""):
        (tmp_path / "model.loss.svg").write_text("another run's plot")
        return drawn(history, path, title)

    monkeypatch.setattr(loss_plot, "loss_curves", someone_else)
    one_error(train, [cfg, "--out", out, "--quiet"], match=(f"output {tmp_path / 'model.loss.svg'} appeared while this run was writing it", "--force"))
    assert not out.exists()
    assert (tmp_path / "model.loss.svg").read_text() == "another run's plot"
    assert temporaries(tmp_path) == []


# --- 7. misspelt modality names ---------------------------------------------------------------------
@pytest.mark.parametrize("extra, top, words", [
    ("[preprocessing.RNA]\nlog1p = true", "", ("[preprocessing.RNA]", "'RNA'", "modalities are: rna", "case-sensitive")),
    ("", 'modalities = ["rna", "protien"]', ("modalities", "'protien'", "modalities are: rna")),
], ids=["preprocessing table", "modalities list"])
def test_misspelt_modality_is_one_line(tmp_path, monkeypatch, extra, top, words):
    from inclust_plus.training.model import InClust

    def never(*args, **kwargs):
        raise AssertionError("trained despite a misspelt modality")

    monkeypatch.setattr(InClust, "fit", never)
    cfg = toy_config(tmp_path, extra=extra, top=top)
    one_error(train, [cfg, "--out", tmp_path / "model.pt", "--quiet"], match=words, unchanged=tmp_path)


# --- 9. a diverged model is an error, never a model ----------------------------------------------------
DIVERGED = re.compile(r"error: training diverged: the (total|reconstruction|kl|categorical|label|mixing|validation)"
                      r"( and \w+)* loss terms? became (nan|inf|-inf) in epoch \d+; "
                      r"lower training\.learning_rate \(now 1e\+06; try 100000\) or check the data for extreme values")


def test_diverged_training_is_exit_2_and_no_model(tmp_path):
    cfg = toy_config(tmp_path, extra="learning_rate = 1e6")
    (tmp_path / "model.pt").write_bytes(b"previous")
    before = snapshot(tmp_path)
    proc = run("train", cfg, "--out", tmp_path / "model.pt", "--quiet", "--force")
    line = one_line(proc)
    assert DIVERGED.fullmatch(line), line  # here: the reconstruction and kl loss terms became nan in epoch 2
    assert snapshot(tmp_path) == before


def test_diverged_member_in_a_worker_process_is_the_same_line(tmp_path):
    """Ensemble members trained in worker processes report the divergence as the same one line."""
    cfg = toy_config(tmp_path, extra="learning_rate = 1e6\nworkers = 2", top="[model]\nensemble = 2")
    proc = run("train", cfg, "--out", tmp_path / "model.pt", "--quiet")
    line = one_line(proc)
    assert DIVERGED.fullmatch(re.sub(r" of the network with seed \d", "", line)), line  # the seed is named where k > 1 share a process
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "model.loss.svg").exists()


def test_diverged_ensemble_member_is_named(tmp_path):
    cfg = toy_config(tmp_path, extra="learning_rate = 1e6\nworkers = 1", top="[model]\nensemble = 2")
    line = one_error(train, [cfg, "--out", tmp_path / "model.pt", "--quiet"], match="of the network with seed 0", unchanged=tmp_path)
    assert DIVERGED.fullmatch(re.sub(r" of the network with seed \d", "", line))


# --- 12. smaller ones -------------------------------------------------------------------------------------
def test_saving_an_untrained_model_is_one_line(tmp_path):
    import anndata as ad

    from inclust_plus.training.model import InClust

    model = InClust.setup(ad.read_h5ad(toy_config(tmp_path).with_name("ref.h5ad")), epochs=1)
    with pytest.raises(InclustError) as err:
        model.save(tmp_path / "model.pt")
    assert err.value.one_line() == "the model is not trained yet: there are no weights to save; call model.train() first"
    assert not (tmp_path / "model.pt").exists()


def _read_only_folder(tmp_path):
    """A folder no file can be created in, as the machine allows: a read-only tmpfs, or chmod for a non-root user."""
    folder = tmp_path / "ro"
    if tmpfs_available():
        return small_disk(folder, 64 * 1024, "ro"), "Read-only file system", "read-only"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o500)
        import contextlib

        return contextlib.nullcontext(folder), "Permission denied", "permissions"
    pytest.skip("root without tmpfs: no read-only folder can be made")


@pytest.mark.parametrize("command", ["train", "map"])
def test_read_only_out_folder_is_said_before_any_work(trained, tmp_path, monkeypatch, command):
    from inclust_plus.training import mapping
    from inclust_plus.training.model import InClust

    def never(*args, **kwargs):
        raise AssertionError("worked before checking the output folder")

    monkeypatch.setattr(InClust, "fit", never)
    monkeypatch.setattr(InClust, "load", never)
    monkeypatch.setattr(mapping, "map_query", never)
    context, problem, fix = _read_only_folder(tmp_path)
    with context as folder:
        if command == "train":
            argv, cmd = [toy_config(tmp_path), "--out", folder / "model.pt", "--quiet"], train
        else:
            argv, cmd = map_args(trained, folder / "mapped.pt"), map_main
        one_error(cmd, argv, match=(f"{problem}: {folder};", fix), unchanged=folder)
