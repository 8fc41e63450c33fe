"""What is inside the exported files: folded weights, no masks, deterministic bytes, the manifest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export_toys import COMBINATIONS, make_toy_checkpoint, toy_module
from inclust_plus import MANIFEST_FORMAT_VERSION
from inclust_plus.contract import dumps, read_manifest, write_manifest
from inclust_plus.export import export_model
from inclust_plus.contract.combinations import all_combinations
from inclust_plus.export.folding import fold
from inclust_plus.export.onnx_graph import build_model, serialize
from inclust_plus.contract.plan_builder import IDENTITY
from inclust_plus.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    ckpt = make_toy_checkpoint(root / "model.pt", seed=1)
    manifest = export_model(ckpt, root / "out")
    folded = export_model(ckpt, root / "raw", fold_preprocessing=True)
    module, desc = load_checkpoint(ckpt)
    return ckpt, manifest, folded, module, desc


def _graphs(manifest: Path):
    for entry in json.loads(manifest.read_text())["graphs"]:
        yield entry, onnx.load(str(manifest.parent / entry["file"]))


def _gemm_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == "Gemm"]


def test_first_and_last_weights_have_the_combinations_feature_counts(toy):
    _, manifest, _, _, _ = toy
    for entry, model in _graphs(manifest):
        weights = _gemm_weights(model)
        n_in, n_out = len(entry["input_features"]), len(entry["output_features"])
        assert weights[0].shape == (16, n_in)
        if entry["kind"] == "impute":
            assert weights[-1].shape == (n_out, 16)
        else:  # embed: encoder (2 layers), mean head, classifier; no decoder
            assert len(weights) == 4 and weights[-1].shape == (3, 4)


def test_folded_weights_are_exact_slices_of_the_module(toy):
    _, manifest, _, module, desc = toy
    combos = {c.name: c for c in all_combinations(desc)}
    w_in = module.encoder[0].weight.detach().numpy()
    w_out, b_out = module.output.weight.detach().numpy(), module.output.bias.detach().numpy()
    for entry, model in _graphs(manifest):
        c = combos[entry["name"]]
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        np.testing.assert_array_equal(inits["encoder.0.weight"], w_in[:, list(c.inputs)])
        if c.kind == "impute":
            np.testing.assert_array_equal(inits["output.weight"], w_out[list(c.outputs)])
            np.testing.assert_array_equal(inits["output.bias"], b_out[list(c.outputs)])


def test_no_mask_no_mul_no_unused_initializer_no_log_var(toy):
    _, manifest, folded, _, _ = toy
    for path, allow_data_mul in ((manifest, False), (folded, True)):
        for entry, model in _graphs(path):
            inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
            used = {name for n in model.graph.node for name in n.input}
            assert set(inits) <= used, set(inits) - used
            assert not any(k.startswith(("z_log_var", "prior_means")) for k in inits)
            for n in model.graph.node:
                if n.op_type == "Mul":
                    # only preprocessing's per-cell factor (computed from x) may multiply, never a constant
                    assert allow_data_mul and not set(n.input) & set(inits), (entry["name"], n.input)
            # no 0/1 constant as wide as the model's features (a mask) anywhere
            for name, arr in inits.items():
                assert not (arr.ndim == 1 and arr.size >= 5 and np.isin(arr, (0, 1)).all()), name
            if entry["kind"] == "embed":
                assert [i.name for i in model.graph.input] == ["x", "covariate"]
                assert [o.name for o in model.graph.output] == ["latent", "label_probs"]
                assert not any(k.startswith(("decoder", "output")) for k in inits)
            else:
                assert [i.name for i in model.graph.input] == ["x", "covariate", "target_covariate"]
                assert [o.name for o in model.graph.output] == ["y", "latent", "label_probs"]


def test_fold_preprocessing_divides_first_weight_by_the_scale(toy):
    _, _, folded, module, desc = toy
    w_in = module.encoder[0].weight.detach().numpy().astype(np.float64)
    scale = np.asarray(list(desc.preprocessing["rna"].scale) + [1.0] * 5)
    combos = {c.name: c for c in all_combinations(desc)}
    for entry, model in _graphs(folded):
        cols = list(combos[entry["name"]].inputs)
        got = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}["encoder.0.weight"]
        np.testing.assert_allclose(got, w_in[:, cols] / scale[cols], rtol=1e-6)
        assert entry["folded_preprocessing"] is True


def test_graphs_pass_checker_and_strict_shape_inference_with_dynamic_batch(toy):
    _, manifest, folded, _, _ = toy
    for path in (manifest, folded):
        for entry, model in _graphs(path):
            assert model.opset_import[0].version == entry["opset"] == 17
            onnx.checker.check_model(model, full_check=True)
            inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
            for out, spec in zip(inferred.graph.output, entry["outputs"]):
                dims = out.type.tensor_type.shape.dim
                assert [dims[0].dim_param, dims[1].dim_value] == spec["shape"]


def test_folded_file_is_smaller_than_the_unfolded_model(toy):
    _, manifest, _, module, desc = toy
    n = module.config.n_features
    sizes = {}
    for c in all_combinations(desc):
        full = dataclasses.replace(c, kind="impute", inputs=tuple(range(n)), outputs=tuple(range(n)))
        unfolded = len(serialize(build_model(fold(module, full, IDENTITY), full, IDENTITY, "toy")))
        folded = (manifest.parent / f"{c.name}.onnx").stat().st_size
        sizes[c.name] = (folded, unfolded)
        if len(c.inputs) < n or len(c.outputs) < n:
            assert folded < unfolded, (c.name, folded, unfolded)
        else:
            assert folded == unfolded
    print(sizes)


def test_manifest_follows_the_architecture_contract(toy):
    ckpt, manifest_path, _, module, desc = toy
    m = json.loads(manifest_path.read_text())
    assert set(m) == {"format_version", "exporter_version", "model", "covariate", "labels", "modalities", "preprocessing", "graphs"}
    assert m["modalities"] == desc.to_dict()["schema"]["modalities"]  # the description JSON, as the checkpoint holds it
    assert m["format_version"] == MANIFEST_FORMAT_VERSION == 2 and m["exporter_version"] == "0.1.0"
    assert m["model"] == {"name": "toy", "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "latent_dim": 4}
    assert m["covariate"] == {"keys": ["dataset"], "categories": ["scrna", "merfish", "cite"], "join": "|"}
    assert m["labels"] == {"key": "cell_type", "categories": ["B", "T", "NK"]}
    assert m["preprocessing"] == desc.to_dict()["preprocessing"]
    assert [g["name"] for g in m["graphs"]] == [c["name"] for c in COMBINATIONS]
    keys = {"name", "kind", "file", "sha256", "opset", "torchscript", "torchscript_sha256", "folded_preprocessing", "input_modalities",
            "output_modalities", "input_features", "output_features", "default_target_covariate", "default_covariate", "inputs", "outputs",
            "input_format", "precision", "variants", "preprocessing_plan"}
    by_name = {g["name"]: g for g in m["graphs"]}
    for g in m["graphs"]:
        assert set(g) == keys
        assert hashlib.sha256((manifest_path.parent / g["file"]).read_bytes()).hexdigest() == g["sha256"]
        assert hashlib.sha256((manifest_path.parent / g["torchscript"]).read_bytes()).hexdigest() == g["torchscript_sha256"]
        assert (g["input_format"], g["precision"]) == ("dense", "fp32")
        assert [(v["input_format"], v["precision"], v["file"]) for v in g["variants"]] == [("csr", "fp32", f"{g['name']}.csr.onnx")]
        assert hashlib.sha256((manifest_path.parent / g["variants"][0]["file"]).read_bytes()).hexdigest() == g["variants"][0]["sha256"]
        assert [i["name"] for i in g["variants"][0]["inputs"]][:3] == ["values", "indices", "rows"]
        assert g["variants"][0]["inputs"][0] == {"name": "values", "dtype": "float32", "shape": ["nnz"]}
        assert g["variants"][0]["outputs"] == g["outputs"]
    g = by_name["merfish_to_rna"]
    assert g["kind"] == "impute" and g["default_target_covariate"] == "scrna"
    assert g["input_features"] == ["gene000", "gene002", "gene003", "gene005", "gene007", "gene008"]
    assert g["output_features"] == [f"gene{i:03d}" for i in range(12)]
    assert g["input_modalities"] == ["rna"] and g["output_modalities"] == ["rna"]
    assert g["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", 6]},
        {"name": "covariate", "dtype": "int64", "shape": ["batch"]},
        {"name": "target_covariate", "dtype": "int64", "shape": ["batch"]},
    ]
    assert g["outputs"] == [
        {"name": "y", "dtype": "float32", "shape": ["batch", 12]},
        {"name": "latent", "dtype": "float32", "shape": ["batch", 4]},
        {"name": "label_probs", "dtype": "float32", "shape": ["batch", 3]},
    ]
    g = by_name["mixed_to_merfish"]
    assert g["input_features"] == ["gene001", "prot000", "prot001", "gene004", "gene000", "prot002"]
    assert g["input_modalities"] == ["rna", "protein"]
    rna_scale = desc.preprocessing["rna"].scale
    assert g["preprocessing_plan"] == [  # each input column's modality and that modality's steps, restricted to the graph
        {"modality": "rna", "runs": [[0, 1], [3, 5]], "normalize_total": 1e4, "log1p": True, "scale": [rna_scale[1], rna_scale[4], rna_scale[0]]},
        {"modality": "protein", "runs": [[1, 3], [5, 6]], "normalize_total": None, "log1p": True, "scale": None},
    ]
    g = by_name["merfish_embed"]
    assert g["kind"] == "embed" and g["output_features"] == [] and g["output_modalities"] == []
    assert g["default_target_covariate"] is None and [o["name"] for o in g["outputs"]] == ["latent", "label_probs"]


def test_the_manifest_round_trips_through_the_contract(toy, tmp_path):
    """read(write(m)) == m, and the reader's manifest written again is the exporter's file byte for byte."""
    _, manifest_path, folded, _, _ = toy
    for path in (manifest_path, folded):
        m = read_manifest(path)
        assert dumps(m) == path.read_text()
        again = write_manifest(m, tmp_path / f"{path.parent.name}.json")
        assert read_manifest(again) == m and again.read_bytes() == path.read_bytes()
    assert read_manifest(folded).graphs[0].folded_preprocessing and read_manifest(folded).graphs[0].runtime_plan.groups == ()


def test_exporting_twice_gives_identical_bytes_even_in_another_process(toy, tmp_path):
    ckpt, manifest, folded, _, _ = toy
    again = export_model(ckpt, tmp_path / "again")
    # A fresh interpreter with another hash seed: set iteration order must not leak into files.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    code = f"from inclust_plus.export import export_model; export_model({str(ckpt)!r}, {str(tmp_path / 'proc')!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    files = sorted(p.name for p in manifest.parent.iterdir())
    assert any(f.endswith(".ts") for f in files) and len(files) == 3 * len(COMBINATIONS) + 1  # dense .onnx, .csr.onnx, .ts
    for other in (again.parent, tmp_path / "proc"):
        assert sorted(p.name for p in other.iterdir()) == files
        for f in files:
            assert (manifest.parent / f).read_bytes() == (other / f).read_bytes(), f


def test_torchscript_bytes_do_not_depend_on_what_the_process_scripted_before(tmp_path):
    """TorchScript named a class scripted again with another structure ``___torch_mangle_<n>``, n
    counting since the process started: a model exported after an ensemble (whose layers are grouped)
    got other .ts bytes than in a fresh process. Both runs are fresh processes, so this holds
    whatever the test session scripted before."""
    single = make_toy_checkpoint(tmp_path / "single.pt", seed=2)
    ensemble = make_toy_checkpoint(tmp_path / "ensemble.pt", seed=2, members=3)
    code = ("import sys; from inclust_plus.export import export_model\n"
            "for ckpt, out in zip(sys.argv[1::2], sys.argv[2::2]): export_model(ckpt, out, combinations=['merfish_to_rna'])")
    subprocess.run([sys.executable, "-c", code, str(ensemble), str(tmp_path / "e"), str(single), str(tmp_path / "after")], check=True)
    subprocess.run([sys.executable, "-c", code, str(single), str(tmp_path / "alone")], check=True)
    assert (tmp_path / "after" / "merfish_to_rna.ts").read_bytes() == (tmp_path / "alone" / "merfish_to_rna.ts").read_bytes()
    assert (tmp_path / "after" / "manifest.json").read_bytes() == (tmp_path / "alone" / "manifest.json").read_bytes()


def test_selected_combinations_and_no_torchscript(toy, tmp_path):
    ckpt = toy[0]
    manifest = export_model(ckpt, tmp_path / "sel", combinations=["rna_protein_embed", "merfish_to_rna"], torchscript=False)
    m = json.loads(manifest.read_text())
    assert [g["name"] for g in m["graphs"]] == ["rna_protein_embed", "merfish_to_rna"]
    assert all(g["torchscript"] is None for g in m["graphs"])
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.json", "merfish_to_rna.csr.onnx", "merfish_to_rna.onnx",
                                                               "rna_protein_embed.csr.onnx", "rna_protein_embed.onnx"]
    # the graph bytes do not depend on which other graphs were exported
    assert (manifest.parent / "merfish_to_rna.onnx").read_bytes() == (toy[1].parent / "merfish_to_rna.onnx").read_bytes()


def test_ensemble_graph_stores_only_the_diagonal_blocks(tmp_path):
    # 3 members: every layer after the first is grouped, so no block-diagonal zero reaches the graph.
    module = toy_module(seed=2, members=3)
    combo = next(c for c in all_combinations(load_checkpoint(make_toy_checkpoint(tmp_path / "m.pt", seed=2, members=3))[1]) if c.name == "merfish_to_rna")
    weights = fold(module, combo, IDENTITY)
    assert [layer.groups for layer in weights.encoder] == [1, 3, 3] and all(layer.groups == 3 for layer in weights.decoder)
    assert weights.decoder[-1].weight.shape == (3, len(combo.outputs), 16) and weights.n_outputs == len(combo.outputs)
    graph = build_model(weights, combo, IDENTITY, "toy")
    n_weights = sum(int(np.prod(t.dims)) for t in graph.graph.initializer)
    # the same layers as dense block-diagonal matrices: 3x the weights of every grouped layer
    dense = sum(layer.weight.size * (layer.groups if layer.groups > 1 else 1) for layer in (*weights.encoder, *weights.decoder))
    assert n_weights < dense
