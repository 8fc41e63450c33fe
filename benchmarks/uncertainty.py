"""How well the ensemble's spread says which imputed values to trust (issue 15), standard MERFISH-panel split.

The imputation preset (by default with all its settings: 6 networks, 200 epochs) is trained on the
standard split (evaluation/splits.py) as in benchmarks/imputation_accuracy.py; for the 31 held-out
genes of the 9,111 query cells it gives the imputed value (the members' mean) and the members'
standard deviation (training/uncertainty.py). Scores, over every imputed value:

- pooled ratio: mean |imputed - measured| of the 20% of values with the LOWEST spread divided by
  that of the 20% with the HIGHEST spread (acceptance: clearly below 1);
- within-gene ratio: the same ratio computed gene by gene (quintiles of each gene's spread), mean
  and median over genes - it removes the easy part (genes that are mostly zero have both low
  spread and low error) and asks whether the spread ranks the cells within a gene;
- Spearman correlation of spread and absolute error, pooled;
- the same for the spread over 20 posterior samples of the latent, each decoded by the averaged members (the
  option meant for a single network, which has no members to disagree).

    python benchmarks/uncertainty.py                          # the preset as is (about 10 minutes on 2 idle cores)
    python benchmarks/uncertainty.py --members 2 --epochs 8   # the reduced run of tests/test_uncertainty.py
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


def spread_scores(err: np.ndarray, sd: np.ndarray) -> dict:
    """Error of the lowest- vs highest-spread fifth of the values, pooled and gene by gene."""
    from scipy.stats import spearmanr

    lo, hi = np.quantile(sd, [0.2, 0.8])
    low, high = float(err[sd <= lo].mean()), float(err[sd >= hi].mean())
    per_gene = []
    for j in range(sd.shape[1]):
        lj, hj = np.quantile(sd[:, j], [0.2, 0.8])
        if hj > lj:
            per_gene.append(float(err[sd[:, j] <= lj, j].mean() / err[sd[:, j] >= hj, j].mean()))
    return {"low_spread_mae": round(low, 5), "high_spread_mae": round(high, 5), "pooled_ratio": round(low / high, 4),
            "within_gene_ratio_mean": round(float(np.mean(per_gene)), 4), "within_gene_ratio_median": round(float(np.median(per_gene)), 4),
            "spearman_spread_error": round(float(spearmanr(sd.ravel(), err.ravel())[0]), 4)}


def run(adata, members: int | None, epochs: int | None, threads: int, samples: int) -> dict:
    import torch

    from inclust_plus.training.model import InClust
    from inclust_plus.training.presets import preset_config
    from evaluation.splits import per_gene_correlation, pseudo_spatial_split
    from inclust_plus.training.uncertainty import predict_with_std

    torch.set_num_threads(threads)
    overrides = {"model": {"ensemble": members}} if members else {}
    if epochs:
        overrides["training"] = {"epochs": epochs}
    cfg = preset_config("imputation", overrides)
    split = pseudo_spatial_split(adata, seed=0)
    t0 = time.perf_counter()
    model, data, _ = InClust.fit(cfg, {"scrna": split.reference, "merfish": split.query}, progress=False)
    fit_s = time.perf_counter() - t0
    genes = data.features["rna"]
    cols = [genes.index(g) for g in split.held_out]
    x = np.asarray(split.query.X.toarray(), dtype=np.float32)
    t0 = time.perf_counter()
    y, sd = predict_with_std(model, x, "merfish", "merfish", "scrna")
    pred_s = time.perf_counter() - t0
    y, sd = y[:, cols], sd[:, cols]
    out = {"members": cfg.model.ensemble, "epochs": cfg.training.epochs, "fit_seconds": round(fit_s, 1), "predict_seconds": round(pred_s, 3),
           "mean_pearson": round(float(np.nanmean(per_gene_correlation(y, split.truth))), 4),
           "ensemble": spread_scores(np.abs(y - split.truth), sd)}
    ys, ss = predict_with_std(model, x, "merfish", "merfish", "scrna", samples=samples)
    out["posterior_samples"] = {"samples": samples, **spread_scores(np.abs(ys[:, cols] - split.truth), ss[:, cols])}
    return out


def markdown(r: dict) -> str:
    e, p = r["ensemble"], r["posterior_samples"]
    rows = [("ensemble members' std", e), (f"std over {p['samples']} posterior samples", p)]
    lines = [
        "## How sure is each imputed value (issue 15, benchmarks/uncertainty.py)",
        "",
        f"Measured {r['date']} on {r['machine']}, one run. Imputation preset with {r['members']} networks, {r['epochs']} epochs "
        f"(fit {r['fit_seconds']:.0f} s; mean Pearson of the 31 held-out genes {r['mean_pearson']:.3f}), standard split. "
        "MAE = mean |imputed - measured| over the 9,111 query cells x 31 held-out genes; ratio = MAE of the 20% of values with "
        "the lowest spread / MAE of the 20% with the highest. Within-gene: the same ratio per gene, mean (median) over genes.",
        "",
        "| spread | MAE lowest 20% | MAE highest 20% | pooled ratio | within-gene ratio | Spearman(spread, error) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in rows:
        lines.append(f"| {name} | {s['low_spread_mae']:.4f} | {s['high_spread_mae']:.4f} | {s['pooled_ratio']:.3f} | "
                     f"{s['within_gene_ratio_mean']:.3f} ({s['within_gene_ratio_median']:.3f}) | {s['spearman_spread_error']:.3f} |")
    lines += ["", f"Acceptance (lowest-spread fifth clearly less wrong than the highest): {'met' if e['pooled_ratio'] < 0.7 else 'NOT met'} "
              f"(pooled ratio {e['pooled_ratio']:.3f}). The pooled ratio is helped by genes that are mostly zero (low spread and low "
              "error together); the within-gene ratio is the stricter reading."]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DATA, show_default=True)
@click.option("--members", type=int, default=None, help="Override model.ensemble (default: the preset's).")
@click.option("--epochs", type=int, default=None, help="Override training.epochs (default: the preset's).")
@click.option("--samples", type=int, default=20, show_default=True, help="Posterior samples for the one-network spread.")
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def main(data: Path, members: int | None, epochs: int | None, samples: int, threads: int, out: Path) -> None:
    import anndata

    r = run(anndata.read_h5ad(data), members, epochs, threads, samples)
    reduced = members is not None or epochs is not None
    r.update(date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), data=data.name, reduced=reduced, machine=machine_line(threads))
    stem = "uncertainty_reduced" if reduced else "uncertainty"
    publish(stem, r, markdown(r), out)


if __name__ == "__main__":
    main()
