"""manifest.json (issue 12): every field checked, a sha256 required for every file the runtime loads,
every path confined to the export folder; a bad manifest is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest

from inclust_plus.errors import InclustError
from inclust_plus.runtime.cli import cli
from inclust_plus.runtime.manifest import load_manifest, verify_file
from reliability_helpers import good_input, one_error
from runtime_fixtures import make_toy_export


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"), torchscript=True)


@pytest.fixture
def export(source, tmp_path):
    """A fresh copy of the toy export to break."""
    folder = tmp_path / "export"
    shutil.copytree(source.folder, folder)
    return folder


def _edit(folder, change):
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def _graph(raw, name="panel_to_rna"):
    return next(g for g in raw["graphs"] if g["name"] == name)


def _set(*where, value):
    """A change that sets ``raw[w0][w1]... = value`` (graph entries by name, after "graph:")."""

    def change(raw):
        node = raw
        for w in where[:-1]:
            node = _graph(raw, w[6:]) if isinstance(w, str) and w.startswith("graph:") else node[w]
        node[where[-1]] = value

    return change


CASES = [  # id, change, words of the one-line error
    ("empty sha256", _set("graph:panel_to_rna", "sha256", value=""), ("graphs[0].sha256", "64 hexadecimal")),
    ("short sha256", _set("graph:panel_to_rna", "sha256", value="abc123"), ("graphs[0].sha256", "64 hexadecimal")),
    ("missing sha256", lambda raw: _graph(raw).pop("sha256"), ("graphs[0] has no field 'sha256'",)),
    ("missing torchscript_sha256", lambda raw: _graph(raw).pop("torchscript_sha256"), ("has a TorchScript file but no torchscript_sha256",)),
    ("empty torchscript_sha256", _set("graph:panel_to_rna", "torchscript_sha256", value=""), ("torchscript_sha256", "64 hexadecimal")),
    ("parent path", _set("graph:panel_to_rna", "file", value="../outside/x.onnx"), ("graphs[0].file leaves the export folder",)),
    ("absolute path", _set("graph:panel_to_rna", "file", value="/etc/passwd"), ("graphs[0].file is an absolute path",)),
    ("absolute torchscript", _set("graph:panel_to_rna", "torchscript", value="/tmp/x.ts"), ("graphs[0].torchscript is an absolute path",)),
    ("latent_dim text", _set("model", "latent_dim", value="abc"), ("model.latent_dim must be an integer >= 1",)),
    ("latent_dim zero", _set("model", "latent_dim", value=0), ("model.latent_dim must be an integer >= 1",)),
    ("categories null", _set("covariate", "categories", value=None), ("covariate.categories must be a list",)),
    ("categories empty", _set("covariate", "categories", value=[]), ("covariate.categories must not be empty",)),
    ("categories duplicated", _set("covariate", "categories", value=["a", "a", "b"]), ("covariate.categories has duplicate",)),
    ("label categories object", _set("labels", "categories", value={"T": 1}), ("labels.categories must be a list",)),
    ("graphs not a list", _set("graphs", value={"a": 1}), ("field graphs must be a list",)),
    ("no graphs", _set("graphs", value=[]), ("field graphs must not be empty",)),
    ("kind", _set("graph:panel_to_rna", "kind", value="decode"), ("graphs[0].kind must be one of impute, embed",)),
    ("graph name", _set("graph:panel_to_rna", "name", value="../x"), ("graphs[0].name must be a name",)),
    ("features not strings", _set("graph:panel_to_rna", "input_features", value=["g0", 1]), ("graphs[0].input_features[1] must be a non-empty string",)),
    ("duplicate features", _set("graph:panel_to_rna", "input_features", value=["g0", "g0"]), ("input_features has duplicate",)),
    ("folded text", _set("graph:panel_to_rna", "folded_preprocessing", value="no"), ("folded_preprocessing must be true or false",)),
    ("unknown default", _set("graph:panel_to_rna", "default_target_covariate", value="zz"), ("default_target_covariate 'zz' is not a covariate category",)),
    ("preprocessing", _set("preprocessing", value={"rna": {"normalize_total": -1}}), ("preprocessing.rna.normalize_total must be a positive",)),
    ("scale text", _set("preprocessing", value={"rna": {"scale": "max"}}), ("preprocessing.rna.scale must be a list",)),
    ("opset", _set("graph:panel_to_rna", "opset", value="17"), ("graphs[0].opset must be an integer",)),
    ("model sha256", _set("model", "sha256", value=""), ("model.sha256", "64 hexadecimal")),
    ("format_version", _set("format_version", value="1"), ("format_version must be an integer",)),
    ("not an object", lambda raw: raw.clear() or raw.update({"x": 1}), ("has no field 'format_version'",)),
    # the CSR / float16 flavours and torch.export programs are pinned and confined like the graph itself
    ("flavour without sha256", _set("graph:panel_to_rna", "variants", value=[{"input_format": "csr", "file": "p.csr.onnx"}]),
     ("graphs[0].variants[0] has no field 'sha256'",)),
    ("flavour short sha256", _set("graph:panel_to_rna", "variants", value=[{"input_format": "csr", "file": "p.csr.onnx", "sha256": "ab"}]),
     ("variants[0].sha256", "64 hexadecimal")),
    ("flavour outside", _set("graph:panel_to_rna", "variants", value=[{"input_format": "csr", "file": "../p.csr.onnx", "sha256": "a" * 64}]),
     ("variants[0].file leaves the export folder",)),
    ("flavour format", _set("graph:panel_to_rna", "variants", value=[{"input_format": "coo", "file": "p.onnx", "sha256": "a" * 64}]),
     ("variants[0].input_format",)),
    ("graph precision", _set("graph:panel_to_rna", "precision", value="fp8"), ("graphs[0].precision",)),
    ("torch_export without sha256", _set("graph:panel_to_rna", "torch_export", value="panel_to_rna.pt2"),
     ("has a torch.export program but no torch_export_sha256",)),
    # format 2: what the runtime used to guess is required, and the per-graph plan must fit the graph
    ("format 1", _set("format_version", value=1), ("format_version 1, written before", "re-export")),
    ("no plan", lambda raw: _graph(raw).pop("preprocessing_plan"), ("graphs[0] has no field 'preprocessing_plan'",)),
    ("no modalities", lambda raw: raw.pop("modalities"), ("has no field 'modalities'",)),
    ("no inputs", lambda raw: _graph(raw).pop("inputs"), ("graphs[0] has no field 'inputs'",)),
    ("plan run backwards", _set("graph:panel_to_rna", "preprocessing_plan", value=[{"modality": "rna", "runs": [[6, 0]]}]),
     ("preprocessing_plan[0].runs[0] must be [start, end]",)),
    ("plan misses a column", _set("graph:panel_to_rna", "preprocessing_plan", value=[{"modality": "rna", "runs": [[0, 5]]}]),
     ("input column 5 is in no preprocessing run",)),
    ("plan past the inputs", _set("graph:panel_to_rna", "preprocessing_plan", value=[{"modality": "rna", "runs": [[0, 7]]}]),
     ("a preprocessing run of 'rna' ends at 7, past its 6 input columns",)),
    ("plan wrong modality", _set("graph:panel_to_rna", "preprocessing_plan", value=[{"modality": "protein", "runs": [[0, 6]]}]),
     ("input feature 'g0' is not a feature of 'protein'",)),
    ("plan unknown modality", _set("graph:panel_to_rna", "preprocessing_plan", value=[{"modality": "atac", "runs": [[0, 6]]}]),
     ("names modality 'atac' that the manifest does not list",)),
    ("inputs not the table's", _set("graph:panel_to_rna", "inputs", value=[{"name": "x", "dtype": "float32", "shape": ["batch", 6]}]),
     ("its dense inputs are ['x'], an impute graph takes ['x', 'covariate', 'target_covariate']",)),
    ("plan scale length", _set("graph:panel_to_rna", "preprocessing_plan", value=[{"modality": "rna", "runs": [[0, 6]], "scale": [1.0]}]),
     ("the preprocessing scale of 'rna' has 1 values for 6 columns",)),
]


@pytest.mark.parametrize("change, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_manifest_is_one_line(export, tmp_path, change, words):
    _edit(export, change)
    inp = good_input(tmp_path / "in.h5ad")
    argv = ["impute", "--onnx", export, "--input", inp, "--output", tmp_path / "o.h5ad", "--combination", "rna_to_protein", "--quiet"]
    one_error(cli, argv, match=words, unchanged=tmp_path)


def test_symlink_out_of_the_folder_is_refused(export, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(str(export / "panel_to_rna.onnx"), outside / "panel_to_rna.onnx")
    (export / "panel_to_rna.onnx").symlink_to(outside / "panel_to_rna.onnx")
    with pytest.raises(InclustError, match="'panel_to_rna.onnx' leads out of the export folder"):
        load_manifest(export)
    (export / "sub").mkdir()  # a link inside the folder is fine
    (export / "panel_to_rna.onnx").unlink()
    shutil.move(str(outside / "panel_to_rna.onnx"), export / "sub" / "real.onnx")
    (export / "panel_to_rna.onnx").symlink_to(export / "sub" / "real.onnx")
    assert load_manifest(export).graph("panel_to_rna").path == export / "panel_to_rna.onnx"


def test_torchscript_hash_is_checked(export, tmp_path):
    m = load_manifest(export)
    g = m.graph("panel_to_rna")
    assert verify_file(g.torchscript, g.torchscript_sha256, "ts") == g.torchscript
    with open(g.torchscript, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(InclustError, match="does not match the sha256"):
        verify_file(g.torchscript, g.torchscript_sha256, "ts")
    with pytest.raises(InclustError, match="has no sha256 in the manifest"):
        verify_file(g.path, "", "graph")  # a hand-built spec without a hash is refused, not trusted


def test_the_exporter_writes_a_valid_manifest(tmp_path):
    from export_toys import make_toy_checkpoint
    from inclust_plus.export import export_model

    manifest = export_model(make_toy_checkpoint(tmp_path / "model.pt", seed=2), tmp_path / "e")
    m = load_manifest(manifest)
    assert all(len(g.sha256) == 64 and g.torchscript is not None and len(g.torchscript_sha256) == 64 for g in m.graphs)


def test_onnx_runs_the_bytes_that_were_checked(export, monkeypatch):
    """The session is built from the verified bytes, so swapping the file after the check changes nothing."""
    from inclust_plus.runtime import backend as backend_mod
    from inclust_plus.runtime.manifest import read_verified

    g = load_manifest(export).graph("panel_to_rna")
    data = read_verified(g.path, g.sha256, "graph")
    assert data == g.path.read_bytes()
    seen = []
    real = backend_mod.read_verified

    def then_swap(path, expected, what):
        checked = real(path, expected, what)
        path.write_bytes(b"swapped after the check")
        seen.append(checked)
        return checked

    monkeypatch.setattr(backend_mod, "read_verified", then_swap)
    b = backend_mod.OnnxBackend("cpu")
    b.prepare(g)  # loads fine: the swapped file on disk is never read again
    assert seen == [data] and str(g.path) in b.sessions  # sessions are keyed by graph file (flavours share a name)
    b.close()
    with pytest.raises(InclustError, match="does not match the sha256"):
        read_verified(g.path, g.sha256, "graph")
