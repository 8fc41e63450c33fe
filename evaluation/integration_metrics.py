"""Standard integration scores of an embedding, given each cell's batch and true type.

What scIB-style benchmarks report, computed with scikit-learn only:

- same-batch neighbour fraction: of each cell's k nearest neighbours, the share from its own batch
  (perfect mixing: the chance level sum_b p_b^2, reported next to it; and the chance level within
  cell types, the best an embedding that keeps types apart can reach when the batches hold the
  types in different proportions);
- batch ASW: per cell type, 1 - |silhouette| of the batch labels, averaged over types (1 = mixed);
- label ASW: (silhouette of the type labels + 1) / 2 (1 = types well apart);
- ARI / NMI of k-means clusters (as many as there are types, seeded) against the true types;
- kNN label transfer: a k-nearest-neighbour classifier fit on one batch predicts the types of the others.
"""

from __future__ import annotations

import numpy as np


def same_batch_fraction(z: np.ndarray, batch: np.ndarray, k: int = 30) -> tuple[float, float]:
    """(observed same-batch share of the k nearest neighbours, its value under perfect mixing)."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z, return_distance=False)[:, 1:]
    observed = float((batch[idx] == batch[:, None]).mean())
    _, counts = np.unique(batch, return_counts=True)
    n = len(batch)
    # A neighbour is another cell drawn at random: (n_b - 1) / (n - 1) for a cell of batch b.
    chance = float(sum(c * (c - 1) / (n - 1) for c in counts) / n)
    return observed, chance


def same_batch_chance_within_types(batch: np.ndarray, types: np.ndarray) -> float:
    """Same-batch share of neighbours drawn at random from the cell's own type (perfect mixing that keeps types apart)."""
    total = 0.0
    for t in np.unique(types):
        sel = types == t
        n_t = int(sel.sum())
        if n_t < 2:
            continue
        _, counts = np.unique(batch[sel], return_counts=True)
        total += float(sum(c * (c - 1) for c in counts)) / (n_t - 1)
    return total / len(batch)


def batch_asw(z: np.ndarray, batch: np.ndarray, types: np.ndarray) -> float:
    from sklearn.metrics import silhouette_samples

    scores = []
    for t in np.unique(types):
        sel = types == t
        if len(np.unique(batch[sel])) < 2:
            continue
        scores.append(float(np.mean(1 - np.abs(silhouette_samples(z[sel], batch[sel])))))
    return float(np.mean(scores))


def label_asw(z: np.ndarray, types: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    return (float(silhouette_score(z, types)) + 1) / 2


def cluster_agreement(z: np.ndarray, types: np.ndarray, seed: int = 0) -> tuple[float, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    clusters = KMeans(len(np.unique(types)), n_init=10, random_state=seed).fit_predict(z)
    return float(adjusted_rand_score(types, clusters)), float(normalized_mutual_info_score(types, clusters))


def label_transfer(z: np.ndarray, batch: np.ndarray, types: np.ndarray, source, k: int = 15) -> float:
    """Accuracy on the other batches of a kNN classifier fit on batch ``source``."""
    from sklearn.neighbors import KNeighborsClassifier

    ref = batch == source
    return float((KNeighborsClassifier(k).fit(z[ref], types[ref]).predict(z[~ref]) == types[~ref]).mean())


def integration_scores(z: np.ndarray, batch: np.ndarray, types: np.ndarray, source, asw_sample: int | None = None) -> dict:
    """Every score above; ``asw_sample``: the silhouettes (quadratic in the cells) on that many cells drawn with seed 0."""
    same, chance = same_batch_fraction(z, batch)
    ari, nmi = cluster_agreement(z, types)
    s = np.arange(len(batch))
    if asw_sample is not None and asw_sample < len(batch):
        s = np.sort(np.random.default_rng(0).choice(len(batch), asw_sample, replace=False))
    return {"same_batch_fraction": round(same, 4), "same_batch_chance": round(chance, 4),
            "same_batch_chance_within_types": round(same_batch_chance_within_types(batch, types), 4),
            "batch_asw": round(batch_asw(z[s], batch[s], types[s]), 4),
            "label_asw": round(label_asw(z[s], types[s]), 4), "ari": round(ari, 4), "nmi": round(nmi, 4),
            "label_transfer": round(label_transfer(z, batch, types, source), 4)}
