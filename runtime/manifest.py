"""Read ``manifest.json`` (see docs/ARCHITECTURE.md, "Manifest") and pick the graph a command needs.

The manifest is the runtime's only source of truth about a model: feature names and order,
covariate and label categories, preprocessing and one entry per exported graph. Everything here
is plain JSON handling so that it works without torch, onnx or even onnxruntime. Every field is
checked against the schema in :mod:`.manifest_schema` before it is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from inclust_plus import COVARIATE_JOIN, MANIFEST_FORMAT_VERSION
from inclust_plus.errors import InclustError
from inclust_plus.hashing import file_sha256

from .manifest_schema import REEXPORT, confined, validate


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: what it takes, what it returns, where its file is."""

    name: str
    kind: str  # "impute" (decodes features) or "embed" (latent + label probabilities only)
    path: Path
    sha256: str
    input_modalities: tuple[str, ...]
    output_modalities: tuple[str, ...]
    input_features: tuple[str, ...]
    output_features: tuple[str, ...]
    default_target_covariate: str | None
    default_covariate: str | None
    folded_preprocessing: bool
    torchscript: Path | None
    torchscript_sha256: str | None
    opset: int | None
    inputs: tuple[dict, ...]
    outputs: tuple[dict, ...]
    input_format: str = "dense"  # "dense" (x) or "csr" (values, indices, rows), docs/ARCHITECTURE.md "Flavours"
    precision: str = "fp32"  # "fp32" or "fp16" (float16 weights, float32 inputs and outputs)
    variants: tuple[dict, ...] = ()  # the manifest's other flavours of this graph

    def variant(self, input_format: str, precision: str = "fp32") -> "GraphSpec | None":
        """This graph's flavour with that input format and precision, or None when the export has none."""
        if (input_format, precision) == (self.input_format, self.precision):
            return self
        for v in self.variants:
            if (v.get("input_format"), v.get("precision", "fp32")) == (input_format, precision) and v.get("file") and v.get("sha256"):
                return dataclasses.replace(
                    self, path=self.path.parent / v["file"], sha256=str(v["sha256"]).lower(), input_format=input_format,
                    precision=precision, inputs=tuple(v.get("inputs") or ()), outputs=tuple(v.get("outputs") or self.outputs),
                    torchscript=None, torchscript_sha256=None, variants=(),
                )
        return None

    @property
    def decodes(self) -> bool:
        return self.kind != "embed" and len(self.output_features) > 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i["name"] for i in self.inputs) or (("x", "covariate", "target_covariate") if self.decodes else ("x", "covariate"))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o["name"] for o in self.outputs) or (("y", "latent", "label_probs") if self.decodes else ("latent", "label_probs"))

    @property
    def has_spread(self) -> bool:
        """Whether the graph returns ``y_std`` (an ensemble's members' per-feature std)."""
        return self.decodes and "y_std" in self.output_names

    def describe(self) -> str:
        to = "+".join(self.output_modalities) if self.output_modalities else "latent"
        return f"{self.name} ({'+'.join(self.input_modalities)} -> {to})"


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; ``raw`` keeps the JSON for provenance and for fields added later."""

    path: Path
    raw: dict
    model_name: str
    model_sha256: str
    latent_dim: int
    covariate_keys: tuple[str, ...]
    covariate_categories: tuple[str, ...]
    label_key: str | None
    label_categories: tuple[str, ...]
    preprocessing: dict
    graphs: tuple[GraphSpec, ...] = field(default=())
    covariate_join: str = COVARIATE_JOIN  # several covariate keys: a category is a cell's values of those obs columns joined by this

    @property
    def modalities(self) -> list[str]:
        """Every modality (or feature-set) name that some graph takes as input or returns."""
        names: list[str] = []
        for g in self.graphs:
            for m in (*g.input_modalities, *g.output_modalities):
                if m not in names:
                    names.append(m)
        return names

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise InclustError(
            f"combination {name!r} is not in {self.path}",
            f"choose one of: {', '.join(g.name for g in self.graphs)}",
        )


def _require(obj: dict, key: str, where: str, path: Path):
    if not isinstance(obj, dict) or key not in obj:
        raise InclustError(f"manifest {path} has no {where}{key!r}", REEXPORT)
    return obj[key]


def _graph(entry: dict, folder: Path, path: Path) -> GraphSpec:
    name = _require(entry, "name", "graph field ", path)
    where = f"field in graph {name!r}: "
    ts = entry.get("torchscript")
    return GraphSpec(
        name=name,
        kind=entry.get("kind") or ("embed" if not entry.get("output_features") else "impute"),
        path=confined(folder, _require(entry, "file", where, path), f"graph {name!r} file", path),
        sha256=str(_require(entry, "sha256", where, path)).lower(),
        input_modalities=tuple(_require(entry, "input_modalities", where, path)),
        output_modalities=tuple(entry.get("output_modalities") or ()),
        input_features=tuple(_require(entry, "input_features", where, path)),
        output_features=tuple(entry.get("output_features") or ()),
        default_target_covariate=entry.get("default_target_covariate"),
        default_covariate=entry.get("default_covariate"),
        folded_preprocessing=bool(entry.get("folded_preprocessing", False)),
        torchscript=confined(folder, ts, f"graph {name!r} torchscript", path) if ts else None,
        torchscript_sha256=entry.get("torchscript_sha256"),
        opset=entry.get("opset"),
        inputs=tuple(entry.get("inputs") or ()),
        outputs=tuple(entry.get("outputs") or ()),
        input_format=str(entry.get("input_format") or "dense"),
        precision=str(entry.get("precision") or "fp32"),
        variants=tuple(v for v in entry.get("variants") or () if isinstance(v, dict)),
    )


def load_manifest(location: str | os.PathLike) -> Manifest:
    """Load ``DIR/manifest.json`` or the manifest file itself, with one-line errors for bad ones."""
    loc = Path(location)
    path = loc / "manifest.json" if loc.is_dir() else loc
    if not path.is_file():
        raise InclustError(f"no manifest at {path}", "pass --onnx the folder written by inclust-export or its manifest.json")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InclustError(f"manifest {path} is not valid JSON ({err.__class__.__name__})", REEXPORT) from None
    if not isinstance(raw, dict):
        raise InclustError(f"manifest {path} is not a JSON object", REEXPORT)
    version = raw.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_FORMAT_VERSION:
        raise InclustError(f"manifest {path} has format_version {version!r}, this runtime reads up to {MANIFEST_FORMAT_VERSION}", "upgrade inclust-plus")
    validate(raw, path)
    model = _require(raw, "model", "", path)
    covariate = _require(raw, "covariate", "", path)
    labels = raw.get("labels") or {}
    graphs = tuple(_graph(g, path.parent, path) for g in _require(raw, "graphs", "", path))
    if not graphs:
        raise InclustError(f"manifest {path} lists no graphs", REEXPORT)
    return Manifest(
        path=path,
        raw=raw,
        model_name=str(model.get("name", "")),
        model_sha256=str(model.get("sha256", "")),
        latent_dim=int(_require(model, "latent_dim", "model field ", path)),
        covariate_keys=tuple(covariate.get("keys") or ()),
        covariate_categories=tuple(str(c) for c in _require(covariate, "categories", "covariate field ", path)),
        label_key=labels.get("key"),
        label_categories=tuple(str(c) for c in labels.get("categories") or ()),
        preprocessing=dict(raw.get("preprocessing") or {}),
        graphs=graphs,
        covariate_join=str(covariate.get("join") or COVARIATE_JOIN),
    )


def _split(values: tuple[str, ...] | None) -> tuple[str, ...]:
    """``--from a --from b`` or ``--from a,b`` or ``--from a+b`` all mean the set {a, b}."""
    out: list[str] = []
    for v in values or ():
        out += [p.strip() for p in v.replace("+", ",").split(",") if p.strip()]
    return tuple(out)


def select_graph(
    manifest: Manifest,
    decode: bool,
    combination: str | None = None,
    source: tuple[str, ...] | None = None,
    target: tuple[str, ...] | None = None,
) -> GraphSpec:
    """The graph for a command: by name, or by input/output modalities, or the only candidate.

    ``decode`` is True for impute/generate (graphs that return features), False for embed/annotate
    (embed graphs). Anything ambiguous is an error that lists the choices, never a silent guess.
    """
    kind = "impute/generate" if decode else "embed/annotate"
    candidates = [g for g in manifest.graphs if g.decodes == decode]
    if combination:
        g = manifest.graph(combination)
        if g.decodes != decode:
            names = ", ".join(c.name for c in candidates) or "none"
            raise InclustError(f"combination {combination!r} is {'a decoding' if g.decodes else 'an embed'} graph, not usable for {kind}", f"choose one of: {names}")
        return g
    src, dst = _split(source), _split(target)
    known = manifest.modalities
    for m in (*src, *dst):
        if m not in known:
            raise InclustError(f"modality {m!r} is not in the model", f"known modalities: {', '.join(known)}")
    if dst and not decode:
        raise InclustError("--to is only for impute/generate", "embed/annotate return the latent and labels; drop --to")
    if src:
        candidates = [g for g in candidates if set(g.input_modalities) == set(src)]
    if dst:
        candidates = [g for g in candidates if set(g.output_modalities) == set(dst)]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        pool = [g for g in manifest.graphs if g.decodes == decode]
        wanted = f" from {'+'.join(src) or 'any'} to {'+'.join(dst) or 'any'}" if (src or dst) else ""
        listing = "; ".join(g.describe() for g in pool) or "none"
        raise InclustError(f"the model has no {kind} graph{wanted}", f"available: {listing}")
    listing = "; ".join(g.describe() for g in candidates)
    raise InclustError(f"several {kind} graphs match", f"pick one with --combination NAME or --from/--to: {listing}")


def read_verified(path: Path | None, expected: str | None, what: str) -> bytes:
    """The bytes of a graph file, read once and checked against the manifest's sha256.

    Loading these bytes (not the path again) means the file that runs is the file that was
    checked, even if the path is swapped for another file or link in between.
    """
    _pinned(path, expected, what)
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != expected.lower():
        raise InclustError(f"{what} file {path} does not match the sha256 in the manifest: tampered or corrupt", f"{REEXPORT} or copy the folder again")
    return data


def _pinned(path: Path | None, expected: str | None, what: str) -> None:
    """The file exists and the manifest gives its sha256 (a missing one would switch the check off;
    load_manifest already requires one for every file, this guards GraphSpecs built by hand)."""
    if path is None or not path.is_file():
        raise InclustError(f"{what} file {path} is missing", f"{REEXPORT} or copy the whole export folder")
    if not expected or len(expected) != 64:
        raise InclustError(f"{what} file {path} has no sha256 in the manifest", f"{REEXPORT} (every file the runtime loads is pinned by its sha256)")


def verify_file(path: Path | None, expected: str | None, what: str) -> Path:
    """Refuse a graph file whose sha256 differs from the manifest (tampered, corrupt or swapped)."""
    _pinned(path, expected, what)
    if file_sha256(path) != expected.lower():
        raise InclustError(f"{what} file {path} does not match the sha256 in the manifest: tampered or corrupt", f"{REEXPORT} or copy the folder again")
    return path
