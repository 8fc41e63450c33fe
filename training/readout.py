"""The neighbour read-out as a model setting (``[readout] neighbours = true``): table, record, checkpoint arrays.

The read-out itself is defined once, in numpy (training/neighbours.py). This module decides which
graph it belongs to and with which reference cells, so that it is part of the model like its weights:
``InClust.fit`` builds the table after training (:func:`build_readout`), ``model.pt`` keeps its arrays
as tensors beside the description's :class:`ReadoutRecord` (:func:`table_arrays`, :func:`table_from`),
the in-memory backend blends it into the query graph's ``y`` (training/torch_backend.py), and export
appends the same lookup to that graph (export/neighbours_graph.py).

Which graph: the decoding combination whose inputs are the query datasets' panel and whose outputs
hold the most features the query did not measure; those features are the table's. Which cells: every
reference dataset (not in ``views.query``) that measured all of them, encoded from the query's panel
in its own covariate (as training encoded it), with its measured (preprocessed, the model's scale) values of
those features; its input rows are preprocessed as the query graph preprocesses its input (:func:`as_query_inputs`).
"""

from __future__ import annotations

import numpy as np

from inclust_plus.contract.description import ModelDescription, ReadoutRecord
from inclust_plus.contract.plan_builder import build_plan
from inclust_plus.errors import InclustError
from inclust_plus.sparse import is_sparse

from inclust_plus.training.network import correction
from inclust_plus.training.neighbours import NeighbourTable, build_table

ARRAYS = ("latents", "inputs", "values")  # the checkpoint's ``neighbours`` entry: float32 [cells, *]


def _dense(block) -> np.ndarray:
    return np.asarray(block.toarray() if is_sparse(block) else block, dtype=np.float32)


def query_combination(desc: ModelDescription, query_set: str, query_measured: np.ndarray) -> tuple[str, list[int]]:
    """The decoding combination over the query's panel that outputs the most features the query lacks, and those features."""
    best: tuple[str, list[int]] | None = None
    for c in desc.combinations:
        if c.decodes and c.inputs == query_set:
            lacks = [f for f in desc.set_features(c.outputs) if not query_measured[f]]
            if lacks and (best is None or len(lacks) > len(best[1])):
                best = (c.name, lacks)
    if best is None:
        raise InclustError(f"readout.neighbours: no graph over the query's features {query_set!r} outputs a feature the query lacks",
                           "set readout.neighbours = false (there is nothing to impute from neighbours)")
    return best


def as_query_inputs(desc: ModelDescription, inputs, x: np.ndarray) -> np.ndarray:
    """Reference rows ``x`` (training-preprocessed, columns = global features ``inputs``) as the query
    graph's plan preprocesses cells fed to it, for the input lookup, which compares them with the query's.

    Training normalised a reference cell's library over every feature of the modality it measured,
    the graph normalises over the graph's input columns only. With ``normalize_total`` the two differ,
    so the per-column steps (scale, log1p) are undone and the plan applied (the cell's own factor
    cancels in the new normalisation); without it every step is per column and ``x`` is already that."""
    plan = build_plan(desc, tuple(int(i) for i in inputs))
    if not any(g.normalize_total is not None for g in plan.groups):
        return x
    raw = np.array(x, dtype=np.float32, copy=True)
    for g in plan.groups:
        block = raw[:, g.columns]
        if g.divisor is not None:
            block *= g.divisor
        if g.log1p:
            np.expm1(block, out=block)
        raw[:, g.columns] = block
    return plan.apply(raw)


def build_readout(model, data, cfg) -> tuple[NeighbourTable, ReadoutRecord]:
    """The table of a trained ``model`` (an InClust with its description) from the assembled ``data`` of ``cfg``."""
    query = set(cfg.views.query)
    names = data.mask_table.names
    panels = sorted({names[v.input_pattern] for v in data.views if v.dataset in query})
    if len(panels) != 1:
        raise InclustError(f"readout.neighbours needs one query panel, but the query datasets are encoded from {panels}",
                           "name query datasets that measured the same features in views.query")
    query_measured = np.logical_or.reduce([np.asarray(data.measured[q], dtype=bool) for q in query])
    combination, features = query_combination(model.description, panels[0], query_measured)
    inputs = model.description.set_features(model.description.combination(combination).inputs)
    refs = [n for n in data.cell_ranges if n not in query and np.asarray(data.measured[n], dtype=bool)[features].all()]
    if not refs:
        raise InclustError("readout.neighbours: no reference dataset (outside views.query) measured the features the query lacks",
                           "add a reference dataset that measured them or set readout.neighbours = false")
    rows = np.concatenate([np.arange(*data.cell_ranges[n]) for n in refs])
    block = data.x[rows]
    cats = np.asarray(data.covariate_categories, dtype=object)
    x = _dense(block[:, inputs])
    # the input lookup compares cells as the encoder reads them: with an input correction, each through its covariate's rows
    lookup = correction.corrected_rows(model.module, as_query_inputs(model.description, inputs, x), inputs, data.covariate[rows])
    table = build_table(model, x, _dense(block[:, features]), panels[0], cats[data.covariate[rows]], features,
                        k_latent=cfg.readout.k_latent, k_inputs=cfg.readout.k_inputs, lookup_x=lookup)
    record = ReadoutRecord(combination, tuple(int(f) for f in features), len(rows), tuple(refs), table.k_latent, table.k_inputs,
                           tuple(float(w) for w in table.weights))
    return table, record


def table_arrays(table: NeighbourTable) -> dict[str, np.ndarray]:
    """What ``model.pt`` stores under ``neighbours`` (plain float32 arrays; the record keeps the rest)."""
    return {"latents": table.latents, "inputs": table.inputs, "values": table.values}


def table_from(record: ReadoutRecord | None, arrays, desc: ModelDescription, where: str) -> NeighbourTable | None:
    """The table of a checkpoint: its ``neighbours`` arrays checked against the description's record.

    None for a model without a read-out (every checkpoint written before it); a record without its
    arrays, or arrays whose shapes or values contradict it, is a one-line error."""
    if record is None:
        return None
    retrain = "re-run inclust-train to write the model again"
    if not isinstance(arrays, dict) or any(k not in arrays for k in ARRAYS):
        raise InclustError(f"{where}: the description has a neighbour read-out but the file lacks its arrays ({', '.join(ARRAYS)})", retrain)
    a = {k: np.asarray(arrays[k].numpy() if hasattr(arrays[k], "numpy") else arrays[k], dtype=np.float32) for k in ARRAYS}
    n_inputs = len(desc.set_features(desc.combination(record.combination).inputs))
    want = {"latents": (record.cells, desc.latent_dim), "inputs": (record.cells, n_inputs), "values": (record.cells, len(record.features))}
    for k in ARRAYS:
        if a[k].shape != want[k] or not np.isfinite(a[k]).all():
            raise InclustError(f"{where}: neighbour array {k} has shape {a[k].shape} (or non-finite values), the description says {want[k]}",
                               retrain)
    return NeighbourTable(latents=a["latents"], values=a["values"], features=list(record.features), inputs=a["inputs"],
                          k_latent=record.k_latent, k_inputs=record.k_inputs, weights=tuple(record.weights))
