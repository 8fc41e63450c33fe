"""Find the Triton server build from PyPI (nvidia-pytriton) and the Python its models run in.

The server's Python environment (the one with nvidia-pytriton and onnxruntime; pip gives it
numpy<2, which nvidia-pytriton pins) is the current interpreter's, or the virtual environment named
by ``python_env`` / ``$INCLUST_TRITON_ENV``. That environment's own interpreter is asked (one probe
script) where its tritonserver binary, Python backend, stub, libpython and site-packages are, and an
environment that cannot serve is refused with a one-line error before anything is started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from inclust_plus.errors import InclustError

ENV_VAR = "INCLUST_TRITON_ENV"
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


def process_environment(env: ServerEnv) -> dict[str, str]:
    """This process's environment plus what the server needs: libpython's folder (and the wheel's
    libraries) on ``LD_LIBRARY_PATH``, the environment's site-packages on ``PYTHONPATH`` so
    ``model.py`` can import numpy and onnxruntime, its scripts on ``PATH``; no user site-packages."""
    out = dict(os.environ)

    def prepend(key: str, values: tuple[str, ...] | list[str]) -> None:
        out[key] = os.pathsep.join([*values, *([out[key]] if out.get(key) else [])])

    prepend("LD_LIBRARY_PATH", env.library_path)
    prepend("PYTHONPATH", env.site_packages)
    prepend("PATH", [env.bin_dir])
    out["PYTHONNOUSERSITE"] = "1"
    return out

