"""``manifest.json``: everything the torch-free runtime needs, exactly as in docs/ARCHITECTURE.md.

Written with sorted keys and fixed indentation so that identical exports give identical bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from inclust_plus import COVARIATE_JOIN, MANIFEST_FORMAT_VERSION, __version__

from .combinations import Combination

EXPORTER_VERSION = __version__


def io_entries(combination: Combination, latent_dim: int, n_labels: int, input_format: str = "dense") -> tuple[list[dict], list[dict]]:
    """Manifest ``inputs`` and ``outputs`` of one graph, from its :class:`GraphSpec`."""
    widths = combination.widths(latent_dim, n_labels)

    def entry(t) -> dict:
        shape = [t.axis] if t.width is None else [t.axis, widths[t.width]]
        return {"name": t.name, "dtype": t.dtype, "shape": shape}

    spec = combination.spec_for(input_format)
    return [entry(t) for t in spec.inputs], [entry(t) for t in spec.outputs]


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
    variants: list[dict] | None = None,
) -> dict:
    inputs, outputs = io_entries(combination, latent_dim, n_labels)
    return {
        "input_format": "dense",
        "precision": "fp32",
        "variants": list(variants or []),
        "name": combination.name,
        "kind": combination.kind,
        "file": file,
        "sha256": sha256,
        "opset": opset,
        "torchscript": torchscript,
        "torchscript_sha256": torchscript_sha256,
        "folded_preprocessing": folded_preprocessing,
        "input_modalities": list(combination.input_modalities),
        "output_modalities": list(combination.output_modalities),
        "input_features": list(combination.input_features),
        "output_features": list(combination.output_features),
        "default_target_covariate": combination.default_target_covariate,
        "default_covariate": combination.default_covariate,
        "inputs": inputs,
        "outputs": outputs,
    }


def build_manifest(description: dict, model_sha256: str, graphs: list[dict]) -> dict:
    labels = description.get("labels") or {}
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "exporter_version": EXPORTER_VERSION,
        "model": {
            "name": description["name"],
            "sha256": model_sha256,
            "latent_dim": int(description["module"]["latent_dim"]),
        },
        "covariate": {
            "keys": list(description["covariate"]["keys"]),
            "categories": list(description["covariate"]["categories"]),
            "join": COVARIATE_JOIN,  # with several keys a category is the cell's values joined by this
        },
        "labels": {"key": labels.get("key"), "categories": list(labels.get("categories") or [])},
        "modalities": [{"name": m["name"], "features": list(m["features"])} for m in description["schema"]["modalities"]],
        "preprocessing": description.get("preprocessing") or {},
        "graphs": graphs,
    }


def write_manifest(manifest: dict, path: Path) -> Path:
    path.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return path


def variant_entry(combination: Combination, input_format: str, precision: str, file: str, sha256: str, latent_dim: int, n_labels: int) -> dict:
    """One more flavour of a graph (CSR input and/or float16 weights): same function, other file and inputs."""
    inputs, outputs = io_entries(combination, latent_dim, n_labels, input_format)
    return {"input_format": input_format, "precision": precision, "file": file, "sha256": sha256, "inputs": inputs, "outputs": outputs}
