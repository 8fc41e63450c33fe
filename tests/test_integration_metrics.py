"""The integration scores (evaluation/integration_metrics.py) on embeddings whose answer is known,
and the harder synthetic generator (evaluation/synthetic.py make_hard_cells)."""

import numpy as np

from evaluation.integration_metrics import integration_scores, same_batch_fraction
from evaluation.synthetic import make_hard_cells


def _blobs(shift_batch: float, seed: int = 0):
    """Three well-separated types, two batches; batch 1 displaced by ``shift_batch``."""
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(3), 100)
    batch = np.tile([0, 1], 150)
    z = np.eye(3)[types] * 20 + rng.normal(size=(300, 3)) + shift_batch * batch[:, None] * np.array([0, 0, 1.0])
    return z, batch.astype(str), types.astype(str)


def test_separated_batches_score_as_separated_and_mixed_as_mixed():
    z, batch, types = _blobs(shift_batch=10.0)
    sep = integration_scores(z, batch, types, "0")
    assert sep["same_batch_fraction"] == 1.0 and abs(sep["same_batch_chance"] - 149 / 299) < 1e-4
    z, batch, types = _blobs(shift_batch=0.0)
    mixed = integration_scores(z, batch, types, "0")
    assert abs(mixed["same_batch_fraction"] - mixed["same_batch_chance"]) < 0.06
    assert mixed["batch_asw"] > 0.9 > 0.5 > sep["batch_asw"]
    for s in (sep, mixed):  # types stay apart either way
        assert s["ari"] == 1.0 and s["nmi"] == 1.0 and s["label_asw"] > 0.8
    assert mixed["label_transfer"] == 1.0


def test_chance_level_of_unbalanced_batches():
    batch = np.array(["a"] * 30 + ["b"] * 10)
    z = np.random.default_rng(0).normal(size=(40, 2))
    _, chance = same_batch_fraction(z, batch, k=5)
    assert abs(chance - (30 * 29 + 10 * 9) / 39 / 40) < 1e-12


def test_hard_cells_are_unbalanced_and_batch_shifted():
    cells = make_hard_cells(n_cells=3000, seed=0)
    share = {b: np.unique(cells.cell_type[cells.batch == b], return_counts=True)[1] / (cells.batch == b).sum() for b in ("batch0", "batch1")}
    assert all(len(v) == 6 for v in share.values())  # every type in every batch
    assert (share["batch0"].max() / share["batch0"].min()) > 3  # ~4x apart within a batch
    assert np.abs(share["batch0"] - share["batch1"]).max() > 0.1  # and the proportions differ between batches
    again = make_hard_cells(n_cells=3000, seed=0)
    assert np.array_equal(again.counts["rna"], cells.counts["rna"])  # seeded


def test_chance_within_types_on_a_tiny_case():
    from evaluation.integration_metrics import same_batch_chance_within_types

    # type x: 3 cells of a, 1 of b; type y: 2 of a, 2 of b
    batch = np.array(["a", "a", "a", "b", "a", "a", "b", "b"])
    types = np.array(["x"] * 4 + ["y"] * 4)
    want = ((3 * 2 + 0) / 3 + (2 * 1 + 2 * 1) / 3) / 8
    assert abs(same_batch_chance_within_types(batch, types) - want) < 1e-12
    cells = make_hard_cells(n_cells=3000, seed=0)  # the types' 4x imbalance puts the type-preserving floor above 0.5
    assert 0.56 < same_batch_chance_within_types(cells.batch, cells.cell_type) < 0.59


def test_mixing_penalty_is_zero_for_mixed_batches_and_grows_with_a_batch_shift():
    import torch

    from inclust_plus.training.network.mixing import mixing_penalty

    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 3, generator=g)
    cov = torch.arange(40) % 2
    resp = torch.nn.functional.one_hot(torch.arange(40) // 20, 2).float()  # two types, both batches in each
    same = torch.cat([z[:20:2].repeat_interleave(2, 0), z[20::2].repeat_interleave(2, 0)])  # batch 1 = a copy of batch 0
    assert float(mixing_penalty(same, cov, resp, 2)) < 1e-6
    shifted = [float(mixing_penalty(z + s * cov[:, None].float(), cov, resp, 2)) for s in (0.0, 1.0, 3.0)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]
    # Moving a whole type far away (both batches) costs nothing, unlike a batch shift 5x smaller.
    types_apart = float(mixing_penalty(z + 5.0 * resp[:, 1:], cov, resp, 2))
    assert types_apart <= shifted[0] < shifted[1]
    assert float(mixing_penalty(z, torch.zeros(40, dtype=torch.long), resp, 2)) < 1e-6  # one batch: nothing to mix


def test_per_type_mixing_kernel_sees_a_batch_shift_within_compact_types():
    """Three types 40 apart, each of spread 0.1, batch 1 shifted by 0.1 within its type: the median kernel's widths
    (fractions of a between-type distance) barely see it; the per-type kernel's widths (of the type's spread) do.
    Both are zero for mixed batches, and with one-hot types the Gibbs kernel equals a kernel per type."""
    import torch

    from inclust_plus.training.network.mixing import mixing_penalty

    g = torch.Generator().manual_seed(0)
    types = torch.arange(180) // 60
    resp = torch.nn.functional.one_hot(types, 3).float()
    cov = torch.arange(180) % 2
    z = 0.1 * torch.randn(180, 4, generator=g) + 40.0 * torch.cat([resp[:, 1:], torch.zeros(180, 2)], 1)
    mixed = z[0::2].repeat_interleave(2, 0)  # batch 1 = a copy of batch 0
    for kernel in ("median", "per_type"):
        assert float(mixing_penalty(mixed, cov, resp, 3, kernel)) < 1e-6
    shifted = z + 0.1 * cov[:, None].float()
    median, per_type = (float(mixing_penalty(shifted, cov, resp, 3, k)) for k in ("median", "per_type"))
    assert median < 1e-3 and per_type > 50 * median
    # a kernel per type, by hand: widths 1, 1/4, 1/16 of that type's mean squared distance, plus the median kernel
    d2 = torch.cdist(shifted, shifted).pow(2)
    median_kernel = torch.exp(-d2 / d2.flatten().median())
    want = 0.0
    for t in (0, 1, 2):
        sel = types == t
        w = d2[sel][:, sel].sum() / (sel.sum() * (sel.sum() - 1))
        k = median_kernel[sel][:, sel] + sum(torch.exp(-d2[sel][:, sel] / (w * f)) for f in (1.0, 0.25, 1 / 16))
        for b in (0, 1):
            diff = (cov[sel] == b).float() / (cov[sel] == b).sum() - 1.0 / sel.sum()
            want += float(diff @ k @ diff) * float(((cov == b) & sel).sum()) / 180
    assert abs(per_type - want) < 1e-5 * want
