"""Turn ``--covariate-key`` / ``--covariate`` / ``--target-covariate`` into per-cell category indices.

Covariate indices are kept compact (the obs column's own small integer codes plus a lookup table,
or one constant) and expanded to int64 one chunk at a time, so they cost about a byte per cell.
Every value is checked against the manifest's categories before any work starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from inclust_plus import COVARIATE_JOIN
from inclust_plus.errors import InclustError, names_shown

from .inputs import InputData
from .manifest import GraphEntry, Manifest

log = logging.getLogger("inclust_plus.runtime")


@dataclass
class Covariates:
    """Category indices for a range of cells: ``codes`` through ``lut``, or one ``constant``."""

    description: str
    constant: int | None = None
    codes: np.ndarray | None = None
    lut: np.ndarray | None = None

    def take(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        view = out[: stop - start]
        if self.constant is not None:
            view[:] = self.constant
        else:
            np.take(self.lut, self.codes[start:stop], out=view)
        return view


def category_indices(manifest: Manifest, names, flag: str) -> np.ndarray:
    """int64 indices of one category name or of one name per cell; a name the model lacks is the one
    error every door gives (``--covariate``, ``Predictor(covariate=)``, ``InClust.predict``)."""
    cats = manifest.covariate_categories
    lookup = {c: i for i, c in enumerate(cats)}
    values = [str(n) for n in np.atleast_1d(names)]
    unknown = next((v for v in values if v not in lookup), None)
    if unknown is not None:
        raise InclustError(f"{flag} {unknown!r} is not a covariate category of the model", f"known: {names_shown(list(cats))}")
    return np.array([lookup[v] for v in values], dtype=np.int64)


def _index(manifest: Manifest, name: str, flag: str) -> int:
    return int(category_indices(manifest, name, flag)[0])


def _columns(data) -> list[str]:
    return [c.decode() if isinstance(c, bytes) else str(c) for c in data.obs.attrs.get("column-order", [])]


def joined_column(data, keys: list[str], join: str) -> pd.Categorical:
    """Several obs columns as one covariate, each cell's values joined as training joined them
    (``batch|technology``); a cell empty in any of them is empty (code -1)."""
    cols = [data.covariate_column(k) for k in keys]
    codes = [np.asarray(c.codes, dtype=np.int64) for c in cols]
    dims = [max(1, len(c.categories)) for c in cols]
    empty = np.any([c < 0 for c in codes], axis=0)
    flat = np.ravel_multi_index([np.where(empty, 0, c) for c in codes], dims)
    combos, inverse = np.unique(flat, return_inverse=True)
    names = [join.join(str(col.categories[i]) for col, i in zip(cols, idx)) for idx in zip(*np.unravel_index(combos, dims))]
    return pd.Categorical.from_codes(np.where(empty, -1, inverse.reshape(-1)), categories=names)


def covariate_names(data, key: str, join: str = COVARIATE_JOIN) -> pd.Categorical:
    """Each cell's category name from the obs column ``key``, or, for a model with several covariate
    keys, from the join of the columns ``key`` names (``a|b``) when the input has no column of that
    very name; a cell empty in it is an error. (``inclust-map`` reads its new batches with it too.)"""
    if join in key and key not in _columns(data):
        column = joined_column(data, key.split(join), join)
    else:
        column = data.covariate_column(key)
    codes = np.asarray(column.codes)
    if (codes < 0).any():
        raise InclustError(f"obs column {key!r} is empty for {(codes < 0).sum()} cells", "fill it or pass --covariate NAME")
    return column


def resolve_covariates(manifest: Manifest, data: InputData, key: str | None, name: str | None, graph: GraphEntry | None = None) -> Covariates:
    """The covariate of every cell, from an obs column, a fixed name, or the model's default.

    The default is the model's covariate column when the input has it, else the covariate of the
    dataset whose feature panel the graph takes (e.g. ``merfish`` for ``merfish_to_rna``), else the
    only category.
    """
    if key and name:
        raise InclustError("--covariate-key and --covariate are exclusive", "pass one of them")
    if name:
        return Covariates(description=name, constant=_index(manifest, name, "--covariate"))
    if not key:
        cats = manifest.covariate_categories
        columns = _columns(data)
        keys = list(manifest.covariate_keys)
        if keys and all(k in columns for k in keys):
            key = manifest.covariate_join.join(keys)
            log.info("covariate taken from obs %s %s (the model's covariate key%s)", "columns" if len(keys) > 1 else "column",
                     ", ".join(map(repr, keys)), "s, joined" if len(keys) > 1 else "")
        elif len(cats) == 1:
            return Covariates(description=cats[0], constant=0)
        elif graph is not None and graph.default_covariate in cats:
            log.info("covariate %r: the dataset whose panel graph %r takes", graph.default_covariate, graph.name)
            return Covariates(description=graph.default_covariate, constant=cats.index(graph.default_covariate))
        else:
            raise InclustError(
                "the model was trained with several covariate categories and the input does not say which one its cells belong to",
                f"pass --covariate-key COL or --covariate NAME (known: {names_shown(list(cats))})",
            )
    column = covariate_names(data, key, manifest.covariate_join)
    codes = np.asarray(column.codes)
    used = [str(c) for c in np.asarray(column.categories)[np.unique(codes)]]
    unknown = [c for c in used if c not in manifest.covariate_categories]
    if unknown:
        raise InclustError(
            f"obs column {key!r} holds covariate categories the model does not know: {names_shown(unknown)}",
            f"known: {names_shown(list(manifest.covariate_categories))}; or pass --covariate NAME",
        )
    known = {c: i for i, c in enumerate(manifest.covariate_categories)}
    lut = np.asarray([known.get(str(c), -1) for c in column.categories], dtype=np.int64)
    return Covariates(description=f"obs[{key!r}]", codes=codes, lut=lut)


def resolve_target(manifest: Manifest, graph: GraphEntry, name: str | None) -> tuple[Covariates | None, str]:
    """Target covariate for decoding: the flag, else the graph's default, else each cell's own."""
    if not graph.decodes:
        if name:
            raise InclustError("--target-covariate only applies to impute/generate", "drop it for embed/annotate")
        return None, "none"
    chosen = name or graph.default_target_covariate
    if chosen is None:
        return None, "same as covariate"
    return Covariates(description=chosen, constant=_index(manifest, chosen, "--target-covariate" if name else "default target covariate")), chosen
