"""The TorchScript twin of a graph with the neighbour read-out (export/neighbours_graph.py is the ONNX one).

The read-out's graph is a decoding graph plus a lookup; its ONNX form holds the reference cells as
constants, and so must its TorchScript form, or ``inclust-run --torchscript`` (and libtorch users) would
impute with the decoder alone. This wraps the plain scripted graph (export/torchscript.py) with the same
steps as the ONNX nodes, in the same order: unit rows (norm clamped at L2_EPS), cosine similarities as
one product with the reference's unit rows, TopK, weights 1 / (1 + EPS - cos), a weighted mean of the
gathered measured values, then ``y * keep + blend @ place``. Held to the PyTorch reference by export's
parity check (export/validate.py), like every twin.
"""

from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np
import torch
from torch import Tensor, nn

from inclust_plus.contract.plan import PreprocessPlan
from inclust_plus.errors import InclustError
from inclust_plus.training.neighbours import EPS

from .folding import FoldedWeights
from .neighbours_graph import L2_EPS
from .torchscript import graph_module


class Lookup(nn.Module):
    """[batch, g]: distance-weighted mean of ``values`` over each query row's ``k`` cosine-nearest reference rows."""

    def __init__(self, rows: np.ndarray, k: int):
        super().__init__()
        self.register_buffer("reference", torch.from_numpy(np.ascontiguousarray(np.asarray(rows, dtype=np.float32).T)))
        self.register_buffer("one", torch.tensor(1 + EPS, dtype=torch.float32))  # a float32 constant, as the ONNX graph's
        self.k = min(int(k), len(rows))
        self.l2_eps = L2_EPS

    def forward(self, query: Tensor, values: Tensor) -> Tensor:
        unit = query / torch.linalg.vector_norm(query, dim=1, keepdim=True).clamp_min(self.l2_eps)
        top, idx = torch.topk(unit @ self.reference, self.k, dim=1)
        w = torch.reciprocal(self.one - top)
        num = torch.bmm(w.unsqueeze(1), values[idx]).squeeze(1)
        return num / w.sum(1, keepdim=True)


class Blend(nn.Module):
    """``y`` with the table's columns replaced by the weighted blend of decoder, latent and input neighbours."""

    def __init__(self, table, output_features: list[int]):
        super().__init__()
        place, keep = table.placement(output_features)
        if table.inputs is None:
            raise InclustError("the neighbour table holds no input rows", "rebuild it with build_table")
        _, w_lat, w_in = (float(v) for v in table.weights)
        self.register_buffer("values", torch.from_numpy(np.ascontiguousarray(table.values, dtype=np.float32)))
        self.register_buffer("place", torch.from_numpy(place))
        self.register_buffer("keep", torch.from_numpy(keep))
        self.register_buffer("shares", torch.tensor([w_lat, w_in], dtype=torch.float32))
        self.latent = Lookup(table.latents, table.k_latent)
        self.inputs = Lookup(table.inputs, table.k_inputs)

    def forward(self, y: Tensor, latent: Tensor, x: Tensor) -> Tensor:
        blend = self.latent(latent, self.values) * self.shares[0] + self.inputs(x, self.values) * self.shares[1]
        return y * self.keep + blend @ self.place


class NeighbourImpute(nn.Module):
    """(x, covariate, target_covariate) -> (y, latent, label_probs), ``y`` blended. The input lookup reads the
    input as the encoder does, in the training scale (as the ONNX graph's ``x.seen``): ``lookup_scale`` divides
    where the per-feature scale sits in the first weight (folded, no input correction; empty otherwise)."""

    def __init__(self, graph: nn.Module, blend: Blend, lookup_scale: np.ndarray | None = None):
        super().__init__()
        self.network, self.blend = graph, blend  # (not "graph": torch.export's GraphModule has its own)
        scale = np.ones(0, dtype=np.float32) if lookup_scale is None else np.asarray(lookup_scale, dtype=np.float32)
        self.register_buffer("lookup_scale", torch.from_numpy(scale.copy()))

    def seen(self, x: Tensor, covariate: Tensor) -> Tensor:
        h = self.network.corrected_input(x, covariate)
        return h / self.lookup_scale if self.lookup_scale.numel() > 0 else h

    def forward(self, x: Tensor, covariate: Tensor, target_covariate: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        y, latent, probs = self.network(x, covariate, target_covariate)
        return self.blend(y, latent, self.seen(x, covariate)), latent, probs


class NeighbourEnsembleImpute(NeighbourImpute):
    """An ensemble's graph: also ``y_std``, the members' spread of the decode (not blended, as in ONNX)."""

    def forward(self, x: Tensor, covariate: Tensor, target_covariate: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        y, latent, probs, std = self.network(x, covariate, target_covariate)
        return self.blend(y, latent, self.seen(x, covariate)), latent, probs, std


def neighbour_module(weights: FoldedWeights, plan: PreprocessPlan, table, output_features: list[int]) -> nn.Module:
    """The decoding graph of ``weights`` with ``table``'s read-out (``output_features``: its y's global features), eager."""
    wrapper = NeighbourEnsembleImpute if weights.members > 1 else NeighbourImpute
    scale = plan.scale if weights.input_gain is None and plan.scale is not None else None
    return wrapper(graph_module(weights, plan, True), Blend(table, output_features), scale)


def script(weights: FoldedWeights, plan: PreprocessPlan, table, output_features: list[int]) -> torch.jit.ScriptModule:
    """:func:`neighbour_module`, scripted."""
    module = neighbour_module(weights, plan, table, output_features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module.eval())
