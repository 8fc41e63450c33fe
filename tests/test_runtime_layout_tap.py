"""The output layout takes its values from the rows the chunk reader reads (runtime/layout_chunk.py).

Each run here is done twice on the same input: as shipped (the reader hands its rows to the
layout's tap) and with the tap switched off (the layout reads everything again itself, as every
chunk did before). The two h5ad files must be the same to the byte (the run's ``seconds`` pinned),
for dense and CSR input, a panel stored in another column order with extra columns (output
features the graph does not read among them), a carried layer, ``--layer``, two modalities of
an h5mu, ``--output-scale counts`` (library sizes), an ensemble's spread, and several workers.
Independently of that, X must hold the input's measured values and the layer the input's layer.
"""

from __future__ import annotations

import types

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from export_toys import N_PROTEIN, N_RNA, make_toy_checkpoint
from inclust_plus.export import export_model
from inclust_plus.runtime import stream
from inclust_plus.runtime.layout_chunk import ChunkTap
from inclust_plus.runtime.runner import RunOptions, run

RNA = [f"gene{i:03d}" for i in range(N_RNA)]
PROTEIN = [f"prot{i:03d}" for i in range(N_PROTEIN)]
N = 203  # not a multiple of the chunk: the last chunk is short
EXTRA = ["other1", "other2", "other3"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("tap")
    ckpt = make_toy_checkpoint(root / "model.pt", seed=5, members=2)
    return export_model(ckpt, root / "export", torchscript=False, combinations=["merfish_to_rna", "rna_protein"]).parent


def _counts(seed: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (np.round(rng.gamma(0.7, 6.0, (N, width))) * (rng.random((N, width)) < 0.6)).astype(np.float32)


def _obs() -> pd.DataFrame:
    return pd.DataFrame({"dataset": pd.Categorical(["merfish", "scrna"] * (N // 2) + ["merfish"])}, index=[f"c{i}" for i in range(N)])


def _anndata(path, fmt: str, layer_fmt: str | None = "csr") -> tuple[np.ndarray, list[str], np.ndarray]:
    """Every rna gene and protein in a shuffled column order, plus columns the model does not know."""
    names = RNA + PROTEIN + EXTRA
    order = np.random.default_rng(7).permutation(len(names))
    x = _counts(1, len(names))[:, order]
    names = [names[i] for i in order]
    counts = x * 2  # a layer that differs from X
    wrap = sp.csr_matrix if fmt == "csr" else np.asarray
    a = ad.AnnData(X=wrap(x), obs=_obs(), var=pd.DataFrame({"kind": [n[:4] for n in names]}, index=names))
    if layer_fmt:
        a.layers["counts"] = sp.csr_matrix(counts) if layer_fmt == "csr" else counts
    a.write_h5ad(path)
    return x, names, counts


def _run_twice(tmp_path, monkeypatch, read_again=(), **kw) -> tuple[bytes, bytes, str]:
    """(output with the reader's tap, output without it, path of the first).

    With the tap, only the targets named in ``read_again`` (matrices the graph input does not
    read) may be read by the layout itself, and every chunk is checked for that.
    """
    monkeypatch.setattr(stream, "time", types.SimpleNamespace(perf_counter=lambda: 0.0))
    outs, reread = {}, []
    finish = ChunkTap.finish

    def spy(self):
        reread.append({name: len(t.parts) - len(self.filled[name]) for name, t in self.targets.items()})
        return finish(self)

    for tapped in (True, False):
        with monkeypatch.context() as m:
            m.setattr(ChunkTap, "finish", spy)
            if not tapped:
                m.setattr(ChunkTap, "__call__", lambda self, rows, raw: None)
            out = tmp_path / f"out_{tapped}.h5ad"
            run(RunOptions(output=out, batch_size=16, value_budget=800, quiet=True, force=True, **kw))
            outs[tapped] = out
        if tapped:
            assert len(reread) > 1 and all(set(k for k, v in r.items() if v) == set(read_again) for r in reread), reread
            reread.clear()
    return outs[True].read_bytes(), outs[False].read_bytes(), outs[True]


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("workers", [1, 3])
def test_tapped_output_is_byte_identical_and_keeps_measured_values(export, tmp_path, monkeypatch, fmt, workers):
    src = tmp_path / "cells.h5ad"
    x, names, counts = _anndata(src, fmt, "dense" if fmt == "dense" else "csr")
    tapped, untapped, path = _run_twice(tmp_path, monkeypatch, ["counts"], command="impute", onnx=export, input=src,
                                        combination="merfish_to_rna", workers=workers)
    assert tapped == untapped
    with h5py.File(path, "r") as f:
        assert int(f["uns/inclust/chunk_rows"][()]) < N  # several chunks
        assert int(f["uns/inclust/concurrent_calls"][()]) == workers
    out = ad.read_h5ad(path)
    cols = [names.index(g) for g in RNA]
    np.testing.assert_array_equal(out.X.toarray(), x[:, cols])  # 6 of these 12 genes are not graph inputs
    np.testing.assert_array_equal(out.layers["counts"].toarray(), counts[:, cols])
    assert list(out.var["kind"]) == ["gene"] * N_RNA and not out.var["inclust_imputed"].any()
    assert "inclust_std" in out.layers


@pytest.mark.parametrize("scale", ["counts", "log1p"])
def test_layer_input_and_library_sizes(export, tmp_path, monkeypatch, scale):
    """--layer counts: the input element is also a carried layer; counts scale needs the library sizes."""
    src = tmp_path / "cells.h5ad"
    _, names, counts = _anndata(src, "csr")
    tapped, untapped, path = _run_twice(tmp_path, monkeypatch, command="impute", onnx=export, input=src, combination="merfish_to_rna",
                                        layer="counts", output_scale=scale, imputed_into="X")
    assert tapped == untapped
    out = ad.read_h5ad(path)
    cols = [names.index(g) for g in RNA]
    np.testing.assert_array_equal(out.layers["inclust_measured"].toarray(), counts[:, cols])
    np.testing.assert_array_equal(out.layers["counts"].toarray(), counts[:, cols])
    assert ("inclust_std" in out.layers) == (scale == "log1p")  # the spread of counts has no counts form


def test_two_modalities_of_an_h5mu(export, tmp_path, monkeypatch):
    """rna_protein reads both modalities (both tapped); one stored dense, one CSR, protein columns reversed."""
    mudata = pytest.importorskip("mudata")
    rna, prot = _counts(2, N_RNA), _counts(3, N_PROTEIN)[:, ::-1].copy()
    index = _obs().index
    mods = {"rna": ad.AnnData(rna, obs=pd.DataFrame(index=index), var=pd.DataFrame(index=RNA)),
            "protein": ad.AnnData(sp.csr_matrix(prot), obs=pd.DataFrame(index=index), var=pd.DataFrame(index=PROTEIN[::-1]))}
    md = mudata.MuData(mods)
    md.obs["dataset"] = _obs()["dataset"].to_numpy()
    src = tmp_path / "cells.h5mu"
    md.write(src)
    tapped, untapped, path = _run_twice(tmp_path, monkeypatch, command="generate", onnx=export, input=src, combination="rna_protein",
                                        output_scale="counts")
    assert tapped == untapped
    out = ad.read_h5ad(path)
    np.testing.assert_array_equal(out.X.toarray(), np.hstack([rna, prot[:, ::-1]]))
    assert set(out.obsm) >= {"inclust_rna", "inclust_protein"}


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_predictor_library_sizes_from_the_one_read(export, tmp_path, fmt):
    """The Predictor reads each batch once; its counts scale equals the model scale converted with
    library sizes summed over the whole raw input (what it computed before, from a second read)."""
    from inclust_plus import results as R
    from inclust_plus.runtime import Predictor
    from inclust_plus.runtime.manifest import load_manifest

    x, names, _ = _anndata(tmp_path / "cells.h5ad", fmt)
    adata = ad.read_h5ad(tmp_path / "cells.h5ad")
    p = Predictor(export, batch_size=37)
    model = p.impute(adata, combination="merfish_to_rna").layers["inclust_imputed"]
    counts = p.impute(adata, combination="merfish_to_rna", output_scale="counts").layers["inclust_imputed"]
    m = load_manifest(export)
    graph = m.graph("merfish_to_rna")
    raw = x[:, [names.index(g) for g in graph.input_features]]
    conv = R.ScaleConverter(graph.output_features, m.schema(), m.preprocessing, "counts", graph.input_modalities)
    want = conv.convert(model, R.library_sizes(raw, graph.preprocessing_plan.columns_by_modality(), conv.needs_library))
    np.testing.assert_array_equal(counts, want)
