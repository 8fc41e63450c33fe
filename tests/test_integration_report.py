"""benchmarks/integration_real.py renders the scIB table it records (evaluation/scib_table.py) as one row per embedding."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _scores(same_batch: float, ari: float) -> dict:
    return {"same_batch_fraction": same_batch, "same_batch_chance": 0.58, "same_batch_chance_within_types": 0.58, "batch_asw": 0.5,
            "label_asw": 0.9, "ari": ari, "nmi": 0.9, "label_transfer": 0.9}


def test_markdown_has_the_scib_table_with_every_embedding_in_order():
    import integration_real as ir

    names = [ir.NONE, ir.SHARED, ir.OURS, ir.PAPER]
    r = {"effect": 1.0, "epochs": 150, "batch_size": 500, "seed": 0, "cells": {"reference": 10, "query": 5}, "date": "2026-12-06",
         "machine": "test", "training_seconds": {ir.OURS: 1.0, ir.PAPER: 2.0},
         "scores": {n: _scores(0.6 + 0.01 * i, 0.95) for i, n in enumerate(names)},
         "scib_cells": 6000, "scib": {n: {"KMeans ARI": 0.25 * i, "Total": 0.5} for i, n in enumerate(names)}}
    lines = ir.markdown(r).splitlines()
    head = lines.index("| embedding | KMeans ARI | Total |")
    assert lines[head + 1] == "|---|---:|---:|"
    assert lines[head + 2:head + 6] == [f"| {n} | {0.25 * i:.3f} | 0.500 |" for i, n in enumerate(names)]
    assert "6,000 cells" in lines[head - 2]
    assert "| embedding | KMeans ARI" not in ir.markdown({k: v for k, v in r.items() if k != "scib"})


def test_a_contender_spec_is_a_valid_integration_config():
    """``--contender`` specs reach the one settings check: every key they set exists and takes the value given."""
    import integration_real as ir

    from inclust_plus.training.config import config_from_dict

    name, settings = ir._contender("kl=2,mixing=5,batch=500,correction=moments,kernel=per_type")
    assert name == "inClust+ kl 2, mixing 5, batch 500, input correction moments, per_type kernel"
    cfg = config_from_dict({"task": "integration", "datasets": [{"name": "a"}, {"name": "b"}], **settings})
    assert (cfg.loss.kl, cfg.loss.mixing, cfg.loss.mixing_kernel, cfg.model.input_correction, cfg.training.batch_size) == (
        2.0, 5.0, "per_type", "moments", 500)
    name, settings = ir._contender("kl=1,mixing=0,correction=none,batch=100,epochs=150,lr=0.001,schedule=constant")
    assert name == "inClust+ kl 1, mixing 0, batch 100, epochs 150, lr 0.001, schedule constant, input correction none"
    cfg = config_from_dict({"task": "integration", "datasets": [{"name": "a"}, {"name": "b"}], **settings})
    assert (cfg.training.batch_size, cfg.training.epochs, cfg.training.learning_rate, cfg.training.lr_schedule) == (100, 150, 1e-3, "constant")


def test_the_defaults_are_compared_with_every_other_inclust_row_on_the_three_measures_of_biology():
    """Issue 24's acceptance in words: no lower than each inClust+ row on label transfer, ARI and label ASW (as shown,
    three decimals), and the measures that are lower named."""
    import integration_real as ir

    contender = "inClust+ kl 1, mixing 0, batch 100"
    scores = {ir.NONE: _scores(0.581, 0.4), ir.SHARED: _scores(0.8, 0.3), ir.OURS: _scores(0.585, 0.9403), ir.PAPER: _scores(0.7, 0.9398),
              contender: {**_scores(0.63, 0.93), "label_asw": 0.957}}
    r = {"effect": 0.0, "epochs": 200, "batch_size": 500, "seed": 0, "cells": {"reference": 10, "query": 5}, "date": "2026-12-06",
         "machine": "test", "training_seconds": {ir.OURS: 1.0}, "scores": scores}
    text = ir.markdown(r).splitlines()[-1]
    assert "The integration defaults reach 0.585 (within 10% of perfect" in text
    assert ("Against paper loss (kl 1, mixing 0): same-batch fraction 0.585 against 0.700; label transfer 0.900 against 0.900; "
            "ARI 0.940 against 0.940; label ASW 0.900 against 0.900; no lower on any of the three.") in text
    assert text.endswith("Against kl 1, mixing 0, batch 100: same-batch fraction 0.585 against 0.630; label transfer 0.900 against "
                         "0.900; ARI 0.940 against 0.930; label ASW 0.900 against 0.957; lower on label ASW.")
