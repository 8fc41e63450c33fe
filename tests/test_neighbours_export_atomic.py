"""``add_to_export`` (export/neighbours_graph.py) replaces a graph and the manifest that pins its sha256
together or not at all: a failure between the two files leaves the previous export whole."""

from __future__ import annotations

import numpy as np
import pytest

from export_toys import make_toy_checkpoint
from inclust_plus import atomic
from inclust_plus.contract import manifest_io, read_manifest
from inclust_plus.export import export_model
from inclust_plus.export.neighbours_graph import add_to_export
from inclust_plus.training.checkpoint import load_checkpoint
from inclust_plus.training.model import InClust
from inclust_plus.training.neighbours import build_table

HELD = [1, 4, 9]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb_atomic")
    ckpt = make_toy_checkpoint(root / "model.pt", seed=4, preprocessing=False)
    manifest = export_model(ckpt, root / "out", combinations=["merfish_to_rna"])
    model = InClust(*load_checkpoint(ckpt))
    rng = np.random.default_rng(2)
    table = build_table(model, rng.random((60, 6), dtype=np.float32), rng.random((60, 3), dtype=np.float32), "merfish", "scrna", HELD)
    return manifest.parent, table


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _fail_on_manifest_text(monkeypatch):
    def broken(m):
        raise OSError(28, "No space left on device", "manifest.json")

    monkeypatch.setattr(manifest_io, "dumps", broken)


def _fail_on_second_move(monkeypatch):
    real, calls = atomic._move_in, []

    def second_fails(out, tmp):
        calls.append(out.path.name)
        if len(calls) == 2:
            raise OSError(5, "Input/output error", str(out.path))
        return real(out, tmp)

    monkeypatch.setattr(atomic, "_move_in", second_fails)


@pytest.mark.parametrize("inject", [_fail_on_manifest_text, _fail_on_second_move], ids=["writing the manifest", "moving the second file"])
def test_a_failure_between_the_files_leaves_the_old_export(prepared, tmp_path, monkeypatch, inject):
    import shutil

    folder = shutil.copytree(prepared[0], tmp_path / "out")
    before = _snapshot(folder)
    inject(monkeypatch)
    with pytest.raises(OSError):
        add_to_export(folder, "merfish_to_rna", prepared[1], list(range(12)))
    assert _snapshot(folder) == before  # no temporaries, the graph and its twins unchanged, the manifest still pins them
    assert read_manifest(folder).graphs[0].torchscript_file is not None


def test_success_replaces_both_and_drops_the_twins(prepared, tmp_path):
    import shutil

    folder = shutil.copytree(prepared[0], tmp_path / "out")
    before = _snapshot(folder)
    add_to_export(folder, "merfish_to_rna", prepared[1], list(range(12)))
    after = _snapshot(folder)
    assert sorted(after) == ["manifest.json", "merfish_to_rna.onnx"] and after["merfish_to_rna.onnx"] != before["merfish_to_rna.onnx"]
    assert read_manifest(folder).graphs[0].sha256 == __import__("hashlib").sha256(after["merfish_to_rna.onnx"]).hexdigest()
