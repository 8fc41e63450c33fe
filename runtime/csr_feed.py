"""Chunks fed to CSR graphs (issue 11): a chunk's stored entries, never densified on the host.

A CSR graph (docs/ARCHITECTURE.md, "Flavours") takes ``values`` float32, ``indices`` int32 and
``rows`` int32 per batch. :func:`csr_chunk_reader` gives a chunk as a :class:`CsrChunk` (entries in
cell order, each cell's columns increasing and unique), straight from a CSR input through
:meth:`.chunks.SparseReader.read_csr`, or from the dense path (other layouts, or a chunk that
path must handle: rejected values, duplicate entries) by taking the non-zeros of the dense chunk.
The entries are copied into buffers owned by the chunk's buffer set, so that the same (possibly
page-locked, :mod:`.pinned`) memory is reused chunk after chunk; :meth:`CsrChunk.batch` slices
one batch out of it without copying.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .chunks import SparseReader
from .inputs import InputData
from .preprocess import PreprocessPlan, apply_preprocessing, check_values


@dataclass
class CsrBuffers:
    """Reusable entry buffers of one chunk in flight; grown (and re-registered) only when a chunk needs more."""

    values: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    indices: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    dense: np.ndarray | None = None  # scratch for the dense path, allocated on first use
    on_grow: Callable[[list[np.ndarray]], None] | None = None  # e.g. page-lock the new buffers

    def ensure(self, nnz: int) -> None:
        if nnz <= len(self.values):
            return
        cap = max(nnz, int(len(self.values) * 1.5), 1024)
        self.values, self.indices, self.rows = np.empty(cap, np.float32), np.empty(cap, np.int32), np.empty(cap, np.int32)
        if self.on_grow is not None:
            self.on_grow([self.values, self.indices, self.rows])


@dataclass
class CsrChunk:
    """Entries of cells ``0..n-1`` of a chunk; ``offsets[i]`` is where cell i's entries start."""

    n: int
    offsets: np.ndarray  # int64 [n + 1]
    values: np.ndarray
    indices: np.ndarray
    rows: np.ndarray  # chunk-local cell of each entry

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Feeds of cells ``start..stop-1`` (views; ``rows`` made batch-local in place)."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        rows = self.rows[lo:hi]
        if start:
            rows -= np.int32(start)
        return {"values": self.values[lo:hi], "indices": self.indices[lo:hi], "rows": rows}


def _fill(bufs: CsrBuffers, counts: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> CsrChunk:
    n, nnz = len(counts), len(vals)
    bufs.ensure(nnz)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    bufs.values[:nnz] = vals
    bufs.indices[:nnz] = cols
    bufs.rows[:nnz] = np.repeat(np.arange(n, dtype=np.int32), counts)
    return CsrChunk(n, offsets, bufs.values[:nnz], bufs.indices[:nnz], bufs.rows[:nnz])


def dense_to_csr(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values per cell, columns, values) of the non-zeros of a dense chunk, in row-major order."""
    r, c = np.nonzero(x)
    return np.bincount(r, minlength=x.shape[0]), c, x[r, c]


def csr_chunk_reader(data: InputData, plan: PreprocessPlan, source: str) -> Callable[..., CsrChunk]:
    """``read(start, stop, bufs, tap=None)``: the chunk's checked and preprocessed entries as a
    :class:`CsrChunk`; ``tap`` as in :func:`.chunks.chunk_reader`."""
    sparse = SparseReader(data, plan) if SparseReader.applies(data) else None

    def read(start: int, stop: int, bufs: CsrBuffers, tap=None) -> CsrChunk:
        if sparse is not None:
            got = sparse.read_csr(start, stop, tap)
            if got is not None:
                return _fill(bufs, *got)
        if bufs.dense is None or len(bufs.dense) < stop - start:
            bufs.dense = np.zeros((stop - start, data.n_inputs), np.float32)
        x = data.read(start, stop, bufs.dense, tap)
        check_values(x, start, source)
        apply_preprocessing(x, plan)
        return _fill(bufs, *dense_to_csr(x))

    return read
