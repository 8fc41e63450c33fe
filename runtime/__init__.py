"""Torch-free runtime: run exported inClust+ graphs with onnxruntime on h5ad/h5mu files.

Reads only ``manifest.json`` and the ONNX files written by ``inclust-export`` (see
docs/ARCHITECTURE.md). Never imports torch, ``inclust_plus.training`` or ``inclust_plus.export``;
the one torch path (``--torchscript``) lives in :mod:`.torchscript_backend` and imports torch
on demand. Python use::

    from inclust_plus.runtime import RunOptions, run
    run(RunOptions("impute", onnx="export/", input="query.h5ad", output="imputed.h5ad"))
    imputed = Predictor("export/").impute(adata)     # in memory, an AnnData in and out

The manifest's dataclasses, reader and preprocessing plan are the contract
(:mod:`inclust_plus.contract`). Modules: :mod:`.manifest` (graph choice, checked file reads), :mod:`.inputs` / :mod:`.matrices`
(chunked reading and feature alignment), :mod:`.covariates`, :mod:`.preprocess`,
:mod:`.backend` (Backend protocol, onnxruntime), :mod:`.output` (streamed h5ad writer),
:mod:`.runner` (the loop), :mod:`.predictor` / :mod:`.memory` (in-memory AnnData),
:mod:`.layout` (what decoded outputs hold), :mod:`.info`, :mod:`.cli` (``inclust-run`` and its extension points).
"""

from .covariates import category_indices, covariate_names
from .memory import open_memory, read_rows
from .predictor import Predictor
from .runner import RunOptions, run

# open_memory, read_rows and covariate_names: the input side for a reader of new cells that is not a
# graph run (inclust-map's query, training/assembly/query_data.py); category_indices: the covariate
# lookup of every door (InClust.covariate_index)
__all__ = ["Predictor", "RunOptions", "category_indices", "covariate_names", "open_memory", "read_rows", "run"]
