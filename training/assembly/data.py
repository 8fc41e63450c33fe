"""Assemble validated datasets into one training table with a shared feature schema.

Features are aligned by name across datasets (per modality, in first-seen order); what a dataset
did not measure is zero-filled and masked. Values are preprocessed per modality and the recipe is
kept (with the learned per-feature scales) so export and runtime can apply exactly the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scipy is imported on use (inclust_plus/sparse.py says why)
    import scipy.sparse as sp

from inclust_plus.errors import InclustError

from inclust_plus.training.config import Config
from inclust_plus.training.assembly.loading import LoadedDataset, load_dataset
from inclust_plus.training.assembly.preprocessing import Preprocessing, fit_scale, transform
from inclust_plus.training.assembly.views import MaskTable, View, build_views

DENSE_LIMIT = 300_000_000  # values; above this the matrix stays sparse and is densified per batch


@dataclass
class TrainingData:
    """Everything the trainer and the checkpoint description need."""

    x: np.ndarray | sp.csr_matrix  # cells x features, preprocessed, zero-filled
    modalities: list[str]
    features: dict[str, list[str]]
    slices: dict[str, slice]
    dataset_of_cell: np.ndarray  # int per cell
    dataset_names: list[str]
    cell_ranges: dict[str, tuple[int, int]]
    covariate_categories: list[str]
    covariate: np.ndarray  # int per cell
    label_categories: list[str]
    labels: np.ndarray  # int per cell, -1 unlabeled
    label_mode: str
    measured: dict[str, np.ndarray]
    mask_table: MaskTable
    views: list[View]
    preprocessing: dict[str, dict]
    # rows: one per (cell, view of its dataset)
    row_cell: np.ndarray
    row_input: np.ndarray
    row_output: np.ndarray

    @property
    def n_features(self) -> int:
        return sum(len(f) for f in self.features.values())

    def feature_names(self) -> list[str]:
        return [f for m in self.modalities for f in self.features[m]]


def _align_features(datasets: list[LoadedDataset], order: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    modalities = list(order)
    for d in datasets:
        for m in d.matrices:
            if m not in modalities:
                modalities.append(m)
    features: dict[str, list[str]] = {m: [] for m in modalities}
    seen: dict[str, set] = {m: set() for m in modalities}
    for d in datasets:
        for m, names in d.features.items():
            for f in names:
                if f not in seen[m]:
                    seen[m].add(f)
                    features[m].append(f)
    return [m for m in modalities if features[m]], features


def _check_overlap(datasets: list[LoadedDataset]) -> None:
    if len(datasets) < 2:
        return
    sets = {d.name: {(m, f) for m, names in d.features.items() for f in names} for d in datasets}
    for d in datasets:
        others = set().union(*(s for n, s in sets.items() if n != d.name))
        if not sets[d.name] & others:
            raise InclustError(
                f"dataset {d.name!r} shares no features with the other datasets",
                "check modality names and that var_names use the same gene identifiers",
            )


def assemble(datasets: list[LoadedDataset], cfg: Config) -> TrainingData:
    """Align, preprocess and lay out the training rows for ``datasets``."""
    import scipy.sparse as sp

    if not datasets:
        raise InclustError("the config lists no datasets", "add at least one [[datasets]] entry")
    _check_overlap(datasets)
    modalities, features = _align_features(datasets, cfg.modalities)
    slices, start = {}, 0
    for m in modalities:
        slices[m] = slice(start, start + len(features[m]))
        start += len(features[m])
    n_features = start
    index = {m: {f: slices[m].start + i for i, f in enumerate(features[m])} for m in modalities}
    preps = {m: Preprocessing.from_dict(cfg.preprocessing.get(m, {})) for m in modalities}

    blocks, measured = [], {}
    for d in datasets:
        rows, cols, vals = [], [], []
        meas = np.zeros(n_features, dtype=bool)
        for m, mat in d.matrices.items():
            idx = np.array([index[m][f] for f in d.features[m]], dtype=np.int64)
            meas[idx] = True
            if d.preprocessed or preps[m].normalize_total is None and not preps[m].log1p:
                block = mat.tocoo()
            else:
                block = sp.coo_matrix(transform(mat.toarray(), preps[m]))
            rows.append(block.row)
            cols.append(idx[block.col])
            vals.append(block.data)
        blocks.append(sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(d.n_cells, n_features), dtype=np.float32))
        measured[d.name] = meas
    x = sp.vstack(blocks, format="csr", dtype=np.float32)

    prep_desc = {}
    for m in modalities:
        scale = None
        if preps[m].scale == "max":
            scale = fit_scale(x[:, slices[m]])
            x = x @ sp.diags(np.concatenate([1.0 / scale if mm == m else np.ones(len(features[mm]), np.float32) for mm in modalities]).astype(np.float32))
            x = sp.csr_matrix(x, dtype=np.float32)
        prep_desc[m] = {**preps[m].to_dict(), "scale": None if scale is None else [float(v) for v in scale]}
    if x.shape[0] * x.shape[1] <= DENSE_LIMIT:
        x = x.toarray()

    sizes = [d.n_cells for d in datasets]
    dataset_of_cell = np.repeat(np.arange(len(datasets)), sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    cell_ranges = {d.name: (int(offsets[i]), int(offsets[i + 1])) for i, d in enumerate(datasets)}

    cov_all = np.concatenate([d.covariate for d in datasets])
    cov_categories = list(dict.fromkeys(cov_all.tolist()))
    cov_index = {c: i for i, c in enumerate(cov_categories)}
    covariate = np.array([cov_index[c] for c in cov_all], dtype=np.int64)

    label_lists = [d.labels if d.labels is not None else np.full(d.n_cells, None, dtype=object) for d in datasets]
    labels_all = np.concatenate(label_lists)
    present = sorted({v for v in labels_all.tolist() if v is not None})
    if present:
        label_categories = present
        lab_index = {c: i for i, c in enumerate(present)}
        labels = np.array([-1 if v is None else lab_index[v] for v in labels_all], dtype=np.int64)
        mode = "supervised" if (labels >= 0).all() else "semi-supervised"
    else:
        label_categories = [f"cluster{i}" for i in range(cfg.model.n_clusters)]
        labels = np.full(len(labels_all), -1, dtype=np.int64)
        mode = "unsupervised"

    modalities_of = {d.name: [m for m in modalities if m in d.matrices] for d in datasets}
    table, views = build_views(measured, modalities_of, slices, cfg.views.query, cfg.views.translation, cfg.views.joint)
    row_cell, row_in, row_out = [], [], []
    for v in views:
        a, b = cell_ranges[v.dataset]
        row_cell.append(np.arange(a, b))
        row_in.append(np.full(b - a, v.input_pattern))
        row_out.append(np.full(b - a, v.output_pattern))
    return TrainingData(
        x=x,
        modalities=modalities,
        features={m: features[m] for m in modalities},
        slices=slices,
        dataset_of_cell=dataset_of_cell,
        dataset_names=[d.name for d in datasets],
        cell_ranges=cell_ranges,
        covariate_categories=cov_categories,
        covariate=covariate,
        label_categories=label_categories,
        labels=labels,
        label_mode=mode,
        measured=measured,
        mask_table=table,
        views=views,
        preprocessing=prep_desc,
        row_cell=np.concatenate(row_cell).astype(np.int64),
        row_input=np.concatenate(row_in).astype(np.int64),
        row_output=np.concatenate(row_out).astype(np.int64),
    )


def read_training_data(cfg: Config, objects: dict | None = None) -> TrainingData:
    """Load and validate every dataset of ``cfg`` (read from its path, or the in-memory object of
    that dataset name in ``objects``) and assemble them. Torch-free: inclust-train runs it in a
    forked child while it imports torch (training/assembly/background.py)."""
    objects = objects or {}
    return assemble([load_dataset(d, objects.get(d.name)) for d in cfg.datasets], cfg)
