"""Integration quality on harder synthetic data (issue 15): inClust+ next to PCA baselines, standard metrics.

Data: evaluation/synthetic.py ``make_hard_cells`` - two batches of paired RNA + protein with strong,
non-linear batch effects and cell-type proportions that differ 4x between the batches. Embeddings:

- PCA (20 components) of the preprocessed RNA + protein values the model trains on;
- batch-centred PCA: the same after subtracting each batch's mean from every feature;
- inClust+, the integration preset (both batches labelled), covariate-corrected latent;
- inClust+, batch1 unlabelled (semi-supervised: label transfer is then a real prediction);
- ground truth: the generator's batch-free state u of every cell (before the batch bends and offsets
  it), scored by the same metrics. It is what "perfectly mixed while keeping biology" means for this
  data: its same-batch fraction is the target the acceptance compares with (1.1 x truth), next to
  the global chance level (0.50: neighbours of any type) and the chance level within each type (the
  batches hold the types about 30/70, so an embedding that keeps types apart cannot go lower).

Metrics: evaluation/integration_metrics.py (same-batch neighbour fraction with its perfect-mixing
value, batch ASW, label ASW, ARI/NMI of k-means, kNN label transfer from batch0 to batch1).

    python benchmarks/integration.py            # seed 0 in full, seeds 1 and 2 for the acceptance: ~15 min on 2 shared cores
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from bench_common import machine, publish

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TRUTH = "ground truth (batch-free generator state)"
SEMI = "inClust+, batch1 unlabelled"


def _overrides(settings: tuple[str, ...]) -> dict:
    """``section.key=value`` pairs (value parsed as JSON, else kept as text) -> preset overrides."""
    out: dict = {}
    for item in settings:
        name, _, value = item.partition("=")
        section, _, key = name.partition(".")
        if not key or not value:
            raise click.BadParameter(f"{item!r}: expected section.key=value, e.g. loss.kl=5")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(section, {})[key] = parsed
    return out


def _ours(cells, labelled_query: bool, epochs: int | None, seed: int, settings: dict | None = None):
    from inclust_plus.training.model import InClust
    from inclust_plus.training.presets import preset_config

    overrides = {k: dict(v) for k, v in (settings or {}).items()}
    overrides["training"] = {"seed": seed, "threads": 1, **({"epochs": epochs} if epochs else {}), **overrides.get("training", {})}
    cfg = preset_config("integration", overrides)  # epochs and batch size: the task's defaults unless given
    if not labelled_query:
        cfg.datasets[1].label_key = None
    halves = {d.name: np.flatnonzero(cells.batch == d.name) for d in cfg.datasets}
    objs = {n: cells.mudata(["rna", "protein"], idx) for n, idx in halves.items()}
    model, data, _ = InClust.fit(cfg, objs, progress=False)
    zs = []
    for n in halves:
        a, b = data.cell_ranges[n]
        x = np.asarray(data.x[a:b])[:, model.feature_set("rna_protein")]
        zs.append(model.predict(x, "rna_protein", n)[1])
    order = np.concatenate(list(halves.values()))
    return np.concatenate(zs), np.asarray(data.x), order


def run(n_cells: int, epochs: int | None, seed: int, settings: dict | None = None, semi_only: bool = False) -> dict:
    import torch
    from sklearn.decomposition import PCA

    from evaluation.integration_metrics import integration_scores
    from evaluation.synthetic import make_hard_cells

    torch.set_num_threads(1)
    cells = make_hard_cells(n_cells=n_cells, seed=seed)
    out = {}
    z_semi, x, order = _ours(cells, False, epochs, seed, settings)
    batch, types = cells.batch[order], cells.cell_type[order]
    embeddings = {}
    if not semi_only:
        z_lab, _, _ = _ours(cells, True, epochs, seed, settings)
        centred = x.copy()
        for b in np.unique(batch):
            centred[batch == b] -= centred[batch == b].mean(0)
        embeddings["PCA (20)"] = PCA(20, random_state=0).fit_transform(x)
        embeddings["batch-centred PCA (20)"] = PCA(20, random_state=0).fit_transform(centred)
        embeddings["inClust+ integration preset (both batches labelled)"] = z_lab
    embeddings[SEMI] = z_semi
    embeddings[TRUTH] = cells.latent[order]
    for name, z in embeddings.items():
        out[name] = integration_scores(z, batch, types, "batch0")
        print(name, out[name], flush=True)
    from inclust_plus.training.presets import preset_config

    used = preset_config("integration", {k: dict(v) for k, v in (settings or {}).items()}).training
    return {"n_cells": n_cells, "epochs": epochs or used.epochs, "batch_size": used.batch_size, "seed": seed, "settings": settings or {},
            "scores": out}


def acceptance(scores: dict) -> dict:
    """Issue 15's integration acceptance for one seed: ours (batch1 unlabelled) against the truth's mixing."""
    ours, truth = scores[SEMI], scores[TRUTH]
    limit = 1.1 * truth["same_batch_fraction"]
    return {"ours": ours["same_batch_fraction"], "truth": truth["same_batch_fraction"], "limit": round(limit, 4),
            "within_type_chance": ours["same_batch_chance_within_types"], "global_chance": ours["same_batch_chance"],
            "label_transfer": ours["label_transfer"],
            "met": bool(ours["same_batch_fraction"] <= limit and ours["label_transfer"] >= 0.9)}


def markdown(r: dict) -> str:
    first = r["runs"][0]
    lines = [
        "## Integration on harder synthetic data (issue 15, benchmarks/integration.py)",
        "",
        f"Measured {r['date']} on {r['machine']}. `make_hard_cells` ({r['n_cells']:,} cells, 2 batches of paired RNA + protein, "
        f"non-linear batch effects, type proportions 4x apart); inClust+ (integration task defaults) trained {r['epochs']} epochs, "
        f"batch {r['batch_size']}. Same-batch fraction: share of the 30 nearest neighbours from the cell's own batch; global chance: its value "
        "when neighbours are drawn from all cells; within-type chance: drawn from the cell's own type. Label transfer: kNN (k=15) "
        "fit on batch0 predicts batch1. Ground truth: the generator's batch-free state of each cell (before the batch effects), "
        "the perfectly mixed embedding that keeps the biology.",
        "",
        f"Seed {first['seed']}:",
        "",
        "| embedding | same-batch fraction | global chance | within-type chance | batch ASW | label ASW | ARI | NMI | label transfer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in first["scores"].items():
        lines.append(f"| {name} | {s['same_batch_fraction']:.3f} | {s['same_batch_chance']:.3f} | {s['same_batch_chance_within_types']:.3f} | "
                     f"{s['batch_asw']:.3f} | {s['label_asw']:.3f} | {s['ari']:.3f} | {s['nmi']:.3f} | {s['label_transfer']:.3f} |")
    lines += ["", "Acceptance (\"batch mixing within 10% of perfect while label transfer stays >= 0.9\"), inClust+ with batch1 "
              "unlabelled, perfect = the ground truth's same-batch fraction, each seed a new data set and training seed:", "",
              "| seed | ours | ground truth | limit (1.1 x truth) | within-type chance | global chance | label transfer | met |",
              "|---|---|---|---|---|---|---|---|"]
    for run in r["runs"]:
        a = run["acceptance"]
        lines.append(f"| {run['seed']} | {a['ours']:.3f} | {a['truth']:.3f} | {a['limit']:.3f} | {a['within_type_chance']:.3f} | "
                     f"{a['global_chance']:.3f} | {a['label_transfer']:.3f} | {'yes' if a['met'] else 'NO'} |")
    lines += ["", "The global chance level (0.50) is not a target for this data: the batches hold the types about 30/70, so "
              "neighbours drawn from all cells would be of other types; the ground truth, which keeps types apart, sits at the "
              "within-type level. The integration task's defaults (training/config.py TASK_DEFAULTS) were chosen on this data and "
              "on the real MERFISH split as two datasets (benchmarks/results/integration_contenders.md, issue 24; earlier runs "
              "on this data in benchmarks/results/integration_experiments.md; the paper's loss: 0.79 on seed 0)."]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--cells", "n_cells", type=int, default=3000, show_default=True)
@click.option("--epochs", type=int, default=None, help="Epochs of inClust+ (default: the integration task's, training/config.py TASK_DEFAULTS).")
@click.option("--seed", "seeds", type=int, multiple=True, default=(0, 1, 2), show_default=True,
              help="Data and training seeds (repeatable); the first is scored in full, the others for the acceptance only.")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a key of the integration preset for inClust+, e.g. --set loss.kl=5 (repeatable).")
@click.option("--semi-only", is_flag=True, help="Score only inClust+ with batch1 unlabelled and the truth (one training per seed; for quick experiments).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def main(n_cells: int, epochs: int, seeds: tuple[int, ...], settings: tuple[str, ...], semi_only: bool, out: Path) -> None:
    over = _overrides(settings)
    runs = []
    for i, seed in enumerate(seeds):
        r = run(n_cells, epochs, seed, over, semi_only or i > 0)
        r["acceptance"] = acceptance(r["scores"])
        runs.append(r)
        print(json.dumps({"seed": seed, **r["acceptance"]}), flush=True)
    if semi_only:  # an experiment: printed, not written over the recorded results
        return
    m = machine()
    result = {"n_cells": n_cells, "epochs": runs[0]["epochs"], "batch_size": runs[0]["batch_size"], "settings": over, "runs": runs,
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
              "machine": f"{m['cpu_model']}, {m['cores']} cores shared with other work (load average {m['load_average_1_5_15'][0]} at the end)"}
    publish("integration", result, markdown(result), out)


if __name__ == "__main__":
    main()
