"""The integration task's defaults on the harder synthetic data (evaluation/synthetic.py make_hard_cells, issue 15):
batches mixed about as well as the generator's batch-free state mixes them, while an unlabelled batch's types are
still transferred.

"Perfect" is concrete here: the generator knows each cell's state before the batch effects (``cells.latent``);
scored by the same metric, its same-batch neighbour fraction is what a perfectly mixed embedding that keeps the
biology reaches (0.580 on these 2,000 cells; the within-type chance level 0.575, the global one 0.500). The
acceptance (issue 15, kept by issue 24) is 1.1x that truth; the paper's loss gives 0.79. The defaults of issue 24
(kl 2, per-type mixing 5, input correction, batches of 500 at a cosine-decayed learning rate of 3e-3) measured 0.601
here (1.04x; label transfer 0.969, ARI 0.970) in ~2 min on 2 shared cores; the benchmark (benchmarks/integration.py,
3,000 cells, seeds 0-2) 0.98-1.02x. The previous defaults (kl 0.05, mixing 10) mixed these batches to 0.580 but
blurred overlapping real types.
"""

import numpy as np

from evaluation.integration_metrics import integration_scores
from inclust_plus.training.model import InClust
from inclust_plus.training.presets import preset_config
from evaluation.synthetic import make_hard_cells


def test_integration_defaults_mix_hard_batches_like_the_truth_and_keep_types():
    cells = make_hard_cells(n_cells=2000, seed=0)
    cfg = preset_config("integration", {"training": {"seed": 0, "threads": 1}})
    loss, training = cfg.loss, cfg.training
    tuned = (loss.kl, loss.mixing, loss.mixing_kernel, cfg.model.input_correction, training.epochs, training.batch_size, training.learning_rate,
             training.lr_schedule)
    assert tuned == (2.0, 5.0, "per_type", "moments", 200, 500, 3e-3, "cosine")  # the tuned defaults (training/config.py)
    cfg.datasets[1].label_key = None  # batch1 unlabelled: label transfer is a prediction
    rows = {d.name: np.flatnonzero(cells.batch == d.name) for d in cfg.datasets}
    model, data, _ = InClust.fit(cfg, {n: cells.mudata(["rna", "protein"], idx) for n, idx in rows.items()}, progress=False)
    z = []
    for name in rows:
        a, b = data.cell_ranges[name]
        z.append(model.predict(np.asarray(data.x[a:b])[:, model.feature_set("rna_protein")], "rna_protein", name)[1])
    order = np.concatenate(list(rows.values()))
    batch, types = cells.batch[order], cells.cell_type[order]
    s = integration_scores(np.concatenate(z), batch, types, "batch0")
    truth = integration_scores(cells.latent[order], batch, types, "batch0")["same_batch_fraction"]
    assert abs(truth - 0.580) < 0.005, truth  # the generator's batch-free state (the target)
    assert s["same_batch_fraction"] <= 1.05 * truth, (s, truth)  # the acceptance allows 1.1x; the paper's loss (0.79) fails both
    assert s["label_transfer"] >= 0.95 and s["ari"] >= 0.95, s
