"""Tiny seeded checkpoints for export and runtime tests (no training: random weights).

The description follows docs/ARCHITECTURE.md: two modalities (rna, protein), a partial rna panel
named after its dataset (merfish), and a feature set whose columns interleave the two modalities
in scrambled order (exercises folding and preprocessing on non-contiguous columns).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from inclust_plus.training.checkpoint import save_checkpoint
from inclust_plus.training.network.ensemble import merge_members
from inclust_plus.training.network.module import InClustModule, ModuleConfig

N_RNA = 12
N_PROTEIN = 5
MERFISH = [0, 2, 3, 5, 7, 8]  # global indices of the partial rna panel
MIXED = [1, 12, 13, 4, 0, 14]  # rna and protein columns in scrambled order
COVARIATES = ["scrna", "merfish", "cite"]
LABELS = ["B", "T", "NK"]

COMBINATIONS = [
    {"name": "merfish_to_rna", "inputs": "merfish", "outputs": "rna", "default_target_covariate": "scrna"},
    {"name": "rna_to_protein", "inputs": "rna", "outputs": "protein", "default_target_covariate": "cite"},
    {"name": "protein_to_rna", "inputs": "protein", "outputs": "rna", "default_target_covariate": None},
    {"name": "rna_protein", "inputs": "rna_protein", "outputs": "rna_protein", "default_target_covariate": None},
    {"name": "mixed_to_merfish", "inputs": "mixed", "outputs": "merfish", "default_target_covariate": "merfish"},
    {"name": "merfish_embed", "inputs": "merfish", "outputs": None},
    {"name": "rna_protein_embed", "inputs": "rna_protein", "outputs": None},
]


def toy_description(name: str = "toy", seed: int = 0, preprocessing: bool = True) -> dict:
    """A hand-written description (everything but the ``module`` entry, which save_checkpoint adds)."""
    rng = np.random.default_rng(seed)
    rna = [f"gene{i:03d}" for i in range(N_RNA)]
    protein = [f"prot{i:03d}" for i in range(N_PROTEIN)]
    prep = {
        "rna": {"normalize_total": 1e4, "log1p": True, "scale": [float(v) for v in rng.uniform(2.0, 8.0, N_RNA)]},
        "protein": {"normalize_total": None, "log1p": True, "scale": None},
    }
    if not preprocessing:
        prep = {m: {"normalize_total": None, "log1p": False, "scale": None} for m in ("rna", "protein")}
    n = N_RNA + N_PROTEIN
    return {
        "name": name,
        "schema": {"modalities": [{"name": "rna", "features": rna}, {"name": "protein", "features": protein}]},
        "covariate": {"keys": ["dataset"], "categories": list(COVARIATES)},
        "labels": {"key": "cell_type", "categories": list(LABELS), "mode": "supervised"},
        "preprocessing": prep,
        "feature_sets": {
            "rna": {"modalities": ["rna"], "features": list(range(N_RNA))},
            "protein": {"modalities": ["protein"], "features": list(range(N_RNA, n))},
            "rna_protein": {"modalities": ["rna", "protein"], "features": list(range(n))},
            "merfish": {"modalities": ["rna"], "features": list(MERFISH)},
            "mixed": {"modalities": ["rna", "protein"], "features": list(MIXED)},
        },
        "combinations": [dict(c) for c in COMBINATIONS],
        "hyperparameters": {"seed": seed},
        "training": {"epochs": 0, "rows_per_second": 0.0, "history": {}},
    }


def toy_module(
    seed: int = 0,
    encoder_hidden: tuple[int, ...] = (16, 8),
    latent_dim: int = 4,
    decoder_hidden: tuple[int, ...] = (16,),
    activation: str = "relu",
    output_activation: str = "sigmoid",
    input_normalization: str = "none",
    members: int = 1,
) -> InClustModule:
    """Seeded random weights; biases and embeddings are made large enough to matter.

    ``members`` > 1: that many such networks (seeds seed, seed+1, ...) merged into one ensemble.
    """
    if members > 1:
        kwargs = dict(encoder_hidden=encoder_hidden, latent_dim=latent_dim, decoder_hidden=decoder_hidden, activation=activation,
                      output_activation=output_activation, input_normalization=input_normalization)
        return merge_members([toy_module(seed=seed + k, **kwargs) for k in range(members)])
    torch.manual_seed(seed)
    cfg = ModuleConfig(
        n_features=N_RNA + N_PROTEIN,
        n_covariates=len(COVARIATES),
        n_labels=len(LABELS),
        encoder_hidden=list(encoder_hidden),
        latent_dim=latent_dim,
        decoder_hidden=list(decoder_hidden),
        activation=activation,
        output_activation=output_activation,
        input_normalization=input_normalization,
    )
    module = InClustModule(cfg)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.eval()


def make_toy_checkpoint(path: str | Path, seed: int = 0, preprocessing: bool = True, name: str = "toy", **module_kwargs) -> Path:
    """Write a toy ``model.pt`` to ``path``; ``module_kwargs`` go to :func:`toy_module`."""
    module = toy_module(seed=seed, **module_kwargs)
    return save_checkpoint(path, module, toy_description(name=name, seed=seed, preprocessing=preprocessing))
