"""What the imputation preset's ensemble costs at inference: cells/s of the MERFISH graph
(merfish_to_rna, 122 -> 153 genes) for one network against the preset's 6 merged networks.

The ensemble's graph keeps its grouped layers grouped (one weight block per member, no
block-diagonal zeros: training/network/ensemble.py); the third contender runs the same 6 networks with
dense block-diagonal matrices, which is what the graph would cost without grouping, so that gain
is measured too. Seeded random weights (the cost does not depend on their values), onnxruntime CPU sessions
with all graph optimisations and the same intra-op threads for all, one process.

    python benchmarks/ensemble_inference.py          # about a minute on 2 cores
    python benchmarks/ensemble_inference.py --quick  # small batches, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import MERFISH, best_time, machine, make_export, now, write_result  # noqa: E402

MEMBERS = 6  # the imputation preset's ensemble (training/config.py TASK_DEFAULTS)


def cells_per_second(onnx_path: Path, n_inputs: int, batch: int, threads: int, budget: float) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"x": rng.random((batch, n_inputs), dtype=np.float32), "covariate": np.ones(batch, np.int64),
            "target_covariate": np.zeros(batch, np.int64)}
    return batch / best_time(lambda: session.run(None, feed), max_seconds=budget)


def export(members: int, grouped: bool, folder: Path) -> Path:
    """The MERFISH graph of ``members`` networks; ``grouped=False`` rewrites its grouped layers as the
    dense block-diagonal matrices they stand for (same outputs, K times the weights in those layers)."""
    shape = dataclasses.replace(MERFISH, name=f"merfish_x{members}", members=members)
    _, manifest = make_export(shape, folder, torchscript=False)
    graph = manifest.parent / f"{MERFISH.combination}.onnx"
    if grouped:
        return graph
    from scipy.linalg import block_diag

    from inclust_plus.export import onnx_graph
    from inclust_plus.contract.combinations import all_combinations
    from inclust_plus.export.folding import fold
    from inclust_plus.contract.plan_builder import IDENTITY
    from inclust_plus.training.checkpoint import load_checkpoint

    module, desc = load_checkpoint(folder / "model.pt")
    combo = next(c for c in all_combinations(desc) if c.name == MERFISH.combination)
    weights = fold(module, combo, IDENTITY)
    dense = lambda layer: layer if layer.groups == 1 else dataclasses.replace(  # noqa: E731
        layer, weight=np.ascontiguousarray(block_diag(*layer.weight).astype(np.float32)), groups=1)
    weights = dataclasses.replace(weights, encoder=tuple(map(dense, weights.encoder)), decoder=tuple(map(dense, weights.decoder)))
    out = folder / "dense.onnx"
    out.write_bytes(onnx_graph.serialize(onnx_graph.build_model(weights, combo, IDENTITY, shape.name)))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    batches = (64, 256) if args.quick else (1, 1024, 16384)
    budget = 0.5 if args.quick else 5.0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {
            "one network": export(1, True, Path(tmp) / "one"),
            f"{MEMBERS} networks, grouped layers (exported)": export(MEMBERS, True, Path(tmp) / "grouped"),
            f"{MEMBERS} networks, dense block-diagonal layers": export(MEMBERS, False, Path(tmp) / "dense"),
        }
        for batch in batches:
            row = {"batch": batch}
            for name, path in graphs.items():
                row[name] = round(cells_per_second(path, MERFISH.panel, batch, args.threads, budget))
            rows.append(row)
            print(row, flush=True)
    result = {"benchmark": "ensemble_inference", "date": now(), "quick": args.quick, "graph": MERFISH.combination,
              "members": MEMBERS, "threads": args.threads, "cells_per_s": rows, "machine": machine()}
    write_result("ensemble_inference_quick" if args.quick else "ensemble_inference", result, **({"out_dir": args.out} if args.out else {}))
    return result


if __name__ == "__main__":
    main()
