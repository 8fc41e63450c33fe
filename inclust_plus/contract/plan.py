"""The per-graph preprocessing plan and the one numpy implementation of it.

Training preprocesses each modality in a fixed order (docs/ARCHITECTURE.md, "Preprocessing"):
``x / sum(x) * normalize_total`` (the sum over that modality's columns present), ``log1p``, then
``x / scale[j]``. Export writes, for every graph, which input columns belong to which modality and
those numbers restricted to the graph's columns (:class:`PreprocessPlan`, the graph entry's
``preprocessing``); the runtime reads it back instead of re-deriving it from feature names.

:func:`apply` is the only implementation of that arithmetic: the runtime's dense path, export's
parity reference and training's numpy path (``training.assembly.preprocessing.transform``) all call it,
and the runtime's sparse fast path (runtime/chunks.py) does the same float32 steps on stored
values, with its numbers taken from the same plan. Guards, so valid input never gives NaN: a cell
whose modality sums to 0 stays all zeros (training's "a zero library counts as 1" gives the same
zeros), and a scale of 0 divides by 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class ModalityPlan:
    """One modality's columns of a graph's input and what to do to them."""

    name: str
    runs: tuple[tuple[int, int], ...]  # [start, end) stretches of consecutive input columns
    normalize_total: float | None = None
    log1p: bool = False
    scale: tuple[float, ...] | None = None  # one divisor per column of this modality, in column order

    @property
    def has_ops(self) -> bool:
        """Whether the graph (or the runtime) has anything to do besides the scale (which folds into weights)."""
        return self.normalize_total is not None or self.log1p

    @property
    def does_something(self) -> bool:
        return self.has_ops or self.scale is not None

    @property
    def n_columns(self) -> int:
        return sum(e - s for s, e in self.runs)

    @cached_property
    def columns(self) -> np.ndarray:
        """The input columns of this modality, increasing (computed once, read-only)."""
        cols = np.concatenate([np.arange(s, e, dtype=np.intp) for s, e in self.runs]) if self.runs else np.zeros(0, dtype=np.intp)
        cols.flags.writeable = False
        return cols

    @cached_property
    def divisor(self) -> np.ndarray | None:
        """The float32 scale per column with the zero guard (0 divides by 1), or None (computed once, read-only)."""
        if self.scale is None:
            return None
        s = np.asarray(self.scale, dtype=np.float32)
        out = np.where(s == 0, np.float32(1), s).astype(np.float32)
        out.flags.writeable = False
        return out


@dataclass(frozen=True)
class PreprocessPlan:
    """Preprocessing of one graph's input columns: one :class:`ModalityPlan` per modality present."""

    groups: tuple[ModalityPlan, ...] = ()

    @property
    def n_inputs(self) -> int:
        return sum(g.n_columns for g in self.groups)

    @property
    def runs(self) -> tuple[tuple[int, int, int], ...]:
        """Every run as (start, end, group index), in column order (how the ONNX builder splits x)."""
        return tuple(sorted((s, e, i) for i, g in enumerate(self.groups) for s, e in g.runs))

    @property
    def has_ops(self) -> bool:
        """Whether a graph needs nodes before the first layer (the scale alone is folded into it)."""
        return any(g.has_ops for g in self.groups)

    @property
    def active(self) -> tuple[ModalityPlan, ...]:
        """The groups that change values (what the runtime applies)."""
        return tuple(g for g in self.groups if g.does_something)

    def columns_by_modality(self) -> dict[str, np.ndarray]:
        """Each modality's input columns (what a library size sums over)."""
        return {g.name: g.columns for g in self.groups}

    @property
    def scale(self) -> np.ndarray | None:
        """float64 divisor per input column (1 outside scaled modalities), None when none scales."""
        if all(g.scale is None for g in self.groups):
            return None
        out = np.ones(self.n_inputs, dtype=np.float64)
        for g in self.groups:
            if g.scale is not None:
                s = np.asarray(g.scale, dtype=np.float64)
                out[g.columns] = np.where(s == 0, 1.0, s)
        return out

    @classmethod
    def single(cls, n_columns: int, name: str = "x", normalize_total: float | None = None, log1p: bool = False,
               scale=None) -> "PreprocessPlan":
        """A plan of one modality covering all ``n_columns`` columns (training's per-modality path)."""
        runs = ((0, n_columns),) if n_columns else ()
        sc = None if scale is None else tuple(float(v) for v in np.asarray(scale).ravel())
        total = None if normalize_total is None else float(normalize_total)
        return cls((ModalityPlan(name, runs, total, bool(log1p), sc),))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """A preprocessed float32 copy of ``raw`` [cells, inputs] (export's parity reference)."""
        return apply(np.array(raw, dtype=np.float32, copy=True), self)


IDENTITY = PreprocessPlan()
"""The plan of a graph that takes already preprocessed values (nothing to do)."""


def _block(x: np.ndarray, group: ModalityPlan):
    """A view of the group's columns when they are one run (in place), else their column indices."""
    if len(group.runs) == 1:
        s, e = group.runs[0]
        return slice(s, e)
    return group.columns


def apply(x: np.ndarray, plan: PreprocessPlan) -> np.ndarray:
    """Apply ``plan`` to the float32 array ``x`` [cells, inputs] in place and return it.

    Library sizes are summed in float64; the per-cell factor ``normalize_total / sum`` (0 for an
    empty cell) is cast to float32 and multiplied in; ``log1p`` and the division by the scale are
    float32. :class:`runtime.chunks.SparseReader` repeats exactly these steps on stored values.
    """
    for group in plan.active:
        where = _block(x, group)
        block = x[:, where]
        if group.normalize_total is not None:
            total = block.sum(axis=1, keepdims=True, dtype=np.float64)
            factor = np.divide(group.normalize_total, total, out=np.zeros_like(total), where=total > 0)
            block *= factor.astype(np.float32)
        if group.log1p:
            np.log1p(block, out=block)
        divisor = group.divisor
        if divisor is not None:
            block /= divisor
        if not isinstance(where, slice):
            x[:, where] = block
    return x
