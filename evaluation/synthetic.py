"""Synthetic paired RNA + protein + ATAC with known truth, for the tasks no public paired data covers.

Generative story: each cell has a type k and a latent state u = c_k + 0.5 * noise in 8 dimensions.
Every modality is a non-linear map of u plus a batch effect:
    RNA     counts ~ Poisson(library * softmax(W_rna u + beta_rna[b]))
    protein counts ~ Poisson(exp(W_prot u + beta_prot[b]) * 20)
    ATAC    peaks  ~ Bernoulli(sigmoid(W_atac u + beta_atac[b] - 1))
Because all three modalities are drawn for every cell, a task can hide one and score the model's
prediction of it against the truth, and score label transfer against the true types.
:func:`synthetic_task` builds one of the paper's four presets on such cells (the tests' fixtures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from inclust_plus.training.config import Config
from inclust_plus.training.presets import preset_config

MODALITY_SIZES = {"rna": 200, "protein": 30, "atac": 300}


@dataclass
class SyntheticCells:
    """All modalities for every cell, plus the truth."""

    counts: dict[str, np.ndarray]  # modality -> cells x features
    cell_type: np.ndarray  # str
    batch: np.ndarray  # str
    latent: np.ndarray  # cells x 8 true state

    def anndata(self, modality: str, cells: np.ndarray | slice = slice(None)):
        import anndata

        x = self.counts[modality][cells]
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical(self.cell_type[cells]), "batch": pd.Categorical(self.batch[cells])},
            index=[f"cell{i:06d}" for i in np.arange(len(self.cell_type))[cells]],
        )
        var = pd.DataFrame(index=[f"{modality}_{j:03d}" for j in range(x.shape[1])])
        return anndata.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs, var=var)

    def mudata(self, modalities: list[str], cells: np.ndarray | slice = slice(None)):
        import mudata

        mods = {m: self.anndata(m, cells) for m in modalities}
        with mudata.set_options(pull_on_update=False):
            md = mudata.MuData(mods)
        first = mods[modalities[0]].obs
        md.obs["cell_type"] = first["cell_type"].to_numpy()
        md.obs["batch"] = first["batch"].to_numpy()
        return md


def make_cells(n_cells: int = 2000, n_types: int = 6, n_batches: int = 2, batch_effect: float = 1.0, seed: int = 0, sizes: dict | None = None) -> SyntheticCells:
    """Draw ``n_cells`` cells of ``n_types`` types spread evenly over ``n_batches`` batches."""
    rng = np.random.default_rng(seed)
    sizes = {**MODALITY_SIZES, **(sizes or {})}
    dim = 8
    centers = rng.normal(0, 2.0, (n_types, dim))
    types = rng.integers(0, n_types, n_cells)
    batches = np.arange(n_cells) % n_batches
    u = centers[types] + 0.5 * rng.normal(size=(n_cells, dim))
    counts = {}
    w = {m: rng.normal(0, 0.6, (dim, n)) for m, n in sizes.items()}
    beta = {m: rng.normal(0, batch_effect, (n_batches, n)) for m, n in sizes.items()}
    logits = u @ w["rna"] + beta["rna"][batches]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lib = rng.lognormal(np.log(2000), 0.3, n_cells)
    counts["rna"] = rng.poisson(p * lib[:, None]).astype(np.float32)
    counts["protein"] = rng.poisson(np.exp(np.clip(u @ w["protein"] * 0.5 + beta["protein"][batches], -5, 5)) * 20).astype(np.float32)
    counts["atac"] = (rng.random((n_cells, sizes["atac"])) < 1 / (1 + np.exp(-(u @ w["atac"] + beta["atac"][batches] - 1)))).astype(np.float32)
    return SyntheticCells(
        counts=counts,
        cell_type=np.array([f"type{k}" for k in types]),
        batch=np.array([f"batch{b}" for b in batches]),
        latent=u,
    )


def batch_mixing(latent: np.ndarray, batch: np.ndarray, k: int = 30) -> float:
    """Mean fraction of a cell's k nearest neighbours from other batches, divided by its expectation.

    1.0 = batches perfectly mixed, 0.0 = fully separated.
    """
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(latent)
    idx = nn.kneighbors(latent, return_distance=False)[:, 1:]
    other = (batch[idx] != batch[:, None]).mean(1)
    expected = np.array([(batch != b).mean() for b in batch])
    return float(np.mean(other / expected))


def make_hard_cells(n_cells: int = 3000, n_types: int = 6, n_batches: int = 2, seed: int = 0, batch_effect: float = 1.5,
                    nonlinear: float = 1.0, imbalance: float = 4.0, sizes: dict | None = None) -> SyntheticCells:
    """Cells for judging integration: batch effects stronger and non-linear, cell types unbalanced across batches.

    On top of :func:`make_cells`' story, batch b (i) bends the latent state before it is measured,
    u_b = u + nonlinear * tanh(u @ R_b) with a random rotation-like R_b, so no single offset removes it
    in feature space, (ii) adds feature offsets of scale ``batch_effect`` and scales library sizes by a
    batch factor, and (iii) draws cell types with batch-specific proportions: type k is ``imbalance``
    times more frequent in one batch than in another (every type keeps some cells in every batch, so
    label transfer between batches is defined).
    """
    rng = np.random.default_rng(seed)
    sizes = {**MODALITY_SIZES, **(sizes or {})}
    dim = 8
    centers = rng.normal(0, 2.0, (n_types, dim))
    batches = np.arange(n_cells) % n_batches
    # Batch-specific type proportions: log-weights spread linearly over [0, log(imbalance)], reversed per batch.
    logw = np.stack([np.roll(np.linspace(0, np.log(imbalance), n_types), b * max(1, n_types // n_batches)) for b in range(n_batches)])
    probs = np.exp(logw) / np.exp(logw).sum(1, keepdims=True)
    types = np.array([rng.choice(n_types, p=probs[b]) for b in batches])
    u = centers[types] + 0.5 * rng.normal(size=(n_cells, dim))
    bend = rng.normal(0, 1.0 / np.sqrt(dim), (n_batches, dim, dim))
    u_b = u + nonlinear * np.tanh(np.einsum("nd,nde->ne", u, bend[batches]))
    w = {m: rng.normal(0, 0.6, (dim, n)) for m, n in sizes.items()}
    beta = {m: rng.normal(0, batch_effect, (n_batches, n)) for m, n in sizes.items()}
    logits = u_b @ w["rna"] + beta["rna"][batches]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lib = rng.lognormal(np.log(2000), 0.3, n_cells) * np.exp(rng.normal(0, 0.3, n_batches))[batches]
    counts = {
        "rna": rng.poisson(p * lib[:, None]).astype(np.float32),
        "protein": rng.poisson(np.exp(np.clip(u_b @ w["protein"] * 0.5 + beta["protein"][batches], -5, 5)) * 20).astype(np.float32),
        "atac": (rng.random((n_cells, sizes["atac"])) < 1 / (1 + np.exp(-(u_b @ w["atac"] + beta["atac"][batches] - 1)))).astype(np.float32),
    }
    return SyntheticCells(counts=counts, cell_type=np.array([f"type{k}" for k in types]),
                          batch=np.array([f"batch{b}" for b in batches]), latent=u)


@dataclass
class SyntheticTask:
    config: Config
    objects: dict  # dataset name -> AnnData/MuData
    cells: SyntheticCells
    index: dict  # dataset name -> cell indices into ``cells``


def synthetic_task(task: str, n_cells: int = 1500, seed: int = 0, overrides: dict | None = None) -> SyntheticTask:
    """Task ``task`` on synthetic cells: two halves, each a dataset in its own batch."""
    n_batches = 2
    cells = make_cells(n_cells=n_cells, n_batches=n_batches, seed=seed, sizes={"rna": 200, "protein": 30, "atac": 300})
    halves = [np.flatnonzero(cells.batch == f"batch{b}") for b in range(n_batches)]
    cfg = preset_config(task, overrides)
    objects, index = {}, {}
    for ds, idx in zip(cfg.datasets, halves):
        objects[ds.name] = cells.mudata(ds.modalities, idx) if len(ds.modalities) > 1 else cells.anndata(ds.modalities[0], idx)
        index[ds.name] = idx
    if task == "imputation":
        # The query keeps a 60% panel of the genes; the reference measured all.
        genes = np.random.default_rng(seed).permutation(200)[:120]
        q = cfg.datasets[1].name
        objects[q] = objects[q][:, np.sort(genes)].copy()
        cfg.datasets[0].preprocessed = False
        cfg.preprocessing = {"rna": {"log1p": True, "scale": "max"}}
    return SyntheticTask(config=cfg, objects=objects, cells=cells, index=index)
