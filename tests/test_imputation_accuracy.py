"""Regression floor for imputation on the real MERFISH-panel data (issues 2 and 3).

A reduced run of benchmarks/imputation_accuracy.py: the task (a) preset with its default settings
except 80 instead of 200 epochs and 2 instead of 4 ensemble members (one Gaussian, one Bernoulli),
on the standard split (about 80 s on 2 cores); the same model read out through the neighbour
table (issue 24) too. The full benchmark (every split, every baseline)
lives in benchmarks/; this only guards against a change that silently ruins accuracy.
"""

from pathlib import Path

import numpy as np
import pytest

from inclust_plus.training.model import InClust
from inclust_plus.training.presets import preset_config
from evaluation.splits import knn_regressor, per_gene_correlation, pseudo_spatial_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "merfish_scrna_reference.h5ad"
EPOCHS = 80
MEMBERS = 2
ISSUE_FLOOR = 0.25  # issue 2 asks for at least this on a reduced run
BLEND_FLOOR = 0.36  # issue 24: the preset's read-out of the same reduced run measured 0.378 (its decoder 0.331)
KNN_RATIO = 1.015  # and that over the cosine, distance-weighted kNN (0.368 on this split): 1.028x; the full preset 1.082x (benchmarks/imputation_splits.py)
FLOOR = 0.31  # this reduced run measured 0.329 (2 members in 2 processes, torch 2.13); the full benchmark 0.364


@pytest.mark.skipif(not DATA.is_file(), reason=f"real data not found at {DATA}")
def test_reduced_run_imputes_held_out_genes_above_floor():
    import anndata
    import torch

    torch.set_num_threads(2)
    split = pseudo_spatial_split(anndata.read_h5ad(DATA), seed=0)
    cfg = preset_config("imputation", {"model": {"ensemble": MEMBERS}, "training": {"epochs": EPOCHS}})
    model, data, _ = InClust.fit(cfg, {"scrna": split.reference, "merfish": split.query}, progress=False)
    genes = data.features["rna"]
    y, _, probs = model.predict(split.query.X.toarray(), "merfish", "merfish", target_covariate="scrna")
    r = per_gene_correlation(y[:, [genes.index(g) for g in split.held_out]], split.truth)
    assert len(split.held_out) == 31 and split.truth.shape == (9111, 31)
    assert np.isfinite(r).all()
    assert np.mean(r) >= max(FLOOR, ISSUE_FLOOR), np.mean(r)
    # Label transfer comes with the same model: query types predicted far above chance (1/13).
    truth_types = split.query.obs["cell_type"].astype(str).to_numpy()
    predicted = np.asarray(model.description.labels.categories)[probs.argmax(1)]
    assert (predicted == truth_types).mean() > 0.9  # measured 0.951
    # Issue 24: the preset's imputation is the read-out (decoder, latent neighbours and shared-gene neighbours through
    # the input correction, equal weights; TASK_DEFAULTS): the model's own table, through the AnnData door. It beats
    # its decoder and a tuned cosine kNN fit on the reference's shared genes.
    assert model.description.readout is not None and model.module.input_gain is not None
    imputed = model.impute(split.query)
    columns = [list(imputed.var_names).index(g) for g in split.held_out]
    blended = per_gene_correlation(np.asarray(imputed.layers["inclust_imputed"])[:, columns], split.truth)
    panel = [str(g) for g in split.query.var_names]
    knn = knn_regressor().fit(split.reference[:, panel].X.toarray(), split.reference[:, split.held_out].X.toarray())
    baseline = np.mean(per_gene_correlation(knn.predict(split.query.X.toarray()), split.truth))
    assert np.mean(blended) >= BLEND_FLOOR and np.mean(blended) > np.mean(r) + 0.01, (np.mean(blended), np.mean(r))
    assert np.mean(blended) >= KNN_RATIO * baseline, (np.mean(blended), baseline)
