"""The graph table: every graph kind's inputs and outputs, declared once.

The ONNX builder, the TorchScript wrapper, the parity check, the manifest writer and the runtime
all read :data:`GRAPH_SPECS` / :data:`CSR_GRAPH_SPECS`, so they can never disagree about names,
dtypes or order. Widths are symbolic here (``n_inputs`` ...); the manifest holds concrete shapes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; ``width`` names the size of axis 1 (None: a [batch] vector)."""

    name: str
    dtype: str
    width: str | None
    axis: str = "batch"  # the symbolic size of axis 0: "batch" (cells) or "nnz" (stored entries of a CSR batch)


@dataclass(frozen=True)
class GraphIO:
    """The ordered inputs and outputs of one graph kind."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def decodes(self) -> bool:
        """Whether the graph needs the decoder (it returns reconstructed features ``y``)."""
        return any(t.name == "y" for t in self.outputs)


_X = TensorSpec("x", "float32", "n_inputs")
_COV = TensorSpec("covariate", "int64", None)
_TARGET = TensorSpec("target_covariate", "int64", None)
_Y = TensorSpec("y", "float32", "n_outputs")
_LATENT = TensorSpec("latent", "float32", "latent_dim")
_PROBS = TensorSpec("label_probs", "float32", "n_labels")
# An ensemble's decoding graphs also return the members' per-feature standard deviation (population
# form, divided by K: training.network.module.InClustModule.predict(return_std=True)); one network's graphs do not.
Y_STD = TensorSpec("y_std", "float32", "n_outputs")

GRAPH_SPECS: dict[str, GraphIO] = {
    "impute": GraphIO(inputs=(_X, _COV, _TARGET), outputs=(_Y, _LATENT, _PROBS)),
    "embed": GraphIO(inputs=(_X, _COV), outputs=(_LATENT, _PROBS)),
}

# CSR flavour (export/csr_graph.py): a batch's stored entries instead of x. ``indices`` are graph
# input columns, ``rows`` the cell (0..batch-1) of each entry; the batch size is len(covariate).
_VALUES = TensorSpec("values", "float32", None, "nnz")
_INDICES = TensorSpec("indices", "int32", None, "nnz")
_ROWS = TensorSpec("rows", "int32", None, "nnz")
CSR_GRAPH_SPECS: dict[str, GraphIO] = {
    "impute": GraphIO(inputs=(_VALUES, _INDICES, _ROWS, _COV, _TARGET), outputs=(_Y, _LATENT, _PROBS)),
    "embed": GraphIO(inputs=(_VALUES, _INDICES, _ROWS, _COV), outputs=(_LATENT, _PROBS)),
}
INPUT_FORMATS = ("dense", "csr")
PRECISIONS = ("fp32", "fp16")
KINDS = tuple(GRAPH_SPECS)


def graph_io(kind: str, input_format: str = "dense", members: int = 1) -> GraphIO:
    """The table's entry for a graph kind and input format; ``y_std`` last for an ensemble's decoding graph."""
    spec = CSR_GRAPH_SPECS[kind] if input_format == "csr" else GRAPH_SPECS[kind]
    if members > 1 and spec.decodes:
        spec = GraphIO(spec.inputs, (*spec.outputs, Y_STD))
    return spec
