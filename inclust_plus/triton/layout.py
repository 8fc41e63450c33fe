"""The names inside a Triton model repository written by :mod:`.repository`.

Shared by the writer, the client (which looks for ``<graph>`` then ``<graph>_python``) and the local
server (which loads only the models its build has a backend for), so they cannot drift apart.
"""

from __future__ import annotations

FLAVOURS = ("onnxruntime", "python", "both")  # which backends a repository gets models for
PYTHON_SUFFIX = "_python"  # <graph>_python: the same graph in Triton's Python backend
CSR_SUFFIX = "_csr"  # <graph>_csr: the graph's CSR-fed flavour (values, indices, rows)
LABELS_FILE = "labels.txt"  # label names, one a line, in label_probs order
INDEX_FILE = "inclust_triton.json"  # what the writer wrote: the models and the manifest's sha256
CONFIG_FILE = "config.pbtxt"
REPOSITORY_FORMAT = "inclust-triton-repository"


def graph_of(model: str, python: bool) -> str:
    """The served graph (``<graph>`` or ``<graph>_csr``) of a Triton model name."""
    return model.removesuffix(PYTHON_SUFFIX) if python else model
