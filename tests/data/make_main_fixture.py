"""Write the checkpoints and manifests that tests/test_description.py compares against.

Run once with the code of main at ad7c514 (before the typed description): the files it writes are
what that main wrote, so the test proves today's reader loads them and today's exporter writes the
same manifests. Re-running it with newer code would defeat the point; it is kept to show how the
files were made (tiny: two covariate keys, a partial panel, labels on one dataset, a mapped batch).

    python tests/data/make_main_fixture.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from inclust_plus.export import export_model
from inclust_plus.training.config import config_from_dict
from inclust_plus.training.model import InClust
from evaluation.synthetic import make_cells

HERE = Path(__file__).parent


def models() -> tuple[InClust, InClust]:
    """The trained model and its mapped copy (seeded, one thread: the same weights every run)."""
    torch.set_num_threads(1)
    cells = make_cells(n_cells=300, n_batches=3, seed=0, sizes={"rna": 24, "protein": 6, "atac": 4})
    objs = {}
    for b in range(3):
        idx = np.flatnonzero(cells.batch == f"batch{b}")
        obj = cells.anndata("rna", idx)
        obj.obs["tech"] = "10x" if b < 2 else "merfish"
        objs[f"batch{b}"] = obj
    objs["batch1"] = objs["batch1"][:, :16].copy()  # a partial panel: its own feature set and combinations
    cfg = config_from_dict({
        "name": "main_fixture", "task": "custom",
        "datasets": [{"name": "batch0", "label_key": "cell_type", "covariate_keys": ["batch", "tech"]},
                     {"name": "batch1", "covariate_keys": ["batch", "tech"]}],
        "preprocessing": {"rna": {"normalize_total": 10000, "log1p": True, "scale": "max"}},
        "model": {"encoder_hidden": [8], "latent_dim": 3, "decoder_hidden": [8]},
        "training": {"epochs": 2, "batch_size": 50, "threads": 1, "workers": 1, "device": "cpu"},  # main also had "native": "off" here (the C++ step is gone)
    })
    model, _, _ = InClust.fit(cfg, objs, progress=False)
    new = objs["batch2"].copy()
    new.obs["batch"] = "batch9"
    return model, model.map_query(new, covariate_key="batch", steps=5, progress=False, source="fixture")


def main() -> None:
    model, mapped = models()
    model.save(HERE / "main_model.pt")
    mapped.save(HERE / "main_mapped.pt")
    for stem in ("main_model", "main_mapped"):
        out = HERE / f"{stem}_export"
        export_model(HERE / f"{stem}.pt", out, torchscript=False, force=True)
        manifest = json.loads((out / "manifest.json").read_text())
        (HERE / f"{stem}.manifest.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
        for f in out.iterdir():
            f.unlink()
        out.rmdir()


if __name__ == "__main__":
    main()
