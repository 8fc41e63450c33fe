"""The inClust+ network: masked encoder, covariate embedding, classifier, per-type prior, decoder.

Kept apart from data handling and the AnnData-facing model class (as scvi-tools separates its
modules from its models): everything here works on tensors only, so the exporter can fold the very
same weights into ONNX graphs.

The forward pass and the loss are defined once, for this module and the stacked K networks of
training/network/stacked.py alike, in training/network/loss.py; this module adds inference (the posterior mean,
covariate transfer, an ensemble's merged decode), which the exporter folds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from inclust_plus.training.network import activations
from inclust_plus.training.network import loss as objective
from inclust_plus.training.config import INPUT_CORRECTIONS, INPUT_NORMALIZATIONS, LossConfig, NetworkShape
from inclust_plus.training.network.loss import TERMS


@dataclass(kw_only=True)
class ModuleConfig(NetworkShape):
    """The module's config: the architecture (:class:`~inclust_plus.training.config.NetworkShape`, paper defaults) plus the
    sizes the data decides. ``to_dict`` is the checkpoint's ``module`` description, read back with
    ``ModuleConfig(**description.module)``."""

    n_features: int
    n_covariates: int
    n_labels: int
    members: int = 1  # >1: K networks merged into one, later layers grouped (training/network/ensemble.py); widths are the merged ones

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

    An ensemble's layer (training/network/ensemble.py): the same as a block-diagonal ``nn.Linear`` without
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
        if c.input_correction not in INPUT_CORRECTIONS:
            raise ValueError(f"input_correction must be one of {INPUT_CORRECTIONS}")
        # An ensemble (members = K > 1, training/network/ensemble.py): every member reads the whole input in
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
        if c.input_correction != "none":  # fitted from the data (training/network/correction.py), saved with the weights
            self.register_buffer("input_gain", torch.ones(c.n_covariates, c.n_features))  # (the names: correction.BUFFERS)
            self.register_buffer("input_power", torch.ones(c.n_covariates, c.n_features))
            self.register_buffer("input_reference", torch.zeros(3, c.n_features))

    # --- the pieces -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, input_mask: torch.Tensor, covariate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of a cell from its masked features (training/network/loss.py); a model
        with an input correction needs each cell's ``covariate``."""
        return objective.encode(self, x, input_mask, covariate)

    def embedding_rows(self, covariate: torch.Tensor) -> torch.Tensor:
        """The covariate embedding e_b of each row."""
        return self.covariate_embedding[covariate]

    def correct(self, z: torch.Tensor, covariate: torch.Tensor) -> torch.Tensor:
        """Remove the covariate by vector arithmetic: z - e_b."""
        return z - self.embedding_rows(covariate)

    def classify(self, z_corrected: torch.Tensor) -> torch.Tensor:
        """Label logits from the covariate-free latent."""
        return self.classifier(z_corrected)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The output layer before its activation (every member's block for an ensemble)."""
        return self.output(self.decoder(z))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """All features from a latent point that carries its covariate (z = z_c + e_b).

        For an ensemble this is the mean of the members' decoded features (training/network/ensemble.py).
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
        mu, log_var = self.encode(x, input_mask, covariate)
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
        """Loss terms averaged over the batch (training/network/loss.py, the definition the stacked trainer
        uses); ``label`` is -1 for unlabeled cells. A reparameterised sample of z in training mode,
        the posterior mean in eval mode."""
        bernoulli = weights.likelihood == "bernoulli"
        if bernoulli and self.config.output_activation != "sigmoid":
            raise ValueError("the Bernoulli likelihood needs a single network with a sigmoid output")
        if self.config.members > 1:
            raise ValueError("a merged ensemble has no training loss: its members train as single networks (training/network/stacked.py)")
        noise = torch.randn(x.shape[0], self.config.latent_dim, device=x.device) if self.training else None
        terms = objective.loss_terms(self, x, input_mask, output_mask, covariate, label, noise, weights, bernoulli, unsupervised)
        return dict(zip(TERMS, terms))
