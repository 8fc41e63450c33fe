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


@dataclass
class NeighbourTable:
    """The reference side of the read-out: unit-length latents [n, d] and measured values [n, features]."""

    latents: np.ndarray
    values: np.ndarray
    features: list[int]  # the model's feature indices the values are of
    k: int = 30
    blend: float = 0.5  # weight of the decoder's output; 1 - blend goes to the neighbours

    def impute(self, z_query: np.ndarray, decoded: np.ndarray) -> np.ndarray:
        """``decoded`` (full width) with the table's features replaced by the blend."""
        out = np.array(decoded, dtype=np.float32, copy=True)
        knn = neighbour_impute(self.latents, self.values, z_query, self.k)
        out[:, self.features] = self.blend * out[:, self.features] + (1 - self.blend) * knn
        return out
