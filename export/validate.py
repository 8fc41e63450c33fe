"""Parity of every written graph with the PyTorch model, checked as part of each export.

The reference is the contract in docs/ARCHITECTURE.md: ``module.predict`` on a zero-filled
full-width x with the input mask, written once in training/torch_backend.py (``run_graph``). A graph that differs by more than ``ATOL + RTOL * |value|`` on
any output fails the export, so a manifest never lists a graph that computes something else.

Why a relative part: float32 keeps about 7 significant digits, and the graph sums in another order
than PyTorch (over the folded columns only, in onnxruntime's kernels). On outputs of order 1 the
two agree within ~1e-6, but a trained imputation model's latent reaches |z| ~ 10, where the same
rounding gives differences of up to 9.8e-6 (measured on a one-network model of the embedded MERFISH
slice): an absolute 1e-5 alone would fail correct exports at random. RTOL = 1e-6 is about 8 ulp.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from inclust_plus.errors import InclustError
from inclust_plus.training.network import correction
from inclust_plus.training.torch_backend import blend_neighbours, run_graph
from inclust_plus.contract.combinations import Combination
from inclust_plus.contract.plan import PreprocessPlan


ATOL = 1e-5
RTOL = 1e-6


def check_finite_weights(module) -> None:
    """Refuse a model whose parameters or buffers hold NaN or infinity (a training run that diverged):
    every graph would compute NaN, and an all-NaN parity check would pass as 0.0 (issue 25)."""
    bad = [(name, int((~torch.isfinite(t)).sum()), t.numel()) for name, t in (*module.named_parameters(), *module.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        name, n, total = bad[0]
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise InclustError(f"the model's weights are not finite ({n} of {total} values of {name} are NaN or infinite{more}): its training diverged",
                           "retrain with a lower learning rate (inclust-train stops when the loss is not finite) and export that model")


def random_feeds(combination: Combination, n_covariates: int, batch: int, seed: int = 0, plan: PreprocessPlan | None = None) -> dict[str, np.ndarray]:
    """A seeded batch for ``combination`` in the range the graph is fed in use.

    Preprocessed inputs are [0, 1) values; with a ``plan`` (raw inputs) the columns of modalities
    that are normalised or log-transformed get counts, and the others (e.g. 0/1 ATAC peaks, or values
    only divided by a scale) stay in [0, 1): feeding counts where the model expects [0, 1) would test
    float32 rounding on magnitudes no real input has, not the graph.
    """
    rng = np.random.default_rng(seed)
    n = len(combination.inputs)
    x = rng.random((batch, n))
    if plan is not None:
        counts = rng.gamma(0.5, 20.0, size=(batch, n)) * (rng.random((batch, n)) > 0.3)
        for start, end, group in plan.runs:
            if plan.groups[group].has_ops:
                x[:, start:end] = np.round(counts[:, start:end])
        if batch > 1:
            x[0] = 0.0  # an empty cell exercises the zero-library-size rule
    feeds = {
        "x": x.astype(np.float32),
        "covariate": rng.integers(0, n_covariates, size=batch).astype(np.int64),
        "target_covariate": rng.integers(0, n_covariates, size=batch).astype(np.int64),
    }
    return {t.name: feeds[t.name] for t in combination.spec.inputs}


def module_inputs(feeds: dict[str, np.ndarray], plan: PreprocessPlan | None) -> np.ndarray:
    """The ``x`` the module reads for a graph's feeds: raw inputs pass through the folded preprocessing ``plan``."""
    return feeds["x"] if plan is None else plan.apply(feeds["x"])


def reference(module, combination: Combination, feeds: dict[str, np.ndarray], plan: PreprocessPlan | None = None,
              neighbours=None) -> dict[str, np.ndarray]:
    """What the graph must return: the reference semantics of :func:`~inclust_plus.training.torch_backend.run_graph`
    (the in-memory model's backend runs the same function; ``plan``: raw inputs), with ``neighbours``
    (a NeighbourTable) blended into ``y`` as that backend does (``blend_neighbours``)."""
    x = module_inputs(feeds, plan)
    names = [t.name for t in combination.spec.outputs]
    out = run_graph(module, combination.inputs, combination.outputs, x, feeds["covariate"], feeds.get("target_covariate"), names)
    return out if neighbours is None else blend_neighbours(module, neighbours, out, combination.inputs, combination.outputs, x, feeds["covariate"])


def run_onnx(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def run_torchscript(scripted, combination: Combination, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    args = [torch.from_numpy(feeds[t.name]) for t in combination.spec.inputs]
    with torch.no_grad():
        outs = scripted(*args)
    return {t.name: o.numpy() for t, o in zip(combination.spec.outputs, outs)}


def max_abs_diff(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> float:
    """Largest |got - want| over all outputs; inf for a missing output, a shape or NaN mismatch."""
    worst = 0.0
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape or not np.array_equal(np.isnan(g), np.isnan(w)):
            return float("inf")
        if g.size:
            worst = max(worst, float(np.nanmax(np.abs(g.astype(np.float64) - w.astype(np.float64)))))
    return worst


def within_tolerance(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float | None = None, rtol: float | None = None) -> bool:
    """Every |got - want| <= atol + rtol * |want| (default ATOL, RTOL; and nothing missing, misshapen or NaN where it should not be)."""
    atol = ATOL if atol is None else atol
    rtol = RTOL if rtol is None else rtol
    if max_abs_diff(got, want) == float("inf"):
        return False
    for name, w in want.items():
        w64 = w.astype(np.float64)
        diff = np.abs(got[name].astype(np.float64) - w64)
        if not np.all((diff <= atol + rtol * np.abs(w64)) | np.isnan(w64)):
            return False
    return True


def untied_rows(module, combination: Combination, feeds, plan, neighbours, latent: np.ndarray) -> np.ndarray:
    """Rows whose read-out is determined: not those whose k-th and (k+1)-th neighbours tie within float32 rounding,
    which may rightly pick either (the parity checks leave their ``y`` out, still comparing latent and labels)."""
    x = module_inputs(feeds, plan)
    return ~neighbours.tied_rows(latent, correction.corrected_rows(module, x, combination.inputs, feeds["covariate"]))


def rows_of_y(outputs: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """``outputs`` with ``y`` cut to the rows ``keep``."""
    return {**outputs, "y": outputs["y"][keep]}


def check_parity(
    module,
    combination: Combination,
    plan: PreprocessPlan | None,
    model_bytes: bytes,
    scripted=None,
    batch: int = 64,
    seed: int = 0,
    neighbours=None,
) -> dict[str, float]:
    """Max |diff| of onnxruntime (and TorchScript) against the reference; error above ``ATOL + RTOL * |value|``.

    ``neighbours``: the graph carries the read-out of this NeighbourTable (export/neighbours_graph.py).
    Rows whose k-th and (k+1)-th neighbours tie within float32 rounding may rightly pick either, so
    their ``y`` is left out (their latent and label probabilities are still compared)."""
    feeds = random_feeds(combination, module.config.n_covariates, batch, seed, plan)
    want = reference(module, combination, feeds, plan, neighbours)
    got = {"onnxruntime": run_onnx(model_bytes, feeds)}
    if scripted is not None:
        got["torchscript"] = run_torchscript(scripted, combination, feeds)
    if neighbours is not None:
        keep = untied_rows(module, combination, feeds, plan, neighbours, want["latent"])
        want, got = rows_of_y(want, keep), {k: rows_of_y(v, keep) for k, v in got.items()}
    for runtime, outputs in got.items():
        if not within_tolerance(outputs, want):
            raise InclustError(
                f"exported {combination.name!r} differs from the PyTorch model in {runtime} by {max_abs_diff(outputs, want):.3g} "
                f"(> {ATOL:g} + {RTOL:g} x |value|)",
                "this is a bug in the exporter; please report it",
            )
    return {runtime: max_abs_diff(outputs, want) for runtime, outputs in got.items()}


# float16 keeps ~3 significant digits: the fp16 graphs of the toy models differ from PyTorch by up to
# 1.3e-3 (outputs of order 1), and every task preset's passes this bound (tests/test_export_csr.py).
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2


def sparse_batch(feeds: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """``feeds`` with about 70% of x zeroed and the last cell left with no stored value at all."""
    rng = np.random.default_rng(seed)
    x = feeds["x"] * (rng.random(feeds["x"].shape) > 0.7)
    x[-1] = 0.0
    return {**feeds, "x": x.astype(np.float32)}


def formatted(feeds: dict[str, np.ndarray], input_format: str) -> dict[str, np.ndarray]:
    """Dense feeds as the graph flavour takes them (CSR: the non-zeros of x, see export/csr_graph.py)."""
    if input_format != "csr":
        return feeds
    from .csr_graph import csr_feeds

    return {**csr_feeds(feeds["x"]), **{k: v for k, v in feeds.items() if k != "x"}}


def check_variant_parity(
    module,
    combination: Combination,
    plan: PreprocessPlan | None,
    model_bytes: bytes,
    input_format: str,
    precision: str,
    dense_bytes: bytes | None = None,
    batch: int = 64,
    seed: int = 1,
    neighbours=None,
) -> dict[str, float]:
    """A CSR and/or float16 graph against the reference (and the dense float32 graph) on sparse cells.

    float32 graphs must meet the same bound as dense ones; float16 graphs ``FP16_ATOL + FP16_RTOL * |value|``.
    ``neighbours``: the graph carries that read-out (tied rows' ``y`` left out, :func:`untied_rows`).
    """
    feeds = sparse_batch(random_feeds(combination, module.config.n_covariates, batch, seed, plan), seed)
    want = reference(module, combination, feeds, plan, neighbours)
    atol, rtol = (FP16_ATOL, FP16_RTOL) if precision == "fp16" else (ATOL, RTOL)
    got = {"onnxruntime": run_onnx(model_bytes, formatted(feeds, input_format))}
    wants = {"onnxruntime": want}
    if dense_bytes is not None:
        wants["dense graph"] = run_onnx(dense_bytes, feeds)
        got["dense graph"] = got["onnxruntime"]
    if neighbours is not None:
        for what in list(got):
            keep = untied_rows(module, combination, feeds, plan, neighbours, wants[what]["latent"])
            wants[what], got[what] = rows_of_y(wants[what], keep), rows_of_y(got[what], keep)
    for what, outputs in got.items():
        if not within_tolerance(outputs, wants[what], atol, rtol):
            raise InclustError(
                f"exported {combination.name!r} ({input_format}, {precision}) differs from the "
                f"{'PyTorch model' if what == 'onnxruntime' else what} in onnxruntime by {max_abs_diff(outputs, wants[what]):.3g} (> {atol:g} + {rtol:g} x |value|)",
                "this is a bug in the exporter; please report it",
            )
    return {what: max_abs_diff(outputs, wants[what]) for what, outputs in got.items()}
