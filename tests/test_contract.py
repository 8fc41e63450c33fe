"""The contract (inclust_plus/contract): one preprocessing arithmetic, one manifest writer and reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inclust_plus.contract import ModalityPlan, PreprocessPlan, apply, dumps, read_manifest, write_manifest
from inclust_plus.errors import InclustError
from inclust_plus.training.assembly.preprocessing import Preprocessing, transform
from reference import preprocess_by_hand, recipe_description
from runtime_fixtures import RNA, make_toy_export


def _plan():
    """rna in two runs (columns 0-1 and 4), protein in between (2-3), as a mixed graph's input."""
    return PreprocessPlan((
        ModalityPlan("rna", ((0, 2), (4, 5)), 100.0, True, (2.0, 0.0, 4.0)),
        ModalityPlan("protein", ((2, 4),), None, True, None),
    ))


def test_apply_follows_the_documented_order_with_its_guards():
    x = np.array([[1, 3, 5, 0, 4], [0, 0, 2, 7, 0]], np.float32)
    got = apply(x.copy(), _plan())
    rna = np.array([1, 3, 4.0])
    want0 = np.log1p(rna / rna.sum() * 100) / np.array([2.0, 1.0, 4.0])  # a scale of 0 divides by 1
    np.testing.assert_allclose(got[0, [0, 1, 4]], want0, rtol=1e-6)
    np.testing.assert_allclose(got[:, 2:4], np.log1p(x[:, 2:4]), rtol=1e-6)
    assert (got[1, [0, 1, 4]] == 0).all()  # an empty library stays zero, never NaN
    plan = _plan()
    assert plan.runs == ((0, 2, 0), (2, 4, 1), (4, 5, 0)) and plan.n_inputs == 5 and plan.has_ops
    np.testing.assert_array_equal(plan.scale, [2.0, 1.0, 1.0, 1.0, 4.0])


def test_training_export_and_runtime_share_the_arithmetic():
    rng = np.random.default_rng(0)
    x = (rng.gamma(1.0, 3.0, (50, 6)) * (rng.random((50, 6)) < 0.6)).astype(np.float32)
    x[7] = 0
    scale = rng.uniform(1, 3, 6).astype(np.float32)
    plan = PreprocessPlan.single(6, "rna", 1e4, True, scale)
    runtime = apply(x.copy(), plan)
    np.testing.assert_array_equal(transform(x, Preprocessing(1e4, True), scale), runtime)  # training's numpy path
    np.testing.assert_array_equal(plan.apply(x), runtime)  # export's parity reference
    desc = recipe_description({"rna": list("abcdef")}, {"rna": {"normalize_total": 1e4, "log1p": True, "scale": scale.tolist()}})
    np.testing.assert_allclose(runtime, preprocess_by_hand(x, desc, list(range(6))), rtol=2e-6)  # and the formula


def test_the_toy_manifest_round_trips(tmp_path):
    pre = {"rna": {"normalize_total": 10.0, "log1p": True, "scale": [float(i + 1) for i in range(len(RNA))]}}
    model = make_toy_export(tmp_path / "m", preprocessing=pre, torchscript=False)
    m = read_manifest(model.manifest)
    assert dumps(m) == model.manifest.read_text()  # the writer's text, byte for byte
    copy = write_manifest(m, tmp_path / "m" / "copy.json")
    assert read_manifest(copy) == m and copy.read_bytes() == model.manifest.read_bytes()
    raw = json.loads(model.manifest.read_text())
    assert list(raw) == sorted(raw) and model.manifest.read_text().endswith("}\n")
    g = m.graph("rna_protein_embed")
    assert [(p.name, p.runs) for p in g.preprocessing_plan.groups] == [("rna", ((0, 10),)), ("protein", ((10, 14),))]
    assert g.path == model.folder / "rna_protein_embed.onnx" and g.input_names == ("x", "covariate")


def test_a_manifest_of_a_newer_format_asks_for_an_upgrade(tmp_path):
    model = make_toy_export(tmp_path / "m")
    raw = json.loads(model.manifest.read_text())
    raw["format_version"] = 99
    model.manifest.write_text(json.dumps(raw))
    with pytest.raises(InclustError, match="format_version 99, this runtime reads up to 2"):
        read_manifest(model.folder)
