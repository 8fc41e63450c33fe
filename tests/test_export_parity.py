"""Parity: every exported graph (onnxruntime and TorchScript) equals the PyTorch model within 1e-5.

The reference is computed here from the checkpoint as docs/ARCHITECTURE.md defines it
(``module.predict`` on zero-filled full-width x with the input mask), independently of the
exporter's own parity check. With --fold-preprocessing the graphs get raw values and the
reference gets values preprocessed by hand in this file.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export_toys import make_toy_checkpoint
from reference import graph_reference, preprocess_by_hand
from inclust_plus.export import export_model
from inclust_plus.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load is deprecated in torch >= 2.9

ATOL = 1e-5
BATCHES = (1, 7, 1024)
VARIANTS = {
    "relu-sigmoid": {},
    "tanh-identity": {"activation": "tanh", "output_activation": "identity", "encoder_hidden": (10,), "latent_dim": 3},
    "sigmoid-relu-no-hidden": {"activation": "sigmoid", "output_activation": "relu", "encoder_hidden": (), "decoder_hidden": ()},
    "gelu-sigmoid": {"activation": "gelu"},
    "l2-input": {"input_normalization": "l2"},
    "ensemble-3": {"members": 3},  # three networks merged block-diagonally: folds like any other
}


@pytest.fixture(scope="module", params=[(v, f) for v in VARIANTS for f in (False, True)], ids=lambda p: f"{p[0]}-{'raw' if p[1] else 'pre'}")
def exported(request, tmp_path_factory):
    variant, fold = request.param
    root = tmp_path_factory.mktemp(variant)
    ckpt = make_toy_checkpoint(root / "model.pt", seed=3, **VARIANTS[variant])
    manifest = export_model(ckpt, root / "out", fold_preprocessing=fold)
    module, desc = load_checkpoint(ckpt)
    return json.loads(manifest.read_text()), manifest.parent, module, desc, fold


def make_feeds(graph: dict, n_cov: int, batch: int, raw: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    n = graph["inputs"][0]["shape"][1]
    x = np.round(rng.gamma(0.5, 30.0, (batch, n))) if raw else rng.random((batch, n))
    if raw and batch > 2:
        x[1] = 0.0
    feeds = {"x": x.astype(np.float32)}
    for spec in graph["inputs"][1:]:
        feeds[spec["name"]] = rng.integers(0, n_cov, batch).astype(np.int64)
    return feeds


def torch_reference(module, desc: dict, graph: dict, feeds: dict, raw: bool, table=None) -> dict[str, np.ndarray]:
    """The tests' one reference predictor (tests/reference.py) on a batch of graph feeds; ``table`` (a model's
    NeighbourTable): the read-out's graph has ``y`` blended as the model does (training/torch_backend.py), and
    NaN where a row's k-th and (k+1)-th neighbours tie within float32 rounding (either is right)."""
    want = graph_reference(module, desc, graph, feeds["x"], feeds["covariate"], feeds.get("target_covariate"), raw=raw)
    if table is None or desc.readout is None or graph["name"] != desc.readout.combination:
        return want
    from inclust_plus.training.network import correction
    from inclust_plus.training.torch_backend import blend_neighbours

    inputs = [desc.feature_names.index(f) for f in graph["input_features"]]
    outputs = [desc.feature_names.index(f) for f in graph["output_features"]]
    x = (preprocess_by_hand(feeds["x"], desc, inputs) if raw else feeds["x"]).astype(np.float32)
    want = blend_neighbours(module, table, want, inputs, outputs, x, feeds["covariate"])
    want["y"][table.tied_rows(want["latent"], correction.corrected_rows(module, x, inputs, feeds["covariate"]))] = np.nan
    return want


def test_every_graph_matches_pytorch_at_every_batch_size(exported):
    manifest, folder, module, desc, fold = exported
    assert len(manifest["graphs"]) == len(desc.combinations)
    n_cov = len(manifest["covariate"]["categories"])
    worst = {"onnxruntime": 0.0, "torchscript": 0.0}
    for graph in manifest["graphs"]:
        assert graph["folded_preprocessing"] is fold
        sess = ort.InferenceSession(str(folder / graph["file"]), providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(str(folder / graph["torchscript"]))
        names = [o["name"] for o in graph["outputs"]]
        for batch in BATCHES:
            feeds = make_feeds(graph, n_cov, batch, raw=fold)
            want = torch_reference(module, desc, graph, feeds, raw=fold)
            got_ort = dict(zip(names, sess.run(names, feeds)))
            with torch.no_grad():
                got_ts = dict(zip(names, (t.numpy() for t in scripted(*(torch.from_numpy(feeds[i["name"]]) for i in graph["inputs"])))))
            for runtime, got in (("onnxruntime", got_ort), ("torchscript", got_ts)):
                for o in graph["outputs"]:
                    g, w = got[o["name"]], want[o["name"]]
                    assert g.shape == w.shape == (batch, o["shape"][1])
                    assert np.isfinite(g).all()
                    diff = float(np.abs(g.astype(np.float64) - w).max())
                    assert diff <= ATOL, (graph["name"], runtime, o["name"], batch, diff)
                    worst[runtime] = max(worst[runtime], diff)
    print(f"worst max|diff|: {worst}")


def test_label_probs_are_distributions(exported):
    manifest, folder, module, desc, fold = exported
    graph = manifest["graphs"][0]
    sess = ort.InferenceSession(str(folder / graph["file"]), providers=["CPUExecutionProvider"])
    feeds = make_feeds(graph, 3, 64, raw=fold)
    probs = dict(zip([o["name"] for o in graph["outputs"]], sess.run(None, feeds)))["label_probs"]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


def test_hand_preprocessing_matches_the_exporters_plan(tmp_path):
    """The exporter's own reference (used by its built-in check) agrees with the hand-written one."""
    from inclust_plus.contract.combinations import all_combinations
    from inclust_plus.contract.plan_builder import build_plan

    ckpt = make_toy_checkpoint(tmp_path / "model.pt")
    _, desc = load_checkpoint(ckpt)
    rng = np.random.default_rng(0)
    for combo in all_combinations(desc):
        raw = np.round(rng.gamma(0.5, 30.0, (50, len(combo.inputs)))).astype(np.float32)
        raw[0] = 0
        np.testing.assert_allclose(build_plan(desc, combo.inputs).apply(raw), preprocess_by_hand(raw, desc, list(combo.inputs)), rtol=1e-6, atol=1e-7)
