"""A graph file against its manifest entry, checked when the graph is loaded (issue 25, defect 5).

The manifest is read from a folder anyone may edit; the graph is what was exported. Where they
disagree (a feature list shortened, a covariate category added) onnxruntime would fail deep in a
call with its own traceback, or worse compute on misaligned columns. So, before any work:

* :func:`check_signature`: the session's inputs and outputs, in order, with their dtypes and static
  widths, must be the ones the manifest declares for that graph (the schema already ties those
  declarations to the feature lists, latent size and label count: :mod:`inclust_plus.contract.schema`);
* :func:`probe_covariates`: one call on two empty cells with the first and the last covariate
  category of the manifest: a graph exported with fewer categories cannot take the last one
  (onnxruntime, TorchScript and Triton alike).
"""

from __future__ import annotations

import logging

import numpy as np

from inclust_plus.contract.schema import REEXPORT
from inclust_plus.errors import InclustError

ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float16)": "float16",
             "tensor(double)": "float64"}
log = logging.getLogger("inclust_plus.runtime")
EDITED = "the manifest was edited or belongs to another export; " + REEXPORT


def _text(name: str, dtype: str, shape) -> str:
    return f"{name} {dtype}[{', '.join(str(d) for d in shape)}]"


def check_signature(graph, session) -> None:
    """Raise unless ``session`` (onnxruntime) takes and returns what ``graph``'s manifest entry declares."""
    for side, declared, actual in (("inputs", graph.inputs, session.get_inputs()), ("outputs", graph.outputs, session.get_outputs())):
        want = [(t.name, t.dtype, tuple(t.shape)) for t in declared]
        got = [(a.name, ORT_TYPES.get(a.type, a.type), tuple(a.shape)) for a in actual]
        if [w[:2] for w in want] != [g[:2] for g in got]:
            raise InclustError(f"graph {graph.name!r} ({graph.path.name}) has {side} {', '.join(f'{n} {d}' for n, d, _ in got)}, "
                               f"the manifest says {', '.join(f'{n} {d}' for n, d, _ in want)}", EDITED)
        for (name, dtype, w), (_, _, g) in zip(want, got):
            fixed = [(i, a, b) for i, (a, b) in enumerate(zip(w, g)) if isinstance(a, int) and isinstance(b, int) and a != b]
            if len(w) != len(g) or fixed:
                raise InclustError(f"graph {graph.name!r} ({graph.path.name}) has {_text(name, dtype, g)}, "
                                   f"the manifest says {_text(name, dtype, w)}", EDITED)


def probe_covariates(backend, graph, manifest) -> None:
    """One call with covariates (first, last) and targets (last, first), on every backend that has a
    ``probe`` (onnxruntime, TorchScript, Triton): each runs a graph the manifest may disagree with
    (Triton's is this manifest's graph, ``TritonBackend.prepare`` compares their sha256s, but the
    manifest's categories may still have been edited).

    Exempt, having no ``probe``: the in-memory PyTorch backend (its manifest is built from the very
    module it runs, so they cannot disagree). The engine's own message is left out of the error
    (it is in the debug log), so that it is the same line whichever backend found the mismatch.
    """
    probe = getattr(backend, "probe", None)
    if probe is None:
        return
    n = len(manifest.covariate_categories)
    if graph.input_format == "csr":
        feeds = {"values": np.zeros(0, np.float32), "indices": np.zeros(0, np.int32), "rows": np.zeros(0, np.int32)}
    else:
        feeds = {"x": np.zeros((2, len(graph.input_features)), np.float32)}

    def runs(cov: np.ndarray) -> bool:
        try:
            probe(graph, {**feeds, "covariate": cov, "target_covariate": cov[::-1].copy()})
        except InclustError:
            raise
        except Exception as err:  # onnxruntime's and torch's own exception types
            log.debug("probe of graph %r with covariates %s: %s", graph.name, cov.tolist(), err)
            return False
        return True

    # the first category alone first: a graph that fails even so disagrees with the manifest on more
    # than the categories (TorchScript has no signature to compare, as check_signature does for ONNX)
    if not runs(np.zeros(2, np.int64)):
        raise InclustError(f"graph {graph.name!r} does not run on the inputs its manifest entry declares", EDITED)
    if not runs(np.asarray([0, n - 1], np.int64)):
        raise InclustError(f"graph {graph.name!r} cannot take the manifest's {n} covariate categories (the last is "
                           f"{manifest.covariate_categories[-1]!r})", EDITED)


def prepare(backend, graph, manifest) -> None:
    """Load ``graph`` in ``backend`` (verified against its sha256) and probe it: the one door of the run loop and the Predictor."""
    backend.prepare(graph)
    probe_covariates(backend, graph, manifest)
