"""Issue 11 runtime: CSR graphs fed CSR chunks give the dense path's output values; precision and
format choices fail with one-line errors; IO binding writes into the caller's buffers; --workers N
keeps memory within one budget (peak memory measured, issue 25)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

torch = pytest.importorskip("torch")
export = pytest.importorskip("inclust_plus.export")
export_toys = pytest.importorskip("export_toys")

from inclust_plus.runtime.backend import OnnxBackend  # noqa: E402
from inclust_plus.runtime.cli import cli  # noqa: E402
from inclust_plus.runtime.manifest import load_manifest  # noqa: E402
from inclust_plus.runtime.pinned import HostRegistry, host_registry  # noqa: E402
from inclust_plus.runtime.runner import RunOptions, run  # noqa: E402
from runtime_fixtures import make_toy_export  # noqa: E402

N = 203


def invoke(*args, code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args] + ["--quiet"], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module", params=[False, True], ids=["runtime-preprocessing", "folded-preprocessing"])
def setup(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("csr")
    ckpt = export_toys.make_toy_checkpoint(root / "model.pt", seed=5)
    manifest = export.export_model(ckpt, root / "out", fold_preprocessing=request.param, torchscript=False)
    names = [f for m in json.loads(manifest.read_text())["modalities"] for f in m["features"]]
    rng = np.random.default_rng(0)
    raw = np.round(rng.gamma(0.5, 30.0, (N, len(names)))) * (rng.random((N, len(names))) < 0.3)
    raw[[3, 100, 202]] = 0.0  # cells with no stored value, one of them the last
    cats = ["scrna", "merfish", "cite"]
    obs = pd.DataFrame({"dataset": pd.Categorical([cats[i] for i in rng.integers(0, 3, N)], categories=cats)}, index=[f"c{i}" for i in range(N)])
    order = rng.permutation(len(names))
    var = pd.DataFrame(index=[names[i] for i in order])
    ad.AnnData(sp.csr_matrix(raw[:, order].astype(np.float32)), obs=obs, var=var).write_h5ad(root / "csr.h5ad")
    ad.AnnData(raw[:, order].astype(np.float32), obs=obs, var=var).write_h5ad(root / "dense.h5ad")
    return manifest.parent, root


def assert_same(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.all(np.abs(a - b) <= 1e-5 + 1e-6 * np.abs(b)), float(np.abs(a - b).max())


@pytest.mark.parametrize("source", ["csr.h5ad", "dense.h5ad"])
def test_cli_csr_path_equals_dense_path(setup, source):
    folder, root = setup
    for g in json.loads((folder / "manifest.json").read_text())["graphs"]:
        command = "impute" if g["output_features"] else "embed"
        outs = {}
        for fmt in ("dense", "csr"):
            outs[fmt] = root / f"{g['name']}-{fmt}-{source}"
            invoke(command, "--onnx", folder, "--input", root / source, "--output", outs[fmt], "--combination", g["name"],
                   "--covariate-key", "dataset", "--batch-size", 64, "--input-format", fmt, "--force")
        dense, csr = ad.read_h5ad(outs["dense"]), ad.read_h5ad(outs["csr"])
        assert csr.uns["inclust"]["input_format"] == "csr" and dense.uns["inclust"]["input_format"] == "dense"
        assert_same(csr.obsm["X_inclust"], dense.obsm["X_inclust"])
        assert_same(csr.obs["inclust_label_probability"], dense.obs["inclust_label_probability"])
        assert list(csr.obs["inclust_label"]) == list(dense.obs["inclust_label"])
        if command == "impute":
            assert_same(csr.layers["inclust_imputed"], dense.layers["inclust_imputed"])


def test_many_workers_small_budget_same_values(setup):
    folder, root = setup
    outs = {}
    for fmt, workers in (("dense", None), ("csr", 16), ("dense", 16)):
        out = root / f"w-{fmt}-{workers}.h5ad"
        run(RunOptions(command="impute", onnx=folder, input=root / "csr.h5ad", output=out, combination="merfish_to_rna",
                       covariate_key="dataset", batch_size=16, input_format=fmt, workers=workers, memory_budget=20_000,
                       force=True, quiet=True))
        outs[fmt, workers] = ad.read_h5ad(out)
    ref = outs["dense", None]
    for key, got in outs.items():
        assert_same(got.layers["inclust_imputed"], ref.layers["inclust_imputed"])
        assert_same(got.obsm["X_inclust"], ref.obsm["X_inclust"])
    info = outs["csr", 16].uns["inclust"]
    assert info["concurrent_calls"] == 16 and info["chunk_rows"] < N  # the budget split the run into chunks


def test_csr_on_an_old_export_is_a_one_line_error(tmp_path):
    toy = make_toy_export(tmp_path / "old", seed=1)  # hand-made export without variants
    man = json.loads(toy.manifest.read_text())
    graph = next(g for g in man["graphs"] if g["output_features"])
    ad.AnnData(np.ones((4, len(graph["input_features"])), np.float32), obs=pd.DataFrame(index=list("abcd")),
               var=pd.DataFrame(index=graph["input_features"])).write_h5ad(tmp_path / "in.h5ad")
    res = invoke("impute", "--onnx", toy.manifest, "--input", tmp_path / "in.h5ad", "--output", tmp_path / "o.h5ad",
                 "--combination", graph["name"], "--covariate", man["covariate"]["categories"][0], "--input-format", "csr", code=2)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the export has no CSR graph for {graph['name']!r}") and "re-export" in lines[0], res.output
    assert not (tmp_path / "o.h5ad").exists()


@pytest.mark.parametrize("precision", ["fp16", "tf32"])
def test_precision_without_cuda_is_a_one_line_error(setup, precision):
    folder, root = setup
    res = invoke("impute", "--onnx", folder, "--input", root / "csr.h5ad", "--output", root / "p.h5ad", "--combination", "merfish_to_rna",
                 "--covariate-key", "dataset", "--device", "cpu", "--precision", precision, code=2)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --precision {precision} needs onnxruntime's CUDA provider"), res.output
    assert not (root / "p.h5ad").exists()


def test_io_binding_writes_into_the_given_buffers(setup):
    folder, _ = setup
    graph = load_manifest(folder).graph("merfish_to_rna")
    backend = OnnxBackend("cpu", threads=1)
    backend.prepare(graph)
    rng = np.random.default_rng(2)
    x = rng.random((9, len(graph.input_features))).astype(np.float32)
    cov = rng.integers(0, 3, 9).astype(np.int64)
    plain = backend.run(graph, x, cov, cov)
    out = {k: np.full(v.shape, np.nan, np.float32) for k, v in plain.items()}
    got = backend.run_feeds(graph, {"x": x}, cov, cov, out)
    for k in plain:
        assert got[k] is out[k]
        np.testing.assert_array_equal(out[k], plain[k])
    csr = graph.variant("csr")
    r, c = np.nonzero(x * (x > 0.5))
    feeds = {"values": x[r, c], "indices": c.astype(np.int32), "rows": r.astype(np.int32)}
    dense = backend.run(graph, np.where(x > 0.5, x, 0).astype(np.float32), cov, cov)
    for k, v in backend.run_feeds(csr, feeds, cov, cov).items():
        assert_same(v, dense[k])


def test_page_locking_is_skipped_without_cuda_and_undone_at_close():
    assert host_registry(False) is None

    class FakeCudart:
        def __init__(self):
            self.live = set()

        def cudaHostRegister(self, ptr, size, flags):
            self.live.add(ptr.value)
            return 0

        def cudaHostUnregister(self, ptr):
            self.live.discard(ptr.value)
            return 0

    lib = FakeCudart()
    reg = HostRegistry(lib)
    arrays = [np.zeros(10, np.float32), np.zeros(3, np.int64), np.zeros(0, np.float32)]
    assert reg.register(arrays) == 2 and len(lib.live) == 2
    reg.close()
    assert lib.live == set()


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_memory_stays_within_one_budget_whatever_the_workers(tmp_path, fmt):
    """Peak memory of a whole run (numpy's allocations, which tracemalloc sees: chunk buffers, reads, outputs;
    onnxruntime's own arena is not counted) with 1 and 4 workers under one budget. Measured (2-core CPU):
    1.9 / 1.7 MB dense, 1.8 / 1.6 MB csr for a 1.5 MB budget; with chunks sized as if for one worker
    (the plan ignoring --workers) 4 workers peaked at 2.4 MB, 1.23 times one worker's."""
    import tracemalloc

    n, budget = 60_000, 1_500_000
    ckpt = export_toys.make_toy_checkpoint(tmp_path / "model.pt", seed=5)
    manifest = export.export_model(ckpt, tmp_path / "out", torchscript=False)
    names = [f for m in json.loads(manifest.read_text())["modalities"] for f in m["features"]]
    rng = np.random.default_rng(0)
    raw = (np.round(rng.gamma(0.5, 30.0, (n, len(names)))) * (rng.random((n, len(names))) < 0.3)).astype(np.float32)
    obs = pd.DataFrame({"dataset": pd.Categorical(rng.choice(["scrna", "merfish", "cite"], n))}, index=[f"c{i}" for i in range(n)])
    ad.AnnData(sp.csr_matrix(raw), obs=obs, var=pd.DataFrame(index=names)).write_h5ad(tmp_path / "in.h5ad")
    peaks, rows = {}, {}
    for workers in (1, 4):
        tracemalloc.start()
        try:
            run(RunOptions(command="impute", onnx=tmp_path / "out", input=tmp_path / "in.h5ad", output=tmp_path / "o.h5ad",
                           combination="rna_to_protein", covariate_key="dataset", batch_size=256, workers=workers, memory_budget=budget,
                           input_format=fmt, force=True, quiet=True))
            peaks[workers] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        info = ad.read_h5ad(tmp_path / "o.h5ad").uns["inclust"]
        assert info["concurrent_calls"] == workers
        rows[workers] = info["chunk_rows"]
    assert rows[4] < rows[1] < n, rows  # more workers: smaller chunks, and the run is chunked at all
    assert peaks[4] <= 1.1 * peaks[1], peaks
    assert max(peaks.values()) <= 1.4 * budget, peaks
