"""The streaming part of a run: chunk buffers, reading, inference calls, writing, in order.

Split from :mod:`.runner` (which validates and sets up) for issue 11. A chunk is fed either
dense (``x``, any backend) or as CSR entries (CSR graphs, :mod:`.csr_feed`, onnxruntime only).
With onnxruntime every call goes through IO binding and writes its outputs straight into the
chunk's output buffers (``OnnxBackend.run_feeds``); on CUDA those buffers and the input buffers
are page-locked (:mod:`.pinned`), and several chunks are in flight, each in its own worker thread
(with its own session) so that host-device copies of one overlap the compute of another.

Memory: every buffer set (one per chunk in flight) is allocated once and reused; the run loop
sizes chunks so that all sets together stay within one budget (:func:`.runner.plan_chunks`),
whatever the number of workers, the output layout's pieces of each chunk in flight included.

Decoding runs: the worker that reads a chunk hands the rows it reads to the output layout's tap
(:mod:`.layout_chunk`) before preprocessing them, so the measured values, carried layers and
library sizes come from the same read as the graph input.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from inclust_plus import interrupt
from inclust_plus.errors import InclustError

from .backend import OnnxBackend
from .chunks import Cancelled, chunk_reader, ordered_chunks
from .csr_feed import CsrBuffers, csr_chunk_reader
from .output import OutputWriter, disk_errors
from .pinned import host_registry

log = logging.getLogger("inclust_plus.runtime")
OUTPUTS = ("y", "latent", "label_probs", "y_std")  # y_std: only an ensemble's decoding graphs
DECODING = ("impute", "generate")


@dataclass
class Buffers:
    """The buffers of one chunk in flight; outputs are allocated at the first batch, from its shapes."""

    x: np.ndarray | None
    cov: np.ndarray
    tgt: np.ndarray | None
    csr: CsrBuffers | None = None
    out: dict[str, np.ndarray] = field(default_factory=dict)


def _bound_runner(backend):
    """``run_feeds`` of an onnxruntime backend whose ``run`` is its own, else None (plain ``run`` calls)."""
    if isinstance(backend, OnnxBackend) and type(backend).run is OnnxBackend.run:
        return backend.run_feeds
    return None


def check_outputs(graph, manifest, result: dict, n: int) -> None:
    want = {"latent": manifest.latent_dim, "label_probs": len(manifest.label_categories)}
    if graph.decodes:
        want["y"] = len(graph.output_features)
    if graph.has_spread:
        want["y_std"] = len(graph.output_features)
    for name, width in want.items():
        if width == 0:
            continue
        got = result.get(name)
        if got is None or got.shape != (n, width):
            raise InclustError(
                f"graph {graph.name!r} returned {name} of shape {None if got is None else got.shape}, the manifest says ({n}, {width})",
                "re-export the model with inclust-export",
            )


def check_finite(graph, result: dict, start: int) -> None:
    """Refuse NaN or infinity in a graph's outputs (a diverged model computes NaN for every cell;
    issue 25): an error, never a result. Two reductions per output and chunk, no copies; the
    offending cell is looked for only on failure."""
    for key, a in result.items():
        if a is None or a.size == 0 or (np.isfinite(a.min()) and np.isfinite(a.max())):
            continue
        row = start + int(np.argmin(np.isfinite(a).reshape(len(a), -1).all(axis=1)))
        raise InclustError(f"graph {graph.name!r} returned non-finite values (NaN or infinity) in {key}, first for the cell in row {row}: "
                           "the model's training diverged or its graph is damaged", "retrain with a lower learning rate and export again")


def stream(options, manifest, graph, data, covariates, target, plan, backend, tmp, provenance, rows, workers, layout=None) -> None:
    from tqdm import tqdm

    n, bs = data.n_obs, options.batch_size
    size = min(rows, n)
    csr = graph.input_format == "csr"
    bound = _bound_runner(backend)
    pins = host_registry(bool(bound) and backend.on_cuda)
    n_sets = 1 if n <= rows else workers + 1  # one more than the workers: they never wait for the writer
    sets = [Buffers(None if csr else np.zeros((size, data.n_inputs), np.float32), np.zeros(size, np.int64),
                    np.zeros(size, np.int64) if target is not None else None,
                    CsrBuffers(on_grow=pins.register if pins else None) if csr else None) for _ in range(n_sets)]
    if pins is not None:
        pins.register([a for s in sets for a in (s.x, s.cov, s.tgt)])
    write_x = options.command in DECODING
    writer = OutputWriter(tmp, n, data.obs, list(graph.output_features) if write_x else [],
                          manifest.latent_dim if options.command != "annotate" else None, list(manifest.label_categories), layout)
    source = f"{data.path.name} {data.element}"
    read = csr_chunk_reader(data, plan, source) if csr else chunk_reader(data, plan, source)
    stopping = threading.Event()

    def call(chunk, b, e, cov, tgt, bufs):
        feeds = chunk.batch(b, e) if csr else {"x": chunk[b:e]}
        if bound is None:
            return backend.run(graph, feeds["x"], cov, tgt)
        out = {k: v[b:e] for k, v in bufs.out.items()} if bufs.out else None
        return bound(graph, feeds, cov, tgt, out)

    def infer(start: int, stop: int, chunk, bufs: Buffers) -> dict:
        cov = covariates.take(start, stop, bufs.cov)
        tgt = target.take(start, stop, bufs.tgt) if target is not None else None
        for b in range(0, stop - start, bs):
            if stopping.is_set() or interrupt.requested():
                raise Cancelled
            e = min(stop - start, b + bs)
            out = call(chunk, b, e, cov[b:e], None if tgt is None else tgt[b:e], bufs)
            if b == 0 and not bufs.out:
                check_outputs(graph, manifest, out, e - b)
                bufs.out = {k: np.empty((size, v.shape[1]), np.float32) for k, v in out.items() if k in OUTPUTS}
                if pins is not None:
                    pins.register(list(bufs.out.values()))
            elif b == 0:
                check_outputs(graph, manifest, out, e - b)
            for key, buf in bufs.out.items():
                if not np.may_share_memory(out[key], buf):
                    buf[b:e] = out[key]
        views = {k: bufs.out[k][: stop - start] if k in bufs.out else None for k in OUTPUTS}
        check_finite(graph, views, start)
        return views

    def read_into(start, stop, bufs):
        """The chunk's graph input and its output-layout pieces, taken from the same rows as read (input read once)."""
        tap = layout.tap(start, stop) if layout is not None and layout.targets else None  # generate-style: nothing to take
        chunk = read(start, stop, bufs.csr if csr else bufs.x, tap)
        return chunk, (tap.finish() if tap is not None else None)

    if workers > 1:  # each worker reads its chunk and runs the graph on it

        def task(start, stop, bufs):
            chunk, laid = read_into(start, stop, bufs)
            return infer(start, stop, chunk, bufs), laid

        results = ordered_chunks(task, n, rows, sets, workers, stopping)
    else:  # a worker reads the next chunk while this thread runs the graph

        def task(start, stop, bufs):
            return read_into(start, stop, bufs), bufs

        def in_order():
            prepared = ordered_chunks(task, n, rows, sets, 1, stopping)
            try:
                for s, e, ((chunk, laid), bufs) in prepared:
                    yield s, e, (infer(s, e, chunk, bufs), laid)
            finally:
                prepared.close()

        results = in_order()
    started = time.perf_counter()
    try:
        with tqdm(total=n, unit="cells", unit_scale=True, desc=graph.name, file=sys.stderr, disable=options.quiet or not sys.stderr.isatty()) as bar:
            for start, stop, (views, laid) in results:
                interrupt.check()
                with disk_errors():
                    writer.write(start, views["y"], views["latent"], views["label_probs"], views["y_std"], laid)
                bar.update(stop - start)
        seconds = time.perf_counter() - started
        provenance.update(backend.provenance())
        provenance.update(n_obs=n, seconds=round(seconds, 3), concurrent_calls=workers, input_format=graph.input_format,
                          chunk_rows=int(rows), pinned_buffers=pins is not None)
        writer.finish(provenance)
    except BaseException as err:
        stopping.set()
        results.close()  # cancels queued chunks and waits for the running ones
        writer.abort()
        if isinstance(err, Cancelled) and interrupt.requested():
            interrupt.check()  # a worker saw the stop request first: report it as the stop
        raise
    finally:
        if pins is not None:
            pins.close()
    log.info("%d cells in %.1f s (%.0f cells/s) with %s (%s input) on %s", n, seconds, n / max(seconds, 1e-9), graph.name,
             graph.input_format, provenance.get("provider"))
