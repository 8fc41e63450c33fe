"""The run loop shared by every ``inclust-run`` command: validate, stream, infer, write, rename.

Order matters for safety: everything that can be checked before work starts is checked first
(output path, manifest, graph choice, input readability and alignment, covariate categories,
graph sha256), so most mistakes cost nothing. Values (NaN, negatives) can only be checked as
chunks arrive; a failure there, or Ctrl-C/SIGTERM (a stop flag the loops check per batch and
chunk, :mod:`inclust_plus.interrupt`), aborts the temporary file, which
:func:`inclust_plus.atomic.atomic_path` deletes, so the output path is either the complete new
file or untouched.

Memory is bounded by one budget for all chunks in flight (:func:`plan_chunks`): a chunk is as many
cells as fit ``value_budget`` stored input values and as make the ``workers + 1`` buffer sets
(input, outputs, covariates, CSR entries) fit ``memory_budget`` bytes together, at most
``MAX_CHUNK_ROWS``, rounded to whole batches; so more workers mean smaller chunks, not more memory.

Throughput (see BENCHMARKS.md): chunks are read in worker threads (:mod:`.chunks`; CSR input
is checked and preprocessed on its stored values only). A backend that can take concurrent
calls (onnxruntime, see ``OnnxBackend.split_threads``: one per core on CPU, or ``--workers N``;
a few on CUDA) is called from that many workers, each reading its own chunk and running the
graph on it, which keeps every core busy without oversubscribing them; other backends are called
from this thread while the next chunk is read. The loop itself is :mod:`.stream`. ``--input-format``
and ``--precision`` pick the graph flavour (:func:`choose_flavour`): CSR graphs get CSR chunks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from inclust_plus import __version__
from inclust_plus.atomic import atomic_path, check_output_path
from inclust_plus.errors import InclustError

from .backend import CUDA, Backend, OnnxBackend
from .chunks import SparseReader, chunk_reader  # noqa: F401 (chunk_reader: re-exported for benchmarks)
from .covariates import resolve_covariates, resolve_target
from .inputs import open_input
from .layout import plan_layout, warn_if_not_counts
from .manifest import GraphEntry, Manifest, load_manifest, select_graph
from .signature import prepare as prepare_graph
from .stream import DECODING, stream

log = logging.getLogger("inclust_plus.runtime")
COMMANDS = ("impute", "generate", "embed", "annotate")
INPUT_FORMATS = ("auto", "dense", "csr")
MEMORY_BUDGET = 512 * 2**20  # bytes of chunk buffers for all chunks in flight together, whatever --workers
GRAPH_COPIES = 3  # dense [batch, n_inputs] float32 tensors one call holds inside onnxruntime (CSR: zeros, scattered, preprocessed)
VALUE_BUDGET = 4_000_000  # stored input values read per chunk (about 32-64 MB)
MAX_CHUNK_ROWS = 65_536


@dataclass
class RunOptions:
    """Everything a command needs; the CLI fills it from its flags."""

    command: str
    onnx: str | Path
    input: str | Path
    output: str | Path
    combination: str | None = None
    source: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    covariate_key: str | None = None
    covariate: str | None = None
    target_covariate: str | None = None
    batch_size: int = 4096
    device: str = "auto"
    allow_missing: bool = False
    min_shared_fraction: float = 0.0  # with allow_missing: refuse when fewer of the graph's inputs are present
    layer: str | None = None
    obsm: str | None = None
    force: bool = False
    torchscript: bool = False
    quiet: bool = False
    value_budget: int = VALUE_BUDGET
    input_format: str = "auto"  # auto: CSR graphs on CUDA, dense on CPU (BENCHMARKS.md, issue 11)
    precision: str = "fp32"
    workers: int | None = None  # concurrent inference calls (None: one per core on CPU)
    memory_budget: int = MEMORY_BUDGET
    output_scale: str = "model"  # impute/generate: model | log1p | counts (inclust_plus.results)
    imputed_into: str = "layer"  # impute/generate: model values in layers["inclust_imputed"] (X keeps measured) | X


def chunk_rows(values_per_row: float, batch_size: int, budget: int) -> int:
    rows = int(min(MAX_CHUNK_ROWS, max(1, budget // max(1.0, values_per_row))))
    return max(batch_size, rows - rows % batch_size) if rows >= batch_size else rows


def default_backend(options: RunOptions) -> Backend:
    if options.torchscript:
        from .torchscript_backend import TorchScriptBackend  # torch only on this path

        return TorchScriptBackend(options.device)
    return OnnxBackend(options.device, precision=options.precision, workers=options.workers)


def plan_chunks(data, graph: GraphEntry, manifest: Manifest, options: RunOptions, workers: int, layout=None) -> int:
    """Rows per chunk: within ``value_budget`` stored values, and all ``workers + 1`` buffer sets
    together within ``memory_budget`` bytes (input, outputs, covariates; CSR entries 12 bytes each,
    plus the graph's dense intermediates of a call on that many cells, measured: without them a CSR
    run with 16 workers peaked at 1.1 GB for 0.56 GB dense; and the output layout's pieces each
    chunk holds until it is written, :meth:`.layout.Layout.bytes_per_row`)."""
    vpr = data.values_per_row()
    spread = graph.has_spread  # y_std of an ensemble
    decoded = len(graph.output_features) * (2 if spread else 1) if options.command in DECODING else 0
    out_width = decoded + manifest.latent_dim + len(manifest.label_categories)
    dense_in = graph.input_format != "csr" or not SparseReader.applies(data)
    per_row = (4 * out_width + 16 + (4 * data.n_inputs if dense_in else 0) + (28 * vpr if graph.input_format == "csr" or not dense_in else 12 * vpr)
               + GRAPH_COPIES * 4 * data.n_inputs  # the graph's own dense intermediates of a call (batches never exceed a chunk)
               + (layout.bytes_per_row() if layout is not None else 0))
    cap = max(1, int(options.memory_budget // ((workers + 1) * per_row)))
    return chunk_rows(vpr, options.batch_size, int(min(options.value_budget, cap * vpr)))


def choose_flavour(graph: GraphEntry, backend: Backend, options: RunOptions) -> GraphEntry:
    """The graph flavour for ``--input-format`` and ``--precision`` (one-line errors when the export lacks it)."""
    if options.input_format not in INPUT_FORMATS:
        raise InclustError(f"unknown input format {options.input_format!r}", f"choose one of {', '.join(INPUT_FORMATS)}")
    onnx = isinstance(backend, OnnxBackend)
    cuda = onnx and backend.providers[0] == CUDA
    if options.precision != "fp32" and not onnx:
        raise InclustError(f"--precision {options.precision} needs the onnxruntime backend", "drop --precision or --torchscript/--triton")
    precision = "fp16" if options.precision == "fp16" else "fp32"
    fmt = options.input_format
    if fmt == "auto":
        fmt = "csr" if cuda and graph.variant("csr", precision) is not None else "dense"
    if fmt == "csr" and not onnx:
        raise InclustError("--input-format csr needs the onnxruntime backend", "pass --input-format dense")
    chosen = graph.variant(fmt, precision)
    if chosen is None:
        what = f"{'CSR' if fmt == 'csr' else 'dense'}{' float16' if precision == 'fp16' else ''} graph"
        fix = "re-export with inclust-export" + (" --fp16" if precision == "fp16" else "") + (", or pass --input-format dense" if fmt == "csr" and precision == "fp32" else "")
        raise InclustError(f"the export has no {what} for {graph.name!r} (exported before that flavour existed, or without it)", fix)
    return chosen


def run(options: RunOptions, backend: Backend | None = None) -> Path:
    """Run one command end to end; returns the output path."""
    if options.command not in COMMANDS:
        raise InclustError(f"unknown command {options.command!r}", f"choose one of {', '.join(COMMANDS)}")
    if options.batch_size < 1:
        raise InclustError(f"--batch-size must be at least 1, not {options.batch_size}", "pass a positive batch size")
    if not 0.0 <= options.min_shared_fraction <= 1.0:
        raise InclustError(f"--min-shared-fraction must be between 0 and 1, not {options.min_shared_fraction}", "pass e.g. 0.5")
    if options.layer and options.obsm:
        raise InclustError("--layer and --obsm are exclusive", "pass one of them")
    if Path(options.output).is_dir():  # before "already exists": --force would not help
        raise InclustError(f"output {options.output} is a folder", "pass a file path ending in .h5ad (e.g. inside that folder)")
    out_path = check_output_path(options.output, options.force, inputs=(options.input,))
    manifest = load_manifest(options.onnx)
    decode = options.command in DECODING
    graph = select_graph(manifest, decode, options.combination, options.source, options.target)
    check_output_path(out_path, options.force, inputs=(manifest.path, graph.path, graph.torchscript))
    if options.command == "annotate" and not manifest.label_categories:
        raise InclustError("the model has no label categories to annotate with", "use embed for the latent only")
    data = open_input(options.input, graph, options.layer, options.obsm, options.allow_missing, options.min_shared_fraction)
    owns_backend = backend is None
    layout = None
    try:
        covariates = resolve_covariates(manifest, data, options.covariate_key, options.covariate, graph)
        target, target_name = resolve_target(manifest, graph, options.target_covariate)
        plan = graph.runtime_plan
        if plan.active:
            log.info("applying the model's preprocessing (%s) before the graph", ", ".join(g.name for g in plan.active))
        warn_if_not_counts(data, graph.preprocessing_plan)  # the model's own plan, also where the graph folds it in
        layout = plan_layout(options, manifest, graph, data) if decode else None
        if owns_backend:
            backend = default_backend(options)
        graph = choose_flavour(graph, backend, options)
        workers = concurrent_calls(backend, math.ceil(data.n_obs / plan_chunks(data, graph, manifest, options, 1, layout)))
        rows = plan_chunks(data, graph, manifest, options, workers, layout)
        prepare_graph(backend, graph, manifest)  # sha256, signature against the manifest, covariate probe
        provenance = {
            "command": options.command,
            "graph": graph.name,
            "graph_sha256": graph.sha256,
            "input_modalities": list(graph.input_modalities),
            "output_modalities": list(graph.output_modalities),
            "model_name": manifest.model_name,
            "model_sha256": manifest.model_sha256,
            "package_version": __version__,
            "input": str(Path(options.input).resolve()),
            "input_element": data.element,
            "covariate": covariates.description,
            "target_covariate": target_name,
            "preprocessing": "folded into the graph" if graph.folded_preprocessing else ("applied by the runtime" if plan.active else "none"),
            "missing_features": list(data.missing),
            "label_key": manifest.label_key,
            **(layout.provenance() if layout is not None else {}),
        }
        with atomic_path(out_path, suffix=".h5ad", force=options.force) as tmp:
            stream(options, manifest, graph, data, covariates, target, plan, backend, tmp, provenance, rows, workers, layout)
    finally:
        data.close()
        if layout is not None:
            layout.close()
        if owns_backend and backend is not None:
            backend.close()
    return out_path


def concurrent_calls(backend: Backend, n_chunks: int) -> int:
    """How many worker threads call the backend at once: its ``split_threads()`` when it has one
    and there is more than one chunk to share out, else 1 (calls from the run loop's thread)."""
    split = getattr(backend, "split_threads", None)
    return max(1, int(split())) if split is not None and n_chunks > 1 else 1
