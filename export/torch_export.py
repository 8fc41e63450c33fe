"""``torch.export`` twins of the ONNX graphs (``<name>.pt2``), for libtorch users leaving TorchScript.

torch 2.13 deprecates ``torch.jit.script``/``torch.jit.save``; an ``ExportedProgram`` is what
replaces them (loadable with ``torch.export.load``, compilable with AOTInductor). The program is
traced from the same module the TorchScript twin scripts (:mod:`.torchscript`: folded weights,
optional folded preprocessing), with a dynamic batch axis, so it has the same inputs and outputs
as the ONNX graph; it is checked against the PyTorch model like every exported graph
(:mod:`.validate`) right after it is written, and read back from the file for that check.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from inclust_plus.errors import InclustError
from inclust_plus.contract.combinations import Combination
from inclust_plus.contract.plan import PreprocessPlan

from .folding import FoldedWeights
from .torchscript import graph_module
from .validate import ATOL, RTOL, max_abs_diff, random_feeds, reference, run_torchscript, rows_of_y, untied_rows, within_tolerance

EXAMPLE_BATCH = 3  # not 0 or 1, which torch.export would specialise the batch axis on


def export_program(weights: FoldedWeights, plan: PreprocessPlan, combination: Combination, n_covariates: int,
                   neighbours=None) -> torch.export.ExportedProgram:
    """The ExportedProgram of one combination: x [batch, n_inputs], covariate [batch] (+ target_covariate);
    ``neighbours`` (a NeighbourTable): with the read-out, as the graph that carries it."""
    decodes = combination.spec.decodes
    if neighbours is None:
        module = graph_module(weights, plan, decodes).eval()
    else:
        from .neighbours_torchscript import neighbour_module

        module = neighbour_module(weights, plan, neighbours, list(combination.outputs)).eval()
    for part in module.modules():
        for name, buffer in list(part._buffers.items()):
            if buffer is not None and buffer.numel() == 0:  # an empty buffer cannot be saved in a .pt2; it is only tested for emptiness
                del part._buffers[name]
                setattr(part, name, torch.ones(tuple(buffer.shape)))
    feeds = random_feeds(combination, n_covariates, EXAMPLE_BATCH)
    names = [t.name for t in combination.spec.inputs]
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    batch = torch.export.Dim("batch", min=1)
    shapes = {n: {0: batch} for n in names}
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)


def save(program: torch.export.ExportedProgram, path: str | os.PathLike) -> Path:
    torch.export.save(program, str(path))
    return Path(path)


def load(path: str | os.PathLike) -> torch.export.ExportedProgram:
    return torch.export.load(str(path))


def check_parity(module, combination: Combination, plan: PreprocessPlan | None, path: Path, batch: int = 64, seed: int = 0,
                 neighbours=None) -> float:
    """Max |diff| of the saved program against the PyTorch model; error above the export tolerance."""
    feeds = random_feeds(combination, module.config.n_covariates, batch, seed, plan)
    want = reference(module, combination, feeds, plan, neighbours)
    got = run_torchscript(load(path).module(), combination, feeds)  # same call convention as a scripted module
    if neighbours is not None:
        keep = untied_rows(module, combination, feeds, plan, neighbours, want["latent"])
        want, got = rows_of_y(want, keep), rows_of_y(got, keep)
    if not within_tolerance(got, want):
        raise InclustError(
            f"torch.export program {combination.name!r} differs from the PyTorch model by {max_abs_diff(got, want):.3g} (> {ATOL:g} + {RTOL:g} x |value|)",
            "this is a bug in the exporter; please report it (or export without --torch-export)",
        )
    return max_abs_diff(got, want)
