"""Write a Triton Inference Server model repository from an exported ``manifest.json``.

Each exported graph becomes up to two Triton models that take and return the same tensors:

``<graph>/``           ``backend: "onnxruntime"``: what the NGC Triton container serves (CPU or GPU).
``<graph>_python/``    ``backend: "python"``: the same ONNX file run by onnxruntime inside Triton's
                       Python backend, because the server build on PyPI (nvidia-pytriton) ships
                       only that backend. Its ``model.py`` is :mod:`inclust_plus.export.triton_python_model`.

Tensor layout (Triton's batching convention, ``max_batch_size > 0``): clients send ``x`` as
``[B, n_inputs]`` float32 and ``covariate`` / ``target_covariate`` as ``[B, 1]`` int64; the
config's ``reshape: { shape: [] }`` hands the graph the ``[B]`` vector it was exported with.
Outputs come back as ``[B, width]``. Feature names, categories and the whole manifest entry
travel in each model's ``parameters`` (read them with ``GET /v2/models/<name>/config``), and the
label names in ``labels.txt`` so Triton's classification extension can name the top classes.

A graph's CSR flavour (manifest ``variants``, input_format "csr") becomes ``<graph>_csr`` (and
``<graph>_csr_python``): its ``values`` / ``indices`` / ``rows`` are ragged, so these models do not use
Triton's batching (``max_batch_size: 0``): a request is one CSR batch, every dim of axis 0 is -1.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from inclust_plus.atomic import atomic_dir, refuse_foreign_entries
from inclust_plus.errors import InclustError
from inclust_plus.hashing import file_sha256

FLAVOURS = ("onnxruntime", "python", "both")
PYTHON_SUFFIX = "_python"
LABELS_FILE = "labels.txt"
INDEX_FILE = "inclust_triton.json"
_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
CSR_SUFFIX = "_csr"
_PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")
REEXPORT = "re-export the model with inclust-export"


class _Enum(str):
    """A protobuf enum value: written without quotes."""


def _quote(text: str) -> str:
    """A protobuf text-format string literal: printable ASCII as is, every other byte octal-escaped."""
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _scalar(value) -> str:
    if isinstance(value, _Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _quote(value)
    raise TypeError(f"cannot write {value!r} to a model config")


def _pbtxt(fields: list[tuple[str, object]], indent: int = 0) -> str:
    """Protobuf text format from ``[(field, value)]``.

    A value is a scalar, a list of scalars (repeated scalar), a list of ``(field, value)`` pairs
    (a message), or a tuple of such lists (a repeated message; also how maps are written).
    """
    pad = "  " * indent
    lines = []
    for key, value in fields:
        if isinstance(value, tuple):
            for message in value:
                lines.append(f"{pad}{key} {{\n{_pbtxt(message, indent + 1)}{pad}}}\n")
        elif isinstance(value, list) and value and isinstance(value[0], tuple):
            lines.append(f"{pad}{key} {{\n{_pbtxt(value, indent + 1)}{pad}}}\n")
        elif isinstance(value, list):
            items = ", ".join(_scalar(v) for v in value)
            lines.append(f"{pad}{key}: [ {items} ]\n" if items else f"{pad}{key}: [ ]\n")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}\n")
    return "".join(lines)


def parse_model_config(text: str):
    """Parse ``config.pbtxt`` text with Triton's own ``ModelConfig`` protobuf (needs tritonclient[grpc])."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _io(tensor: dict, label_file: bool, batching: bool = True) -> list[tuple[str, object]]:
    """One input/output entry: ``[batch, n]`` tensors keep dims ``[n]``, ``[batch]`` vectors get ``[1]`` reshaped to ``[]``.

    Without batching (CSR models) the dims are the whole shape, axis 0 variable: ``[-1]`` or ``[-1, n]``.
    """
    shape = list(tensor.get("shape") or [])
    dtype = tensor.get("dtype")
    if dtype not in _TYPES or not shape or len(shape) > 2:
        raise InclustError(f"graph tensor {tensor.get('name')!r} has dtype {dtype!r} and shape {shape}, which this exporter cannot serve", REEXPORT)
    entry: list[tuple[str, object]] = [("name", tensor["name"]), ("data_type", _Enum(_TYPES[dtype]))]
    if not batching:
        entry.append(("dims", [-1] + [int(w) for w in shape[1:]]))
    elif len(shape) == 1:
        entry += [("dims", [1]), ("reshape", [("shape", [])])]
    else:
        width = shape[1]
        if not isinstance(width, int) or width < 1:
            raise InclustError(f"graph tensor {tensor['name']!r} has width {width!r}; Triton needs a fixed width of at least 1", REEXPORT)
        entry.append(("dims", [width]))
    if label_file:
        entry.append(("label_filename", LABELS_FILE))
    return entry


def _parameters(manifest: dict, graph: dict) -> tuple:
    """String parameters a client reads from the model config: names, categories and the manifest itself."""
    top = {k: v for k, v in manifest.items() if k != "graphs"}
    labels = manifest.get("labels") or {}
    covariate = manifest.get("covariate") or {}
    values = {
        "inclust.model": str((manifest.get("model") or {}).get("name", "")),
        "inclust.graph": graph["name"],
        "inclust.kind": str(graph.get("kind", "")),
        "inclust.input_features": json.dumps(list(graph.get("input_features") or [])),
        "inclust.output_features": json.dumps(list(graph.get("output_features") or [])),
        "inclust.covariate_categories": json.dumps(list(covariate.get("categories") or [])),
        "inclust.label_categories": json.dumps(list(labels.get("categories") or [])),
        "inclust.default_target_covariate": str(graph.get("default_target_covariate") or ""),
        "inclust.folded_preprocessing": "true" if graph.get("folded_preprocessing") else "false",
        "inclust.manifest_graph": json.dumps(graph, sort_keys=True),
        "inclust.manifest": json.dumps(top, sort_keys=True),
    }
    return tuple([("key", k), ("value", [("string_value", v)])] for k, v in values.items())


def model_config(
    name: str,
    backend: str,
    manifest: dict,
    graph: dict,
    max_batch_size: int,
    preferred_batch_sizes: tuple[int, ...],
    max_queue_delay_us: int,
    instance_count: int,
) -> str:
    """The ``config.pbtxt`` text of one model.

    ``KIND_AUTO`` puts instances on the GPUs when the server has some and the backend can use
    them, and on the CPU otherwise, so one file works on both kinds of server.
    """
    has_labels = bool((manifest.get("labels") or {}).get("categories"))
    batching = graph.get("input_format", "dense") != "csr"
    inputs = tuple(_io(t, False, batching) for t in graph["inputs"])
    outputs = tuple(_io(t, has_labels and t["name"] == "label_probs", batching) for t in graph["outputs"])
    preferred = sorted({b for b in preferred_batch_sizes if 0 < b <= max_batch_size}) or [max_batch_size]
    fields: list[tuple[str, object]] = [
        ("name", name),
        ("backend", backend),
        ("max_batch_size", max_batch_size if batching else 0),
        ("input", inputs),
        ("output", outputs),
        ("instance_group", ([("count", instance_count), ("kind", _Enum("KIND_AUTO"))],)),
    ]
    if batching:
        fields.append(("dynamic_batching", [("preferred_batch_size", preferred), ("max_queue_delay_microseconds", max_queue_delay_us)]))
    fields.append(("parameters", _parameters(manifest, graph)))
    header = f"# Triton model config written by inclust-export for graph {graph['name']!r} ({backend} backend).\n"
    return header + _pbtxt(fields)


def _read_manifest(manifest_path: str | os.PathLike) -> tuple[Path, dict]:
    path = Path(manifest_path)
    path = path / "manifest.json" if path.is_dir() else path
    if not path.is_file():
        raise InclustError(f"no manifest at {path}", "pass the manifest.json written by inclust-export")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InclustError(f"manifest {path} is not valid JSON ({type(err).__name__})", REEXPORT) from None
    graphs = manifest.get("graphs") if isinstance(manifest, dict) else None
    if not graphs:
        raise InclustError(f"manifest {path} lists no graphs", REEXPORT)
    for g in graphs:
        missing = [k for k in ("name", "file", "sha256", "inputs", "outputs") if k not in g]
        if missing:
            raise InclustError(f"graph {g.get('name')!r} in {path} has no {missing[0]!r}", REEXPORT)
        inside = path.parent.resolve()
        real = (path.parent / str(g["file"])).resolve()
        if not real.is_relative_to(inside) or real == inside:
            raise InclustError(f"graph {g.get('name')!r} in {path} names a file outside the export folder ({g['file']!r})", REEXPORT)
    return path, manifest


def written_by_triton_export(folder: Path) -> None:
    """Refuse to replace (``--force``) a folder holding anything but a repository this module wrote."""
    owned: set[str] | None = {INDEX_FILE}
    try:
        owned.update(str(m["name"]) for m in json.loads((folder / INDEX_FILE).read_text()).get("models") or [])
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        owned = None
    refuse_foreign_entries(folder, owned, "Triton folder", "repository", "--triton")


def _labels_text(manifest: dict) -> str | None:
    categories = (manifest.get("labels") or {}).get("categories") or []
    if not categories:
        return None
    names = [str(c) for c in categories]
    if any("\n" in n or "\r" in n for n in names):
        raise InclustError("a label category contains a line break, which labels.txt cannot hold", "rename that category and retrain")
    return "".join(n + "\n" for n in names)


def _write_model(folder: Path, config: str, onnx_file: Path, labels: str | None, python_model: bool) -> None:
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config)
    shutil.copyfile(onnx_file, version / "model.onnx")
    if labels is not None:
        (folder / LABELS_FILE).write_text(labels)
    if python_model:
        shutil.copyfile(_PYTHON_MODEL, version / "model.py")


def _graph_of(model: str, python: bool) -> str:
    """The served graph (``<graph>`` or ``<graph>_csr``) of a Triton model name."""
    return model.removesuffix(PYTHON_SUFFIX) if python else model


def write_triton_repository(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    force: bool = False,
    flavour: str = "both",
    max_batch_size: int = 4096,
    preferred_batch_sizes: tuple[int, ...] = (256, 1024),
    max_queue_delay_us: int = 500,
    instance_count: int = 1,
) -> Path:
    """Write the repository for every graph of ``manifest_path`` into ``out_dir`` (atomically).

    ``flavour``: ``"onnxruntime"`` (NGC container), ``"python"`` (PyPI server build) or ``"both"``.
    Each graph's ONNX file is checked against the manifest's sha256 first, so a repository is never
    built from a graph that changed after export. Returns ``out_dir``.

    Batching defaults: requests of up to 4096 cells; the dynamic batcher runs a batch as soon as
    256 or 1024 cells are queued, else after 0.5 ms. On a 2-core CPU server, larger preferred sizes
    (up to 4096) gave no more throughput for 256-cell requests and a longer tail; tune per server.
    """
    if flavour not in FLAVOURS:
        raise InclustError(f"unknown Triton flavour {flavour!r}", f"choose one of: {', '.join(FLAVOURS)}")
    if max_batch_size < 1 or instance_count < 1 or max_queue_delay_us < 0:
        raise InclustError("max_batch_size and instance_count must be at least 1, max_queue_delay_us at least 0")
    path, manifest = _read_manifest(manifest_path)
    out = Path(out_dir)
    if out.resolve() == path.parent.resolve():
        raise InclustError(f"Triton folder {out} is the export folder itself", "choose another folder for --triton")
    if out.exists() and not force:
        raise InclustError(f"output folder {out} already exists", "pass --force to replace it")
    if not out.parent.is_dir():
        raise InclustError(f"folder {out.parent} does not exist", "create it first or choose another --triton path")
    labels = _labels_text(manifest)
    plan = []
    served = []
    for graph in manifest["graphs"]:
        served.append((graph, graph["name"]))
        for v in graph.get("variants") or []:
            if v.get("input_format") == "csr" and v.get("precision", "fp32") == "fp32":
                served.append(({**{k: x for k, x in graph.items() if k != "variants"}, **v}, graph["name"] + CSR_SUFFIX))
    for graph, model_name in served:
        onnx_file = path.parent / graph["file"]
        if not onnx_file.is_file():
            raise InclustError(f"graph file {onnx_file} is missing", REEXPORT)
        if file_sha256(onnx_file) != str(graph["sha256"]).lower():
            raise InclustError(f"graph file {onnx_file} does not match the sha256 in {path}", REEXPORT)
        backends = {"onnxruntime": [("onnxruntime", "")], "python": [("python", PYTHON_SUFFIX)]}.get(
            flavour, [("onnxruntime", ""), ("python", PYTHON_SUFFIX)]
        )
        for backend, suffix in backends:
            name = model_name + suffix
            config = model_config(name, backend, manifest, graph, max_batch_size, tuple(preferred_batch_sizes), max_queue_delay_us, instance_count)
            plan.append((name, config, onnx_file, backend == "python"))
    names = [p[0] for p in plan]
    if len(set(names)) != len(names):
        raise InclustError("two graphs map to the same Triton model name", "rename one of the combinations and re-export")
    if force and out.is_dir():
        written_by_triton_export(out)
    with atomic_dir(out, force=force, replaceable=written_by_triton_export) as tmp:
        for name, config, onnx_file, python_model in plan:
            _write_model(tmp / name, config, onnx_file, labels, python_model)
        index = {
            "format": "inclust-triton-repository",
            "format_version": 1,
            "model": manifest.get("model"),
            "manifest_sha256": file_sha256(path),
            "flavour": flavour,
            "models": [{"name": n, "graph": _graph_of(n, py).removesuffix(CSR_SUFFIX),
                        "input_format": "csr" if _graph_of(n, py).endswith(CSR_SUFFIX) else "dense",
                        "backend": "python" if py else "onnxruntime"} for n, _, _, py in plan],
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out
