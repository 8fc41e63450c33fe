"""One training step's loss terms and gradients written out by hand: no autograd graph.

Why: the inClust+ network is small (a few [500, 200] matrix products per step), so on a CPU most
of a step was autograd bookkeeping, not arithmetic: recording ~80 graph nodes, the select/unsqueeze
backward copies of the stacked layers, zero-filled gradient buffers and the many small elementwise
ops of the KL term's backward. Here the forward pass keeps what the backward needs and the gradient
of every parameter is one or two matrix products or reductions, assigned to ``p.grad`` directly
(the optimizer then steps as before). Products that share an input are one product (the mu and
log-variance heads; the classifier and the KL term's cross term z_c . m_t). The loss terms are those
of :meth:`StackedNetworks.loss` and the gradients autograd's, to float rounding
(tests/test_training_manual_step.py).

Covered: every activation, both likelihoods (and a mix across members), the l2 input
normalization, supervised and unsupervised labels, K stacked members, fp32. Anything else (the
mixing penalty, autocast) takes the autograd path (:func:`supported`).
"""

from __future__ import annotations

import torch
from torch import nn

from .module import L2_EPS
from .stacked import _apply

_ACT = {
    "relu": (torch.relu_, lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)),
    "tanh": (torch.tanh_, lambda grad, out: torch.ops.aten.tanh_backward(grad, out)),
    "sigmoid": (torch.sigmoid_, lambda grad, out: torch.ops.aten.sigmoid_backward(grad, out)),
    "identity": (lambda h: h, lambda grad, out: grad),
}
_OUT = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda h: h}  # not in place: logits are kept


def supported(net, weights, precision: str) -> bool:
    """Whether this step computes exactly what autograd would for ``net`` with these settings."""
    c = net.config
    return (precision == "fp32" and not weights.mixing and c.activation in _ACT and c.output_activation in _ACT
            and c.input_normalization in ("none", "l2"))


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[K, n, p] @ [K, p, q] per member."""
    if a.shape[0] == 1:
        return torch.mm(a[0], b[0]).unsqueeze(0)
    return torch.bmm(a, b)


def _mm_tn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^T b per member: [K, n, p], [K, n, q] -> [K, p, q] (a weight's gradient)."""
    if a.shape[0] == 1:
        return torch.mm(a[0].t(), b[0]).unsqueeze(0)
    return torch.bmm(a.transpose(1, 2), b)


def _reconstruction(net, logits, x, out_mask, bernoulli, scale):
    """Per-row reconstruction loss [K, n] and its gradient w.r.t. the logits (times ``scale``)."""
    out_act, out_back = _OUT[net.config.output_activation], _ACT[net.config.output_activation][1]

    def gaussian():
        y = out_act(logits)
        d = y - x
        dm = d * out_mask
        return 0.5 * (dm * d).sum(-1), out_back(dm * scale, y)

    def cross_entropy():
        bce = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return (bce * out_mask).sum(-1), (torch.sigmoid(logits) - x) * (out_mask * scale)

    if isinstance(bernoulli, bool):
        return cross_entropy() if bernoulli else gaussian()
    (rb, gb), (rg, gg) = cross_entropy(), gaussian()
    return torch.where(bernoulli[:, None], rb, rg), torch.where(bernoulli[:, None, None], gb, gg)


def label_rows(label: torch.Tensor, n_labels: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's one-hot label (all zero where unlabeled, label -1) and 1.0 where unlabeled [..., 1]."""
    labeled = label >= 0
    one_hot = nn.functional.one_hot(label.clamp(min=0), n_labels).to(dtype) * labeled[..., None]
    return one_hot, (~labeled)[..., None].to(dtype)


@torch.no_grad()
def loss_and_grads(net, x, input_mask, output_mask, covariate, label, noise, weights, bernoulli, unsupervised: bool,
                   label_tables=None) -> torch.Tensor:
    """Loss terms [len(TERMS), K] of :meth:`StackedNetworks.loss` for a training step (``noise``
    given); sets ``p.grad`` of every parameter of ``net`` to the gradient of their sum.
    ``label_tables``: :func:`label_rows` of ``label``, if the caller has them already."""
    c = net.config
    act, act_back = _ACT[c.activation]
    W, B = list(net.weights), list(net.biases)
    k, n = x.shape[0], x.shape[1]
    e, n_dec = net.n_encoder, len(c.decoder_hidden)
    n_cov = net.covariate_embedding.shape[1]
    cov_rows = covariate.reshape(-1) if k == 1 else (covariate + n_cov * torch.arange(k, device=x.device)[:, None]).reshape(-1)

    # --- forward (StackedNetworks.loss, keeping what the backward needs)
    h = x * input_mask
    if c.input_normalization == "l2":
        h = h / h.norm(dim=-1, keepdim=True).clamp_min(L2_EPS)
    hs = [h]
    for i in range(e):
        hs.append(act(_apply(hs[-1], W[i], B[i])))
    latent = c.latent_dim
    heads_w, heads_b = torch.cat([W[e], W[e + 1]], 1), torch.cat([B[e], B[e + 1]], -1)  # mu and log-variance: one product
    heads = _apply(hs[-1], heads_w, heads_b)
    mu, log_var = heads[..., :latent], heads[..., latent:]
    e_b = net.covariate_embedding.view(k * n_cov, -1).index_select(0, cov_rows).view(k, n, -1)
    std = torch.exp(0.5 * log_var)
    gs = [mu + std * noise]
    for j in range(n_dec):
        gs.append(act(_apply(gs[-1], W[e + 3 + j], B[e + 3 + j])))
    logits = _apply(gs[-1], W[-1], B[-1])
    rec_row, d_logits = _reconstruction(net, logits, x, output_mask, bernoulli, weights.reconstruction / n)

    z_c = mu - e_b
    n_labels = W[e + 2].shape[1]
    if label_tables is None:
        label_tables = label_rows(label, n_labels, x.dtype)
    one_hot, unlabeled = label_tables
    # The classifier and the prior's cross term z_c . m_t in one product: [classifier; -m] with the
    # bias [b; |m_t|^2 / 2]. KL(N(mu, s^2) || N(m_t + e_b, I)) = cross_t + col, with
    # cross_t = |m_t|^2 / 2 - z_c . m_t and col = (|z_c|^2 - sum(1 + log s^2 - s^2)) / 2.
    m = net.prior_means
    cls_w = torch.cat([W[e + 2], -m], 1)
    cls_b = torch.cat([B[e + 2], 0.5 * (m * m).sum(-1)[:, None, :]], -1)
    scores = _apply(z_c, cls_w, cls_b)
    log_q = torch.log_softmax(scores[..., :n_labels], dim=-1)
    q = log_q.exp()
    resp = one_hot + q * unlabeled  # prior responsibilities: the label where known, the classifier elsewhere
    var = log_var.exp()
    col = 0.5 * ((z_c * z_c - log_var + var).sum(-1, keepdim=True) - latent)
    kl_t = scores[..., n_labels:] + col
    kl = (resp * kl_t).sum(-1)
    cat = (q * log_q).sum(-1).mean(-1) if unsupervised else x.new_zeros(k)
    ce = -(log_q * one_hot).sum(-1).sum(-1) / n
    rec, kl = rec_row.mean(-1), kl.mean(-1)
    total = weights.reconstruction * rec + weights.kl * kl + weights.categorical * cat + weights.label * ce
    terms = torch.stack([total, rec, kl, cat, ce, x.new_zeros(k)])

    # --- backward
    dw: list[torch.Tensor | None] = [None] * len(W)
    db: list[torch.Tensor | None] = [None] * len(W)

    def linear_back(i, d_out, h_in, need_input=True):
        dw[i], db[i] = _mm_tn(d_out, h_in), d_out.sum(1, keepdim=True)
        return _mm(d_out, W[i]) if need_input else None

    d = linear_back(len(W) - 1, d_logits, gs[-1])  # decoder, output layer first
    for j in reversed(range(n_dec)):
        d = linear_back(e + 3 + j, act_back(d, gs[j + 1]), gs[j])
    d_z = d

    r = (weights.kl / n) * resp  # d total / d kl_t
    r_rows = r.sum(-1, keepdim=True)
    g = (weights.kl / n) * kl_t * unlabeled * q  # d total / d log_q: resp = q = exp(log_q) where unlabeled
    if unsupervised and weights.categorical:
        g = g + (weights.categorical / n) * (q * log_q + q)
    if weights.label:
        g = g - (weights.label / n) * one_hot
    d_s = g - q * g.sum(-1, keepdim=True)  # through log_softmax
    d_scores = torch.cat([d_s, r], -1)
    d_cls_w = _mm_tn(d_scores, z_c)
    dw[e + 2], db[e + 2] = d_cls_w[:, :n_labels].contiguous(), d_s.sum(1, keepdim=True)
    d_prior = m * r.sum(1)[..., None] - d_cls_w[:, n_labels:]
    d_zc = _mm(d_scores, cls_w) + z_c * r_rows

    d_emb = torch.zeros_like(net.covariate_embedding)
    d_emb.view(k * n_cov, -1).index_add_(0, cov_rows, d_zc.reshape(k * n, -1), alpha=-1)
    d_mu = d_z + d_zc
    d_log_var = d_z * noise * std * 0.5 + 0.5 * r_rows * (var - 1)
    d_heads = torch.cat([d_mu, d_log_var], -1)
    d_heads_w = _mm_tn(d_heads, hs[-1])
    dw[e], dw[e + 1] = d_heads_w[:, :latent].contiguous(), d_heads_w[:, latent:].contiguous()
    d_heads_b = d_heads.sum(1, keepdim=True)
    db[e], db[e + 1] = d_heads_b[..., :latent].contiguous(), d_heads_b[..., latent:].contiguous()
    d_h = _mm(d_heads, heads_w) if e > 0 else None
    for i in reversed(range(e)):
        d_h = linear_back(i, act_back(d_h, hs[i + 1]), hs[i], i > 0)

    for p, grad in zip(net.weights, dw):
        p.grad = grad
    for p, grad in zip(net.biases, db):
        p.grad = grad
    net.covariate_embedding.grad = d_emb
    net.prior_means.grad = d_prior
    return terms
