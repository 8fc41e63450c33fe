"""The latent-neighbour read-out (training/neighbours.py, issue 24) against scikit-learn's kNN regressor.

neighbour_impute is the one definition the benchmark and any exported lookup are held to, so it
must be exactly the baseline it is compared with: scikit-learn's KNeighborsRegressor with the
cosine metric and distance weights.
"""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsRegressor

from inclust_plus.training.neighbours import NeighbourTable, neighbour_impute, unit_rows


def _data(seed=0, n_ref=500, n_query=200, dim=12, genes=7):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, dim))
    z_ref = centres[rng.integers(0, 5, n_ref)] + 0.3 * rng.normal(size=(n_ref, dim))
    z_query = centres[rng.integers(0, 5, n_query)] + 0.3 * rng.normal(size=(n_query, dim))
    values = np.abs(z_ref[:, :genes] + 0.1 * rng.normal(size=(n_ref, genes)))
    return z_ref.astype(np.float32), values.astype(np.float32), z_query.astype(np.float32)


@pytest.mark.parametrize("k", [1, 15, 30])
def test_matches_sklearn_cosine_distance_weighted(k):
    z_ref, values, z_query = _data()
    ours = neighbour_impute(z_ref, values, z_query, k, chunk=64)  # several chunks
    theirs = KNeighborsRegressor(k, metric="cosine", weights="distance").fit(z_ref, values).predict(z_query)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_scale_of_latents_does_not_matter_and_k_is_capped():
    z_ref, values, z_query = _data(seed=1, n_ref=20)
    a = neighbour_impute(z_ref, values, z_query, 50)  # k above the table's size: every reference cell
    b = neighbour_impute(3.0 * z_ref, values, 0.5 * z_query, 20)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(unit_rows(z_ref), axis=1), 1.0, rtol=1e-6)


def test_table_blends_only_its_features():
    z_ref, values, z_query = _data(seed=2, genes=3)
    x_ref, _, x_query = _data(seed=4, genes=3)
    decoded = np.random.default_rng(3).random((len(z_query), 6)).astype(np.float32)
    table = NeighbourTable(latents=unit_rows(z_ref), values=values, features=[1, 4, 5], inputs=unit_rows(x_ref), k_latent=10,
                           k_inputs=5, weights=(0.5, 0.3, 0.2))
    out = table.impute(z_query, decoded, x_query)  # kept in model.pt as tensors: tests/test_readout.py
    expected = (0.5 * decoded[:, [1, 4, 5]] + 0.3 * neighbour_impute(z_ref, values, z_query, 10)
                + 0.2 * neighbour_impute(x_ref, values, x_query, 5))
    np.testing.assert_allclose(out[:, [0, 2, 3]], decoded[:, [0, 2, 3]])
    np.testing.assert_allclose(out[:, [1, 4, 5]], expected, rtol=1e-5, atol=1e-6)
