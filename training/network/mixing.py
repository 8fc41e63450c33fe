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
"""

from __future__ import annotations

import torch

KERNEL_WIDTHS = (1.0, 0.25, 1 / 16)  # kernel widths as fractions of the median squared distance


def mixing_penalty(z_c: torch.Tensor, covariate: torch.Tensor, resp: torch.Tensor, n_covariates: int) -> torch.Tensor:
    """Per-type MMD^2 between each batch and the pooled cells: [..., n, d] latent -> [...] penalty.

    ``covariate`` [..., n] (indices < n_covariates), ``resp`` [..., n, types] (rows sum to 1).
    Leading dimensions (stacked ensemble members) are kept apart. Zero when one batch is present.
    """
    d2 = torch.cdist(z_c, z_c).pow(2)
    width = d2.detach().flatten(-2).median(-1).values.clamp_min(1e-6)[..., None, None]
    # Several widths: the median distance is mostly between types; within a type cells are closer.
    kernel = sum(torch.exp(-d2 / (width * f)) for f in KERNEL_WIDTHS)
    resp = resp.detach()
    onehot = torch.nn.functional.one_hot(covariate, n_covariates).to(z_c.dtype)  # [..., n, B]
    mass_t = resp.sum(-2)  # [..., T]
    pooled = resp / mass_t.clamp_min(1e-6)[..., None, :]  # [..., n, T]
    per = resp[..., :, :, None] * onehot[..., :, None, :]  # [..., n, T, B]
    mass_tb = per.sum(-3)  # [..., T, B]
    per = per / mass_tb.clamp_min(1e-6)[..., None, :, :]
    diff = (per - pooled[..., None]).flatten(-2)  # [..., n, T*B]
    present = (mass_tb > 0.5).flatten(-2).to(z_c.dtype)  # a (type, batch) with about one cell or more
    mmd = ((kernel @ diff) * diff).sum(-2)  # [..., T*B]
    share = (mass_tb / mass_tb.sum((-1, -2), keepdim=True).clamp_min(1e-6)).flatten(-2)
    return (mmd * present * share).sum(-1)
