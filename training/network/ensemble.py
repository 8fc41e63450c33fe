"""Ensembles of inClust+ networks, merged into ONE inClust+ network.

Independently trained networks make different errors on the genes they impute: averaging K of
them is the cheapest accuracy gain there is (benchmarks/results/imputation_experiments.md). The
merged network is still an :class:`InClustModule`, K times wider, so the checkpoint, the
exporter's mask folding, the runtime and Triton treat it like any other model:

- first encoder layer: the members' rows stacked, since every member reads the same masked input;
- every later layer (encoder, posterior heads, decoder): a :class:`GroupedLinear` whose group k is
  member k's layer - a block-diagonal layer without its zeros, so the merged network costs K
  networks' weights and multiply-adds, not K^2;
- latent, covariate embedding and prior means: the members' latents side by side, so
  ``z - e_b`` still removes the covariate block by block and the embedding is their concatenation;
- output layer: grouped too, so it emits every member's features side by side; the module then
  averages them (``InClustModule.decode``) and the exported graphs end with the same mean.
  Averaging the decoded values, not the logits, matters when members were trained with different
  likelihoods: 0.361 against 0.358 mean Pearson for 2 Gaussian + 2 Bernoulli members on the
  standard MERFISH-panel split;
- classifier: the members' weights side by side, divided by K, bias averaged, so the label
  probabilities are the softmax of the members' mean logits.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from inclust_plus.training.network import correction
from inclust_plus.training.network.module import GroupedLinear, InClustModule, ModuleConfig


def merged_config(member: ModuleConfig, k: int) -> ModuleConfig:
    """The config of K members of ``member``'s shape laid side by side."""
    return dataclasses.replace(
        member,
        encoder_hidden=[k * h for h in member.encoder_hidden],
        latent_dim=k * member.latent_dim,
        decoder_hidden=[k * h for h in member.decoder_hidden],
        members=k,
    )


def _layers(seq: nn.Sequential) -> list[nn.Module]:
    return [m for m in seq if isinstance(m, (nn.Linear, GroupedLinear))]


def _side_by_side(target: nn.Module, parts: list[nn.Linear]) -> None:
    """Member k's layer into group k of ``target`` (a dense ``target``: every member reads the whole input)."""
    if isinstance(target, GroupedLinear):
        target.weight.copy_(torch.stack([p.weight for p in parts]))
    else:
        target.weight.copy_(torch.cat([p.weight for p in parts]))
    target.bias.copy_(torch.cat([p.bias for p in parts]))


def _averaged(target: nn.Linear, parts: list[nn.Linear]) -> None:
    """Logits of ``target`` = mean of the members' logits, from their concatenated inputs."""
    target.weight.copy_(torch.cat([p.weight for p in parts], dim=1) / len(parts))
    target.bias.copy_(torch.stack([p.bias for p in parts]).mean(0))


@torch.no_grad()
def merge_members(members: list[InClustModule]) -> InClustModule:
    """One network whose decode is the mean of the decodes of ``members`` (all of one config)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    cfg = members[0].config
    if any(m.config != cfg for m in members):
        raise ValueError("ensemble members must share one architecture")
    if len(members) == 1:
        return members[0]
    merged = InClustModule(merged_config(cfg, len(members)))
    pairs = [
        *zip(_layers(merged.encoder), *[_layers(m.encoder) for m in members]),
        (merged.z_mean, *[m.z_mean for m in members]),
        (merged.z_log_var, *[m.z_log_var for m in members]),
        *zip(_layers(merged.decoder), *[_layers(m.decoder) for m in members]),
        (merged.output, *[m.output for m in members]),
    ]
    for target, *parts in pairs:
        _side_by_side(target, parts)
    merged.covariate_embedding.copy_(torch.cat([m.covariate_embedding for m in members], dim=1))
    merged.prior_means.copy_(torch.cat([m.prior_means for m in members], dim=1))
    _averaged(merged.classifier, [m.classifier for m in members])
    if cfg.input_correction != "none":  # fitted from the data: the same in every member
        for name in correction.BUFFERS:
            getattr(merged, name).copy_(getattr(members[0], name))
    return merged.eval()
