"""One chunk of the honest output layout, built from the input rows the chunk reader has already read.

The layout (:mod:`.layout`) writes, besides the model's values, the measured values of the output
features (X), the input's layers over them, and, for ``--output-scale counts``, needs each cell's
library size. All of that comes from the input. Issue 14's first version read it again, a second
time per chunk, from its own handles on the file: 1.63x the old layout's time on a MERFISH-panel
impute. Now the chunk reader hands every matrix's rows to a :class:`ChunkTap` as it reads them
(as stored, before it converts or preprocesses them in place, :mod:`.matrices`), and the tap
takes what the layout needs right there; :meth:`ChunkTap.finish` reads only what the graph input
did not read (a layer, a modality the graph does not take) and gives a :class:`LayoutChunk`.

The pieces are computed by the same operations, in the same order, as reading them again did, so
the output is the same to the byte (tests/test_runtime_layout_tap.py). Memory: a tap keeps the
finished pieces (CSR over the output features) and, only while the chunk is read, one dense
scratch per dense-mode target; :meth:`Target.bytes_per_row` is what the run loop budgets for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from .matrices import CsrRows, RawCsr


def _same(a, b) -> bool:
    """One matrix, whether through the same reader object or another handle on the same element."""
    return a is b or (a.source is not None and a.source == b.source)


@dataclass
class Remap:
    """Where one CSR part's columns go among ``width`` output columns (-1: not an output)."""

    colmap: np.ndarray  # int32 [source columns]
    keeps_all: bool  # every source column is an output: nothing to drop
    increasing: bool  # the kept columns keep their order: canonical rows stay canonical

    @classmethod
    def of(cls, part) -> "Remap":
        colmap = np.full(part.rows.n_cols, -1, dtype=np.int32)
        colmap[part.src] = part.dst
        kept = colmap[colmap >= 0]
        return cls(colmap, bool((colmap >= 0).all()), bool((np.diff(kept) > 0).all()))


def csr_piece(raw: RawCsr, remap: Remap, n: int, width: int) -> sp.csr_matrix:
    """One CSR part's rows remapped onto ``width`` output columns.

    Works on the stored values only (about 4x faster than filling a dense block and compressing it
    again, benchmarks/output_layout.py); duplicates are summed as the dense path sums them. When
    nothing is dropped the kept-count pass is skipped, and rows the reader checked to be canonical
    stay canonical under an order-keeping map (so scipy need not check or sort them again); both
    shortcuts give the same arrays as the general path.
    """
    cols = remap.colmap[np.asarray(raw.indices)]
    data = np.array(raw.data, dtype=np.float32)  # a copy: the reader preprocesses its own values in place
    if remap.keeps_all:
        indptr = raw.indptr
    else:
        keep = cols >= 0
        kept_before = np.empty(len(keep) + 1, dtype=np.int64)  # kept values before each stored one
        kept_before[0] = 0
        np.cumsum(keep, out=kept_before[1:])
        indptr = kept_before[raw.indptr]
        data, cols = data[keep], cols[keep]
    piece = sp.csr_matrix((data, cols, indptr), shape=(n, width))
    if raw.canonical and remap.increasing:
        piece.has_canonical_format = True  # strictly increasing rows, mapped in order: nothing to sum or sort
    piece.sum_duplicates()  # also sorts the column indices of each row
    return piece


@dataclass
class Target:
    """One matrix of the output built from the input: measured values, a carried layer, or library sizes' raw input.

    ``parts`` are the aligned parts of its input (:class:`~.inputs.Part`). When every part is CSR
    the stored values are remapped (:func:`csr_piece`); otherwise a ``[cells, width]`` block is
    filled and compressed, as the layout always did for dense input. ``dense=True`` (the library
    sizes' raw input) keeps the block as it is.
    """

    parts: list
    width: int
    dense: bool = False  # keep the block dense (library sizes) instead of compressing it
    remaps: list = field(default_factory=list)

    def __post_init__(self):
        self.csr_mode = not self.dense and bool(self.parts) and all(isinstance(p.rows, CsrRows) for p in self.parts)
        if self.csr_mode:
            self.remaps = [Remap.of(p) for p in self.parts]

    def bytes_per_row(self) -> int:
        """Bytes a chunk in flight holds for this target per cell (finished CSR, or dense scratch while read)."""
        if self.dense:
            return 4 * self.width
        stored = sum(p.rows.values_per_row() for p in self.parts)  # per cell, over all of the parts' columns
        held = 8 * min(float(self.width), stored) + 8  # float32 values + int32 indices, indptr
        if not self.csr_mode:
            return int(held + 4 * (self.width + stored))  # while built: the dense scratch and the rows read
        dropping = not all(r.keeps_all for r in self.remaps)
        return int(held + (17 * stored if dropping else 0))  # while built: mapped columns, kept counts, the filtered copies


class ChunkTap:
    """Collects one chunk's layout pieces from the rows the chunk reader reads; call it as the reader's ``tap``."""

    def __init__(self, targets: dict[str, Target], start: int, stop: int):
        self.targets, self.start, self.stop = targets, start, stop
        self.pieces: dict[str, dict[int, sp.csr_matrix]] = {name: {} for name in targets}
        self.blocks: dict[str, np.ndarray] = {}
        self.filled: dict[str, set[int]] = {name: set() for name in targets}

    def _block(self, name: str) -> np.ndarray:
        block = self.blocks.get(name)
        if block is None:
            block = self.blocks[name] = np.zeros((self.stop - self.start, self.targets[name].width), np.float32)
        return block

    def __call__(self, rows, raw) -> None:
        n = self.stop - self.start
        for name, target in self.targets.items():
            for i, p in enumerate(target.parts):
                if not _same(rows, p.rows):
                    continue
                if target.csr_mode:
                    self.pieces[name][i] = csr_piece(raw, target.remaps[i], n, target.width)
                else:
                    raw.fill(p.src, p.dst, self._block(name))
                self.filled[name].add(i)

    def finish(self) -> "LayoutChunk":
        """Read what no tap brought (a matrix the graph input does not read) and assemble the chunk."""
        n, start, stop = self.stop - self.start, self.start, self.stop
        out: dict[str, object] = {}
        for name, target in self.targets.items():
            missing = [i for i in range(len(target.parts)) if i not in self.filled[name]]
            if target.csr_mode:
                pieces = self.pieces[name]
                for i in missing:
                    pieces[i] = csr_piece(target.parts[i].rows.raw(start, stop), target.remaps[i], n, target.width)
                ordered = [pieces[i] for i in range(len(target.parts))]
                out[name] = ordered[0] if len(ordered) == 1 else sp.csr_matrix(sum(ordered[1:], ordered[0]), dtype=np.float32)
                continue
            block = self._block(name)
            for i in missing:
                p = target.parts[i]
                p.rows.fill(start, stop, p.src, p.dst, block)
            out[name] = block if target.dense else sp.csr_matrix(block)
        self.pieces, self.blocks = {}, {}
        return LayoutChunk(out)


@dataclass
class LayoutChunk:
    """A chunk's matrices by target name (CSR over the output features; the library block dense)."""

    matrices: dict
    library: dict | None = None  # library sizes once computed from the library block (:meth:`.layout.Layout.chunk`)
