"""inclust-train and inclust-map under hostile conditions (issue 25): a full disk while saving, outputs
committed together or not at all, misspelt modality names, a diverged model, unsafe batch names, an
output that appears while mapping, a read-only output folder, the help's example. Each: exit 2, one
line ``error: <problem>; <fix>``, nothing written, a previous output untouched.

A full disk is a real tmpfs of a few kB where the machine lets the tests mount one (root); an
ENOSPC injected at the checkpoint's write call stands in elsewhere (and runs everywhere).
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from inclust_plus import interrupt
from inclust_plus.errors import InclustError
from inclust_plus.training import checkpoint as checkpoint_mod
from inclust_plus.training import loss_plot
from inclust_plus.training.cli import main as train
from inclust_plus.training.map_cli import EPILOG as MAP_EPILOG
from inclust_plus.training.map_cli import main as map_main
from reliability_helpers import one_error
from train_reliability_helpers import (fill, history_of, needs_tmpfs, run, one_line, section_data, small_disk, snapshot,
                                       temporaries, tmpfs_available, toy_config)

PAGE = 4096


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model.pt from the real inclust-train, and new cells (section2.h5ad) to map onto it."""
    folder = tmp_path_factory.mktemp("trained")
    cfg = toy_config(folder)
    res = CliRunner().invoke(train, [str(cfg), "--out", str(folder / "model.pt"), "--quiet"])
    assert res.exit_code == 0, res.output
    section_data(folder / "section2.h5ad")
    return folder


def map_args(trained, out, *extra):
    return [trained / "model.pt", "--data", trained / "section2.h5ad", "--out", out, "--steps", "20", "--quiet", *extra]


# --- 2. a full disk while the checkpoint is written ------------------------------------------------
@needs_tmpfs
def test_train_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    cfg = toy_config(tmp_path)
    with small_disk(tmp_path / "disk", 64 * 1024) as disk:  # the model.pt of the toy config is ~130 kB
        proc = run("train", cfg, "--out", disk / "model.pt", "--quiet")
        line = one_line(proc, f"No space left on device: {disk / 'model.pt'}", "free some disk space")
        assert "unexpected pos" not in line
        assert sorted(os.listdir(disk)) == []  # no partial model.pt, no plot, no temporary


@needs_tmpfs
def test_train_on_a_full_disk_keeps_the_previous_outputs(tmp_path):
    cfg = toy_config(tmp_path)
    with small_disk(tmp_path / "disk", 1024 * 1024) as disk:
        out = disk / "model.pt"
        assert CliRunner().invoke(train, [str(cfg), "--out", str(out), "--quiet"]).exit_code == 0
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
    cfg = toy_config(tmp_path)
    with small_disk(tmp_path / "disk", 1024 * 1024) as disk:
        out = disk / "model.pt"
        assert CliRunner().invoke(train, [str(cfg), "--out", str(out), "--quiet"]).exit_code == 0
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
    real, moved = atomic.commit_file, []

    def then_stop(tmp, target, force):
        if moved:  # the second move
            if stop == "EIO":
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(target))
        real(tmp, target, force)
        moved.append(target)
        if stop == "SIGINT":
            interrupt.request("SIGINT")

    monkeypatch.setattr(atomic, "commit_file", then_stop)
    res = CliRunner().invoke(train, [str(cfg), "--out", str(out), "--quiet", "--force", "--seed", "3"])
    assert moved[0] == out
    if stop == "SIGINT":
        assert res.exit_code == 130, res.output
        assert res.stderr.strip() == "error: interrupted by SIGINT; no output was written (an existing one is unchanged)"
    else:
        assert res.exit_code == 2, res.output
        assert res.stderr.strip() == f"error: Input/output error: {tmp_path / 'model.loss.svg'}; the disk reported an input/output error; check it or write elsewhere"
    assert snapshot(tmp_path) == before


def test_diverged_ensemble_member_is_named(tmp_path):
    cfg = toy_config(tmp_path, extra="learning_rate = 1e6\nworkers = 1", top="[model]\nensemble = 2")
    line = one_error(train, [cfg, "--out", tmp_path / "model.pt", "--quiet"], match="of the network with seed 0", unchanged=tmp_path)
    assert DIVERGED.fullmatch(re.sub(r" of the network with seed \d", "", line))


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


def test_diverged_mapping_is_exit_2_and_no_model(trained, tmp_path):
    one_error(map_main, map_args(trained, tmp_path / "mapped.pt", "--learning-rate", "1e30"),
              match=("the mapping diverged: its loss became", "at step 2 of 20", "lower the learning rate (--learning-rate, now 1e+30)"),
              unchanged=tmp_path)


def test_mapping_a_model_with_non_finite_weights_is_refused(trained, tmp_path):
    module, desc = checkpoint_mod.load_checkpoint(trained / "model.pt")
    with torch.no_grad():
        module.prior_means.fill_(float("nan"))
    checkpoint_mod.save_checkpoint(tmp_path / "nan.pt", module, desc)
    args = map_args(trained, tmp_path / "mapped.pt")
    args[0] = tmp_path / "nan.pt"
    one_error(map_main, args, match=("the mapping loss is nan before any step", "re-train the model"), unchanged=tmp_path)


# --- 10. unsafe batch names ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../evil", "a/b", "", " ", "-x"])
def test_unsafe_batch_name_is_refused_before_anything_is_read(trained, tmp_path, monkeypatch, name):
    from inclust_plus.training.model import InClust

    monkeypatch.setattr(InClust, "load", lambda *a: (_ for _ in ()).throw(AssertionError("read the model")))
    one_error(map_main, map_args(trained, tmp_path / "mapped.pt", "--name", name),
              match=(f"--name {name!r} cannot name the new batch's graphs and files", "letters, digits and _.+-"), unchanged=tmp_path)


def test_unsafe_data_file_name_needs_a_name(trained, tmp_path):
    data = tmp_path / "my section.h5ad"
    data.write_bytes((trained / "section2.h5ad").read_bytes())
    args = map_args(trained, tmp_path / "mapped.pt")
    args[2] = data
    one_error(map_main, args, match=("'my section'", "pass --name"), unchanged=tmp_path)


def test_unsafe_covariate_category_of_a_new_panel_is_refused(trained, tmp_path):
    import anndata as ad

    cells = ad.read_h5ad(trained / "section2.h5ad")
    cells.obs["run"] = "run 1/2"
    cells.write_h5ad(tmp_path / "runs.h5ad")
    args = map_args(trained, tmp_path / "mapped.pt", "--covariate-key", "run")
    args[2] = tmp_path / "runs.h5ad"
    one_error(map_main, args, match=("'run 1/2' cannot name", "pass --name"), unchanged=tmp_path)


# --- 11. an output that appears while mapping --------------------------------------------------------------
def test_map_without_force_never_replaces_an_output_that_appeared(trained, tmp_path, monkeypatch):
    from inclust_plus.training import mapping

    out = tmp_path / "mapped.pt"
    real = mapping.map_query

    def meanwhile(*args, **kwargs):
        result = real(*args, **kwargs)
        out.write_bytes(b"another run's model")  # a second inclust-map to the same --out finished first
        return result

    monkeypatch.setattr(mapping, "map_query", meanwhile)
    one_error(map_main, map_args(trained, out), match=(f"output {out} appeared while this run was writing it", "--force"))
    assert out.read_bytes() == b"another run's model"
    assert temporaries(tmp_path) == []


def test_map_with_force_replaces_it(trained, tmp_path):
    out = tmp_path / "mapped.pt"
    out.write_bytes(b"old")
    res = CliRunner().invoke(map_main, [str(a) for a in map_args(trained, out, "--force")])
    assert res.exit_code == 0, res.output
    assert checkpoint_mod.load_checkpoint(out)[1]["covariate"]["categories"] == ["b", "a", "section2"]  # first seen order, then the new batch


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


def _help_examples(epilog: str) -> list[list[str]]:
    lines = [line.split("#")[0].strip() for line in epilog.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("inclust-")]


def test_map_help_examples_are_real_command_lines(trained, tmp_path, monkeypatch):
    """Every example of ``inclust-map --help`` parses with the real CLIs, and the chain from mapping to
    inclust-run runs as written (in a folder holding the files it names)."""
    import mudata as md

    import anndata as ad

    from inclust_plus.export.cli import main as export_main
    from inclust_plus.runtime.cli import cli as run_cli

    examples = _help_examples(MAP_EPILOG)
    assert [e[0] for e in examples] == ["inclust-map"] * 3 + ["inclust-export", "inclust-run"]
    commands = {"inclust-map": map_main, "inclust-export": export_main, "inclust-run": run_cli}
    for argv in examples:  # click's own parser: an option the command lacks is an error here
        commands[argv[0]].make_context(argv[0], argv[1:], resilient_parsing=False)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes((trained / "model.pt").read_bytes())
    (tmp_path / "section2.h5ad").write_bytes((trained / "section2.h5ad").read_bytes())
    cells = ad.read_h5ad(tmp_path / "section2.h5ad")
    cells.obs["batch"] = ["r1" if i % 2 else "r2" for i in range(cells.n_obs)]
    md.MuData({"rna": cells}).write(tmp_path / "new_runs.h5mu")
    for argv in examples[:3]:
        res = CliRunner().invoke(map_main, argv[1:] + ["--quiet", "--steps", "20", "--force"])
        assert res.exit_code == 0, (argv, res.output)
    res = CliRunner().invoke(map_main, examples[0][1:] + ["--quiet", "--steps", "20", "--force"])  # mapped.pt as the first example makes it
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(export_main, examples[3][1:] + ["--no-torchscript"])
    assert res.exit_code == 0, res.output
    proc = subprocess.run([sys.executable, "-m", "inclust_plus.launch", "run", *examples[4][1:], "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imputed = ad.read_h5ad(tmp_path / "section2.imputed.h5ad")
    assert imputed.n_obs == cells.n_obs and imputed.layers["inclust_imputed"].shape == (cells.n_obs, 10)
