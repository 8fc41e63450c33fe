"""Unit tests of the runtime's small decisions: providers, chunk sizes, graph choice, preprocessing plans."""

from __future__ import annotations

import dataclasses
import json

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from inclust_plus.errors import InclustError
from inclust_plus.runtime.backend import CPU, CUDA, choose_providers
from inclust_plus.runtime.cli import cli
from inclust_plus.runtime.manifest import load_manifest, select_graph
from inclust_plus.runtime.preprocess import apply_preprocessing
from inclust_plus.runtime.runner import MAX_CHUNK_ROWS, chunk_rows
from runtime_fixtures import COVARIATES, RNA, make_cells, make_toy_export, write_h5ad


def test_providers():
    both = [CUDA, CPU]
    assert choose_providers("auto", both) == [CUDA, CPU]
    assert choose_providers("cuda", both) == [CUDA, CPU]
    assert choose_providers("cpu", both) == [CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    with pytest.raises(InclustError, match="onnxruntime-gpu"):
        choose_providers("cuda", ["AzureExecutionProvider", CPU])
    with pytest.raises(InclustError, match="unknown device"):
        choose_providers("tpu", both)


def test_chunk_rows():
    assert chunk_rows(15.0, 4096, 4_000_000) == MAX_CHUNK_ROWS  # sparse: capped
    assert chunk_rows(20_000.0, 256, 4_000_000) == 200  # dense and wide: fewer rows than a batch
    assert chunk_rows(1_000.0, 256, 4_000_000) == 3840  # whole batches
    assert chunk_rows(1e9, 16, 10) == 1


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"))


def test_select_graph(toy, tmp_path):
    m = load_manifest(toy.folder)
    assert select_graph(m, True, target=("protein",)).name == "rna_to_protein"
    assert select_graph(m, False, source=("protein+rna",)).name == "rna_protein_embed"
    assert select_graph(m, True, source=("rna",), target=("rna",)).name == "panel_to_rna"
    raw = json.loads(toy.manifest.read_text())
    raw["graphs"] = [g for g in raw["graphs"] if g["name"] in ("panel_to_rna", "panel_embed")]
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    single = load_manifest(tmp_path / "manifest.json")
    assert select_graph(single, True).name == "panel_to_rna"  # the only candidate needs no flag
    assert select_graph(single, False).name == "panel_embed"
    with pytest.raises(InclustError, match="--to is only for impute/generate"):
        select_graph(m, False, target=("rna",))


def test_the_runtime_applies_the_manifests_plan(tmp_path):
    """The plan comes from the graph entry (no re-derivation from feature names); folded graphs get none."""
    pre = {"rna": {"normalize_total": 10.0, "log1p": True, "scale": [float(i + 1) for i in range(len(RNA))]}}
    model = make_toy_export(tmp_path / "m", preprocessing=pre)
    m = load_manifest(model.folder)
    g = m.graph("panel_to_rna")
    assert [(p.name, p.runs, p.normalize_total, p.log1p, p.scale) for p in g.runtime_plan.groups] == [
        ("rna", ((0, 6),), 10.0, True, (1.0, 2.0, 3.0, 4.0, 5.0, 6.0))]
    x = np.array([[1, 0, 3, 0, 0, 6], [0, 0, 0, 0, 0, 0]], np.float32)
    apply_preprocessing(x, g.runtime_plan)
    want = np.log1p(np.array([1, 0, 3, 0, 0, 6]) / 10 * 10) / np.arange(1, 7)
    np.testing.assert_allclose(x[0], want, rtol=1e-6)
    assert (x[1] == 0).all()  # an empty cell stays zero, never NaN
    mixed = m.graph("rna_protein_embed").runtime_plan  # protein has no preprocessing: listed, does nothing
    assert [p.name for p in mixed.groups] == ["rna", "protein"] and [p.name for p in mixed.active] == ["rna"]
    folded = dataclasses.replace(g, folded_preprocessing=True)
    assert folded.runtime_plan.groups == () and folded.preprocessing_plan == g.preprocessing_plan


def test_obsm_array_in_graph_order_and_numeric_covariate(toy, tmp_path):
    x = make_cells(20, RNA, seed=3)
    a = write_h5ad(tmp_path / "in.h5ad", x, RNA, None, extra_obs={"batch": np.arange(20) % 2})
    a.obsm["X_panel"] = x[:, :6].copy()
    a.obsm["X_wrong"] = x[:, :5].copy()
    a.write_h5ad(tmp_path / "in.h5ad")
    raw = json.loads(toy.manifest.read_text())
    raw["covariate"]["categories"] = ["0", "1", "2"]  # a model whose covariate was an integer column
    for g in raw["graphs"]:
        g["default_target_covariate"] = "0" if g["default_target_covariate"] else None
    (toy.folder / "int_manifest.json").write_text(json.dumps(raw))
    args = ["impute", "--onnx", str(toy.folder / "int_manifest.json"), "--input", str(tmp_path / "in.h5ad"), "--combination", "panel_to_rna", "--covariate-key", "batch"]
    ok = CliRunner().invoke(cli, args + ["--output", str(tmp_path / "o.h5ad"), "--obsm", "X_panel"])
    assert ok.exit_code == 0, ok.output
    ref = toy.reference("panel_to_rna", x[:, :6], np.arange(20) % 2, np.zeros(20, int))
    assert np.abs(ad.read_h5ad(tmp_path / "o.h5ad").layers["inclust_imputed"] - ref["y"]).max() <= 1e-5
    bad = CliRunner().invoke(cli, args + ["--output", str(tmp_path / "o2.h5ad"), "--obsm", "X_wrong"])
    assert bad.exit_code == 2 and "5 unnamed columns but the graph takes 6 features" in bad.stderr
    assert not (tmp_path / "o2.h5ad").exists()
    assert json.loads(toy.manifest.read_text())["covariate"]["categories"] == COVARIATES  # the edit went to a copy: the toy's manifest is untouched
