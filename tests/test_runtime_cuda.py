"""CUDA parity (issue 11), run wherever onnxruntime has a CUDA provider (skipped elsewhere):
strict fp32 on CUDA (TF32 off) equals the CPU within the export parity bound, dense and CSR
flavours alike and end to end through ``inclust-run``; tf32 runs; fp16 stays within its bound."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

ort = pytest.importorskip("onnxruntime")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("depends on the hardware: onnxruntime has no CUDA provider here", allow_module_level=True)  # see conftest
export = pytest.importorskip("inclust_plus.export")
export_toys = pytest.importorskip("export_toys")

from inclust_plus.export.validate import FP16_ATOL, FP16_RTOL  # noqa: E402
from inclust_plus.runtime.backend import OnnxBackend  # noqa: E402
from inclust_plus.runtime.manifest import load_manifest  # noqa: E402
from inclust_plus.runtime.runner import RunOptions, run  # noqa: E402

ATOL, RTOL = 1e-5, 1e-6


def within(got, want, atol=ATOL, rtol=RTOL):
    for k, w in want.items():
        diff = np.abs(got[k].astype(np.float64) - w)
        assert np.all(diff <= atol + rtol * np.abs(w)), (k, float(diff.max()))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    ckpt = export_toys.make_toy_checkpoint(root / "model.pt", seed=5)
    return export.export_model(ckpt, root / "out", fold_preprocessing=True, torchscript=False, fp16=True).parent


@pytest.mark.parametrize("batch", [1, 7, 1024])
def test_cuda_fp32_equals_cpu_dense_and_csr(folder, batch):
    graph = load_manifest(folder).graph("merfish_to_rna")
    rng = np.random.default_rng(batch)
    x = (np.round(rng.gamma(0.5, 30.0, (batch, len(graph.input_features)))) * (rng.random((batch, len(graph.input_features))) < 0.3)).astype(np.float32)
    x[0] = 0.0
    cov = rng.integers(0, 3, batch).astype(np.int64)
    r, c = np.nonzero(x)
    csr = {"values": x[r, c], "indices": c.astype(np.int32), "rows": r.astype(np.int32)}
    cpu = OnnxBackend("cpu").run(graph, x, cov, cov)
    gpu = OnnxBackend("cuda", precision="fp32")
    within(gpu.run(graph, x, cov, cov), cpu)
    within(gpu.run_feeds(graph.variant("csr"), csr, cov, cov), cpu)
    within(OnnxBackend("cuda", precision="tf32").run(graph, x, cov, cov), cpu, 1e-2, 1e-2)
    half = OnnxBackend("cuda", precision="fp16")
    within(half.run(graph.variant("dense", "fp16"), x, cov, cov), cpu, FP16_ATOL, FP16_RTOL)
    within(half.run_feeds(graph.variant("csr", "fp16"), csr, cov, cov), cpu, FP16_ATOL, FP16_RTOL)


def test_cuda_run_auto_is_csr_and_equals_cpu(folder, tmp_path):
    names = [f for m in json.loads((folder / "manifest.json").read_text())["modalities"] for f in m["features"]]
    rng = np.random.default_rng(0)
    raw = (np.round(rng.gamma(0.5, 30.0, (5000, len(names)))) * (rng.random((5000, len(names))) < 0.3)).astype(np.float32)
    ad.AnnData(sp.csr_matrix(raw), obs=pd.DataFrame(index=[f"c{i}" for i in range(5000)]), var=pd.DataFrame(index=names)).write_h5ad(tmp_path / "in.h5ad")
    outs = {}
    for device in ("cpu", "cuda"):
        outs[device] = tmp_path / f"{device}.h5ad"
        run(RunOptions(command="impute", onnx=folder, input=tmp_path / "in.h5ad", output=outs[device], combination="merfish_to_rna",
                       covariate="merfish", device=device, batch_size=512, memory_budget=2_000_000, quiet=True))
    cpu, gpu = ad.read_h5ad(outs["cpu"]), ad.read_h5ad(outs["cuda"])
    assert gpu.uns["inclust"]["input_format"] == "csr" and gpu.uns["inclust"]["provider"] == "CUDAExecutionProvider"
    assert cpu.uns["inclust"]["input_format"] == "dense"
    within({"y": gpu.layers["inclust_imputed"], "latent": gpu.obsm["X_inclust"]}, {"y": cpu.layers["inclust_imputed"].astype(np.float64), "latent": cpu.obsm["X_inclust"].astype(np.float64)})
