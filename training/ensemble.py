"""Ensembles of inClust+ networks, merged into ONE inClust+ network with block-diagonal weights.

Independently trained networks make different errors on the genes they impute: averaging K of
them is the cheapest accuracy gain there is (benchmarks/results/imputation_experiments.md). The
merged network is still an :class:`InClustModule` - K times wider, each member a diagonal block -
so the checkpoint, the exporter's mask folding, ONNX, TorchScript, the runtime and Triton need no
notion of "ensemble" at all:

- encoder, posterior heads and decoder hidden layers: member k's weight is block k of a
  block-diagonal matrix (the first encoder layer simply stacks the members' rows, since every
  member reads the same masked input);
- latent, covariate embedding and prior means: the members' latents side by side, so
  ``z - e_b`` still removes the covariate block by block and the embedding is their concatenation;
- output layer: block-diagonal too, so it emits every member's features side by side; the module
  then averages them (``InClustModule.decode``), and the exporter folds that mean into one more
  linear layer. Averaging the decoded values, not the logits, matters when members were trained
  with different likelihoods: 0.363 against 0.359 mean Pearson for 2 Gaussian + 2 Bernoulli
  members on the standard MERFISH-panel split;
- classifier: the members' weights side by side, divided by K, bias averaged, so the label
  probabilities are the softmax of the members' mean logits.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .module import InClustModule, ModuleConfig


def merged_config(member: ModuleConfig, k: int) -> ModuleConfig:
    """The config of K members of ``member``'s shape laid side by side."""
    return dataclasses.replace(
        member,
        encoder_hidden=[k * h for h in member.encoder_hidden],
        latent_dim=k * member.latent_dim,
        decoder_hidden=[k * h for h in member.decoder_hidden],
        members=k,
    )


def _linears(seq: nn.Sequential) -> list[nn.Linear]:
    return [m for m in seq if isinstance(m, nn.Linear)]


def _block_diagonal(target: nn.Linear, parts: list[nn.Linear], first: bool = False) -> None:
    """Member k's layer into block k of ``target`` (``first``: every member reads the whole input)."""
    weight = torch.cat([p.weight for p in parts]) if first else torch.block_diag(*[p.weight for p in parts])
    target.weight.copy_(weight)
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
    layers = list(zip(_linears(merged.encoder), *[_linears(m.encoder) for m in members]))
    for i, (target, *parts) in enumerate(layers):
        _block_diagonal(target, parts, first=i == 0)
    first_head = not layers  # no hidden encoder layer: the heads read the input directly
    _block_diagonal(merged.z_mean, [m.z_mean for m in members], first=first_head)
    _block_diagonal(merged.z_log_var, [m.z_log_var for m in members], first=first_head)
    merged.covariate_embedding.copy_(torch.cat([m.covariate_embedding for m in members], dim=1))
    merged.prior_means.copy_(torch.cat([m.prior_means for m in members], dim=1))
    _averaged(merged.classifier, [m.classifier for m in members])
    for target, *parts in zip(_linears(merged.decoder), *[_linears(m.decoder) for m in members]):
        _block_diagonal(target, parts)
    _block_diagonal(merged.output, [m.output for m in members])
    return merged.eval()
