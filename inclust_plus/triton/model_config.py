"""``config.pbtxt`` as Triton's own ``ModelConfig`` protobuf: built, written and read back.

The message class is ``tritonclient.grpc.model_config_pb2.ModelConfig`` (the server's schema,
shipped with tritonclient[grpc]) and the text is ``google.protobuf.text_format``: whatever the
writer sets is a field Triton knows, escaped the way Triton parses it, and reading a config back is
the same parser, never a pattern match.

text_format leaves out fields equal to their proto3 default, so a config says nothing about
``kind`` (``KIND_AUTO``: the GPUs when the server has them, else the CPU) or, for the unbatched CSR
models, ``max_batch_size`` (0: no batching); Triton reads both absent fields as those values.
"""

from __future__ import annotations

import json
from pathlib import Path

from inclust_plus.contract.schema import REEXPORT
from inclust_plus.errors import InclustError

from .layout import LABELS_FILE

INSTALL_HINT = "pip install 'tritonclient[grpc]' (it brings Triton's model_config_pb2 and protobuf; inclust-plus[export] or [triton] has it)"
_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def require_protobuf():
    """``(text_format, model_config_pb2)``, or a one-line error naming what to install."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        raise InclustError(f"Triton model configs need tritonclient[grpc] ({err})", INSTALL_HINT) from None
    return text_format, model_config_pb2


def parse_model_config(text: str):
    """A ``ModelConfig`` message from ``config.pbtxt`` text (raises protobuf's ParseError on bad text)."""
    text_format, pb2 = require_protobuf()
    return text_format.Parse(text, pb2.ModelConfig())


def read_model_config(path: str | Path):
    """The ``ModelConfig`` of a ``config.pbtxt`` file, or None when it cannot be read or parsed."""
    text_format, _ = require_protobuf()
    try:
        return parse_model_config(Path(path).read_text(encoding="utf-8", errors="replace"))
    except (OSError, text_format.ParseError):
        return None


def backend_of(config) -> str | None:
    """The backend that runs a model: its ``backend``, or the one its ``platform`` implies."""
    if config.backend:
        return config.backend
    return "onnxruntime" if config.platform == "onnxruntime_onnx" else None


def _tensor(entry, tensor: dict, label_file: bool, batching: bool) -> None:
    """Fill one input/output: ``[batch, n]`` tensors keep dims ``[n]``, ``[batch]`` vectors get ``[1]``
    reshaped to ``[]`` (what the graph was exported with). Without batching (CSR models) the dims are
    the whole shape, axis 0 variable: ``[-1]`` or ``[-1, n]``."""
    _, pb2 = require_protobuf()
    shape = list(tensor.get("shape") or [])
    dtype = tensor.get("dtype")
    if dtype not in _TYPES or not shape or len(shape) > 2:
        raise InclustError(f"graph tensor {tensor.get('name')!r} has dtype {dtype!r} and shape {shape}, which this exporter cannot serve", REEXPORT)
    entry.name = tensor["name"]
    entry.data_type = pb2.DataType.Value(_TYPES[dtype])
    if not batching:
        entry.dims.extend([-1] + [int(w) for w in shape[1:]])
    elif len(shape) == 1:
        entry.dims.append(1)
        entry.reshape.SetInParent()  # present and empty: shape []
    else:
        width = shape[1]
        if not isinstance(width, int) or width < 1:
            raise InclustError(f"graph tensor {tensor['name']!r} has width {width!r}; Triton needs a fixed width of at least 1", REEXPORT)
        entry.dims.append(width)
    if label_file:
        entry.label_filename = LABELS_FILE


def client_parameters(manifest: dict, graph: dict) -> dict[str, str]:
    """String parameters a client reads from the model config: names, categories and the manifest itself."""
    top = {k: v for k, v in manifest.items() if k != "graphs"}
    labels = manifest.get("labels") or {}
    covariate = manifest.get("covariate") or {}
    return {
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


def model_config(
    name: str,
    backend: str,
    manifest: dict,
    graph: dict,
    max_batch_size: int,
    preferred_batch_sizes: tuple[int, ...],
    max_queue_delay_us: int,
    instance_count: int,
):
    """The ``ModelConfig`` of one model serving ``graph`` (a manifest graph entry, or a CSR variant
    merged into one) with ``backend``. ``KIND_AUTO`` instances: one file works on CPU and GPU servers."""
    _, pb2 = require_protobuf()
    has_labels = bool((manifest.get("labels") or {}).get("categories"))
    batching = graph.get("input_format", "dense") != "csr"
    config = pb2.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size if batching else 0)
    for tensor in graph["inputs"]:
        _tensor(config.input.add(), tensor, False, batching)
    for tensor in graph["outputs"]:
        _tensor(config.output.add(), tensor, has_labels and tensor["name"] == "label_probs", batching)
    config.instance_group.add(count=instance_count, kind=pb2.ModelInstanceGroup.KIND_AUTO)
    if batching:
        preferred = sorted({b for b in preferred_batch_sizes if 0 < b <= max_batch_size}) or [max_batch_size]
        config.dynamic_batching.preferred_batch_size.extend(preferred)
        config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    for key, value in client_parameters(manifest, graph).items():
        config.parameters[key].string_value = value
    return config


def config_text(config, graph_name: str) -> str:
    """``config.pbtxt`` text: a comment naming who wrote it, then text_format (non-ASCII octal-escaped)."""
    text_format, _ = require_protobuf()
    header = f"# Triton model config written by inclust-export for graph {graph_name!r} ({config.backend} backend).\n"
    return header + text_format.MessageToString(config, as_utf8=False)
