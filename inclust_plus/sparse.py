"""``is_sparse``: scipy.sparse.issparse without importing scipy.

Why: importing scipy.sparse takes ~0.3 s and pandas another ~0.3 s, on the critical path of every
``inclust-train`` run, whose training process reads no file itself (training/assembly/background.py reads
and assembles the data in a forked child while torch is imported). Nothing can be a scipy sparse
matrix before scipy.sparse has been imported (unpickling one imports it), so asking
``sys.modules`` first is exact.
"""

from __future__ import annotations

import sys


def is_sparse(x) -> bool:
    """Whether ``x`` is a scipy sparse matrix or array."""
    sp = sys.modules.get("scipy.sparse")
    return sp is not None and sp.issparse(x)
