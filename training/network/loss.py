"""The inClust+ forward pass and loss, defined once (autograd differentiates it).

One network (:class:`~.module.InClustModule`, tensors [n, ...]) and K networks trained side by side
(:class:`~.stacked.StackedNetworks`, tensors [K, n, ...]) run these same functions: both offer the
same pieces (``encoder``, ``z_mean``, ``z_log_var``, ``classifier``, ``decoder``, ``output``,
``output_activation``, ``embedding_rows``, ``prior_means``), and every term below is written for any
leading axes. Query mapping (training/mapping.py) optimises a part of the same loss with the same
term functions. The hand-written step (training/fast_step/manual_step.py) is a derivative of this definition,
held equal to it by tests and run only where it is (its allow-list).

Notation (BMC Bioinformatics 25:41, 2024):
    x_in  = x * input_mask                        (input mask module; optionally scaled to unit L2 norm)
            (with ``input_correction``: gain[b] * x_in ^ power[b] first, training/network/correction.py)
    mu, log s^2 = encoder(x_in)
    z_c   = mu - e_b                               (covariate removed by vector arithmetic)
    q(k|x) = softmax(classifier(z_c))
    loss  = w_rec * 0.5 * sum_f out_w * (x - x_hat(z))^2        (Gaussian; Bernoulli: cross-entropy)
            out_w = out_mask * (1 + (w_unseen - 1) * (1 - input_mask))   (w_unseen = 1: the paper's loss)
          + w_kl  * sum_k r_k KL(N(mu, s^2) || N(m_k + e_b, I))  (r: the label where known, else q)
          + w_cat * sum_k q log q   (unsupervised)   + w_label * CE(label, q)
          + w_mix * per-type MMD between batches of z_c (training/network/mixing.py; 0 by default)
with z = mu + s * noise in training (the posterior mean without noise).
"""

from __future__ import annotations

import torch
from torch import nn

from inclust_plus.training.network import correction
from inclust_plus.training.network.mixing import mixing_penalty

TERMS = ("total", "reconstruction", "kl", "categorical", "label", "mixing")
L2_EPS = 1e-6  # an all-zero cell stays all zero


def encoder_input(net, x: torch.Tensor, input_mask: torch.Tensor, covariate: torch.Tensor | None) -> torch.Tensor:
    """What the encoder's first layer reads: the masked features, through the input correction, at unit length.

    A net with an input correction (``input_gain``/``input_power`` tables, training/network/correction.py)
    maps each cell's values with its covariate's rows: ``covariate`` must then be given. With
    ``input_normalization = "l2"`` the input is divided by its per-cell L2 norm (over the measured features
    only, since masked ones are zero): the encoder sees a cell's expression profile, not its depth. (The
    hand-written step reads its first layer's input from here too: a fixed input, no gradient of its own.)"""
    h = x * input_mask
    gain = getattr(net, "input_gain", None)
    if gain is not None:
        if covariate is None:
            raise ValueError("a model with an input correction encodes a cell with its covariate's row: pass the covariate")
        h = correction.apply(h, gain[covariate], net.input_power[covariate])
    if net.config.input_normalization == "l2":
        h = h / h.norm(dim=-1, keepdim=True).clamp_min(L2_EPS)
    return h


def encode(net, x: torch.Tensor, input_mask: torch.Tensor, covariate: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance from the encoder's input (:func:`encoder_input`)."""
    h = net.encoder(encoder_input(net, x, input_mask, covariate))
    return net.z_mean(h).float(), net.z_log_var(h).float()  # (float: the terms in fp32 under autocast)


def output_weights(input_mask: torch.Tensor, output_mask: torch.Tensor, unseen: float) -> torch.Tensor:
    """The output mask with the features the row's input hides weighted ``unseen`` (``loss.unseen``).

    In an imputation reference row (input: the query's panel, output: every gene) the genes outside
    the panel are a few of the outputs, yet they are all the query will be asked for: with equal
    weights the decoder spends its capacity re-drawing the genes it was given (issue 24 measured
    mean per-gene Pearson 0.360 -> 0.379 on the held-back genes with weight 16; under a simulated
    technology shift of the query the decoder lost instead, 0.316 -> 0.295, until the input correction came
    in front of the encoder: the imputation task's default is 16 with it, 1 elsewhere)."""
    if unseen == 1:
        return output_mask
    return output_mask * (1 + (unseen - 1) * (1 - input_mask))


def reconstruction(logits, x, output_mask, output_activation, bernoulli) -> torch.Tensor:
    """Per row: Gaussian 0.5 * sum (x - x_hat)^2 or Bernoulli cross-entropy, over the output mask.
    ``bernoulli``: a bool, or a [K] bool tensor (member k's likelihood)."""
    def gaussian():
        return 0.5 * ((x - output_activation(logits)) ** 2 * output_mask).sum(-1)

    def cross_entropy():
        return (nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none") * output_mask).sum(-1)

    if isinstance(bernoulli, bool):
        return cross_entropy() if bernoulli else gaussian()
    return torch.where(bernoulli[:, None], cross_entropy(), gaussian())


def kl_per_type(z_c: torch.Tensor, log_var: torch.Tensor, prior_means: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, s^2) || N(m_t + e_b, I)) for every type t, [..., n, types]. With z_c = mu - e_b,
    |z_c - m_t|^2 is expanded to |z_c|^2 - 2 z_c.m_t + |m_t|^2: a matrix product instead of a
    [n, types, latent] tensor, the same value several times cheaper on a CPU."""
    m = prior_means
    sq = (z_c * z_c).sum(-1, keepdim=True) - 2 * (z_c @ m.transpose(-1, -2)) + (m * m).sum(-1).unsqueeze(-2)
    return -0.5 * ((1 + log_var - log_var.exp()).sum(-1, keepdim=True) - sq)


def posterior_terms(z_c, log_var, class_logits, prior_means, label: torch.Tensor | None, unsupervised: bool):
    """The KL, categorical and label terms (each the mean over rows, [...]) and the prior
    responsibilities [..., n, types]; ``label`` -1 (or None for all rows): unlabeled."""
    log_q = torch.log_softmax(class_logits.float(), dim=-1)
    q = log_q.exp()
    zeros = z_c.new_zeros(z_c.shape[:-2])
    if label is None:
        resp, ce = q, zeros
    else:
        labeled = label >= 0
        safe_label = label.clamp(min=0)
        resp = torch.where(labeled[..., None], nn.functional.one_hot(safe_label, q.shape[-1]).to(q.dtype), q)
        ce = -(log_q.gather(-1, safe_label[..., None]).squeeze(-1) * labeled).sum(-1) / label.shape[-1]
    kl = (resp * kl_per_type(z_c, log_var, prior_means)).sum(-1).mean(-1)
    cat = (q * log_q).sum(-1).mean(-1) if unsupervised else zeros
    return kl, cat, ce, resp


def loss_terms(net, x, input_mask, output_mask, covariate, label, noise, weights, bernoulli, unsupervised: bool) -> torch.Tensor:
    """The loss terms [len(TERMS), ...] of ``net`` (each the mean over a batch's rows).

    ``noise`` (shaped like mu) draws z = mu + s * noise; None decodes the posterior mean. ``weights``
    is a :class:`~inclust_plus.training.config.LossConfig`; ``label`` is -1 for unlabeled rows."""
    mu, log_var = encode(net, x, input_mask, covariate)
    z = mu if noise is None else mu + torch.exp(0.5 * log_var) * noise
    logits = net.output(net.decoder(z)).float()
    rec = reconstruction(logits, x, output_weights(input_mask, output_mask, weights.unseen), net.output_activation, bernoulli).mean(-1)
    z_c = mu - net.embedding_rows(covariate)
    kl, cat, ce, resp = posterior_terms(z_c, log_var, net.classifier(z_c), net.prior_means, label, unsupervised)
    mix = mixing_penalty(z_c, covariate, resp, net.config.n_covariates, weights.mixing_kernel) if weights.mixing else x.new_zeros(rec.shape)
    total = weights.reconstruction * rec + weights.kl * kl + weights.categorical * cat + weights.label * ce + weights.mixing * mix
    return torch.stack([total, rec, kl, cat, ce, mix])
