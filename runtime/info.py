"""``inclust-run info EXPORT``: what an export folder holds, without reading its JSON by hand.

Lists the model, its covariate and label categories, the modalities and their preprocessing,
and every graph with its inputs and outputs, default covariates and files (the graph, its CSR and
float16 flavours, TorchScript and torch.export twins), each file's sha256 checked against the
manifest (``ok``, ``MISMATCH`` or ``missing``); any file not ``ok`` ends the listing with a one-line
error and exit 2. ``--json`` prints the same as one JSON object for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from inclust_plus.errors import InclustError, names_shown, report_errors
from inclust_plus.hashing import file_sha256
from inclust_plus.results import describe_preprocessing

from .manifest import load_manifest


def _check(path: Path | None, sha: str | None) -> str:
    if path is None:
        return "none"
    if not path.is_file():
        return "missing"
    return "ok" if not sha or file_sha256(path) == sha.lower() else "MISMATCH"


def summary(location) -> dict:
    """The facts ``info`` prints, as plain JSON-able data."""
    m = load_manifest(location)
    graphs = []
    for g in m.graphs:
        files = [{"kind": "onnx", "file": g.path.name, "sha256": g.sha256, "check": _check(g.path, g.sha256)}]
        for v in g.variants:  # the CSR and float16 flavours (issue 25: they were not listed, so never checked)
            path = g.folder / v.file if g.folder is not None else Path(v.file)
            kind = " ".join(["onnx", *(["csr"] if v.input_format == "csr" else []), *(["fp16"] if v.precision == "fp16" else [])])
            files.append({"kind": kind, "file": v.file, "sha256": v.sha256, "check": _check(path, v.sha256)})
        if g.torchscript is not None:
            files.append({"kind": "torchscript", "file": g.torchscript.name, "sha256": g.torchscript_sha256,
                          "check": _check(g.torchscript, g.torchscript_sha256)})
        if g.torch_export is not None:
            files.append({"kind": "torch.export", "file": g.torch_export.name, "sha256": g.torch_export_sha256,
                          "check": _check(g.torch_export, g.torch_export_sha256)})
        graphs.append({
            "name": g.name, "kind": g.kind, "input_modalities": list(g.input_modalities), "n_inputs": len(g.input_features),
            "output_modalities": list(g.output_modalities), "n_outputs": len(g.output_features),
            "default_covariate": g.default_covariate, "default_target_covariate": g.default_target_covariate,
            "folded_preprocessing": g.folded_preprocessing, "opset": g.opset,
            "inputs": [_tensor(t) for t in g.inputs], "outputs": [_tensor(t) for t in g.outputs], "files": files,
        })
    return {
        "manifest": str(m.path), "format_version": m.format_version, "exporter_version": m.exporter_version,
        "model": {"name": m.model_name, "sha256": m.model_sha256, "latent_dim": m.latent_dim},
        "covariate": {"keys": list(m.covariate_keys), "categories": list(m.covariate_categories)},
        "labels": {"key": m.label_key, "categories": list(m.label_categories)},
        "modalities": [{"name": x.name, "n_features": len(x.features)} for x in m.modalities],
        "preprocessing": {k: describe_preprocessing(v) for k, v in m.preprocessing.items()},
        "graphs": graphs,
    }


def _tensor(t) -> dict:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


def _shape(io: list[dict]) -> str:
    return ", ".join(f"{i['name']} {i.get('dtype', '?')}[{', '.join(map(str, i.get('shape', [])))}]" for i in io) or "?"


def render(s: dict) -> str:
    """The human-readable listing."""
    lines = [f"model {s['model']['name']!r} (sha256 {s['model']['sha256'][:16]}..., latent {s['model']['latent_dim']}), "
             f"manifest format {s['format_version']}, exporter {s['exporter_version']}"]
    cov = s["covariate"]
    lines.append(f"covariate: {', '.join(cov['categories'])}" + (f" (obs column {', '.join(cov['keys'])})" if cov["keys"] else ""))
    lab = s["labels"]
    lines.append(f"labels: {', '.join(lab['categories'])} (obs column {lab['key']})" if lab["categories"] else "labels: none")
    for mod in s["modalities"]:
        lines.append(f"modality {mod['name']}: {mod['n_features']} features; preprocessing {s['preprocessing'].get(mod['name'], 'none')}")
    for name, text in s["preprocessing"].items():
        if name not in {x["name"] for x in s["modalities"]}:
            lines.append(f"preprocessing {name}: {text}")
    lines.append(f"{len(s['graphs'])} graphs:")
    for g in s["graphs"]:
        to = "+".join(g["output_modalities"]) + f" ({g['n_outputs']} features)" if g["n_outputs"] else "latent + labels"
        lines.append(f"  {g['name']} [{g['kind']}]: {'+'.join(g['input_modalities'])} ({g['n_inputs']} features) -> {to}")
        defaults = [f"covariate {g['default_covariate']}" if g["default_covariate"] else "",
                    f"target covariate {g['default_target_covariate']}" if g["default_target_covariate"] else "",
                    "preprocessing folded into the graph" if g["folded_preprocessing"] else ""]
        if any(defaults):
            lines.append("    defaults: " + ", ".join(d for d in defaults if d))
        lines.append(f"    inputs: {_shape(g['inputs'])}; outputs: {_shape(g['outputs'])}")
        for f in g["files"]:
            lines.append(f"    {f['kind']}: {f['file']} sha256 {str(f['sha256'])[:16]}... {f['check']}")
    return "\n".join(lines)


@click.command(name="info", help="List what an export folder holds: model, covariates, labels, preprocessing, graphs and file hashes.")
@click.argument("export", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@report_errors
def info_command(export, as_json):
    s = summary(export)
    click.echo(json.dumps(s, indent=2) if as_json else render(s))
    files = [f for g in s["graphs"] for f in g["files"]]
    bad = [f"{f['file']} {f['check']}" for f in files if f["check"] != "ok"]
    if bad:  # after the listing: scripts (and the exit code) learn that the export cannot be trusted
        raise InclustError(f"{len(bad)} of the {len(files)} files the manifest names are not as exported ({names_shown(bad)})",
                           "re-export the model with inclust-export or copy the whole export folder again")
