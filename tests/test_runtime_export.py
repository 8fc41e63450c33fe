"""``inclust-run`` on graphs written by the real exporter equals the PyTorch model within 1e-5.

Uses ``inclust_plus.export.export_model`` on the toy checkpoint of tests/export_toys.py, and on an
untrained model shaped like the MERFISH task evaluated on the query cells of the standard split
(docs: ../shared/data/README.md); with a trained model when the training API can fit one.
The PyTorch reference is ``module.predict`` on zero-filled full-width input with the input mask
(docs/ARCHITECTURE.md). Raw counts go in; the runtime preprocesses them (or the graph does, when
exported with --fold-preprocessing), and the reference preprocesses them by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
export = pytest.importorskip("inclust_plus.export")
export_toys = pytest.importorskip("export_toys")

from inclust_plus.runtime.cli import cli  # noqa: E402
from inclust_plus.training.checkpoint import load_checkpoint  # noqa: E402
from reference import graph_reference  # noqa: E402

TOL = 1e-5
MERFISH_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "merfish_scrna_reference.h5ad"  # ../shared beside the checkout


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def reference(module, desc, graph: dict, raw: np.ndarray, cov: np.ndarray, tgt: np.ndarray | None) -> dict:
    """The tests' one reference predictor (tests/reference.py), in float64 from raw values."""
    return graph_reference(module, desc, graph, raw, cov, tgt, raw=True, double=True)


@pytest.fixture(scope="module", params=[False, True], ids=["runtime-preprocessing", "folded-preprocessing"])
def toy_export(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = export_toys.make_toy_checkpoint(root / "model.pt", seed=5)
    manifest = export.export_model(ckpt, root / "out", fold_preprocessing=request.param, torchscript=True)
    module, desc = load_checkpoint(ckpt)
    return json.loads(manifest.read_text()), manifest.parent, module, desc, root


def test_every_exported_graph(toy_export):
    man, folder, module, desc, root = toy_export
    names = list(desc.feature_names)
    rng = np.random.default_rng(0)
    n = 203
    raw = np.round(rng.gamma(0.5, 30.0, (n, len(names)))).astype(np.float32)
    raw[3] = 0.0  # an empty cell stays finite
    cats = list(desc.covariate.categories)
    cov = rng.integers(0, len(cats), n)
    src = root / "cells.h5ad"
    if not src.exists():
        obs = pd.DataFrame({"dataset": pd.Categorical([cats[i] for i in cov], categories=cats)}, index=[f"c{i}" for i in range(n)])
        order = rng.permutation(len(names))
        import scipy.sparse as sp

        ad.AnnData(sp.csr_matrix(raw[:, order]), obs=obs, var=pd.DataFrame(index=[names[i] for i in order])).write_h5ad(src)
    for g in man["graphs"]:
        decode = bool(g["output_features"])
        command = "impute" if decode else "embed"
        out = root / f"{g['name']}-{g['folded_preprocessing']}.h5ad"
        invoke(command, "--onnx", folder, "--input", src, "--output", out, "--combination", g["name"], "--batch-size", 64, "--force")
        result = ad.read_h5ad(out)
        tgt = None
        if decode and g["default_target_covariate"] is not None:
            tgt = np.full(n, cats.index(g["default_target_covariate"]))
        ref = reference(module, desc, g, raw[:, [names.index(f) for f in g["input_features"]]], cov, tgt)
        assert np.abs(result.obsm["X_inclust"] - ref["latent"]).max() <= TOL, g["name"]
        probs = ref["label_probs"]
        assert np.abs(result.obs["inclust_label_probability"].to_numpy() - probs.max(1)).max() <= TOL
        if decode:
            assert list(result.var_names) == g["output_features"]
            assert np.abs(result.layers["inclust_imputed"] - ref["y"]).max() <= TOL, g["name"]
        assert result.uns["inclust"]["model_sha256"] == man["model"]["sha256"]


def test_torchscript_export_matches(toy_export):
    man, folder, module, desc, root = toy_export
    names = list(desc.feature_names)
    rng = np.random.default_rng(1)
    raw = np.round(rng.gamma(0.5, 30.0, (50, len(names)))).astype(np.float32)
    ad.AnnData(raw, obs=pd.DataFrame(index=[f"c{i}" for i in range(50)]), var=pd.DataFrame(index=names)).write_h5ad(root / "ts.h5ad")
    g = next(g for g in man["graphs"] if g["name"] == "merfish_to_rna")
    for flag in ([], ["--torchscript"]):
        invoke("impute", "--onnx", folder, "--input", root / "ts.h5ad", "--output", root / f"ts{len(flag)}.h5ad", "--combination", g["name"], "--covariate", "cite", "--force", *flag)
    ref = reference(module, desc, g, raw[:, [names.index(f) for f in g["input_features"]]], np.full(50, 2), np.zeros(50, int))
    for k in (0, 1):
        assert np.abs(ad.read_h5ad(root / f"ts{k}.h5ad").layers["inclust_imputed"] - ref["y"]).max() <= TOL


def _merfish_description(adata) -> dict:
    genes = list(map(str, adata.var_names))
    panel = np.flatnonzero(adata.var["in_merfish_panel"].to_numpy()).tolist()
    types = list(map(str, adata.obs["cell_type"].cat.categories))
    return {
        "name": "merfish_untrained",
        "schema": {"modalities": [{"name": "rna", "features": genes}]},
        "covariate": {"keys": ["dataset"], "categories": ["scrna", "merfish"]},
        "labels": {"key": "cell_type", "categories": types, "mode": "semi-supervised"},
        "preprocessing": {"rna": {"normalize_total": None, "log1p": False, "scale": None}},
        "feature_sets": {"rna": {"modalities": ["rna"], "features": list(range(len(genes)))}, "merfish": {"modalities": ["rna"], "features": panel}},
        "combinations": [
            {"name": "merfish_to_rna", "inputs": "merfish", "outputs": "rna", "default_target_covariate": "scrna"},
            {"name": "merfish_embed", "inputs": "merfish", "outputs": None},
        ],
        "hyperparameters": {}, "training": {"epochs": 0, "rows_per_second": 0.0, "history": {}},
    }


def _merfish_parity(tmp_path, ckpt: Path):
    from evaluation.splits import pseudo_spatial_split

    adata = ad.read_h5ad(MERFISH_DATA)
    split = pseudo_spatial_split(adata, seed=0)
    query = split.query
    query.obs["dataset"] = pd.Categorical(["merfish"] * query.n_obs)
    query.write_h5ad(tmp_path / "query.h5ad")
    manifest = export.export_model(ckpt, tmp_path / "export", torchscript=False)
    invoke("impute", "--onnx", manifest, "--input", tmp_path / "query.h5ad", "--output", tmp_path / "imputed.h5ad", "--combination", "merfish_to_rna", "--covariate", "merfish")
    module, desc = load_checkpoint(ckpt)
    man = json.loads(manifest.read_text())
    g = next(g for g in man["graphs"] if g["name"] == "merfish_to_rna")
    x = query[:, g["input_features"]].X
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x)
    cats = list(desc.covariate.categories)
    ref = reference(module, desc, g, x, np.full(len(x), cats.index("merfish")), np.full(len(x), cats.index("scrna")))
    out = ad.read_h5ad(tmp_path / "imputed.h5ad")
    assert out.n_obs == 9111 and list(out.obs_names) == list(query.obs_names)
    diff = max(np.abs(out.layers["inclust_imputed"] - ref["y"]).max(), np.abs(out.obsm["X_inclust"] - ref["latent"]).max())
    assert diff <= TOL
    return out, split, diff


@pytest.mark.skipif(not MERFISH_DATA.exists(), reason="real MERFISH reference data not present")
def test_merfish_query_parity_untrained(tmp_path):
    """The standard split's 9,111 query cells, 122 panel genes -> 153 genes, vs PyTorch (random weights)."""
    from inclust_plus.training.checkpoint import save_checkpoint
    from inclust_plus.training.network.module import InClustModule, ModuleConfig

    adata = ad.read_h5ad(MERFISH_DATA, backed="r")
    desc = _merfish_description(adata)
    torch.manual_seed(0)
    module = InClustModule(ModuleConfig(n_features=adata.n_vars, n_covariates=2, n_labels=len(adata.obs["cell_type"].cat.categories))).eval()
    adata.file.close()
    _merfish_parity(tmp_path, save_checkpoint(tmp_path / "model.pt", module, desc))


@pytest.mark.slow
@pytest.mark.skipif(not MERFISH_DATA.exists(), reason="real MERFISH reference data not present")
def test_merfish_query_parity_trained(tmp_path):
    """Same on a model trained by ``inclust_plus.training``: ``InClust.fit(config_from_dict(...), objects=...)``
    with the reference cells as dataset "scrna" (cell_type labels) and the query cells (panel genes
    only) as dataset "merfish". A change of that API fails here: it is not a reason to skip."""
    from inclust_plus.training.config import config_from_dict
    from inclust_plus.training.model import InClust
    from evaluation.splits import pseudo_spatial_split

    adata = ad.read_h5ad(MERFISH_DATA)
    split = pseudo_spatial_split(adata, seed=0)
    cfg = config_from_dict({
        "task": "imputation", "name": "merfish_parity",
        "datasets": [
            {"name": "scrna", "modalities": ["rna"], "label_key": "cell_type", "preprocessed": True},
            {"name": "merfish", "modalities": ["rna"], "preprocessed": True},
        ],
        "training": {"epochs": 1, "seed": 0},
        "views": {"query": ["merfish"]},
        "readout": {"neighbours": False},  # the decoder's graphs against the reference predictor (the read-out's: tests/test_readout.py)
    })
    model, _, _ = InClust.fit(cfg, objects={"scrna": split.reference, "merfish": split.query}, progress=False)
    ckpt = model.save(tmp_path / "model.pt")
    man_desc = load_checkpoint(ckpt)[1]
    assert "merfish_to_rna" in [c.name for c in man_desc.combinations], man_desc.combinations
    _merfish_parity(tmp_path, ckpt)


def test_panel_graph_defaults_to_its_datasets_covariate(tmp_path):
    """A MERFISH-panel file without a covariate column is taken to come from the MERFISH dataset."""
    import anndata
    from click.testing import CliRunner

    from inclust_plus.export import export_model
    from inclust_plus.runtime.cli import cli
    from inclust_plus.training.model import InClust
    from evaluation.synthetic import synthetic_task

    st = synthetic_task("imputation", n_cells=200, seed=0, overrides={"training": {"epochs": 1}, "readout": {"neighbours": False}})
    model, data, _ = InClust.fit(st.config, st.objects, progress=False)
    combo = model.description.combination("merfish_to_rna")
    assert combo.default_covariate == "merfish" and combo.default_target_covariate == "scrna"
    manifest = export_model(model.save(tmp_path / "model.pt"), tmp_path / "export", torchscript=False)
    query = st.objects["merfish"].copy()
    query.obs = query.obs[[]]  # no covariate column at all
    query.write_h5ad(tmp_path / "q.h5ad")
    res = CliRunner().invoke(cli, ["impute", "--onnx", str(manifest), "--combination", "merfish_to_rna", "--input", str(tmp_path / "q.h5ad"), "--output", str(tmp_path / "o.h5ad"), "--quiet"])
    assert res.exit_code == 0, res.output
    out = anndata.read_h5ad(tmp_path / "o.h5ad")
    assert out.uns["inclust"]["covariate"] == "merfish" and out.uns["inclust"]["target_covariate"] == "scrna"
    a, b = data.cell_ranges["merfish"]
    want = model.predict(np.asarray(data.x[a:b])[:, model.feature_set("merfish")], "merfish", "merfish", "scrna")[0]
    np.testing.assert_allclose(out.layers["inclust_imputed"], want, atol=1e-5)
