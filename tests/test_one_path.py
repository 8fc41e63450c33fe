"""One AnnData -> model path (issue 23): ``InClust``, ``Predictor`` and ``inclust-run`` give the same numbers.

Two small trained models: an ensemble of two networks whose covariate joins two obs columns
(``batch_key=["batch", "tech"]``, categories ``b1|10x`` ...), and one network trained on a MuData
(rna + protein). Each verb runs through the training-side ``InClust`` (PyTorch, in memory), the
torch-free ``Predictor`` on the model's export (onnxruntime) and ``inclust-run`` on files; every
output must agree to float32 rounding (the export's own bound, 1e-5 + 1e-5 x |value|). Posterior
samples have no exported form (graphs are deterministic), so ``samples=K`` is checked against the
tensor-level ``predict_with_std`` on the same preprocessed values instead.
"""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from inclust_plus.contract import read_manifest
from inclust_plus.errors import InclustError
from inclust_plus.export import export_model
from inclust_plus.runtime import Predictor
from inclust_plus.runtime.cli import cli
from inclust_plus.training.model import InClust
from inclust_plus.training.torch_backend import memory_manifest
from inclust_plus.training.uncertainty import STD_LAYER, impute, predict_with_std
from reliability_helpers import one_error

md = pytest.importorskip("mudata")
N = 160
GENES = [f"g{i}" for i in range(30)]
PROTEINS = [f"p{i}" for i in range(6)]
SMALL = dict(epochs=2, latent_dim=4, encoder_hidden=[16, 8], decoder_hidden=[16], seed=0)
PREP = {"rna": {"normalize_total": 1e4, "log1p": True, "scale": "max"}}


def _cells():
    """Counts of two cell types over 36 features, with batch, technology and type columns."""
    rng = np.random.default_rng(0)
    types = np.array(["T", "B"])[rng.integers(0, 2, N)]
    means = rng.gamma(1.0, 3.0, (2, len(GENES) + len(PROTEINS)))
    counts = rng.poisson(means[(types == "B").astype(int)] * rng.uniform(0.5, 1.5, (N, 1))).astype(np.float32)
    obs = pd.DataFrame({"batch": np.where(np.arange(N) % 2 == 0, "b1", "b2"), "tech": np.where((np.arange(N) // 2) % 2 == 0, "10x", "smart"),
                        "cell_type": types}, index=[f"c{i}" for i in range(N)])
    return counts, obs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_path")
    counts, obs = _cells()
    rna = ad.AnnData(X=sp.csr_matrix(counts[:, : len(GENES)]), obs=obs, var=pd.DataFrame(index=GENES))
    two_keys = InClust.setup(rna, batch_key=["batch", "tech"], label_key="cell_type", preprocessing=PREP, ensemble=2, **SMALL).train(progress=False)
    mdata = md.MuData({"rna": rna.copy(), "protein": ad.AnnData(X=counts[:, len(GENES):], obs=obs.copy(), var=pd.DataFrame(index=PROTEINS))})
    muon = InClust.setup(mdata, label_key="cell_type", preprocessing={**PREP, "protein": {"log1p": True}}, **SMALL).train(progress=False)
    out = {}
    for name, model, data, suffix in (("two_keys", two_keys, rna, "h5ad"), ("mudata", muon, mdata, "h5mu")):
        model.save(root / f"{name}.pt")
        export = export_model(root / f"{name}.pt", root / f"{name}_export", torchscript=False, csr=False).parent
        path = root / f"{name}.{suffix}"
        data.write_h5mu(path) if suffix == "h5mu" else data.write_h5ad(path)
        out[name] = {"model": model, "predictor": Predictor(export), "export": export, "data": data, "path": path, "root": root}
    return out


def _close(a, b, what):
    a = a.toarray() if sp.issparse(a) else np.asarray(a)
    b = b.toarray() if sp.issparse(b) else np.asarray(b)
    assert a.shape == b.shape, what
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=what)


def _cli(m, command, combination, *extra):
    out = m["root"] / f"{m['path'].stem}_{command}_{combination}_{len(list(m['root'].iterdir()))}.h5ad"  # a new file each call
    res = CliRunner().invoke(cli, [command, "--onnx", str(m["export"]), "--input", str(m["path"]), "--output", str(out),
                                   "--combination", combination, "-q", *extra])
    assert res.exit_code == 0, res.output
    return ad.read_h5ad(out)


def test_the_in_memory_manifest_is_the_exported_one_without_files(models):
    """InClust's graphs are the exporter's: same builders, so the same entries but for the files."""
    for name, m in models.items():
        exported = read_manifest(m["export"])
        memory = memory_manifest(m["model"].module, m["model"].description)
        assert [dataclasses.replace(g, file=None, sha256=None, opset=None) for g in exported.graphs] == list(memory.graphs), name
        assert dataclasses.replace(exported, graphs=(), model=dataclasses.replace(exported.model, sha256=None)) == dataclasses.replace(memory, graphs=())
        assert all(g.file is None and g.sha256 is None for g in memory.graphs) and memory.model_sha256 is None


# the combinations each verb runs: the two-key model has one panel (rna); the MuData model reads both modalities
DECODE = {"two_keys": "rna_to_rna", "mudata": "rna_protein_to_rna_protein"}
GENERATE = {"two_keys": "rna_to_rna", "mudata": "rna_to_rna_protein"}
EMBED = {"two_keys": "rna_embed", "mudata": "rna_protein_embed"}


def _three_doors(m, verb: str, combination: str) -> dict:
    """The same verb on the same cells through InClust, the Predictor on the export and inclust-run."""
    return {"InClust": getattr(m["model"], verb)(m["data"], combination=combination),
            "Predictor": getattr(m["predictor"], verb)(m["data"], combination=combination),
            "inclust-run": _cli(m, verb, combination)}


@pytest.mark.parametrize("name", ["two_keys", "mudata"])
def test_impute_is_one_answer(models, name):
    m = models[name]
    doors = _three_doors(m, "impute", DECODE[name])
    want = doors["inclust-run"]
    for door, got in doors.items():
        assert list(got.var_names) == list(want.var_names), door
        _close(got.layers["inclust_imputed"], want.layers["inclust_imputed"], f"{name} {door} imputed")
        _close(got.obsm["X_inclust"], want.obsm["X_inclust"], f"{name} {door} latent")
        _close(got.X, want.X, f"{name} {door} measured")
        assert got.uns["inclust"]["covariate"] == want.uns["inclust"]["covariate"], door
    if name == "two_keys":  # each cell's category from both obs columns, joined, through every door
        assert want.uns["inclust"]["covariate"] == "obs['batch|tech']"
    assert float(np.abs(want.layers["inclust_imputed"]).max()) > 0.1  # real numbers, not zeros


@pytest.mark.parametrize("name", ["two_keys", "mudata"])
def test_generate_is_one_answer(models, name):
    m = models[name]
    doors = _three_doors(m, "generate", GENERATE[name])
    want = doors["inclust-run"]
    keys = sorted(k for k in want.obsm if k.startswith("inclust_"))
    assert keys == (["inclust_rna"] if name == "two_keys" else ["inclust_protein", "inclust_rna"])
    for door, got in doors.items():
        for k in keys:
            _close(got.obsm[k], want.obsm[k], f"{name} {door} {k}")
        _close(got.layers["inclust_imputed"], want.layers["inclust_imputed"], f"{name} {door} generated")


@pytest.mark.parametrize("name", ["two_keys", "mudata"])
def test_latent_is_one_answer(models, name):
    m = models[name]
    want = _cli(m, "embed", EMBED[name]).obsm["X_inclust"]
    for door, got in (("InClust", m["model"].get_latent_representation(m["data"], combination=EMBED[name], inplace=False)),
                      ("Predictor", m["predictor"].get_latent_representation(m["data"], combination=EMBED[name], inplace=False))):
        _close(got, want, f"{name} {door} latent")
    if name == "two_keys":  # the covariate matters: one category for all cells is another latent
        one = m["model"].get_latent_representation(m["data"], combination=EMBED[name], covariate="b1|10x", inplace=False)
        assert np.abs(one - want).max() > 1e-3


@pytest.mark.parametrize("name", ["two_keys", "mudata"])
def test_labels_are_one_answer(models, name):
    m = models[name]
    want = _cli(m, "annotate", EMBED[name]).obs
    for door, got in (("InClust", m["model"].predict_labels(m["data"], combination=EMBED[name], inplace=False)),
                      ("Predictor", m["predictor"].predict_labels(m["data"], combination=EMBED[name], inplace=False))):
        assert (got["inclust_label"].astype(str).to_numpy() == want["inclust_label"].astype(str).to_numpy()).all(), door
        _close(got["inclust_label_probability"].to_numpy(), want["inclust_label_probability"].to_numpy(), f"{name} {door} probability")
    assert set(want["inclust_label"].astype(str)) <= {"T", "B"}


def test_ensemble_spread_is_one_answer(models):
    m = models["two_keys"]
    doors = {"InClust": m["model"].impute(m["data"], combination="rna_to_rna"),
             "uncertainty.impute": impute(m["model"], m["data"], "rna", "rna"),
             "Predictor": m["predictor"].impute(m["data"], combination="rna_to_rna"),
             "inclust-run": _cli(m, "impute", "rna_to_rna")}
    want = doors["inclust-run"].layers[STD_LAYER]
    assert float(want.min()) >= 0 and float(want.max()) > 1e-3
    for door, got in doors.items():
        _close(got.layers[STD_LAYER], want, f"{door} spread")
        assert got.uns["inclust"]["std_layer"] == STD_LAYER, door


def test_posterior_samples_go_through_the_backend(models):
    """``samples=K`` through InClust (the PyTorch backend) equals the tensor-level ``predict_with_std``
    on the same preprocessed values (one batch, so the same K seeded draws)."""
    m = models["mudata"]
    model, data = m["model"], m["data"]
    got = model.impute(data, combination="rna_protein_to_rna_protein", samples=9, seed=4)
    again = model.impute(data, combination="rna_protein_to_rna_protein", samples=9, seed=4)
    np.testing.assert_array_equal(got.layers[STD_LAYER], again.layers[STD_LAYER])
    assert "9 posterior samples" in got.uns["inclust"]["std"] and got.uns["inclust"]["samples"] == 9
    plan = memory_manifest(model.module, model.description).graph("rna_protein_to_rna_protein").preprocessing_plan
    raw = np.hstack([data.mod["rna"].X.toarray(), np.asarray(data.mod["protein"].X)])
    y, sd = predict_with_std(model, plan.apply(raw), "rna_protein", "data", samples=9, seed=4)
    _close(got.layers["inclust_imputed"], y, "sampled mean")
    _close(got.layers[STD_LAYER], sd, "sampled spread")
    plain = model.impute(data, combination="rna_protein_to_rna_protein")
    assert 0 < np.abs(got.layers["inclust_imputed"] - plain.layers["inclust_imputed"]).mean() < sd.mean()


def test_empty_input_is_the_same_one_line_error(models, tmp_path):
    m = models["two_keys"]
    empty = m["data"][:0].copy()
    errors = []
    for run_it in (lambda: m["model"].impute(empty), lambda: m["predictor"].impute(empty),
                   lambda: m["model"].get_latent_representation(empty), lambda: m["predictor"].get_latent_representation(empty)):
        with pytest.raises(InclustError) as err:
            run_it()
        errors.append(str(err.value))
    assert errors == ["the AnnData has no cells; pass a non-empty AnnData"] * 4
    empty.write_h5ad(tmp_path / "empty.h5ad")
    line = one_error(cli, ["impute", "--onnx", m["export"], "--input", tmp_path / "empty.h5ad", "--output", tmp_path / "o.h5ad"],
                     "has no cells", unchanged=tmp_path)
    assert line.endswith("; pass a non-empty AnnData")


def test_map_query_reads_cells_as_the_runtime_does(models):
    """inclust-map's query reading is the runtime's: joined covariate keys, and the runtime's one-line errors."""
    m = models["two_keys"]
    query = m["data"][:40].copy()
    query.obs["batch"] = "b3"
    mapped = m["model"].map_query(query, covariate_key="batch|tech", steps=3, progress=False)
    assert list(mapped.description.covariate.categories) == ["b1|10x", "b2|10x", "b1|smart", "b2|smart", "b3|10x", "b3|smart"]
    holed = query.copy()
    holed.obs["tech"] = pd.Categorical([None] + ["10x"] * 39)
    with pytest.raises(InclustError) as mapping:
        m["model"].map_query(holed, covariate_key="batch|tech", steps=3, progress=False)
    with pytest.raises(InclustError) as running:
        m["predictor"].get_latent_representation(holed, covariate_key="batch|tech")
    assert mapping.value.problem == running.value.problem == "obs column 'batch|tech' is empty for 1 cells"
    assert mapping.value.fix == "fill it or pass --name NAME" and running.value.fix == "fill it or pass covariate=NAME"
