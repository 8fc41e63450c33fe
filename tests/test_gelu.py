"""The GELU activation end to end (issue 23, item 6): a model with ``activation = "gelu"`` trains (with
autograd: the hand-written step is not verified on it), exports to ONNX (composed from Erf, opset 17),
TorchScript and torch.export programs that equal the PyTorch model, and the torch-free runtime gives
what the PyTorch model gives."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from inclust_plus.errors import InclustError
from inclust_plus.export import export_model
from inclust_plus.contract.combinations import select_combinations
from inclust_plus.export.validate import random_feeds, reference, run_onnx, within_tolerance
from inclust_plus.runtime.predictor import Predictor
from inclust_plus.training.fitting import trainer
from inclust_plus.training.checkpoint import load_checkpoint
from inclust_plus.training.model import InClust
from evaluation.synthetic import synthetic_task

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load is deprecated in torch >= 2.9


def _task(**training):
    return synthetic_task("imputation", n_cells=300, seed=0, overrides={
        "model": {"ensemble": 1, "activation": "gelu"}, "training": {"epochs": 4, "workers": 1, "threads": 1, **training},
        "readout": {"neighbours": False}})  # the activation's graphs, without the read-out's lookup (tests/test_readout.py)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("gelu")
    st = _task()
    with pytest.MonkeyPatch.context() as mp:
        def refuse(*a, **k):
            raise AssertionError("the hand-written step is not verified on GELU")

        mp.setattr(trainer, "ManualStep", refuse)
        model, _, result = InClust.fit(st.config, st.objects, progress=False)
    ckpt = model.save(root / "model.pt")
    manifest = export_model(ckpt, root / "export", torch_export=True, fp16=True)
    return st, model, result, ckpt, json.loads(manifest.read_text()), manifest.parent


def test_gelu_trains_with_autograd(exported):
    _, model, result, _, _, _ = exported
    assert isinstance(model.module.encoder[1], torch.nn.GELU) and model.module.encoder[1].approximate == "none"
    total = result.history["total"]
    assert np.isfinite(total).all() and total[-1] < 0.95 * total[0]
    with pytest.raises(InclustError, match="not verified for model.activation = 'gelu'"):
        InClust.fit(_task(fast_step="on").config, _task().objects, progress=False)


def test_every_export_of_a_gelu_model_equals_pytorch(exported):
    _, _, _, ckpt, manifest, folder = exported
    module, desc = load_checkpoint(ckpt)
    combos = {c.name: c for c in select_combinations(desc, None)}
    assert manifest["graphs"]
    for entry in manifest["graphs"]:
        graph = onnx.load(folder / entry["file"])
        assert graph.opset_import[0].version == 17 and "Erf" in {n.op_type for n in graph.graph.node}
        combo = combos[entry["name"]]
        scripted = torch.jit.load(str(folder / entry["torchscript"]))
        program = torch.export.load(str(folder / entry["torch_export"])).module()
        onnx_bytes = (folder / entry["file"]).read_bytes()
        for batch in (1, 7, 130):
            feeds = random_feeds(combo, module.config.n_covariates, batch, seed=batch)
            want = reference(module, combo, feeds)
            args = [torch.from_numpy(feeds[t.name]) for t in combo.spec.inputs]
            with torch.no_grad():
                got_ts = {t.name: o.numpy() for t, o in zip(combo.spec.outputs, scripted(*args))}
                got_pt2 = {t.name: o.numpy() for t, o in zip(combo.spec.outputs, program(*args))}
            for door, got in (("onnx", run_onnx(onnx_bytes, feeds)), ("torchscript", got_ts), ("torch.export", got_pt2)):
                assert within_tolerance(got, want), (entry["name"], door, batch)
            # the float16 twin runs the composed GELU in float16
            half = run_onnx((folder / f"{entry['name']}.fp16.onnx").read_bytes(), feeds)
            assert within_tolerance(half, want, atol=2e-2, rtol=2e-2), (entry["name"], "fp16", batch)


def test_the_runtime_gives_what_pytorch_gives(exported):
    st, model, _, _, _, folder = exported
    query = st.objects[st.config.datasets[1].name]
    got, want = Predictor(folder).impute(query), model.impute(query)
    assert list(got.var_names) == list(want.var_names)
    assert np.abs(np.asarray(got.layers["inclust_imputed"]) - np.asarray(want.layers["inclust_imputed"])).max() <= 1e-5
    assert np.abs(got.obsm["X_inclust"] - want.obsm["X_inclust"]).max() <= 1e-5


@pytest.mark.triton
def test_triton_serves_the_gelu_graphs_as_onnxruntime_runs_them(exported, tmp_path):
    """Triton runs the same ONNX graphs (Erf included) in its own onnxruntime: the same outputs."""
    from inclust_plus.triton.client import TritonBackend
    from inclust_plus.triton.repository import write_triton_repository
    from inclust_plus.triton.server import triton_server
    from inclust_plus.triton.server_env import find_server_env

    try:
        find_server_env()
    except InclustError as err:
        pytest.skip(f"no usable tritonserver: {err.one_line()}")
    _, _, _, ckpt, manifest, folder = exported
    module, desc = load_checkpoint(ckpt)
    combos = {c.name: c for c in select_combinations(desc, None)}
    repo = write_triton_repository(folder / "manifest.json", tmp_path / "repo", max_batch_size=256, preferred_batch_sizes=(64, 256))
    with triton_server(repo, ready_timeout=180) as server:
        for entry in manifest["graphs"]:
            feeds = random_feeds(combos[entry["name"]], module.config.n_covariates, 300, seed=1)
            backend = TritonBackend(server.grpc_url, protocol="grpc", concurrency=2, request_rows=128)
            try:
                got = backend.infer(entry["name"] + "_python", feeds)
            finally:
                backend.close()
            want = run_onnx((folder / entry["file"]).read_bytes(), feeds)
            assert sorted(got) == sorted(want)
            for k in want:
                assert np.abs(got[k] - want[k]).max() <= 1e-5, (entry["name"], k)
