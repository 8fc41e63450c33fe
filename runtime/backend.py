"""Backends run one graph on a batch; the local one is onnxruntime.

The pipeline only talks to the :class:`Backend` protocol, so other engines plug in without
touching it: the TorchScript backend (``--torchscript``, :mod:`.torchscript_backend`) and a
Triton client (``--triton URL``, :mod:`inclust_plus.triton.client`, chosen in :mod:`.cli`).

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
import threading
from typing import Protocol, runtime_checkable

import numpy as np

from inclust_plus.errors import InclustError

from .manifest import GraphEntry, read_verified
from .signature import check_signature

log = logging.getLogger("inclust_plus.runtime")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16")
CUDA_IN_FLIGHT = 3  # concurrent batches on a GPU, one session (and CUDA stream) each: copies overlap compute


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from an inference engine.

    ``prepare`` is called once, before any output is created (verify and load here, so a bad
    model fails before work starts). ``run`` gets float32 C-contiguous ``x`` [batch, n_inputs],
    int64 ``covariate`` [batch] and int64 ``target_covariate`` [batch] (None for embed graphs)
    and returns the graph's outputs by name (``y``, ``latent``, ``label_probs``) as numpy arrays.
    ``provenance`` is merged into ``uns["inclust"]`` (at least ``backend`` and ``provider``).
    """

    def prepare(self, graph: GraphEntry) -> None: ...

    def run(self, graph: GraphEntry, x: np.ndarray, covariate: np.ndarray, target_covariate: np.ndarray | None) -> dict[str, np.ndarray]: ...

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


def check_precision(precision: str, providers: list[str]) -> None:
    """fp32 runs anywhere; tf32 and fp16 only on a CUDA provider (a one-line error otherwise)."""
    if precision not in PRECISIONS:
        raise InclustError(f"unknown precision {precision!r}", f"choose one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and providers[0] != CUDA:
        raise InclustError(f"--precision {precision} needs onnxruntime's CUDA provider, which this run does not have",
                           "run on a GPU with onnxruntime-gpu (--device cuda), or pass --precision fp32")


def provider_list(providers: list[str], precision: str) -> list:
    """Providers with options: CUDA strict float32 (``use_tf32=0``) unless tf32 is asked for."""
    return [(CUDA, {"use_tf32": "1" if precision == "tf32" else "0"}) if p == CUDA else p for p in providers]


class OnnxBackend:
    """onnxruntime on this machine (CPU or CUDA).

    Calls go through IO binding (:meth:`run_feeds`): outputs are written straight into the run
    loop's chunk buffers (on CUDA: copied device-to-host into them, page-locked by :mod:`.pinned`).
    On CUDA several batches are in flight, each worker thread with its own session.
    """

    def __init__(self, device: str = "auto", threads: int | None = None, precision: str = "fp32", workers: int | None = None):
        import onnxruntime as ort  # imported here so `inclust-run --help` stays fast

        self.ort = ort
        self.device = device
        self.providers = choose_providers(device, list(ort.get_available_providers()))
        check_precision(precision, self.providers)
        self.precision = precision
        self.threads = threads or usable_cores()
        self.workers = workers  # concurrent calls asked for (--workers); None: one per core (CPU), CUDA_IN_FLIGHT (CUDA)
        self.run_threads = self.threads  # intra-op threads of one call
        self.sessions: dict[str, tuple] = {}
        self._models: dict[str, bytes] = {}
        self.provider_used: str | None = None
        self._local = threading.local()  # per-thread sessions on CUDA
        self._lock = threading.Lock()

    @property
    def on_cuda(self) -> bool:
        return self.providers[0] == CUDA

    def _options(self):
        so = self.ort.SessionOptions()
        so.intra_op_num_threads = self.run_threads
        so.inter_op_num_threads = 1
        so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return so

    def split_threads(self) -> int:
        """Take concurrent :meth:`run` calls; returns how many.

        CPU: ``workers`` (default: one per core) calls, the cores shared out as intra-op threads
        (one each by default). CUDA: ``workers`` (default :data:`CUDA_IN_FLIGHT`) batches in flight,
        one session per worker thread. Only before any session is built and when ``run`` is this
        class's own (a subclass overriding it may not be thread-safe); otherwise returns 1 and
        nothing changes.
        """
        if self.sessions or type(self).run is not OnnxBackend.run:
            return 1
        if self.on_cuda:
            return max(1, self.workers or CUDA_IN_FLIGHT)
        n = self.workers or self.threads
        if self.providers[0] != CPU or n < 2:
            return 1
        self.run_threads = 1 if self.workers is None else max(1, self.threads // n)
        return n

    def _session(self, model: bytes):
        """A session on the verified bytes (never the path: the file could change after the check)."""
        return self.ort.InferenceSession(model, sess_options=self._options(), providers=provider_list(self.providers, self.precision))

    def prepare(self, graph: GraphEntry) -> None:
        key = str(graph.path)
        if key in self.sessions:
            return
        model = read_verified(graph.path, graph.sha256, f"graph {graph.name!r}")  # the checked bytes are what runs
        try:
            session = self._session(model)
        except Exception as err:  # onnxruntime raises its own exception types for bad models
            first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise InclustError(f"onnxruntime cannot load graph {graph.name!r} ({first})", "re-export the model with inclust-export") from None
        used = session.get_providers()[0]
        if self.device == "cuda" and used != CUDA:
            raise InclustError("--device cuda was asked for but onnxruntime could not start CUDA", "check the CUDA/cuDNN libraries or pass --device cpu")
        names = {i.name for i in session.get_inputs()}
        data_inputs = {"values", "indices", "rows"} if graph.input_format == "csr" else {"x"}
        if not data_inputs | {"covariate"} <= names:
            raise InclustError(f"graph {graph.name!r} has inputs {sorted(names)}, expected {', '.join(sorted(data_inputs))} and covariate",
                               "re-export the model with inclust-export")
        check_signature(graph, session)
        takes_target = "target_covariate" in names
        outputs = [o.name for o in session.get_outputs()]
        self.sessions[key] = (session, takes_target, outputs)
        if self.on_cuda:  # per-thread CUDA sessions are built from the same checked bytes (on CPU one session serves all)
            self._models[key] = model
        self.provider_used = used
        log.info("onnxruntime %s: graph %s (%s, %s) on %s (%d intra-op threads per call, %d cores)", self.ort.__version__, graph.name,
                 graph.input_format, self.precision, used, self.run_threads, self.threads)

    def _entry(self, graph) -> tuple:
        key = str(graph.path)
        if key not in self.sessions:
            with self._lock:
                self.prepare(graph)
        session, takes_target, outputs = self.sessions[key]
        if self.on_cuda and threading.current_thread() is not threading.main_thread():
            own = getattr(self._local, "sessions", None)
            if own is None:
                own = self._local.sessions = {}
            if key not in own:  # the file was verified by prepare(); each thread gets its own CUDA stream
                own[key] = self._session(self._models[key])
            session = own[key]
        return session, takes_target, outputs

    def probe(self, graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One plain call with onnxruntime's own log silenced (its failure is reported as one line by the caller)."""
        session, takes_target, _ = self._entry(graph)
        quiet = self.ort.RunOptions()
        quiet.log_severity_level = 4
        names = {i.name for i in session.get_inputs()}
        return session.run(None, {k: v for k, v in feeds.items() if k in names}, quiet)

    def run(self, graph, x, covariate, target_covariate):
        return self.run_feeds(graph, {"x": x}, covariate, target_covariate)

    def run_feeds(self, graph, data: dict[str, np.ndarray], covariate, target_covariate, out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """One call through IO binding; ``data`` holds ``x`` (dense) or ``values``/``indices``/``rows`` (CSR).

        ``out`` (optional): C-contiguous float32 arrays of the right shapes, by output name, that
        onnxruntime writes into directly; the returned dict then holds those same arrays.
        """
        session, takes_target, outputs = self._entry(graph)
        binding = session.io_binding()
        for name, value in data.items():
            binding.bind_cpu_input(name, value)
        binding.bind_cpu_input("covariate", covariate)
        if takes_target:
            binding.bind_cpu_input("target_covariate", covariate if target_covariate is None else target_covariate)
        bound = out is not None and all(name in out for name in outputs)
        for name in outputs:
            if bound:
                a = out[name]
                binding.bind_output(name, "cpu", 0, np.float32, list(a.shape), a.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        if bound:
            return {name: out[name] for name in outputs}
        return dict(zip(outputs, binding.copy_outputs_to_cpu()))

    def provenance(self) -> dict:
        return {"backend": "onnxruntime", "onnxruntime_version": self.ort.__version__, "provider": self.provider_used,
                "intra_op_threads": self.run_threads, "threads": self.threads, "precision": self.precision}

    def close(self) -> None:
        self.sessions.clear()
        self._models.clear()
