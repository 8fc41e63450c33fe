"""Training on CPU vs CUDA (issue 13): the imputation preset on the MERFISH data, and a CITE-seq-sized model.

1. preset: the task (a) imputation preset (6 networks stacked in one, 200 epochs) on the standard
   split of ../shared/data/merfish_scrna_reference.h5ad, per device: wall of ``InClust.fit``
   (data assembly + training), member-rows/s, mean Pearson of the held-out genes.
2. citeseq: one network on a synthetic CITE-seq-sized table (20,000 genes + 200 proteins,
   100,000 cells, 10% of the genes non-zero per cell, kept sparse and densified per batch on the
   device), batch 500: rows/s of loss + backward + Adam, per device.

    python benchmarks/training_device.py --devices cpu cuda          # on a GPU machine
    python benchmarks/training_device.py --quick                     # CPU smoke run: tiny sizes

A device that torch does not see is recorded as skipped. The CPU runs use every core
(``--threads``, default all) so that "CUDA vs CPU" compares the whole machine against its GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, machine, now, write_result  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "merfish_scrna_reference.h5ad"


def _available(device: str) -> bool:
    import torch

    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def preset_run(split, device: str, precision: str, epochs: int | None, ensemble: int | None) -> dict:
    from inclust_plus.training.model import InClust
    from inclust_plus.training.presets import preset_config
    from evaluation.splits import per_gene_correlation

    training = {"device": device, "precision": precision, **({"epochs": epochs} if epochs else {})}
    cfg = preset_config("imputation", {"training": training, **({"model": {"ensemble": ensemble}} if ensemble else {})})
    t0 = time.perf_counter()
    model, data, result = InClust.fit(cfg, {"scrna": split.reference, "merfish": split.query}, progress=False)
    _sync(device)
    wall = time.perf_counter() - t0
    x = split.query.X
    y, _, _ = model.predict(np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32), "merfish", "merfish",
                            target_covariate="scrna")
    genes = data.features["rna"]
    r = per_gene_correlation(y[:, [genes.index(g) for g in split.held_out]], split.truth)
    return {"device": device, "precision": precision, "members": cfg.model.ensemble, "epochs": result.epochs_run,
            "fit_wall_s": round(wall, 2), "train_s": round(result.seconds, 2), "member_rows_per_s": round(result.rows_per_second),
            "mean_pearson": round(float(np.nanmean(r)), 4)}


def citeseq_data(n_cells: int, n_genes: int, n_proteins: int, seed: int = 0):
    """A TrainingData shaped like CITE-seq (sparse genes + dense proteins, values in [0, 1], one dataset)."""
    import scipy.sparse as sp

    from inclust_plus.training.assembly.data import TrainingData
    from inclust_plus.training.assembly.views import MaskTable, View

    rng = np.random.default_rng(seed)
    nnz_per_cell = max(1, n_genes // 10)
    cols = np.sort(rng.integers(0, n_genes, (n_cells, nnz_per_cell)), axis=1)
    cols = np.concatenate([cols, np.broadcast_to(np.arange(n_genes, n_genes + n_proteins), (n_cells, n_proteins))], axis=1)
    indptr = np.arange(0, cols.size + 1, cols.shape[1], dtype=np.int64)
    vals = rng.random(cols.size, dtype=np.float32)
    x = sp.csr_matrix((vals, cols.ravel(), indptr), shape=(n_cells, n_genes + n_proteins))
    x.sum_duplicates()
    n = n_genes + n_proteins
    table = MaskTable()
    everything = table.add(np.ones(n, bool), "rna_protein")
    labels = rng.integers(0, 20, n_cells)
    return TrainingData(
        x=x, modalities=["rna", "protein"], features={"rna": [f"g{i}" for i in range(n_genes)], "protein": [f"p{i}" for i in range(n_proteins)]},
        slices={"rna": slice(0, n_genes), "protein": slice(n_genes, n)}, dataset_of_cell=np.zeros(n_cells, np.int64),
        dataset_names=["cite"], cell_ranges={"cite": (0, n_cells)}, covariate_categories=["cite"],
        covariate=np.zeros(n_cells, np.int64), label_categories=[f"type{i}" for i in range(20)], labels=labels.astype(np.int64),
        label_mode="supervised", measured={"cite": np.ones(n, bool)}, mask_table=table, views=[View("cite", everything, everything)],
        preprocessing={}, row_cell=np.arange(n_cells, dtype=np.int64), row_input=np.full(n_cells, everything, np.int64),
        row_output=np.full(n_cells, everything, np.int64),
    )


def citeseq_run(data, device: str, precision: str, epochs: int) -> dict:
    import torch

    from inclust_plus.training.config import LossConfig, TrainingConfig
    from inclust_plus.training.network.module import InClustModule, ModuleConfig
    from inclust_plus.training.fitting.trainer import train_stacked

    torch.manual_seed(0)
    member = InClustModule(ModuleConfig(n_features=data.n_features, n_covariates=1, n_labels=len(data.label_categories)))
    settings = [(TrainingConfig(epochs=epochs, batch_size=500), LossConfig())]
    t0 = time.perf_counter()
    _, results = train_stacked([member], data, settings, torch.device(device), precision, progress=False)
    _sync(device)
    return {"device": device, "precision": precision, "cells": len(data.row_cell), "features": data.n_features, "epochs": epochs,
            "wall_s": round(time.perf_counter() - t0, 2), "rows_per_s": round(results[0].rows_per_second),
            "final_loss": round(results[0].history["total"][-1], 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--parts", nargs="+", default=["preset", "citeseq"], choices=["preset", "citeseq"])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--preset-epochs", type=int, default=None, help="default: the preset's 200")
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--proteins", type=int, default=200)
    parser.add_argument("--citeseq-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: every core)")
    parser.add_argument("--quick", action="store_true", help="CPU only, synthetic MERFISH-shaped cells, tiny CITE-seq table")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    ensemble = None
    if args.quick:
        args.devices, args.preset_epochs, ensemble = ["cpu"], 2, 2
        args.cells, args.genes, args.proteins = 1000, 500, 20
    result = {"benchmark": "training_device", "date": now(), "quick": args.quick, "torch_threads": torch.get_num_threads(),
              "preset": [], "citeseq": [], "skipped": [], "machine": machine()}
    if torch.cuda.is_available():
        result["machine"]["gpu"] = torch.cuda.get_device_name(0)
    devices = [d for d in args.devices if _available(d)]
    result["skipped"] = [f"{d}: torch sees no such device" for d in args.devices if d not in devices]
    if "preset" in args.parts:
        from evaluation.splits import pseudo_spatial_split

        if args.data.is_file() and not args.quick:
            import anndata

            adata, result["preset_data"] = anndata.read_h5ad(args.data), args.data.name
        else:
            from training_throughput import _synthetic

            adata, result["preset_data"] = _synthetic(1500), "synthetic (--quick or real data not found)"
        split = pseudo_spatial_split(adata, seed=0)
        for device in devices:
            for precision in args.precisions:
                row = preset_run(split, device, precision, args.preset_epochs, ensemble)
                result["preset"].append(row)
                print(f"preset   {device:>4} {precision}: {row['fit_wall_s']} s wall, {row['member_rows_per_s']:,} member-rows/s, "
                      f"mean Pearson {row['mean_pearson']}", flush=True)
    if "citeseq" in args.parts:
        data = citeseq_data(args.cells, args.genes, args.proteins)
        for device in devices:
            for precision in args.precisions:
                row = citeseq_run(data, device, precision, args.citeseq_epochs)
                result["citeseq"].append(row)
                print(f"citeseq  {device:>4} {precision}: {row['rows_per_s']:,} rows/s ({row['wall_s']} s)", flush=True)
    for part in ("preset", "citeseq"):
        key = "member_rows_per_s" if part == "preset" else "rows_per_s"
        cpu = next((r[key] for r in result[part] if r["device"] == "cpu" and r["precision"] == "fp32"), None)
        gpu = next((r[key] for r in result[part] if r["device"] == "cuda" and r["precision"] == "fp32"), None)
        if cpu and gpu:
            result[f"{part}_cuda_vs_cpu"] = round(gpu / cpu, 2)
    if args.out is not None or not args.quick:
        write_result("training_device_quick" if args.quick else "training_device", result, *([args.out] if args.out else []))
    return result


if __name__ == "__main__":
    main()
