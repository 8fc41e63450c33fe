"""Run the Triton server build from PyPI (nvidia-pytriton) on a model repository, for local use.

The wheel ships a real ``tritonserver`` binary with only the Python backend; this module starts it
the way a user would by hand, without pytriton's Python API, and watches it:

* where the binary and the Python for ``model.py`` are: :mod:`.server_env`;
* the backend folder and the models to load: :mod:`.staging`;
* here: HTTP and gRPC listen on 127.0.0.1 unless told otherwise, metrics are off, ports are free
  ones unless given (retried when another process takes one first); readiness is
  ``GET /v2/health/ready`` answering 200; :meth:`TritonServer.stop` asks the server to finish
  (SIGTERM), then kills its process group, and the server dies with the process that started it.

Torch-free like the rest of the runtime; reading the configs needs tritonclient[grpc]'s protobuf.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from inclust_plus.errors import InclustError

from .server_env import ServerEnv, find_server_env, process_environment
from .staging import available_backends, checked_repository, models_to_load, stage_backends

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server when the process that started it dies (a killed test run, say)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class TritonServer:
    """A running tritonserver process; use :func:`triton_server` or call :meth:`stop` yourself."""

    def __init__(self, process: subprocess.Popen, host: str, http_port: int, grpc_port: int, workdir: Path, log_path: Path | None):
        self.process = process
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.workdir = workdir
        self.log_path = log_path
        self._stopped = False
        self.skipped: list[str] = []  # models of the repository whose backend this server lacks

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in text if line[:1] == "E" or "rror" in line]
        return "\n".join((errors or text)[-lines:])

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InclustError(f"tritonserver exited with code {self.process.returncode} before it was ready:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        raise InclustError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}", "see the server log; pass a longer ready timeout for big models")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL to the process group; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # the Python backend stubs are the server's children in its own process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)
        # regions of a stub that crashed or was killed are not removed by the server
        for region in Path("/dev/shm").glob(_shm_prefix(self.http_port) + "*"):
            with contextlib.suppress(OSError):
                region.unlink()


def _shm_prefix(http_port: int) -> str:
    """Names of the Python backend's shared-memory regions: unique per server, so servers never collide."""
    return f"inclust{os.getpid()}_{http_port}_"


def _command(env: ServerEnv, repository: Path, backends: Path, host: str, http_port: int, grpc_port: int, extra: tuple[str, ...]) -> list[str]:
    shm_prefix = _shm_prefix(http_port)
    return [
        str(env.binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        f"--cache-directory={env.caches}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=false",
        "--disable-auto-complete-config",
        "--exit-timeout-secs=10",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--backend-config=python,shm-default-byte-size=16777216",
        *extra,
    ]


def start_server(
    repository: str | os.PathLike,
    http_port: int | None = None,
    grpc_port: int | None = None,
    host: str = LOOPBACK,
    python_env: str | os.PathLike | None = None,
    ready_timeout: float = 120.0,
    log_to_terminal: bool = False,
    extra_args: tuple[str, ...] = (),
) -> TritonServer:
    """Start tritonserver on ``repository`` and wait until every model is loaded.

    Ports default to free ones (retried if another process takes one first). The server log goes to
    a file in a private temporary folder, or to this terminal with ``log_to_terminal``.
    """
    repo = checked_repository(repository)
    env = find_server_env(python_env)
    load, skipped = models_to_load(repo, available_backends(env))
    if skipped:
        extra_args = ("--model-control-mode=explicit", *(f"--load-model={m}" for m in load), *extra_args)
    attempts = 1 if (http_port and grpc_port) else 3
    for attempt in range(attempts):
        hp, gp = http_port or free_port(host), grpc_port or free_port(host)
        while gp == hp:
            gp = free_port(host)
        workdir = Path(tempfile.mkdtemp(prefix="inclust-triton-"))
        log_path = None if log_to_terminal else workdir / "tritonserver.log"
        backends = stage_backends(env, workdir)
        stream = None if log_to_terminal else open(log_path, "wb")
        try:
            process = subprocess.Popen(
                _command(env, repo, backends, host, hp, gp, tuple(extra_args)),
                env=process_environment(env),
                stdout=stream,
                stderr=subprocess.STDOUT if stream else None,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            if stream:
                stream.close()
        server = TritonServer(process, host, hp, gp, workdir, log_path)
        server.skipped = skipped
        atexit.register(server.stop)
        try:
            server.wait_ready(ready_timeout)
            return server
        except InclustError:
            tail = server.log_tail()
            server.stop()
            if attempt + 1 < attempts and "address already in use" in tail.lower():
                continue
            raise
        except BaseException:  # Ctrl-C while waiting: never leave a server behind
            server.stop()
            raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def triton_server(repository: str | os.PathLike, **kwargs) -> Iterator[TritonServer]:
    """``with triton_server(repo) as server:`` a ready server, stopped whatever happens in the block."""
    server = start_server(repository, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def serve(
    repository: str | os.PathLike,
    http_port: int = 8000,
    grpc_port: int = 8001,
    host: str = LOOPBACK,
    python_env: str | os.PathLike | None = None,
    echo=print,
) -> int:
    """Foreground server for ``inclust-run serve``: runs until Ctrl-C or SIGTERM, then stops cleanly."""

    def interrupt(*_):
        raise KeyboardInterrupt

    # A foreground server has no output to protect: Ctrl-C and SIGTERM stop it at once (the run
    # commands turn them into a stop flag instead, see inclust_plus.interrupt). Set before starting.
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        server = start_server(repository, http_port=http_port, grpc_port=grpc_port, host=host, python_env=python_env, log_to_terminal=True)
        if server.skipped:
            echo(f"not loaded (this server build has no backend for them): {', '.join(server.skipped)}")
        echo(f"Triton is ready: HTTP {server.http_url} (KServe v2), gRPC {server.grpc_url}; Ctrl-C stops it")
        return server.process.wait()
    except KeyboardInterrupt:
        echo("stopping Triton")
        return 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if server is not None:
            server.stop()
