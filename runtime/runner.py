"""The run loop shared by every ``inclust-run`` command: validate, stream, infer, write, rename.

Order matters for safety: everything that can be checked before work starts is checked first
(output path, manifest, graph choice, input readability and alignment, covariate categories,
graph sha256), so most mistakes cost nothing. Values (NaN, negatives) can only be checked as
chunks arrive; a failure there, or Ctrl-C, aborts the temporary file, which
:func:`inclust_plus.atomic.atomic_path` deletes, so the output path is either the complete new
file or untouched.

Memory is bounded by a few chunks: a chunk is as many cells as fit a budget of stored input
values (dense columns or sparse non-zeros), at most ``MAX_CHUNK_ROWS``, rounded to whole
batches. Input, covariate and output buffers are allocated once per chunk in flight (at most
one more than there are worker threads) and reused.

Throughput (see BENCHMARKS.md): chunks are read in worker threads (:mod:`.chunks`; CSR input
is checked and preprocessed on its stored values only). A backend that can take concurrent
calls (onnxruntime on CPU, see ``OnnxBackend.split_threads``) is called from one worker per
core, each reading its own chunk and running the graph on it with one thread, which keeps every
core busy without oversubscribing them; other backends are called from this thread while the
next chunk is read.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inclust_plus import __version__
from inclust_plus.atomic import atomic_path, check_output_path
from inclust_plus.errors import InclustError

from .backend import Backend, OnnxBackend
from .chunks import Cancelled, SparseReader, chunk_reader, ordered_chunks  # noqa: F401 (SparseReader: re-exported)
from .covariates import resolve_covariates, resolve_target
from .inputs import open_input
from .layout import plan_layout, warn_if_not_counts
from .manifest import GraphSpec, Manifest, load_manifest, select_graph
from .output import OutputWriter
from .preprocess import plan_preprocessing

log = logging.getLogger("inclust_plus.runtime")
COMMANDS = ("impute", "generate", "embed", "annotate")
DECODING = ("impute", "generate")
VALUE_BUDGET = 4_000_000  # stored input values read per chunk (about 32-64 MB)
MAX_CHUNK_ROWS = 65_536
OUTPUTS = ("y", "latent", "label_probs")


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
    layer: str | None = None
    obsm: str | None = None
    force: bool = False
    torchscript: bool = False
    quiet: bool = False
    value_budget: int = VALUE_BUDGET
    output_scale: str = "model"  # impute/generate: model | log1p | counts (inclust_plus.results)
    imputed_into: str = "layer"  # impute/generate: model values in layers["inclust_imputed"] (X keeps measured) | X


def chunk_rows(values_per_row: float, batch_size: int, budget: int) -> int:
    rows = int(min(MAX_CHUNK_ROWS, max(1, budget // max(1.0, values_per_row))))
    return max(batch_size, rows - rows % batch_size) if rows >= batch_size else rows


def default_backend(options: RunOptions) -> Backend:
    if options.torchscript:
        from .torchscript_backend import TorchScriptBackend  # torch only on this path

        return TorchScriptBackend(options.device)
    return OnnxBackend(options.device)


def _check_outputs(graph: GraphSpec, manifest: Manifest, result: dict, n: int) -> None:
    want = {"latent": manifest.latent_dim, "label_probs": len(manifest.label_categories)}
    if graph.decodes:
        want["y"] = len(graph.output_features)
    for name, width in want.items():
        if width == 0:
            continue
        got = result.get(name)
        if got is None or got.shape != (n, width):
            raise InclustError(
                f"graph {graph.name!r} returned {name} of shape {None if got is None else got.shape}, the manifest says ({n}, {width})",
                "re-export the model with inclust-export",
            )


def run(options: RunOptions, backend: Backend | None = None) -> Path:
    """Run one command end to end; returns the output path."""
    if options.command not in COMMANDS:
        raise InclustError(f"unknown command {options.command!r}", f"choose one of {', '.join(COMMANDS)}")
    if options.batch_size < 1:
        raise InclustError(f"--batch-size must be at least 1, not {options.batch_size}", "pass a positive batch size")
    if options.layer and options.obsm:
        raise InclustError("--layer and --obsm are exclusive", "pass one of them")
    out_path = check_output_path(options.output, options.force, inputs=(options.input,))
    if out_path.is_dir():
        raise InclustError(f"output {out_path} is a folder", "pass a file path ending in .h5ad")
    manifest = load_manifest(options.onnx)
    decode = options.command in DECODING
    graph = select_graph(manifest, decode, options.combination, options.source, options.target)
    if options.command == "annotate" and not manifest.label_categories:
        raise InclustError("the model has no label categories to annotate with", "use embed for the latent only")
    data = open_input(options.input, graph, options.layer, options.obsm, options.allow_missing)
    owns_backend = backend is None
    layout = None
    try:
        covariates = resolve_covariates(manifest, data, options.covariate_key, options.covariate, graph)
        target, target_name = resolve_target(manifest, graph, options.target_covariate)
        steps = plan_preprocessing(manifest, graph)
        if steps:
            log.info("applying the model's preprocessing (%s) before the graph", ", ".join(s.modality for s in steps))
        warn_if_not_counts(data, steps)
        layout = plan_layout(options, manifest, graph, data) if decode else None
        if owns_backend:
            backend = default_backend(options)
        rows = chunk_rows(data.values_per_row(), options.batch_size, options.value_budget)
        workers = concurrent_calls(backend, math.ceil(data.n_obs / rows))
        backend.prepare(graph)
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
            "preprocessing": "folded into the graph" if graph.folded_preprocessing else ("applied by the runtime" if steps else "none"),
            "missing_features": list(data.missing),
            "label_key": manifest.label_key,
            **(layout.provenance() if layout is not None else {}),
        }
        with atomic_path(out_path, suffix=".h5ad") as tmp:
            _stream(options, manifest, graph, data, covariates, target, steps, backend, tmp, provenance, rows, workers, layout)
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


@dataclass
class _Buffers:
    """The buffers of one chunk in flight; outputs are allocated at the first batch, from its shapes."""

    x: np.ndarray
    cov: np.ndarray
    tgt: np.ndarray | None
    out: dict[str, np.ndarray] = field(default_factory=dict)


def _stream(options, manifest, graph, data, covariates, target, steps, backend, tmp, provenance, rows, workers, layout=None) -> None:
    from tqdm import tqdm

    n, bs = data.n_obs, options.batch_size
    size = min(rows, n)
    n_sets = 1 if n <= rows else workers + 1  # one more than the workers: they never wait for the writer
    sets = [_Buffers(np.zeros((size, data.n_inputs), np.float32), np.zeros(size, np.int64),
                     np.zeros(size, np.int64) if target is not None else None) for _ in range(n_sets)]
    write_x = options.command in DECODING
    write_latent = options.command != "annotate"
    writer = OutputWriter(
        tmp,
        n,
        data.obs,
        list(graph.output_features) if write_x else [],
        manifest.latent_dim if write_latent else None,
        list(manifest.label_categories),
        layout,
    )
    read = chunk_reader(data, steps, f"{data.path.name} {data.element}")
    stopping = threading.Event()

    def infer(start: int, stop: int, x: np.ndarray, bufs: _Buffers) -> dict:
        cov = covariates.take(start, stop, bufs.cov)
        tgt = target.take(start, stop, bufs.tgt) if target is not None else None
        for b in range(0, stop - start, bs):
            if stopping.is_set():
                raise Cancelled
            e = min(stop - start, b + bs)
            out = backend.run(graph, x[b:e], cov[b:e], None if tgt is None else tgt[b:e])
            if b == 0:
                _check_outputs(graph, manifest, out, e - b)
                if not bufs.out:
                    bufs.out = {k: np.empty((size, v.shape[1]), np.float32) for k, v in out.items() if k in OUTPUTS}
            for key, buf in bufs.out.items():
                buf[b:e] = out[key]
        return {k: bufs.out[k][: stop - start] if k in bufs.out else None for k in OUTPUTS}

    if workers > 1:  # each worker reads its chunk and runs the graph on it

        def task(start, stop, bufs):
            return infer(start, stop, read(start, stop, bufs.x), bufs)

        results = ordered_chunks(task, n, rows, sets, workers, stopping)
    else:  # a worker reads the next chunk while this thread runs the graph

        def task(start, stop, bufs):
            return read(start, stop, bufs.x), bufs

        def in_order():
            prepared = ordered_chunks(task, n, rows, sets, 1, stopping)
            try:
                for s, e, (x, bufs) in prepared:
                    yield s, e, infer(s, e, x, bufs)
            finally:
                prepared.close()

        results = in_order()
    started = time.perf_counter()
    try:
        with tqdm(total=n, unit="cells", unit_scale=True, desc=graph.name, file=sys.stderr, disable=options.quiet or not sys.stderr.isatty()) as bar:
            for start, stop, views in results:
                writer.write(start, views["y"], views["latent"], views["label_probs"])
                bar.update(stop - start)
        seconds = time.perf_counter() - started
        provenance.update(backend.provenance())
        provenance.update(n_obs=n, seconds=round(seconds, 3), concurrent_calls=workers)
        writer.finish(provenance)
    except BaseException:
        stopping.set()
        results.close()  # cancels queued chunks and waits for the running ones
        writer.abort()
        raise
    log.info("%d cells in %.1f s (%.0f cells/s) with %s on %s", n, seconds, n / max(seconds, 1e-9), graph.name, provenance.get("provider"))
