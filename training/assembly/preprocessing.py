"""Per-modality preprocessing of raw values, recorded so export and runtime can repeat it.

Order (the same everywhere, see docs/ARCHITECTURE.md): library-size normalisation over the
modality's measured features, log1p, then division by a per-feature scale (the feature's maximum
over the training cells, which maps each feature into [0, 1] as the paper's sigmoid decoder expects).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from inclust_plus.contract.plan import PreprocessPlan, apply


@dataclass
class Preprocessing:
    normalize_total: float | None = None
    log1p: bool = False
    scale: str | None = None  # None | "max"

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def transform(x: np.ndarray, prep: Preprocessing, scale: np.ndarray | None = None) -> np.ndarray:
    """Normalise and log-transform dense ``x`` (cells x the modality's *measured* features).

    The library size is the sum over the columns given, so callers pass only measured columns.
    ``scale`` (from :func:`fit_scale`) divides column-wise when given. The arithmetic is the
    contract's :func:`inclust_plus.contract.apply`, the same the runtime and export use.
    """
    out = np.array(x, dtype=np.float32, copy=True)
    plan = PreprocessPlan.single(out.shape[1], normalize_total=prep.normalize_total, log1p=prep.log1p, scale=scale)
    return apply(out, plan)


def fit_scale(x: np.ndarray) -> np.ndarray:
    """Per-feature maximum (zero-filled unmeasured entries never raise it); 1 for all-zero features."""
    if not x.shape[0]:
        return np.ones(x.shape[1], np.float32)
    m = x.max(axis=0)
    mx = np.asarray(m.toarray() if hasattr(m, "toarray") else m, dtype=np.float32).ravel()
    mx[mx <= 0] = 1.0
    return mx
