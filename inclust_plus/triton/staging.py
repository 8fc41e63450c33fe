"""What a local tritonserver starts with: a checked repository, the models it can load, a backend folder.

The nvidia-pytriton wheel keeps its Python backend in one folder and one stub per Python version in
another; Triton wants the backend library and ``triton_python_backend_stub`` side by side. A private
folder of symbolic links (made per server, removed when it stops) puts them together without
touching the installed wheel.

A repository written with ``flavour="both"`` also holds onnxruntime-backend models, which the PyPI
build cannot load; :func:`models_to_load` reads every ``config.pbtxt`` (with Triton's ModelConfig
protobuf, :mod:`.model_config`) and keeps the models whose backend the server has.
"""

from __future__ import annotations

from pathlib import Path

from inclust_plus.errors import InclustError

from .layout import CONFIG_FILE
from .model_config import backend_of, read_model_config
from .server_env import ServerEnv


def checked_repository(repository) -> Path:
    """The repository's absolute path; refused unless it holds at least one ``<model>/config.pbtxt``."""
    repo = Path(repository).resolve()
    if not repo.is_dir() or not any(p.is_dir() and (p / CONFIG_FILE).is_file() for p in repo.iterdir()):
        raise InclustError(f"{repo} is not a Triton model repository (no <model>/config.pbtxt)", "pass the folder written by inclust-export --triton")
    return repo


def available_backends(env: ServerEnv) -> set[str]:
    """The backends this server build ships (the folder names next to its Python backend)."""
    return {p.name for p in env.backend_dir.parent.iterdir() if p.is_dir()}


def models_to_load(repository: Path, available: set[str]) -> tuple[list[str] | None, list[str]]:
    """Models whose backend this server has (None: all of them) and the names left out.

    A config that cannot be parsed names no backend, so its model is left out like any other the
    server could not load.
    """
    wanted, skipped = [], []
    for path in sorted(repository.glob(f"*/{CONFIG_FILE}")):
        config = read_model_config(path)
        backend = backend_of(config) if config is not None else None
        (wanted if backend in available else skipped).append(path.parent.name)
    if not wanted:
        raise InclustError(
            f"no model in {repository} uses a backend this server has ({', '.join(sorted(available))})",
            "write the repository with the python flavour (inclust-export --triton, the default writes both)",
        )
    return (None if not skipped else wanted), skipped


def stage_backends(env: ServerEnv, workdir: Path) -> Path:
    """``workdir/backends`` whose ``python/`` links the backend library and the stub for this Python."""
    folder = workdir / "backends" / "python"
    folder.mkdir(parents=True)
    for item in env.backend_dir.iterdir():
        if item.is_file():
            (folder / item.name).symlink_to(item)
    (folder / "triton_python_backend_stub").symlink_to(env.stub)
    return folder.parent
