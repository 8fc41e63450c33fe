"""K inClust+ networks trained as one: every member's weights stacked along a leading axis.

An ensemble's members must each learn exactly what they would alone: their own initial weights,
their own batches, their own noise, their own likelihood. Stacking their parameters ([K, out, in]
weights, [K, 1, out] biases) makes every layer one batched matrix product over the K members'
own batches ([K, batch, in]), so one forward and one backward pass train all of them. The summed
loss has a separate term per member and no parameter is shared, so no gradient mixes between
members; Adam updates every element on its own, so one optimizer over the stacked tensors equals K
optimizers. After training the members are unstacked into K :class:`InClustModule` s and merged
as before (training/ensemble.py).

The loss is the one of :meth:`InClustModule.loss`, computed per member. The KL term uses the
expansion |c - m_k|^2 = |c|^2 - 2 c.m_k + |m_k|^2 (c = mu - e_b) so that it is a matrix product
instead of a [batch, types, latent] tensor: the same value, several times cheaper on a CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from .mixing import mixing_penalty
from . import activations
from .module import L2_EPS, InClustModule, ModuleConfig

TERMS = ("total", "reconstruction", "kl", "categorical", "label", "mixing")


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
        return module.state_dict()

    def members(self) -> list[InClustModule]:
        out = []
        for k in range(self.k):
            module = InClustModule(self.config)
            module.load_state_dict(self.member_state(k))
            out.append(module.eval())
        return out

    def loss(self, x, input_mask, output_mask, covariate, label, noise, weights, bernoulli, unsupervised: bool) -> torch.Tensor:
        """Loss terms [len(TERMS), K], each averaged over member k's batch.

        ``x`` and the masks are [K, n, features], ``covariate``/``label`` [K, n] (label -1: unlabeled),
        ``noise`` [K, n, latent] (None: decode the posterior mean), ``weights`` a LossConfig,
        ``bernoulli`` a [K] bool tensor (member k's likelihood) or a Python bool shared by all.
        """
        k, n = x.shape[0], x.shape[1]
        ar = torch.arange(k, device=x.device)[:, None]
        h = x * input_mask
        if self.config.input_normalization == "l2":
            h = h / h.norm(dim=-1, keepdim=True).clamp_min(L2_EPS)
        for i in range(self.n_encoder):
            h = self.activation(self._layer(i, h))
        e = self.n_encoder
        mu, log_var = self._layer(e, h).float(), self._layer(e + 1, h).float()
        e_b = self.covariate_embedding[ar, covariate]
        z = mu if noise is None else mu + torch.exp(0.5 * log_var) * noise
        h = z
        n_dec = len(self.config.decoder_hidden)
        for i in range(e + 3, e + 3 + n_dec):
            h = self.activation(self._layer(i, h))
        logits = self._layer(e + 3 + n_dec, h).float()
        rec = self._reconstruction(logits, x, output_mask, bernoulli)

        c = mu - e_b
        log_q = torch.log_softmax(self._layer(e + 2, c).float(), dim=-1)
        q = log_q.exp()
        labeled = label >= 0
        safe_label = label.clamp(min=0)
        resp = torch.where(labeled[..., None], nn.functional.one_hot(safe_label, q.shape[-1]).to(q.dtype), q)
        # KL(N(mu, s^2) || N(m_t + e_b, I)) for every type t, with |c - m_t|^2 expanded (module docstring)
        m = self.prior_means
        sq = (c * c).sum(-1, keepdim=True) - 2 * torch.bmm(c, m.transpose(1, 2)) + (m * m).sum(-1)[:, None, :]
        kl_t = -0.5 * ((1 + log_var - log_var.exp()).sum(-1, keepdim=True) - sq)
        kl = (resp * kl_t).sum(-1)
        cat = (q * log_q).sum(-1).mean(-1) if unsupervised else x.new_zeros(k)
        ce = -(log_q.gather(-1, safe_label[..., None]).squeeze(-1) * labeled).sum(-1) / n
        rec, kl = rec.mean(-1), kl.mean(-1)
        mix = mixing_penalty(c, covariate, resp, self.config.n_covariates) if weights.mixing else x.new_zeros(k)
        total = weights.reconstruction * rec + weights.kl * kl + weights.categorical * cat + weights.label * ce + weights.mixing * mix
        return torch.stack([total, rec, kl, cat, ce, mix])

    def _reconstruction(self, logits, x, output_mask, bernoulli) -> torch.Tensor:
        """Per row: Gaussian 0.5 * sum (x - x_hat)^2 or Bernoulli cross-entropy, over the output mask."""
        def gaussian():
            return 0.5 * ((x - self.output_activation(logits)) ** 2 * output_mask).sum(-1)

        def cross_entropy():
            return (nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none") * output_mask).sum(-1)

        if isinstance(bernoulli, bool):
            return cross_entropy() if bernoulli else gaussian()
        return torch.where(bernoulli[:, None], cross_entropy(), gaussian())
