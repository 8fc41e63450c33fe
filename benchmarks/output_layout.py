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

Before/after a change (``--compare-with CHECKOUT``, e.g. ``git worktree add --detach /tmp/ref main``):
three contenders, each a fresh process importing its tree's package (as ``impute_e2e.py
--compare-with`` does): this tree's honest layout, CHECKOUT's honest layout and this tree with the
layout switched off (the old layout), in rotating order per round, on one export and one input.
Median per contender of the run's own seconds (also the process's wall and cpu time, from
``wait4``), the load average before each run, and two output checks: every dataset and attribute
of this tree's file equal to CHECKOUT's (the run's seconds and planned chunk size aside), and,
with the chunk size pinned (``value_budget``) and the clock stopped, the two files equal to the byte.

    python benchmarks/output_layout.py --compare-with /work/base_cc659 --rounds 3
"""

from __future__ import annotations

import argparse
import json
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


_RUN_LAYOUT = """
import json, sys, time
sys.path[:0] = sys.argv[1:3]
from inclust_plus.runtime import runner
mode, report = sys.argv[7], sys.argv[8]
if mode == "old":
    runner.plan_layout = lambda *a, **k: None
kw = {}
if mode == "pinned":  # identical chunks in both trees, the run's clock stopped: the files can be compared byte for byte
    kw["value_budget"] = int(sys.argv[9])
    clock = time.perf_counter
    time.perf_counter = lambda: 0.0
t0 = time.process_time()
runner.run(runner.RunOptions("impute", onnx=sys.argv[3], input=sys.argv[4], output=sys.argv[5], combination=sys.argv[6], quiet=True,
                             force=True, **kw))
open(report, "w").write(json.dumps({"cpu_in_run": time.process_time() - t0}))
"""
PINNED_VALUE_BUDGET = 800_000  # stored values a chunk: small enough to bind before either tree's memory cap
IGNORED = ("/uns/inclust/seconds", "/uns/inclust/chunk_rows")  # timing, and the chunk size each tree planned


def h5_differences(a: Path, b: Path, ignored=IGNORED) -> list[str]:
    """Paths of datasets or attributes that differ between two HDF5 files (or exist in one only)."""
    out: list[str] = []

    def same(x, y) -> bool:
        x, y = np.asarray(x), np.asarray(y)
        return x.shape == y.shape and x.dtype == y.dtype and bool(np.array_equal(x, y))

    def walk(g, h, path):
        if set(g.attrs) != set(h.attrs) or any(not same(g.attrs[k], h.attrs[k]) for k in g.attrs):
            out.append(f"{path or '/'} (attributes)")
        for key in sorted(set(g) | set(h)):
            p = f"{path}/{key}"
            if p in ignored:
                continue
            if key not in g or key not in h:
                out.append(f"{p} (in one file only)")
            elif isinstance(g[key], h5py.Group) and isinstance(h[key], h5py.Group):
                walk(g[key], h[key], p)
            elif isinstance(g[key], h5py.Dataset) and isinstance(h[key], h5py.Dataset):
                if not same(g[key][()], h[key][()]) or set(g[key].attrs) != set(h[key].attrs) or any(
                        not same(g[key].attrs[k], h[key].attrs[k]) for k in g[key].attrs):
                    out.append(p)
            else:
                out.append(f"{p} (group in one file, dataset in the other)")

    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        walk(f, g, "")
    return out


def compare(args, work: Path, manifest: Path, src: Path) -> dict:
    """This tree's honest layout, ``args.compare_with``'s and the old layout, in fresh processes, rotating order."""
    import os
    import subprocess
    import sysconfig

    from bench_common import run_measured
    from impute_e2e_compare import package_tree

    site = sysconfig.get_paths()["purelib"]
    trees = {"this": package_tree(Path(__file__).resolve().parents[1], work / "tree_this"),
             "reference": package_tree(args.compare_with, work / "tree_reference")}
    contenders = [("this", "this", "honest"), ("reference", "reference", "honest"), ("old", "this", "old")]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in contenders}

    def once(tree: str, mode: str, out: Path, *extra: str) -> dict:
        report = work / "report.json"
        cmd = [sys.executable, "-S", "-c", _RUN_LAYOUT, str(trees[tree]), site, str(manifest.parent), str(src), str(out),
               MERFISH.combination, mode, str(report), *extra]
        usage = run_measured(cmd, work / "stderr.txt")
        return {"wall_s": round(usage["wall"], 3), "cpu_s": round(usage["cpu"], 3), "maxrss_mib": round(usage["maxrss_kib"] / 1024, 1),
                "cpu_in_run_s": round(json.loads(report.read_text())["cpu_in_run"], 3)}

    for r in range(args.rounds):
        for name, tree, mode in contenders[r % 3:] + contenders[: r % 3]:
            load = os.getloadavg()[0]
            got = once(tree, mode, work / f"{name}.h5ad")
            runs[name].append({**got, "load_1min_before": round(load, 2)})
            print(f"output_layout: round {r + 1} {name}: {got['wall_s']:.2f} s wall, {got['cpu_s']:.2f} s cpu, "
                  f"{got['maxrss_mib']:.0f} MiB peak (load {load:.2f})", flush=True)
    differences = h5_differences(work / "this.h5ad", work / "reference.h5ad")
    with h5py.File(work / "this.h5ad", "r") as f, h5py.File(work / "reference.h5ad", "r") as g:
        chunk_rows = {"this": int(f["uns/inclust/chunk_rows"][()]), "reference": int(g["uns/inclust/chunk_rows"][()])}
    for tree in trees:
        once(tree, "pinned", work / f"pinned_{tree}.h5ad", str(PINNED_VALUE_BUDGET))
    pinned_same = (work / "pinned_this.h5ad").read_bytes() == (work / "pinned_reference.h5ad").read_bytes()
    median = {name: {k: float(np.median([x[k] for x in v])) for k in ("wall_s", "cpu_s", "maxrss_mib")} for name, v in runs.items()}

    def head(path: Path) -> str:
        return subprocess.run(["git", "-C", str(path), "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()

    return {
        "benchmark": "output_layout_compare", "measured": now(), "machine": machine(), "cells": args.cells, "rounds": args.rounds,
        "this": f"commit {head(Path(__file__).resolve().parents[1])}", "reference": f"{args.compare_with} at commit {head(args.compare_with)}",
        "runs": runs, "median": median,
        "ratio_reference_over_this_wall": round(median["reference"]["wall_s"] / median["this"]["wall_s"], 3),
        "ratio_reference_over_this_cpu": round(median["reference"]["cpu_s"] / median["this"]["cpu_s"], 3),
        "ratio_this_over_old_wall": round(median["this"]["wall_s"] / median["old"]["wall_s"], 3),
        "ratio_reference_over_old_wall": round(median["reference"]["wall_s"] / median["old"]["wall_s"], 3),
        "content_differences": differences, "chunk_rows": chunk_rows,
        "pinned_chunks_byte_identical": pinned_same, "pinned_value_budget": PINNED_VALUE_BUDGET,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=None, help="default 200,000 (--quick: 20,000)")
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 2)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--compare-with", type=Path, default=None, metavar="CHECKOUT", help="another checkout to run side by side")
    args = ap.parse_args(argv)
    args.cells = args.cells or (20_000 if args.quick else 200_000)
    args.rounds = args.rounds or (2 if args.quick else 3)

    from inclust_plus.runtime import runner
    from inclust_plus.runtime.runner import RunOptions, run

    work = Path(tempfile.mkdtemp(prefix="inclust_layout_"))
    try:
        _, manifest = make_export(MERFISH, work / "model", torchscript=False)
        genes = [f"rna{i:05d}" for i in range(MERFISH.panel)]
        src = work / "query.h5ad"
        write_sparse_counts_h5ad(src, args.cells, genes, 0.3, values=lambda rng, n: rng.random(n, dtype=np.float32), dataset="query")
        _add_counts_layer(src)
        if args.compare_with is not None:
            result = compare(args, work, manifest, src)
            path = write_result("output_layout_compare_quick" if args.quick else "output_layout_compare", result,
                                args.out or Path(__file__).resolve().parent / "results")
            m = result["median"]
            print(f"{args.cells:,} cells, median wall: this {m['this']['wall_s']:.2f} s, reference {m['reference']['wall_s']:.2f} s, "
                  f"old layout {m['old']['wall_s']:.2f} s; reference/this {result['ratio_reference_over_this_wall']:.3f}; "
                  f"content differences {result['content_differences'] or 'none'}; pinned byte-identical "
                  f"{result['pinned_chunks_byte_identical']}; wrote {path}")
            return result
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
