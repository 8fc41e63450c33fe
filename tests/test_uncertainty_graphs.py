"""An ensemble's exported graphs return y_std, the members' per-feature spread, and every runner writes it.

The reference is PyTorch: ``InClustModule.predict(return_std=True)`` (population std over the K
members) and, independently, numpy's std (ddof=0) of the members' decodes. The exported value must
meet the export bound (1e-5 + 1e-6 x |value|; float16 graphs 1e-2 + 1e-2 x |value|). ``inclust-run``,
the Predictor and the training API must then write it as ``layers["inclust_std"]``; one network writes
no such layer and its graphs have no such output.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from export_toys import MERFISH, N_RNA, make_toy_checkpoint, toy_description
from inclust_plus.export import export_model
from inclust_plus.contract.combinations import all_combinations
from inclust_plus.contract.plan_builder import build_plan
from inclust_plus.export.validate import (FP16_ATOL, FP16_RTOL, formatted, random_feeds, reference, run_onnx, sparse_batch,
                                          within_tolerance)
from inclust_plus.runtime.cli import cli
from inclust_plus.runtime.predictor import Predictor
from inclust_plus.training.checkpoint import load_checkpoint
from inclust_plus.training.model import InClust
from inclust_plus.training.uncertainty import STD_LAYER
from runtime_fixtures import make_cells, write_h5ad

COMBO = "merfish_to_rna"
N_CELLS = 53
ATOL, RTOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A 3-member toy ensemble exported with every flavour (raw inputs: the preprocessing runs in the graph)."""
    d = tmp_path_factory.mktemp("ens")
    ckpt = make_toy_checkpoint(d / "model.pt", seed=3, members=3)
    export_model(ckpt, d / "export", combinations=[COMBO, "rna_to_protein", "merfish_embed"], fold_preprocessing=True, fp16=True)
    return ckpt, d / "export"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("one")
    ckpt = make_toy_checkpoint(d / "model.pt", seed=3)
    export_model(ckpt, d / "export", combinations=[COMBO], fold_preprocessing=True)
    return ckpt, d / "export"


def _cells(path):
    """Raw counts of the MERFISH panel with a covariate column, as a user's file."""
    names = toy_description()["schema"]["modalities"][0]["features"]
    x = np.round(make_cells(N_CELLS, [names[i] for i in MERFISH], seed=4) * 5)
    x[5] = 0.0  # an empty cell
    cov = ["merfish" if i % 3 else "scrna" for i in range(N_CELLS)]
    write_h5ad(path, x, [names[i] for i in MERFISH], cov)
    return ad.read_h5ad(path)


def _run(export, src, out, *extra):
    result = CliRunner().invoke(cli, ["impute", "--onnx", str(export), "--input", str(src), "--output", str(out), "--combination", COMBO,
                                      "--covariate-key", "dataset", "-q", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return ad.read_h5ad(out)


def _close(got, want, atol=ATOL, rtol=RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= atol + rtol * np.abs(want)), float(np.max(np.abs(got - want)))


@pytest.mark.parametrize("batch", [1, 7, 1024])
@pytest.mark.parametrize("flavour", ["dense", "csr", "fp16"])
def test_exported_y_std_equals_the_pytorch_members_std(ensemble, batch, flavour):
    ckpt, export = ensemble
    module, desc = load_checkpoint(ckpt)
    combo = next(c for c in all_combinations(desc) if c.name == COMBO)
    plan = build_plan(desc, combo.inputs)
    feeds = sparse_batch(random_feeds(combo, module.config.n_covariates, batch, seed=batch, plan=plan), seed=batch)
    want = reference(module, combo, feeds, plan)
    # the PyTorch reference is the population std of the members' decodes (numpy, ddof=0)
    x = torch.zeros(batch, module.config.n_features)
    x[:, list(combo.inputs)] = torch.from_numpy(plan.apply(feeds["x"]).astype(np.float32))
    mask = torch.zeros(module.config.n_features)
    mask[list(combo.inputs)] = 1.0
    with torch.no_grad():
        mu, _ = module.encode(x, mask)
        z = module.correct(mu, torch.from_numpy(feeds["covariate"])) + module.covariate_embedding[torch.from_numpy(feeds["target_covariate"])]
        members = module.decode_members(z).numpy()[:, :, list(combo.outputs)]
    assert members.shape[1] == 3
    np.testing.assert_allclose(want["y_std"], members.astype(np.float64).std(axis=1, ddof=0), atol=1e-6)
    assert want["y_std"].max() > 1e-2  # the members disagree: a zero output could not pass
    file = {"dense": f"{COMBO}.onnx", "csr": f"{COMBO}.csr.onnx", "fp16": f"{COMBO}.fp16.onnx"}[flavour]
    got = run_onnx((export / file).read_bytes(), formatted(feeds, "csr" if flavour == "csr" else "dense"))
    assert list(got) == ["y", "latent", "label_probs", "y_std"]
    bound = (FP16_ATOL, FP16_RTOL) if flavour == "fp16" else (ATOL, RTOL)
    assert within_tolerance({"y_std": got["y_std"]}, {"y_std": want["y_std"]}, *bound)
    assert within_tolerance({"y": got["y"]}, {"y": want["y"]}, *bound)


def test_manifest_declares_y_std_for_ensemble_decoding_graphs_only(ensemble, single):
    m = json.loads((ensemble[1] / "manifest.json").read_text())
    by_name = {g["name"]: g for g in m["graphs"]}
    for name in (COMBO, "rna_to_protein"):
        g = by_name[name]
        width = len(g["output_features"])
        assert g["outputs"][-1] == {"name": "y_std", "dtype": "float32", "shape": ["batch", width]}
        assert all(v["outputs"][-1]["name"] == "y_std" for v in g["variants"]) and len(g["variants"]) == 3
    assert [o["name"] for o in by_name["merfish_embed"]["outputs"]] == ["latent", "label_probs"]
    one = json.loads((single[1] / "manifest.json").read_text())["graphs"][0]
    assert [o["name"] for o in one["outputs"]] == ["y", "latent", "label_probs"]
    assert [o.name for o in onnx.load(single[1] / f"{COMBO}.onnx").graph.output] == ["y", "latent", "label_probs"]


def test_torchscript_twin_returns_y_std_too(ensemble):
    ckpt, export = ensemble
    module, desc = load_checkpoint(ckpt)
    combo = next(c for c in all_combinations(desc) if c.name == COMBO)
    plan = build_plan(desc, combo.inputs)
    feeds = random_feeds(combo, module.config.n_covariates, 9, seed=2, plan=plan)
    scripted = torch.jit.load(str(export / f"{COMBO}.ts"))
    with torch.no_grad():
        outs = scripted(*[torch.from_numpy(feeds[k]) for k in ("x", "covariate", "target_covariate")])
    assert len(outs) == 4
    _close(outs[3].numpy(), reference(module, combo, feeds, plan)["y_std"])


def test_cli_predictor_and_api_write_the_same_inclust_std(ensemble, tmp_path):
    ckpt, export = ensemble
    adata = _cells(tmp_path / "cells.h5ad")
    out = _run(export, tmp_path / "cells.h5ad", tmp_path / "out.h5ad")
    api = InClust.load(ckpt).impute(adata, combination=COMBO, covariate_key="dataset")
    assert out.layers[STD_LAYER].shape == (N_CELLS, N_RNA) and api.layers[STD_LAYER].shape == (N_CELLS, N_RNA)
    assert float(api.layers[STD_LAYER].min()) >= 0 and float(api.layers[STD_LAYER].max()) > 1e-2
    _close(out.layers[STD_LAYER], api.layers[STD_LAYER])  # the CLI equals PyTorch
    _close(out.layers["inclust_imputed"], api.layers["inclust_imputed"])
    assert out.uns["inclust"]["std_layer"] == STD_LAYER and api.uns["inclust"]["std_layer"] == STD_LAYER
    mem = Predictor(export).impute(adata, combination=COMBO, covariate_key="dataset")
    np.testing.assert_allclose(mem.layers[STD_LAYER], out.layers[STD_LAYER], rtol=0, atol=1e-6)  # Predictor equals CLI
    for flags in (("--input-format", "csr"), ("--torchscript",)):  # the CSR graph and the TorchScript twin write it too
        other = _run(export, tmp_path / "cells.h5ad", tmp_path / f"{flags[-1]}.h5ad", *flags)
        _close(other.layers[STD_LAYER], api.layers[STD_LAYER])
    # log1p scale: the spread times the per-feature max, as the values are
    scale = np.asarray(toy_description(seed=3)["preprocessing"]["rna"]["scale"], np.float32)
    logged = _run(export, tmp_path / "cells.h5ad", tmp_path / "log.h5ad", "--output-scale", "log1p")
    _close(logged.layers[STD_LAYER], out.layers[STD_LAYER] * scale[None, :], atol=1e-5, rtol=1e-5)
    # counts of a log1p modality: no exact form, so no layer, and uns says why
    counts = _run(export, tmp_path / "cells.h5ad", tmp_path / "counts.h5ad", "--output-scale", "counts")
    assert STD_LAYER not in counts.layers and counts.uns["inclust"]["std_layer"].startswith("not written")
    with pytest.warns(UserWarning, match="inclust_std"):
        api_counts = InClust.load(ckpt).impute(adata, combination=COMBO, covariate_key="dataset", output_scale="counts")
    assert STD_LAYER not in api_counts.layers


def test_one_network_writes_no_inclust_std(single, tmp_path):
    ckpt, export = single
    adata = _cells(tmp_path / "cells.h5ad")
    adata.layers[STD_LAYER] = adata.X.copy()  # a previous result's layer is never carried as if it were this model's
    adata.write_h5ad(tmp_path / "cells.h5ad")
    out = _run(export, tmp_path / "cells.h5ad", tmp_path / "out.h5ad")
    assert STD_LAYER not in out.layers and "std_layer" not in out.uns["inclust"]
    assert STD_LAYER not in Predictor(export).impute(adata, combination=COMBO, covariate_key="dataset").layers
    assert STD_LAYER not in InClust.load(ckpt).impute(adata, combination=COMBO, covariate_key="dataset").layers


def test_triton_configs_serve_y_std_of_an_ensemble(tmp_path):
    from inclust_plus.triton.model_config import parse_model_config

    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="Triton's ModelConfig protobuf comes with tritonclient[grpc]")
    ckpt = make_toy_checkpoint(tmp_path / "model.pt", seed=3, members=3)
    export_model(ckpt, tmp_path / "export", combinations=[COMBO, "merfish_embed"], torchscript=False, triton_dir=tmp_path / "triton")
    for suffix in ("", "_csr", "_python", "_csr_python"):
        outputs = [t.name for t in parse_model_config((tmp_path / "triton" / f"{COMBO}{suffix}" / "config.pbtxt").read_text()).output]
        assert outputs == ["y", "latent", "label_probs", "y_std"], suffix
        embed = [t.name for t in parse_model_config((tmp_path / "triton" / f"merfish_embed{suffix}" / "config.pbtxt").read_text()).output]
        assert embed == ["latent", "label_probs"]


def test_one_network_with_posterior_samples_writes_their_spread(single, tmp_path):
    """``samples=K``: values are the mean of K seeded posterior-sample decodes, the layer their spread;
    ``uncertainty.impute`` is the same call with the values in X, and an error without samples."""
    from inclust_plus.errors import InclustError
    from inclust_plus.training.uncertainty import impute

    ckpt, _ = single
    adata = _cells(tmp_path / "cells.h5ad")
    model = InClust.load(ckpt)
    plain = model.impute(adata, combination=COMBO, covariate_key="dataset")
    sampled = model.impute(adata, combination=COMBO, covariate_key="dataset", samples=25, seed=2)
    again = model.impute(adata, combination=COMBO, covariate_key="dataset", samples=25, seed=2)
    sd = sampled.layers[STD_LAYER]
    assert sd.shape == (N_CELLS, N_RNA) and float(sd.min()) >= 0 and float(sd.max()) > 1e-3
    np.testing.assert_array_equal(sd, again.layers[STD_LAYER])
    assert "25 posterior samples" in sampled.uns["inclust"]["std"] and sampled.uns["inclust"]["std_layer"] == STD_LAYER
    y_s, y_p = np.asarray(sampled.layers["inclust_imputed"]), np.asarray(plain.layers["inclust_imputed"])
    assert 0 < np.abs(y_s - y_p).mean() < 0.5 * sd.mean()  # the samples scatter around the posterior-mean decode
    thin = impute(model, adata, "merfish", "rna", covariate_key="dataset", samples=25, seed=2)
    np.testing.assert_array_equal(np.asarray(thin.X), y_s)
    np.testing.assert_array_equal(thin.layers[STD_LAYER], sd)
    with pytest.raises(InclustError, match="samples=K"):
        impute(model, adata, "merfish", "rna", covariate_key="dataset")


def test_posterior_samples_encode_each_cell_once_and_keep_its_latent_and_labels(single, tmp_path, monkeypatch):
    """The K draws come from the same encoding as the latent and the labels: one encode per batch,
    and obsm/obs equal to those of the posterior-mean impute."""
    ckpt, _ = single
    adata = _cells(tmp_path / "cells.h5ad")
    model = InClust.load(ckpt)
    plain = model.impute(adata, combination=COMBO, covariate_key="dataset")
    calls = []
    encode = type(model.module).encode
    monkeypatch.setattr(type(model.module), "encode", lambda self, *a: calls.append(1) or encode(self, *a))
    sampled = model.impute(adata, combination=COMBO, covariate_key="dataset", samples=7, seed=1)
    assert len(calls) == 1  # N_CELLS cells in one batch
    np.testing.assert_array_equal(sampled.obsm["X_inclust"], plain.obsm["X_inclust"])
    assert (sampled.obs["inclust_label"] == plain.obs["inclust_label"]).all()
    from inclust_plus.errors import InclustError

    with pytest.raises(InclustError, match="samples is -1"):
        model.impute(adata, combination=COMBO, covariate_key="dataset", samples=-1)
