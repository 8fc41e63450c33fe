"""Fold the masks (and the per-feature scale) into plain numpy weights for one combination.

``module.predict`` multiplies a zero-filled full-width x by the input mask; the masked-out
columns therefore never reach the first layer, so keeping only ``W[:, inputs]`` is exact. The
output mask selects rows of the last layer, so ``W[outputs], b[outputs]`` is exact as well. The
log-variance head is never used at inference and is dropped; embed graphs drop the decoder.

An ensemble (training/network/ensemble.py) keeps its grouped layers grouped (one weight block per member,
no block-diagonal zeros): each member's block of the output layer is sliced like any output
layer, and the graph ends with the mean over the K blocks of outputs.
Both the ONNX builder and the TorchScript wrapper consume the same :class:`FoldedWeights`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from torch import nn

from inclust_plus.training.network.module import GroupedLinear
from inclust_plus.contract.combinations import Combination
from inclust_plus.contract.plan import PreprocessPlan


@dataclass(frozen=True)
class Layer:
    """``activation(x @ weight.T + bias)``; weight keeps torch's [out, in] layout (Gemm transB=1).

    A grouped layer (``groups`` = G > 1) has weight [G, out/G, in/G]: group g maps input block g to
    output block g (a block-diagonal weight without its zeros); bias stays flat [out].
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray
    activation: str
    groups: int = 1

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0] * self.weight.shape[1] if self.groups > 1 else self.weight.shape[0])


@dataclass(frozen=True)
class FoldedWeights:
    encoder: tuple[Layer, ...]  # ends with the posterior-mean head (identity activation)
    covariate_embedding: np.ndarray  # [n_covariates, latent_dim]
    classifier: Layer  # logits; softmax is applied by the graph
    decoder: tuple[Layer, ...]  # ends with the output layer (rows = output features); empty for embed
    input_l2: bool = False  # divide the (scaled) input by its per-cell L2 norm before the encoder
    input_scale: np.ndarray | None = None  # per-feature divisor applied as an op (only when input_l2)
    members: int = 1  # an ensemble: the last decoder layer emits each member's outputs side by side, then their mean
    # The input correction (training/network/correction.py), per covariate [n_covariates, n_inputs]: the encoder reads
    # input_gain[c] * sign(x) * |x| ^ input_power[c] of the preprocessed x; the per-feature scale is folded into the gain.
    input_gain: np.ndarray | None = None
    input_power: np.ndarray | None = None

    @property
    def n_outputs(self) -> int:
        """Output features of the graph (one member's block when the decoder ends in K of them)."""
        return self.decoder[-1].n_out // self.members

    @property
    def latent_dim(self) -> int:
        return int(self.covariate_embedding.shape[1])

    @property
    def n_labels(self) -> int:
        return int(self.classifier.weight.shape[0])


def _f32(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def as_layer(name: str, m: nn.Module, activation: str) -> Layer:
    """A dense ``nn.Linear`` or an ensemble's ``GroupedLinear`` as a :class:`Layer`."""
    return Layer(name, _f32(m.weight), _f32(m.bias), activation, getattr(m, "groups", 1))


def _linears(prefix: str, seq: nn.Sequential, activation: str) -> list[Layer]:
    return [as_layer(f"{prefix}.{i}", m, activation) for i, m in enumerate(seq) if isinstance(m, (nn.Linear, GroupedLinear))]


def fold(module, combination: Combination, plan: PreprocessPlan) -> FoldedWeights:
    """Sliced float32 weights of ``module`` (an ``InClustModule``) for ``combination``."""
    cfg = module.config
    members = getattr(cfg, "members", 1)
    encoder = _linears("encoder", module.encoder, cfg.activation)
    encoder.append(as_layer("z_mean", module.z_mean, "identity"))
    first = encoder[0]
    cols = np.asarray(combination.inputs, dtype=np.int64)
    w = first.weight[:, cols].astype(np.float64)
    input_l2 = getattr(cfg, "input_normalization", "none") == "l2"
    gain = power = None
    if getattr(module, "input_gain", None) is not None:
        # gain * |x / s| ^ p = (gain * s ^ -p) * |x| ^ p: the scale folds into the correction's gain, and no further
        power = module.input_power.detach().cpu().numpy().astype(np.float64)[:, cols]
        gain = module.input_gain.detach().cpu().numpy().astype(np.float64)[:, cols]
        if plan.scale is not None:
            gain = gain * plan.scale.astype(np.float64)[None, :] ** -power
        gain, power = (np.ascontiguousarray(t.astype(np.float32)) for t in (gain, power))
    # Otherwise a per-feature scale folds into the weight columns, unless an L2 norm must be taken after it.
    scaled_here = plan.scale is not None and gain is None
    if scaled_here and not input_l2:
        w = w / plan.scale[None, :]
    input_scale = np.ascontiguousarray(plan.scale.astype(np.float32)) if scaled_here and input_l2 else None
    encoder[0] = Layer(first.name, np.ascontiguousarray(w.astype(np.float32)), first.bias, first.activation)

    decoder: list[Layer] = []
    if combination.spec.decodes:
        decoder = _linears("decoder", module.decoder, cfg.activation)
        rows = np.asarray(combination.outputs, dtype=np.int64)
        out = as_layer("output", module.output, cfg.output_activation)
        if out.groups > 1:  # every member's block of output rows, sliced alike
            weight, bias = out.weight[:, rows, :], out.bias.reshape(out.groups, -1)[:, rows].reshape(-1)
        else:
            weight, bias = out.weight[rows], out.bias[rows]
        decoder.append(dataclasses.replace(out, weight=np.ascontiguousarray(weight), bias=np.ascontiguousarray(bias)))
    classifier = Layer("classifier", _f32(module.classifier.weight), _f32(module.classifier.bias), "identity")
    return FoldedWeights(tuple(encoder), _f32(module.covariate_embedding), classifier, tuple(decoder), input_l2, input_scale, members,
                         gain, power)
