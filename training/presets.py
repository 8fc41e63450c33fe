"""The paper's four tasks as presets: configs with the right views, covariates and preprocessing.

Each preset has a worked TOML example in the README; :func:`synthetic_task` builds the same task on
synthetic cells with known truth (used by the tests and the export parity check of every preset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Config, config_from_dict
from .synthetic import SyntheticCells, make_cells

COUNT_PREP = {"normalize_total": 1e4, "log1p": True, "scale": "max"}
PROTEIN_PREP = {"log1p": True, "scale": "max"}
RNA_PROTEIN_PREP = {"rna": COUNT_PREP, "protein": PROTEIN_PREP}


def _dataset(name: str, *modalities: str, labelled: bool = True) -> dict:
    """One ``[[datasets]]`` entry; labelled datasets read their cell types from obs["cell_type"]."""
    return {"name": name, "modalities": list(modalities), **({"label_key": "cell_type"} if labelled else {})}


PRESETS: dict[str, dict] = {
    # (a) scRNA-seq reference + spatial query measured on a gene panel: impute the missing genes.
    "imputation": {
        "task": "imputation",
        "datasets": [_dataset("scrna", "rna"), _dataset("merfish", "rna", labelled=False)],
        "views": {"query": ["merfish"]},
    },
    # (b) paired RNA + protein in several batches: one batch-free latent space.
    "integration": {
        "task": "integration",
        "datasets": [_dataset("batch0", "rna", "protein"), _dataset("batch1", "rna", "protein")],
        "preprocessing": RNA_PROTEIN_PREP,
    },
    # (c) RNA+protein and protein+ATAC datasets bridged by the shared protein panel.
    "triple": {
        "task": "triple",
        "datasets": [_dataset("cite", "rna", "protein"), _dataset("asap", "protein", "atac")],
        "preprocessing": RNA_PROTEIN_PREP,
    },
    # (d) CITE-seq reference + RNA-only query: generate protein and transfer labels.
    "generation": {
        "task": "generation",
        "datasets": [_dataset("cite", "rna", "protein"), _dataset("query", "rna", labelled=False)],
        "views": {"query": ["query"]},
        "preprocessing": RNA_PROTEIN_PREP,
    },
}


def preset_config(task: str, overrides: dict | None = None) -> Config:
    """The preset for ``task`` merged with ``overrides`` (sections are merged key by key)."""
    base = {k: (v.copy() if isinstance(v, dict) else [dict(d) for d in v] if isinstance(v, list) else v) for k, v in PRESETS[task].items()}
    base["name"] = task
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return config_from_dict(base)


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
