"""The neighbour read-out as a model setting (``[readout] neighbours = true``, training/readout.py): checked like every
setting, built by InClust.fit, kept in model.pt, and the same numbers through InClust.impute (torch backend),
Predictor on the export (onnxruntime) and ``inclust-run impute --onnx``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evaluation.synthetic import make_cells, synthetic_task
from inclust_plus.contract import read_manifest
from inclust_plus.errors import InclustError
from inclust_plus.export import export_model
from inclust_plus.training.checkpoint import read_checkpoint
from inclust_plus.training.cli import main as train_main
from inclust_plus.training.config import config_from_dict, with_settings
from inclust_plus.training.model import InClust

ad = pytest.importorskip("anndata")
DATA = __import__("pathlib").Path(__file__).parent / "data"
SMALL = {"model": {"ensemble": 2, "latent_dim": 8, "encoder_hidden": [32], "decoder_hidden": [32]}, "training": {"epochs": 3, "seed": 1}}


def _error(call) -> str:
    with pytest.raises(InclustError) as err:
        call()
    assert "\n" not in err.value.one_line()
    return err.value.one_line()


def test_settings_are_checked_by_the_one_settings_check(tmp_path):
    cfg = synthetic_task("imputation", n_cells=100, seed=0, overrides=SMALL).config
    # the imputation task's default: on with a query, however the query was set
    assert (cfg.readout.neighbours, cfg.readout.k_latent, cfg.readout.k_inputs) == ("with_query", 60, 30)
    assert cfg.readout.enabled(cfg.views.query)
    task = {"task": "imputation", "datasets": [{"name": "a"}, {"name": "b"}]}

    def on(c):
        return c.readout.enabled(c.views.query)

    assert not on(config_from_dict(task))  # without a query there is nothing to read out: the task's default is off
    assert on(config_from_dict({**task, "views": {"query": ["b"]}}))
    assert on(with_settings(config_from_dict(task), {"query": ["b"]}))  # a query set later (InClust.setup(query=...)): the same
    assert not on(with_settings(config_from_dict({**task, "views": {"query": ["b"]}}), {"query": []}))
    assert not on(config_from_dict({**task, "views": {"query": ["b"]}, "readout": {"neighbours": False}}))
    assert not on(config_from_dict({"datasets": task["datasets"], "views": {"query": ["b"]}}))  # other tasks: off
    assert on(config_from_dict({"datasets": task["datasets"], "views": {"query": ["b"]}, "readout": {"neighbours": "with_query"}}))
    assert _error(lambda: with_settings(cfg, {"k_latent": 0})) == "config key readout.k_latent = 0 is invalid: it must be an integer >= 1; e.g. k_latent = 60"
    assert _error(lambda: with_settings(cfg, {"k_inputs": 2.5})).startswith("config key readout.k_inputs = 2.5 is invalid")
    assert _error(lambda: with_settings(cfg, {"neighbours": "yes"})) == ("config key readout.neighbours = \"yes\" is invalid: it must be "
                                                                         "true, false or 'with_query'; e.g. neighbours = false")
    no_query = ("readout.neighbours = true needs the query datasets whose missing features it imputes; name them in views.query "
                "(InClust.setup(query=...)) or set readout.neighbours = false")
    doc = {"datasets": [{"name": "a"}, {"name": "b"}]}
    assert _error(lambda: config_from_dict({**doc, "readout": {"neighbours": True}})) == no_query
    assert config_from_dict({**doc, "readout": {"neighbours": True}, "views": {"query": ["b"]}}).readout.neighbours
    adata = make_cells(n_cells=40, n_batches=1, seed=0, sizes={"rna": 8, "protein": 2, "atac": 2}).anndata("rna")
    assert _error(lambda: InClust.setup(adata, neighbours=True)) == no_query
    assert _error(lambda: InClust.setup(adata, epochs=1).train(progress=False, neighbours=True)) == no_query
    adata.write_h5ad(tmp_path / "data.h5ad")
    (tmp_path / "c.toml").write_text('[[datasets]]\nname = "data"\npath = "data.h5ad"\n')
    result = CliRunner().invoke(train_main, [str(tmp_path / "c.toml"), "--out", str(tmp_path / "m.pt"), "--quiet", "--neighbours"])
    assert result.exit_code == 2 and result.output.strip() == f"error: {no_query}" and not (tmp_path / "m.pt").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An ensemble of 2 trained on the synthetic imputation task with the read-out, saved and exported."""
    root = tmp_path_factory.mktemp("readout")
    task = synthetic_task("imputation", n_cells=400, seed=0, overrides=SMALL)
    model = InClust(with_settings(task.config, {"neighbours": True, "k_latent": 12, "k_inputs": 6}), objects=task.objects).train(progress=False)
    model.save(root / "model.pt")
    report = {}
    manifest = export_model(root / "model.pt", root / "export", report=report)
    return model, task.objects["merfish"], root, manifest, report


def test_fit_builds_the_table_from_the_reference_on_the_features_the_query_lacks(trained):
    model, query, *_ = trained
    record, table = model.description.readout, model.neighbours
    rna = [n for m in model.description.modalities if m.name == "rna" for n in m.features]
    lacks = sorted(rna.index(g) for g in rna if g not in set(query.var_names))
    assert record.combination == "merfish_to_rna" and list(record.features) == lacks and len(lacks) == 80
    assert record.datasets == ("scrna",) and record.cells == 200 and (record.k_latent, record.k_inputs) == (12, 6)
    assert record.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert table.latents.shape == (200, 16) and table.inputs.shape == (200, 120) and table.values.shape == (200, 80)


def test_the_same_imputation_through_every_door(trained, tmp_path):
    from inclust_plus.runtime import Predictor

    model, query, root, manifest, _ = trained
    torch_side = model.impute(query)
    onnx_side = Predictor(manifest.parent).impute(query)
    query.write_h5ad(tmp_path / "q.h5ad")
    code = "import sys; from inclust_plus.runtime.cli import main; sys.argv[0] = 'inclust-run'; main()"
    cli = []
    for extra in ([], ["--torchscript"]):  # the ONNX graph and its TorchScript twin, both with the lookup
        run = subprocess.run([sys.executable, "-c", code, "impute", "--onnx", str(manifest.parent), "--input", str(tmp_path / "q.h5ad"),
                              "--output", str(tmp_path / f"o{len(cli)}.h5ad"), "--combination", "merfish_to_rna", "-q", *extra],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        cli.append(ad.read_h5ad(tmp_path / f"o{len(cli)}.h5ad"))
    want = np.asarray(torch_side.layers["inclust_imputed"])
    assert want.shape == (200, 200) and np.isfinite(want).all()
    for got in (onnx_side, *cli):
        assert list(got.var_names) == list(torch_side.var_names)
        np.testing.assert_allclose(np.asarray(got.layers["inclust_imputed"]), want, rtol=1e-5, atol=1e-6)  # float32 rounding


def test_the_read_out_changes_exactly_the_features_the_query_lacks(trained):
    model, query, *_ = trained
    with_readout = model.impute(query)
    decoder_only = InClust(model.module, model.description).impute(query)  # the same weights without the table
    assert decoder_only.uns["inclust"] is not None and InClust(model.module, model.description).description.readout is None
    diff = np.abs(np.asarray(with_readout.layers["inclust_imputed"]) - np.asarray(decoder_only.layers["inclust_imputed"])).max(0)
    lacked = with_readout.var["inclust_imputed"].to_numpy(dtype=bool)
    assert lacked.sum() == 80
    assert (diff[~lacked] == 0).all() and (diff[lacked] > 1e-4).all(), (diff[~lacked].max(), diff[lacked].min())


def test_the_checkpoint_keeps_the_table_as_tensors(trained):
    model, _, root, *_ = trained
    payload = torch.load(root / "model.pt", weights_only=True)
    arrays = payload["neighbours"]
    assert {k: tuple(v.shape) for k, v in arrays.items()} == {"latents": (200, 16), "inputs": (200, 120), "values": (200, 80)}
    assert all(v.dtype == torch.float32 for v in arrays.values())
    raw = json.loads(payload["description_json"])["readout"]
    assert raw["combination"] == "merfish_to_rna" and raw["cells"] == 200 and "readout" not in json.loads(payload["description_json"])["hyperparameters"]
    loaded = InClust.load(root / "model.pt")
    assert loaded.description == model.description
    for k in ("latents", "inputs", "values"):
        np.testing.assert_array_equal(getattr(loaded.neighbours, k), getattr(model.neighbours, k))


def test_a_checkpoint_whose_arrays_contradict_its_record_is_refused(trained, tmp_path):
    _, _, root, *_ = trained
    payload = torch.load(root / "model.pt", weights_only=True)
    payload["neighbours"]["values"] = payload["neighbours"]["values"][:, :5]
    torch.save(payload, tmp_path / "bad.pt")
    assert _error(lambda: read_checkpoint(tmp_path / "bad.pt")) == (
        f"checkpoint {tmp_path / 'bad.pt'}: neighbour array values has shape (200, 5) (or non-finite values), the description says (200, 80); "
        "re-run inclust-train to write the model again")
    del payload["neighbours"]
    torch.save(payload, tmp_path / "bad.pt")
    assert "lacks its arrays" in _error(lambda: read_checkpoint(tmp_path / "bad.pt"))


def test_export_writes_the_lookup_into_every_flavour_but_float16_and_checks_their_parity(trained, tmp_path):
    from inclust_plus.runtime import Predictor

    model, query, root, manifest, report = trained
    entries = {g.name: g for g in read_manifest(manifest.parent).graphs}
    lookup = entries["merfish_to_rna"]
    assert lookup.torchscript_file == "merfish_to_rna.ts" and [(v.input_format, v.precision) for v in lookup.variants] == [("csr", "fp32")]
    assert entries["merfish_to_merfish"].variants  # the other graphs keep their CSR flavours
    assert sorted(p.name for p in manifest.parent.iterdir() if p.name.startswith("merfish_to_rna.")) == [
        "merfish_to_rna.csr.onnx", "merfish_to_rna.onnx", "merfish_to_rna.ts"]
    assert set(report["merfish_to_rna"]) == {"onnxruntime", "torchscript", "csr/fp32"} and max(report["merfish_to_rna"].values()) < 1e-5
    again = export_model(root / "model.pt", tmp_path / "again")  # the same checkpoint gives the same files
    for name in ("manifest.json", "merfish_to_rna.onnx", "merfish_to_rna.ts"):
        assert (again.parent / name).read_bytes() == (manifest.parent / name).read_bytes(), name
    # Folded preprocessing, the torch.export program and float16: the lookup reads the input in the training scale
    # (x.seen), so a graph fed raw values carries it too; float16 flavours are not written for that graph.
    report = {}
    folded = export_model(root / "model.pt", tmp_path / "folded", fold_preprocessing=True, torch_export=True, fp16=True, report=report)
    entry = {g.name: g for g in read_manifest(folded.parent).graphs}["merfish_to_rna"]
    assert entry.folded_preprocessing and entry.torch_export_file == "merfish_to_rna.pt2"
    assert [(v.input_format, v.precision) for v in entry.variants] == [("csr", "fp32")]
    assert set(report["merfish_to_rna"]) == {"onnxruntime", "torchscript", "csr/fp32", "torch.export"}
    want = np.asarray(model.impute(query).layers["inclust_imputed"])
    got = np.asarray(Predictor(folded.parent).impute(query).layers["inclust_imputed"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_inclust_export_no_neighbours_writes_the_decoder_alone(trained, tmp_path):
    """The fast path from a model with the read-out: every twin back, and exactly the decoder's numbers."""
    from inclust_plus.export.cli import main as export_cli
    from inclust_plus.runtime import Predictor

    model, query, root, _, _ = trained
    run = CliRunner().invoke(export_cli, [str(root / "model.pt"), "--out", str(tmp_path / "fast"), "--no-neighbours"])
    assert run.exit_code == 0, run.output
    entry = {g.name: g for g in read_manifest(tmp_path / "fast").graphs}["merfish_to_rna"]
    assert entry.variants and entry.torchscript_file == "merfish_to_rna.ts"
    got = Predictor(tmp_path / "fast").impute(query).layers["inclust_imputed"]
    decoder_only = InClust(model.module, model.description).impute(query).layers["inclust_imputed"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(decoder_only), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stem", ["main_model", "main_mapped"])
def test_checkpoints_written_before_load_without_a_table_and_export_byte_identically(stem, tmp_path):
    module, desc, table = read_checkpoint(DATA / f"{stem}.pt")
    assert table is None and desc.readout is None
    manifest = export_model(DATA / f"{stem}.pt", tmp_path / "e", torchscript=False)
    assert manifest.read_bytes() == (DATA / f"{stem}.manifest.json").read_bytes()


def test_a_mapped_model_keeps_the_read_out(trained, tmp_path):
    """inclust-map / map_query learn new covariate rows only: the reference cells' table stays valid and travels along."""
    model, query, *_ = trained
    mapped = model.map_query(query, name="merfish2", steps=3)
    assert mapped.description.readout == model.description.readout and mapped.neighbours is model.neighbours
    mapped.save(tmp_path / "mapped.pt")
    again = InClust.load(tmp_path / "mapped.pt")
    assert "merfish2" in again.description.covariate.categories and again.description.readout == model.description.readout
    np.testing.assert_array_equal(again.neighbours.values, model.neighbours.values)


def test_inclust_train_writes_the_table_from_a_toml_readout_section(tmp_path):
    task = synthetic_task("imputation", n_cells=200, seed=0)
    for name, obj in task.objects.items():
        obj.write_h5ad(tmp_path / f"{name}.h5ad")
    (tmp_path / "c.toml").write_text(
        'task = "imputation"\n'
        '[[datasets]]\nname = "scrna"\npath = "scrna.h5ad"\nlabel_key = "cell_type"\n'
        '[[datasets]]\nname = "merfish"\npath = "merfish.h5ad"\n'
        '[preprocessing.rna]\nlog1p = true\nscale = "max"\n'
        '[model]\nensemble = 1\nlatent_dim = 4\nencoder_hidden = [16]\ndecoder_hidden = [16]\n'
        '[training]\nepochs = 2\n[views]\nquery = ["merfish"]\n[readout]\nneighbours = true\nk_latent = 7\n')
    result = CliRunner().invoke(train_main, [str(tmp_path / "c.toml"), "--out", str(tmp_path / "m.pt"), "--quiet"])
    assert result.exit_code == 0, result.output
    module, desc, table = read_checkpoint(tmp_path / "m.pt")
    assert (desc.readout.k_latent, desc.readout.k_inputs, desc.readout.cells) == (7, 30, 100) and table.values.shape == (100, 80)
    result = CliRunner().invoke(train_main, [str(tmp_path / "c.toml"), "--out", str(tmp_path / "off.pt"), "--quiet", "--no-neighbours"])
    assert result.exit_code == 0 and read_checkpoint(tmp_path / "off.pt")[1].readout is None
    assert "neighbours" not in torch.load(tmp_path / "off.pt", weights_only=True)


def test_the_export_parity_check_covers_the_lookup(trained):
    """A lookup graph built from another table than the reference's fails export's parity check (the check can fail)."""
    import dataclasses

    from inclust_plus.contract.combinations import select_combinations
    from inclust_plus.contract.plan_builder import IDENTITY
    from inclust_plus.export import onnx_graph
    from inclust_plus.export.folding import fold
    from inclust_plus.export.neighbours_graph import append_neighbours
    from inclust_plus.export.validate import check_parity

    model, *_ = trained
    combo = select_combinations(model.description, ["merfish_to_rna"])[0]
    proto = onnx_graph.build_model(fold(model.module, combo, IDENTITY), combo, IDENTITY, "m", lookup_input=True)
    data = onnx_graph.serialize(append_neighbours(proto, model.neighbours, list(combo.outputs)))
    assert check_parity(model.module, combo, None, data, neighbours=model.neighbours)["onnxruntime"] < 1e-5
    shifted = dataclasses.replace(model.neighbours, values=model.neighbours.values + 0.01)
    with pytest.raises(InclustError, match="exported 'merfish_to_rna' differs from the PyTorch model in onnxruntime"):
        check_parity(model.module, combo, None, data, neighbours=shifted)


def test_the_reference_input_rows_are_preprocessed_as_the_query_graph_preprocesses_its_input(trained):
    """With normalize_total, training normalised a reference cell over all its genes, the query graph over its panel:
    the table's input rows must be in the query's scale (training/readout.py as_query_inputs)."""
    import dataclasses

    from inclust_plus.contract.description import Recipe
    from inclust_plus.contract.plan_builder import build_plan
    from inclust_plus.training.readout import as_query_inputs

    model, *_ = trained
    rng = np.random.default_rng(0)
    scale = tuple(float(v) for v in rng.uniform(2.0, 9.0, 200))
    desc = dataclasses.replace(model.description, preprocessing={"rna": Recipe(1e4, True, scale)})
    raw = np.round(rng.gamma(0.5, 20.0, size=(30, 200)) * (rng.random((30, 200)) > 0.3)).astype(np.float32)
    panel = desc.set_features(desc.combination("merfish_to_rna").inputs)
    trained_scale = build_plan(desc, tuple(range(200))).apply(raw)[:, panel]  # as training preprocessed the reference
    want = build_plan(desc, tuple(panel)).apply(raw[:, panel])  # as the graph preprocesses a cell fed to it
    assert np.abs(trained_scale - want).max() > 0.1  # the two scales differ: the conversion matters
    np.testing.assert_allclose(as_query_inputs(desc, panel, trained_scale), want, rtol=1e-5, atol=1e-5)
    plain = dataclasses.replace(desc, preprocessing={"rna": Recipe(None, True, scale)})  # per-column steps only: unchanged
    assert as_query_inputs(plain, panel, trained_scale) is trained_scale


@pytest.mark.triton
def test_triton_serves_the_read_out_as_every_other_door_imputes(trained, tmp_path):
    """The lookup is plain ONNX with the reference as constants: a real tritonserver runs the exported
    graph and ``inclust-run impute --triton`` gives InClust.impute's numbers."""
    from inclust_plus.runtime.cli import cli
    from inclust_plus.triton.repository import write_triton_repository
    from inclust_plus.triton.server import triton_server
    from inclust_plus.triton.server_env import find_server_env

    try:
        find_server_env()
    except InclustError as err:
        pytest.skip(f"no usable tritonserver: {err.one_line()}")
    model, query, _, manifest, _ = trained
    repo = write_triton_repository(manifest, tmp_path / "repo", max_batch_size=256, preferred_batch_sizes=(64, 256))
    query.write_h5ad(tmp_path / "q.h5ad")
    with triton_server(repo, ready_timeout=180) as server:
        res = CliRunner().invoke(cli, ["impute", "--onnx", str(manifest.parent), "--input", str(tmp_path / "q.h5ad"), "--output",
                                       str(tmp_path / "o.h5ad"), "--combination", "merfish_to_rna", "-q", "--triton", server.grpc_url])
    assert res.exit_code == 0, res.output
    want = np.asarray(model.impute(query).layers["inclust_imputed"])
    got = np.asarray(ad.read_h5ad(tmp_path / "o.h5ad").layers["inclust_imputed"])
    assert model.description.readout is not None and got.shape == want.shape == (200, 200)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
