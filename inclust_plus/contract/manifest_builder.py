"""The manifest built from a checkpoint description and its graphs (torch-free: the exporter
and the in-memory model, training/torch_backend.py, build theirs here).

Written by the contract's one writer (:func:`inclust_plus.contract.write_manifest`: sorted keys,
fixed indentation, so identical exports give identical bytes); docs/ARCHITECTURE.md, "Manifest".
"""

from __future__ import annotations

from inclust_plus import COVARIATE_JOIN, MANIFEST_FORMAT_VERSION, __version__
from inclust_plus.contract import Covariate, GraphEntry, Labels, Manifest, ModelInfo, PreprocessPlan, TensorEntry, Variant, write_manifest
from inclust_plus.contract.description import ModelDescription
from inclust_plus.contract.description_io import as_description, recipe_json

from .combinations import Combination

EXPORTER_VERSION = __version__

__all__ = ["EXPORTER_VERSION", "build_manifest", "graph_entry", "io_entries", "variant_entry", "write_manifest"]


def io_entries(combination: Combination, latent_dim: int, n_labels: int, input_format: str = "dense") -> tuple[tuple[TensorEntry, ...], tuple[TensorEntry, ...]]:
    """Manifest ``inputs`` and ``outputs`` of one graph: the graph table's entry with concrete widths."""
    widths = combination.widths(latent_dim, n_labels)

    def entry(t) -> TensorEntry:
        shape = (t.axis,) if t.width is None else (t.axis, widths[t.width])
        return TensorEntry(t.name, t.dtype, shape)

    spec = combination.spec_for(input_format)
    return tuple(entry(t) for t in spec.inputs), tuple(entry(t) for t in spec.outputs)


def graph_entry(
    combination: Combination,
    file: str,
    sha256: str,
    opset: int,
    torchscript: str | None,
    torchscript_sha256: str | None,
    folded_preprocessing: bool,
    latent_dim: int,
    n_labels: int,
    plan: PreprocessPlan,
    variants: list[Variant] | None = None,
    torch_export: str | None = None,
    torch_export_sha256: str | None = None,
) -> GraphEntry:
    inputs, outputs = io_entries(combination, latent_dim, n_labels)
    return GraphEntry(
        **combination.signature(),
        file=file,
        sha256=sha256,
        inputs=inputs,
        outputs=outputs,
        preprocessing_plan=plan,
        folded_preprocessing=folded_preprocessing,
        opset=opset,
        torchscript_file=torchscript,
        torchscript_sha256=torchscript_sha256,
        torch_export_file=torch_export,
        torch_export_sha256=torch_export_sha256,
        variants=tuple(variants or ()),
    )


def variant_entry(combination: Combination, input_format: str, precision: str, file: str, sha256: str, latent_dim: int, n_labels: int) -> Variant:
    """One more flavour of a graph (CSR input and/or float16 weights): same function, other file and inputs."""
    inputs, outputs = io_entries(combination, latent_dim, n_labels, input_format)
    return Variant(input_format, precision, file, sha256, inputs, outputs)


def build_manifest(description: ModelDescription | dict, model_sha256: str, graphs: list[GraphEntry]) -> Manifest:
    d = as_description(description)
    return Manifest(
        format_version=MANIFEST_FORMAT_VERSION,
        exporter_version=EXPORTER_VERSION,
        model=ModelInfo(d.name, model_sha256, d.latent_dim),
        covariate=Covariate(
            keys=d.covariate.keys,
            categories=d.covariate.categories,
            join=COVARIATE_JOIN,  # with several keys a category is the cell's values joined by this
        ),
        labels=Labels(d.labels.key, d.labels.categories),
        modalities=d.modalities,
        preprocessing={m: recipe_json(r) for m, r in d.preprocessing.items()},
        graphs=tuple(graphs),
    )
