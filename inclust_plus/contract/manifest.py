"""``manifest.json`` as frozen dataclasses: the whole contract between export and runtime.

Export builds a :class:`Manifest` and writes it with :func:`.manifest_io.write_manifest`; the
runtime (and the Triton repository writer) read it with :func:`.manifest_io.read_manifest`. The
fields are those of docs/ARCHITECTURE.md, "Manifest". Paths in the JSON are file names inside the
export folder; the reader records that folder (``folder``, not part of equality) so that
:attr:`GraphEntry.path` is the file to load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from inclust_plus import COVARIATE_JOIN, MANIFEST_FORMAT_VERSION, __version__
from inclust_plus.errors import InclustError

from .plan import PreprocessPlan


@dataclass(frozen=True)
class TensorEntry:
    """One input or output of an exported graph, with its concrete shape (``"batch"``/``"nnz"`` symbolic)."""

    name: str
    dtype: str
    shape: tuple[str | int, ...]


@dataclass(frozen=True)
class Variant:
    """Another flavour of a graph (CSR input and/or float16 weights): same function, its own file."""

    input_format: str  # "dense" or "csr"
    precision: str  # "fp32" or "fp16"
    file: str
    sha256: str
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]


@dataclass(frozen=True, kw_only=True)
class GraphSignature:
    """What a graph maps, from the model's point of view: the modalities and features it takes and
    returns and its default covariates. Export's :class:`~inclust_plus.contract.combinations.Combination`
    (what to export) and :class:`GraphEntry` (what was exported) both are one."""

    name: str
    kind: str  # "impute" (decodes features) or "embed" (latent + label probabilities only)
    input_modalities: tuple[str, ...]
    output_modalities: tuple[str, ...]
    input_features: tuple[str, ...]
    output_features: tuple[str, ...]
    default_target_covariate: str | None = None
    default_covariate: str | None = None

    def signature(self) -> dict:
        """The signature's fields by name, to build another kind of graph record from this one."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(GraphSignature)}


@dataclass(frozen=True, kw_only=True)
class GraphEntry(GraphSignature):
    """One exported graph: its signature, the tensors it takes and returns, how its input is
    preprocessed, where its files are."""

    file: str | None  # None (and no sha256): a graph run in memory (training/torch_backend.py), which no reader accepts
    sha256: str | None
    inputs: tuple[TensorEntry, ...]
    outputs: tuple[TensorEntry, ...]
    preprocessing_plan: PreprocessPlan  # per input column: its modality and the steps (contract/plan.py)
    folded_preprocessing: bool = False  # True: the graph applies the plan itself (takes raw values)
    opset: int | None = None
    torchscript_file: str | None = None
    torchscript_sha256: str | None = None
    torch_export_file: str | None = None
    torch_export_sha256: str | None = None
    input_format: str = "dense"
    precision: str = "fp32"
    variants: tuple[Variant, ...] = ()
    folder: Path | None = field(default=None, compare=False, repr=False)  # the export folder, set by the reader

    def _at(self, name: str | None) -> Path | None:
        if name is None:
            return None
        return Path(name) if self.folder is None else self.folder / name

    @property
    def path(self) -> Path | None:
        """The graph file (inside the export folder); None for a graph in memory."""
        return self._at(self.file)

    @property
    def torchscript(self) -> Path | None:
        return self._at(self.torchscript_file)

    @property
    def torch_export(self) -> Path | None:
        return self._at(self.torch_export_file)

    @property
    def decodes(self) -> bool:
        return self.kind != "embed" and len(self.output_features) > 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    @property
    def has_spread(self) -> bool:
        """Whether the graph returns ``y_std`` (an ensemble's members' per-feature std)."""
        return self.decodes and "y_std" in self.output_names

    @property
    def runtime_plan(self) -> PreprocessPlan:
        """What the runtime applies before the graph: nothing when the graph folds it in."""
        return PreprocessPlan() if self.folded_preprocessing else self.preprocessing_plan

    def variant(self, input_format: str, precision: str = "fp32") -> "GraphEntry | None":
        """This graph's flavour with that input format and precision, or None when the export has none."""
        if (input_format, precision) == (self.input_format, self.precision):
            return self
        for v in self.variants:
            if (v.input_format, v.precision) == (input_format, precision):
                return dataclasses.replace(
                    self, file=v.file, sha256=v.sha256, input_format=input_format, precision=precision,
                    inputs=v.inputs, outputs=v.outputs, torchscript_file=None, torchscript_sha256=None,
                    torch_export_file=None, torch_export_sha256=None, variants=(),
                )
        return None

    def describe(self) -> str:
        to = "+".join(self.output_modalities) if self.output_modalities else "latent"
        return f"{self.name} ({'+'.join(self.input_modalities)} -> {to})"


@dataclass(frozen=True)
class ModelInfo:
    name: str
    sha256: str | None  # of the checkpoint the graphs were exported from (None: a model in memory, no file)
    latent_dim: int


@dataclass(frozen=True)
class Covariate:
    """The batch covariate: obs keys, categories (graph input = index), how several keys are joined."""

    keys: tuple[str, ...]
    categories: tuple[str, ...]
    join: str = COVARIATE_JOIN  # several keys: a cell's category is its values of those obs columns joined by this


@dataclass(frozen=True)
class Labels:
    key: str | None = None
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Modality:
    name: str
    features: tuple[str, ...]  # in the model's (global) order


@dataclass(frozen=True)
class Manifest:
    """A whole manifest. ``preprocessing`` is the checkpoint's per-modality recipe
    (``{modality: {normalize_total, log1p, scale}}``, used to convert outputs back to counts);
    each graph carries its own :class:`PreprocessPlan` restricted to its input columns."""

    model: ModelInfo
    covariate: Covariate
    labels: Labels
    modalities: tuple[Modality, ...]
    graphs: tuple[GraphEntry, ...]
    preprocessing: dict = field(default_factory=dict)
    format_version: int = MANIFEST_FORMAT_VERSION
    exporter_version: str | None = __version__
    path: Path | None = field(default=None, compare=False, repr=False)  # manifest.json it was read from

    # -- short names the runtime uses -------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def model_sha256(self) -> str:
        return self.model.sha256

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @property
    def covariate_keys(self) -> tuple[str, ...]:
        return self.covariate.keys

    @property
    def covariate_categories(self) -> tuple[str, ...]:
        return self.covariate.categories

    @property
    def covariate_join(self) -> str:
        return self.covariate.join

    @property
    def label_key(self) -> str | None:
        return self.labels.key

    @property
    def label_categories(self) -> tuple[str, ...]:
        return self.labels.categories

    @property
    def modality_names(self) -> list[str]:
        """Every modality some graph takes as input or returns, in first-use order."""
        names: list[str] = []
        for g in self.graphs:
            for m in (*g.input_modalities, *g.output_modalities):
                if m not in names:
                    names.append(m)
        return names

    def schema(self) -> list[dict]:
        """``[{name, features}]`` of the modalities (the shape :mod:`inclust_plus.results` takes)."""
        return [{"name": m.name, "features": list(m.features)} for m in self.modalities]

    def graph(self, name: str) -> GraphEntry:
        for g in self.graphs:
            if g.name == name:
                return g
        raise InclustError(
            f"combination {name!r} is not in {self.path or 'the manifest'}",
            f"choose one of: {', '.join(g.name for g in self.graphs)}",
        )
