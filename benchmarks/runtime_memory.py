"""Peak memory of ``inclust-run impute`` on a generated 1,000,000-cell sparse h5ad (issue 5).

Steps: export an (untrained) model shaped like the MERFISH task (153 genes, 122-gene panel,
encoder 200-50, latent 50, decoder 200, 13 labels) with ``inclust_plus.export``; write a CSR
h5ad of N cells x the 122 panel genes chunk by chunk with h5py (so generating it needs little
memory either); run ``inclust-run impute`` in a subprocess and read its peak RSS from
``os.wait4`` on that process (started from a small launcher, see :func:`bench_common.run_measured`); spot-check the first
cells of the output against onnxruntime called directly; append the numbers to
``benchmarks/results/runtime_memory.json``.

Issue 11: ``--genes G`` makes the panel G genes wide (all of them inputs; ``--out-genes`` of them
decoded), ``--workers N`` forces N concurrent inference calls and ``--input-format`` picks the
feed: memory must stay under the limit whatever N (one budget for all chunks in flight).

Usage: python benchmarks/runtime_memory.py [--cells 1000000] [--genes 2000 --out-genes 200 --density 0.1 --workers 16] [--workdir DIR] [--keep]
Needs the export extra (torch) for the model; the measured run itself is torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import io_sizes, merfish_checkpoint, run_measured, write_sparse_counts_h5ad  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "runtime_memory.json"
N_GENES, N_PANEL, N_LABELS = 153, 122, 13
LIMIT_MB = 1536


def export_model(folder: Path, genes: int | None = None, out_genes: int | None = None) -> Path:
    """The MERFISH-shaped random model's export (``genes``: a square model of that many genes, all inputs)."""
    from inclust_plus.export import export_model as export

    n_genes, n_panel = (genes, genes) if genes else (N_GENES, N_PANEL)
    ckpt = merfish_checkpoint(folder / "model.pt", n_genes, n_panel, out_genes, name="merfish_shaped_untrained")
    return export(ckpt, folder / "export", torchscript=False)


def write_sparse_h5ad(path: Path, n_cells: int, density: float, chunk: int = 100_000, seed: int = 0, n_panel: int = N_PANEL) -> int:
    """CSR h5ad of ``n_cells`` x the panel genes, values in [0, 1]; returns the number of non-zeros."""
    return write_sparse_counts_h5ad(
        path, n_cells, [f"gene{i:03d}" for i in range(n_panel)], density, chunk=chunk, seed=seed,
        values=lambda rng, n: rng.random(n, dtype=np.float32), dataset="merfish",
    )


def spot_check(manifest: Path, src: Path, out: Path, n: int = 2048, n_panel: int = N_PANEL) -> float:
    """max |diff| between the output's first ``n`` cells and onnxruntime run directly on them."""
    import onnxruntime as ort
    import scipy.sparse as sp

    graph = json.loads(manifest.read_text())["graphs"][0]
    with h5py.File(src, "r") as f:
        g = f["X"]
        ptr = g["indptr"][: n + 1]
        x = sp.csr_matrix((g["data"][: ptr[-1]], g["indices"][: ptr[-1]], ptr), shape=(n, n_panel)).toarray()
    sess = ort.InferenceSession(str(manifest.parent / graph["file"]), providers=["CPUExecutionProvider"])
    y, latent, _ = sess.run(["y", "latent", "label_probs"], {"x": x.astype(np.float32), "covariate": np.ones(n, np.int64), "target_covariate": np.zeros(n, np.int64)})
    with h5py.File(out, "r") as f:
        imputed = f["layers"]["inclust_imputed"]  # X keeps the measured values (CSR for a CSR input)
        x = f["X"]
        x_shape = tuple(x.attrs["shape"]) if isinstance(x, h5py.Group) else x.shape
        assert imputed.shape == x_shape == (int(f["obs"]["_index"].shape[0]), len(graph["output_features"]))
        return float(max(np.abs(imputed[:n] - y).max(), np.abs(f["obsm"]["X_inclust"][:n] - latent).max()))




def measure(cmd: list[str], log: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and wall time of ``cmd``, from ``wait4`` in a small launcher process."""
    res = run_measured(cmd, log)
    return res["maxrss_kib"] / 1024, res["wall"]  # Linux: ru_maxrss is in KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--density", type=float, default=0.12, help="fraction of non-zero panel genes per cell (real data: 0.12)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--genes", type=int, default=None, help="panel width (default: the MERFISH shape, 122 of 153 genes)")
    parser.add_argument("--out-genes", type=int, default=None, help="decoded genes (default: all); keeps the output file small")
    parser.add_argument("--workers", type=int, default=None, help="inclust-run --workers (default: one per core)")
    parser.add_argument("--input-format", default="auto", choices=["auto", "dense", "csr"])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results/runtime_memory.json")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="inclust_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        manifest = export_model(work, args.genes, args.out_genes)
        n_panel = args.genes or N_PANEL
        src = work / "cells.h5ad"
        nnz = write_sparse_h5ad(src, args.cells, args.density, n_panel=n_panel)
        gen_s = time.perf_counter() - t0
        out = work / "imputed.h5ad"
        exe = Path(sys.executable).with_name("inclust-run")
        cmd = [str(exe), "impute", "--onnx", str(manifest), "--input", str(src), "--output", str(out),
               "--combination", "merfish_to_rna", "--covariate-key", "dataset", "--batch-size", str(args.batch_size), "--quiet", "--force",
               "--input-format", args.input_format] + (["--workers", str(args.workers)] if args.workers else [])
        peak_mb, wall = measure(cmd, work / "stderr.txt")
        diff = spot_check(manifest, src, out, n_panel=n_panel)
        result = {
            "benchmark": "runtime_memory",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cells": args.cells,
            "input_genes": n_panel,
            "output_genes": args.out_genes or args.genes or N_GENES,
            "workers": args.workers,
            "input_format": args.input_format,
            **io_sizes(src, out, nnz, args.batch_size),
            "peak_rss_mb": round(peak_mb, 1),
            "limit_mb": LIMIT_MB,
            "passed": peak_mb < LIMIT_MB,
            "wall_s": round(wall, 2),
            "cells_per_s": round(args.cells / wall),
            "spot_check_max_abs_diff": diff,
            "generation_s": round(gen_s, 1),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "command": " ".join(["inclust-run"] + cmd[1:]).replace(str(work), "$WORK"),
        }
        print(json.dumps(result, indent=2))
        if not args.no_record:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            runs = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
            RESULTS.write_text(json.dumps(runs + [result], indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
