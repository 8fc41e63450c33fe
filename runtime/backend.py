"""Backends run one graph on a batch; the local one is onnxruntime.

The pipeline only talks to the :class:`Backend` protocol, so other engines plug in without
touching it: the TorchScript backend (``--torchscript``, :mod:`.torchscript_backend`) and a
Triton client (``--triton URL``, registered from :mod:`.triton_client`, see :mod:`.cli`).

The onnxruntime session is built for throughput on one node: an ordered provider list (CUDA
first when present and allowed, CPU as the fallback), intra-op threads = usable cores,
sequential execution, all graph optimisations. On CPU the run loop may instead call the session
from one thread per core, each call running on one intra-op thread (:meth:`OnnxBackend.split_threads`):
reading and preprocessing then overlap inference without two thread pools fighting over the
same cores (measured in BENCHMARKS.md). Each graph file's sha256 is checked against the
manifest before onnxruntime ever parses it.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol, runtime_checkable

import numpy as np

from inclust_plus.errors import InclustError

from .manifest import GraphSpec, read_verified

log = logging.getLogger("inclust_plus.runtime")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from an inference engine.

    ``prepare`` is called once, before any output is created (verify and load here, so a bad
    model fails before work starts). ``run`` gets float32 C-contiguous ``x`` [batch, n_inputs],
    int64 ``covariate`` [batch] and int64 ``target_covariate`` [batch] (None for embed graphs)
    and returns the graph's outputs by name (``y``, ``latent``, ``label_probs``) as numpy arrays.
    ``provenance`` is merged into ``uns["inclust"]`` (at least ``backend`` and ``provider``).
    """

    def prepare(self, graph: GraphSpec) -> None: ...

    def run(self, graph: GraphSpec, x: np.ndarray, covariate: np.ndarray, target_covariate: np.ndarray | None) -> dict[str, np.ndarray]: ...

    def provenance(self) -> dict: ...

    def close(self) -> None: ...


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Ordered providers for ``device``; ``cuda`` without a CUDA build is an error, not a fallback."""
    if device not in DEVICES:
        raise InclustError(f"unknown device {device!r}", f"choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise InclustError(
            f"--device cuda was asked for but onnxruntime has no CUDA provider (available: {', '.join(available)})",
            "install onnxruntime-gpu in place of onnxruntime, or pass --device cpu",
        )
    return [CPU]


class OnnxBackend:
    """onnxruntime on this machine (CPU or CUDA)."""

    def __init__(self, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort  # imported here so `inclust-run --help` stays fast

        self.ort = ort
        self.device = device
        self.providers = choose_providers(device, list(ort.get_available_providers()))
        self.threads = threads or usable_cores()
        self.run_threads = self.threads  # intra-op threads of one call
        self.sessions: dict[str, tuple] = {}
        self.provider_used: str | None = None

    def _options(self):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.run_threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return so

    def split_threads(self) -> int:
        """Take ``self.threads`` concurrent :meth:`run` calls of one intra-op thread each; returns how many.

        Only on CPU (a GPU is best fed one stream of batches), with more than one thread, before
        any session is built, and when ``run`` is this class's own (a subclass overriding it may
        not be thread-safe); otherwise returns 1 and nothing changes.
        """
        if self.providers[0] != CPU or self.threads < 2 or self.sessions or type(self).run is not OnnxBackend.run:
            return 1
        self.run_threads = 1
        return self.threads

    def prepare(self, graph: GraphSpec) -> None:
        if graph.name in self.sessions:
            return
        model = read_verified(graph.path, graph.sha256, f"graph {graph.name!r}")  # the checked bytes are what runs
        try:
            session = self.ort.InferenceSession(model, sess_options=self._options(), providers=self.providers)
        except Exception as err:  # onnxruntime raises its own exception types for bad models
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise InclustError(f"onnxruntime cannot load graph {graph.name!r} ({first})", "re-export the model with inclust-export") from None
        used = session.get_providers()[0]
        if self.device == "cuda" and used != CUDA:
            raise InclustError("--device cuda was asked for but onnxruntime could not start CUDA", "check the CUDA/cuDNN libraries or pass --device cpu")
        names = {i.name for i in session.get_inputs()}
        if not {"x", "covariate"} <= names:
            raise InclustError(f"graph {graph.name!r} has inputs {sorted(names)}, expected x and covariate", "re-export the model with inclust-export")
        takes_target = "target_covariate" in names
        outputs = [o.name for o in session.get_outputs()]
        self.sessions[graph.name] = (session, takes_target, outputs)
        self.provider_used = used
        log.info("onnxruntime %s: graph %s on %s (%d intra-op threads per call, %d cores)", self.ort.__version__, graph.name, used, self.run_threads, self.threads)

    def run(self, graph, x, covariate, target_covariate):
        if graph.name not in self.sessions:
            self.prepare(graph)
        session, takes_target, outputs = self.sessions[graph.name]
        feed = {"x": x, "covariate": covariate}
        if takes_target:
            feed["target_covariate"] = covariate if target_covariate is None else target_covariate
        return dict(zip(outputs, session.run(outputs, feed)))

    def provenance(self) -> dict:
        return {"backend": "onnxruntime", "onnxruntime_version": self.ort.__version__, "provider": self.provider_used, "intra_op_threads": self.run_threads, "threads": self.threads}

    def close(self) -> None:
        self.sessions.clear()
