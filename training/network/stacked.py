"""K inClust+ networks trained as one: every member's weights stacked along a leading axis.

An ensemble's members must each learn exactly what they would alone: their own initial weights,
their own batches, their own noise, their own likelihood. Stacking their parameters ([K, out, in]
weights, [K, 1, out] biases) makes every layer one batched matrix product over the K members'
own batches ([K, batch, in]), so one forward and one backward pass train all of them. The summed
loss has a separate term per member and no parameter is shared, so no gradient mixes between
members; Adam updates every element on its own, so one optimizer over the stacked tensors equals K
optimizers. After training the members are unstacked into K :class:`InClustModule` s and merged
as before (training/network/ensemble.py).

The forward pass and loss are those of one network (training/network/loss.py, which :meth:`InClustModule.loss`
runs too): this class offers the same pieces (``encoder``, ``z_mean``, ... ``embedding_rows``) on
[K, n, ...] tensors, and the loss's functions are written for any leading axes.
"""

from __future__ import annotations

import torch
from torch import nn

from inclust_plus.training.network import activations
from inclust_plus.training.network.loss import loss_terms
from inclust_plus.training.network import correction
from inclust_plus.training.network.module import InClustModule, ModuleConfig


def _linears(module: InClustModule) -> list[nn.Linear]:
    """The member's dense layers in the order :class:`StackedNetworks` stores them."""
    enc = [m for m in module.encoder if isinstance(m, nn.Linear)]
    dec = [m for m in module.decoder if isinstance(m, nn.Linear)]
    return [*enc, module.z_mean, module.z_log_var, module.classifier, *dec, module.output]


def _apply(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Member k's layer on member k's rows: [K, n, in] -> [K, n, out]."""
    if weight.shape[0] == 1:  # one network: a plain addmm is a little cheaper than a batched one
        return torch.addmm(bias[0], h[0], weight[0].t()).unsqueeze(0)
    return torch.baddbmm(bias, h, weight.transpose(1, 2))


class StackedNetworks(nn.Module):
    """K members of one :class:`ModuleConfig` (members = 1 each), trainable side by side."""

    def __init__(self, members: list[InClustModule]):
        super().__init__()
        if not members or any(m.config != members[0].config for m in members) or members[0].config.members != 1:
            raise ValueError("stacked training needs single networks of one architecture")
        self.config: ModuleConfig = members[0].config
        c = self.config
        self.k = len(members)
        layers = list(zip(*[_linears(m) for m in members]))
        self.weights = nn.ParameterList([torch.stack([l.weight.detach() for l in ls]).clone() for ls in layers])
        self.biases = nn.ParameterList([torch.stack([l.bias.detach() for l in ls])[:, None, :].clone() for ls in layers])
        self.covariate_embedding = nn.Parameter(torch.stack([m.covariate_embedding.detach() for m in members]).clone())
        self.prior_means = nn.Parameter(torch.stack([m.prior_means.detach() for m in members]).clone())
        self.n_encoder = len(c.encoder_hidden)
        if c.input_correction != "none":  # fitted from the data, the same for every member
            for name in correction.BUFFERS:
                self.register_buffer(name, getattr(members[0], name).detach().clone())
        self.activation = activations.module(c.activation)
        self.output_activation = activations.module(c.output_activation)

    def _layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return _apply(h, self.weights[i], self.biases[i])

    @torch.no_grad()
    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights as an :class:`InClustModule` state dict (on the CPU)."""
        module = InClustModule(self.config)
        for layer, w, b in zip(_linears(module), self.weights, self.biases):
            layer.weight.copy_(w[k])
            layer.bias.copy_(b[k, 0])
        module.covariate_embedding.copy_(self.covariate_embedding[k])
        module.prior_means.copy_(self.prior_means[k])
        if self.config.input_correction != "none":
            for name in correction.BUFFERS:
                getattr(module, name).copy_(getattr(self, name))
        return module.state_dict()

    def members(self) -> list[InClustModule]:
        out = []
        for k in range(self.k):
            module = InClustModule(self.config)
            module.load_state_dict(self.member_state(k))
            out.append(module.eval())
        return out

    # --- the pieces of training/network/loss.py, member k's layer on member k's rows ---------------------
    def encoder(self, h: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_encoder):
            h = self.activation(self._layer(i, h))
        return h

    def z_mean(self, h: torch.Tensor) -> torch.Tensor:
        return self._layer(self.n_encoder, h)

    def z_log_var(self, h: torch.Tensor) -> torch.Tensor:
        return self._layer(self.n_encoder + 1, h)

    def classifier(self, z_c: torch.Tensor) -> torch.Tensor:
        return self._layer(self.n_encoder + 2, z_c)

    def decoder(self, h: torch.Tensor) -> torch.Tensor:
        first = self.n_encoder + 3
        for i in range(first, first + len(self.config.decoder_hidden)):
            h = self.activation(self._layer(i, h))
        return h

    def output(self, h: torch.Tensor) -> torch.Tensor:
        return self._layer(len(self.weights) - 1, h)

    def embedding_rows(self, covariate: torch.Tensor) -> torch.Tensor:
        """Member k's embedding row of each of its rows: [K, n] -> [K, n, latent]."""
        return self.covariate_embedding[torch.arange(self.k, device=covariate.device)[:, None], covariate]

    def loss(self, x, input_mask, output_mask, covariate, label, noise, weights, bernoulli, unsupervised: bool) -> torch.Tensor:
        """Loss terms [len(TERMS), K], each averaged over member k's batch (training/network/loss.py).

        ``x`` and the masks are [K, n, features], ``covariate``/``label`` [K, n] (label -1: unlabeled),
        ``noise`` [K, n, latent] (None: decode the posterior mean), ``weights`` a LossConfig,
        ``bernoulli`` a [K] bool tensor (member k's likelihood) or a Python bool shared by all.
        """
        return loss_terms(self, x, input_mask, output_mask, covariate, label, noise, weights, bernoulli, unsupervised)
