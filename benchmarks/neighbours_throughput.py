"""What the neighbour read-out (issue 24) costs at inference: the imputation preset's graph with and without it.

The MERFISH graph (panel of 122 -> 153 genes) of a 6-network ensemble (the imputation preset's
shape, seeded random weights: speed does not depend on the values), exported as usual, against the
same checkpoint exported with the read-out (export/neighbours_graph.py; ``inclust-export --no-neighbours``
writes the first) for a random table of the standard split's size: 21,259 reference cells, their 6 x 50
latents, 122 input genes and 31 measured genes.
onnxruntime on the CPU, 2 intra-op threads, best of several repeats, cells/s.

    python benchmarks/neighbours_throughput.py
"""

from __future__ import annotations

import dataclasses
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench_common import MERFISH, best_time, machine_line, make_export, publish

REFERENCE, HELD = 21_259, 31
BATCHES = (1, 64, 1024, 16384)


def main() -> None:
    import onnx
    import onnxruntime as ort

    from inclust_plus.training.neighbours import NeighbourTable, unit_rows

    shape = dataclasses.replace(MERFISH, members=6)
    rng = np.random.default_rng(0)
    table = NeighbourTable(latents=unit_rows(rng.normal(size=(REFERENCE, 6 * 50))), values=rng.random((REFERENCE, HELD), dtype=np.float32),
                           features=list(range(122, 153)), inputs=unit_rows(rng.random((REFERENCE, 122))))
    graphs = {}
    with tempfile.TemporaryDirectory() as tmp:  # one checkpoint, exported as a user would: with and without the read-out
        for name, neighbours in (("decoder only (today)", False), ("decoder + latent + input neighbours", True)):
            _, manifest = make_export(shape, Path(tmp) / str(neighbours), torchscript=False, csr=False, table=table, neighbours=neighbours)
            graphs[name] = onnx.load(str(manifest.parent / f"{shape.combination}.onnx"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sessions = {k: ort.InferenceSession(g.SerializeToString(), opts, providers=["CPUExecutionProvider"]) for k, g in graphs.items()}
    rows = {}
    for batch in BATCHES:
        feeds = {"x": rng.random((batch, 122), dtype=np.float32), "covariate": np.ones(batch, np.int64), "target_covariate": np.zeros(batch, np.int64)}
        kinds = {i.name: i.type for i in next(iter(sessions.values())).get_inputs()}
        for name in ("covariate", "target_covariate"):
            if "int32" in kinds[name]:
                feeds[name] = feeds[name].astype(np.int32)
        rows[batch] = {k: round(batch / best_time(lambda s=s: s.run(None, feeds), repeats=3), 1) for k, s in sessions.items()}
        print(batch, rows[batch], flush=True)
    r = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_line(2), "cells_per_second": rows,
         "graph_mb": {k: round(len(g.SerializeToString()) / 2**20, 1) for k, g in graphs.items()}}
    names = list(graphs)
    lines = ["## Inference cost of the neighbour read-out (issue 24, benchmarks/neighbours_throughput.py)", "",
             f"Measured {r['date']} on {r['machine']} (onnxruntime intra-op threads 2). The imputation preset's MERFISH graph "
             f"(6 networks) with and without the read-out for a {REFERENCE:,}-cell reference; graph files "
             + ", ".join(f"{k}: {v} MB" for k, v in r["graph_mb"].items()) + ".", "",
             "| batch | " + " | ".join(names) + " | ratio |", "|---:|---:|---:|---:|"]
    for batch, row in rows.items():
        lines.append(f"| {batch:,} | " + " | ".join(f"{row[k]:,.0f}" for k in names) + f" | {row[names[1]] / row[names[0]]:.3f}x |")
    publish("neighbours_throughput", r, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
