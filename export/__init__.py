"""Export a trained inClust+ checkpoint to mask-folded ONNX graphs, TorchScript modules and a manifest.

One graph per modality combination: the first encoder layer keeps only the input features'
columns and the output layer only the requested features' rows, so a deployed graph takes exactly
the features a user has and returns exactly the ones they asked for. See docs/ARCHITECTURE.md.
"""

from .api import default_out_dir, export_model

__all__ = ["export_model", "default_out_dir"]
