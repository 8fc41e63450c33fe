"""Integration of two real "datasets" with different feature sets (issue 15): inClust+ next to PCA baselines.

The only real data here is the scRNA-seq reference of ../shared/data (30,370 cells x 153 genes, 13
types). Two datasets are built from it as inClust+ integrates datasets measured on different panels
(the paper's cross-dataset integration): the standard split's reference (21,259 cells, all 153
genes, labelled) and its query (9,111 cells, the 31 scRNA-specific genes removed, unlabelled), and
the query given a simulated technical effect (``--effect``, default 1): per gene a gain
exp(N(0, 0.5 e)) and a bend x -> x^exp(N(0, 0.3 e)), then 20 e % of its non-zero values dropped,
clipped to [0, 1] - a platform that detects each gene differently. ``e = 0`` leaves only the
missing genes as the difference.

Because the split is random, both datasets hold the same cells' types in the same proportions:
perfect mixing is the chance level (global and within-type chance agree), and the untouched data
(all 153 genes, no effect; PCA) is the "no batch difference at all" row, scored like the others.

Embeddings: PCA (20) of the 122 shared genes; the same after centring each dataset's genes
(batch-centred PCA); inClust+ with the integration task's defaults (training/config.py
TASK_DEFAULTS), each dataset encoded from its own panel; inClust+ with the paper's loss and model (kl 1,
no mixing term, no input correction) trained the same way; ``--contender`` adds other settings (issue 24's
headline adds the paper's loss trained as the previous defaults were: batches of 100, 150 epochs, learning
rate 1e-3). Metrics: evaluation/integration_metrics.py (silhouettes on a seeded 6,000-cell sample), label
transfer: kNN (k=15) fit on the reference predicts the query; the text names where the defaults are lower
than another inClust+ row on label transfer, ARI or label ASW (issue 24's acceptance, at the table's three
decimals).

    python benchmarks/integration_real.py --scib --contender kl=1,mixing=0,correction=none,batch=100,epochs=150,lr=0.001,schedule=constant
    python benchmarks/integration_real.py --scib --contender ... --effect 0   # the panels are the only difference
    # three trainings each: ~15 minutes on 2 shared cores
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from bench_common import machine_line, publish


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "merfish_scrna_reference.h5ad"
ASW_CELLS = 6000
NONE = "no batch difference (all 153 genes, no effect; PCA 20)"
SHARED = "PCA (20) of the 122 shared genes"
PAPER = "inClust+ paper loss (kl 1, mixing 0)"
PAPER_SETTINGS = {"loss": {"kl": 1.0, "mixing": 0.0}, "model": {"input_correction": "none"}}  # the paper's loss and model, the task's training


def _defaults_name() -> str:
    """The integration defaults' row name, with the settings that make them (training/config.py TASK_DEFAULTS)."""
    from inclust_plus.training.config import TASK_DEFAULTS

    d = TASK_DEFAULTS["integration"]
    loss = d.get("loss", {})
    parts = ([f"{k} {v:g}" for k, v in loss.items() if k != "mixing_kernel"] + [f"{v} kernel" for v in [loss.get("mixing_kernel")] if v]
             + [f"input correction {v}" for v in [d.get("model", {}).get("input_correction")] if v])
    return "inClust+ integration defaults (" + ", ".join(parts) + ")"


OURS = _defaults_name()


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def technical_effect(x: np.ndarray, effect: float, seed: int) -> np.ndarray:
    """Per-gene gain and bend plus dropout of non-zero values (module docstring); 0 = unchanged."""
    if effect == 0:
        return x
    rng = np.random.default_rng(seed)
    n_genes = x.shape[1]
    gain = np.exp(rng.normal(0, 0.5 * effect, n_genes)).astype(np.float32)
    power = np.exp(rng.normal(0, 0.3 * effect, n_genes)).astype(np.float32)
    y = np.clip(np.power(x, power) * gain, 0, 1)
    y[(rng.random(x.shape) < 0.2 * effect) & (x > 0)] = 0
    return y.astype(np.float32)


def _train(reference, query, settings: dict, epochs: int | None, seed: int):
    """Train on the two datasets; their corrected latents, each from its own panel (``views.query`` set:
    both from the shared panel, the way they were trained)."""
    from inclust_plus.training.model import InClust
    from inclust_plus.training.presets import preset_config

    datasets = [{"name": "reference", "modalities": ["rna"], "label_key": "cell_type", "preprocessed": True},
                {"name": "query", "modalities": ["rna"], "preprocessed": True}]
    training = {"seed": seed, "threads": 1, **({"epochs": epochs} if epochs else {}), **settings.get("training", {})}
    over = {"datasets": datasets, **settings, "training": training}
    cfg = preset_config("integration", over)  # epochs and batch size: the task's defaults unless given
    t0 = time.perf_counter()
    model, data, _ = InClust.fit(cfg, {"reference": reference, "query": query}, progress=False)
    seconds = time.perf_counter() - t0
    genes = list(model.description.modalities[0].features)
    panel = {str(g) for g in query.var_names}
    sets = model.description.feature_sets
    name = next(n for n, s in sets.items() if {genes[i] for i in s.features} == panel)  # the query's own panel
    shared = [genes[i] for i in sets[name].features]
    if cfg.views.query:
        z_ref = model.predict(_dense(reference[:, shared].X), name, "reference")[1]
    else:
        z_ref = model.predict(_dense(reference[:, genes].X), "rna", "reference")[1]
    z_q = model.predict(_dense(query[:, shared].X), name, "query")[1]
    return np.concatenate([z_ref, z_q]), seconds, cfg.training


# --contender's training keys: (spec name, [training] key, type); the spec name is also the row name's word
TRAINING_SPEC = (("batch", "batch_size", int), ("epochs", "epochs", int), ("lr", "learning_rate", float), ("schedule", "lr_schedule", str))


def _contender(spec: str) -> tuple[str, dict]:
    """``"kl=1,mixing=3"`` -> its row name and loss overrides (issue 24: candidates for the integration defaults);
    ``views=shared`` encodes both datasets from the genes they share (``views.query = ["query"]``);
    ``correction=moments`` or ``none`` sets ``model.input_correction`` (training/network/correction.py; default: the task's);
    ``batch=100``, ``epochs=300``, ``lr=0.001``, ``schedule=constant`` set the training (default: the task's);
    ``kernel=per_type`` sets ``loss.mixing_kernel`` (training/network/mixing.py)."""
    parts = {k.strip(): v.strip() for k, v in (part.split("=") for part in spec.split(","))}
    shared = parts.pop("views", "own") == "shared"
    corrected = parts.pop("correction", None)
    kernel = parts.pop("kernel", None)
    training = {key: kind(parts.pop(name)) for name, key, kind in TRAINING_SPEC if name in parts}
    loss = {k: float(v) for k, v in parts.items()}
    name = ("inClust+ " + ", ".join([f"{k} {v:g}" for k, v in loss.items()] + [f"{name} {training[key]:g}" if isinstance(training[key], float) else f"{name} {training[key]}"
                                     for name, key, _ in TRAINING_SPEC if key in training])
            + (", shared panel" if shared else "") + (f", input correction {corrected}" if corrected else "")
            + (f", {kernel} kernel" if kernel else ""))
    return name, {"loss": {**loss, **({"mixing_kernel": kernel} if kernel else {})}, **({"views": {"query": ["query"]}} if shared else {}), **({"training": training} if training else {}),
                  **({"model": {"input_correction": corrected}} if corrected else {})}


def run(effect: float, epochs: int | None, seed: int, contenders: tuple[str, ...] = (), scib: bool = False) -> dict:
    import anndata
    import torch
    from sklearn.decomposition import PCA

    from evaluation.integration_metrics import integration_scores
    from evaluation.splits import pseudo_spatial_split

    torch.set_num_threads(1)
    adata = anndata.read_h5ad(DATA)
    split = pseudo_spatial_split(adata, seed=0)
    query = split.query.copy()
    query.X = technical_effect(_dense(query.X), effect, seed)
    reference = split.reference
    batch = np.array(["reference"] * reference.n_obs + ["query"] * query.n_obs)
    types = np.concatenate([reference.obs["cell_type"].astype(str).to_numpy(), query.obs["cell_type"].astype(str).to_numpy()])
    shared = [str(g) for g in query.var_names]
    x_shared = np.concatenate([_dense(reference[:, shared].X), _dense(query.X)])
    centred = x_shared.copy()
    for b in ("reference", "query"):
        centred[batch == b] -= centred[batch == b].mean(0)
    untouched = np.concatenate([_dense(reference.X), _dense(adata[query.obs_names].X)])
    embeddings = {
        NONE: PCA(20, random_state=0).fit_transform(untouched),
        SHARED: PCA(20, random_state=0).fit_transform(x_shared),
        "batch-centred PCA (20)": PCA(20, random_state=0).fit_transform(centred),
    }
    seconds = {}
    embeddings[OURS], seconds[OURS], used = _train(reference, query, {}, epochs, seed)
    embeddings[PAPER], seconds[PAPER], _ = _train(reference, query, PAPER_SETTINGS, epochs, seed)
    for spec in contenders:
        name, settings = _contender(spec)
        embeddings[name], seconds[name], _ = _train(reference, query, settings, epochs, seed)
    scores = {}
    for name, z in embeddings.items():
        scores[name] = integration_scores(z, batch, types, "reference", asw_sample=ASW_CELLS)
        print(name, scores[name], flush=True)
    extra = {}
    if scib:  # the standard scIB table (scib-metrics) of the same embeddings, on a seeded subsample
        from evaluation.scib_table import CELLS, scib_table

        extra = {"scib": scib_table(embeddings, batch, types, unintegrated=SHARED, seed=seed), "scib_cells": CELLS}
    return {**extra, "effect": effect, "epochs": used.epochs, "batch_size": used.batch_size, "seed": seed, "cells": {"reference": int(reference.n_obs), "query": int(query.n_obs)},
            "training_seconds": {k: round(v, 1) for k, v in seconds.items()}, "scores": scores}


BIOLOGY = {"label_transfer": "label transfer", "ari": "ARI", "label_asw": "label ASW"}  # issue 24: no lower than the paper's loss


def _against(ours: dict, name: str, other: dict) -> str:
    """One sentence: the defaults against another inClust+ row on mixing and on the three measures of biology."""
    lower = [label for key, label in BIOLOGY.items() if round(ours[key], 3) < round(other[key], 3)]
    pairs = "; ".join(f"{label} {ours[key]:.3f} against {other[key]:.3f}" for key, label in BIOLOGY.items())
    return (f"Against {name.removeprefix('inClust+ ')}: same-batch fraction {ours['same_batch_fraction']:.3f} against "
            f"{other['same_batch_fraction']:.3f}; {pairs}; " + (f"lower on {', '.join(lower)}." if lower else "no lower on any of the three."))


def markdown(r: dict) -> str:
    lines = [
        "## Integration of real datasets with different panels (issue 15, benchmarks/integration_real.py"
        + (")" if r["effect"] == 1.0 else f" --effect {r['effect']:g})"),
        "",
        f"Measured {r['date']} on {r['machine']}. The standard split of the MERFISH-panel scRNA-seq data as two datasets: "
        f"reference ({r['cells']['reference']:,} cells, 153 genes, labelled) and query ({r['cells']['query']:,} cells, the 31 "
        f"scRNA-specific genes removed, unlabelled, "
        + (f"simulated technical effect e = {r['effect']:g}: per-gene gain and bend, dropout of non-zero values" if r["effect"]
           else "no simulated technical effect: the panels are the only difference")
        + f"). inClust+ trained {r['epochs']} epochs (batch {r['batch_size']}, both losses with the same training settings; "
        + ", ".join(f"{k.split(' (')[0]}: {v:.0f} s" for k, v in r["training_seconds"].items()) + "). Same-batch fraction: share of "
        "the 30 nearest neighbours from the cell's own dataset (perfect mixing: the chance level, global and within-type agree "
        "because the split is random); label transfer: kNN (k=15) fit on the reference predicts the query's types; "
        f"silhouettes on {ASW_CELLS:,} cells.",
        "",
        "| embedding | same-batch fraction | global chance | within-type chance | batch ASW | label ASW | ARI | NMI | label transfer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["scores"].items():
        lines.append(f"| {name} | {s['same_batch_fraction']:.3f} | {s['same_batch_chance']:.3f} | {s['same_batch_chance_within_types']:.3f} | "
                     f"{s['batch_asw']:.3f} | {s['label_asw']:.3f} | {s['ari']:.3f} | {s['nmi']:.3f} | {s['label_transfer']:.3f} |")
    ours, base = r["scores"][OURS], r["scores"][NONE]
    chance = ours["same_batch_chance"]
    within = ours["same_batch_fraction"] <= 1.1 * chance
    text = (f"Perfect mixing here is {chance:.3f} (the untouched data reach {base['same_batch_fraction']:.3f}); within 10% is "
            f"<= {1.1 * chance:.3f}. The integration defaults reach {ours['same_batch_fraction']:.3f} "
            f"({'within' if within else 'not within'} 10% of perfect; PCA of the shared genes "
            f"{r['scores'][SHARED]['same_batch_fraction']:.3f}).")
    for name in [n for n in r["scores"] if n.startswith("inClust+") and n != OURS]:
        text += " " + _against(ours, name, r["scores"][name])
    lines += ["", text]
    if "scib" in r:
        metrics = list(next(iter(r["scib"].values())))
        lines += ["", f"The standard scIB table (scib-metrics' Benchmarker, unscaled; on {r['scib_cells']:,} cells drawn once, seeded, the "
                  "same for every embedding; PCR comparison against the PCA of the shared genes; totals 0.6 x bio conservation + "
                  "0.4 x batch correction):", "", "| embedding | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        for name, row in r["scib"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[m]:.3f}" for m in metrics) + " |")
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--effect", type=float, default=1.0, show_default=True, help="Strength of the query's simulated technical effect (0: none).")
@click.option("--epochs", type=int, default=None, help="Epochs of inClust+ (default: the integration task's, training/config.py TASK_DEFAULTS).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--contender", "contenders", multiple=True, help='Further loss settings to train side by side, e.g. "kl=1,mixing=3" (repeatable).')
@click.option("--scib", is_flag=True, help='Add the standard scIB table (scib-metrics, pip install -e ".[bench]"; minutes per embedding on 2 cores).')
@click.option("--stem", default=None, help="Result file name (default: integration_real[_effect<e>]).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def main(effect: float, epochs: int, seed: int, contenders: tuple[str, ...], scib: bool, stem: str | None, out: Path) -> None:
    r = run(effect, epochs, seed, contenders, scib)
    r.update(date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), machine=machine_line(1))
    stem = stem or ("integration_real" if effect == 1.0 else f"integration_real_effect{effect:g}")
    publish(stem, r, markdown(r), out)


if __name__ == "__main__":
    main()
