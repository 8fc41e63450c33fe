"""A stacked network's parameters, gradients and Adam moments in single flat buffers.

Why: the hand-written step (training/fast_step/manual_step.py) has ~20 parameter tensors, and on a CPU the
fixed cost of an op (~2-15 us of dispatch) matters as much as its arithmetic at inClust+'s size.
With every parameter a view of one buffer, Adam is one fused kernel over one tensor instead of one
per parameter, gradients are written in place into their views (``out=``) instead of allocated,
and the mu and log-variance heads are one [K, 2 * latent, hidden] block, so their forward and
backward are one product with no concatenation. Adam updates every element on its own, so one
call over the flat buffer computes what one call per parameter does.

The parameters stay ``nn.Parameter`` s of the :class:`~inclust_plus.training.network.stacked.StackedNetworks` (their ``.data``
becomes the view, their ``.grad`` the gradient view): the autograd path, validation and unstacking
the members read them as before.
"""

from __future__ import annotations

import math

import torch

from inclust_plus.training.fitting.optim import fused_adam


class FlatParameters:
    """Parameters of ``net`` moved into one flat buffer, with a gradient buffer of the same layout."""

    def __init__(self, net):
        e = net.n_encoder
        W, B = list(net.weights), list(net.biases)
        k, latent = net.k, net.config.latent_dim
        blocks: list[tuple[tuple[int, ...], list[tuple[torch.nn.Parameter, tuple]]]] = []
        whole = (slice(None),)
        heads_at = 0  # where the heads' weight block is in ``blocks`` (its bias block follows)
        for i, (w, b) in enumerate(zip(W, B)):
            if i == e + 1:
                continue  # the log-variance head lives in the mu head's block
            if i == e:  # [K, 2L, H]: mu rows first, then log-variance rows
                hidden, heads_at = w.shape[2], len(blocks)
                blocks.append(((k, 2 * latent, hidden), [(w, (slice(None), slice(0, latent))), (W[e + 1], (slice(None), slice(latent, None)))]))
                blocks.append(((k, 1, 2 * latent), [(b, (slice(None), slice(None), slice(0, latent))),
                                                    (B[e + 1], (slice(None), slice(None), slice(latent, None)))]))
            else:
                blocks.append((tuple(w.shape), [(w, whole)]))
                blocks.append((tuple(b.shape), [(b, whole)]))
        blocks.append((tuple(net.covariate_embedding.shape), [(net.covariate_embedding, whole)]))
        blocks.append((tuple(net.prior_means.shape), [(net.prior_means, whole)]))

        total = sum(math.prod(shape) for shape, _ in blocks)
        device = net.prior_means.device
        self.data = torch.empty(total, device=device)
        self.grad = torch.zeros(total, device=device)
        self.exp_avg = torch.zeros(total, device=device)
        self.exp_avg_sq = torch.zeros(total, device=device)
        self.steps = torch.zeros((), device=device)
        views: list[tuple[torch.Tensor, torch.Tensor]] = []  # (data block, gradient block) per block
        offset = 0
        with torch.no_grad():
            for shape, members in blocks:
                size = math.prod(shape)
                data, grad = self.data[offset : offset + size].view(shape), self.grad[offset : offset + size].view(shape)
                for p, index in members:
                    data[index].copy_(p.detach())
                    p.data = data[index]
                    p.grad = grad[index]
                views.append((data, grad))
                offset += size
        self.heads, self.heads_bias = views[heads_at], views[heads_at + 1]  # (block, gradient) of the weights [K, 2L, H] and biases

    @torch.no_grad()
    def adam_step(self, lr: float) -> None:
        """One Adam step (betas 0.9/0.999, eps 1e-8, no weight decay: training/fitting/optim.py) over every parameter."""
        self.steps += 1
        fused_adam([self.data], [self.grad], [self.exp_avg], [self.exp_avg_sq], [self.steps], lr)
