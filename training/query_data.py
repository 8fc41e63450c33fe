"""New cells for a trained model: read, align to the model's features, preprocess with its recipe.

Mapping a new batch (training/mapping.py) and imputing with uncertainty (training/uncertainty.py)
both start from cells the model never saw. They must enter the network exactly as training data
did: features placed by name into the model's global order (what the new data did not measure is
zero and masked), and values transformed by the checkpoint's preprocessing recipe (library size
over the measured features of the modality, log1p, the stored per-feature scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from inclust_plus.errors import InclustError

from .preprocessing import Preprocessing, transform
from .loading import read_cells  # noqa: F401 - the one reader of cell files, re-exported for map_cli


@dataclass
class QueryCells:
    """New cells laid out in the model's feature order."""

    x: sp.csr_matrix  # cells x n_features, preprocessed, zero where not measured
    measured: np.ndarray  # bool per global feature
    obs: pd.DataFrame
    obs_names: np.ndarray
    unmatched: int  # features of the input the model does not know (ignored)

    @property
    def n_cells(self) -> int:
        return self.x.shape[0]

    def dense(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.x[start:stop].toarray(), dtype=np.float32)


def _modality_tables(description: dict) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Per modality: feature name -> global index; and the modality order."""
    tables, start, order = {}, 0, []
    for mod in description["schema"]["modalities"]:
        tables[mod["name"]] = {f: start + i for i, f in enumerate(mod["features"])}
        start += len(mod["features"])
        order.append(mod["name"])
    return tables, order


def _pick_modality(adata, tables: dict[str, dict[str, int]]) -> str:
    """The model modality an AnnData holds: the one sharing most feature names with it."""
    names = set(map(str, adata.var_names))
    overlap = {m: len(names & set(t)) for m, t in tables.items()}
    best = max(overlap, key=overlap.get)
    if overlap[best] == 0:
        raise InclustError(
            "the data shares no feature names with the model",
            f"var_names must use the model's identifiers (e.g. {next(iter(tables[best]))!r})",
        )
    return best


def _values(adata, layer: str | None, where: str) -> sp.csr_matrix:
    if layer:
        if layer not in adata.layers:
            raise InclustError(f"{where} has no layer {layer!r}", f"layers are: {', '.join(adata.layers) or 'none'}")
        x = adata.layers[layer]
    else:
        x = adata.X
    if x is None:
        raise InclustError(f"{where} has no X", "store the values in X or name a layer")
    x = sp.csr_matrix(x, dtype=np.float32)
    if not np.isfinite(x.data).all():
        raise InclustError(f"{where} contains NaN or infinite values", "remove or impute them first")
    if (x.data < 0).any():
        raise InclustError(f"{where} contains negative values", "pass counts or non-negative normalised values (not z-scores)")
    return x


def align_cells(description: dict, data, layer: str | None = None, preprocessed: bool = False) -> QueryCells:
    """Place ``data`` (AnnData or MuData) into the model's features and apply its preprocessing."""
    tables, order = _modality_tables(description)
    n_features = sum(len(t) for t in tables.values())
    if hasattr(data, "mod"):
        mods = {m: data.mod[m] for m in order if m in data.mod}
        if not mods:
            raise InclustError(f"the MuData has none of the model's modalities {order}", f"its modalities are: {', '.join(data.mod)}")
    else:
        mods = {_pick_modality(data, tables): data}
    obs_names = np.asarray(data.obs_names)
    if len(obs_names) == 0:
        raise InclustError("the data holds no cells", "pass a file with at least one cell")
    blocks, measured, unmatched = [], np.zeros(n_features, dtype=bool), 0
    for m, ad in mods.items():
        where = f"modality {m!r}"
        if ad.n_obs != len(obs_names) or not np.array_equal(np.asarray(ad.obs_names), obs_names):
            raise InclustError(f"{where} does not hold the same cells as the MuData", "keep only paired cells (mudata.pp.intersect_obs)")
        names = [str(v) for v in ad.var_names]
        if len(set(names)) != len(names):
            raise InclustError(f"{where} has duplicate feature names", "make var_names unique (adata.var_names_make_unique())")
        keep = [j for j, f in enumerate(names) if f in tables[m]]
        unmatched += len(names) - len(keep)
        if not keep:
            continue
        x = _values(ad, layer, where)[:, keep]
        idx = np.array([tables[m][names[j]] for j in keep], dtype=np.int64)
        # As in training (training/data.py): ``preprocessed`` skips normalisation and log1p, never the
        # stored per-feature scale.
        recipe = description["preprocessing"].get(m, {})
        prep = Preprocessing() if preprocessed else Preprocessing(normalize_total=recipe.get("normalize_total"), log1p=bool(recipe.get("log1p")))
        scale = recipe.get("scale")
        s = None if scale is None else np.asarray(scale, dtype=np.float32)[idx - min(tables[m].values())]
        if not (prep.is_identity and s is None):
            x = sp.csr_matrix(transform(x.toarray(), prep, s))
        coo = x.tocoo()
        blocks.append((coo.row, idx[coo.col], coo.data))
        measured[idx] = True
    if not measured.any():
        raise InclustError("the data shares no feature names with the model", "var_names must use the model's feature identifiers")
    rows, cols, vals = (np.concatenate(p) for p in zip(*blocks))
    x = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(len(obs_names), n_features), dtype=np.float32)
    obs = data.obs
    if hasattr(data, "mod") and obs.shape[1] == 0:
        obs = next(iter(mods.values())).obs
    return QueryCells(x=x, measured=measured, obs=obs, obs_names=obs_names, unmatched=unmatched)


def covariate_values(cells: QueryCells, name: str | None, key: str | None) -> np.ndarray:
    """The covariate category of every cell: one ``name`` for all, or the values of obs column ``key``."""
    if name is not None and key is not None:
        raise InclustError("a covariate name and a covariate key were both given", "pass one of them (--name or --covariate-key)")
    if key is None:
        if not name:
            raise InclustError("no covariate for the new cells", "pass a category name (--name) or an obs column (--covariate-key)")
        return np.full(cells.n_cells, str(name), dtype=object)
    if key not in cells.obs.columns:
        raise InclustError(f"the data has no obs column {key!r}", f"obs columns are: {', '.join(map(str, cells.obs.columns)) or 'none'}")
    col = cells.obs[key]
    missing = int(col.isna().sum())
    if missing:
        raise InclustError(f"obs column {key!r} has {missing} missing value(s)", "fill them (e.g. with 'unknown') or drop those cells")
    return col.astype(str).to_numpy().astype(object)
