"""The run loop shared by every ``inclust-run`` command: validate, stream, infer, write, rename.

Order matters for safety: everything that can be checked before work starts is checked first
(output path, manifest, graph choice, input readability and alignment, covariate categories,
graph sha256), so most mistakes cost nothing. Values (NaN, negatives) can only be checked as
chunks arrive; a failure there, or Ctrl-C, aborts the temporary file, which
:func:`inclust_plus.atomic.atomic_path` deletes, so the output path is either the complete new
file or untouched.

Memory is bounded by one chunk: a chunk is as many cells as fit a budget of stored input values
(dense columns or sparse non-zeros), at most ``MAX_CHUNK_ROWS``, rounded to whole batches.
Input, covariate and output buffers are allocated once and reused for every chunk.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inclust_plus import __version__
from inclust_plus.atomic import atomic_path, check_output_path
from inclust_plus.errors import InclustError

from .backend import Backend, OnnxBackend
from .covariates import resolve_covariates, resolve_target
from .inputs import open_input
from .manifest import GraphSpec, Manifest, load_manifest, select_graph
from .output import OutputWriter
from .preprocess import apply_preprocessing, check_values, plan_preprocessing

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
    try:
        covariates = resolve_covariates(manifest, data, options.covariate_key, options.covariate, graph)
        target, target_name = resolve_target(manifest, graph, options.target_covariate)
        steps = plan_preprocessing(manifest, graph)
        if steps:
            log.info("applying the model's preprocessing (%s) before the graph", ", ".join(s.modality for s in steps))
        if owns_backend:
            backend = default_backend(options)
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
        }
        with atomic_path(out_path, suffix=".h5ad") as tmp:
            _stream(options, manifest, graph, data, covariates, target, steps, backend, tmp, provenance)
    finally:
        data.close()
        if owns_backend and backend is not None:
            backend.close()
    return out_path


def _stream(options, manifest, graph, data, covariates, target, steps, backend, tmp, provenance) -> None:
    from tqdm import tqdm

    n, bs = data.n_obs, options.batch_size
    rows = chunk_rows(data.values_per_row(), bs, options.value_budget)
    x_buf = np.zeros((min(rows, n), data.n_inputs), dtype=np.float32)
    cov_buf = np.zeros(min(rows, n), dtype=np.int64)
    tgt_buf = np.zeros(min(rows, n), dtype=np.int64) if target is not None else None
    write_x = options.command in DECODING
    write_latent = options.command != "annotate"
    writer = OutputWriter(
        tmp,
        n,
        data.obs,
        list(graph.output_features) if write_x else [],
        manifest.latent_dim if write_latent else None,
        list(manifest.label_categories),
    )
    source = f"{data.path.name} {data.element}"
    started = time.perf_counter()
    buffers: dict[str, np.ndarray] = {}  # per-chunk output buffers, allocated once at the first batch
    try:
        with tqdm(total=n, unit="cells", unit_scale=True, desc=graph.name, file=sys.stderr, disable=options.quiet or not sys.stderr.isatty()) as bar:
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                x = data.read(start, stop, x_buf)
                check_values(x, start, source)
                apply_preprocessing(x, steps)
                cov = covariates.take(start, stop, cov_buf)
                tgt = target.take(start, stop, tgt_buf) if target is not None else None
                for b in range(0, stop - start, bs):
                    e = min(stop - start, b + bs)
                    out = backend.run(graph, x[b:e], cov[b:e], None if tgt is None else tgt[b:e])
                    if start == 0 and b == 0:
                        _check_outputs(graph, manifest, out, e - b)
                        buffers = {k: np.empty((len(x_buf), v.shape[1]), np.float32) for k, v in out.items() if k in OUTPUTS}
                    for key, buf in buffers.items():
                        buf[b:e] = out[key]
                views = {k: buffers[k][: stop - start] if k in buffers else None for k in OUTPUTS}
                writer.write(start, views["y"], views["latent"], views["label_probs"])
                bar.update(stop - start)
        seconds = time.perf_counter() - started
        provenance.update(backend.provenance())
        provenance.update(n_obs=n, seconds=round(seconds, 3))
        writer.finish(provenance)
    except BaseException:
        writer.abort()
        raise
    log.info("%d cells in %.1f s (%.0f cells/s) with %s on %s", n, seconds, n / max(seconds, 1e-9), graph.name, provenance.get("provider"))
