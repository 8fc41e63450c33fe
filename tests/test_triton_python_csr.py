"""The Python-backend model.py on a CSR model (issue 11), driven with a stand-in for Triton's
``triton_python_backend_utils``: requests concatenated into one call (each request's ``rows`` shifted
past the cells before it) give what each request alone gives; a bad request fails alone. And the same
model served by the real tritonserver (marker ``triton``, issue 25) answers ragged CSR requests with
the reference Predictor's values."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types

import numpy as np
import pytest

pytest.importorskip("torch")
export = pytest.importorskip("inclust_plus.export")
export_toys = pytest.importorskip("export_toys")
from inclust_plus.triton import model_config, repository  # noqa: E402


class FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array

    def __dlpack__(self, **kw):
        return self.array.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()

    @classmethod
    def from_dlpack(cls, name, array):
        return cls(name, np.from_dlpack(array).copy())


def fake_pb_utils():
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = FakeTensor
    mod.get_input_tensor_by_name = lambda request, name: request.get(name)
    mod.TritonError = lambda message: message
    mod.InferenceResponse = lambda output_tensors, error=None: types.SimpleNamespace(tensors={t.name: t.array for t in output_tensors}, error=error)
    return mod


def test_csr_requests_batched_equal_alone(tmp_path, monkeypatch):
    ckpt = export_toys.make_toy_checkpoint(tmp_path / "model.pt", seed=2)
    manifest = export.export_model(ckpt, tmp_path / "export", torchscript=False, combinations=["merfish_to_rna"])
    repo = repository.write_triton_repository(manifest, tmp_path / "repo", flavour="python")
    folder = repo / "merfish_to_rna_csr_python"
    assert (folder / "1" / "model.onnx").is_file()
    cfg = model_config.parse_model_config((folder / "config.pbtxt").read_text()) if importlib.util.find_spec("tritonclient") else None
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location("csr_model", folder / "1" / "model.py")
    model_py = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_py)
    graph = json.loads(manifest.read_text())["graphs"][0]
    variant = graph["variants"][0]
    config = {"input": [{"name": t["name"]} for t in variant["inputs"]], "output": [{"name": t["name"]} for t in variant["outputs"]],
              "parameters": {"inclust.covariate_categories": {"string_value": json.dumps(["scrna", "merfish", "cite"])}}}
    model = model_py.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(folder), "model_version": "1"})
    rng = np.random.default_rng(0)

    def request(n):
        x = (rng.random((n, len(graph["input_features"]))) * (rng.random((n, len(graph["input_features"]))) < 0.4)).astype(np.float32)
        x[-1] = 0.0
        r, c = np.nonzero(x)
        cov = rng.integers(0, 3, n).astype(np.int64)
        return {"values": FakeTensor("values", x[r, c]), "indices": FakeTensor("indices", c.astype(np.int32)),
                "rows": FakeTensor("rows", r.astype(np.int32)), "covariate": FakeTensor("covariate", cov),
                "target_covariate": FakeTensor("target_covariate", cov)}

    reqs = [request(5), request(1), request(9)]
    bad = {**request(3)}
    bad["rows"] = FakeTensor("rows", np.asarray([0, 7], np.int32))
    bad["values"], bad["indices"] = FakeTensor("values", np.ones(2, np.float32)), FakeTensor("indices", np.zeros(2, np.int32))
    together = model.execute(reqs[:2] + [bad] + reqs[2:])
    assert together[2].error is not None and "rows" in together[2].error
    for alone, joint in zip(reqs, [together[0], together[1], together[3]]):
        single = model.execute([alone])[0]
        assert joint.error is None and single.error is None
        for name, value in single.tensors.items():
            assert joint.tensors[name].shape == value.shape
            np.testing.assert_allclose(joint.tensors[name], value, rtol=0, atol=1e-6)
    if cfg is not None:
        assert cfg.max_batch_size == 0
    shutil.rmtree(repo)


@pytest.mark.triton
def test_real_server_serves_the_csr_model_like_the_predictor(tmp_path):
    """The CSR model served by the real tritonserver (Python backend): CSR requests of ragged sizes, one of them
    with a cell that has no stored value, give what the reference Predictor (local onnxruntime, dense) gives."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from inclust_plus.errors import InclustError
    from inclust_plus.runtime import Predictor
    from inclust_plus.triton.server import triton_server
    from inclust_plus.triton.server_env import find_server_env

    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    try:
        find_server_env()
    except InclustError as err:
        pytest.skip(f"no usable tritonserver: {err.one_line()}")
    ckpt = export_toys.make_toy_checkpoint(tmp_path / "model.pt", seed=2)
    # folded preprocessing: the graphs take raw counts, so Triton and the Predictor are fed the same values
    manifest = export.export_model(ckpt, tmp_path / "export", torchscript=False, combinations=["merfish_to_rna"], fold_preprocessing=True)
    graph = json.loads(manifest.read_text())["graphs"][0]
    repo = repository.write_triton_repository(manifest, tmp_path / "repo", flavour="python")
    cats = ["scrna", "merfish", "cite"]
    rng = np.random.default_rng(3)
    n = 23
    x = (np.round(rng.gamma(0.5, 30.0, (n, len(graph["input_features"])))) * (rng.random((n, len(graph["input_features"]))) < 0.4)).astype(np.float32)
    x[7] = 0.0
    cov = rng.integers(0, 3, n)
    cells = ad.AnnData(sp.csr_matrix(x), obs=pd.DataFrame({"dataset": pd.Categorical([cats[c] for c in cov], categories=cats)},
                                                         index=[f"c{i}" for i in range(n)]), var=pd.DataFrame(index=graph["input_features"]))
    target = cats.index(graph["default_target_covariate"])
    want = Predictor(tmp_path / "export").impute(cells, combination="merfish_to_rna", covariate_key="dataset")
    with triton_server(repo, ready_timeout=180) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            got = {"y": [], "latent": [], "label_probs": []}
            for lo, hi in ((0, 5), (5, 6), (6, 23)):  # ragged requests, one of a single cell
                r, c = np.nonzero(x[lo:hi])
                feeds = {"values": x[lo:hi][r, c], "indices": c.astype(np.int32), "rows": r.astype(np.int32),
                         "covariate": cov[lo:hi].astype(np.int64), "target_covariate": np.full(hi - lo, target, np.int64)}
                inputs = []
                for name, value in feeds.items():
                    t = grpcclient.InferInput(name, list(value.shape), {np.float32: "FP32", np.int32: "INT32", np.int64: "INT64"}[value.dtype.type])
                    t.set_data_from_numpy(value)
                    inputs.append(t)
                result = client.infer("merfish_to_rna_csr_python", inputs)
                for name in got:
                    got[name].append(result.as_numpy(name))
        finally:
            client.close()
    y, latent, probs = (np.concatenate(got[k]) for k in ("y", "latent", "label_probs"))
    assert y.shape == (n, len(graph["output_features"])) and latent.shape == want.obsm["X_inclust"].shape
    np.testing.assert_allclose(y, want.layers["inclust_imputed"], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(latent, want.obsm["X_inclust"], rtol=1e-6, atol=1e-5)
    labels = json.loads(manifest.read_text())["labels"]["categories"]
    assert [labels[i] for i in probs.argmax(axis=1)] == list(want.obs["inclust_label"].astype(str))
    np.testing.assert_allclose(probs.max(axis=1), want.obs["inclust_label_probability"], rtol=1e-6, atol=1e-5)
