"""The run loop shared by every ``inclust-run`` command: validate, stream, infer, write, rename.

Order matters for safety: everything that can be checked before work starts is checked first
(output path, manifest, graph choice, input readability and alignment, covariate categories,
graph sha256), so most mistakes cost nothing. Values (NaN, negatives) can only be checked as
chunks arrive; a failure there, or Ctrl-C, aborts the temporary file, which
:func:`inclust_plus.atomic.atomic_path` deletes, so the output path is either the complete new
file or untouched.

Memory is bounded by two chunks: a chunk is as many cells as fit a budget of stored input values
(dense columns or sparse non-zeros), at most ``MAX_CHUNK_ROWS``, rounded to whole batches.
Input, covariate and output buffers are allocated once and reused for every chunk.

Throughput: the next chunk is read, checked and preprocessed in a worker thread while the graph
runs on the current one (two input buffers, alternating), and CSR input is handled by
:class:`SparseReader`, which works on the stored values only. Together they bring the whole
command to a large fraction of bare onnxruntime throughput (see BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import scipy.sparse as sp

from inclust_plus import __version__
from inclust_plus.atomic import atomic_path, check_output_path
from inclust_plus.errors import InclustError

from .backend import Backend, OnnxBackend
from .covariates import resolve_covariates, resolve_target
from .inputs import InputData, open_input
from .manifest import GraphSpec, Manifest, load_manifest, select_graph
from .matrices import CsrRows
from .output import OutputWriter
from .preprocess import Step, apply_preprocessing, check_values, plan_preprocessing

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


def _row_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-row float64 sums of CSR ``values`` laid out in rows of ``counts`` values (0 for empty rows)."""
    if not len(counts):
        return np.zeros(0)
    padded = np.zeros(len(values) + 1)  # a trailing 0: empty last rows start at len(values)
    padded[:-1] = values
    sums = np.add.reduceat(padded, np.cumsum(counts) - counts)
    sums[counts == 0] = 0.0  # reduceat gives the next value for an empty range
    return sums


class SparseReader:
    """CSR input read, checked and preprocessed on its stored values only, then scattered once.

    Gives what ``data.read`` + ``check_values`` + ``apply_preprocessing`` give (the same float32
    operations in the same order; library sizes summed in float64 as there), but its work grows
    with the non-zeros instead of cells x features: on 10%-dense counts a chunk takes about a
    sixth of the time. A chunk it cannot take this way goes through that dense path instead:
    one holding a value the checks reject (so the usual error names the cell), or whose column
    indices are not strictly increasing within a row (duplicates, which the dense path sums).
    """

    def __init__(self, data: InputData, steps: list[Step]):
        self.parts = []
        for p in data.parts:
            colmap = np.full(p.rows.n_cols, -1, dtype=np.int64)
            colmap[p.src] = p.dst
            identity = p.rows.n_cols == data.n_inputs and np.array_equal(colmap, np.arange(data.n_inputs))
            self.parts.append((p.rows, colmap, identity))
        self.n_inputs = data.n_inputs
        self.steps = steps
        self.step_of = np.full(data.n_inputs, -1, dtype=np.int64)
        scale = np.ones(data.n_inputs, dtype=np.float32)
        for i, step in enumerate(steps):
            self.step_of[step.columns] = i
            if step.scale is not None:
                scale[step.columns] = step.scale
        self.scale = scale if any(step.scale is not None for step in steps) else None
        self.one_step = len(steps) == 1 and bool((self.step_of == 0).all())

    @staticmethod
    def applies(data: InputData) -> bool:
        return bool(data.parts) and all(isinstance(p.rows, CsrRows) for p in data.parts)

    def _piece(self, rows: CsrRows, colmap: np.ndarray, identity: bool, start: int, stop: int):
        """(values per row, graph columns, float32 values) of one part, or None for the dense path."""
        lo, hi = int(rows.indptr[start]), int(rows.indptr[stop])
        counts = np.diff(rows.indptr[start : stop + 1])
        vals = np.asarray(rows.data[lo:hi], dtype=np.float32)
        idx = np.asarray(rows.indices[lo:hi])
        if len(idx) > 1:
            increasing = np.diff(idx) > 0
            firsts = np.cumsum(counts)[:-1]  # position of each later row's first value
            increasing[firsts[(firsts > 0) & (firsts < len(idx))] - 1] = True
            if not increasing.all():
                return None
        cols = idx if identity else colmap[idx]
        if not identity:
            keep = cols >= 0
            if not keep.all():
                rowid = np.repeat(np.arange(stop - start), counts)[keep]
                counts = np.bincount(rowid, minlength=stop - start)
                cols, vals = cols[keep], vals[keep]
        if not np.isfinite(vals).all() or (vals < 0).any():
            return None
        return counts, cols, vals

    def _preprocess(self, pieces: list, n: int) -> None:
        totals = np.zeros((n, len(self.steps)))
        for counts, cols, vals in pieces:
            for i, step in enumerate(self.steps):
                if step.normalize_total is not None:
                    v = vals if self.one_step else np.where(self.step_of[cols] == i, vals, 0.0)
                    totals[:, i] += _row_sums(v, counts)
        for counts, cols, vals in pieces:
            owner = None if self.one_step else self.step_of[cols]
            for i, step in enumerate(self.steps):
                sel = slice(None) if owner is None else owner == i
                if step.normalize_total is not None:
                    factor = np.divide(step.normalize_total, totals[:, i], out=np.zeros(n), where=totals[:, i] > 0).astype(np.float32)
                    vals[sel] *= np.repeat(factor, counts)[sel]
                if step.log1p:
                    if owner is None:
                        np.log1p(vals, out=vals)
                    else:
                        vals[sel] = np.log1p(vals[sel])
            if self.scale is not None:
                vals /= self.scale[cols]  # 1 outside the scaled modalities: an exact no-op there

    def read(self, start: int, stop: int, out: np.ndarray) -> np.ndarray | None:
        """``out[:stop-start]`` filled with the preprocessed chunk, or None to take the dense path."""
        pieces = []
        for rows, colmap, identity in self.parts:
            piece = self._piece(rows, colmap, identity, start, stop)
            if piece is None:
                return None
            pieces.append(piece)
        n = stop - start
        if self.steps:
            self._preprocess(pieces, n)
        view = out[:n]
        if len(pieces) == 1:
            counts, cols, vals = pieces[0]
            small = len(vals) < 2**31 - 1
            ptr = np.zeros(n + 1, dtype=np.int32 if small else np.int64)
            np.cumsum(counts, out=ptr[1:])
            sp.csr_matrix((vals, cols.astype(ptr.dtype, copy=False), ptr), shape=view.shape).toarray(out=view)
        else:
            view.fill(0)
            flat = view.reshape(-1)
            for counts, cols, vals in pieces:
                flat[np.repeat(np.arange(n, dtype=np.int64) * self.n_inputs, counts) + cols] = vals
        return view


def chunk_reader(data: InputData, steps: list[Step], source: str) -> Callable[[int, int, np.ndarray], np.ndarray]:
    """``read(start, stop, buffer)``: the chunk's graph input, checked and preprocessed."""
    sparse = SparseReader(data, steps) if SparseReader.applies(data) else None

    def read(start: int, stop: int, buf: np.ndarray) -> np.ndarray:
        if sparse is not None:
            x = sparse.read(start, stop, buf)
            if x is not None:
                return x
        x = data.read(start, stop, buf)
        check_values(x, start, source)
        apply_preprocessing(x, steps)
        return x

    return read


def prepared_chunks(read: Callable, n: int, rows: int, buffers: list[np.ndarray]) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, x)`` for every chunk; the next one is prepared in a worker thread meanwhile.

    With two buffers the worker fills one while the caller uses the other (h5py, numpy and
    scipy release the GIL for most of a chunk, onnxruntime for the whole run). A failure in the
    worker is raised here, at that chunk; on exit the worker's chunk in flight is awaited.
    """
    ranges = [(s, min(n, s + rows)) for s in range(0, n, rows)]
    if len(buffers) < 2 or len(ranges) < 2:
        for start, stop in ranges:
            yield start, stop, read(start, stop, buffers[0])
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="inclust-read") as pool:
        future = pool.submit(read, *ranges[0], buffers[0])
        for i, (start, stop) in enumerate(ranges):
            x = future.result()
            if i + 1 < len(ranges):
                future = pool.submit(read, *ranges[i + 1], buffers[(i + 1) % 2])
            yield start, stop, x


def _stream(options, manifest, graph, data, covariates, target, steps, backend, tmp, provenance) -> None:
    from tqdm import tqdm

    n, bs = data.n_obs, options.batch_size
    rows = chunk_rows(data.values_per_row(), bs, options.value_budget)
    x_bufs = [np.zeros((min(rows, n), data.n_inputs), dtype=np.float32) for _ in range(2 if n > rows else 1)]
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
            for start, stop, x in prepared_chunks(chunk_reader(data, steps, source), n, rows, x_bufs):
                cov = covariates.take(start, stop, cov_buf)
                tgt = target.take(start, stop, tgt_buf) if target is not None else None
                for b in range(0, stop - start, bs):
                    e = min(stop - start, b + bs)
                    out = backend.run(graph, x[b:e], cov[b:e], None if tgt is None else tgt[b:e])
                    if start == 0 and b == 0:
                        _check_outputs(graph, manifest, out, e - b)
                        buffers = {k: np.empty((len(x_bufs[0]), v.shape[1]), np.float32) for k, v in out.items() if k in OUTPUTS}
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
