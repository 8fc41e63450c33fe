"""Check one chunk of aligned input, and apply the graph's preprocessing plan to it in numpy.

Graphs exported without ``--fold-preprocessing`` expect preprocessed values, so the runtime
applies the plan the manifest gives for that graph (``GraphEntry.preprocessing_plan``: which
input columns belong to which modality, ``normalize_total``, ``log1p``, per-column scales) with
the contract's one implementation, :func:`inclust_plus.contract.apply`. Graphs with folded
preprocessing take raw values (``GraphEntry.runtime_plan`` is then empty).

Validation happens on the raw values before preprocessing (and a counts model given non-integer
values is warned about, :func:`non_integer_warning`): NaN/inf are always errors, and so are
negative values, because every inClust+ model is trained on counts or on values scaled to [0, 1]
(and log1p / library-size normalisation are undefined for negative input).
"""

from __future__ import annotations

import numpy as np

from inclust_plus.contract.plan import PreprocessPlan, apply
from inclust_plus.errors import InclustError

__all__ = ["PreprocessPlan", "apply_preprocessing", "check_values", "counts_modalities", "non_integer_warning"]


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


def counts_modalities(preprocessing: dict) -> list[str]:
    """Modalities whose model expects raw counts (library-size normalisation or log1p)."""
    return [m for m, s in preprocessing.items() if s and (s.get("normalize_total") or s.get("log1p"))]


def non_integer_warning(x: np.ndarray, modality: str) -> str | None:
    """A warning text when values given to a counts model are not whole numbers (likely log-normalised)."""
    values = x.data if hasattr(x, "data") and not isinstance(x, np.ndarray) else np.asarray(x)
    sample = np.asarray(values).ravel()[:1_000_000]
    if sample.size and not np.array_equal(sample, np.round(sample)):
        return (f"the model expects raw counts for {modality!r} (it normalises and log-transforms them itself) "
                "but the input holds non-integer values; pass raw counts (e.g. layer='counts' / --layer counts)")
    return None


def apply_preprocessing(x: np.ndarray, plan: PreprocessPlan) -> None:
    """Apply ``plan`` to the float32 array ``x`` [cells, inputs] in place (the contract's :func:`apply`)."""
    apply(x, plan)
