"""Honest outputs on a counts model (the toy checkpoint: rna normalised + log1p + max-scaled,
protein log1p): output scales, the non-integer warning, generate's modalities, MuData input, and
the training-side verbs against the runtime on the same export."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from export_toys import N_PROTEIN, N_RNA, make_toy_checkpoint
from inclust_plus.errors import InclustError
from inclust_plus.export import export_model
from inclust_plus.results import ScaleConverter
from inclust_plus.runtime import Predictor
from inclust_plus.runtime.cli import cli
from inclust_plus.runtime.manifest import load_manifest
from inclust_plus.runtime.preprocess import apply_preprocessing
from inclust_plus.training.model import InClust

ad = pytest.importorskip("anndata")
RNA = [f"gene{i:03d}" for i in range(N_RNA)]
PROTEIN = [f"prot{i:03d}" for i in range(N_PROTEIN)]
N = 30


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    ckpt = make_toy_checkpoint(root / "model.pt", seed=3)
    export = export_model(ckpt, root / "export", torchscript=False).parent
    rng = np.random.default_rng(0)
    counts = np.round(rng.gamma(0.6, 20.0, (N, N_RNA + N_PROTEIN))).astype(np.float32)
    obs = pd.DataFrame({"dataset": pd.Categorical(["cite"] * N), "donor": ["d1", "d2"] * (N // 2)}, index=[f"c{i}" for i in range(N)])
    cells = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame({"kind": ["g"] * N_RNA + ["p"] * N_PROTEIN}, index=RNA + PROTEIN))
    path = root / "cells.h5ad"
    cells.write_h5ad(path)
    return {"root": root, "ckpt": ckpt, "export": export, "cells": cells, "path": path, "counts": counts}


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_counts_scale_inverts_the_preprocessing(toy):
    """raw -> the runtime's preprocessing -> ScaleConverter('counts') gives the raw counts back."""
    m = load_manifest(toy["export"])
    graph = m.graph("rna_protein")
    x = toy["counts"].copy()
    apply_preprocessing(x, graph.runtime_plan)
    modalities = m.schema()
    conv = ScaleConverter(graph.input_features, modalities, m.preprocessing, "counts", graph.input_modalities)
    lib = {"rna": toy["counts"][:, :N_RNA].sum(1)}
    np.testing.assert_allclose(conv.convert(x, lib), toy["counts"], rtol=2e-5, atol=2e-4)
    log1p = ScaleConverter(graph.input_features, modalities, m.preprocessing, "log1p", graph.input_modalities).convert(x)
    want = np.log1p(toy["counts"][:, :N_RNA] / toy["counts"][:, :N_RNA].sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(log1p[:, :N_RNA], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log1p[:, N_RNA:], np.log1p(toy["counts"][:, N_RNA:]), rtol=1e-6)


def test_output_scales_cli_and_predictor_agree(toy, tmp_path):
    p = Predictor(toy["export"])
    model_scale = p.impute(toy["cells"], combination="merfish_to_rna")
    assert model_scale.uns["inclust"]["scale"] == "model scale: rna = log1p(x / library * 10000) / max per feature"
    scale = np.asarray(load_manifest(toy["export"]).preprocessing["rna"]["scale"], np.float32)
    for name in ("log1p", "counts"):
        got = p.impute(toy["cells"], combination="merfish_to_rna", output_scale=name)
        assert got.uns["inclust"]["output_scale"] == name
        want = model_scale.layers["inclust_imputed"] * scale
        if name == "counts":
            panel = [RNA[i] for i in (0, 2, 3, 5, 7, 8)]
            lib = toy["cells"][:, panel].X.sum(1).A1
            want = np.expm1(want) * (lib[:, None] / 1e4)
        np.testing.assert_allclose(got.layers["inclust_imputed"], want, rtol=1e-5, atol=1e-6)
        res = _cli("impute", "--onnx", toy["export"], "--input", toy["path"], "--output", tmp_path / f"{name}.h5ad",
                   "--combination", "merfish_to_rna", "--output-scale", name, "-q")
        assert res.exit_code == 0, res.output
        out = ad.read_h5ad(tmp_path / f"{name}.h5ad")
        np.testing.assert_allclose(out.layers["inclust_imputed"], got.layers["inclust_imputed"], rtol=1e-6, atol=1e-7)
        assert out.uns["inclust"]["scale"] == got.uns["inclust"]["scale"]
    np.testing.assert_array_equal(toy["cells"].X.toarray(), toy["counts"])  # the caller's AnnData is never preprocessed in place
    with pytest.raises(InclustError, match="library size of 'rna' is unknown"):
        p.impute(toy["cells"], combination="protein_to_rna", output_scale="counts")
    res = CliRunner().invoke(cli, ["impute", "--onnx", str(toy["export"]), "--input", str(toy["path"]), "--output", str(tmp_path / "bad.h5ad"),
                                   "--combination", "protein_to_rna", "--output-scale", "counts"])
    assert res.exit_code == 2 and "error: output scale counts" in res.output and not (tmp_path / "bad.h5ad").exists()


def test_non_integer_input_warns(toy, tmp_path):
    logged = toy["cells"].copy()
    logged.X = sp.csr_matrix(np.log1p(toy["counts"]))
    with pytest.warns(UserWarning, match="expects raw counts for '(rna|protein)'"):
        Predictor(toy["export"]).get_latent_representation(logged, combination="rna_protein_embed")
    with pytest.warns(UserWarning, match="expects raw counts"):
        InClust.load(toy["ckpt"]).get_latent_representation(logged, combination="rna_protein_embed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Predictor(toy["export"]).get_latent_representation(toy["cells"], combination="rna_protein_embed")
    logged.write_h5ad(tmp_path / "logged.h5ad")
    res = _cli("embed", "--onnx", toy["export"], "--input", tmp_path / "logged.h5ad", "--output", tmp_path / "e.h5ad", "--combination", "rna_protein_embed")
    assert res.exit_code == 0 and "warning: the model expects raw counts for 'rna'" in res.output


def test_non_integer_input_warns_where_the_graph_folds_the_preprocessing_in(toy, tmp_path):
    folded = export_model(toy["ckpt"], tmp_path / "folded", torchscript=False, fold_preprocessing=True).parent
    logged = toy["cells"].copy()
    logged.X = sp.csr_matrix(np.log1p(toy["counts"]))
    logged.write_h5ad(tmp_path / "logged.h5ad")
    res = _cli("embed", "--onnx", folded, "--input", tmp_path / "logged.h5ad", "--output", tmp_path / "e.h5ad", "--combination", "rna_protein_embed")
    assert res.exit_code == 0 and "warning: the model expects raw counts for 'rna'" in res.output
    res = _cli("embed", "--onnx", folded, "--input", toy["path"], "--output", tmp_path / "raw.h5ad", "--combination", "rna_protein_embed")
    assert res.exit_code == 0 and "warning" not in res.output


def _generate_both(toy, tmp_path, adata, combination):
    path = tmp_path / f"{combination}_in.h5ad"
    adata.write_h5ad(path)
    api = Predictor(toy["export"]).generate(adata, combination=combination)
    res = _cli("generate", "--onnx", toy["export"], "--input", path, "--output", tmp_path / f"{combination}.h5ad", "--combination", combination, "-q")
    assert res.exit_code == 0, res.output
    cli_out = ad.read_h5ad(tmp_path / f"{combination}.h5ad")
    np.testing.assert_allclose(api.layers["inclust_imputed"], cli_out.layers["inclust_imputed"], atol=1e-6)
    return api, cli_out


def test_generate_separates_modalities(toy, tmp_path):
    api, cli_out = _generate_both(toy, tmp_path, toy["cells"][:, RNA].copy(), "rna_to_protein")
    assert sp.issparse(cli_out.X) and cli_out.X.nnz == 0  # nothing measured: an empty sparse X, not cells x features zeros
    for out in (api, cli_out):  # protein for RNA-only cells
        assert list(out.var_names) == PROTEIN and (out.var["modality"] == "protein").all() and out.var["inclust_imputed"].all()
        np.testing.assert_array_equal(out.obsm["inclust_protein"], out.layers["inclust_imputed"])
        assert (np.asarray(out.X.todense() if sp.issparse(out.X) else out.X) == 0).all()  # nothing measured to keep
        assert list(out.obs["donor"]) == list(toy["cells"].obs["donor"])
    for out in _generate_both(toy, tmp_path, toy["cells"], "rna_protein"):  # both modalities out
        assert list(out.var["modality"]) == ["rna"] * N_RNA + ["protein"] * N_PROTEIN
        assert not out.var["inclust_imputed"].any()
        np.testing.assert_array_equal(out.obsm["inclust_rna"], out.layers["inclust_imputed"][:, :N_RNA])
        np.testing.assert_array_equal(out.obsm["inclust_protein"], out.layers["inclust_imputed"][:, N_RNA:])
        assert list(out.uns["inclust"]["obsm_features"]["protein"]) == PROTEIN
        np.testing.assert_array_equal(np.asarray(out.X.todense() if sp.issparse(out.X) else out.X), toy["counts"])
        assert list(out.var["kind"]) == ["g"] * N_RNA + ["p"] * N_PROTEIN


def test_generate_outputs_survive_a_scanpy_round_trip(toy, tmp_path):
    sc = pytest.importorskip("scanpy")
    for k, out in enumerate(_generate_both(toy, tmp_path, toy["cells"][:, RNA].copy(), "rna_to_protein")):
        sc.pp.neighbors(out, use_rep="X_inclust", n_neighbors=5, random_state=0)
        sc.tl.umap(out, random_state=0, maxiter=20)
        out.write_h5ad(tmp_path / f"rt{k}.h5ad")
        back = ad.read_h5ad(tmp_path / f"rt{k}.h5ad")
        np.testing.assert_array_equal(back.layers["inclust_imputed"], out.layers["inclust_imputed"])
        np.testing.assert_array_equal(back.obsm["inclust_protein"], out.obsm["inclust_protein"])
        assert np.isfinite(back.obsm["X_umap"]).all() and list(back.var["modality"].astype(str)) == ["protein"] * N_PROTEIN


def test_cli_imputed_into_x(toy, tmp_path):
    res = _cli("impute", "--onnx", toy["export"], "--input", toy["path"], "--output", tmp_path / "x.h5ad", "--combination", "merfish_to_rna",
               "--imputed-into", "X", "-q")
    assert res.exit_code == 0, res.output
    out = ad.read_h5ad(tmp_path / "x.h5ad")
    api = Predictor(toy["export"]).impute(toy["cells"], combination="merfish_to_rna", imputed_into="X")
    np.testing.assert_allclose(out.X, api.X, atol=1e-6)
    np.testing.assert_array_equal(out.layers["inclust_measured"].toarray(), api.layers["inclust_measured"].toarray())
    assert sp.issparse(out.layers["inclust_measured"])  # the measured values stay sparse when X takes the model's
    assert sorted(out.layers) == ["inclust_measured"]  # no other layer: the toy input carries none
    assert "inclust_imputed" not in out.layers and out.uns["inclust"]["imputed_into"] == "X"


def test_mudata_input_equals_one_anndata(toy):
    md = pytest.importorskip("mudata")
    cells = toy["cells"]
    mdata = md.MuData({"rna": cells[:, RNA].copy(), "protein": cells[:, PROTEIN].copy()})
    p = Predictor(toy["export"])
    one = p.impute(cells, combination="rna_protein")
    both = p.impute(mdata, combination="rna_protein")
    np.testing.assert_allclose(both.layers["inclust_imputed"], one.layers["inclust_imputed"], atol=1e-6)
    np.testing.assert_array_equal(both.X.toarray(), one.X.toarray())
    train_side = InClust.load(toy["ckpt"]).impute(mdata, combination="rna_protein")
    np.testing.assert_allclose(train_side.layers["inclust_imputed"], one.layers["inclust_imputed"], atol=1e-5)


def test_training_verbs_equal_runtime_on_a_counts_model(toy):
    model, p = InClust.load(toy["ckpt"]), Predictor(toy["export"])
    shuffled = toy["cells"][:, np.random.default_rng(1).permutation(N_RNA + N_PROTEIN)].copy()
    shuffled.X = shuffled.X.toarray()
    for combo in ("merfish_to_rna", "rna_to_protein", "rna_protein"):
        a = model.impute(shuffled, combination=combo, covariate_key="dataset", output_scale="log1p")
        b = p.impute(toy["cells"], combination=combo, covariate_key="dataset", output_scale="log1p")
        np.testing.assert_allclose(a.layers["inclust_imputed"], b.layers["inclust_imputed"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.obsm["X_inclust"], b.obsm["X_inclust"], atol=1e-5)
