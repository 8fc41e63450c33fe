"""The runner's fast paths give exactly what the plain path gives.

:class:`~inclust_plus.runtime.chunks.SparseReader` preprocesses CSR input on its stored values
only, and :func:`~inclust_plus.runtime.chunks.ordered_chunks` processes chunks in worker
threads (with concurrent onnxruntime calls on CPU). Both are pure speed-ups: every chunk must
equal ``data.read`` + ``check_values`` + ``apply_preprocessing`` (bit for bit but for log1p,
which the sparse path computes with numpy's vectorised log, within 4 ulp), errors must be the
same, and a whole run must write the same file whether the graph is called from one thread or
several, and the same values (within float32 rounding) whether the input is CSR or dense.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from inclust_plus.errors import InclustError
from inclust_plus.runtime.inputs import open_input
from inclust_plus.runtime.manifest import load_manifest
from inclust_plus.runtime.preprocess import apply_preprocessing, check_values
from inclust_plus.runtime.backend import OnnxBackend
from inclust_plus.runtime.chunks import SparseReader, chunk_reader, fast_log1p, ordered_chunks
from inclust_plus.runtime.runner import RunOptions, run
from runtime_fixtures import PROTEIN, RNA, make_cells, make_toy_export, write_h5ad

SCALE = [1.5, 2.0, 0.5, 3.0, 1.0, 2.5, 4.0, 0.0, 1.25, 2.0]  # one 0: divides by 1
PREP = {
    "rna": {"normalize_total": 1e4, "log1p": True, "scale": SCALE},
    "protein": {"normalize_total": None, "log1p": True, "scale": None},
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy_sparse"), preprocessing=PREP)


def _cells(n: int = 300, seed: int = 3) -> np.ndarray:
    x = make_cells(n, RNA + ["extra0", "extra1"], seed=seed, density=0.3)
    x[5] = 0.0  # an empty cell: library size 0
    x[-3:] = 0.0  # trailing empty cells
    return x


def _dense_path(data, steps, start, stop):
    buf = np.zeros((stop - start, data.n_inputs), np.float32)
    x = data.read(start, stop, buf)
    check_values(x, start, "test")
    apply_preprocessing(x, steps)
    return x


def _open(toy, path, graph_name):
    manifest = load_manifest(toy.folder)
    graph = manifest.graph(graph_name)
    return open_input(path, graph), graph.runtime_plan


@pytest.mark.parametrize("graph_name", ["rna_to_protein", "panel_to_rna"])
def test_sparse_chunks_equal_dense_path(toy, tmp_path, graph_name):
    x = _cells()
    names = RNA + ["extra0", "extra1"]
    order = np.random.default_rng(0).permutation(len(names))  # file columns in another order, with extras
    path = tmp_path / "cells.h5ad"
    write_h5ad(path, x[:, order], [names[i] for i in order])
    data, steps = _open(toy, path, graph_name)
    try:
        assert steps.active and SparseReader.applies(data)
        reader = SparseReader(data, steps)
        buf = np.full((128, data.n_inputs), 7.0, np.float32)  # stale values must not leak through
        for start in range(0, data.n_obs, 128):
            stop = min(data.n_obs, start + 128)
            got = reader.read(start, stop, buf)
            assert got is not None
            np.testing.assert_array_max_ulp(got, _dense_path(data, steps, start, stop), maxulp=4)
    finally:
        data.close()


def test_several_modalities_from_h5mu(toy, tmp_path):
    mudata = pytest.importorskip("mudata")
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(4)
    n = 200
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n)])
    rna = ad.AnnData(sp.csr_matrix(make_cells(n, RNA, seed=5, density=0.4)), obs=obs.copy(), var=pd.DataFrame(index=RNA))
    prot = ad.AnnData(sp.csr_matrix(rng.gamma(2.0, 5.0, (n, len(PROTEIN))).astype(np.float32)), obs=obs.copy(), var=pd.DataFrame(index=PROTEIN))
    path = tmp_path / "cells.h5mu"
    mudata.MuData({"rna": rna, "protein": prot}).write(path)
    data, steps = _open(toy, path, "rna_protein_embed")
    try:
        assert len(data.parts) == 2 and len(steps.active) == 2
        got = SparseReader(data, steps).read(0, n, np.zeros((n, data.n_inputs), np.float32))
        np.testing.assert_array_max_ulp(got, _dense_path(data, steps, 0, n), maxulp=4)
    finally:
        data.close()


def _write_raw_csr(path, data, indices, indptr, n_cols):
    """An h5ad whose CSR arrays are written as given (anndata would canonicalise them)."""
    n = len(indptr) - 1
    write_h5ad(path, np.zeros((n, n_cols), np.float32), RNA[:n_cols])
    with h5py.File(path, "r+") as f:
        del f["X"]
        g = f.create_group("X")
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.array([n, n_cols])})
        g["data"], g["indices"], g["indptr"] = np.asarray(data, np.float32), np.asarray(indices, np.int32), np.asarray(indptr, np.int64)


def test_fast_log1p_within_4_ulp_everywhere():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.random(200_000) * 50, 10.0 ** rng.uniform(-45, 38.5, 200_000),
                        [0.0, 1e-45, 1e-38, 2.0**-24, 2.0**-23, 1.0, 3.4e38]]).astype(np.float32)
    got = fast_log1p(x)
    np.testing.assert_array_max_ulp(got, np.log1p(x), maxulp=4)
    assert got[-7] == 0.0 and got[-6] == np.float32(1e-45)


def test_duplicate_indices_take_the_dense_path(toy, tmp_path):
    path = tmp_path / "dups.h5ad"
    # cell 1 stores column 2 twice: the dense path sums the two values before preprocessing
    _write_raw_csr(path, [1, 2, 3, 4, 5], [0, 3, 2, 2, 9], [0, 2, 4, 5], len(RNA))
    data, steps = _open(toy, path, "rna_to_protein")
    try:
        assert SparseReader(data, steps).read(0, 3, np.zeros((3, data.n_inputs), np.float32)) is None
        got = chunk_reader(data, steps, "test")(0, 3, np.zeros((3, data.n_inputs), np.float32))
        np.testing.assert_array_equal(got, _dense_path(data, steps, 0, 3))
    finally:
        data.close()


@pytest.mark.parametrize("bad", [np.nan, -1.0, np.inf])
def test_bad_values_give_the_usual_error(toy, tmp_path, bad):
    x = _cells(50)
    x[17, 4] = bad
    path = tmp_path / "bad.h5ad"
    write_h5ad(path, x, RNA + ["extra0", "extra1"])
    data, steps = _open(toy, path, "rna_to_protein")
    try:
        with pytest.raises(InclustError) as dense_err:
            _dense_path(data, steps, 0, 50)
        with pytest.raises(InclustError) as fast_err:
            chunk_reader(data, steps, "test")(0, 50, np.zeros((50, data.n_inputs), np.float32))
        assert str(fast_err.value) == str(dense_err.value) and "cell 17" in str(fast_err.value)
    finally:
        data.close()


def test_bad_value_outside_the_graph_columns_is_ignored_like_the_dense_path(toy, tmp_path):
    x = _cells(40)
    x[3, -1] = np.nan  # column extra1: not a graph input
    path = tmp_path / "extra_nan.h5ad"
    write_h5ad(path, x, RNA + ["extra0", "extra1"])
    data, steps = _open(toy, path, "rna_to_protein")
    try:
        got = SparseReader(data, steps).read(0, 40, np.zeros((40, data.n_inputs), np.float32))
        np.testing.assert_array_max_ulp(got, _dense_path(data, steps, 0, 40), maxulp=4)
    finally:
        data.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_ordered_chunks_order_buffers_and_errors(workers):
    import threading
    import time

    seen, in_use = [], set()
    lock = threading.Lock()

    def task(start, stop, buf):
        with lock:
            assert id(buf) not in in_use  # a buffer set is never shared by two chunks in flight
            in_use.add(id(buf))
        time.sleep(0.002 * ((start // 10) % 3))  # finish out of order
        if start == 30:
            raise InclustError("chunk 30 is bad", "fix it")
        buf[: stop - start] = start
        return buf[: stop - start]

    def release(buf):
        with lock:
            in_use.discard(id(buf))

    bufs = [np.zeros((10, 2), np.float32) for _ in range(workers + 1)]
    with pytest.raises(InclustError, match="chunk 30"):
        for start, stop, x in ordered_chunks(task, 65, 10, bufs, workers):
            assert (x == start).all() and len(x) == stop - start
            seen.append(start)
            release(x.base if x.base is not None else x)
    assert seen == [0, 10, 20]
    assert [s for s, _, _ in ordered_chunks(lambda a, b, buf: buf[: b - a], 25, 10, bufs[:1], 1)] == [0, 10, 20]


def test_whole_run_csr_equals_dense_file(toy, tmp_path):
    x = _cells(700, seed=8)
    names = RNA + ["extra0", "extra1"]
    outs = {}
    # (input storage, onnxruntime threads): one thread = calls from the run loop's thread,
    # two = concurrent calls from two workers
    for kind, threads in (("csr", 2), ("csr", 1), (None, 2)):
        src = tmp_path / f"in_{kind}.h5ad"
        write_h5ad(src, x, names, covariate=["a"] * len(x), sparse=kind)
        out = tmp_path / f"out_{kind}_{threads}.h5ad"
        backend = OnnxBackend("cpu", threads=threads)
        # a small value budget: several chunks, so worker threads and every buffer set are used
        run(RunOptions(command="impute", onnx=toy.folder, input=src, output=out, combination="rna_to_protein",
                       covariate_key="dataset", batch_size=64, quiet=True, value_budget=2000), backend=backend)
        assert backend.run_threads == 1
        with h5py.File(out, "r") as f:
            outs[kind, threads] = (f["layers"]["inclust_imputed"][()], f["obsm"]["X_inclust"][()], f["obs"]["inclust_label"]["codes"][()])
            assert f["uns"]["inclust"]["concurrent_calls"][()] == threads
    for got, want in zip(outs["csr", 1], outs["csr", 2]):  # one thread or two: the same file
        np.testing.assert_array_equal(got, want)
    for got, want in zip(outs[None, 2][:2], outs["csr", 2][:2]):  # dense input: the same values
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    want = toy.reference("rna_to_protein", x[:, : len(RNA)], np.zeros(len(x), np.int64))
    np.testing.assert_allclose(outs["csr", 2][0], want["y"], atol=1e-5)


def test_split_threads_only_for_its_own_run_on_cpu():
    assert OnnxBackend("cpu", threads=2).split_threads() == 2
    assert OnnxBackend("cpu", threads=1).split_threads() == 1

    class Wrapped(OnnxBackend):
        def run(self, *args):
            return super().run(*args)

    assert Wrapped("cpu", threads=2).split_threads() == 1
