"""Training throughput (rows/s) on the MERFISH reference data next to the official implementation.

The official inClust+ (Keras) trains 50 epochs over the 30,370 rows of the standard split in
33.5 s on a 2-core CPU, about 45,000 rows/s (../shared/data/README.md). This script trains the
task (a) preset with the same batch size (500) on the same split (reference + pseudo-spatial
query, seed 0) through the package API and reports the trainer's own rows/s (the loop only, as
the official figure) and the wall time of ``InClust.fit`` including data assembly.

    python benchmarks/training_throughput.py              # 3 runs of 10 epochs, best reported
    python benchmarks/training_throughput.py --quick      # 2 epochs on 3,000 cells (smoke run)

Without the real data (``--data`` missing) it trains on synthetic cells of the same shape so
that the smoke run works anywhere; the result says which data was used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DATA, add_run_options, machine, now, write_result  # noqa: E402

OFFICIAL_ROWS_PER_S = 45_000  # 50 epochs x 30,370 rows in 33.5 s
BATCH = 500


def _synthetic(n_cells: int, seed: int = 0):
    """An AnnData shaped like the reference (153 genes in [0, 1], 88% zeros, 13 types, 122-gene panel)."""
    import anndata
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    x = rng.random((n_cells, 153), dtype=np.float32) * (rng.random((n_cells, 153)) < 0.12)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"type{i:02d}" for i in rng.integers(0, 13, n_cells)])},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame({"in_merfish_panel": np.arange(153) < 122}, index=[f"gene{i:03d}" for i in range(153)])
    return anndata.AnnData(sp.csr_matrix(x), obs=obs, var=var)


def run_once(split, epochs: int, threads: int) -> dict:
    import torch

    from inclust_plus.training.model import InClust
    from inclust_plus.training.presets import preset_config

    torch.set_num_threads(threads)
    # One network, as the official implementation trains (the preset's ensemble trains its members one
    # after another at this same rate).
    cfg = preset_config("imputation", {"model": {"ensemble": 1}, "training": {"epochs": epochs, "batch_size": BATCH, "threads": threads}})
    t0 = time.perf_counter()
    _, data, result = InClust.fit(cfg, {"scrna": split.reference, "merfish": split.query}, progress=False)
    wall = time.perf_counter() - t0
    return {
        "rows": int(len(data.row_cell)),
        "epochs": result.epochs_run,
        "train_seconds": round(result.seconds, 3),
        "fit_wall_seconds": round(wall, 3),
        "rows_per_s": round(result.rows_per_second),
        "final_loss": round(result.history["total"][-1], 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_options(parser, 10, "epochs per run", "repeat the training; the best run is reported", "2 epochs on 3,000 cells, one run")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)

    from evaluation.splits import pseudo_spatial_split

    if args.quick:
        args.epochs, args.runs = 2, 1
    if args.data.is_file() and not args.quick:
        import anndata

        adata, source = anndata.read_h5ad(args.data), args.data.name
    else:
        adata, source = _synthetic(3000 if args.quick else 30_370), "synthetic (real data not found or --quick)"
    split = pseudo_spatial_split(adata, seed=0)
    runs = []
    for _ in range(args.runs):
        runs.append(run_once(split, args.epochs, args.threads))
        print(f"training: {runs[-1]['rows_per_s']:,} rows/s ({runs[-1]['epochs']} epochs in {runs[-1]['train_seconds']} s)", flush=True)
    best = max(runs, key=lambda r: r["rows_per_s"])
    result = {
        "benchmark": "training_throughput",
        "date": now(),
        "quick": args.quick,
        "data": source,
        "task": "imputation preset, standard split (seed 0), reference + query rows",
        "batch_size": BATCH,
        "torch_threads": args.threads,
        "runs": runs,
        "best_rows_per_s": best["rows_per_s"],
        "official_rows_per_s": OFFICIAL_ROWS_PER_S,
        "speedup_vs_official": round(best["rows_per_s"] / OFFICIAL_ROWS_PER_S, 2),
        "target_speedup": 2.0,
        "passed": best["rows_per_s"] >= 2 * OFFICIAL_ROWS_PER_S,
        "machine": {**machine(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
    }
    if args.out is not None or not args.quick:
        write_result("training_throughput_quick" if args.quick else "training_throughput", result, *( [args.out] if args.out else []))
    return result


if __name__ == "__main__":
    main()
