"""Figures a person would rather look at than read: imputed vs measured (the loss curves are
training/fitting/loss_plot.py, an SVG drawn without matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(figsize: tuple[float, float]):
    """A figure drawn by the Agg backend, without pyplot: pyplot's import (its state machine and
    every backend's registry) is about half of matplotlib's ~0.35 s import."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def imputed_vs_measured(pred: np.ndarray, truth: np.ndarray, genes: list[str], r_ours: np.ndarray, r_other: np.ndarray | None, path: str | Path, other_name: str = "kNN") -> Path:
    """Scatter of imputed vs measured for the best and worst genes, and per-gene r ours vs another method."""
    order = np.argsort(np.nan_to_num(r_ours, nan=-1))
    picks = [("best", order[-1]), ("second best", order[-2]), ("worst", order[0])]
    n_panels = len(picks) + (r_other is not None)
    fig = _figure((3.3 * n_panels, 3.2))
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
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
    return Path(path)
