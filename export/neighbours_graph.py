"""Append the neighbour read-out (training/neighbours.py, issue 24) to an exported decoding graph.

The reference side of the read-out is a graph constant, so the graph stays self-contained and every
runner of ONNX (the torch-free runtime, Triton's onnxruntime backend) runs it unchanged: same inputs,
same outputs, only ``y``'s table columns become the blend. Per lookup: unit rows (ReduceL2, as
``unit_rows``), cosine similarities as one MatMul against the reference's unit rows, TopK, weights
1 / (1 - cos + eps), Gather of the reference's measured values, weighted mean. The latent lookup reads
the graph's ``latent``; the input lookup reads ``x.seen``, the input as the encoder reads it in the training
scale (``build_model(..., lookup_input=True)``: preprocessed when folded, divided by the per-feature scale,
through the input correction), which is the scale of the table's input rows (training/readout.py). So the
dense and CSR flavours and folded preprocessing all carry the same lookup; float16 graphs do not (a half-
precision latent would pick other neighbours where two are nearly as close).
"""

from __future__ import annotations

import numpy as np
import onnx

from inclust_plus.errors import InclustError
from inclust_plus.training.neighbours import EPS

from .onnx_graph import _Builder, check

L2_EPS = 1e-12  # the clamp of training.neighbours.unit_rows


def _lookup(g: _Builder, query: str, rows: np.ndarray, values: str, k: int, tag: str) -> str:
    """[batch, g]: distance-weighted mean of ``values`` over the ``k`` cosine-nearest ``rows`` of each query row."""
    k = min(int(k), len(rows))
    norm = g.op("ReduceL2", [query], f"nb.{tag}.norm", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, g.const(f"nb.{tag}.eps", np.asarray(L2_EPS, dtype=np.float32))], f"nb.{tag}.norm.clamped")
    unit = g.op("Div", [query, norm], f"nb.{tag}.unit")
    sim = g.op("MatMul", [unit, g.const(f"nb.{tag}.reference", np.ascontiguousarray(rows.T, dtype=np.float32))], f"nb.{tag}.cosine")
    top, idx = f"nb.{tag}.top", f"nb.{tag}.index"
    g.ops("TopK", [sim, g.const(f"nb.{tag}.k", np.asarray([k], dtype=np.int64))], [top, idx], axis=-1, largest=1, sorted=1)
    w = g.op("Sub", [g.const(f"nb.{tag}.one", np.asarray(1 + EPS, dtype=np.float32)), top], f"nb.{tag}.distance")
    w = g.op("Reciprocal", [w], f"nb.{tag}.weight")
    gathered = g.op("Gather", [values, idx], f"nb.{tag}.values", axis=0)  # [batch, k, g]
    w3 = g.op("Unsqueeze", [w, g.const(f"nb.{tag}.axis1", np.asarray([1], dtype=np.int64))], f"nb.{tag}.weight.row")  # [batch, 1, k]
    num = g.op("MatMul", [w3, gathered], f"nb.{tag}.weighted")  # [batch, 1, g]
    num = g.op("Squeeze", [num, f"nb.{tag}.axis1"], f"nb.{tag}.sum")
    den = g.op("ReduceSum", [w, f"nb.{tag}.axis1"], f"nb.{tag}.weight.sum", keepdims=1)
    return g.op("Div", [num, den], f"nb.{tag}.mean")


def append_neighbours(model: onnx.ModelProto, table, output_features: list[int]) -> onnx.ModelProto:
    """A copy of the dense float32 decoding ``model`` whose ``y`` blends in ``table`` (a NeighbourTable).

    ``output_features``: the model's feature indices of ``y``'s columns in order (the combination's
    outputs); every feature of the table must be among them.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producers = [n for n in graph.node if "y" in n.output]
    if len(producers) != 1 or "latent" not in {o.name for o in graph.output}:
        raise InclustError(f"graph {graph.name!r} has no decoder output 'y' and latent to read", "append the lookup to a decoding graph")
    place, keep = table.placement(output_features, f"graph {graph.name!r}")  # checked before the graph is touched
    w_dec, w_lat, w_in = (float(v) for v in table.weights)
    if w_in and table.inputs is None:
        raise InclustError("the neighbour table blends input neighbours but holds no input rows", "rebuild it with build_table")
    for node in graph.node:  # the decoder's y becomes an intermediate
        node.output[:] = ["y.decoder" if o == "y" else o for o in node.output]
        node.input[:] = ["y.decoder" if i == "y" else i for i in node.input]
        if node.name == "y":
            node.name = "y.decoder"
    g = _Builder()  # the graph builder's own node and constant collector
    values = g.const("nb.values", np.asarray(table.values, dtype=np.float32))
    blend = g.op("Mul", [_lookup(g, "latent", table.latents, values, table.k_latent, "latent"),
                         g.const("nb.latent.share", np.asarray(w_lat, dtype=np.float32))], "nb.latent.blend")
    if w_in:
        if not any("x.seen" in n.output for n in graph.node):
            raise InclustError(f"graph {graph.name!r} does not name the input its encoder reads", "build it with lookup_input=True")
        inp = g.op("Mul", [_lookup(g, "x.seen", table.inputs, values, table.k_inputs, "inputs"),
                           g.const("nb.inputs.share", np.asarray(w_in, dtype=np.float32))], "nb.inputs.blend")
        blend = g.op("Add", [blend, inp], "nb.blend")
    placed = g.op("MatMul", [blend, g.const("nb.place", place)], "nb.placed")
    kept = g.op("Mul", ["y.decoder", g.const("nb.keep", keep)], "nb.decoder.kept")
    g.op("Add", [kept, placed], "y")
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers.values())
    graph.doc_string += f"; neighbour read-out: {len(table.latents)} reference cells, weights {w_dec:.3g}/{w_lat:.3g}/{w_in:.3g}"
    check(out)
    return out
