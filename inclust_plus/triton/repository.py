"""Write a Triton Inference Server model repository from an exported ``manifest.json``.

Each exported graph becomes up to two Triton models that take and return the same tensors:

``<graph>/``           ``backend: "onnxruntime"``: what the NGC Triton container serves (CPU or GPU).
``<graph>_python/``    ``backend: "python"``: the same ONNX file run by onnxruntime inside Triton's
                       Python backend, because the server build on PyPI (nvidia-pytriton) ships
                       only that backend. Its ``model.py`` is :mod:`inclust_plus.triton.python_model`.

Tensor layout (Triton's batching convention, ``max_batch_size > 0``): clients send ``x`` as
``[B, n_inputs]`` float32 and ``covariate`` / ``target_covariate`` as ``[B, 1]`` int64; the
config's ``reshape: { shape: [] }`` hands the graph the ``[B]`` vector it was exported with.
Outputs come back as ``[B, width]``. Feature names, categories and the whole manifest entry
travel in each model's ``parameters`` (read them with ``GET /v2/models/<name>/config``), and the
label names in ``labels.txt`` so Triton's classification extension can name the top classes.

A graph's CSR flavour (manifest ``variants``, input_format "csr") becomes ``<graph>_csr`` (and
``<graph>_csr_python``): its ``values`` / ``indices`` / ``rows`` are ragged, so these models do not use
Triton's batching (``max_batch_size: 0``): a request is one CSR batch, every dim of axis 0 is -1.

The manifest is read by the contract's one reader (:func:`inclust_plus.contract.read_manifest`):
a repository is only written from an export the runtime would also accept, and every graph file is
checked against its sha256 first, so a repository is never built from a graph changed after export.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from inclust_plus.atomic import NO_SPACE, atomic_dir, refuse_foreign_entries
from inclust_plus.errors import InclustError
from inclust_plus.hashing import file_sha256
from inclust_plus.contract import graph_to_json, read_manifest, to_json
from inclust_plus.contract.files import verify_file

from .layout import CONFIG_FILE, CSR_SUFFIX, FLAVOURS, INDEX_FILE, LABELS_FILE, PYTHON_SUFFIX, REPOSITORY_FORMAT, graph_of
from .model_config import config_text, model_config

_PYTHON_MODEL = Path(__file__).with_name("python_model.py")
_BACKENDS = {"onnxruntime": (("onnxruntime", ""),), "python": (("python", PYTHON_SUFFIX),),
             "both": (("onnxruntime", ""), ("python", PYTHON_SUFFIX))}


@dataclass(frozen=True)
class _Model:
    """One Triton model to write: its name, config text and the ONNX file it serves."""

    name: str
    config: str
    onnx_file: Path
    python: bool


def written_by_triton_export(folder: Path) -> None:
    """Refuse to replace (``--force``) a folder holding anything but a repository this module wrote."""
    owned: set[str] | None = {INDEX_FILE}
    try:
        owned.update(str(m["name"]) for m in json.loads((folder / INDEX_FILE).read_text()).get("models") or [])
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        owned = None
    refuse_foreign_entries(folder, owned, "Triton folder", "repository", "--triton")


def _labels_text(categories: tuple[str, ...]) -> str | None:
    """``labels.txt``: the label categories one a line, in label_probs order (None without labels)."""
    if not categories:
        return None
    names = [str(c) for c in categories]
    if any("\n" in n or "\r" in n for n in names):
        raise InclustError("a label category contains a line break, which labels.txt cannot hold", "rename that category and retrain")
    return "".join(n + "\n" for n in names)


def _served_graphs(manifest) -> list[tuple[dict, str, Path, str]]:
    """``(manifest entry, model name, ONNX file, sha256)`` of every graph flavour Triton serves:
    each graph, and its fp32 CSR variant (the entry merged with the variant's fields) as ``<graph>_csr``."""
    served = []
    for spec in manifest.graphs:
        entry = graph_to_json(spec)
        served.append((entry, spec.name, spec.path, spec.sha256))
        csr = spec.variant("csr", "fp32")
        if csr is not None:
            variant = next(v for v in entry.get("variants") or [] if v.get("input_format") == "csr" and v.get("precision", "fp32") == "fp32")
            merged = {**{k: x for k, x in entry.items() if k != "variants"}, **variant}
            served.append((merged, spec.name + CSR_SUFFIX, csr.path, csr.sha256))
    return served


def _copy(src: Path, dst: Path) -> None:
    """``shutil.copyfile``, whose failed write (a full disk) names the source file: it names ``dst`` here."""
    try:
        shutil.copyfile(src, dst)
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        raise OSError(err.errno, err.strerror, str(dst)) from err


def _write_model(folder: Path, model: _Model, labels: str | None) -> None:
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(model.config)
    _copy(model.onnx_file, version / "model.onnx")
    if labels is not None:
        (folder / LABELS_FILE).write_text(labels)
    if model.python:
        _copy(_PYTHON_MODEL, version / "model.py")


def _index(manifest, flavour: str, plan: list[_Model]) -> dict:
    """``inclust_triton.json``: which models this writer made, from which manifest."""
    return {
        "format": REPOSITORY_FORMAT,
        "format_version": 1,
        "model": to_json(manifest)["model"],
        "manifest_sha256": file_sha256(manifest.path),
        "flavour": flavour,
        "models": [{"name": m.name, "graph": graph_of(m.name, m.python).removesuffix(CSR_SUFFIX),
                    "input_format": "csr" if graph_of(m.name, m.python).endswith(CSR_SUFFIX) else "dense",
                    "backend": "python" if m.python else "onnxruntime"} for m in plan],
    }


def write_triton_repository(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    force: bool = False,
    flavour: str = "both",
    max_batch_size: int = 4096,
    preferred_batch_sizes: tuple[int, ...] = (256, 1024),
    max_queue_delay_us: int = 500,
    instance_count: int = 1,
    into: Path | None = None,
) -> Path:
    """Write the repository for every graph of ``manifest_path`` into ``out_dir`` (atomically).

    ``flavour``: ``"onnxruntime"`` (NGC container), ``"python"`` (PyPI server build) or ``"both"``.
    Returns ``out_dir``. ``into``: an empty temporary folder to fill instead, that the caller moves
    onto ``out_dir`` together with its other outputs (``inclust-export --triton``: issue 25).

    Batching defaults: requests of up to 4096 cells; the dynamic batcher runs a batch as soon as
    256 or 1024 cells are queued, else after 0.5 ms. On a 2-core CPU server, larger preferred sizes
    (up to 4096) gave no more throughput for 256-cell requests and a longer tail; tune per server.
    """
    if flavour not in FLAVOURS:
        raise InclustError(f"unknown Triton flavour {flavour!r}", f"choose one of: {', '.join(FLAVOURS)}")
    if max_batch_size < 1 or instance_count < 1 or max_queue_delay_us < 0:
        raise InclustError("max_batch_size and instance_count must be at least 1, max_queue_delay_us at least 0")
    manifest = read_manifest(manifest_path)
    out = Path(out_dir)
    if out.resolve() == manifest.path.parent.resolve():
        raise InclustError(f"Triton folder {out} is the export folder itself", "choose another folder for --triton")
    if out.exists() and not force:
        raise InclustError(f"output folder {out} already exists", "pass --force to replace it")
    if not out.parent.is_dir():
        raise InclustError(f"folder {out.parent} does not exist", "create it first or choose another --triton path")
    raw = to_json(manifest)
    labels = _labels_text(manifest.label_categories)
    plan = []
    for entry, model_name, onnx_file, sha256 in _served_graphs(manifest):
        verify_file(onnx_file, sha256, f"graph {entry['name']!r}")
        for backend, suffix in _BACKENDS[flavour]:
            config = model_config(model_name + suffix, backend, raw, entry, max_batch_size,
                                  tuple(preferred_batch_sizes), max_queue_delay_us, instance_count)
            plan.append(_Model(model_name + suffix, config_text(config, entry["name"]), onnx_file, backend == "python"))
    names = [m.name for m in plan]
    if len(set(names)) != len(names):
        raise InclustError("two graphs map to the same Triton model name", "rename one of the combinations and re-export")
    def fill(tmp: Path) -> None:
        for model in plan:
            _write_model(tmp / model.name, model, labels)
        (tmp / INDEX_FILE).write_text(json.dumps(_index(manifest, flavour, plan), indent=2, sort_keys=True) + "\n")

    if into is not None:
        fill(into)
        return out
    with atomic_dir(out, force=force, replaceable=written_by_triton_export) as tmp:
        fill(tmp)
    return out
