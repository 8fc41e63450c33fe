"""The runner's fast paths give exactly what the plain path gives.

:class:`~inclust_plus.runtime.runner.SparseReader` preprocesses CSR input on its stored values
only, and :func:`~inclust_plus.runtime.runner.prepared_chunks` prepares the next chunk in a
worker thread. Both are pure speed-ups: every chunk must equal ``data.read`` +
``check_values`` + ``apply_preprocessing`` bit for bit, errors must be the same, and a whole
run on CSR input must write the same file contents as on the same values stored dense.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from inclust_plus.errors import InclustError
from inclust_plus.runtime.inputs import open_input
from inclust_plus.runtime.manifest import load_manifest
from inclust_plus.runtime.preprocess import apply_preprocessing, check_values, plan_preprocessing
from inclust_plus.runtime.runner import RunOptions, SparseReader, chunk_reader, prepared_chunks, run
from runtime_fixtures import PROTEIN, RNA, make_cells, make_toy_export, write_h5ad

SCALE = [1.5, 2.0, 0.5, 3.0, 1.0, 2.5, 4.0, 0.0, 1.25, 2.0]  # one 0: divides by 1
PREP = {
    "rna": {"normalize_total": 1e4, "log1p": True, "scale": SCALE},
    "protein": {"normalize_total": None, "log1p": True, "scale": None},
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy_sparse"), preprocessing=PREP, list_modalities=True)


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
    return open_input(path, graph), plan_preprocessing(manifest, graph)


@pytest.mark.parametrize("graph_name", ["rna_to_protein", "panel_to_rna"])
def test_sparse_chunks_equal_dense_path(toy, tmp_path, graph_name):
    x = _cells()
    names = RNA + ["extra0", "extra1"]
    order = np.random.default_rng(0).permutation(len(names))  # file columns in another order, with extras
    path = tmp_path / "cells.h5ad"
    write_h5ad(path, x[:, order], [names[i] for i in order])
    data, steps = _open(toy, path, graph_name)
    try:
        assert steps and SparseReader.applies(data)
        reader = SparseReader(data, steps)
        buf = np.full((128, data.n_inputs), 7.0, np.float32)  # stale values must not leak through
        for start in range(0, data.n_obs, 128):
            stop = min(data.n_obs, start + 128)
            got = reader.read(start, stop, buf)
            assert got is not None
            np.testing.assert_array_equal(got, _dense_path(data, steps, start, stop))
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
        assert len(data.parts) == 2 and len(steps) == 2
        got = SparseReader(data, steps).read(0, n, np.zeros((n, data.n_inputs), np.float32))
        np.testing.assert_array_equal(got, _dense_path(data, steps, 0, n))
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
        np.testing.assert_array_equal(got, _dense_path(data, steps, 0, 40))
    finally:
        data.close()


def test_prepared_chunks_order_buffers_and_errors():
    seen = []

    def read(start, stop, buf):
        if start == 30:
            raise InclustError("chunk 30 is bad", "fix it")
        buf[: stop - start] = start
        return buf[: stop - start]

    bufs = [np.zeros((10, 2), np.float32), np.zeros((10, 2), np.float32)]
    with pytest.raises(InclustError, match="chunk 30"):
        for start, stop, x in prepared_chunks(read, 45, 10, bufs):
            assert (x == start).all() and len(x) == stop - start
            seen.append(start)
    assert seen == [0, 10, 20]
    assert [s for s, _, _ in prepared_chunks(lambda a, b, buf: buf[: b - a], 25, 10, bufs[:1])] == [0, 10, 20]


def test_whole_run_csr_equals_dense_file(toy, tmp_path):
    x = _cells(700, seed=8)
    names = RNA + ["extra0", "extra1"]
    outs = {}
    for kind in ("csr", None):
        src = tmp_path / f"in_{kind}.h5ad"
        write_h5ad(src, x, names, covariate=["a"] * len(x), sparse=kind)
        out = tmp_path / f"out_{kind}.h5ad"
        # a small value budget: several chunks, so the worker thread and both buffers are used
        run(RunOptions(command="impute", onnx=toy.folder, input=src, output=out, combination="rna_to_protein",
                       covariate_key="dataset", batch_size=64, quiet=True, value_budget=2000))
        with h5py.File(out, "r") as f:
            outs[kind] = (f["X"][()], f["obsm"]["X_inclust"][()])
    np.testing.assert_array_equal(outs["csr"][0], outs[None][0])
    np.testing.assert_array_equal(outs["csr"][1], outs[None][1])
    want = toy.reference("rna_to_protein", x[:, : len(RNA)], np.zeros(len(x), np.int64))
    np.testing.assert_allclose(outs["csr"][0], want["y"], atol=1e-5)
