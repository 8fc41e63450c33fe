"""The inClust+ network: masked encoder, covariate embedding, classifier, per-type prior, decoder.

Kept apart from data handling and the AnnData-facing model class (as scvi-tools separates its
modules from its models): everything here works on tensors only, so the exporter can fold the very
same weights into ONNX graphs.

Notation (BMC Bioinformatics 25:41, 2024):
    x_in  = x * input_mask                         (input mask module)
    mu, log s^2 = encoder(x_in)
    e_b   = covariate_embedding[b]                  (linear on the one-hot covariate)
    z_c   = mu - e_b                                (covariate removed by vector arithmetic)
    q(k|x) = softmax(classifier(z_c))
    x_hat = decoder(z_c + e_target)                 (target = b reconstructs, another b' transfers)
    loss  = w_rec * 0.5 * sum_f out_mask * (x - x_hat)^2      (output mask module; Gaussian likelihood,
            or w_rec * sum_f out_mask * BCE(x, x_hat) with the Bernoulli likelihood for [0, 1] data)
          + w_kl  * sum_k q(k|x) KL(N(mu, s^2) || N(m_k + e_b, I))
          + w_cat * sum_k q log q   (unsupervised cells)   + w_label * CE(label, q)
          + w_mix * per-type MMD between batches of z_c (optional, default 0: training/mixing.py)
Training decodes a reparameterised sample z; inference uses the posterior mean mu.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import activations
from .config import INPUT_NORMALIZATIONS, LossConfig, NetworkShape
from .mixing import mixing_penalty

L2_EPS = 1e-6  # an all-zero cell stays all zero


@dataclass(kw_only=True)
class ModuleConfig(NetworkShape):
    """The module's config: the architecture (:class:`~.config.NetworkShape`, paper defaults) plus the
    sizes the data decides. ``to_dict`` is the checkpoint's ``module`` description, read back with
    ``ModuleConfig(**desc["module"])``."""

    n_features: int
    n_covariates: int
    n_labels: int
    members: int = 1  # >1: K networks merged into one, later layers grouped (training/ensemble.py); widths are the merged ones

    def to_dict(self) -> dict:
        return asdict(self)


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Group g of ``weight`` [groups, out, in] maps input block g of ``x`` [n, groups * in] to output
    block g: one batched matmul, then ``bias`` [groups * out]. Scriptable, so the exported TorchScript
    twin runs this very function."""
    n, g, i = x.shape[0], weight.shape[0], weight.shape[2]  # explicit sizes: a -1 is ambiguous for an empty batch
    per_group = x.reshape(n, g, i).transpose(0, 1)
    return torch.bmm(per_group, weight.transpose(1, 2)).transpose(0, 1).reshape(n, bias.shape[0]) + bias


class GroupedLinear(nn.Module):
    """``groups`` independent linear maps side by side: input block g -> output block g.

    An ensemble's layer (training/ensemble.py): the same as a block-diagonal ``nn.Linear`` without
    storing or multiplying its zeros. Weight [groups, out, in] (per group), bias [groups * out].
    """

    def __init__(self, groups: int, in_features: int, out_features: int):
        super().__init__()
        self.groups = groups
        bound = 1.0 / max(in_features, 1) ** 0.5  # nn.Linear's default range, per group
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups * out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_linear(x, self.weight, self.bias)


def _linear(n_in: int, n_out: int, groups: int) -> nn.Module:
    """A dense layer, or for ``groups`` > 1 a grouped one of those total widths."""
    return GroupedLinear(groups, n_in // groups, n_out // groups) if groups > 1 else nn.Linear(n_in, n_out)


def _mlp(sizes: list[int], activation: str, groups: int = 1, dense_first: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [_linear(a, b, 1 if dense_first and i == 0 else groups), activations.module(activation)]
    return nn.Sequential(*layers)


class InClustModule(nn.Module):
    """inClust+ as a torch module operating on full-width, zero-filled feature vectors."""

    def __init__(self, config: ModuleConfig):
        super().__init__()
        self.config = config
        c = config
        if c.activation not in activations.TABLE or c.output_activation not in activations.TABLE:
            raise ValueError(f"activation must be one of {sorted(activations.TABLE)}")
        if c.input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(f"input_normalization must be one of {INPUT_NORMALIZATIONS}")
        # An ensemble (members = K > 1, training/ensemble.py): every member reads the whole input in
        # the first layer; every later layer is grouped, member k's block k.
        k = c.members
        self.encoder = _mlp([c.n_features, *c.encoder_hidden], c.activation, k, dense_first=True)
        width = c.encoder_hidden[-1] if c.encoder_hidden else c.n_features
        heads = k if c.encoder_hidden else 1
        self.z_mean = _linear(width, c.latent_dim, heads)
        self.z_log_var = _linear(width, c.latent_dim, heads)
        self.covariate_embedding = nn.Parameter(torch.zeros(c.n_covariates, c.latent_dim))
        nn.init.normal_(self.covariate_embedding, std=c.covariate_init_std)
        self.classifier = nn.Linear(c.latent_dim, c.n_labels)
        self.prior_means = nn.Parameter(torch.zeros(c.n_labels, c.latent_dim))
        self.decoder = _mlp([c.latent_dim, *c.decoder_hidden], c.activation, k)
        dec_width = c.decoder_hidden[-1] if c.decoder_hidden else c.latent_dim
        # An ensemble decodes every member's features side by side; decode() averages them.
        self.output = _linear(dec_width, k * c.n_features, k)
        self.output_activation = activations.module(c.output_activation)

    # --- the pieces -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, input_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of a cell from its masked features.

        With ``input_normalization = "l2"`` the masked input is divided by its per-cell L2 norm
        (over the measured features only, since masked ones are zero): the encoder then sees a
        cell's expression profile, not its depth, as a cosine-metric neighbour search would.
        """
        h = x * input_mask
        if self.config.input_normalization == "l2":
            h = h / h.norm(dim=-1, keepdim=True).clamp_min(L2_EPS)
        h = self.encoder(h)
        return self.z_mean(h), self.z_log_var(h)

    def correct(self, z: torch.Tensor, covariate: torch.Tensor) -> torch.Tensor:
        """Remove the covariate by vector arithmetic: z - e_b."""
        return z - self.covariate_embedding[covariate]

    def classify(self, z_corrected: torch.Tensor) -> torch.Tensor:
        """Label logits from the covariate-free latent."""
        return self.classifier(z_corrected)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The output layer before its activation (every member's block for an ensemble)."""
        return self.output(self.decoder(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """All features from a latent point that carries its covariate (z = z_c + e_b).

        For an ensemble this is the mean of the members' decoded features (training/ensemble.py).
        """
        y = self.output_activation(self.decode_logits(z))
        if self.config.members > 1:
            y = y.unflatten(-1, (self.config.members, self.config.n_features)).mean(-2)
        return y

    def decode_members(self, z: torch.Tensor) -> torch.Tensor:
        """Every member's decoded features, [batch, members, n_features] (members = 1 for one network)."""
        return self.output_activation(self.decode_logits(z)).unflatten(-1, (self.config.members, self.config.n_features))

    # --- inference (posterior mean, what the exporter folds) ---------------------------------------
    def predict(
        self,
        x: torch.Tensor,
        input_mask: torch.Tensor,
        covariate: torch.Tensor,
        target_covariate: torch.Tensor | None = None,
        return_std: bool = False,
        samples: int = 0,
        generator: torch.Generator | None = None,
    ):
        """Decoded features (in ``target_covariate``), corrected latent and label probabilities.

        ``return_std`` adds a fourth output: the members' per-feature standard deviation of the
        decoded features (population form, divided by K; all zero for one network), the spread
        that the mean decode averages away (training/uncertainty.py). ``samples = K`` decodes K
        draws of the latent from the posterior (``generator`` draws them) instead of its mean:
        the decoded features are their mean and the fourth output their standard deviation."""
        mu, log_var = self.encode(x, input_mask)
        z_c = self.correct(mu, covariate)
        probs = torch.softmax(self.classify(z_c), dim=-1)
        target = covariate if target_covariate is None else target_covariate
        z_t = z_c + self.covariate_embedding[target]
        if samples:
            sd = torch.exp(0.5 * log_var)
            draws = torch.stack([self.decode(z_t + sd * torch.randn(mu.shape, generator=generator)) for _ in range(samples)])
            return draws.mean(0), z_c, probs, draws.std(0, correction=0)
        if not return_std:
            return self.decode(z_t), z_c, probs
        ys = self.decode_members(z_t)  # decoded once for the mean and the spread
        return ys.mean(dim=-2), z_c, probs, ys.std(dim=-2, correction=0)

    # --- training ---------------------------------------------------------------------------------
    def loss(
        self,
        x: torch.Tensor,
        input_mask: torch.Tensor,
        output_mask: torch.Tensor,
        covariate: torch.Tensor,
        label: torch.Tensor,
        weights: LossConfig,
        unsupervised: bool,
    ) -> dict[str, torch.Tensor]:
        """Loss terms averaged over the batch; ``label`` is -1 for unlabeled cells."""
        mu, log_var = self.encode(x, input_mask)
        e_b = self.covariate_embedding[covariate]
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu) if self.training else mu
        if weights.likelihood == "bernoulli":
            if self.config.output_activation != "sigmoid" or self.config.members > 1:
                raise ValueError("the Bernoulli likelihood needs a single network with a sigmoid output")
            bce = nn.functional.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="none")
            rec = (bce * output_mask).sum(-1)
        else:
            rec = 0.5 * ((x - self.decode(z)) ** 2 * output_mask).sum(-1)

        logits = self.classify(mu - e_b)
        log_q = torch.log_softmax(logits, dim=-1)
        q = log_q.exp()
        labeled = label >= 0
        safe_label = label.clamp(min=0)
        # Prior responsibilities: the known label where there is one, the classifier elsewhere.
        resp = torch.where(labeled[:, None], nn.functional.one_hot(safe_label, q.shape[-1]).to(q.dtype), q)
        # KL(N(mu, s^2) || N(m_k + e_b, I)) for every k: [batch, K]
        diff = mu[:, None, :] - self.prior_means[None] - e_b[:, None, :]
        kl_k = -0.5 * (1 + log_var[:, None, :] - diff**2 - log_var.exp()[:, None, :]).sum(-1)
        kl = (resp * kl_k).sum(-1)
        zero = x.new_zeros(())
        cat = (q * log_q).sum(-1).mean() if unsupervised else zero
        ce = -(log_q.gather(1, safe_label[:, None]).squeeze(1) * labeled).sum() / x.shape[0]
        terms = {
            "reconstruction": rec.mean(),
            "kl": kl.mean(),
            "categorical": cat,
            "label": ce,
            "mixing": mixing_penalty(mu - e_b, covariate, resp, self.config.n_covariates) if weights.mixing else zero,
        }
        terms["total"] = (
            weights.reconstruction * terms["reconstruction"]
            + weights.kl * terms["kl"]
            + weights.categorical * terms["categorical"]
            + weights.label * terms["label"]
            + weights.mixing * terms["mixing"]
        )
        return terms
