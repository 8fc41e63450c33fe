"""The pseudo-spatial imputation split used to score imputation on real scRNA-seq data.

A random 30% of the cells play the spatial query: they keep only the panel genes; the held-out
genes are what the model must impute. With ``seed=0`` and the published held-out genes this is
the standard split of ../shared/data/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImputationSplit:
    reference: "object"  # AnnData, all genes
    query: "object"  # AnnData, panel genes only
    held_out: list[str]  # genes to impute in the query
    truth: np.ndarray  # query cells x held-out genes (dense)


def pseudo_spatial_split(adata, seed: int = 0, held_out: list[str] | None = None, query_fraction: float = 0.3, n_random_genes: int | None = None) -> ImputationSplit:
    """Split ``adata`` into reference and query; hold out ``held_out`` genes (default: not in the panel).

    ``n_random_genes`` instead holds out that many genes drawn with ``seed``.
    """
    n = adata.n_obs
    perm = np.random.default_rng(seed).permutation(n)
    n_query = int(query_fraction * n)
    q_idx, r_idx = np.sort(perm[:n_query]), np.sort(perm[n_query:])
    genes = list(map(str, adata.var_names))
    if n_random_genes is not None:
        held_out = sorted(np.random.default_rng(seed + 1000).choice(genes, n_random_genes, replace=False).tolist(), key=genes.index)
    elif held_out is None:
        held_out = [g for g, keep in zip(genes, adata.var["in_merfish_panel"].to_numpy()) if not keep]
    panel = [g for g in genes if g not in set(held_out)]
    query = adata[q_idx, panel].copy()
    reference = adata[r_idx].copy()
    x = adata[q_idx, held_out].X
    truth = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
    return ImputationSplit(reference=reference, query=query, held_out=held_out, truth=truth)


def per_gene_correlation(pred: np.ndarray, truth: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Correlation of each column of ``pred`` with the same column of ``truth`` (nan for constant columns)."""
    if method == "spearman":
        from scipy.stats import rankdata

        pred = np.apply_along_axis(rankdata, 0, pred)
        truth = np.apply_along_axis(rankdata, 0, truth)
    p = pred - pred.mean(0)
    t = truth - truth.mean(0)
    denom = np.sqrt((p**2).sum(0) * (t**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(0) / denom, np.nan)


KNN_K = 30  # the kNN contender's neighbours in every imputation benchmark and floor test (issue 24)


def knn_regressor(k: int = KNN_K, cosine: bool = True):
    """The kNN imputation contender on the shared genes, unfitted: cosine metric with distance weights (the strongest
    simple baseline found, issue 24), or euclidean with uniform weights (``cosine=False``, scikit-learn's default).
    One definition for the benchmarks and the accuracy floor, so they measure against the same contender."""
    from sklearn.neighbors import KNeighborsRegressor

    return KNeighborsRegressor(k, metric="cosine", weights="distance") if cosine else KNeighborsRegressor(k)
