"""The neighbour read-out appended to an exported graph (export/neighbours_graph.py, issue 24) equals the
PyTorch model's decode blended by training/neighbours.py, in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export_toys import make_toy_checkpoint
from inclust_plus.errors import InclustError
from inclust_plus.contract.combinations import select_combinations
from inclust_plus.contract.plan_builder import IDENTITY
from inclust_plus.export import onnx_graph
from inclust_plus.export.folding import fold
from inclust_plus.export.neighbours_graph import append_neighbours
from inclust_plus.training.checkpoint import load_checkpoint
from inclust_plus.training.model import InClust
from inclust_plus.training.neighbours import build_table

HELD = [1, 4, 9]  # rna genes outside the toy's merfish panel (export_toys.MERFISH)


@pytest.fixture(scope="module", params=[1, 2], ids=["one network", "ensemble of 2"])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    ckpt = make_toy_checkpoint(root / "model.pt", seed=3, preprocessing=False, members=request.param)
    module, desc = load_checkpoint(ckpt)
    combo = select_combinations(desc, ["merfish_to_rna"])[0]  # the graph export writes, naming the input its encoder reads
    graph = onnx_graph.build_model(fold(module, combo, IDENTITY), combo, IDENTITY, desc.name, lookup_input=True)
    return InClust(module, desc), graph


def _run(model: onnx.ModelProto, x: np.ndarray, cov: int, tgt: int) -> dict:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    kinds = {i.name: i.type for i in sess.get_inputs()}
    feeds = {"x": x}
    for name, value in (("covariate", cov), ("target_covariate", tgt)):
        dtype = np.int32 if "int32" in kinds[name] else np.int64
        feeds[name] = np.full(len(x), value, dtype=dtype)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize("weights", [(0.4, 0.35, 0.25), (0.5, 0.5, 0.0)])
def test_appended_lookup_matches_the_blend_of_the_pytorch_model(exported, weights):
    model, graph = exported
    rng = np.random.default_rng(0)
    x_ref = rng.random((300, 6), dtype=np.float32)
    values = rng.random((300, len(HELD)), dtype=np.float32)
    table = build_table(model, x_ref, values, "merfish", "scrna", HELD, weights=weights, k_latent=20, k_inputs=10)
    appended = append_neighbours(graph, table, list(range(12)))
    x_q = rng.random((64, 6), dtype=np.float32)
    y, z, probs = model.predict(x_q, "merfish", "merfish", target_covariate="scrna")
    want = table.impute(z, y, x_q)[:, :12]
    cats = model.description.covariate.categories
    got = _run(appended, x_q, cats.index("merfish"), cats.index("scrna"))
    before = _run(graph, x_q, cats.index("merfish"), cats.index("scrna"))
    np.testing.assert_allclose(got["y"], want, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got["latent"], z, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got["label_probs"], probs, atol=2e-5)
    untouched = [c for c in range(12) if c not in HELD]
    np.testing.assert_array_equal(got["y"][:, untouched], before["y"][:, untouched])
    assert np.abs(got["y"][:, HELD] - before["y"][:, HELD]).max() > 1e-2  # the blend changed the table's columns


def test_a_feature_the_graph_does_not_output_is_refused(exported):
    model, graph = exported
    rng = np.random.default_rng(1)
    table = build_table(model, rng.random((50, 6), dtype=np.float32), rng.random((50, 1), dtype=np.float32), "merfish", "scrna", [13])
    with pytest.raises(InclustError, match="does not output"):
        append_neighbours(graph, table, list(range(12)))
