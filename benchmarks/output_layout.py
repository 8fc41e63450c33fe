"""What the honest output layout costs ``inclust-run impute``, side by side with the old one.

The honest layout (inclust_plus/results.py) keeps the measured values in X (re-read from the
input, stored as CSR), puts the model's values in ``layers["inclust_imputed"]``, carries the
input's layers and var columns over. The old layout wrote the model's values to X and nothing else.
Both run in this one process, interleaved (old, new, new, old, ...), on the same export and input,
so machine load hits both alike; the old one is the same run loop with the layout planning
switched off (``runner.plan_layout`` returning None), which is exactly what the runner did before.

Model: the MERFISH shape (panel of 122 genes -> all 153, seeded random weights, values in [0, 1]).
Input: a CSR h5ad at 30% density with a ``counts`` layer (so a layer is carried over).

    python benchmarks/output_layout.py            # 200,000 cells, 3 rounds
    python benchmarks/output_layout.py --quick    # 20,000 cells, 2 rounds
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import MERFISH, machine, make_export, now, write_result, write_sparse_counts_h5ad  # noqa: E402


def _add_counts_layer(path: Path) -> None:
    """Copy X to layers/counts inside the file (a layer for the honest layout to carry over)."""
    with h5py.File(path, "a") as f:
        layers = f.require_group("layers")
        layers.attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
        f.copy(f["X"], layers, name="counts")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.quick:
        args.cells, args.rounds = 20_000, 2

    from inclust_plus.runtime import runner
    from inclust_plus.runtime.runner import RunOptions, run

    work = Path(tempfile.mkdtemp(prefix="inclust_layout_"))
    try:
        _, manifest = make_export(MERFISH, work / "model", torchscript=False)
        genes = [f"rna{i:05d}" for i in range(MERFISH.panel)]
        src = work / "query.h5ad"
        write_sparse_counts_h5ad(src, args.cells, genes, 0.3, values=lambda rng, n: rng.random(n, dtype=np.float32), dataset="query")
        _add_counts_layer(src)
        honest_plan = runner.plan_layout
        times: dict[str, list[float]] = {"old": [], "honest": []}
        sizes: dict[str, int] = {}
        for r in range(args.rounds):
            for name in (("old", "honest") if r % 2 == 0 else ("honest", "old")):
                runner.plan_layout = honest_plan if name == "honest" else (lambda *a, **k: None)
                out = work / f"{name}.h5ad"
                t0 = time.perf_counter()
                run(RunOptions("impute", onnx=manifest.parent, input=src, output=out, combination=MERFISH.combination, quiet=True, force=True))
                times[name].append(time.perf_counter() - t0)
                sizes[name] = out.stat().st_size
        runner.plan_layout = honest_plan
        with h5py.File(work / "honest.h5ad", "r") as f, h5py.File(work / "old.h5ad", "r") as g:
            diff = float(np.abs(f["layers"]["inclust_imputed"][:2048] - g["X"][:2048]).max())
        median = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "benchmark": "output_layout", "measured": now(), "machine": machine(), "cells": args.cells, "rounds": args.rounds,
            "seconds": times, "median_seconds": median, "ratio_honest_over_old": median["honest"] / median["old"],
            "cells_per_second": {k: args.cells / v for k, v in median.items()}, "output_bytes": sizes,
            "model_values_max_abs_diff": diff,
        }
        path = write_result("output_layout_quick" if args.quick else "output_layout", result, args.out or Path(__file__).resolve().parent / "results")
        print(f"{args.cells:,} cells: old layout {median['old']:.2f} s, honest layout {median['honest']:.2f} s "
              f"(x{result['ratio_honest_over_old']:.2f}); output {sizes['old'] / 1e6:.0f} MB -> {sizes['honest'] / 1e6:.0f} MB; wrote {path}")
        return result
    finally:
        runner.plan_layout = honest_plan if "honest_plan" in locals() else runner.plan_layout
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
