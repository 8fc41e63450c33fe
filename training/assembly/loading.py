"""Read one dataset (AnnData or MuData) into per-modality matrices, with its covariate and labels.

All input validation lives here, so every problem is reported before training starts, in one line
that names the dataset, the problem and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas and scipy are imported on use (inclust_plus/sparse.py says why)
    import pandas as pd
    import scipy.sparse as sp

from inclust_plus import COVARIATE_JOIN
from inclust_plus.errors import InclustError

from inclust_plus.training.config import DatasetConfig


@dataclass
class LoadedDataset:
    """A dataset after validation: one matrix per measured modality, cells in the same order."""

    name: str
    obs_names: np.ndarray
    matrices: dict[str, sp.csr_matrix]  # modality -> cells x features (raw values)
    features: dict[str, list[str]]  # modality -> feature names
    covariate: np.ndarray  # str per cell
    labels: np.ndarray | None  # object per cell, None where unlabeled
    preprocessed: bool

    @property
    def n_cells(self) -> int:
        return len(self.obs_names)


def read_cells(path: str | Path, label: str = ""):
    """An AnnData (.h5ad) or MuData (.h5mu) from disk, with a one-line error for anything else.

    ``label`` starts each error (e.g. "dataset 'ref': "); the fix names where the path came from."""
    p = Path(path)
    if not p.is_file():
        fix = "check the path in the config" if label else "pass the path of an .h5ad or .h5mu file"
        raise InclustError(f"{label}{'file' if label else 'data file'} {p} does not exist", fix)
    try:
        if p.suffix == ".h5mu":
            import mudata

            with mudata.set_options(pull_on_update=False):
                return mudata.read_h5mu(p)
        import anndata

        return anndata.read_h5ad(p)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise InclustError(f"{label}cannot read {p} ({type(err).__name__})", "pass a valid .h5ad or .h5mu file") from None


def _read(cfg: DatasetConfig):
    if cfg.path is None:
        raise InclustError(f"dataset {cfg.name!r} has no path", "set path = \"file.h5ad\" in its [[datasets]] entry")
    return read_cells(cfg.path, f"dataset {cfg.name!r}: ")


def _matrix(adata, cfg: DatasetConfig, modality: str) -> tuple[sp.csr_matrix, list[str]]:
    import pandas as pd
    import scipy.sparse as sp

    where = f"dataset {cfg.name!r} modality {modality!r}"
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InclustError(f"{where} is empty ({adata.n_obs} cells x {adata.n_vars} features)", "remove it from the config or fix the file")
    if cfg.layer:
        if cfg.layer not in adata.layers:
            raise InclustError(f"{where} has no layer {cfg.layer!r}", f"layers are: {', '.join(adata.layers) or 'none'}")
        x = adata.layers[cfg.layer]
    else:
        x = adata.X
    if x is None:
        raise InclustError(f"{where} has no X", "store the values in X or name a layer")
    x = sp.csr_matrix(x, dtype=np.float32)
    names = [str(v) for v in adata.var_names]
    dup = pd.Index(names)[pd.Index(names).duplicated()]
    if len(dup):
        raise InclustError(f"{where} has duplicate feature names (e.g. {dup[0]!r})", "make var_names unique (adata.var_names_make_unique())")
    if not np.isfinite(x.data).all():
        raise InclustError(f"{where} contains NaN or infinite values", "remove or impute them before training")
    if (x.data < 0).any():
        raise InclustError(f"{where} contains negative values", "pass counts or non-negative normalised values (not z-scores)")
    return x, names


def _covariate(obs: pd.DataFrame, cfg: DatasetConfig, n: int) -> np.ndarray:
    if not cfg.covariate_keys:
        return np.full(n, cfg.covariate if cfg.covariate is not None else cfg.name, dtype=object)
    parts = []
    for key in cfg.covariate_keys:
        if key not in obs.columns:
            raise InclustError(f"dataset {cfg.name!r} has no covariate column {key!r}", f"obs columns are: {', '.join(map(str, obs.columns))}")
        col = obs[key]
        missing = int(col.isna().sum())
        if missing:
            raise InclustError(
                f"dataset {cfg.name!r}: covariate column {key!r} has {missing} missing value(s)",
                "fill them (e.g. with 'unknown') or drop those cells",
            )
        parts.append(col.astype(str).to_numpy())
    return np.array([COVARIATE_JOIN.join(vals) for vals in zip(*parts)], dtype=object)


def missing_label_column(dataset: str, key: str, columns) -> InclustError:
    """The one error for a label column a dataset lacks (a config file's label_key, InClust.setup's)."""
    return InclustError(f"dataset {dataset!r} has no label column {key!r}", f"obs columns are: {', '.join(map(str, columns))}")


def _labels(obs: pd.DataFrame, cfg: DatasetConfig) -> np.ndarray | None:
    if cfg.label_key is None:
        return None
    if cfg.label_key not in obs.columns:
        raise missing_label_column(cfg.name, cfg.label_key, obs.columns)
    col = obs[cfg.label_key]
    out = col.astype(object).to_numpy()
    missing = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
    out[missing] = None
    return np.array([None if v is None else str(v) for v in out], dtype=object)


def load_dataset(cfg: DatasetConfig, obj=None) -> LoadedDataset:
    """Validate one dataset given by ``cfg`` (read from ``cfg.path`` unless ``obj`` is passed)."""
    data = obj if obj is not None else _read(cfg)
    is_mudata = hasattr(data, "mod")
    if is_mudata:
        missing = [m for m in cfg.modalities if m not in data.mod]
        if missing:
            raise InclustError(f"dataset {cfg.name!r} has no modality {missing[0]!r}", f"its modalities are: {', '.join(data.mod)}")
        mods = {m: data.mod[m] for m in cfg.modalities}
        obs_names = np.asarray(data.obs_names)
        for m, ad in mods.items():
            if ad.n_obs != len(obs_names) or not np.array_equal(np.asarray(ad.obs_names), obs_names):
                raise InclustError(
                    f"dataset {cfg.name!r}: modality {m!r} does not hold the same cells as the MuData",
                    "keep only paired cells (mudata.pp.intersect_obs)",
                )
        obs = data.obs
        if obs.shape[1] == 0 or any(k not in obs.columns for k in cfg.covariate_keys + ([cfg.label_key] if cfg.label_key else [])):
            first = next(iter(mods.values())).obs
            obs = first if obs.shape[1] == 0 else obs.join(first, how="left", rsuffix="_mod")
    else:
        if len(cfg.modalities) != 1:
            raise InclustError(
                f"dataset {cfg.name!r} is an AnnData but lists modalities {cfg.modalities}",
                "an AnnData holds one modality; use a MuData (.h5mu) for several",
            )
        mods = {cfg.modalities[0]: data}
        obs_names = np.asarray(data.obs_names)
        obs = data.obs
    if len(obs_names) == 0:
        raise InclustError(f"dataset {cfg.name!r} is empty (0 cells)", "remove it from the config or fix the file")
    matrices, features = {}, {}
    for m, ad in mods.items():
        matrices[m], features[m] = _matrix(ad, cfg, m)
    return LoadedDataset(
        name=cfg.name,
        obs_names=obs_names,
        matrices=matrices,
        features=features,
        covariate=_covariate(obs, cfg, len(obs_names)),
        labels=_labels(obs, cfg),
        preprocessed=cfg.preprocessed,
    )
