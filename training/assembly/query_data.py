"""New cells for a trained model (inclust-map's query), read through the runtime's input side.

Mapping a new batch (training/mapping.py) starts from cells the model never saw. They must enter
the network exactly as training data did and as ``inclust-run`` reads cells: features placed by
name into the model's global order (what the new data did not measure is zero and masked), values
checked and transformed by the checkpoint's preprocessing recipe (library size over the measured
features of the modality, log1p, the stored per-feature scale). All of that is the runtime's
(:func:`inclust_plus.runtime.open_memory` / ``read_rows`` / ``covariate_names``) on a graph over
the features the query has, built by the exporter's builders (training/torch_backend.py), so a
query gets the one-line errors ``inclust-run`` gives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from inclust_plus.contract.description import ModelDescription
from inclust_plus.errors import InclustError

from inclust_plus.training.torch_backend import query_graph


@dataclass
class QueryCells:
    """New cells laid out in the model's feature order."""

    x: sp.csr_matrix  # cells x n_features, preprocessed, zero where not measured
    measured: np.ndarray  # bool per global feature
    obs: object  # the cells' obs table (pandas DataFrame)
    source: object = None  # the runtime's opened input (for the covariate columns)

    @property
    def n_cells(self) -> int:
        return self.x.shape[0]

    def dense(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.x[start:stop].toarray(), dtype=np.float32)


def _names(data) -> set[str]:
    views = data.mod.values() if hasattr(data, "mod") else [data]
    return {str(v) for view in views for v in view.var_names}


def align_cells(description: ModelDescription, data, layer: str | None = None, preprocessed: bool = False) -> QueryCells:
    """Place ``data`` (AnnData or MuData) into the model's features and apply its preprocessing.

    ``preprocessed``: as in training (training/assembly/data.py), normalisation and log1p are skipped, never
    the stored per-feature scale.
    """
    from inclust_plus.runtime import open_memory, read_rows  # on use: the training process does not import pandas

    features = list(description.feature_names)
    if not _names(data) & set(features):
        raise InclustError("the data shares no feature names with the model", "var_names must use the model's feature identifiers")
    everything = query_graph(description, range(len(features)))
    first = open_memory(data, everything, layer, allow_missing=True, quiet=True)  # which of the model's features the data has
    missing = set(first.missing)
    inputs = [i for i, f in enumerate(features) if f not in missing]
    graph = query_graph(description, inputs)
    plan = graph.runtime_plan
    if preprocessed:
        plan = dataclasses.replace(plan, groups=tuple(dataclasses.replace(g, normalize_total=None, log1p=False) for g in plan.groups))
    cells = open_memory(data, graph, layer, quiet=True)
    x = read_rows(cells, plan).tocoo()
    full = sp.csr_matrix((x.data, (x.row, np.asarray(inputs, dtype=np.int64)[x.col])), shape=(cells.n_obs, len(features)), dtype=np.float32)
    measured = np.zeros(len(features), dtype=bool)
    measured[inputs] = True
    return QueryCells(x=full, measured=measured, obs=cells.frame, source=cells)


def covariate_values(cells: QueryCells, name: str | None, key: str | None) -> np.ndarray:
    """The covariate category of every cell: one ``name`` for all, or the values of obs column ``key``
    (several keys joined as training joined them, ``batch|tech``), read as ``inclust-run`` reads them."""
    from inclust_plus.runtime import covariate_names

    if name is not None and key is not None:
        raise InclustError("a covariate name and a covariate key were both given", "pass one of them (--name or --covariate-key)")
    if key is None:
        if not name:
            raise InclustError("no covariate for the new cells", "pass a category name (--name) or an obs column (--covariate-key)")
        return np.full(cells.n_cells, str(name), dtype=object)
    try:
        column = covariate_names(cells.source, key)
    except InclustError as err:  # the runtime names its own flag for one name for all cells
        fix = (err.fix or "").replace("--covariate NAME", "--name NAME").replace("covariate=NAME", "--name NAME")
        raise InclustError(err.problem, fix or None) from None
    return np.asarray(column.categories, dtype=object)[np.asarray(column.codes)]
