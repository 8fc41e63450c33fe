"""Figures a person would rather look at than read: loss curves, imputed vs measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(history: dict[str, list[float]], path: str | Path, title: str = "") -> Path:
    """One panel per loss term against the epoch, validation overlaid on the total."""
    plt = _pyplot()
    terms = [t for t in ("total", "reconstruction", "kl", "label", "categorical") if any(v != 0 for v in history.get(t, []))]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms):
        epochs = np.arange(1, len(history[term]) + 1)
        ax.plot(epochs, history[term], label="training")
        if term == "total" and history.get("validation"):
            ax.plot(epochs[: len(history["validation"])], history["validation"], label="validation")
            ax.legend(fontsize=7)
        ax.set_title(term, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def imputed_vs_measured(pred: np.ndarray, truth: np.ndarray, genes: list[str], r_ours: np.ndarray, r_other: np.ndarray | None, path: str | Path, other_name: str = "kNN") -> Path:
    """Scatter of imputed vs measured for the best and worst genes, and per-gene r ours vs another method."""
    plt = _pyplot()
    order = np.argsort(np.nan_to_num(r_ours, nan=-1))
    picks = [("best", order[-1]), ("second best", order[-2]), ("worst", order[0])]
    n_panels = len(picks) + (r_other is not None)
    fig, axes = plt.subplots(1, n_panels, figsize=(3.3 * n_panels, 3.2))
    for ax, (what, j) in zip(axes, picks):
        ax.scatter(truth[:, j], pred[:, j], s=2, alpha=0.3, rasterized=True)
        ax.set_title(f"{what}: {genes[j]} (r={r_ours[j]:.2f})", fontsize=9)
        ax.set_xlabel("measured", fontsize=8)
        ax.set_ylabel("imputed", fontsize=8)
    if r_other is not None:
        ax = axes[-1]
        ax.scatter(r_other, r_ours, s=12)
        lo = float(np.nanmin([np.nanmin(r_other), np.nanmin(r_ours), 0]))
        ax.plot([lo, 1], [lo, 1], "k--", lw=0.8)
        ax.set_xlabel(f"Pearson r, {other_name}", fontsize=8)
        ax.set_ylabel("Pearson r, inClust+", fontsize=8)
        ax.set_title("per-gene correlation", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
