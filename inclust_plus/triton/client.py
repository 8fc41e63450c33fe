"""Run graphs on a Triton Inference Server: ``inclust-run impute|generate|embed|annotate --triton URL``.

The ``--triton`` options themselves are in :mod:`.cli`.

:class:`TritonBackend` implements the runtime's :class:`~inclust_plus.runtime.backend.Backend`
protocol, so reading, preprocessing, covariates and the output file are exactly the local
pipeline's; only the graph runs remotely. Each batch the pipeline hands over is cut into requests
(at most the model's ``max_batch_size`` rows) that are sent with several in flight at once
(gRPC ``async_infer`` with a callback, or HTTP ``async_infer`` with a connection pool), so the
server's dynamic batcher and instances are kept busy; results are put back in row order.

Before the first batch, :meth:`TritonBackend.prepare` checks that the server is reachable, the
model is ready, and that the model's ``inclust.manifest_graph`` parameter (written by
:mod:`.repository`) has the same ONNX sha256 as the local manifest, so the
server never silently runs another export than the one whose feature names label the output.

tritonclient is optional (``pip install 'inclust-plus[triton]'``) and imported only when used.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from inclust_plus.errors import InclustError

from .layout import PYTHON_SUFFIX

log = logging.getLogger("inclust_plus.runtime")
PROTOCOLS = ("grpc", "http")
INSTALL_HINT = "pip install 'tritonclient[grpc,http]' (or inclust-plus[triton])"
_DTYPES = {"TYPE_FP32": ("FP32", np.float32), "TYPE_INT64": ("INT64", np.int64)}


class Rejected(InclustError):
    """The server answered a request with an error (its inputs), as opposed to not answering at all."""


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """``grpc://h:p``, ``http://h:p`` or ``h:p`` (gRPC unless ``protocol`` says otherwise) -> (host:port, protocol)."""
    text = url.strip().rstrip("/")
    scheme = None
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme not in PROTOCOLS:
            raise InclustError(f"unsupported Triton URL scheme {scheme!r} in {url!r}", "use grpc://HOST:PORT or http://HOST:PORT")
    if protocol and scheme and protocol != scheme:
        raise InclustError(f"--triton {url} says {scheme} but --triton-protocol says {protocol}", "drop one of them")
    host, _, port = text.rpartition(":")
    example = "pass e.g. --triton 127.0.0.1:8001 (gRPC) or http://127.0.0.1:8000"
    if not host or not port.isdigit():
        raise InclustError(f"Triton URL {url!r} has no HOST:PORT", example)
    if not 1 <= int(port) <= 65535:
        raise InclustError(f"Triton URL {url!r} has port {int(port)}, outside 1-65535", example)
    if not valid_host(host):
        raise InclustError(f"Triton URL {url!r} has an invalid host {host!r} (a name, an IPv4 address or [IPv6])", example)
    return f"{host}:{int(port)}", scheme or protocol or "grpc"


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def valid_host(host: str) -> bool:
    """A DNS name (RFC 1123 labels), a dotted IPv4 address, or an IPv6 address in brackets."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
            return True
        except ValueError:
            return False
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
            return True
        except ValueError:
            return False
    return len(host) <= 253 and all(_LABEL.match(label) for label in host.rstrip(".").split("."))


@dataclass
class _Model:
    """What the client needs to know about one served model."""

    name: str
    max_batch_size: int
    inputs: dict[str, tuple[str, type, bool]]  # name -> (Triton datatype, numpy dtype, send as [B, 1])
    outputs: list[str]
    parameters: dict[str, str] = field(default_factory=dict)


def _config_model(name: str, config: dict) -> _Model:
    inputs = {}
    for t in config.get("input", []):
        dtype = _DTYPES.get(t.get("data_type"))
        if dtype is None:
            raise InclustError(f"Triton model {name!r} has input {t.get('name')!r} of type {t.get('data_type')}, not an inClust+ graph", "pass --model with an inClust+ model")
        dims = [int(d) for d in t.get("dims", [])]
        column = dims == [1] and "reshape" in t and not (t["reshape"].get("shape") or [])
        inputs[t["name"]] = (dtype[0], dtype[1], column)
    params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    return _Model(name, int(config.get("max_batch_size", 0)), inputs, [t["name"] for t in config.get("output", [])], params)


class TritonBackend:
    """The runtime Backend that sends batches to Triton with ``concurrency`` requests in flight."""

    def __init__(self, url: str, model: str | None = None, protocol: str | None = None, concurrency: int = 4,
                 request_rows: int | None = None, timeout_s: float = 120.0):
        if concurrency < 1:
            raise InclustError(f"--triton-concurrency must be at least 1, not {concurrency}")
        self.url, self.protocol = parse_url(url, protocol)
        self.model_name = model
        self.concurrency = concurrency
        self.request_rows = request_rows
        self.timeout_s = timeout_s
        self.models: dict[str, _Model] = {}
        self.latencies: list[float] = []  # seconds per request, in completion order
        self.requests = 0
        self.prepared: str | None = None  # the Triton model chosen by prepare()
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
            from tritonclient.utils import InferenceServerException
        except ImportError as err:
            raise InclustError(f"--triton needs tritonclient ({err})", INSTALL_HINT) from None
        self.tc = tc
        self.server_error = InferenceServerException
        try:
            if self.protocol == "grpc":
                self.client = tc.InferenceServerClient(self.url)
            else:
                self.client = tc.InferenceServerClient(self.url, concurrency=concurrency, connection_timeout=timeout_s, network_timeout=timeout_s)
        except Exception as err:  # tritonclient raises plain exceptions for malformed URLs
            raise InclustError(f"cannot make a Triton client for {self.url} ({err})", "check --triton") from None

    # -- server and model discovery -------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self.server_error as err:
            raise InclustError(f"Triton at {self.url} ({self.protocol}): {what} failed: {_message(err)}", "is the server running? start one with inclust-run serve REPO") from None
        except OSError as err:  # http client: connection refused, reset
            raise InclustError(f"cannot reach Triton at {self.url} ({self.protocol}): {err}", "start it with inclust-run serve REPO or check --triton") from None

    def served_models(self) -> list[str]:
        index = self._call("listing models", self.client.get_model_repository_index, **({"as_json": True} if self.protocol == "grpc" else {}))
        entries = index.get("models", []) if isinstance(index, dict) else index
        return sorted(e["name"] for e in entries if e.get("state") == "READY")

    def model(self, name: str) -> _Model:
        if name not in self.models:
            if self.protocol == "grpc":
                config = self._call(f"reading model {name!r}", self.client.get_model_config, name, as_json=True)["config"]
            else:
                config = self._call(f"reading model {name!r}", self.client.get_model_config, name)
            self.models[name] = _config_model(name, config)
        return self.models[name]

    def _resolve_name(self, graph) -> str:
        if self.model_name:
            return self.model_name
        ready = set(self.served_models())
        for candidate in (graph.name, graph.name + PYTHON_SUFFIX):
            if candidate in ready:
                return candidate
        raise InclustError(
            f"Triton at {self.url} serves no model for graph {graph.name!r} (ready: {', '.join(sorted(ready)) or 'none'})",
            "pass --model NAME, or serve the repository written by inclust-export --triton",
        )

    def prepare(self, graph) -> None:
        if not self._call("health check", self.client.is_server_live):
            raise InclustError(f"Triton at {self.url} is not live", "start it with inclust-run serve REPO")
        name = self._resolve_name(graph)
        if not self._call(f"checking model {name!r}", self.client.is_model_ready, name):
            raise InclustError(f"Triton model {name!r} is not ready at {self.url}", f"served models: {', '.join(self.served_models()) or 'none'}")
        model = self.model(name)
        served = json.loads(model.parameters.get("inclust.manifest_graph") or "{}")
        if served.get("sha256") and graph.sha256 and served["sha256"].lower() != graph.sha256.lower():
            raise InclustError(
                f"Triton model {name!r} serves another export of graph {served.get('name')!r} than {graph.path.parent / 'manifest.json'} (sha256 differs)",
                "regenerate the Triton repository from this export (inclust-export --triton) or pass the matching --onnx",
            )
        needed = set(graph.input_names)
        if not needed <= set(model.inputs):
            raise InclustError(f"Triton model {name!r} takes {sorted(model.inputs)}, graph {graph.name!r} needs {sorted(needed)}", "pass --model with the matching model")
        self.prepared = name
        log.info("Triton %s://%s: graph %s runs as model %s (%d requests in flight)", self.protocol, self.url, graph.name, name, self.concurrency)

    # -- inference --------------------------------------------------------------------------------
    def _inputs(self, model: _Model, feed: dict[str, np.ndarray], start: int, stop: int) -> list:
        out = []
        for name, (datatype, dtype, column) in model.inputs.items():
            arr = np.ascontiguousarray(feed[name][start:stop], dtype=dtype)
            if column:
                arr = arr.reshape(-1, 1)
            t = self.tc.InferInput(name, list(arr.shape), datatype)
            t.set_data_from_numpy(arr)
            out.append(t)
        return out

    def chunks(self, n: int, model: _Model) -> list[tuple[int, int]]:
        """Row ranges of the requests for ``n`` rows: ``request_rows`` each, or one per in-flight slot."""
        cap = model.max_batch_size if model.max_batch_size > 0 else n
        rows = self.request_rows or math.ceil(n / self.concurrency)
        rows = max(1, min(rows, cap))
        return [(s, min(n, s + rows)) for s in range(0, n, rows)]

    def infer(self, name: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Send ``feed`` (arrays by input name, same number of rows) as several requests; outputs by name."""
        model = self.model(name)
        missing = set(model.inputs) - set(feed)
        if missing:
            raise InclustError(f"Triton model {name!r} needs inputs {sorted(missing)}")
        n = len(next(iter(feed.values())))
        if n == 0:
            return {}
        ranges = self.chunks(n, model)
        send = self._send_grpc if self.protocol == "grpc" else self._send_http
        results = send(model, feed, ranges)
        return {k: np.concatenate([r[k] for r in results]) for k in model.outputs}

    def _send_grpc(self, model: _Model, feed, ranges) -> list[dict]:
        results: list = [None] * len(ranges)
        errors: list = []
        slots = threading.Semaphore(self.concurrency)
        outputs = [self.tc.InferRequestedOutput(o) for o in model.outputs]

        def done(i: int, t0: float, result, error) -> None:
            # runs on gRPC's thread: whatever happens, the slot is given back
            try:
                self.latencies.append(time.perf_counter() - t0)
                if error is not None:
                    errors.append(error)
                else:
                    results[i] = {k: result.as_numpy(k) for k in model.outputs}
            except BaseException as err:  # noqa: BLE001 - reported on the calling thread below
                errors.append(err)
            finally:
                slots.release()

        for i, (a, b) in enumerate(ranges):
            slots.acquire()
            if errors:
                slots.release()
                break
            inputs = self._inputs(model, feed, a, b)
            t0 = time.perf_counter()
            try:
                self.client.async_infer(model.name, inputs, callback=lambda result, error, i=i, t0=t0: done(i, t0, result, error), outputs=outputs, client_timeout=self.timeout_s)
            except Exception:
                slots.release()
                raise
            self.requests += 1
        for _ in range(self.concurrency):  # wait until every request in flight has answered
            slots.acquire()
        for _ in range(self.concurrency):
            slots.release()
        if errors:
            raise Rejected(f"Triton model {model.name!r} at {self.url} rejected a request: {_message(errors[0])}", "check the inputs, or the server log")
        return results

    def _send_http(self, model: _Model, feed, ranges) -> list[dict]:
        results: list = [None] * len(ranges)
        pending: list = []
        outputs = [self.tc.InferRequestedOutput(o, binary_data=True) for o in model.outputs]

        def collect(i: int, t0: float, request) -> None:
            try:
                result = request.get_result(block=True, timeout=self.timeout_s)
            except self.server_error as err:
                raise Rejected(f"Triton model {model.name!r} at {self.url} rejected a request: {_message(err)}", "check the inputs, or the server log") from None
            self.latencies.append(time.perf_counter() - t0)
            results[i] = {k: result.as_numpy(k) for k in model.outputs}

        for i, (a, b) in enumerate(ranges):
            if len(pending) >= self.concurrency:
                collect(*pending.pop(0))
            inputs = self._inputs(model, feed, a, b)
            t0 = time.perf_counter()
            pending.append((i, t0, self._call("sending a request", self.client.async_infer, model.name, inputs, outputs=outputs)))
            self.requests += 1
        while pending:
            collect(*pending.pop(0))
        return results

    def probe(self, graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request for the runtime's covariate probe (runtime/signature.py): the served graph is
        this manifest's (``prepare`` compared their sha256s), but the manifest's covariate categories
        may have been edited. A refusal by the server is handed over as a plain error, which the probe
        turns into its one line; a server that cannot be reached stays that error. Not counted among
        the run's requests."""
        if self.prepared is None:
            self.prepare(graph)
        model = self.model(self.prepared)
        feed = {k: feeds[k] for k in ("covariate", *feeds) if k in model.inputs}  # a row count first (a CSR feed's values may be empty)
        requests, answered = self.requests, len(self.latencies)
        try:
            return self.infer(self.prepared, feed)
        except Rejected as err:
            raise RuntimeError(err.problem) from None
        finally:
            self.requests = requests
            del self.latencies[answered:]

    def run(self, graph, x, covariate, target_covariate):
        if self.prepared is None:
            self.prepare(graph)
        model = self.model(self.prepared)
        feed = {"x": x, "covariate": covariate}
        if "target_covariate" in model.inputs:
            feed["target_covariate"] = covariate if target_covariate is None else target_covariate
        return self.infer(self.prepared, feed)

    def provenance(self) -> dict:
        return {
            "backend": "triton",
            "provider": f"triton {self.protocol}://{self.url}",
            "triton_url": self.url,
            "triton_protocol": self.protocol,
            "triton_model": self.prepared or self.model_name,
            "triton_requests": self.requests,
            "triton_concurrency": self.concurrency,
        }

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a client whose server went away must not mask the real error
            pass


def _message(err) -> str:
    text = err.message() if hasattr(err, "message") and callable(err.message) else str(err)
    return " ".join(str(text).split())[:300]
