"""Run the Triton server build from PyPI (nvidia-pytriton) on a model repository, for local use.

The wheel ships a real ``tritonserver`` binary with only the Python backend; this module starts it
the way a user would by hand, without pytriton's Python API:

* the server's Python environment (the one with nvidia-pytriton and onnxruntime; pip gives it
  numpy<2, which nvidia-pytriton pins) is the current interpreter's, or the virtual environment
  named by ``python_env`` / ``$INCLUST_TRITON_ENV``;
* a private backend folder gets the Python backend plus the stub built for that environment's
  Python version; libpython's folder goes on ``LD_LIBRARY_PATH`` and the environment's
  site-packages on ``PYTHONPATH`` so ``model.py`` can import numpy and onnxruntime;
* HTTP and gRPC listen on 127.0.0.1 unless told otherwise, metrics are off, ports are free ones
  unless given; readiness is ``GET /v2/health/ready`` answering 200;
* :meth:`TritonServer.stop` asks the server to finish (SIGTERM), then kills its process group.

Torch-free like the rest of the runtime; tritonclient is not needed to start a server.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from inclust_plus.errors import InclustError

ENV_VAR = "INCLUST_TRITON_ENV"
LOOPBACK = "127.0.0.1"
INSTALL_HINT = (
    "make a Python environment for the server: python3.11 -m venv ENV && "
    "ENV/bin/pip install 'numpy<2' onnxruntime nvidia-pytriton, then pass --python-env ENV or set $INCLUST_TRITON_ENV"
)
# Run by the server environment's own interpreter: where everything the server needs lives there.
_PROBE = r"""
import json, sys, sysconfig, importlib.util
def version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None
spec = importlib.util.find_spec("pytriton")
print(json.dumps({
    "python": "%d.%d" % sys.version_info[:2],
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "site_packages": sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}),
    "bin": sysconfig.get_paths()["scripts"],
    "numpy": version("numpy"),
    "onnxruntime": version("onnxruntime") or version("onnxruntime-gpu"),
    "pytriton": list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None,
}))
"""


@dataclass(frozen=True)
class ServerEnv:
    """Where the server binary, its Python backend and the Python for ``model.py`` are."""

    python: Path
    python_version: str
    binary: Path
    backend_dir: Path
    stub: Path
    caches: Path
    library_path: tuple[str, ...]
    site_packages: tuple[str, ...]
    bin_dir: str


def _python_of(python_env: str | os.PathLike | None) -> Path:
    if python_env is None:
        python_env = os.environ.get(ENV_VAR) or None
    if python_env is None:
        return Path(sys.executable)
    p = Path(python_env)
    if p.is_file():
        return p
    for candidate in (p / "bin" / "python3", p / "bin" / "python"):
        if candidate.is_file():
            return candidate
    raise InclustError(f"no Python interpreter in {p} (looked for bin/python3)", INSTALL_HINT)


def find_server_env(python_env: str | os.PathLike | None = None) -> ServerEnv:
    """Locate tritonserver, the Python backend and a matching stub; refuse environments that cannot work."""
    python = _python_of(python_env)
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as err:
        raise InclustError(f"could not inspect the Python at {python} ({type(err).__name__})", INSTALL_HINT) from None
    if not info["pytriton"]:
        raise InclustError(f"nvidia-pytriton (the PyPI Triton server) is not installed for {python}", INSTALL_HINT)
    root = Path(info["pytriton"]) / "tritonserver"
    binary = root / "bin" / "tritonserver"
    stub = root / "python_backend_stubs" / info["python"] / "triton_python_backend_stub"
    backend = root / "backends" / "python"
    if not binary.is_file() or not (backend / "libtriton_python.so").is_file():
        raise InclustError(f"the nvidia-pytriton at {root.parent} has no tritonserver binary or Python backend", "reinstall nvidia-pytriton")
    if not stub.is_file():
        raise InclustError(f"nvidia-pytriton has no Python backend stub for Python {info['python']}", "use a Python version it ships a stub for (3.8 to 3.13)")
    if not info["onnxruntime"]:
        raise InclustError(f"onnxruntime is not installed for {python}; the Python-backend models need it", INSTALL_HINT)
    if not info["numpy"]:
        raise InclustError(f"numpy is not installed for {python}; the Python-backend models need it", INSTALL_HINT)
    libs = [info["libdir"], str(Path(info["pytriton"]).parent / "nvidia_pytriton.libs")]
    return ServerEnv(
        python=python,
        python_version=info["python"],
        binary=binary,
        backend_dir=backend,
        stub=stub,
        caches=root / "caches",
        library_path=tuple(p for p in libs if p and Path(p).is_dir()),
        site_packages=tuple(info["site_packages"]),
        bin_dir=info["bin"],
    )


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _backends_folder(env: ServerEnv, workdir: Path) -> Path:
    """``backends/python`` with the backend library and the stub for this Python side by side."""
    folder = workdir / "backends" / "python"
    folder.mkdir(parents=True)
    for item in env.backend_dir.iterdir():
        if item.is_file():
            (folder / item.name).symlink_to(item)
    (folder / "triton_python_backend_stub").symlink_to(env.stub)
    return folder.parent


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the server when the process that started it dies (a killed test run, say)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _environment(env: ServerEnv) -> dict[str, str]:
    out = dict(os.environ)

    def prepend(key: str, values: tuple[str, ...] | list[str]) -> None:
        out[key] = os.pathsep.join([*values, *([out[key]] if out.get(key) else [])])

    prepend("LD_LIBRARY_PATH", env.library_path)
    prepend("PYTHONPATH", env.site_packages)
    prepend("PATH", [env.bin_dir])
    out["PYTHONNOUSERSITE"] = "1"
    return out


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


def models_to_load(repository: Path, available: set[str]) -> tuple[list[str] | None, list[str]]:
    """Models whose backend this server has (None: all of them) and the names left out.

    A repository written with ``flavour="both"`` also holds onnxruntime-backend models, which the
    PyPI build cannot load; loading just the ``*_python`` models lets it serve such a repository.
    """
    wanted, skipped = [], []
    for config in sorted(repository.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        match = re.search(r'^\s*backend\s*:\s*"([^"]+)"', text, re.MULTILINE)
        platform = re.search(r'^\s*platform\s*:\s*"([^"]+)"', text, re.MULTILINE)
        backend = match.group(1) if match else ("onnxruntime" if platform and platform.group(1) == "onnxruntime_onnx" else None)
        (wanted if backend in available else skipped).append(config.parent.name)
    if not wanted:
        raise InclustError(
            f"no model in {repository} uses a backend this server has ({', '.join(sorted(available))})",
            "write the repository with the python flavour (inclust-export --triton, the default writes both)",
        )
    return (None if not skipped else wanted), skipped


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
    repo = Path(repository).resolve()
    if not repo.is_dir() or not any(p.is_dir() and (p / "config.pbtxt").is_file() for p in repo.iterdir()):
        raise InclustError(f"{repo} is not a Triton model repository (no <model>/config.pbtxt)", "pass the folder written by inclust-export --triton")
    env = find_server_env(python_env)
    available = {p.name for p in env.backend_dir.parent.iterdir() if p.is_dir()}
    load, skipped = models_to_load(repo, available)
    if skipped:
        extra_args = ("--model-control-mode=explicit", *(f"--load-model={m}" for m in load), *extra_args)
    attempts = 1 if (http_port and grpc_port) else 3
    for attempt in range(attempts):
        hp, gp = http_port or free_port(host), grpc_port or free_port(host)
        while gp == hp:
            gp = free_port(host)
        workdir = Path(tempfile.mkdtemp(prefix="inclust-triton-"))
        log_path = None if log_to_terminal else workdir / "tritonserver.log"
        backends = _backends_folder(env, workdir)
        stream = None if log_to_terminal else open(log_path, "wb")
        try:
            process = subprocess.Popen(
                _command(env, repo, backends, host, hp, gp, tuple(extra_args)),
                env=_environment(env),
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


def register_cli(registry) -> None:
    """Hook for :mod:`inclust_plus.runtime.cli`: the ``inclust-run serve REPOSITORY`` command."""
    import click

    from inclust_plus.errors import report_errors

    @click.command("serve")
    @click.argument("repository", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--http-port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="HTTP/REST (KServe v2) port; 0 picks a free one.")
    @click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(0, 65535), help="gRPC port; 0 picks a free one.")
    @click.option("--host", default=LOOPBACK, show_default=True, help="Address to listen on (0.0.0.0 exposes the server to the network).")
    @click.option("--python-env", type=click.Path(path_type=Path), default=None,
                  help=f"Virtual environment with nvidia-pytriton and onnxruntime (default: ${ENV_VAR}, else this Python).")
    @report_errors
    def serve_command(repository: Path, http_port: int, grpc_port: int, host: str, python_env: Path | None) -> None:
        """Serve a Triton model repository with the tritonserver from the nvidia-pytriton wheel.

        The PyPI build has only Triton's Python backend: it loads the ``*_python`` models of a
        repository written by ``inclust-export --triton`` and skips the onnxruntime-backend ones
        (serve those with the NGC container; see triton_models/README.md). Runs in the foreground
        until Ctrl-C.
        """
        code = serve(repository, http_port or None, grpc_port or None, host, python_env, echo=click.echo)
        sys.exit(code)

    registry.add_command(serve_command)
