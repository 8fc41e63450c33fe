"""One training step's loss terms and gradients written out by hand: no autograd graph.

Why: the inClust+ network is small (a few [500, 200] matrix products per step), so on a CPU most
of a step was autograd bookkeeping, not arithmetic: recording ~80 graph nodes, the select/unsqueeze
backward copies of the stacked layers, zero-filled gradient buffers and the many small elementwise
ops of the KL term's backward. Here the forward pass keeps what the backward needs and the gradient
of every parameter is one or two matrix products or reductions, written in place into a flat
gradient buffer that one fused Adam call then steps (training/fast_step/flat_params.py). Products that share
an input are one product (the mu and log-variance heads; the classifier and the KL term's cross
term z_c . m_t). What is off the chain of dependencies (the next batch, the classifier/KL branch,
the reconstruction loss's value, the weight gradients) goes to a step worker, a second thread on a
CPU with a spare core (training/fast_step/step_worker.py), with the same result bit for bit. The loss terms
are those of :meth:`StackedNetworks.loss` and the gradients autograd's, to float rounding
(tests/test_training_manual_step.py).

It runs only where it is verified: :data:`COVERED` lists the settings it is held equal to autograd
on, and any other setting - a value not listed, or a config key the list does not name, such as a
loss term added later - trains with autograd on the one definition (training/network/loss.py).
``training.fast_step`` = "auto" (that), "off" (always autograd) or "on" (an error outside the list).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch
from torch import nn

from inclust_plus.errors import InclustError

from inclust_plus.training.fast_step.flat_params import FlatParameters
from inclust_plus.training.network.loss import encoder_input, output_weights
from inclust_plus.training.fast_step.step_worker import InlineWorker

_ACT = {
    "relu": (torch.relu_, lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)),
    "tanh": (torch.tanh_, lambda grad, out: torch.ops.aten.tanh_backward(grad, out)),
    "sigmoid": (torch.sigmoid_, lambda grad, out: torch.ops.aten.sigmoid_backward(grad, out)),
    "identity": (lambda h: h, lambda grad, out: grad),
}
_OUT = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda h: h}  # not in place: logits are kept


# The allow-list: tests/test_training_manual_step.py builds a case for every combination of these
# values and holds this step's loss terms and gradients equal to autograd's.
COVERED = {
    "model.activation": ("relu", "tanh", "sigmoid", "identity"),
    "model.output_activation": ("relu", "tanh", "sigmoid", "identity"),
    "model.input_normalization": ("none", "l2"),
    "model.input_correction": ("none", "moments"),
    "training.precision": ("fp32",),
    "training.device": ("cpu", "cuda"),  # (the cuda cases run where torch sees a GPU)
    "loss.mixing": (0.0,),
}
# Keys that may take any value, also covered by those cases: the network's shape (encoder and decoder
# of 0-2 layers, any widths, K stacked members), the weights of the terms this step computes, and
# the likelihood (Gaussian, Bernoulli, or a mix across members); labelled and unlabelled data.
ANY_VALUE = {
    "model": ("n_features", "n_covariates", "n_labels", "members", "encoder_hidden", "latent_dim", "decoder_hidden", "covariate_init_std"),
    "loss": ("reconstruction", "kl", "categorical", "label", "likelihood", "unseen",
             "mixing_kernel"),  # the mixing penalty's kernel: unused while loss.mixing is 0, which COVERED requires
}


def uncovered(shape, loss, precision: str, device: str) -> str | None:
    """The first setting of a network of ``shape`` (a ModuleConfig) trained with ``loss`` (a
    LossConfig) that this step is not verified on, as ``key = value``; None: all are."""
    values = {"model.activation": shape.activation, "model.output_activation": shape.output_activation,
              "model.input_normalization": shape.input_normalization, "model.input_correction": shape.input_correction,
              "training.precision": precision,
              "training.device": device, "loss.mixing": loss.mixing}
    for key, value in values.items():
        if value not in COVERED[key]:
            return f"{key} = {value!r}"
    for section, settings in (("model", shape), ("loss", loss)):
        for f in dataclasses.fields(settings):
            if f"{section}.{f.name}" not in COVERED and f.name not in ANY_VALUE[section]:
                return f"{section}.{f.name} = {getattr(settings, f.name)!r}"
    return None


def use_fast_step(mode: str, shape, loss, precision: str, device: str) -> bool:
    """Whether to train with this step for ``training.fast_step`` = ``mode`` (auto, on or off)."""
    if mode == "off":
        return False
    why = uncovered(shape, loss, precision, device)
    if why is not None and mode == "on":
        raise InclustError(f'training.fast_step = "on" but the hand-written step is not verified for {why}',
                           'set training.fast_step = "auto" to train these settings with autograd')
    return why is None


def _reconstruction(net, logits, x, out_mask, bernoulli, scale):
    """The reconstruction loss's gradient w.r.t. the logits (times ``scale``), and a call that
    computes the loss itself (the per-member mean over rows, [K]): only the gradient is on the
    step's chain, so the caller can hand the loss to the worker."""
    out_act, out_back = _OUT[net.config.output_activation], _ACT[net.config.output_activation][1]

    def gaussian():
        y = out_act(logits)
        d = y - x
        dm = d * out_mask
        return lambda: 0.5 * (dm * d).sum(-1), out_back(dm * scale, y)

    def cross_entropy():
        bce = partial(nn.functional.binary_cross_entropy_with_logits, logits, x, reduction="none")
        return lambda: (bce() * out_mask).sum(-1), (torch.sigmoid(logits) - x) * (out_mask * scale)

    if isinstance(bernoulli, bool):
        rows, grad = cross_entropy() if bernoulli else gaussian()
        return torch.no_grad()(lambda: rows().mean(-1)), grad
    (rb, gb), (rg, gg) = cross_entropy(), gaussian()
    return (torch.no_grad()(lambda: torch.where(bernoulli[:, None], rb(), rg()).mean(-1)),
            torch.where(bernoulli[:, None, None], gb, gg))


def _log_softmax(s: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last axis, written out: torch's CPU kernel is slow for a short last axis
    (a cell-type count: ~100 us against ~30 us here for [500, 12])."""
    z = s - s.amax(-1, keepdim=True)
    return z - z.exp().sum(-1, keepdim=True).log_()


def label_rows(label: torch.Tensor, n_labels: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's one-hot label (all zero where unlabeled, label -1) and 1.0 where unlabeled [..., 1]."""
    labeled = label >= 0
    one_hot = nn.functional.one_hot(label.clamp(min=0), n_labels).to(dtype) * labeled[..., None]
    return one_hot, (~labeled)[..., None].to(dtype)


class ManualStep:
    """The training step of ``net`` with its gradients by hand: built once per training run.

    ``net``'s parameters move into flat buffers (training/fast_step/flat_params.py). A call computes the loss
    terms [len(TERMS), K] of :meth:`StackedNetworks.loss` for a batch (``noise`` given), writes the
    gradient of their sum into the parameters' ``.grad`` and, given ``lr``, steps Adam. The work off
    the step's chain runs on ``worker`` (training/fast_step/step_worker.py: a second thread, or inline); a call
    returns when all of it, its ``meanwhile`` included, is done and the update is in the parameters.
    """

    def __init__(self, net, worker=None):
        self.net = net
        self.flat = FlatParameters(net)
        self.worker = worker or InlineWorker()

    def close(self) -> None:
        self.worker.close()

    @staticmethod
    @torch.no_grad()  # (no_grad is per thread: the worker's calls need their own)
    def _weight_grad(d_out: torch.Tensor, h_in: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor) -> None:
        torch.bmm(d_out.transpose(1, 2), h_in, out=grad_w)
        torch.sum(d_out, 1, keepdim=True, out=grad_b)

    @torch.no_grad()
    def __call__(self, x, input_mask, output_mask, covariate, label, noise, weights, bernoulli, unsupervised: bool,
                 label_tables=None, lr: float | None = None, meanwhile=None) -> torch.Tensor:
        """``meanwhile``: a call for the worker to run during this step's forward pass (the trainer
        gathers the next batch with it)."""
        self.worker.wait()  # nothing is left over after a call, unless the last one raised half-way
        net, c, submit = self.net, self.net.config, self.worker.submit
        if meanwhile is not None:
            submit(meanwhile)
        act, act_back = _ACT[c.activation]
        W, B = list(net.weights), list(net.biases)
        k, n = x.shape[0], x.shape[1]
        e, n_dec = net.n_encoder, len(c.decoder_hidden)
        n_cov = net.covariate_embedding.shape[1]
        cov_rows = covariate.reshape(-1) if k == 1 else (covariate + n_cov * torch.arange(k, device=x.device)[:, None]).reshape(-1)

        # --- forward (StackedNetworks.loss, keeping what the backward needs)
        hs = [encoder_input(net, x, input_mask, covariate)]
        for i in range(e):
            hs.append(act(torch.baddbmm(B[i], hs[-1], W[i].transpose(1, 2))))
        latent = c.latent_dim
        heads_w, heads_b = self.flat.heads[0], self.flat.heads_bias[0]  # mu and log-variance: one block
        heads = torch.baddbmm(heads_b, hs[-1], heads_w.transpose(1, 2))
        mu, log_var = heads[..., :latent], heads[..., latent:]
        std = torch.exp(0.5 * log_var)
        n_labels = W[e + 2].shape[1]
        if label_tables is None:
            label_tables = label_rows(label, n_labels, x.dtype)
        # the classifier, the KL term and their gradients: on the worker while the decoder runs here
        branch = self.worker.call(partial(self._label_branch, mu, log_var, cov_rows, label_tables, weights, unsupervised))
        gs = [torch.addcmul(mu, std, noise)]
        for j in range(n_dec):
            gs.append(act(torch.baddbmm(B[e + 3 + j], gs[-1], W[e + 3 + j].transpose(1, 2))))
        logits = torch.baddbmm(B[-1], gs[-1], W[-1].transpose(1, 2))
        out_w = output_weights(input_mask, output_mask, weights.unseen)
        rec_loss, d_logits = _reconstruction(net, logits, x, out_w, bernoulli, weights.reconstruction / n)
        rec = self.worker.call(rec_loss)

        # --- backward: the chain here, the parameter gradients off it on the worker. The chain's
        # last weight gradient (the first layer's) is computed here while the worker finishes the
        # others, then Adam: the next step needs both at once.
        held: list = []

        def grad_job(job):
            if held:
                submit(held.pop())
            held.append(job)

        def linear_back(i, d_out, h_in, need_input=True):
            grad_job(partial(self._weight_grad, d_out, h_in, W[i].grad, B[i].grad))
            return torch.bmm(d_out, W[i]) if need_input else None

        d = linear_back(len(W) - 1, d_logits, gs[-1])  # decoder, output layer first
        for j in reversed(range(n_dec)):
            d = linear_back(e + 3 + j, act_back(d, gs[j + 1]), gs[j])
        d_z = d
        kl, cat, ce, d_zc, r_rows, var = branch.get()
        rec = rec.get()
        total = weights.reconstruction * rec + weights.kl * kl + weights.categorical * cat + weights.label * ce
        terms = torch.stack([total, rec, kl, cat, ce, x.new_zeros(k)])
        d_mu = d_z + d_zc
        d_log_var = d_z * noise * std * 0.5 + 0.5 * r_rows * (var - 1)
        d_heads = torch.cat([d_mu, d_log_var], -1)
        grad_job(partial(self._weight_grad, d_heads, hs[-1], self.flat.heads[1], self.flat.heads_bias[1]))
        d_h = torch.bmm(d_heads, heads_w) if e > 0 else None
        for i in reversed(range(e)):
            d_h = linear_back(i, act_back(d_h, hs[i + 1]), hs[i], i > 0)
        held.pop()()
        self.worker.wait()
        if lr is not None:
            self.flat.adam_step(lr)
        return terms

    @torch.no_grad()
    def _label_branch(self, mu, log_var, cov_rows, label_tables, weights, unsupervised: bool):
        """The loss's classifier, categorical, label and KL terms of the corrected latent z_c = mu - e_b
        [K], their gradients w.r.t. z_c and (summed over types) the KL weights, and the parameter
        gradients of the classifier, prior means and covariate embedding."""
        net = self.net
        W, B, e = net.weights, net.biases, net.n_encoder
        k, n, latent = mu.shape[0], mu.shape[1], mu.shape[2]
        n_cov = net.covariate_embedding.shape[1]
        one_hot, unlabeled = label_tables
        n_labels = one_hot.shape[-1]
        z_c = mu - net.covariate_embedding.view(k * n_cov, -1).index_select(0, cov_rows).view(k, n, -1)
        # The classifier and the prior's cross term z_c . m_t in one product: [classifier; -m] with the
        # bias [b; |m_t|^2 / 2]. KL(N(mu, s^2) || N(m_t + e_b, I)) = cross_t + col, with
        # cross_t = |m_t|^2 / 2 - z_c . m_t and col = (|z_c|^2 - sum(1 + log s^2 - s^2)) / 2.
        m = net.prior_means
        cls_w = torch.cat([W[e + 2], -m], 1)
        cls_b = torch.cat([B[e + 2], 0.5 * (m * m).sum(-1)[:, None, :]], -1)
        scores = torch.baddbmm(cls_b, z_c, cls_w.transpose(1, 2))
        log_q = _log_softmax(scores[..., :n_labels])
        q = log_q.exp()
        resp = torch.addcmul(one_hot, q, unlabeled)  # prior responsibilities: the label where known, the classifier elsewhere
        var = log_var.exp()
        col = 0.5 * ((z_c * z_c - log_var + var).sum(-1, keepdim=True) - latent)
        kl_t = scores[..., n_labels:] + col
        kl = (resp * kl_t).sum(-1).mean(-1)
        cat = (q * log_q).sum(-1).mean(-1) if unsupervised else mu.new_zeros(k)
        ce = -(log_q * one_hot).sum(-1).sum(-1) / n

        r = (weights.kl / n) * resp  # d total / d kl_t
        r_rows = r.sum(-1, keepdim=True)
        g = (weights.kl / n) * kl_t * unlabeled * q  # d total / d log_q: resp = q = exp(log_q) where unlabeled
        if unsupervised and weights.categorical:
            g = g + (weights.categorical / n) * (q * log_q + q)
        if weights.label:
            g = g - (weights.label / n) * one_hot
        d_s = g - q * g.sum(-1, keepdim=True)  # through log_softmax
        d_scores = torch.cat([d_s, r], -1)
        d_zc = torch.baddbmm(z_c * r_rows, d_scores, cls_w)
        self._label_grads(d_scores, d_s, r, z_c, d_zc, cov_rows, n_labels)
        return kl, cat, ce, d_zc, r_rows, var

    @torch.no_grad()
    def _label_grads(self, d_scores, d_s, r, z_c, d_zc, cov_rows, n_labels: int) -> None:
        """Gradients of the classifier, the prior means and the covariate embedding."""
        net = self.net
        e = net.n_encoder
        k, n_cov = net.k, net.covariate_embedding.shape[1]
        d_cls_w = torch.bmm(d_scores.transpose(1, 2), z_c)
        net.weights[e + 2].grad.copy_(d_cls_w[:, :n_labels])
        torch.sum(d_s, 1, keepdim=True, out=net.biases[e + 2].grad)
        torch.sub(net.prior_means * r.sum(1)[..., None], d_cls_w[:, n_labels:], out=net.prior_means.grad)
        d_emb = net.covariate_embedding.grad
        d_emb.zero_()
        d_emb.view(k * n_cov, -1).index_add_(0, cov_rows, d_zc.reshape(-1, d_zc.shape[-1]), alpha=-1)


def loss_and_grads(net, *args, label_tables=None) -> torch.Tensor:
    """One hand-written step of ``net`` without an update: its loss terms; the gradients land in
    ``p.grad`` (tests compare them with autograd's). Moves ``net``'s parameters into flat buffers."""
    step = ManualStep(net)
    return step(*args, label_tables=label_tables)
