"""The checkpoint's preprocessing, restricted to one graph's input columns: the graph's plan.

Every graph entry of the manifest carries this plan (contract/plan.py ``PreprocessPlan``): which
input columns belong to which modality, and per modality ``normalize_total``, ``log1p`` and the
per-column scales. The runtime applies it to graphs exported without ``--fold-preprocessing``;
with it, the graph repeats it itself (docs/ARCHITECTURE.md): per modality
``x / sum(x) * normalize_total`` (a zero sum counts as 1, as in training), then ``log1p``, then
``x / scale[j]``. The last step is linear per column, so it is folded into the first encoder
weight (``W[:, j] / scale_j``) instead of becoming graph ops; only the first two need ops.

Columns are grouped in *runs*: maximal stretches of consecutive input columns from one modality.
The graph splits x into runs, so no mask or indicator constant is ever needed.
"""

from __future__ import annotations

import numpy as np

from inclust_plus.contract.description import ModelDescription, Recipe
from inclust_plus.contract.description_io import as_description
from inclust_plus.contract.plan import IDENTITY, ModalityPlan, PreprocessPlan
from inclust_plus.errors import InclustError

__all__ = ["IDENTITY", "PreprocessPlan", "build_plan"]


def build_plan(description: ModelDescription | dict, inputs: tuple[int, ...]) -> PreprocessPlan:
    """Plan for the input columns ``inputs`` (global feature indices) of one graph."""
    description = as_description(description)
    mods = description.feature_modalities
    ranges = {m.name: description.modality_range(m.name) for m in description.modalities}
    offsets = {name: start for name, (start, _) in ranges.items()}
    counts = {name: stop - start for name, (start, stop) in ranges.items()}
    all_prep = description.preprocessing

    order: list[str] = []
    runs: dict[str, list[list[int]]] = {}
    scales: dict[str, list[float]] = {}
    for col, feat in enumerate(inputs):
        mod = mods[feat]
        prep = all_prep.get(mod) or Recipe()
        if mod not in runs:
            order.append(mod)
            runs[mod], scales[mod] = [], []
        own = runs[mod]
        if own and own[-1][1] == col:
            own[-1][1] = col + 1
        else:
            own.append([col, col + 1])
        if prep.scale is not None:
            sc = prep.scale
            if len(sc) != counts[mod]:
                raise InclustError(
                    f"checkpoint preprocessing.{mod}.scale has {len(sc)} values for {counts[mod]} features",
                    "re-run inclust-train",
                )
            value = float(sc[feat - offsets[mod]])
            if not np.isfinite(value) or value == 0:
                raise InclustError(f"checkpoint preprocessing.{mod}.scale has a zero or non-finite value", "re-run inclust-train")
            scales[mod].append(value)
    groups = []
    for mod in order:
        prep = all_prep.get(mod) or Recipe()
        total = prep.normalize_total
        groups.append(ModalityPlan(
            name=mod,
            runs=tuple((s, e) for s, e in runs[mod]),
            normalize_total=None if total is None else float(total),
            log1p=prep.log1p,
            scale=tuple(scales[mod]) if prep.scale is not None else None,
        ))
    return PreprocessPlan(tuple(groups))
