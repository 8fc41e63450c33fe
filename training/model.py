"""``InClust``: the user-facing model that speaks AnnData/MuData and writes ``model.pt``.

It wraps the tensor-level :class:`~inclust_plus.training.module.InClustModule` with the schema,
covariate and label categories, the preprocessing recipe and the export combinations, so that a
saved checkpoint is self-describing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from inclust_plus import __version__
from inclust_plus.errors import InclustError

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config
from .data import TrainingData, assemble
from .ensemble import merge_members
from .members import train_members
from .loading import load_dataset
from .module import InClustModule, ModuleConfig
from .trainer import TrainingResult


def _combinations(data: TrainingData) -> list[dict]:
    names = data.mask_table.names
    combos: dict[str, dict] = {}
    for v in data.views:
        name = f"{names[v.input_pattern]}_to_{names[v.output_pattern]}"
        a, b = data.cell_ranges[v.dataset]
        covs = set(np.unique(data.covariate[a:b]).tolist())
        entry = combos.setdefault(name, {"name": name, "inputs": names[v.input_pattern], "outputs": names[v.output_pattern], "_covs": set()})
        entry["_covs"] |= covs
    out = []
    for entry in combos.values():
        covs = entry.pop("_covs")
        entry["default_target_covariate"] = data.covariate_categories[covs.pop()] if len(covs) == 1 else None
        entry["default_covariate"] = _panel_covariate(data, entry["inputs"])
        out.append(entry)
    for pat in dict.fromkeys(v.input_pattern for v in data.views):
        out.append({"name": f"{names[pat]}_embed", "inputs": names[pat], "outputs": None, "default_target_covariate": None,
                    "default_covariate": _panel_covariate(data, names[pat])})
    return out


def _check_unit_interval(data: TrainingData) -> None:
    """The Bernoulli likelihood is a likelihood only for values in [0, 1]."""
    values = data.x.data if sp.issparse(data.x) else data.x
    if values.size and (values.min() < 0 or values.max() > 1):
        raise InclustError(
            f"loss.likelihood 'bernoulli' needs features in [0, 1], but the preprocessed values span [{values.min():.3g}, {values.max():.3g}]",
            "set scale = 'max' in [preprocessing.<modality>] or use the gaussian likelihood",
        )


def _panel_covariate(data: TrainingData, set_name: str) -> str | None:
    """Cells given to a graph whose inputs are one dataset's panel most likely come from that dataset:
    its covariate (when it has a single one) is the runtime's default for them."""
    if set_name not in data.cell_ranges:
        return None
    a, b = data.cell_ranges[set_name]
    covs = np.unique(data.covariate[a:b])
    return data.covariate_categories[int(covs[0])] if len(covs) == 1 else None


def describe(data: TrainingData, cfg: Config) -> dict:
    """The JSON description stored in ``model.pt`` (docs/ARCHITECTURE.md, "Checkpoint")."""
    feature_sets = {}
    for m in data.modalities:
        s = data.slices[m]
        feature_sets[m] = {"modalities": [m], "features": list(range(s.start, s.stop))}
    for name, mask in zip(data.mask_table.names, data.mask_table.masks):
        idx = np.flatnonzero(mask).tolist()
        feature_sets[name] = {"modalities": [m for m in data.modalities if mask[data.slices[m]].any()], "features": idx}
    return {
        "name": cfg.name,
        "task": cfg.task,
        "package_version": __version__,
        "schema": {"modalities": [{"name": m, "features": data.features[m]} for m in data.modalities]},
        "covariate": {"keys": sorted({k for d in cfg.datasets for k in d.covariate_keys}), "categories": data.covariate_categories},
        "labels": {
            "key": next((d.label_key for d in cfg.datasets if d.label_key), None),
            "categories": data.label_categories,
            "mode": data.label_mode,
        },
        "preprocessing": data.preprocessing,
        "feature_sets": feature_sets,
        "combinations": _combinations(data),
        "datasets": [
            {"name": n, "cells": b - a, "measured_features": int(data.measured[n].sum())} for n, (a, b) in data.cell_ranges.items()
        ],
        "hyperparameters": {k: v for k, v in cfg.to_dict().items() if k in ("model", "loss", "training", "views", "task")},
    }


class InClust:
    """A trained inClust+ model with its description."""

    def __init__(self, module: InClustModule, description: dict):
        self.module = module.eval()
        self.description = description

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, cfg: Config, objects: dict | None = None, progress: bool = True) -> tuple["InClust", TrainingData, TrainingResult]:
        """Load and validate the datasets of ``cfg`` (or the in-memory ``objects`` by dataset name), train."""
        objects = objects or {}
        datasets = [load_dataset(d, objects.get(d.name)) for d in cfg.datasets]
        data = assemble(datasets, cfg)
        m = cfg.model
        member = ModuleConfig(
            n_features=data.n_features,
            n_covariates=len(data.covariate_categories),
            n_labels=len(data.label_categories),
            encoder_hidden=list(m.encoder_hidden),
            latent_dim=m.latent_dim,
            decoder_hidden=list(m.decoder_hidden),
            activation=m.activation,
            output_activation=m.output_activation,
            input_normalization=m.input_normalization,
        )
        # Member k trains with seed + k and the k-th likelihood of loss.likelihood; member 0 alone is
        # the single-network model.
        if "bernoulli" in cfg.loss.likelihoods()[: m.ensemble]:
            _check_unit_interval(data)
        members, results = train_members(member, data, cfg, progress=progress)
        module = merge_members(members)
        result = TrainingResult.combined(results)
        desc = describe(data, cfg)
        desc["training"] = {
            "epochs": result.epochs_run,
            "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 3),
            "rows_per_second": round(result.rows_per_second, 1),
            "history": {k: [round(v, 6) for v in vals] for k, vals in result.history.items()},
        }
        return cls(module, desc), data, result

    @classmethod
    def load(cls, path: str | Path) -> "InClust":
        module, desc = load_checkpoint(path)
        return cls(module, desc)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.module, self.description)

    # --- inference --------------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.module.config.n_features

    def feature_set(self, name: str) -> np.ndarray:
        sets = self.description["feature_sets"]
        if name not in sets:
            raise InclustError(f"unknown feature set {name!r}", f"known sets: {', '.join(sets)}")
        return np.asarray(sets[name]["features"], dtype=np.int64)

    def covariate_index(self, names) -> np.ndarray:
        cats = self.description["covariate"]["categories"]
        lookup = {c: i for i, c in enumerate(cats)}
        try:
            return np.array([lookup[str(n)] for n in np.atleast_1d(names)], dtype=np.int64)
        except KeyError as err:
            raise InclustError(f"unknown covariate category {err.args[0]!r}",
                               f"known: {', '.join(cats)} (add a new batch with model.map_query or inclust-map)") from None

    def map_query(self, data, name: str | None = None, covariate_key: str | None = None, **options) -> "InClust":
        """A copy of this model that also knows the new covariate categories of ``data`` (AnnData or
        MuData, no labels needed): one embedding row each, every other weight frozen.
        See :func:`inclust_plus.training.mapping.map_query` for the options."""
        from .mapping import map_query

        return map_query(self, data, name=name, covariate_key=covariate_key, **options)

    @torch.no_grad()
    def predict(self, x: np.ndarray, inputs: str, covariate, target_covariate=None, batch_size: int = 8192):
        """Run the model with the masks applied on ``x`` (cells x features of set ``inputs``).

        Returns full-width decoded features, the corrected latent and label probabilities.
        ``covariate``/``target_covariate`` are category names (one or one per cell).
        """
        idx = self.feature_set(inputs)
        x = np.asarray(x, dtype=np.float32)
        n = x.shape[0]
        cov = np.broadcast_to(self.covariate_index(covariate), (n,))
        tgt = cov if target_covariate is None else np.broadcast_to(self.covariate_index(target_covariate), (n,))
        mask = torch.zeros(1, self.n_features)
        mask[0, idx] = 1.0
        ys, zs, ps = [], [], []
        for s in range(0, n, batch_size):
            full = torch.zeros(min(batch_size, n - s), self.n_features)
            full[:, idx] = torch.from_numpy(x[s : s + batch_size])
            y, z, p = self.module.predict(full, mask, torch.from_numpy(np.ascontiguousarray(cov[s : s + batch_size])), torch.from_numpy(np.ascontiguousarray(tgt[s : s + batch_size])))
            ys.append(y.numpy()), zs.append(z.numpy()), ps.append(p.numpy())
        return np.concatenate(ys), np.concatenate(zs), np.concatenate(ps)
