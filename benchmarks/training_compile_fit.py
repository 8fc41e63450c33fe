"""A whole imputation-preset fit with ``training.compile = "auto"`` against ``"off"`` (today's step), side by side.

benchmarks/training_compile.py times single steps; this runs what a user runs: ``InClust.fit`` of the
preset (6 members; on a CPU in worker processes of 3 stacked members, training/fitting/members.py)
on the standard split of the MERFISH reference, data assembly, every compile and every worker's
start included, the two settings alternating. Reports the wall seconds, the final training loss and
the decoder's mean per-gene Pearson of the held-out genes (the same model either way, up to rounding).

    python benchmarks/training_compile_fit.py                      # 200 epochs (the preset), 2 rounds
    python benchmarks/training_compile_fit.py --epochs 100 --rounds 1
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from bench_common import machine_line, publish

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "merfish_scrna_reference.h5ad"
MODES = ("off", "auto")


def fit_once(split, mode: str, epochs: int | None) -> dict:
    import anndata

    from evaluation.splits import per_gene_correlation
    from inclust_plus.training.model import InClust
    from inclust_plus.training.presets import preset_config

    panel = list(map(str, split.query.var_names))
    query = anndata.AnnData(np.asarray(split.query.X.toarray(), dtype=np.float32))
    query.var_names = panel
    cfg = preset_config("imputation", {"training": {"compile": mode, **({"epochs": epochs} if epochs else {})}})
    t0 = time.perf_counter()
    model, data, result = InClust.fit(cfg, {"scrna": split.reference, "merfish": query}, progress=False)
    wall = time.perf_counter() - t0
    genes = data.features["rna"]
    y = model.predict(query.X, "merfish", "merfish", target_covariate="scrna")[0][:, [genes.index(g) for g in split.held_out]]
    return {"mode": mode, "wall_s": round(wall, 1), "final_total_loss": round(float(result.history["total"][-1]), 4),
            "mean_pearson": round(float(np.nanmean(per_gene_correlation(y, split.truth))), 4)}


def markdown(r: dict) -> str:
    lines = ["## A whole preset fit with torch.compile (benchmarks/training_compile_fit.py)", "",
             f"Measured {r['date']} on {r['machine']} (load average {r['load_before']} before, {r['load_after']} after). "
             f"`InClust.fit` of the imputation preset ({r['epochs']} epochs, 6 members) on the standard split, "
             "`training.compile` off (the hand-written step, today's default before) and auto, alternating; wall seconds of "
             "the whole fit (data assembly, worker start and compile included).", "",
             "| round | compile | wall s | final loss | mean Pearson (decoder) |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {x['round']} | {x['mode']} | {x['wall_s']} | {x['final_total_loss']} | {x['mean_pearson']} |" for x in r["runs"]]
    lines += ["", f"Median wall: off {r['median_wall']['off']} s, auto {r['median_wall']['auto']} s: auto is "
              f"**{r['speedup']}x** the hand-written step's fit."]
    return "\n".join(lines) + "\n"


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--epochs", type=int, default=None, help="Epochs (default: the preset's 200).")
@click.option("--rounds", type=int, default=2, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "benchmarks" / "results", show_default=True)
def main(epochs, rounds, out) -> None:
    import os

    import anndata

    from evaluation.splits import pseudo_spatial_split

    split = pseudo_spatial_split(anndata.read_h5ad(DATA), seed=0)
    before = [round(v, 2) for v in os.getloadavg()]
    runs = []
    for i in range(rounds):
        for mode in (MODES if i % 2 == 0 else MODES[::-1]):
            runs.append({"round": i + 1, **fit_once(split, mode, epochs)})
            print(runs[-1], flush=True)
    med = {m: float(np.median([x["wall_s"] for x in runs if x["mode"] == m])) for m in MODES}
    r = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_line(1), "epochs": epochs or 200,
         "load_before": before, "load_after": [round(v, 2) for v in os.getloadavg()], "runs": runs, "median_wall": med,
         "speedup": round(med["off"] / med["auto"], 2)}
    publish("training_compile_fit", r, markdown(r), out)


if __name__ == "__main__":
    main()
