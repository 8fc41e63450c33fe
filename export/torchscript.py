"""TorchScript twins of the ONNX graphs, for users who serve with libtorch.

Each scripted module holds exactly the folded weights of its ONNX graph and has the same inputs
and outputs (see :data:`inclust_plus.contract.graphs.GRAPH_SPECS`). ``torch.jit.save`` stamps
a random ``serialization_id`` into the archive; :func:`save` replaces it with a digest of the
archive so that identical checkpoints give identical files; :func:`script` gives every module a
class of its own structure, so that the class names stored do not depend on what the process
scripted before (:func:`_structural_classes`).
"""

import hashlib
import io
import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from inclust_plus.training.network import activations, correction
from inclust_plus.training.network.loss import L2_EPS
from inclust_plus.training.network.module import grouped_linear
from inclust_plus.contract.plan import PreprocessPlan

from .folding import FoldedWeights, Layer

class Dense(nn.Module):
    """``x @ weight.T + bias``. Not ``nn.Linear``: its scripted code lists its constants in set
    order, which changes with PYTHONHASHSEED and would make the saved file differ run to run."""

    def __init__(self, layer: Layer):
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(layer.weight.copy()), requires_grad=False)
        self.bias = nn.Parameter(torch.from_numpy(layer.bias.copy()), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.weight, self.bias)


class GroupedDense(nn.Module):
    """A grouped layer (ensemble blocks), computed by the training module's own ``grouped_linear``."""

    def __init__(self, layer: Layer):
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(layer.weight.copy()), requires_grad=False)
        self.bias = nn.Parameter(torch.from_numpy(layer.bias.copy()), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return grouped_linear(x, self.weight, self.bias)


def _sequential(layers: tuple[Layer, ...]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for layer in layers:
        mods.append(Dense(layer) if layer.groups == 1 else GroupedDense(layer))
        if layer.activation != "identity":
            mods.append(activations.module(layer.activation))
    return nn.Sequential(*mods)


class Preprocess(nn.Module):
    """Per-modality normalisation and log1p over runs of input columns (identity when empty)."""

    active: bool
    starts: List[int]
    ends: List[int]
    groups: List[int]
    totals: List[float]
    normalize: List[bool]
    log1p: List[bool]

    def __init__(self, plan: PreprocessPlan):
        super().__init__()
        self.active = plan.has_ops
        self.starts = [s for s, _, _ in plan.runs]
        self.ends = [e for _, e, _ in plan.runs]
        self.groups = [g for _, _, g in plan.runs]
        self.totals = [g.normalize_total or 0.0 for g in plan.groups]
        self.normalize = [g.normalize_total is not None for g in plan.groups]
        self.log1p = [g.log1p for g in plan.groups]

    def forward(self, x: Tensor) -> Tensor:
        if not self.active:
            return x
        factors: List[Tensor] = []
        for g in range(len(self.totals)):
            lib = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
            for r in range(len(self.starts)):
                if self.groups[r] == g:
                    lib = lib + x[:, self.starts[r] : self.ends[r]].sum(dim=1, keepdim=True)
            lib = torch.where(lib == 0, torch.ones_like(lib), lib)
            factors.append(self.totals[g] / lib)
        parts: List[Tensor] = []
        for r in range(len(self.starts)):
            g = self.groups[r]
            part = x[:, self.starts[r] : self.ends[r]]
            if self.normalize[g]:
                part = part * factors[g]
            if self.log1p[g]:
                part = torch.log1p(part)
            parts.append(part)
        return torch.cat(parts, dim=1)


class _Encoder(nn.Module):
    def __init__(self, weights: FoldedWeights, plan: PreprocessPlan):
        super().__init__()
        self.preprocess = Preprocess(plan)
        self.input_l2 = weights.input_l2
        self.l2_eps = L2_EPS  # (an attribute: TorchScript does not read module globals)
        scale = weights.input_scale if weights.input_scale is not None else np.ones(0, dtype=np.float32)
        self.register_buffer("input_scale", torch.from_numpy(scale.copy()))
        self.corrects = weights.input_gain is not None
        empty = np.ones((0, 0), dtype=np.float32)
        self.register_buffer("input_gain", torch.from_numpy((weights.input_gain if self.corrects else empty).copy()))
        self.register_buffer("input_power", torch.from_numpy((weights.input_power if self.corrects else empty).copy()))
        self.encoder = _sequential(weights.encoder)
        self.register_buffer("covariate_embedding", torch.from_numpy(weights.covariate_embedding.copy()))
        self.classifier = _sequential((weights.classifier,))

    def corrected_input(self, x: Tensor, covariate: Tensor) -> Tensor:
        """The preprocessed input through the input correction (training/network/correction.py; the scale folded
        into its gain), where the model has one: what the neighbour read-out's input lookup compares."""
        h = self.preprocess(x)
        if self.corrects:
            h = correction.apply(h, self.input_gain[covariate], self.input_power[covariate])  # scripted: the training's own function
        return h

    def embed(self, x: Tensor, covariate: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.corrected_input(x, covariate)
        if self.input_l2:
            if self.input_scale.numel() > 0:
                h = h / self.input_scale
            h = h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(self.l2_eps)
        latent = self.encoder(h) - self.covariate_embedding[covariate]
        return latent, torch.softmax(self.classifier(latent), dim=-1)


class EmbedGraph(_Encoder):
    """(x, covariate) -> (latent, label_probs)."""

    def forward(self, x: Tensor, covariate: Tensor) -> Tuple[Tensor, Tensor]:
        return self.embed(x, covariate)


class ImputeGraph(_Encoder):
    """(x, covariate, target_covariate) -> (y, latent, label_probs)."""

    def __init__(self, weights: FoldedWeights, plan: PreprocessPlan):
        super().__init__(weights, plan)
        self.decoder = _sequential(weights.decoder)
        self.members = weights.members  # EnsembleImputeGraph's blocks of outputs (graph_module picks it for > 1)
        self.n_out = weights.n_outputs

    def forward(self, x: Tensor, covariate: Tensor, target_covariate: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        latent, probs = self.embed(x, covariate)
        return self.decoder(latent + self.covariate_embedding[target_covariate]), latent, probs


class EnsembleImputeGraph(ImputeGraph):
    """(x, covariate, target_covariate) -> (y, latent, label_probs, y_std): an ensemble's graph with
    the members' per-feature standard deviation (population form, as the ONNX graph's ``y_std``)."""

    def forward(self, x: Tensor, covariate: Tensor, target_covariate: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        latent, probs = self.embed(x, covariate)
        y = self.decoder(latent + self.covariate_embedding[target_covariate]).view(-1, self.members, self.n_out)
        return y.mean(1), latent, probs, y.std(1, correction=0)


def graph_module(weights: FoldedWeights, plan: PreprocessPlan, decodes: bool) -> nn.Module:
    """The module of one graph: embed, impute, or an ensemble's impute (which also returns ``y_std``)."""
    if not decodes:
        return EmbedGraph(weights, plan)
    return EnsembleImputeGraph(weights, plan) if weights.members > 1 else ImputeGraph(weights, plan)


_STRUCTURAL: dict[tuple, type] = {}  # one class per module structure, for the life of the process


def _structural_classes(module: nn.Module) -> nn.Module:
    """Give every module of the tree (children first) a class of its own structure: its class, its
    ``__constants__`` values and its children's classes, named by a digest of them.

    Why: TorchScript keeps one process-wide table of scripted class names. Scripting a class again
    with another structure (an ensemble's ``nn.Sequential`` of grouped layers after a single
    network's, a deeper decoder, another graph of the same export) stores the new type under
    ``___torch_mangle_<n>``, where n counts every such clash since the process started. The saved
    file then depended on what the process had scripted before: exporting twice in one process, or
    after another model, gave other bytes than a fresh process. With one class per structure, equal
    structures reuse one type and different ones never share a name, so the names in the archive
    depend on the graph alone. (Types are built from classes: a module keeps its behaviour, the
    subclass adds nothing.)
    """
    for child in module.children():
        _structural_classes(child)
    base = getattr(type(module), "_inclust_base", type(module))
    constants = tuple((c, repr(getattr(module, c))) for c in sorted(getattr(base, "__constants__", ())))
    children = tuple((name, type(child).__name__) for name, child in module.named_children())
    key = (base.__module__, base.__qualname__, constants, children)
    cls = _STRUCTURAL.get(key)
    if cls is None:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:12]
        cls = _STRUCTURAL[key] = type(f"{base.__name__}_{digest}", (base,), {"__module__": __name__, "_inclust_base": base})
    module.__class__ = cls
    return module


def script(weights: FoldedWeights, plan: PreprocessPlan, decodes: bool) -> torch.jit.ScriptModule:
    module = _structural_classes(graph_module(weights, plan, decodes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module.eval())


def load(path: str | os.PathLike) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


def save(scripted: torch.jit.ScriptModule, path: str | os.PathLike) -> bytes:
    """Write ``scripted`` to ``path`` with a content-derived serialization id; return the bytes."""
    path = Path(path)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, buf)
    # Saving to a buffer names the archive's top folder "archive", whatever the file is called.
    data = _stable_serialization_id(bytearray(buf.getvalue()))
    path.write_bytes(data)
    return data


def _stable_serialization_id(data: bytearray) -> bytes:
    """Overwrite the stored ``.data/serialization_id`` record and its CRC in both zip headers."""
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        infos = [i for i in zf.infolist() if i.filename.endswith("/.data/serialization_id")]
        if len(infos) != 1 or infos[0].compress_type != zipfile.ZIP_STORED:
            return bytes(data)
        info, start_dir = infos[0], zf.start_dir
    off = info.header_offset
    if data[off : off + 4] != b"PK\x03\x04":
        return bytes(data)
    flags = int.from_bytes(data[off + 6 : off + 8], "little")
    name_len = int.from_bytes(data[off + 26 : off + 28], "little")
    extra_len = int.from_bytes(data[off + 28 : off + 30], "little")
    start, size = off + 30 + name_len + extra_len, info.file_size
    data[start : start + size] = b"0" * size
    digits = str(int.from_bytes(hashlib.sha256(bytes(data)).digest(), "big"))
    new_id = (digits * (size // len(digits) + 1))[:size].encode()
    data[start : start + size] = new_id
    crc = zlib.crc32(new_id).to_bytes(4, "little")
    if flags & 0x08:  # CRC in a data descriptor after the record
        desc = start + size + (4 if data[start + size : start + size + 4] == b"PK\x07\x08" else 0)
        data[desc : desc + 4] = crc
    else:
        data[off + 14 : off + 18] = crc
    # Central directory entry with the same name: walk the entries from the directory's start.
    name = info.filename.encode()
    pos = start_dir
    while data[pos : pos + 4] == b"PK\x01\x02":
        n, m, k = (int.from_bytes(data[pos + a : pos + a + 2], "little") for a in (28, 30, 32))
        if data[pos + 46 : pos + 46 + n] == name:
            data[pos + 16 : pos + 20] = crc
            break
        pos += 46 + n + m + k
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        if zf.testzip() is not None:  # pragma: no cover - would mean the layout changed
            raise RuntimeError("rewriting the TorchScript serialization id broke the archive")
    return bytes(data)
