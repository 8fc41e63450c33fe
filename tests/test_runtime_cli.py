"""End-to-end ``inclust-run`` on a tiny hand-built export: outputs equal the numpy reference."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from inclust_plus.runtime import RunOptions, run
from inclust_plus.runtime.cli import cli
from runtime_fixtures import COVARIATES, LABELS, PANEL, PROTEIN, RNA, make_cells, make_toy_export, write_h5ad

TOL = 1e-5
N = 37
COV = [COVARIATES[(i * 7) % 3] for i in range(N)]
COV_IDX = np.array([COVARIATES.index(c) for c in COV])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"), seed=0)


@pytest.fixture(scope="module")
def cells():
    return make_cells(N, RNA + PROTEIN, seed=1)


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def write_input(path, x, names=RNA + PROTEIN, **kw):
    """The cells with their columns shuffled and an extra gene, as a user's file would be."""
    order = np.random.default_rng(5).permutation(len(names))
    x2 = np.concatenate([x[:, order], np.ones((len(x), 1), np.float32)], axis=1)
    kw.setdefault("extra_obs", {"depth": np.arange(len(x), dtype=float)})
    write_h5ad(path, x2, [names[i] for i in order] + ["extra_gene"], kw.pop("covariate", COV), **kw)
    return path


def cols(names):
    return [(RNA + PROTEIN).index(n) for n in names]


def assert_close(got, want):
    assert got.shape == want.shape
    assert np.abs(np.asarray(got, np.float64) - want).max() <= TOL


def assert_labels(out, ref):
    best = ref["label_probs"].argmax(1)
    assert list(out.obs["inclust_label"].cat.categories) == LABELS
    assert list(out.obs["inclust_label"].astype(str)) == [LABELS[i] for i in best]
    assert_close(out.obs["inclust_label_probability"].to_numpy(), ref["label_probs"].max(1))


@pytest.mark.parametrize("sparse", ["csr", None, "csc"])
def test_impute_equals_reference(toy, cells, tmp_path, sparse):
    src = write_input(tmp_path / "in.h5ad", cells, sparse=sparse)
    res = invoke("impute", "--onnx", toy.folder, "--input", src, "--output", tmp_path / "out.h5ad", "--combination", "panel_to_rna", "--batch-size", 5)
    assert "CPUExecutionProvider" in res.stderr
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    # default target covariate of panel_to_rna is "a"
    ref = toy.reference("panel_to_rna", cells[:, cols(PANEL)], COV_IDX, np.zeros(N, int))
    assert list(out.var_names) == RNA
    assert_close(out.layers["inclust_imputed"], ref["y"])
    assert_close(out.obsm["X_inclust"], ref["latent"])
    assert_labels(out, ref)
    assert list(out.obs_names) == [f"cell{i}" for i in range(N)]
    assert list(out.obs["dataset"].astype(str)) == COV
    assert out.obs["depth"].tolist() == list(range(N))
    u = out.uns["inclust"]
    assert u["graph"] == "panel_to_rna" and u["command"] == "impute"
    assert u["graph_sha256"] == __import__("runtime_fixtures").sha256(toy.folder / "panel_to_rna.onnx")
    assert u["model_sha256"] == "0" * 64 and u["provider"] == "CPUExecutionProvider"
    assert u["covariate"] == "obs['dataset']" and u["target_covariate"] == "a"
    assert u["package_version"] == "0.1.0" and u["onnxruntime_version"]
    assert list(u["missing_features"]) == []


def test_generate_with_target_covariate_and_from_to(toy, cells, tmp_path):
    src = write_input(tmp_path / "in.h5ad", cells)
    invoke("generate", "--onnx", toy.manifest, "--input", src, "--output", tmp_path / "same.h5ad", "--from", "rna", "--to", "protein")
    invoke("generate", "--onnx", toy.folder, "--input", src, "--output", tmp_path / "c.h5ad", "--to", "protein", "--target-covariate", "c")
    same, to_c = ad.read_h5ad(tmp_path / "same.h5ad"), ad.read_h5ad(tmp_path / "c.h5ad")
    x = cells[:, cols(RNA)]
    assert list(same.var_names) == PROTEIN
    assert_close(same.layers["inclust_imputed"], toy.reference("rna_to_protein", x, COV_IDX)["y"])  # no default: each cell's own
    assert same.uns["inclust"]["target_covariate"] == "same as covariate"
    assert_close(to_c.layers["inclust_imputed"], toy.reference("rna_to_protein", x, COV_IDX, np.full(N, 2))["y"])
    assert to_c.uns["inclust"]["target_covariate"] == "c"


def test_embed_and_annotate(toy, cells, tmp_path):
    src = write_input(tmp_path / "in.h5ad", cells)
    invoke("embed", "--onnx", toy.folder, "--input", src, "--output", tmp_path / "e.h5ad", "--combination", "panel_embed")
    invoke("annotate", "--onnx", toy.folder, "--input", src, "--output", tmp_path / "a.h5ad", "--combination", "rna_embed", "--covariate", "b")
    e, a = ad.read_h5ad(tmp_path / "e.h5ad"), ad.read_h5ad(tmp_path / "a.h5ad")
    ref_e = toy.reference("panel_embed", cells[:, cols(PANEL)], COV_IDX)
    assert e.shape == (N, 0)
    assert_close(e.obsm["X_inclust"], ref_e["latent"])
    assert_labels(e, ref_e)
    ref_a = toy.reference("rna_embed", cells[:, cols(RNA)], np.ones(N, int))
    assert a.shape == (N, 0) and "X_inclust" not in a.obsm
    assert_labels(a, ref_a)
    assert a.uns["inclust"]["covariate"] == "b"


def test_layer_obsm_and_allow_missing(toy, cells, tmp_path):
    write_h5ad(tmp_path / "layer.h5ad", cells, RNA + PROTEIN, COV, layer="counts")
    write_h5ad(tmp_path / "obsm.h5ad", cells, RNA + PROTEIN, COV, obsm="features")
    invoke("impute", "--onnx", toy.folder, "--input", tmp_path / "layer.h5ad", "--output", tmp_path / "l.h5ad", "--combination", "panel_to_rna", "--layer", "counts")
    invoke("impute", "--onnx", toy.folder, "--input", tmp_path / "obsm.h5ad", "--output", tmp_path / "o.h5ad", "--combination", "panel_to_rna", "--obsm", "features")
    ref = toy.reference("panel_to_rna", cells[:, cols(PANEL)], COV_IDX, np.zeros(N, int))
    for name in ("l.h5ad", "o.h5ad"):
        assert_close(ad.read_h5ad(tmp_path / name).layers["inclust_imputed"], ref["y"])
    keep = [n for n in RNA + PROTEIN if n not in ("g2", "g4")]
    write_h5ad(tmp_path / "partial.h5ad", cells[:, cols(keep)], keep, COV)
    res = invoke("impute", "--onnx", toy.folder, "--input", tmp_path / "partial.h5ad", "--output", tmp_path / "m.h5ad", "--combination", "panel_to_rna", "--allow-missing")
    assert res.stderr.count("input features are missing") == 1  # said once: not again for the measured values
    assert "2 of 6 input features are missing" in res.stderr
    x = cells[:, cols(PANEL)].copy()
    x[:, [2, 4]] = 0
    out = ad.read_h5ad(tmp_path / "m.h5ad")
    assert_close(out.layers["inclust_imputed"], toy.reference("panel_to_rna", x, COV_IDX, np.zeros(N, int))["y"])
    assert list(out.uns["inclust"]["missing_features"]) == ["g2", "g4"]


def test_h5mu_modalities(toy, cells, tmp_path):
    mudata = pytest.importorskip("mudata")
    import pandas as pd

    index = [f"cell{i}" for i in range(N)]
    mods = {
        "rna": ad.AnnData(cells[:, cols(RNA)], obs=pd.DataFrame(index=index), var=pd.DataFrame(index=RNA)),
        "protein": ad.AnnData(cells[:, cols(PROTEIN)][:, ::-1].copy(), obs=pd.DataFrame(index=index), var=pd.DataFrame(index=PROTEIN[::-1])),
    }
    md = mudata.MuData(mods)
    md.obs["dataset"] = pd.Categorical(COV)
    md.write(tmp_path / "in.h5mu")
    invoke("embed", "--onnx", toy.folder, "--input", tmp_path / "in.h5mu", "--output", tmp_path / "e.h5ad", "--from", "rna,protein")
    invoke("generate", "--onnx", toy.folder, "--input", tmp_path / "in.h5mu", "--output", tmp_path / "g.h5ad", "--from", "rna", "--to", "protein")
    e, g = ad.read_h5ad(tmp_path / "e.h5ad"), ad.read_h5ad(tmp_path / "g.h5ad")
    assert_close(e.obsm["X_inclust"], toy.reference("rna_protein_embed", cells, COV_IDX)["latent"])
    assert_close(g.layers["inclust_imputed"], toy.reference("rna_to_protein", cells[:, cols(RNA)], COV_IDX)["y"])
    assert list(g.obs["dataset"].astype(str)) == COV


@pytest.mark.parametrize("folded", [False, True])
def test_preprocessing(tmp_path, cells, folded):
    scale = list(np.linspace(0.5, 2.0, len(RNA)))
    scale[3] = 0.0  # a constant gene: divided by 1
    pre = {"rna": {"normalize_total": 100.0, "log1p": True, "scale": scale}}
    model = make_toy_export(tmp_path / "m", seed=3, preprocessing=pre, folded=folded)
    src = write_input(tmp_path / "in.h5ad", cells)
    invoke("impute", "--onnx", model.folder, "--input", src, "--output", tmp_path / "out.h5ad", "--combination", "panel_to_rna", "--target-covariate", "b")
    out = ad.read_h5ad(tmp_path / "out.h5ad")
    # folded: the graph (here without preprocessing inside) receives raw values untouched
    assert_close(out.layers["inclust_imputed"], model.reference("panel_to_rna", cells[:, cols(PANEL)], COV_IDX, np.ones(N, int))["y"])
    assert out.uns["inclust"]["preprocessing"] == ("folded into the graph" if folded else "applied by the runtime")


def test_preprocessing_with_listed_modalities(tmp_path, cells):
    pre = {"rna": {"normalize_total": 10.0, "log1p": True, "scale": list(np.linspace(1, 3, len(RNA)))}}
    model = make_toy_export(tmp_path / "m", seed=4, preprocessing=pre)
    src = write_input(tmp_path / "in.h5ad", cells)
    invoke("embed", "--onnx", model.folder, "--input", src, "--output", tmp_path / "out.h5ad", "--combination", "rna_protein_embed")
    ref = model.reference("rna_protein_embed", cells, COV_IDX)
    assert_close(ad.read_h5ad(tmp_path / "out.h5ad").obsm["X_inclust"], ref["latent"])


def test_chunks_and_batches_do_not_change_results(toy, tmp_path):
    n = 301
    x = make_cells(n, RNA + PROTEIN, seed=9)
    cov = [COVARIATES[i % 3] for i in range(n)]
    write_h5ad(tmp_path / "in.h5ad", x, RNA + PROTEIN, cov)
    outs = {}
    for tag, budget, batch in [("one", 10**9, 16), ("many", 16 * 14, 16), ("odd", 7 * 14, 5)]:
        opts = RunOptions("impute", onnx=toy.folder, input=tmp_path / "in.h5ad", output=tmp_path / f"{tag}.h5ad",
                          combination="panel_to_rna", batch_size=batch, value_budget=budget, quiet=True)
        run(opts)
        outs[tag] = ad.read_h5ad(tmp_path / f"{tag}.h5ad")
    one, many, odd = outs["one"], outs["many"], outs["odd"]
    np.testing.assert_array_equal(one.layers["inclust_imputed"], many.layers["inclust_imputed"])  # same batches, different chunks: identical
    np.testing.assert_array_equal(one.obsm["X_inclust"], many.obsm["X_inclust"])
    np.testing.assert_array_equal(one.obs["inclust_label"], many.obs["inclust_label"])
    assert np.abs(one.layers["inclust_imputed"] - odd.layers["inclust_imputed"]).max() <= 1e-6
    ref = toy.reference("panel_to_rna", x[:, :6], np.arange(n) % 3, np.zeros(n, int))
    assert_close(many.layers["inclust_imputed"], ref["y"])


def test_torchscript_backend(tmp_path, cells):
    pytest.importorskip("torch")
    model = make_toy_export(tmp_path / "m", seed=2, torchscript=True)
    src = write_input(tmp_path / "in.h5ad", cells)
    invoke("impute", "--onnx", model.folder, "--input", src, "--output", tmp_path / "ts.h5ad", "--combination", "panel_to_rna", "--torchscript")
    invoke("embed", "--onnx", model.folder, "--input", src, "--output", tmp_path / "tse.h5ad", "--combination", "panel_embed", "--torchscript")
    out = ad.read_h5ad(tmp_path / "ts.h5ad")
    ref = model.reference("panel_to_rna", cells[:, cols(PANEL)], COV_IDX, np.zeros(N, int))
    assert_close(out.layers["inclust_imputed"], ref["y"])
    assert out.uns["inclust"]["backend"] == "torchscript"
    assert_close(ad.read_h5ad(tmp_path / "tse.h5ad").obsm["X_inclust"], model.reference("panel_embed", cells[:, cols(PANEL)], COV_IDX)["latent"])


def test_chosen_backend_is_used(toy, cells, tmp_path, monkeypatch):
    """The backend choose_backend returns (Triton's with --triton) replaces onnxruntime, and sees the extra options."""
    import click

    from inclust_plus.runtime import cli as cli_mod
    from inclust_plus.runtime.backend import Backend, OnnxBackend

    class Recording(OnnxBackend):
        calls = 0

        def run(self, graph, x, covariate, target_covariate):
            Recording.calls += 1
            return super().run(graph, x, covariate, target_covariate)

        def provenance(self):
            return {**super().provenance(), "backend": "recording"}

    seen = {}

    def choose(extra, options):
        seen.update(extra)
        return Recording("cpu") if extra.get("fake") else cli_mod.default_backend(options)

    monkeypatch.setattr(cli_mod, "choose_backend", choose)
    command = cli_mod._make_command("impute")
    command.params.append(click.Option(["--fake"], is_flag=True))
    src = write_input(tmp_path / "in.h5ad", cells)
    result = CliRunner().invoke(command, ["--onnx", str(toy.folder), "--input", str(src), "--output", str(tmp_path / "o.h5ad"), "--combination", "panel_to_rna", "--fake", "--batch-size", "10"])
    assert result.exit_code == 0, result.output
    assert seen["fake"] is True and Recording.calls == 4 and isinstance(Recording("cpu"), Backend)
    assert ad.read_h5ad(tmp_path / "o.h5ad").uns["inclust"]["backend"] == "recording"
