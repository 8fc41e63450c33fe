"""Row-chunk readers for the matrices an h5ad can hold: dense, CSR, CSC, or an obsm data frame.

They read straight from h5py so that memory is bounded by one chunk, never by the cell count:
a dense chunk is a row slice; a CSR chunk is the ``data``/``indices`` slice between two
``indptr`` entries (``indptr`` itself, 8 bytes a cell, is read once). CSC cannot be row-sliced
cheaply, so only the needed columns are loaded (memory grows with their non-zeros) and a warning
suggests converting to CSR.

Each reader fills ``out[:, dst] = M[rows, src]`` for column maps computed by the caller. Dense and
CSR readers can also hand the rows they read, as stored (:class:`RawDense`, :class:`RawCsr`), to a
``tap(rows, raw)`` before anything is done with them: the output layout takes the measured values
and carried layers from there, so the input is read once (:mod:`.layout_chunk`). ``source`` names
the element a reader reads (file, HDF5 path), so that two handles on one element are recognised.

Sparse structure is checked, so a corrupt or hand-made file is an error instead of silently
wrong cells: ``indptr`` once at open (starts at 0, never decreases, ends at the stored-value
count), the indices of each chunk as it is read (within the matrix; a vectorised min/max over
the chunk, or over each row's first and last index where rows are known to be sorted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import scipy.sparse as sp

from inclust_plus.errors import InclustError

log = logging.getLogger("inclust_plus.runtime")


def _attr(obj, key: str, default=None):
    value = obj.attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class RawDense:
    """Rows of a dense matrix as read (all columns, stored dtype)."""

    block: np.ndarray

    def fill(self, src: np.ndarray, dst: np.ndarray, out: np.ndarray) -> None:
        out[: len(self.block), dst] = self.block[:, src]


@dataclass
class RawCsr:
    """Rows of a CSR matrix as read: stored values (stored dtype), checked column indices, ``indptr``
    from 0; ``canonical`` when each row's indices are known to be strictly increasing."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    n_cols: int
    canonical: bool = False

    def fill(self, src: np.ndarray, dst: np.ndarray, out: np.ndarray) -> None:
        m = sp.csr_matrix((self.data, self.indices, self.indptr), shape=(len(self.indptr) - 1, self.n_cols))
        out[: m.shape[0], dst] = m[:, src].toarray()


Tap = Callable[["MatrixRows", "RawDense | RawCsr"], None]


class MatrixRows:
    """Base: ``n_rows``, ``n_cols``, average stored values per row, and ``fill``."""

    n_rows: int
    n_cols: int
    names: list[str] | None = None  # column names when the element carries them (obsm data frames)
    source: tuple[str, str] | None = None  # (file, element) of an h5py element; None in memory

    def values_per_row(self) -> float:
        return float(self.n_cols)

    def fill(self, start: int, stop: int, src: np.ndarray, dst: np.ndarray, out: np.ndarray, tap: Tap | None = None) -> None:
        raise NotImplementedError


class DenseRows(MatrixRows):
    def __init__(self, ds: h5py.Dataset):
        if ds.ndim != 2:
            raise InclustError(f"{ds.name} is not a 2-D matrix (shape {ds.shape})", "pass a cells x features matrix")
        self.ds = ds
        self.n_rows, self.n_cols = (int(s) for s in ds.shape)

    def fill(self, start, stop, src, dst, out, tap=None):
        raw = RawDense(self.ds[start:stop])
        if tap is not None:
            tap(self, raw)
        raw.fill(src, dst, out)


def check_indptr(group: h5py.Group, indptr: np.ndarray, n_major: int, kind: str) -> None:
    """``indptr`` of a CSR (rows) or CSC (columns) matrix: length, start 0, monotone, in range."""
    fix = "re-write the h5ad with anndata or scanpy"
    for part in ("indices", "indptr"):  # float positions would index wrongly or fail deep in numpy (issue 25)
        dtype = group[part].dtype
        if dtype.kind not in "iu":
            raise InclustError(f"{group.name} is a corrupt {kind} matrix ({part} stored as {dtype}, not integers)", fix)
    n_stored = min(group["data"].shape[0] if group["data"].ndim else 0, group["indices"].shape[0] if group["indices"].ndim else 0)
    if indptr.ndim != 1 or indptr.shape[0] != n_major + 1:
        raise InclustError(f"{group.name} is a corrupt {kind} matrix (indptr length {indptr.shape[0] if indptr.ndim else 0} for {n_major} {'rows' if kind == 'CSR' else 'columns'})", fix)
    if indptr[0] != 0:
        raise InclustError(f"{group.name} is a corrupt {kind} matrix (indptr starts at {indptr[0]}, not 0)", fix)
    step = np.diff(indptr)
    if (step < 0).any():
        at = int(np.argmax(step < 0))
        raise InclustError(f"{group.name} is a corrupt {kind} matrix (indptr decreases at position {at + 1})", fix)
    if indptr[-1] > n_stored or group["data"].shape != group["indices"].shape:
        raise InclustError(f"{group.name} is a corrupt {kind} matrix (indptr ends at {indptr[-1]}, data has {group['data'].shape[0]} values and indices {group['indices'].shape[0]})", fix)


def check_indices(idx: np.ndarray, bound: int, where: str, first_row: int = 0, indptr: np.ndarray | None = None) -> None:
    """Every index in ``[0, bound)``; the error names the first offending cell when ``indptr`` is given."""
    if idx.size == 0:
        return
    lo, hi = idx.min(), idx.max()
    if lo >= 0 and hi < bound:
        return
    bad = int(np.argmax((idx < 0) | (idx >= bound)))
    cell = "" if indptr is None else f" in cell {first_row + int(np.searchsorted(indptr, bad, side='right')) - 1}"
    raise InclustError(f"{where} is a corrupt sparse matrix (index {int(idx[bad])}{cell} outside 0..{bound - 1})", "re-write the h5ad with anndata or scanpy")


class CsrRows(MatrixRows):
    def __init__(self, group: h5py.Group, shape: tuple[int, int]):
        self.name = group.name
        self.data, self.indices = group["data"], group["indices"]
        self.indptr = np.asarray(group["indptr"][()], dtype=np.int64)
        self.n_rows, self.n_cols = shape
        check_indptr(group, self.indptr, self.n_rows, "CSR")

    def values_per_row(self) -> float:
        return max(1.0, self.indptr[-1] / max(1, self.n_rows))

    def raw(self, start: int, stop: int) -> RawCsr:
        """Rows ``start:stop`` as stored (indices checked), for the dense fill or the output layout."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        local = self.indptr[start : stop + 1] - lo
        idx = self.indices[lo:hi]
        check_indices(idx, self.n_cols, self.name, start, local)
        return RawCsr(self.data[lo:hi], idx, local, self.n_cols)

    def fill(self, start, stop, src, dst, out, tap=None):
        raw = self.raw(start, stop)
        if tap is not None:
            tap(self, raw)
        raw.fill(src, dst, out)


class CscColumns(MatrixRows):
    """CSC input: the needed columns are loaded once (as CSR) and then sliced by rows."""

    def __init__(self, group: h5py.Group, shape: tuple[int, int]):
        self.group = group
        self.n_rows, self.n_cols = shape
        self.indptr = np.asarray(group["indptr"][()], dtype=np.int64)
        check_indptr(group, self.indptr, self.n_cols, "CSC")
        self._cache: tuple[bytes, sp.csr_matrix] | None = None
        log.warning("%s is stored column-wise (CSC): its needed columns are loaded into memory; store X as CSR to stream it", group.name)

    def values_per_row(self) -> float:
        return max(1.0, self.indptr[-1] / max(1, self.n_rows))

    def _columns(self, src: np.ndarray) -> sp.csr_matrix:
        key = src.tobytes()
        if self._cache is None or self._cache[0] != key:
            data, indices, ptr = [], [], [0]
            for j in src:
                lo, hi = int(self.indptr[j]), int(self.indptr[j + 1])
                data.append(np.asarray(self.group["data"][lo:hi], dtype=np.float32))
                rows = np.asarray(self.group["indices"][lo:hi])
                check_indices(rows, self.n_rows, f"{self.group.name} (column {int(j)})")
                indices.append(rows)
                ptr.append(ptr[-1] + hi - lo)
            cat = np.concatenate if data else (lambda parts: np.zeros(0))
            m = sp.csc_matrix((cat(data), cat(indices), np.asarray(ptr)), shape=(self.n_rows, len(src)))
            self._cache = (key, m.tocsr())
        return self._cache[1]

    def fill(self, start, stop, src, dst, out, tap=None):  # held in memory already: nothing to hand on
        out[: stop - start, dst] = self._columns(src)[start:stop].toarray()


class FrameRows(MatrixRows):
    """An obsm entry stored as a data frame: one dataset per named column."""

    def __init__(self, group: h5py.Group, n_rows: int):
        self.group = group
        order = _attr(group, "column-order")
        self.names = [c.decode() if isinstance(c, bytes) else str(c) for c in (order if order is not None else [])]
        self.n_rows, self.n_cols = n_rows, len(self.names)

    def fill(self, start, stop, src, dst, out, tap=None):  # column by column: the layout reads its own
        for s, d in zip(src, dst):
            col = self.group[self.names[int(s)]]
            if not isinstance(col, h5py.Dataset):
                raise InclustError(f"column {self.names[int(s)]!r} of {self.group.name} is not numeric", "store numeric features")
            out[: stop - start, d] = col[start:stop]


def matrix_rows(obj, n_obs: int) -> MatrixRows:
    """The reader for an h5ad matrix element (dense dataset, sparse group or obsm data frame)."""
    rows = _matrix_rows(obj, n_obs)
    rows.source = (str(Path(obj.file.filename).resolve()), obj.name)
    return rows


def _matrix_rows(obj, n_obs: int) -> MatrixRows:
    if isinstance(obj, h5py.Dataset):
        if obj.dtype.kind not in "biuf":
            raise InclustError(f"{obj.name} holds {obj.dtype} values, not numbers", "pass a numeric matrix")
        return DenseRows(obj)
    enc = _attr(obj, "encoding-type") or _attr(obj, "h5sparse_format")
    if enc in ("csr_matrix", "csr", "csc_matrix", "csc"):
        shape_attr = obj.attrs.get("shape", obj.attrs.get("h5sparse_shape"))
        if shape_attr is None or not all(k in obj for k in ("data", "indices", "indptr")):
            raise InclustError(f"{obj.name} is a corrupt sparse matrix", "re-write the h5ad")
        shape = (int(shape_attr[0]), int(shape_attr[1]))
        return CsrRows(obj, shape) if enc.startswith("csr") else CscColumns(obj, shape)
    if enc == "dataframe":
        return FrameRows(obj, n_obs)
    raise InclustError(f"{obj.name} has encoding {enc!r}, not a dense or sparse matrix", "pass X, a layer or an obsm matrix")
