"""The standard scIB table of several embeddings, by scib-metrics (its ``Benchmarker``), on a seeded subsample.

scib-metrics is the field's implementation of the scIB benchmark (Luecken et al., Nature Methods 2022):
bio conservation (isolated labels, k-means NMI/ARI, label silhouette, cLISI) and batch correction
(batch silhouette, iLISI, kBET, graph connectivity, PCR comparison), each scaled to [0, 1], and the
aggregate 0.6 x bio + 0.4 x batch. Its JAX kernels take minutes for a few thousand cells on a 2-core
CPU, so the table is computed on ``cells`` cells drawn once (seeded) and shared by every embedding:
the scores compare embeddings with one another, not with tables computed on all cells.

scib-metrics is a benchmark dependency (``pip install -e ".[bench]"``), imported only here.
"""

from __future__ import annotations

import numpy as np

CELLS = 6000


def scib_table(embeddings: dict[str, np.ndarray], batch: np.ndarray, types: np.ndarray, unintegrated: str,
               cells: int = CELLS, seed: int = 0) -> dict[str, dict[str, float]]:
    """{embedding: {metric: score}} of scib-metrics' Benchmarker, unscaled (``min_max_scale=False``), on a seeded
    subsample of ``cells`` cells. ``unintegrated`` names the embedding that PCR comparison measures against
    (the data before integration); it is scored like the others."""
    try:
        import anndata
        from scib_metrics.benchmark import Benchmarker
    except ImportError:
        raise SystemExit('the scIB table needs scib-metrics: pip install -e ".[bench]"') from None

    n = len(batch)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(cells, n), replace=False))
    keys = {name: f"emb{i}" for i, name in enumerate(embeddings)}
    adata = anndata.AnnData(np.zeros((len(rows), 1), np.float32),
                            obs={"batch": np.asarray(batch)[rows].astype(str), "cell_type": np.asarray(types)[rows].astype(str)})
    for name, key in keys.items():
        adata.obsm[key] = np.asarray(embeddings[name], dtype=np.float32)[rows]
    bench = Benchmarker(adata, batch_key="batch", label_key="cell_type", embedding_obsm_keys=list(keys.values()),
                        pre_integrated_embedding_obsm_key=keys[unintegrated], n_jobs=1, progress_bar=False)
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    table = table[table.index != "Metric Type"]
    names = {key: name for name, key in keys.items()}
    return {names[key]: {str(col): round(float(table.loc[key, col]), 4) for col in table.columns} for key in table.index}
