"""Fold the masks (and the per-feature scale) into plain numpy weights for one combination.

``module.predict`` multiplies a zero-filled full-width x by the input mask; the masked-out
columns therefore never reach the first layer, so keeping only ``W[:, inputs]`` is exact. The
output mask selects rows of the last layer, so ``W[outputs], b[outputs]`` is exact as well. The
log-variance head is never used at inference and is dropped; embed graphs drop the decoder. An
ensemble's output layer holds every member's block of rows: each block is sliced the same way,
and the graph averages the blocks (see training/ensemble.py).
Both the ONNX builder and the TorchScript wrapper consume the same :class:`FoldedWeights`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from .combinations import Combination
from .preprocess import PreprocessPlan


@dataclass(frozen=True)
class Layer:
    """``activation(x @ weight.T + bias)``; weight keeps torch's [out, in] layout (Gemm transB=1)."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    activation: str


@dataclass(frozen=True)
class FoldedWeights:
    encoder: tuple[Layer, ...]  # ends with the posterior-mean head (identity activation)
    covariate_embedding: np.ndarray  # [n_covariates, latent_dim]
    classifier: Layer  # logits; softmax is applied by the graph
    decoder: tuple[Layer, ...]  # ends with the output layer (rows = output features); empty for embed
    input_l2: bool = False  # divide the (scaled) input by its per-cell L2 norm before the encoder
    input_scale: np.ndarray | None = None  # per-feature divisor applied as an op (only when input_l2)
    members: int = 1  # an ensemble: the last decoder layer emits each member's outputs side by side, then their mean

    @property
    def latent_dim(self) -> int:
        return int(self.covariate_embedding.shape[1])

    @property
    def n_labels(self) -> int:
        return int(self.classifier.weight.shape[0])


def _f32(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def _linears(prefix: str, seq: nn.Sequential, activation: str) -> list[Layer]:
    return [
        Layer(f"{prefix}.{i}", _f32(m.weight), _f32(m.bias), activation)
        for i, m in enumerate(seq)
        if isinstance(m, nn.Linear)
    ]


def fold(module, combination: Combination, plan: PreprocessPlan) -> FoldedWeights:
    """Sliced float32 weights of ``module`` (an ``InClustModule``) for ``combination``."""
    cfg = module.config
    encoder = _linears("encoder", module.encoder, cfg.activation)
    encoder.append(Layer("z_mean", _f32(module.z_mean.weight), _f32(module.z_mean.bias), "identity"))
    first = encoder[0]
    cols = np.asarray(combination.inputs, dtype=np.int64)
    w = first.weight[:, cols].astype(np.float64)
    input_l2 = getattr(cfg, "input_normalization", "none") == "l2"
    # A per-feature scale folds into the weight columns, unless an L2 norm must be taken after it.
    if plan.scale is not None and not input_l2:
        w = w / plan.scale[None, :]
    input_scale = np.ascontiguousarray(plan.scale.astype(np.float32)) if plan.scale is not None and input_l2 else None
    encoder[0] = Layer(first.name, np.ascontiguousarray(w.astype(np.float32)), first.bias, first.activation)

    decoder: list[Layer] = []
    if combination.spec.decodes:
        decoder = _linears("decoder", module.decoder, cfg.activation)
        rows = np.asarray(combination.outputs, dtype=np.int64)
        members = getattr(cfg, "members", 1)
        rows = np.concatenate([k * cfg.n_features + rows for k in range(members)])
        out = module.output
        decoder.append(
            Layer(
                "output",
                np.ascontiguousarray(_f32(out.weight)[rows]),
                np.ascontiguousarray(_f32(out.bias)[rows]),
                cfg.output_activation,
            )
        )
    classifier = Layer("classifier", _f32(module.classifier.weight), _f32(module.classifier.bias), "identity")
    return FoldedWeights(tuple(encoder), _f32(module.covariate_embedding), classifier, tuple(decoder), input_l2, input_scale,
                         getattr(cfg, "members", 1))
