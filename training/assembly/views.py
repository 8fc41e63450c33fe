"""Training rows ("views"): which features a cell is encoded from and which ones it must reconstruct.

A view is a pair of masks over the global feature order. Masks are not stored per cell: each row
keeps an index into a small table of distinct mask patterns (:class:`MaskTable`), so memory grows
with the number of patterns, never with cells x features.

Defaults follow the paper:
- without query datasets: every measured modality reconstructs everything its dataset measured
  (self-reconstruction plus translation to the modalities measured with it), plus one joint row;
- with query datasets (imputation, generation): every dataset is encoded from the features shared
  with the query datasets only, so reference and query cells are embedded from the same genes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inclust_plus.errors import InclustError


@dataclass
class MaskTable:
    """Distinct feature masks, each with a readable name (used for export combination names)."""

    masks: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, mask: np.ndarray, name: str) -> int:
        for i, m in enumerate(self.masks):
            if np.array_equal(m, mask):
                return i
        if name in self.names:
            name = f"{name}{len(self.names)}"
        self.masks.append(mask.copy())
        self.names.append(name)
        return len(self.masks) - 1

    def array(self) -> np.ndarray:
        return np.stack(self.masks).astype(np.float32)


@dataclass
class View:
    dataset: str
    input_pattern: int
    output_pattern: int


def modality_mask(slices: dict[str, slice], n_features: int, mods: list[str]) -> np.ndarray:
    mask = np.zeros(n_features, dtype=bool)
    for m in mods:
        mask[slices[m]] = True
    return mask


def _name(mask: np.ndarray, measured_by: dict[str, np.ndarray], slices: dict[str, slice], n: int, fallback: str) -> str:
    """'rna', 'rna_protein' for whole modalities; the dataset's name for a partial panel."""
    mods = [m for m, s in slices.items() if mask[s].any()]
    if np.array_equal(mask, modality_mask(slices, n, mods)):
        return "_".join(mods)
    for ds, measured in measured_by.items():
        if np.array_equal(mask, measured):
            return ds
    return fallback


def build_views(
    measured: dict[str, np.ndarray],
    modalities_of: dict[str, list[str]],
    slices: dict[str, slice],
    query: list[str],
    translation: bool,
    joint: bool,
) -> tuple[MaskTable, list[View]]:
    """Mask patterns and per-dataset views (see module docstring)."""
    n = len(next(iter(measured.values())))
    table, views = MaskTable(), []

    def add(ds: str, inp: np.ndarray, out: np.ndarray) -> None:
        if not inp.any():
            raise InclustError(
                f"dataset {ds!r} shares no features with the query datasets {query}",
                "check that feature names (var_names) match between datasets",
            )
        i = table.add(inp, _name(inp, measured, slices, n, f"{ds}_input"))
        o = table.add(out, _name(out, measured, slices, n, f"{ds}_output"))
        if not any(v.dataset == ds and v.input_pattern == i and v.output_pattern == o for v in views):
            views.append(View(ds, i, o))

    if query:
        shared = np.logical_and.reduce([measured[q] for q in query])
        for ds, meas in measured.items():
            add(ds, meas & shared, meas)
        return table, views
    for ds, meas in measured.items():
        mods = modalities_of[ds]
        for m in mods:
            inp = meas & modality_mask(slices, n, [m])
            out = meas if translation else inp
            add(ds, inp, out)
        if joint and len(mods) > 1:
            add(ds, meas, meas)
    return table, views
