"""Check and preprocess one chunk of aligned input in numpy, in place.

Graphs exported without ``--fold-preprocessing`` expect preprocessed values, so the runtime
applies the manifest's preprocessing itself, per modality, in the documented order
(ARCHITECTURE.md, "Checkpoint"): ``x / sum(x) * normalize_total`` (sum over that modality's
input features), ``log1p``, ``x / scale[j]``. Graphs with folded preprocessing take raw values.

Guards, chosen so the runtime never emits NaN from valid input: a cell whose features sum to 0
stays all zeros, and a scale of 0 divides by 1.

Validation happens on the raw values before preprocessing: NaN/inf are always errors, and so are
negative values, because every inClust+ model is trained on counts or on values scaled to [0, 1]
(and log1p / library-size normalisation are undefined for negative input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inclust_plus.errors import InclustError

from .manifest import GraphSpec, Manifest


@dataclass(frozen=True)
class Step:
    """Preprocessing of one modality's block of input columns."""

    modality: str
    columns: np.ndarray  # positions in the graph's input vector
    normalize_total: float | None
    log1p: bool
    scale: np.ndarray | None  # one divisor per column in ``columns``


def _modality_features(manifest: Manifest) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """Each modality's ordered features (when known in full) and every name known to belong to it.

    A manifest may list the modalities (``modalities`` or ``schema.modalities``, as in the
    checkpoint). Otherwise they are derived from single-modality graphs: the longest feature list
    seen for a modality is its candidate order (accepted for per-feature scales only when its
    length equals the scale's), and the union of names seen gives membership.
    """
    raw = manifest.raw
    listed = raw.get("modalities") or (raw.get("schema") or {}).get("modalities")
    if listed:
        order = {m["name"]: list(m["features"]) for m in listed}
        return order, {m: set(f) for m, f in order.items()}
    order: dict[str, list[str]] = {}
    members: dict[str, set[str]] = {}
    for g in manifest.graphs:
        for mods, feats in ((g.input_modalities, g.input_features), (g.output_modalities, g.output_features)):
            if len(mods) == 1 and feats:
                members.setdefault(mods[0], set()).update(feats)
                if len(feats) > len(order.get(mods[0], ())):
                    order[mods[0]] = list(feats)
    return order, members


def _is_noop(spec: dict | None) -> bool:
    return not spec or (not spec.get("normalize_total") and not spec.get("log1p") and spec.get("scale") is None)


def plan_preprocessing(manifest: Manifest, graph: GraphSpec) -> list[Step]:
    """The steps to apply before feeding ``graph`` (empty when folded or when there is nothing to do)."""
    if graph.folded_preprocessing or all(_is_noop(s) for s in manifest.preprocessing.values()):
        return []
    features, members = _modality_features(manifest)
    feature_sets = manifest.raw.get("feature_sets") or {}
    # Real modalities behind the graph's inputs (an input may be a feature set such as a panel).
    mods: list[str] = []
    for m in graph.input_modalities:
        for real in (feature_sets.get(m) or {}).get("modalities") or [m]:
            if real not in mods:
                mods.append(real)
    columns: dict[str, list[int]] = {m: [] for m in mods}
    positions: dict[str, list[int]] = {m: [] for m in mods}
    index = {m: {f: i for i, f in enumerate(features[m])} for m in mods if m in features}
    for col, name in enumerate(graph.input_features):
        owner = next((m for m in mods if name in members.get(m, ())), None)
        if owner is None:
            if len(mods) != 1:
                raise InclustError(
                    f"cannot tell which modality input feature {name!r} of graph {graph.name!r} belongs to",
                    "re-export with --fold-preprocessing or with the modalities listed in the manifest",
                )
            owner = mods[0]
        columns[owner].append(col)
        positions[owner].append(index[owner][name] if owner in index and name in index[owner] else -1)
    steps = []
    for m in mods:
        spec = manifest.preprocessing.get(m)
        if _is_noop(spec) or not columns[m]:
            continue
        scale = None
        if spec.get("scale") is not None:
            full = np.asarray(spec["scale"], dtype=np.float64)
            pos = np.asarray(positions[m])
            if (pos < 0).any() or len(features.get(m, ())) != len(full):
                raise InclustError(
                    f"the manifest scales modality {m!r} per feature but does not list its features",
                    "re-export with --fold-preprocessing or with the modalities listed in the manifest",
                )
            s = full[pos]
            scale = np.where(s == 0, 1.0, s).astype(np.float32)
        steps.append(
            Step(
                modality=m,
                columns=np.asarray(columns[m], dtype=np.intp),
                normalize_total=float(spec["normalize_total"]) if spec.get("normalize_total") else None,
                log1p=bool(spec.get("log1p")),
                scale=scale,
            )
        )
    return steps


def check_values(x: np.ndarray, first_row: int, source: str) -> None:
    """Reject NaN/inf and negative values, naming the first offending cell."""
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise InclustError(f"{source} holds NaN or infinite values (first in cell {first_row + row})", "clean or impute them before running the model")
    if (x < 0).any():
        row = int(np.argwhere(x < 0)[0, 0])
        raise InclustError(
            f"{source} holds negative values (first in cell {first_row + row}) but the model expects non-negative input",
            "pass raw counts or the non-negative values the model was trained on",
        )


def apply_preprocessing(x: np.ndarray, steps: list[Step]) -> None:
    """Apply ``steps`` to the float32 array ``x`` [cells, inputs] in place."""
    for step in steps:
        block = x[:, step.columns]
        if step.normalize_total is not None:
            total = block.sum(axis=1, keepdims=True, dtype=np.float64)
            factor = np.divide(step.normalize_total, total, out=np.zeros_like(total), where=total > 0)
            block *= factor.astype(np.float32)
        if step.log1p:
            np.log1p(block, out=block)
        if step.scale is not None:
            block /= step.scale
        x[:, step.columns] = block
