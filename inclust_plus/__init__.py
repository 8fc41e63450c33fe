"""inclust-plus: inClust+ for single-cell multimodal data.

The namespace holds three layers with a one-way dependency:
``inclust_plus.training`` (PyTorch) -> ``inclust_plus.export`` (ONNX/TorchScript) ->
``inclust_plus.runtime`` (onnxruntime only). This top-level module, its torch-free helpers
(:mod:`inclust_plus.errors`, :mod:`inclust_plus.atomic`) and the export/runtime contract
(:mod:`inclust_plus.contract`: manifest dataclasses, reader, writer, graph table, preprocessing
plan; numpy only) may be imported by all three.
"""

__version__ = "0.1.0"

CHECKPOINT_FORMAT = "inclust-plus-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
MANIFEST_FORMAT_VERSION = 2  # 2: modalities, kind, inputs, outputs and a preprocessing plan per graph are required
COVARIATE_JOIN = "|"  # a model with several covariate keys: a cell's category is its values of those obs columns joined by this
