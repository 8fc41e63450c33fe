"""End-to-end ``inclust-run impute`` on 1,000,000 synthetic cells x 2,000 genes, next to bare onnxruntime.

The model: 2,000 genes -> 200 proteins (rna_to_protein, the paper's layer sizes, seeded random
weights) with counts preprocessing (normalize_total 1e4, log1p, per-gene max scale) that the
runtime applies, exported without TorchScript. The input: a CSR h5ad of counts at 10% density
(``--density``), written with h5py chunk by chunk.

Measured:

- end to end: ``inclust-run impute`` in a subprocess (wall time, cells/s, peak RSS from ``wait4``,
  started from a fresh launcher so the RSS is the runtime's own);
- bare onnxruntime: the same graph run over in-memory, already preprocessed float32 batches of
  the runtime's batch size, the better of one call at a time (session with the runtime's
  settings) and one caller per core on one-thread sessions: the upper bound for the runtime;
- where the end-to-end time goes: the runtime's own stages (read CSR chunk, value checks,
  preprocessing, graph, output write) timed one by one over the first chunks.

    python benchmarks/impute_e2e.py                  # 1,000,000 cells (about 2-3 minutes on 2 cores)
    python benchmarks/impute_e2e.py --quick          # 20,000 cells x 200 genes -> 20 (smoke run)

Before/after a change (``--compare-with DIR``, DIR another checkout such as ``git worktree add
--detach /tmp/main-ref main``): the same ``inclust-run impute`` of this tree and of DIR, run
alternately ``--repeats`` times each on the same input so that load affects both alike; both are
imported the same way (``python -S`` with the package folders of their checkout first on the path),
each reads the checkpoint exported by its own exporter (manifest formats may differ),
and the best wall time of each gives the ratio (results/impute_e2e_compare.json; the mode is impute_e2e_compare.py).

    python benchmarks/impute_e2e.py --cells 100000 --compare-with /tmp/main-ref --repeats 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ModelShape, best_time, io_sizes, machine, make_export, now, run_measured, write_result, write_sparse_counts_h5ad  # noqa: E402
from impute_e2e_compare import compare  # noqa: E402  (the --compare-with mode)

RSS_LIMIT_MB = 1536
BATCH = 4096  # inclust-run's default --batch-size


def shape_for(n_genes: int, n_proteins: int) -> ModelShape:
    return ModelShape(f"rna{n_genes}_to_protein{n_proteins}", (("rna", n_genes), ("protein", n_proteins)),
                      "rna_to_protein", "rna", "protein", preprocessing=True)


def run_cli(cmd: list[str], log: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and wall seconds of ``cmd``, read by a small fresh launcher with ``wait4``."""
    res = run_cli_usage(cmd, log)
    return res["maxrss_kib"] / 1024, res["wall"]


def run_cli_usage(cmd: list[str], log: Path) -> dict:
    """``wait4``'s account of ``cmd``: rc, maxrss_kib, wall and cpu (user + system) seconds."""
    return run_measured(cmd, log)


class Pipeline:
    """The runtime's own pieces, opened on the benchmark's input, for bare-ORT and per-stage timing."""

    def __init__(self, manifest_path: Path, src: Path, combination: str):
        from inclust_plus.runtime.backend import OnnxBackend
        from inclust_plus.runtime.inputs import open_input
        from inclust_plus.runtime.manifest import load_manifest
        self.manifest = load_manifest(manifest_path)
        self.graph = self.manifest.graph(combination)
        self.data = open_input(src, self.graph)
        self.steps = self.graph.runtime_plan
        self.backend = OnnxBackend("cpu")
        self.backend.prepare(self.graph)
        self.session = self.backend.sessions[str(self.graph.path)][0]

    def preprocessed(self, n: int) -> np.ndarray:
        from inclust_plus.runtime.preprocess import apply_preprocessing

        x = np.zeros((n, self.data.n_inputs), np.float32)
        self.data.read(0, n, x)
        apply_preprocessing(x, self.steps)
        return x

    def bare_onnx(self, x: np.ndarray, batch: int) -> dict:
        """cells/s of onnxruntime alone over in-memory ``x`` in batches of ``batch``, two ways (best of 3 passes each):

        ``sequential``: one call at a time on the runtime's session (intra-op threads = cores);
        ``concurrent``: one caller thread per core on a one-thread session (what ``inclust-run``
        does on CPU). The better of the two is the bound the end-to-end run is compared with.
        """
        import onnxruntime as ort

        from inclust_plus.runtime.backend import usable_cores

        batch = min(batch, len(x))
        cov = np.ones(batch, np.int64)
        tgt = np.zeros(batch, np.int64)
        n = len(x) - len(x) % batch
        starts = list(range(0, n, batch))

        def calls(session, mine):
            for b in mine:
                session.run(None, {"x": x[b : b + batch], "covariate": cov, "target_covariate": tgt})

        sequential = n / best_time(lambda: calls(self.session, starts), repeats=3, min_seconds=0.0, max_seconds=30)
        cores = usable_cores()
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        single = ort.InferenceSession(str(self.graph.path), so, providers=["CPUExecutionProvider"])
        with ThreadPoolExecutor(cores) as pool:
            concurrent = n / best_time(lambda: list(pool.map(lambda k: calls(single, starts[k::cores]), range(cores))),
                                       repeats=3, min_seconds=0.0, max_seconds=30)
        return {"sequential": round(sequential), "concurrent": round(concurrent), "best": round(max(sequential, concurrent))}

    def stages(self, rows: int, n_chunks: int, batch: int, out_dir: Path) -> dict:
        """Seconds of each runtime stage over ``n_chunks`` chunks of ``rows`` cells, run one after another.

        ``prepare`` is the runtime's chunk reader (CSR read, value checks and preprocessing on the
        stored values; in ``inclust-run`` it runs in a worker thread, overlapped with the graph);
        ``prepare_dense`` is the plain path it replaces (dense chunk, then checks and preprocessing).
        """
        from inclust_plus.runtime.output import OutputWriter
        from inclust_plus.runtime.preprocess import apply_preprocessing, check_values
        from inclust_plus.runtime.runner import chunk_reader

        n = min(self.data.n_obs, rows * n_chunks)
        read = chunk_reader(self.data, self.steps, "bench")
        x_buf = np.zeros((rows, self.data.n_inputs), np.float32)
        cov = np.ones(rows, np.int64)
        tgt = np.zeros(rows, np.int64)
        writer = OutputWriter(out_dir / "stages.h5ad", n, self.data.obs, list(self.graph.output_features), self.manifest.latent_dim,
                              list(self.manifest.label_categories))
        spent = dict.fromkeys(("prepare_dense", "prepare", "graph", "write"), 0.0)
        outs = {}
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            t0 = time.perf_counter()
            x = self.data.read(start, stop, x_buf)
            check_values(x, start, "bench")
            apply_preprocessing(x, self.steps)
            t1 = time.perf_counter()
            x = read(start, stop, x_buf)
            t2 = time.perf_counter()
            for b in range(0, stop - start, batch):
                e = min(stop - start, b + batch)
                y, latent, probs = self.session.run(None, {"x": x[b:e], "covariate": cov[b:e], "target_covariate": tgt[b:e]})
                if not outs:
                    outs = {k: np.empty((rows, v.shape[1]), np.float32) for k, v in zip(("y", "latent", "probs"), (y, latent, probs))}
                outs["y"][b:e], outs["latent"][b:e], outs["probs"][b:e] = y, latent, probs
            t3 = time.perf_counter()
            writer.write(start, outs["y"][: stop - start], outs["latent"][: stop - start], outs["probs"][: stop - start])
            t4 = time.perf_counter()
            for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[key] += dt
        writer.finish({})
        return {"cells": n, **{f"{k}_us_per_cell": round(v / n * 1e6, 2) for k, v in spent.items()}}

    def close(self) -> None:
        self.data.close()
        self.backend.close()


def spot_check(out: Path, expected_y: np.ndarray) -> float:
    import h5py

    with h5py.File(out, "r") as f:
        return float(np.abs(f["layers"]["inclust_imputed"][: len(expected_y)] - expected_y).max())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=None, help="default 1,000,000 (20,000 with --quick)")
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--proteins", type=int, default=200)
    parser.add_argument("--density", type=float, default=0.10, help="fraction of non-zero genes per cell")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--quick", action="store_true", help="20,000 cells x 200 genes (smoke run)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--compare-with", type=Path, default=None, metavar="CHECKOUT",
                        help="also time another checkout's runtime, alternately with this one (before/after a change)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tree with --compare-with")
    args = parser.parse_args(argv)
    if args.quick:
        args.genes, args.proteins = 200, 20
    args.cells = args.cells or (20_000 if args.quick else 1_000_000)

    shape = shape_for(args.genes, args.proteins)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="inclust_e2e_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        _, manifest = make_export(shape, work / "model", torchscript=False)
        src = work / "cells.h5ad"
        genes = [f"rna{i:05d}" for i in range(args.genes)]
        nnz = write_sparse_counts_h5ad(src, args.cells, genes, args.density)
        generation_s = time.perf_counter() - t0
        print(f"impute_e2e: wrote {args.cells:,} cells x {args.genes:,} genes ({nnz:,} values) in {generation_s:.1f} s", flush=True)

        if args.compare_with is not None:
            result = compare(args, work, manifest, src, shape.combination)
            write_result("impute_e2e_compare", result, *([args.out] if args.out else []))
            return result
        out = work / "imputed.h5ad"
        exe = Path(sys.executable).with_name("inclust-run")
        cmd = [str(exe), "impute", "--onnx", str(manifest), "--input", str(src), "--output", str(out),
               "--combination", shape.combination, "--batch-size", str(args.batch_size), "--quiet", "--force"]
        peak_mb, wall = run_cli(cmd, work / "stderr.txt")
        e2e = args.cells / wall
        print(f"impute_e2e: inclust-run {wall:.1f} s, {e2e:,.0f} cells/s, peak RSS {peak_mb:.0f} MiB", flush=True)

        pipe = Pipeline(manifest, src, shape.combination)
        try:
            n_bare = min(args.cells, 16 * args.batch_size)
            x = pipe.preprocessed(n_bare)
            bare_ways = pipe.bare_onnx(x, args.batch_size)
            bare = bare_ways["best"]
            y_ref = pipe.session.run(None, {"x": x[:1000], "covariate": np.ones(min(1000, len(x)), np.int64),
                                             "target_covariate": np.zeros(min(1000, len(x)), np.int64)})[0]
            diff = spot_check(out, y_ref)
            del x
            from inclust_plus.runtime.runner import VALUE_BUDGET, chunk_rows

            rows = chunk_rows(pipe.data.values_per_row(), args.batch_size, VALUE_BUDGET)
            stages = pipe.stages(rows, 3, args.batch_size, work)
        finally:
            pipe.close()
        print(f"impute_e2e: bare onnxruntime {bare:,.0f} cells/s; end to end = {e2e / bare:.0%} of it; stages {stages}", flush=True)
        result = {
            "benchmark": "impute_e2e",
            "date": now(),
            "quick": args.quick,
            "cells": args.cells,
            "input_genes": args.genes,
            "output_features": args.proteins,
            "density": args.density,
            **io_sizes(src, out, nnz, args.batch_size),
            "preprocessing": "normalize_total 1e4, log1p, per-gene scale (applied by the runtime)",
            "wall_s": round(wall, 2),
            "cells_per_s": round(e2e),
            "peak_rss_mb": round(peak_mb, 1),
            "rss_limit_mb": RSS_LIMIT_MB,
            "bare_onnxruntime_cells_per_s": round(bare),
            "bare_onnxruntime_ways": bare_ways,
            "bare_cells_measured": n_bare,
            "ratio_to_bare": float(f"{e2e / bare:.3g}"),
            "stages": stages,
            "spot_check_max_abs_diff": diff,
            "generation_s": round(generation_s, 1),
            "acceptance": {
                "ratio_to_bare": {"value": float(f"{e2e / bare:.3g}"), "target": 0.5, "passed": e2e / bare >= 0.5},
                "peak_rss_mb": {"value": round(peak_mb, 1), "target": RSS_LIMIT_MB, "passed": peak_mb < RSS_LIMIT_MB},
            },
            "command": " ".join(["inclust-run"] + cmd[1:]).replace(str(work), "$WORK"),
            "machine": {**machine(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        }
        if args.out is not None or not args.quick:
            write_result("impute_e2e_quick" if args.quick else "impute_e2e", result, *([args.out] if args.out else []))
        return result
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
