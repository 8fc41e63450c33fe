"""The checkpoint's preprocessing, restricted to one graph's input columns.

With ``--fold-preprocessing`` a graph takes raw values and repeats what training did
(docs/ARCHITECTURE.md): per modality ``x / sum(x) * normalize_total`` (sum over that modality's
columns present in the graph's input; a zero sum counts as 1, as in training), then ``log1p``,
then ``x / scale[j]``. The last step is linear per column, so it is folded into the first
encoder weight (``W[:, j] / scale_j``) instead of becoming graph ops; only the first two need ops.

Columns are handled in *runs*: maximal stretches of consecutive input columns from one modality.
The graph splits x into runs, so no mask or indicator constant is ever needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inclust_plus.errors import InclustError

from .combinations import feature_modalities


@dataclass(frozen=True)
class ModalityPrep:
    name: str
    normalize_total: float | None
    log1p: bool

    @property
    def has_ops(self) -> bool:
        return self.normalize_total is not None or self.log1p


@dataclass(frozen=True)
class PreprocessPlan:
    """Preprocessing of one graph's input columns."""

    runs: tuple[tuple[int, int, int], ...]  # (start, end, group) over input columns
    groups: tuple[ModalityPrep, ...]  # one per modality present in the input
    scale: np.ndarray | None  # [n_inputs] divisor per input column, None when no modality scales

    @property
    def has_ops(self) -> bool:
        """Whether the graph needs nodes before the first layer (the scale alone is folded)."""
        return any(g.has_ops for g in self.groups)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Reference implementation (float64, cast to float32) used by the parity checks."""
        x = np.asarray(raw, dtype=np.float64).copy()
        for g, prep in enumerate(self.groups):
            cols = np.concatenate([np.arange(s, e) for s, e, grp in self.runs if grp == g])
            part = x[:, cols]
            if prep.normalize_total is not None:
                lib = part.sum(axis=1, keepdims=True)
                lib[lib == 0] = 1.0
                part = part / lib * prep.normalize_total
            if prep.log1p:
                part = np.log1p(part)
            x[:, cols] = part
        if self.scale is not None:
            x = x / self.scale[None, :]
        return x.astype(np.float32)


IDENTITY = PreprocessPlan(runs=(), groups=(), scale=None)
"""The plan of a graph that takes already preprocessed values."""


def build_plan(description: dict, inputs: tuple[int, ...]) -> PreprocessPlan:
    """Plan for the input columns ``inputs`` (global feature indices) of one graph."""
    _, mods = feature_modalities(description)
    offsets: dict[str, int] = {}
    counts: dict[str, int] = {}
    pos = 0
    for m in description["schema"]["modalities"]:
        offsets[m["name"]] = pos
        counts[m["name"]] = len(m["features"])
        pos += len(m["features"])
    all_prep = description.get("preprocessing") or {}

    groups: list[ModalityPrep] = []
    group_of: dict[str, int] = {}
    runs: list[list[int]] = []
    scale = np.ones(len(inputs), dtype=np.float64)
    any_scale = False
    for col, feat in enumerate(inputs):
        mod = mods[feat]
        prep = all_prep.get(mod) or {}
        if mod not in group_of:
            group_of[mod] = len(groups)
            total = prep.get("normalize_total")
            groups.append(ModalityPrep(mod, None if total is None else float(total), bool(prep.get("log1p", False))))
        g = group_of[mod]
        if runs and runs[-1][2] == g and runs[-1][1] == col:
            runs[-1][1] = col + 1
        else:
            runs.append([col, col + 1, g])
        if prep.get("scale") is not None:
            sc = prep["scale"]
            if len(sc) != counts[mod]:
                raise InclustError(
                    f"checkpoint preprocessing.{mod}.scale has {len(sc)} values for {counts[mod]} features",
                    "re-run inclust-train",
                )
            value = float(sc[feat - offsets[mod]])
            if not np.isfinite(value) or value == 0:
                raise InclustError(f"checkpoint preprocessing.{mod}.scale has a zero or non-finite value", "re-run inclust-train")
            scale[col] = value
            any_scale = True
    return PreprocessPlan(
        runs=tuple((s, e, g) for s, e, g in runs),
        groups=tuple(groups),
        scale=scale if any_scale else None,
    )
