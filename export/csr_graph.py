"""The front of a CSR-fed graph: a batch's stored entries scattered into a dense zero matrix.

Why: single-cell matrices are 80-95% zeros, and on a GPU the host-to-device copy of a dense batch
costs more than the whole network (issue 11). A CSR graph takes only the stored entries
(``values`` float32, ``indices`` int32 input columns, ``rows`` int32 cell of each entry; the
batch size is the length of ``covariate``) and densifies them on the device with one
ScatterElements into zeros, so ~12 bytes per stored value cross the bus instead of 4 bytes per
input column. Everything after the scatter (preprocessing, L2 norm, layers) is the dense graph's
own nodes, so both flavours compute the same function by construction; the entries of one cell
must be unique (the runtime feeds canonical CSR: duplicates summed, see runtime/csr_feed.py).
The model's library-size normalisation sums the scattered row, which holds exactly the stored
values; log1p(0) = 0 and the folded per-feature scale keep zeros zero, so cells with no stored
value (an all-zero row) come out as the dense graph's empty cells.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto


def densify(b, n_inputs: int) -> str:
    """Nodes turning (values, indices, rows, covariate) into the dense ``[batch, n_inputs]`` input; returns its name."""
    i64 = TensorProto.INT64
    width = b.const("csr.width", np.asarray([n_inputs], dtype=np.int64))
    batch = b.op("Shape", ["covariate"], "csr.batch")  # [batch]
    flat_size = b.op("Mul", [batch, width], "csr.flat_size")
    zeros = b.op("ConstantOfShape", [flat_size], "csr.zeros", value=_float_zero())
    rows = b.op("Cast", ["rows"], "csr.rows64", to=i64)
    cols = b.op("Cast", ["indices"], "csr.cols64", to=i64)
    scalar_width = b.const("csr.width_scalar", np.asarray(n_inputs, dtype=np.int64))
    flat = b.op("Add", [b.op("Mul", [rows, scalar_width], "csr.row_offsets"), cols], "csr.flat_index")
    scattered = b.op("ScatterElements", [zeros, flat, "values"], "csr.flat_dense", axis=0)
    shape = b.op("Concat", [batch, width], "csr.dense_shape", axis=0)
    return b.op("Reshape", [scattered, shape], "x.dense")


def _float_zero():
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero")


def csr_feeds(x: np.ndarray) -> dict[str, np.ndarray]:
    """CSR feeds (``values``, ``indices``, ``rows``) of a dense batch ``x``: its non-zeros in row-major order."""
    rows, cols = np.nonzero(x)
    return {"values": np.ascontiguousarray(x[rows, cols], dtype=np.float32), "indices": cols.astype(np.int32), "rows": rows.astype(np.int32)}
