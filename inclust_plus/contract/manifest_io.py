"""The one writer and the one reader of ``manifest.json``.

:func:`write_manifest` gives identical bytes for identical manifests (sorted keys, indent 2, one
trailing newline, floats as Python's shortest repr) and replaces the file atomically.
:func:`read_manifest` trusts nothing in the file: it checks the format version, then every field
against :mod:`.schema` (one-line :class:`InclustError`, "re-export" hint), then builds the
dataclasses. ``read_manifest(p) == m`` after ``write_manifest(m, p)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from inclust_plus import MANIFEST_FORMAT_VERSION
from inclust_plus.atomic import atomic_path
from inclust_plus.errors import InclustError

from .manifest import Covariate, GraphEntry, Labels, Manifest, Modality, ModelInfo, TensorEntry, Variant
from .plan import ModalityPlan, PreprocessPlan
from .schema import REEXPORT, validate

# Version 2 added what the runtime used to guess: the modalities list, each graph's kind, inputs,
# outputs and preprocessing plan are required. Older manifests are refused with a re-export hint.
OLDEST_READABLE = 2


# --- dataclasses -> JSON ------------------------------------------------------------------------
def _tensor(t: TensorEntry) -> dict:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


def plan_to_json(plan: PreprocessPlan) -> list[dict]:
    return [
        {"modality": g.name, "runs": [[s, e] for s, e in g.runs], "normalize_total": g.normalize_total,
         "log1p": g.log1p, "scale": None if g.scale is None else list(g.scale)}
        for g in plan.groups
    ]


def graph_to_json(g: GraphEntry) -> dict:
    """One graph entry as written in the manifest (also what the Triton config carries)."""
    return {
        "name": g.name, "kind": g.kind, "file": g.file, "sha256": g.sha256, "opset": g.opset,
        "input_format": g.input_format, "precision": g.precision,
        "torchscript": g.torchscript_file, "torchscript_sha256": g.torchscript_sha256,
        **({"torch_export": g.torch_export_file, "torch_export_sha256": g.torch_export_sha256} if g.torch_export_file else {}),
        "folded_preprocessing": g.folded_preprocessing,
        "preprocessing_plan": plan_to_json(g.preprocessing_plan),
        "input_modalities": list(g.input_modalities), "output_modalities": list(g.output_modalities),
        "input_features": list(g.input_features), "output_features": list(g.output_features),
        "default_target_covariate": g.default_target_covariate, "default_covariate": g.default_covariate,
        "inputs": [_tensor(t) for t in g.inputs], "outputs": [_tensor(t) for t in g.outputs],
        "variants": [
            {"input_format": v.input_format, "precision": v.precision, "file": v.file, "sha256": v.sha256,
             "inputs": [_tensor(t) for t in v.inputs], "outputs": [_tensor(t) for t in v.outputs]}
            for v in g.variants
        ],
    }


def to_json(m: Manifest) -> dict:
    """The manifest as the JSON object written to ``manifest.json``."""
    return {
        "format_version": m.format_version,
        "exporter_version": m.exporter_version,
        "model": {"name": m.model.name, "sha256": m.model.sha256, "latent_dim": m.model.latent_dim},
        "covariate": {"keys": list(m.covariate.keys), "categories": list(m.covariate.categories), "join": m.covariate.join},
        "labels": {"key": m.labels.key, "categories": list(m.labels.categories)},
        "modalities": [{"name": x.name, "features": list(x.features)} for x in m.modalities],
        "preprocessing": m.preprocessing,
        "graphs": [graph_to_json(g) for g in m.graphs],
    }


def dumps(m: Manifest) -> str:
    """The exact text :func:`write_manifest` writes."""
    return json.dumps(to_json(m), sort_keys=True, indent=2, allow_nan=False) + "\n"


def write_manifest(m: Manifest, path: str | os.PathLike) -> Path:
    """Write ``m`` to ``path`` atomically (a reader never sees half a manifest); return the path."""
    path = Path(path)
    with atomic_path(path, force=True) as tmp:
        tmp.write_text(dumps(m), encoding="utf-8")
    return path


# --- JSON -> dataclasses ------------------------------------------------------------------------
def _tensors(items) -> tuple[TensorEntry, ...]:
    return tuple(TensorEntry(str(t["name"]), str(t["dtype"]), tuple(t["shape"])) for t in items or ())


def plan_from_json(groups: list[dict]) -> PreprocessPlan:
    return PreprocessPlan(tuple(
        ModalityPlan(
            name=str(g["modality"]),
            runs=tuple((int(s), int(e)) for s, e in g["runs"]),
            normalize_total=None if g.get("normalize_total") is None else float(g["normalize_total"]),
            log1p=bool(g.get("log1p", False)),
            scale=None if g.get("scale") is None else tuple(float(v) for v in g["scale"]),
        )
        for g in groups
    ))


def _category(v) -> str | None:
    return None if v is None else str(v)


def _graph_from(e: dict, folder: Path) -> GraphEntry:
    return GraphEntry(
        name=e["name"], kind=e["kind"], file=e["file"], sha256=str(e["sha256"]).lower(),
        input_modalities=tuple(e["input_modalities"]), output_modalities=tuple(e.get("output_modalities") or ()),
        input_features=tuple(e["input_features"]), output_features=tuple(e.get("output_features") or ()),
        inputs=_tensors(e["inputs"]), outputs=_tensors(e["outputs"]),
        preprocessing_plan=plan_from_json(e["preprocessing_plan"]),
        folded_preprocessing=bool(e.get("folded_preprocessing", False)),
        default_target_covariate=_category(e.get("default_target_covariate")),
        default_covariate=_category(e.get("default_covariate")),
        opset=e.get("opset"),
        torchscript_file=e.get("torchscript") or None,
        torchscript_sha256=(e.get("torchscript_sha256") or "").lower() or None,
        torch_export_file=e.get("torch_export") or None,
        torch_export_sha256=(e.get("torch_export_sha256") or "").lower() or None,
        input_format=str(e.get("input_format") or "dense"),
        precision=str(e.get("precision") or "fp32"),
        variants=tuple(
            Variant(str(v["input_format"]), str(v.get("precision") or "fp32"), v["file"], str(v["sha256"]).lower(),
                    _tensors(v.get("inputs")), _tensors(v.get("outputs") or e["outputs"]))
            for v in e.get("variants") or ()
        ),
        folder=folder,
    )


def from_json(raw, path: Path) -> Manifest:
    """Check ``raw`` (the parsed JSON of ``path``) and build the :class:`Manifest`."""
    if not isinstance(raw, dict):
        raise InclustError(f"manifest {path} is not a JSON object", REEXPORT)
    version = raw.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool):
        if version > MANIFEST_FORMAT_VERSION:
            raise InclustError(f"manifest {path} has format_version {version!r}, this runtime reads up to {MANIFEST_FORMAT_VERSION}", "upgrade inclust-plus")
        if version < OLDEST_READABLE:
            raise InclustError(
                f"manifest {path} has format_version {version}, written before the manifest carried each graph's preprocessing plan",
                REEXPORT,
            )
    validate(raw, path)
    model, covariate, labels = raw["model"], raw["covariate"], raw.get("labels") or {}
    graphs = tuple(_graph_from(g, path.parent) for g in raw["graphs"])
    return Manifest(
        model=ModelInfo(str(model.get("name") or ""), str(model.get("sha256") or ""), int(model["latent_dim"])),
        covariate=Covariate(tuple(covariate.get("keys") or ()), tuple(str(c) for c in covariate["categories"]),
                            **({"join": covariate["join"]} if covariate.get("join") else {})),
        labels=Labels(labels.get("key"), tuple(str(c) for c in labels.get("categories") or ())),
        modalities=tuple(Modality(m["name"], tuple(m["features"])) for m in raw["modalities"]),
        graphs=graphs,
        preprocessing={k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw.get("preprocessing") or {}).items()},
        format_version=int(version),
        exporter_version=raw.get("exporter_version"),
        path=path,
    )


def read_manifest(location: str | os.PathLike) -> Manifest:
    """Read ``DIR/manifest.json`` or the manifest file itself, with one-line errors for bad ones."""
    loc = Path(location)
    path = loc / "manifest.json" if loc.is_dir() else loc
    if not path.is_file():
        raise InclustError(f"no manifest at {path}", "pass --onnx the folder written by inclust-export or its manifest.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InclustError(f"manifest {path} is not valid JSON ({err.__class__.__name__})", REEXPORT) from None
    return from_json(raw, path)

