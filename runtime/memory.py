"""In-memory AnnData/MuData as runtime input: the same readers, alignment and checks as files.

:class:`MemoryInput` quacks like :class:`~inclust_plus.runtime.inputs.InputData`, so the file
runtime's own pieces do the work unchanged: :func:`~inclust_plus.runtime.inputs._align` matches
features by name (any order, extra features ignored, duplicates and missing ones are one-line
errors), :class:`~inclust_plus.runtime.matrices.DenseRows` / :class:`~inclust_plus.runtime.matrices.CsrRows`
fill chunks (a numpy array and a CSR matrix's three arrays stand in for the h5py datasets), and
:func:`~inclust_plus.runtime.chunks.chunk_reader` checks and preprocesses them, so numbers equal
``inclust-run`` on the same cells.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from inclust_plus.errors import InclustError, names_shown

from .chunks import chunk_reader
from .inputs import AlignedParts, _align, read_modalities
from .manifest import GraphEntry
from .matrices import CsrRows, DenseRows, MatrixRows
from .preprocess import counts_modalities, non_integer_warning


def element(adata, layer: str | None, label: str):
    """``adata.X`` or ``adata.layers[layer]``, with one-line errors."""
    if layer is not None:
        if layer not in adata.layers:
            raise InclustError(f"{label} has no layer {layer!r}", f"layers: {names_shown(adata.layers) or 'none'}")
        return adata.layers[layer]
    if adata.X is None:
        raise InclustError(f"{label} has no X", "pass layer= to read another matrix")
    return adata.X


def view_sources(views, layer) -> list[tuple]:
    """(matrix read, var names, var table, layers) of each AnnData a result was computed from: what
    the output side (:func:`inclust_plus.results.decoded_anndata`) carries over."""
    return [(element(v, layer, label), [str(n) for n in v.var_names], v.var, dict(v.layers)) for v, label in views]


class _Arrays(dict):
    """A dict of arrays with a ``name``, standing in for the h5py group of a CSR matrix."""

    name = "in-memory matrix"


class _Copies:
    """An array whose slices are copies, as h5py's are: the sparse reader preprocesses the values
    it reads in place, which must never touch the caller's AnnData."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        return np.array(self.array[key], copy=True)


def matrix_rows(matrix) -> MatrixRows:
    """Row readers over an in-memory dense or sparse matrix (CSC/COO are converted to CSR once)."""
    if sp.issparse(matrix):
        csr = matrix if matrix.format == "csr" else matrix.tocsr()
        return CsrRows(_Arrays(data=_Copies(csr.data), indices=csr.indices, indptr=csr.indptr), csr.shape)
    if hasattr(matrix, "to_memory"):  # anndata backed arrays
        matrix = matrix.to_memory()
    array = np.asarray(matrix)
    if array.dtype.kind not in "biuf":
        raise InclustError(f"the matrix holds {array.dtype} values, not numbers", "pass a numeric matrix")
    return DenseRows(array)


class _ObsColumns:
    """The ``attrs`` the covariate resolver reads off an h5py obs group."""

    def __init__(self, obs: pd.DataFrame):
        self.attrs = {"column-order": [str(c) for c in obs.columns]}


def modality_views(adata, graph: GraphEntry) -> list[tuple[object, str]]:
    """(AnnData, label) per modality the graph reads: the AnnData itself, or MuData modalities."""
    if not hasattr(adata, "mod"):
        return [(adata, "the AnnData")]
    use = read_modalities(list(adata.mod), graph, "the MuData")
    first = adata.mod[use[0]].obs_names
    for m in use[1:]:
        if not adata.mod[m].obs_names.equals(first):
            raise InclustError("the MuData's modalities do not hold the same cells in the same order", "subset them to common cells (mudata intersect_obs) first")
    return [(adata.mod[m], f"modality {m!r}") for m in use]


def obs_table(adata, views) -> pd.DataFrame:
    """The obs to carry over: the MuData-wide obs joined with its first modality's columns when it
    matches the cells, else the first view's."""
    first = views[0][0].obs
    if not hasattr(adata, "mod") or not adata.obs.index.equals(first.index):
        return first
    extra = [c for c in first.columns if c not in adata.obs.columns]
    return adata.obs.join(first[extra]) if extra else adata.obs


def warn_non_integer(adata, graph: GraphEntry, layer: str | None, preprocessing: dict, stacklevel: int = 4) -> None:
    """Warn (once) when a counts model is given non-integer values, e.g. log-normalised X."""
    counts = [m for m in counts_modalities(preprocessing) if m in graph.input_modalities]
    if not counts:
        return
    for view, label in modality_views(adata, graph):
        text = non_integer_warning(element(view, layer, label)[:1000], counts[0])
        if text:
            warnings.warn(text, UserWarning, stacklevel=stacklevel)
            return


@dataclass
class MemoryInput(AlignedParts):
    """An opened in-memory input (the :class:`~inclust_plus.runtime.inputs.InputData` interface)."""

    n_obs: int
    frame: pd.DataFrame
    parts: list
    n_inputs: int
    missing: list[str] = field(default_factory=list)
    element: str = "X"
    path: object = None

    @property
    def obs(self) -> _ObsColumns:
        return _ObsColumns(self.frame)

    def covariate_column(self, key: str) -> pd.Categorical:
        if key not in self.frame.columns:
            raise InclustError(f"obs has no column {key!r}", f"columns: {names_shown([str(c) for c in self.frame.columns]) or 'none'}; or pass covariate=NAME")
        values = self.frame[key]
        if isinstance(values.dtype, pd.CategoricalDtype):
            cat = values.cat
            return pd.Categorical.from_codes(np.asarray(cat.codes), categories=[str(c) for c in cat.categories])
        return pd.Categorical(np.asarray(values).astype(str))

    def close(self) -> None:
        pass


def open_memory(adata, graph: GraphEntry, layer: str | None = None, allow_missing: bool = False, quiet: bool = False) -> MemoryInput:
    """Align ``adata`` (AnnData or MuData) to ``graph``'s inputs (``quiet``: no log line about missing features)."""
    views = modality_views(adata, graph)
    sources = []
    for view, label in views:
        if view.n_obs == 0:
            raise InclustError(f"{label} has no cells", "pass a non-empty AnnData")
        matrix = element(view, layer, label)
        rows = matrix_rows(matrix)
        names = [str(v) for v in view.var_names]
        sources.append((rows, names, f"{label} {'layers/' + layer if layer else 'X'}"))
    try:
        parts, missing = _align(graph, sources, allow_missing, quiet=quiet)
    except InclustError as err:
        raise InclustError(err.problem, err.fix.replace("pass --allow-missing", "pass allow_missing=True") if err.fix else None) from None
    obs = obs_table(adata, views)
    return MemoryInput(n_obs=views[0][0].n_obs, frame=obs, parts=parts, n_inputs=len(graph.input_features), missing=missing,
                       element=f"layers/{layer}" if layer else "X")


def read_rows(data: MemoryInput, plan, rows: int = 8192) -> sp.csr_matrix:
    """Every cell of an opened input as the graph takes it (checked, preprocessed by ``plan``), as
    CSR float32 [cells, graph inputs], read chunk by chunk through the run loop's own reader."""
    read = chunk_reader(data, plan, f"the AnnData {data.element}")
    buf = np.zeros((min(rows, data.n_obs), data.n_inputs), np.float32)
    blocks = [sp.csr_matrix(read(s, min(data.n_obs, s + rows), buf)) for s in range(0, data.n_obs, rows)]
    return sp.vstack(blocks, format="csr", dtype=np.float32) if len(blocks) != 1 else blocks[0]
