"""Triton on the command line: the ``--triton`` options of the run commands and ``inclust-run serve``.

:mod:`inclust_plus.runtime.cli` imports this module by name and adds :data:`RUN_OPTIONS` to every
run command (impute, generate, embed, annotate), asks :func:`triton_backend` for a backend before it
falls back to the local one, and adds :data:`serve_command`. Nothing here imports tritonclient:
the client does that when ``--triton`` is given, the server's config reader when ``serve`` runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from inclust_plus.errors import InclustError, report_errors

from .client import PROTOCOLS, TritonBackend
from .server import LOOPBACK, serve
from .server_env import ENV_VAR

DEFAULT_CONCURRENCY = 4

RUN_OPTIONS = [
    click.Option(["--triton"], metavar="URL", default=None,
                 help="Run the graph on this Triton server (HOST:PORT for gRPC, or grpc://... / http://...) instead of locally."),
    click.Option(["--model", "triton_model"], metavar="NAME", default=None,
                 help="Triton model name (default: the graph's name, else <graph>_python)."),
    click.Option(["--triton-protocol"], type=click.Choice(PROTOCOLS), default=None,
                 help="Protocol when the URL has no scheme (default grpc)."),
    click.Option(["--triton-concurrency"], type=int, default=DEFAULT_CONCURRENCY, show_default=True,
                 help="Requests in flight at once with --triton."),
]


def triton_backend(extra: dict, options) -> TritonBackend | None:
    """The Triton backend when ``--triton URL`` was given (``extra``: the values of :data:`RUN_OPTIONS`
    by parameter name), else None; the Triton-only flags without ``--triton`` are an error."""
    url = extra.get("triton")
    concurrency = extra.get("triton_concurrency", DEFAULT_CONCURRENCY)
    if concurrency is not None and concurrency < 1:  # 0 and -4 alike, with or without --triton (issue 25)
        raise InclustError(f"--triton-concurrency must be at least 1, not {concurrency}", f"pass the requests in flight at once, e.g. {DEFAULT_CONCURRENCY}")
    if url is not None and not url.strip():  # an empty URL is a mistake (an unset shell variable), not "run locally"
        raise InclustError("--triton was given an empty URL", "pass the server as HOST:PORT (e.g. localhost:8001), or drop --triton to run locally")
    if not url:
        if extra.get("triton_model") or extra.get("triton_protocol"):
            raise InclustError("--model and --triton-protocol only apply with --triton URL", "add --triton or drop them")
        return None
    if getattr(options, "torchscript", False):
        raise InclustError("--triton and --torchscript are exclusive", "pass one of them")
    return TritonBackend(url, extra.get("triton_model"), extra.get("triton_protocol"), concurrency or DEFAULT_CONCURRENCY)


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
