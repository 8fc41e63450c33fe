"""Outputs (issue 12): no replacing a file that appeared meanwhile, last writer wins with --force,
an output never equals (or, for folders, holds) an input of the run, stale temporaries are removed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from inclust_plus import atomic
from inclust_plus.errors import InclustError
from inclust_plus.runtime import output as output_mod
from inclust_plus.runtime.cli import cli
from reliability_helpers import good_input, one_error, snapshot, temporaries
from runtime_fixtures import make_toy_export


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"))


def impute(toy, inp, out, *extra):
    return ["impute", "--onnx", toy.folder, "--input", inp, "--output", out, "--combination", "panel_to_rna", "--quiet", *extra]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the final step ---------------------------------------------------------------------------------
def test_concurrent_writers_without_force_exactly_one_wins(tmp_path):
    """Eight threads commit to one new path at once: one file lands, seven get the one-line error."""
    target = tmp_path / "out.bin"
    barrier = threading.Barrier(8)
    results: dict[int, str] = {}

    def writer(i: int) -> None:
        try:
            with atomic.atomic_path(target) as tmp:
                tmp.write_bytes(bytes([i]) * 1000)
                barrier.wait()
            results[i] = "won"
        except InclustError as err:
            results[i] = err.one_line()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [i for i, r in results.items() if r == "won"]
    assert len(winners) == 1, results
    assert target.read_bytes() == bytes([winners[0]]) * 1000
    assert all("appeared while this run was writing it; pass --force" in r for i, r in results.items() if i not in winners)
    assert temporaries(tmp_path) == []


def test_force_last_writer_wins_atomically(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic.atomic_path(target, force=True) as first, atomic.atomic_path(target, force=True) as second:
        first.write_bytes(b"first")
        second.write_bytes(b"second")
        assert target.read_bytes() == b"old"  # nothing visible before the commit
    assert target.read_bytes() == b"first"  # the outer block commits last: the last writer wins
    assert temporaries(tmp_path) == []


def test_runtime_output_appearing_meanwhile_is_kept(toy, tmp_path, monkeypatch):
    """Another run creates the output while this one writes: without --force this run fails, the other's file stays."""
    inp = good_input(tmp_path / "in.h5ad")
    out = tmp_path / "o.h5ad"
    finish = output_mod.OutputWriter.finish

    def finish_after_a_rival(self, provenance):
        out.write_bytes(b"the other run's output")
        finish(self, provenance)

    monkeypatch.setattr(output_mod.OutputWriter, "finish", finish_after_a_rival)
    one_error(cli, impute(toy, inp, out), match=("appeared while this run was writing it", "--force"))
    assert out.read_bytes() == b"the other run's output" and temporaries(tmp_path) == []
    result = CliRunner().invoke(cli, [str(a) for a in impute(toy, inp, out, "--force")])
    assert result.exit_code == 0, result.output  # with --force: this run, the last writer, wins
    assert ad.read_h5ad(out).shape == (40, 10) and temporaries(tmp_path) == []


def test_atomic_dir_no_replace_and_exchange(tmp_path):
    target = tmp_path / "export"
    with pytest.raises(InclustError, match="appeared while this run was writing it"):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "a").write_text("1")
            target.mkdir()  # appeared meanwhile, empty: a plain rename would silently replace it
    assert list(target.iterdir()) == [] and temporaries(tmp_path) == []
    (target / "a").write_text("old")
    with atomic.atomic_dir(target, force=True) as tmp:
        (tmp / "b").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b"] and temporaries(tmp_path) == []

    def refuse(folder):
        raise InclustError(f"{folder.name} holds foreign files", "move them")

    worked = []
    with pytest.raises(InclustError, match="export holds foreign files"):
        with atomic.atomic_dir(target, force=True, replaceable=refuse) as tmp:
            worked.append(1)  # never: the refusal comes on entry, before the work
    assert worked == [] and [p.name for p in target.iterdir()] == ["b"] and temporaries(tmp_path) == []
    calls = []

    def refuse_later(folder):  # fine on entry; foreign by the time the work is done
        calls.append(folder.name)
        if len(calls) > 1:
            refuse(folder)

    with pytest.raises(InclustError, match="export holds foreign files"):
        with atomic.atomic_dir(target, force=True, replaceable=refuse_later) as tmp:
            (tmp / "c").write_text("x")
    assert calls == ["export", "export"] and [p.name for p in target.iterdir()] == ["b"] and temporaries(tmp_path) == []


# --- outputs never equal an input ----------------------------------------------------------------
def test_runtime_output_never_an_input(toy, tmp_path):
    inp = good_input(tmp_path / "in.h5ad")
    (tmp_path / "link.h5ad").symlink_to(inp)
    os.link(inp, tmp_path / "hard.h5ad")
    for out in (inp, tmp_path / "link.h5ad", tmp_path / "hard.h5ad"):
        one_error(cli, impute(toy, inp, out, "--force"), match="same file as input", unchanged=tmp_path)
    for name in ("manifest.json", "panel_to_rna.onnx"):
        one_error(cli, impute(toy, inp, toy.folder / name, "--force"), match="same file as input", unchanged=toy.folder)


def test_train_output_never_an_input(tmp_path):
    from inclust_plus.training.cli import main as train

    good_input(tmp_path / "ref.h5ad")
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[datasets]]\nname = "ref"\npath = "ref.h5ad"\n[training]\nepochs = 1\n')
    for out in (cfg, tmp_path / "ref.h5ad"):
        one_error(train, [cfg, "--out", out, "--force", "--quiet"], match=("same file as input", str(out.name)), unchanged=tmp_path)
    # the loss curve (model.loss.svg next to --out) must not replace an input either
    plot_named = tmp_path / "x.loss.svg"
    plot_named.write_bytes(b"a dataset that happens to have this name")
    cfg2 = tmp_path / "cfg2.toml"
    cfg2.write_text('[[datasets]]\nname = "ref"\npath = "x.loss.svg"\n[training]\nepochs = 1\n')
    one_error(train, [cfg2, "--out", tmp_path / "x.pt", "--force", "--quiet"], match="x.loss.svg", unchanged=tmp_path)


def test_export_never_deletes_the_model_or_foreign_files(tmp_path):
    from export_toys import make_toy_checkpoint
    from inclust_plus.export.cli import main as export

    folder = tmp_path / "work"
    folder.mkdir()
    ckpt = make_toy_checkpoint(folder / "model.pt", seed=2)
    one_error(export, [ckpt, "--out", folder, "--force"], match=("holds the input", "model.pt"), unchanged=tmp_path)
    one_error(export, [ckpt, "--out", tmp_path / "e", "--triton", folder, "--force"], match=("holds the input", "--triton"), unchanged=tmp_path)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    one_error(export, [ckpt, "--out", tmp_path / "e", "--force"], match=("did not write (notes.txt)", "--out"), unchanged=tmp_path)
    assert (folder / "model.pt").is_file() and (tmp_path / "e" / "notes.txt").read_text() == "mine"


# --- stale temporaries ------------------------------------------------------------------------------
def test_stale_temporaries_of_dead_runs_are_removed(toy, tmp_path):
    inp = good_input(tmp_path / "in.h5ad")
    out = tmp_path / "o.h5ad"
    dead, alive = dead_pid(), os.getppid()
    stale = tmp_path / f".o.h5ad.inclust-{dead}-0123abcd.tmp.h5ad"
    live = tmp_path / f".o.h5ad.inclust-{alive}-0123abcd.tmp.h5ad"
    other = tmp_path / f".other.h5ad.inclust-{dead}-0123abcd.tmp.h5ad"
    stale_dir = tmp_path / f".o.h5ad.inclust-{dead}-89abcdef.tmp"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    stale_dir.mkdir()
    (stale_dir / "x.onnx").write_bytes(b"partial")
    result = CliRunner().invoke(cli, [str(a) for a in impute(toy, inp, out)])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and not stale_dir.exists()  # a dead run's leftovers of this output: removed
    assert live.exists() and other.exists()  # a live run's, and another output's: left alone
    assert atomic.temp_name(out).name.startswith(f".o.h5ad.inclust-{os.getpid()}-")


def test_long_but_valid_output_name(toy, tmp_path):
    """A 250-character name is valid; its temporary name must not exceed the 255-byte limit."""
    inp = good_input(tmp_path / "in.h5ad")
    out = tmp_path / ("x" * 244 + ".h5ad")
    result = CliRunner().invoke(cli, [str(a) for a in impute(toy, inp, out)])
    assert result.exit_code == 0, result.output
    assert ad.read_h5ad(out).shape == (40, 10) and temporaries(tmp_path) == []
    assert snapshot(tmp_path).keys() == {"in.h5ad", out.name}


def test_output_under_a_file(toy, tmp_path):
    inp = good_input(tmp_path / "in.h5ad")
    one_error(cli, impute(toy, inp, inp / "o.h5ad"), match="is not a folder", unchanged=tmp_path)
    np.testing.assert_equal(ad.read_h5ad(inp).shape, (40, 10))


def test_no_replace_without_hard_links(tmp_path, monkeypatch):
    """A file system without hard links (FAT, some FUSE mounts) still never replaces a file that appeared."""

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    target = tmp_path / "out.bin"
    with atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"mine")
    assert target.read_bytes() == b"mine"
    with pytest.raises(InclustError, match="appeared while this run was writing it"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"second")
    assert target.read_bytes() == b"mine" and temporaries(tmp_path) == []
