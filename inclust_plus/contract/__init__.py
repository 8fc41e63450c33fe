"""The contract between export and runtime, torch-free (numpy and the standard library only).

* :mod:`.graphs` — the graph table: each graph kind's inputs and outputs (:data:`GRAPH_SPECS`).
* :mod:`.plan` — a graph's preprocessing plan and :func:`apply`, the one numpy implementation.
* :mod:`.manifest` — ``manifest.json`` as frozen dataclasses (:class:`Manifest`, :class:`GraphEntry`).
* :mod:`.manifest_io` — the one writer (:func:`write_manifest`) and the one reader (:func:`read_manifest`).
* :mod:`.schema` — the field-by-field checks the reader runs before trusting a manifest.
* :mod:`.files` — the files a manifest pins by sha256, read checked (runtime and Triton).
* :mod:`.description` / :mod:`.description_io` — the checkpoint's model description (training -> export) as
  frozen dataclasses, with its one writer and one reader.
* :mod:`.combinations`, :mod:`.plan_builder`, :mod:`.manifest_builder` — a checkpoint description's
  graphs, their preprocessing plans and the manifest, built by the exporter and, for the
  in-memory PyTorch model, by training (which may not import export).

Export builds these objects and writes them; the runtime, the Triton repository writer and the
tests read them back. Nothing here imports torch, onnx or onnxruntime.
"""

from .graphs import CSR_GRAPH_SPECS, GRAPH_SPECS, INPUT_FORMATS, GraphIO, TensorSpec, graph_io
from .manifest import Covariate, GraphEntry, GraphSignature, Labels, Manifest, Modality, ModelInfo, TensorEntry, Variant
from .manifest_io import dumps, from_json, graph_to_json, plan_from_json, plan_to_json, read_manifest, to_json, write_manifest
from .plan import IDENTITY, ModalityPlan, PreprocessPlan, apply
from .schema import REEXPORT

__all__ = [
    "CSR_GRAPH_SPECS", "GRAPH_SPECS", "INPUT_FORMATS", "GraphIO", "TensorSpec", "graph_io",
    "Covariate", "GraphEntry", "GraphSignature", "Labels", "Manifest", "Modality", "ModelInfo", "TensorEntry", "Variant",
    "dumps", "from_json", "graph_to_json", "plan_from_json", "plan_to_json", "read_manifest", "to_json", "write_manifest",
    "IDENTITY", "ModalityPlan", "PreprocessPlan", "apply", "REEXPORT",
]
