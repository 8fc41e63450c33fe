"""The notebook API on the example data: training-side InClust verbs and the runtime Predictor.

One model is trained on examples/data (paper settings, five epochs, one network) and exported once;
every verb must give the numbers ``inclust-run`` gives on the same export and cells, whatever the
var order, sparsity or layer the AnnData comes in, and the outputs must survive a scanpy round trip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

ad = pytest.importorskip("anndata")
sc = pytest.importorskip("scanpy")

from click.testing import CliRunner  # noqa: E402

from inclust_plus.errors import InclustError  # noqa: E402
from inclust_plus.export import export_model  # noqa: E402
from inclust_plus.runtime import Predictor, RunOptions, run  # noqa: E402
from inclust_plus.runtime.cli import cli  # noqa: E402
from inclust_plus.training.model import InClust  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
TOL = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    ref, query = ad.read_h5ad(DATA / "scrna_reference.h5ad"), ad.read_h5ad(DATA / "merfish_query.h5ad")
    model = InClust.setup({"scrna": ref, "merfish": query}, label_key={"scrna": "cell_type"}, query="merfish", epochs=5, seed=0)
    model.train(progress=False)
    model.save(root / "model.pt")
    export = export_model(root / "model.pt", root / "export", torchscript=False).parent
    query.layers["counts"] = query.X.copy()
    query.write_h5ad(root / "query.h5ad")
    out = run(RunOptions("impute", onnx=export, input=root / "query.h5ad", output=root / "imputed.h5ad", combination="merfish_to_rna", quiet=True))
    emb = run(RunOptions("embed", onnx=export, input=root / "query.h5ad", output=root / "embedded.h5ad", quiet=True))
    return {"root": root, "model": model, "export": export, "query": query, "cli": ad.read_h5ad(out), "cli_embed": ad.read_h5ad(emb)}


def _dense(m):
    return m.toarray() if sp.issparse(m) else np.asarray(m)


def _variants(query):
    """The same cells as shuffled-dense X, sparse X with extra genes, and a layer."""
    rng = np.random.default_rng(0)
    shuffled = query[:, rng.permutation(query.n_vars)].copy()
    shuffled.X = _dense(shuffled.X)
    extra = ad.concat([query, ad.AnnData(X=sp.csr_matrix(np.ones((query.n_obs, 2), np.float32)), obs=query.obs[[]],
                                         var=query.var.iloc[:0].reindex(["not_a_gene1", "not_a_gene2"]))], axis=1, merge="first")
    layered = query.copy()
    layered.X = sp.csr_matrix(layered.shape, dtype=np.float32)  # X empty: only the layer holds values
    return {"shuffled dense": (shuffled, None), "sparse with extra genes": (extra, None), "layer": (layered, "counts")}


def test_predictor_equals_cli_for_every_input_form(trained):
    p = Predictor(trained["export"])
    cli_out, cli_emb = trained["cli"], trained["cli_embed"]
    for label, (adata, layer) in _variants(trained["query"]).items():
        got = p.impute(adata, layer=layer)
        assert list(got.var_names) == list(cli_out.var_names), label
        assert np.abs(got.layers["inclust_imputed"] - cli_out.layers["inclust_imputed"]).max() <= 1e-6, label
        assert np.abs(got.obsm["X_inclust"] - cli_out.obsm["X_inclust"]).max() <= 1e-6, label
        lat = p.get_latent_representation(adata, layer=layer)
        assert np.abs(lat - cli_emb.obsm["X_inclust"]).max() <= 1e-6, label
        assert adata.obsm["X_inclust"] is lat
        labels = p.predict_labels(adata, layer=layer)
        assert (labels["inclust_label"].astype(str).to_numpy() == cli_emb.obs["inclust_label"].astype(str).to_numpy()).all(), label


def test_training_api_equals_cli(trained):
    model = trained["model"]
    cli_out, cli_emb = trained["cli"], trained["cli_embed"]
    for label, (adata, layer) in _variants(trained["query"]).items():
        got = model.impute(adata, layer=layer)
        assert np.abs(got.layers["inclust_imputed"] - cli_out.layers["inclust_imputed"]).max() <= TOL, label
        lat = model.get_latent_representation(adata, layer=layer)
        assert np.abs(lat - cli_emb.obsm["X_inclust"]).max() <= TOL, label
        labels = model.predict_labels(adata, layer=layer)
        assert (labels["inclust_label"].astype(str).to_numpy() == cli_emb.obs["inclust_label"].astype(str).to_numpy()).mean() >= 0.999, label
        assert "inclust_label" in adata.obs


def test_outputs_are_honest(trained):
    query, cli_out = trained["query"], trained["cli"]
    api_out = Predictor(trained["export"]).impute(query)
    panel = list(query.var_names)
    for out in (cli_out, api_out, trained["model"].impute(query)):
        assert out.n_vars == 153
        assert int(out.var["inclust_imputed"].sum()) == 31
        assert not out.var.loc[panel, "inclust_imputed"].any()
        np.testing.assert_array_equal(_dense(out[:, panel].X), _dense(query.X))  # measured values untouched
        assert (_dense(out[:, out.var["inclust_imputed"].to_numpy()].X) == 0).all()
        np.testing.assert_array_equal(_dense(out[:, panel].layers["counts"]), _dense(query.layers["counts"]))  # layers carried
        assert out.var.loc[panel, "in_merfish_panel"].astype(bool).all()  # var columns carried
        assert (out.var["modality"] == "rna").all()
        assert (out.obs["cell_type"].astype(str) == query.obs["cell_type"].astype(str)).all()  # obs carried
        assert out.uns["inclust"]["output_scale"] == "model"
        assert out.uns["inclust"]["scale"] == "model scale: rna = values as given (no preprocessing recorded)"
    swapped = Predictor(trained["export"]).impute(query, imputed_into="X")
    np.testing.assert_array_equal(swapped.X, api_out.layers["inclust_imputed"])
    np.testing.assert_array_equal(_dense(swapped.layers["inclust_measured"]), _dense(api_out.X))
    with pytest.raises(InclustError, match="output scale log1p"):
        Predictor(trained["export"]).impute(query, output_scale="log1p")


def test_scanpy_round_trip_on_every_output(trained, tmp_path):
    p = Predictor(trained["export"])
    outputs = {"cli impute": trained["cli"], "cli embed": trained["cli_embed"], "predictor impute": p.impute(trained["query"]),
               "training impute": trained["model"].impute(trained["query"])}
    for label, out in outputs.items():
        sc.pp.neighbors(out, use_rep="X_inclust", n_neighbors=10, random_state=0)
        sc.tl.umap(out, random_state=0, maxiter=30)
        assert out.obsm["X_umap"].shape == (out.n_obs, 2) and np.isfinite(out.obsm["X_umap"]).all(), label
        path = tmp_path / f"{label.replace(' ', '_')}.h5ad"
        out.write_h5ad(path)
        back = ad.read_h5ad(path)
        if "inclust_imputed" in out.layers:
            np.testing.assert_array_equal(back.layers["inclust_imputed"], out.layers["inclust_imputed"])
            assert back.var["inclust_imputed"].dtype == bool
        assert back.obsp["connectivities"].nnz == out.obsp["connectivities"].nnz


def test_label_transfer_beats_chance(trained):
    query = trained["query"]
    labels = Predictor(trained["export"]).predict_labels(query, inplace=False)
    accuracy = float((labels["inclust_label"].astype(str).to_numpy() == query.obs["cell_type"].astype(str).to_numpy()).mean())
    assert accuracy >= 0.7, accuracy  # measured 0.78 (majority type: 0.50; 0.90 after 10 epochs)


def test_bad_input_is_one_line(trained):
    query, p, model = trained["query"], Predictor(trained["export"]), trained["model"]
    short = query[:, query.var_names[5:]].copy()
    for run_it in (lambda: p.impute(short, combination="merfish_to_rna"), lambda: model.impute(short, combination="merfish_to_rna")):
        with pytest.raises(InclustError, match=r"lacks 5 of the 122 features .*allow_missing=True") as err:
            run_it()
        assert "\n" not in str(err.value)
    for run_it in (lambda: p.impute(query, layer="nope"), lambda: model.impute(query, layer="nope")):
        with pytest.raises(InclustError, match="no layer 'nope'"):
            run_it()
    for run_it in (lambda: p.get_latent_representation(query, covariate="nowhere"), lambda: model.get_latent_representation(query, covariate="nowhere")):
        with pytest.raises(InclustError, match=r"^covariate 'nowhere' is not a covariate category of the model; known: scrna, merfish$"):
            run_it()  # one message from both doors (the training API had its own wording before issue 23)
    with pytest.raises(InclustError, match="lacks 22 of the 122 features graph 'merfish_to_rna'") as err:
        p.impute(query[:, :100].copy())  # no combination covered: the closest one says what is missing
    assert "--" not in str(err.value)  # keyword arguments, not CLI flags, in the fix
    with pytest.raises(InclustError, match=r"covariate categories the model does not know: .*; or pass covariate=NAME$"):
        p.get_latent_representation(query, covariate_key="cell_type")
    filled = p.impute(short, combination="merfish_to_rna", allow_missing=True)
    assert list(filled.uns["inclust"]["missing_features"]) == list(query.var_names[:5])


def test_reprs_say_what_the_model_is(trained):
    text = repr(trained["model"])
    assert "features rna 153" in text and "covariates ['scrna', 'merfish']" in text and "merfish_to_rna" in text and "one network" in text
    assert "untrained" in repr(InClust.setup(trained["query"], epochs=1))
    assert "merfish_to_rna (rna -> rna)" in repr(Predictor(trained["export"]))


def test_info_lists_the_export(trained):
    res = CliRunner().invoke(cli, ["info", str(trained["export"])])
    assert res.exit_code == 0, res.output
    assert "merfish_to_rna [impute]: rna (122 features) -> rna (153 features)" in res.output
    assert "covariate: scrna, merfish" in res.output and " ok" in res.output
    import json

    js = json.loads(CliRunner().invoke(cli, ["info", str(trained["export"]), "--json"]).output)
    assert {g["name"] for g in js["graphs"]} >= {"merfish_to_rna", "merfish_embed"}
    assert all(f["check"] == "ok" for g in js["graphs"] for f in g["files"])
    (trained["export"] / "merfish_embed.onnx").write_bytes((trained["export"] / "merfish_embed.onnx").read_bytes())  # untouched copy
    bad = CliRunner().invoke(cli, ["info", str(trained["root"])])
    assert bad.exit_code == 2 and bad.output.startswith("error: no manifest")


def test_setup_with_a_batch_key(tmp_path):
    query = ad.read_h5ad(DATA / "merfish_query.h5ad")
    query.obs["batch"] = np.where(np.arange(query.n_obs) % 2 == 0, "run1", "run2")
    with pytest.raises(InclustError, match="unknown setting 'epochz'"):
        InClust.setup(query, epochz=1)
    model = InClust.setup({"panel": query}, batch_key="batch", epochs=1, latent_dim=4, encoder_hidden=[16, 8], decoder_hidden=[16]).train(progress=False)
    assert (model.description.covariate.keys, model.description.covariate.categories) == (("batch",), ("run1", "run2"))
    auto = model.get_latent_representation(query, inplace=False)  # the model's covariate column, found by name
    explicit = model.get_latent_representation(query, covariate_key="batch", inplace=False)
    np.testing.assert_array_equal(auto, explicit)
    one = model.get_latent_representation(query, covariate="run1", inplace=False)
    assert np.abs(one[1::2] - explicit[1::2]).max() > 1e-3 and np.abs(one[::2] - explicit[::2]).max() == 0


def test_tensor_level_predict_takes_sparse_and_checks_width(trained):
    model, query = trained["model"], trained["query"]
    y_sparse = model.predict(sp.csr_matrix(query.X), "merfish", "merfish", "scrna")[0]
    y_dense = model.predict(_dense(query.X), "merfish", "merfish", "scrna")[0]
    np.testing.assert_array_equal(y_sparse, y_dense)
    with pytest.raises(InclustError, match=r"x has shape \(2000, 5\) but feature set 'merfish' has 122 features"):
        model.predict(query.X[:, :5], "merfish", "merfish")


def test_tensor_level_predict_is_the_predictor(trained):
    """``InClust.predict`` (preprocessed arrays of a feature set) runs the Predictor's path: the numbers of
    ``impute`` on the same cells, and its one-line errors word for word (it had its own lookup and wording)."""
    from inclust_plus.training.torch_backend import memory_manifest

    model, query = trained["model"], trained["query"]
    graph = memory_manifest(model.module, model.description).graph("merfish_to_rna")
    assert list(graph.input_features) == list(query.var_names)
    x = graph.preprocessing_plan.apply(_dense(query.X))
    y, z, probs = model.predict(x, "merfish", "merfish", target_covariate="scrna", batch_size=700)
    out = model.impute(query, combination="merfish_to_rna", covariate="merfish", target_covariate="scrna")
    np.testing.assert_allclose(y[:, model.feature_set("rna")], _dense(out.layers["inclust_imputed"]), atol=TOL)
    np.testing.assert_allclose(z, out.obsm["X_inclust"], atol=TOL)
    assert probs.shape == (query.n_obs, len(model.description.labels.categories)) and np.allclose(probs.sum(1), 1, atol=1e-5)
    per_cell = model.predict(x, "merfish", np.array(["merfish"] * query.n_obs), ["scrna"] * query.n_obs, batch_size=700)[0]
    np.testing.assert_array_equal(per_cell, y)
    assert list(model.covariate_index(["merfish", "scrna", "merfish"])) == [1, 0, 1]
    none = model.predict(x[:0], "merfish", "merfish", return_std=True, samples=3)
    assert [a.shape for a in none] == [(0, model.n_features), (0, z.shape[1]), (0, probs.shape[1]), (0, model.n_features)]
    doors = {
        r"^covariate 'nowhere' is not a covariate category of the model; known: scrna, merfish$": (
            lambda: model.predict(x, "merfish", "nowhere"), lambda: model.impute(query, combination="merfish_to_rna", covariate="nowhere"),
            lambda: model.predict(x, "merfish", ["merfish", "nowhere"] + ["merfish"] * (query.n_obs - 2)),
            lambda: model.covariate_index("nowhere")),
        r"^target_covariate 'nowhere' is not a covariate category of the model; known: scrna, merfish$": (
            lambda: model.predict(x, "merfish", "merfish", "nowhere"),
            lambda: model.impute(query, combination="merfish_to_rna", covariate="merfish", target_covariate="nowhere")),
        # the description's one feature-set lookup, which the manifest builder resolves every combination with
        r"^unknown feature set 'nope'; known sets: rna, merfish$": (
            lambda: model.predict(x, "nope", "merfish"), lambda: model.description.feature_set("nope")),
    }
    for message, calls in doors.items():
        for call in calls:
            with pytest.raises(InclustError, match=message):
                call()
