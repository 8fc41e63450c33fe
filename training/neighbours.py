"""Imputation from neighbours in the batch-corrected latent space (issue 24).

A query cell's k nearest reference cells by cosine similarity of the corrected latent (``z - e_b``,
what ``predict`` returns second), and the distance-weighted mean (weights 1 / (1 - cos + eps), as
scikit-learn's ``weights="distance"`` with the cosine metric) of their *measured* values. Measured
values carry each reference cell's own detail that the decoder's smooth output averages away, and
the latent is free of the query's technology, so this beats kNN on the raw genes when the query
comes from another platform; the model keeps the reference side (:class:`NeighbourTable`) so that
the same read-out runs wherever the model does.

This module is the one definition of the read-out in numpy; the exported graph's lookup
(export/neighbours_graph.py) is parity-tested against :func:`neighbour_impute`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

EPS = 1e-6  # keeps an exact match's weight finite


def unit_rows(z: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    z = np.asarray(z, dtype=np.float32)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def neighbour_impute(z_ref: np.ndarray, values_ref: np.ndarray, z_query: np.ndarray, k: int = 30, chunk: int = 4096) -> np.ndarray:
    """Distance-weighted mean of ``values_ref`` over each query row's ``k`` cosine-nearest ``z_ref`` rows."""
    ref = unit_rows(z_ref)
    values_ref = np.asarray(values_ref, dtype=np.float32)
    k = min(k, len(ref))
    out = np.empty((len(z_query), values_ref.shape[1]), dtype=np.float32)
    for s in range(0, len(z_query), chunk):
        sim = unit_rows(z_query[s : s + chunk]) @ ref.T
        idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        w = 1.0 / (1.0 - np.take_along_axis(sim, idx, axis=1) + EPS)
        out[s : s + chunk] = np.einsum("nk,nkg->ng", w, values_ref[idx]) / w.sum(1, keepdims=True)
    return out


def boundary_gaps(ref_unit: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Per query row, the cosine gap between its k-th and (k+1)-th nearest of the unit rows ``ref_unit``
    (inf when every row is a neighbour). Below float32 rounding (~1e-6) two correct implementations may
    pick different k-th neighbours: a parity check must not count those rows as a difference."""
    k = min(k, len(ref_unit))
    if k >= len(ref_unit):
        return np.full(len(query), np.inf, dtype=np.float32)
    sim = unit_rows(query) @ np.asarray(ref_unit, dtype=np.float32).T
    top = -np.partition(-sim, (k - 1, k), axis=1)[:, [k - 1, k]]
    return top[:, 0] - top[:, 1]


@dataclass
class NeighbourTable:
    """The reference side of the read-out, everything a model needs to impute from neighbours.

    ``latents``: the reference cells' unit-length corrected latents [n, d]; ``inputs``: their unit-length
    input rows [n, p] (the query's feature set, for the neighbours on the measured genes) or None;
    ``values``: their measured values [n, g] of the model's ``features``. The imputed value of those
    features is ``weights[0]`` x the decoder's + ``weights[1]`` x the latent neighbours' (``k_latent``)
    + ``weights[2]`` x the input neighbours' (``k_inputs``).
    """

    latents: np.ndarray
    values: np.ndarray
    features: list[int]
    inputs: np.ndarray | None = None
    k_latent: int = 60
    k_inputs: int = 30
    weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)

    def impute(self, z_query: np.ndarray, decoded: np.ndarray, x_query: np.ndarray | None = None) -> np.ndarray:
        """``decoded`` (full width) with the table's features replaced by the blend."""
        w_dec, w_lat, w_in = self.weights
        out = np.array(decoded, dtype=np.float32, copy=True)
        blend = w_dec * out[:, self.features] + w_lat * neighbour_impute(self.latents, self.values, z_query, self.k_latent)
        if w_in:
            if self.inputs is None or x_query is None:
                raise ValueError("this table blends the input neighbours: it needs its inputs and the query's x")
            blend += w_in * neighbour_impute(self.inputs, self.values, x_query, self.k_inputs)
        out[:, self.features] = blend
        return out

    def impute_columns(self, z_query: np.ndarray, decoded: np.ndarray, columns, x_query: np.ndarray | None = None) -> np.ndarray:
        """:meth:`impute` on a graph's ``y``, whose column j is global feature ``columns[j]`` (its outputs):
        what the in-memory backend and export's parity reference blend, the one definition above."""
        return dataclasses.replace(self, features=self.columns(columns)).impute(z_query, decoded, x_query)

    def columns(self, output_features, graph: str = "the graph") -> list[int]:
        """The column of each table feature in a graph's ``y`` (its outputs ``output_features`` in order):
        the one mapping of the numpy blend, the ONNX lookup and its TorchScript twin."""
        from inclust_plus.errors import InclustError

        where = {int(f): j for j, f in enumerate(output_features)}
        missing = [f for f in self.features if f not in where]
        if missing:
            raise InclustError(f"the neighbour table imputes features {missing} that {graph} does not output",
                               "build the table for the combination's output features")
        return [where[f] for f in self.features]

    def placement(self, output_features, graph: str = "the graph") -> tuple[np.ndarray, np.ndarray]:
        """The exported graphs' form of the blend's last step, ``y * keep + blend @ place``: ``place``
        [table features, outputs] puts each blended feature in its column, ``keep`` [outputs] is the
        decoder's weight there and 1 elsewhere."""
        place = np.zeros((len(self.features), len(output_features)), dtype=np.float32)
        keep = np.ones(len(output_features), dtype=np.float32)
        for j, c in enumerate(self.columns(output_features, graph)):
            place[j, c] = 1.0
            keep[c] = float(self.weights[0])
        return place, keep

    def tied_rows(self, z_query: np.ndarray, x_query: np.ndarray | None, tolerance: float = 1e-5) -> np.ndarray:
        """Query rows whose k-th and (k+1)-th neighbour (either lookup) are tied within ``tolerance``."""
        tied = boundary_gaps(self.latents, z_query, self.k_latent) < tolerance
        if self.weights[2] and self.inputs is not None and x_query is not None:
            tied |= boundary_gaps(self.inputs, x_query, self.k_inputs) < tolerance
        return tied


def build_table(model, reference_x: np.ndarray, reference_values: np.ndarray, inputs: str, covariate: str, features: list[int],
                weights: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3), k_latent: int = 60, k_inputs: int = 30,
                lookup_x: np.ndarray | None = None) -> NeighbourTable:
    """The table of a trained ``model`` (an InClust): the reference cells encoded from feature set ``inputs``
    (``reference_x``: cells x those features, the model's input scale) in their own ``covariate``, with
    their measured values of the model's ``features`` (``reference_values``: cells x len(features)).
    The query is encoded from the same set, so both sides' latents come from the same features,
    each corrected for its own covariate. ``lookup_x``: the rows the input lookup compares with the
    query's, where they differ from ``reference_x`` (as the query graph preprocesses them, training/readout.py)."""
    from inclust_plus.errors import InclustError

    _, z, _ = model.predict(reference_x, inputs, covariate)
    values = np.asarray(reference_values, dtype=np.float32)
    if values.shape != (len(z), len(features)) or not np.isfinite(values).all():
        raise InclustError(f"reference values have shape {values.shape} (or non-finite entries), expected {(len(z), len(features))}",
                           "pass the reference cells' measured values of exactly the table's features")
    if abs(sum(weights) - 1) > 1e-6 or min(weights) < 0:
        raise InclustError(f"blend weights {weights} do not sum to 1", "pass three non-negative weights (decoder, latent, inputs) summing to 1")
    x = unit_rows(np.asarray(reference_x if lookup_x is None else lookup_x, dtype=np.float32)) if weights[2] else None
    return NeighbourTable(latents=unit_rows(z), values=values, features=list(features), inputs=x, k_latent=k_latent,
                          k_inputs=k_inputs, weights=tuple(weights))
