"""An optional batch-mixing penalty on the covariate-corrected latent z_c = mu - e_b (issue 15).

inClust+ removes a covariate by vector arithmetic only: a batch is one offset e_b in the latent
space. When the batch effect is non-linear, the decoder of z_c + e_b cannot undo it with a shift,
so the encoder keeps some batch information in z_c and cells still sit next to their own batch.
This term (weight ``LossConfig.mixing``, 0 = the paper's loss, so off by default) asks that,
within each cell type, every batch's cells in a training batch are distributed in z_c like the
type's cells of all batches: a kernel two-sample distance (MMD, Gaussian kernel with the median
distance and two smaller ones as its widths) per (type, batch). Types come from the prior responsibilities (the label
where known, the classifier elsewhere; detached, so the classifier cannot lower it by mislabelling),
which keeps types apart: only the batches within a type are pulled together, whatever the types'
proportions in each batch. The correction itself stays z - e_b; nothing is added at inference.

Kernel widths (``LossConfig.mixing_kernel``): "median" scales them by the median squared distance of the
training batch, mostly a distance between types. With a KL weight near 1 or above the types are compact,
and those widths no longer see the batches apart within a type. "per_type" keeps the median kernel (it
pulls a batch's misplaced cells from afar) and adds kernels at 1, 1/4 and 1/16 of each type's own mean
squared distance between its cells: a Gibbs kernel, whose width for a pair is the mean of its two cells'
type widths (responsibility-weighted), so it stays one n x n matrix and positive definite
(benchmarks/results/integration_contenders.md).
"""

from __future__ import annotations

import torch

KERNEL_WIDTHS = (1.0, 0.25, 1 / 16)  # kernel widths as fractions of the median squared distance


def _median_kernel(d2: torch.Tensor, fractions) -> torch.Tensor:
    width = d2.detach().flatten(-2).median(-1).values.clamp_min(1e-6)[..., None, None]
    return sum(torch.exp(-d2 / (width * f)) for f in fractions)


def _per_type_kernel(d2: torch.Tensor, resp: torch.Tensor, dim: int) -> torch.Tensor:
    """The median kernel plus a Gibbs kernel whose widths follow each cell's type (module docstring)."""
    r_t = resp.transpose(-1, -2)  # [..., T, n]
    pairs = ((r_t @ d2.detach()) * r_t).sum(-1)  # [..., T]: sum over pairs of a type of their squared distance
    count = r_t.sum(-1).pow(2) - r_t.pow(2).sum(-1)  # the type's pairs of distinct cells
    w_cell = resp @ (pairs / count.clamp_min(1e-6)).clamp_min(1e-6)[..., None]  # [..., n, 1]
    w_pair = (w_cell + w_cell.transpose(-1, -2)) / 2
    scale = (torch.sqrt(w_cell * w_cell.transpose(-1, -2)) / w_pair).pow(dim / 2)  # keeps the kernel positive definite
    return _median_kernel(d2, (1.0,)) + scale * sum(torch.exp(-d2 / (w_pair * f)) for f in KERNEL_WIDTHS)


def mixing_penalty(z_c: torch.Tensor, covariate: torch.Tensor, resp: torch.Tensor, n_covariates: int, kernel: str = "median") -> torch.Tensor:
    """Per-type MMD^2 between each batch and the pooled cells: [..., n, d] latent -> [...] penalty.

    ``covariate`` [..., n] (indices < n_covariates), ``resp`` [..., n, types] (rows sum to 1); ``kernel``:
    "median" or "per_type" (LossConfig.mixing_kernel). Leading dimensions (stacked ensemble members) are
    kept apart. Zero when one batch is present.
    """
    d2 = torch.cdist(z_c, z_c).pow(2)
    resp = resp.detach()
    if kernel == "median":  # several widths: the median distance is mostly between types; within a type cells are closer
        gram = _median_kernel(d2, KERNEL_WIDTHS)
    elif kernel == "per_type":
        gram = _per_type_kernel(d2, resp, z_c.shape[-1])
    else:
        raise ValueError(f"unknown mixing kernel {kernel!r} (median or per_type)")
    onehot = torch.nn.functional.one_hot(covariate, n_covariates).to(z_c.dtype)  # [..., n, B]
    mass_t = resp.sum(-2)  # [..., T]
    pooled = resp / mass_t.clamp_min(1e-6)[..., None, :]  # [..., n, T]
    per = resp[..., :, :, None] * onehot[..., :, None, :]  # [..., n, T, B]
    mass_tb = per.sum(-3)  # [..., T, B]
    per = per / mass_tb.clamp_min(1e-6)[..., None, :, :]
    diff = (per - pooled[..., None]).flatten(-2)  # [..., n, T*B]
    present = (mass_tb > 0.5).flatten(-2).to(z_c.dtype)  # a (type, batch) with about one cell or more
    mmd = ((gram @ diff) * diff).sum(-2)  # [..., T*B]
    share = (mass_tb / mass_tb.sum((-1, -2), keepdim=True).clamp_min(1e-6)).flatten(-2)
    return (mmd * present * share).sum(-1)
