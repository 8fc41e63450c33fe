"""``impute_e2e.py --compare-with CHECKOUT``: this tree's ``inclust-run impute`` against another checkout's.

Split from :mod:`impute_e2e` (which makes the model, the input and calls :func:`compare`). Both trees
run alternately ``--repeats`` times on the same input so that load affects both alike; each is
imported the same way (``python -S`` with the package folders of its checkout first on the path,
:func:`package_tree`) and reads the checkpoint exported by its own exporter (manifest formats may
differ). The best wall time of each gives the ratio; the chunk reader alone is timed too, being the
hot path where load matters least. ``output_layout.py`` builds its trees with :func:`package_tree`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, now, run_measured  # noqa: E402

_RUN_TREE = (
    "import sys; sys.path[:0] = sys.argv[1:3]; del sys.argv[1:3]; sys.argv[0] = 'inclust-run'; "
    "from inclust_plus.runtime.cli import main; main()"
)


_READ_CHUNKS = """
import json, sys, time
sys.path[:0] = sys.argv[1:3]
import numpy as np
from inclust_plus.runtime.chunks import chunk_reader
from inclust_plus.runtime.inputs import open_input
from inclust_plus.runtime.manifest import load_manifest
from inclust_plus.runtime.runner import VALUE_BUDGET, chunk_rows
manifest = load_manifest(sys.argv[3])
graph = manifest.graph(sys.argv[5])
data = open_input(sys.argv[4], graph)
rows = chunk_rows(data.values_per_row(), int(sys.argv[6]), VALUE_BUDGET)
try:  # a tree before the manifest carried the plan (side-by-side runs against an older checkout)
    from inclust_plus.runtime.preprocess import plan_preprocessing
    plan = plan_preprocessing(manifest, graph)
except ImportError:
    plan = graph.runtime_plan
read = chunk_reader(data, plan, "bench")
buf = np.zeros((rows, data.n_inputs), np.float32)
best = []
for start in range(0, min(data.n_obs, 4 * rows), rows):
    times = []
    for _ in range(5):
        t0 = time.process_time()
        read(start, min(data.n_obs, start + rows), buf)
        times.append(time.process_time() - t0)
    best.append(min(times))
print(json.dumps({"rows": rows, "chunks": len(best), "cpu_s": sum(best)}))
"""


def read_stage(tree: Path, site: str, manifest: Path, src: Path, combination: str, batch: int) -> dict:
    """cpu seconds of the runtime's chunk reader (CSR read, checks, preprocessing) over 4 chunks, best of 5 each."""
    out = subprocess.run([sys.executable, "-S", "-c", _READ_CHUNKS, str(tree), site, str(manifest), str(src), combination, str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def package_tree(checkout: Path, dest: Path) -> Path:
    """A folder from which ``import inclust_plus`` gets ``checkout``'s code (pyproject maps its layer folders in)."""
    pkg = dest / "inclust_plus"
    pkg.mkdir(parents=True)
    for f in (checkout / "inclust_plus").iterdir():
        (pkg / f.name).symlink_to(f.resolve())
    for layer in ("training", "export", "runtime"):
        (pkg / layer).symlink_to((checkout / layer).resolve())
    return dest


_EXPORT_TREE = (
    "import sys; sys.path[:0] = sys.argv[1:3]; from inclust_plus.export import export_model; "
    "print(export_model(sys.argv[3], sys.argv[4], combinations=[sys.argv[5]], torchscript=False, force=True))"
)


def export_with(tree: Path, site: str, checkpoint: Path, out: Path, combination: str) -> Path:
    """The same checkpoint exported by ``tree``'s own exporter (each tree reads its own manifest format)."""
    done = subprocess.run([sys.executable, "-S", "-c", _EXPORT_TREE, str(tree), site, str(checkpoint), str(out), combination],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1])


def compare(args, work: Path, manifest: Path, src: Path, combination: str) -> dict:
    """This tree's ``inclust-run impute`` against ``args.compare_with``'s, alternately, best of ``args.repeats``."""
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    trees = {"this": package_tree(Path(__file__).resolve().parents[1], work / "tree_this"),
             "reference": package_tree(args.compare_with, work / "tree_reference")}
    manifests = {"this": manifest,
                 "reference": export_with(trees["reference"], site, manifest.parent.parent / "model.pt", work / "export_reference", combination)}
    walls: dict[str, list[float]] = {k: [] for k in trees}
    cpus: dict[str, list[float]] = {k: [] for k in trees}
    for r in range(args.repeats):
        for name in (("this", "reference") if r % 2 == 0 else ("reference", "this")):
            out = work / f"imputed_{name}.h5ad"
            cmd = [sys.executable, "-S", "-c", _RUN_TREE, str(trees[name]), site, "impute", "--onnx", str(manifests[name]), "--input", str(src),
                   "--output", str(out), "--combination", combination, "--batch-size", str(args.batch_size), "--quiet", "--force"]
            usage = run_measured(cmd, work / f"stderr_{name}.txt")
            walls[name].append(round(usage["wall"], 3))
            cpus[name].append(round(usage["cpu"], 3))
            print(f"impute_e2e: {name} run {r + 1}: {usage['wall']:.2f} s wall, {usage['cpu']:.2f} s cpu "
                  f"({args.cells / usage['wall']:,.0f} cells/s)", flush=True)
    best = {k: min(v) for k, v in walls.items()}
    best_cpu = {k: min(v) for k, v in cpus.items()}
    reads: dict[str, list[float]] = {k: [] for k in trees}  # the hot path alone, where load matters least
    for r in range(args.repeats):
        for name in (("this", "reference") if r % 2 == 0 else ("reference", "this")):
            stage = read_stage(trees[name], site, manifests[name], src, combination, args.batch_size)
            reads[name].append(round(stage["cpu_s"], 4))
    read_ratio = min(reads["reference"]) / min(reads["this"])
    print(f"impute_e2e: chunk reader over {stage['chunks']} chunks of {stage['rows']:,} cells: this {min(reads['this']):.3f} s, "
          f"reference {min(reads['reference']):.3f} s cpu, ratio {read_ratio:.3f}", flush=True)
    import h5py

    with h5py.File(work / "imputed_this.h5ad", "r") as a, h5py.File(work / "imputed_reference.h5ad", "r") as b:
        def imputed(f):  # the model's values: layers/inclust_imputed since issue 14, X before it
            return f["layers"]["inclust_imputed"] if "inclust_imputed" in f.get("layers", {}) else f["X"]

        same = bool(np.array_equal(imputed(a)[: 10_000], imputed(b)[: 10_000]))
    ratio = best["reference"] / best["this"]  # cells/s of this tree over the reference's
    cpu_ratio = best_cpu["reference"] / best_cpu["this"]
    print(f"impute_e2e: this tree {args.cells / best['this']:,.0f} cells/s, reference {args.cells / best['reference']:,.0f} cells/s, "
          f"ratio {ratio:.3f} (wall), {cpu_ratio:.3f} (cpu time)", flush=True)
    return {
        "benchmark": "impute_e2e_compare", "date": now(), "cells": args.cells, "input_genes": args.genes,
        "output_features": args.proteins, "density": args.density, "batch_size": args.batch_size, "repeats": args.repeats,
        "reference": f"{args.compare_with} at commit {_git_head(args.compare_with)}",
        "this": f"commit {_git_head(Path(__file__).resolve().parents[1])}",
        "wall_s": walls, "best_cells_per_s": {k: round(args.cells / v) for k, v in best.items()},
        "cpu_s": cpus, "ratio_this_to_reference": round(ratio, 3), "cpu_ratio_this_to_reference": round(cpu_ratio, 3),
        "median_wall_ratio": round(float(np.median(walls["reference"]) / np.median(walls["this"])), 3),
        "chunk_reader_cpu_s": reads, "chunk_reader_rows": stage["rows"], "chunk_reader_chunks": stage["chunks"],
        "chunk_reader_ratio_this_to_reference": round(read_ratio, 3),
        "outputs_identical_first_10000_cells": same,
        "machine": {**machine(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
    }


def _git_head(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "log", "-1", "--format=%h"], capture_output=True, text=True)
    return done.stdout.strip()
