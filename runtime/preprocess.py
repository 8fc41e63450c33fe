"""Check one chunk of aligned input, and apply the graph's preprocessing plan to it in numpy.

Graphs exported without ``--fold-preprocessing`` expect preprocessed values, so the runtime
applies the plan the manifest gives for that graph (``GraphEntry.preprocessing_plan``: which
input columns belong to which modality, ``normalize_total``, ``log1p``, per-column scales) with
the contract's one implementation, :func:`inclust_plus.contract.apply`. Graphs with folded
preprocessing take raw values (``GraphEntry.runtime_plan`` is then empty).

Validation happens on the raw values before preprocessing: NaN/inf are always errors, and so are
negative values, because every inClust+ model is trained on counts or on values scaled to [0, 1]
(and log1p / library-size normalisation are undefined for negative input).
"""

from __future__ import annotations

import numpy as np

from inclust_plus.contract.plan import PreprocessPlan, apply
from inclust_plus.errors import InclustError

__all__ = ["PreprocessPlan", "apply_preprocessing", "check_values"]


def check_values(x: np.ndarray, first_row: int, source: str) -> None:
    """Reject NaN/inf and negative values, naming the first offending cell."""
    finite = np.isfinite(x)
    if not finite.all():
        row = int(np.argwhere(~finite)[0, 0])
        raise InclustError(f"{source} holds NaN or infinite values (first in cell {first_row + row})", "clean or impute them before running the model")
    if (x < 0).any():
        row = int(np.argwhere(x < 0)[0, 0])
        raise InclustError(
            f"{source} holds negative values (first in cell {first_row + row}) but the model expects non-negative input",
            "pass raw counts or the non-negative values the model was trained on",
        )


def apply_preprocessing(x: np.ndarray, plan: PreprocessPlan) -> None:
    """Apply ``plan`` to the float32 array ``x`` [cells, inputs] in place (the contract's :func:`apply`)."""
    apply(x, plan)
