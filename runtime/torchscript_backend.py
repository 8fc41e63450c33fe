"""``--torchscript``: run the exported TorchScript module of a graph instead of its ONNX file.

This is the only runtime module that touches torch, and it imports it inside
:class:`TorchScriptBackend` so that importing the module (or the rest of the runtime) never needs
torch. The scripted module takes the same inputs as the ONNX graph, in the same order
(``x``, ``covariate`` and, for decoding graphs, ``target_covariate``) and returns its outputs
in the manifest's order as a tuple (a dict keyed by output name is accepted too).
"""

from __future__ import annotations

import logging

import numpy as np

from inclust_plus.errors import InclustError

from .backend import DEVICES, usable_cores
from .manifest import GraphEntry, verify_file

log = logging.getLogger("inclust_plus.runtime")


class TorchScriptBackend:
    """libtorch through the ``torch`` package (the optional ``torchscript`` extra)."""

    def __init__(self, device: str = "auto", threads: int | None = None):
        try:
            import torch
        except ImportError:
            raise InclustError(
                "--torchscript needs torch, which the base install of inclust-plus leaves out",
                "pip install 'inclust-plus[torchscript]' (CPU: install torch from the PyTorch CPU index first), or drop --torchscript",
            ) from None
        if device not in DEVICES:
            raise InclustError(f"unknown device {device!r}", f"choose one of {', '.join(DEVICES)}")
        if device == "cuda" and not torch.cuda.is_available():
            raise InclustError("--device cuda was asked for but torch sees no CUDA device", "pass --device cpu")
        self.torch = torch
        self.device = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(threads or usable_cores())
        self.modules: dict[str, object] = {}
        self.paths: dict[str, object] = {}  # the verified file of each loaded graph (probe reloads it on the CPU)

    def prepare(self, graph: GraphEntry) -> None:
        if graph.name in self.modules:
            return
        if graph.torchscript is None:
            raise InclustError(f"graph {graph.name!r} was exported without TorchScript", "re-export with inclust-export --torchscript or drop --torchscript")
        path = verify_file(graph.torchscript, graph.torchscript_sha256, f"TorchScript of {graph.name!r}")
        try:
            module = self.torch.jit.load(str(path), map_location=self.device)
        except Exception as err:  # torch raises RuntimeError subclasses for bad archives
            raise InclustError(f"torch cannot load {path} ({type(err).__name__})", "re-export the model with inclust-export --torchscript") from None
        module.eval()
        self.modules[graph.name] = module
        self.paths[graph.name] = path
        log.info("torch %s: TorchScript %s on %s", self.torch.__version__, path.name, self.device)

    def probe(self, graph, feeds: dict[str, np.ndarray]):
        """One call on the CPU for :func:`.signature.probe_covariates` (its failure is reported as one line
        there). On CUDA a copy is loaded on the CPU for it: an index out of range would be a
        device-side assert there, which leaves the CUDA context unusable instead of raising."""
        torch = self.torch
        module = self.modules[graph.name] if self.device.type == "cpu" else torch.jit.load(str(self.paths[graph.name]), map_location="cpu").eval()
        args = [torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["covariate"])]
        if graph.decodes:
            args.append(torch.from_numpy(feeds["target_covariate"]))
        with torch.inference_mode():
            return module(*args)

    def run(self, graph, x, covariate, target_covariate):
        if graph.name not in self.modules:
            self.prepare(graph)
        torch = self.torch
        args = [torch.from_numpy(x).to(self.device), torch.from_numpy(covariate).to(self.device)]
        if graph.decodes:
            args.append(torch.from_numpy(covariate if target_covariate is None else target_covariate).to(self.device))
        with torch.inference_mode():
            result = self.modules[graph.name](*args)
        if isinstance(result, dict):
            return {k: v.detach().cpu().numpy() for k, v in result.items()}
        if isinstance(result, torch.Tensor):
            result = (result,)
        return {name: t.detach().cpu().numpy().astype(np.float32, copy=False) for name, t in zip(graph.output_names, result)}

    def provenance(self) -> dict:
        return {"backend": "torchscript", "torch_version": self.torch.__version__, "provider": str(self.device)}

    def close(self) -> None:
        self.modules.clear()
