"""``Predictor(export_dir)``: the exported graphs on an in-memory AnnData/MuData, without files or torch.

For notebooks: the verbs of ``inclust-run`` on an object in memory. The training-side ``InClust``
verbs are this class too (:meth:`Predictor.from_manifest` on the model's in-memory manifest, with
the PyTorch module as the backend, training/torch_backend.py). Everything that decides numbers is the file runtime's own code: the manifest and graph
choice (:mod:`.manifest`), feature alignment and chunk reading (:mod:`.memory` over
:mod:`.inputs` / :mod:`.matrices` / :mod:`.chunks`), covariates (:mod:`.covariates`),
preprocessing (:mod:`.preprocess`) and the backend (:class:`.backend.OnnxBackend` by default), so
results equal ``inclust-run`` on the same export and cells. Result layout: :mod:`inclust_plus.results`.
"""

from __future__ import annotations

import functools
import logging
import warnings

import numpy as np
import pandas as pd

from inclust_plus import results as R
from inclust_plus.errors import InclustError
from inclust_plus.sparse import is_sparse

from .backend import Backend, OnnxBackend
from .chunks import chunk_reader
from .covariates import category_indices, resolve_covariates, resolve_target
from .layout_chunk import ChunkTap, Target
from .manifest import GraphEntry, Manifest, load_manifest, select_graph
from .memory import modality_views, open_memory, view_sources, warn_non_integer
from .signature import prepare as prepare_graph
from .stream import check_finite, check_outputs

log = logging.getLogger("inclust_plus.runtime")
# The shared runtime code names its fixes as CLI flags; a notebook user passes keyword arguments.
_FLAGS = (("--combination NAME", "combination=NAME"), ("--from/--to", "source=/target="), ("--covariate-key COL", "covariate_key=COL"),
          ("--covariate NAME", "covariate=NAME"), ("--target-covariate", "target_covariate"), ("--covariate-key", "covariate_key"),
          ("--covariate", "covariate"), ("--allow-missing", "allow_missing=True"), ("--layer", "layer="), ("--to", "target="))


def _keywords(func):
    """Re-raise the runtime's errors with keyword arguments in place of CLI flags."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except InclustError as err:
            problem, fix = err.problem, err.fix
            for flag, keyword in _FLAGS:
                problem = problem.replace(flag, keyword)
                fix = fix.replace(flag, keyword) if fix else fix
            raise InclustError(problem, fix) from None

    return wrapper


def _var_names(adata) -> set[str]:
    if hasattr(adata, "mod"):
        return {str(v) for m in adata.mod.values() for v in m.var_names}
    return {str(v) for v in adata.var_names}


def pick_graph(manifest, adata, decode: bool, combination=None, source=None, target=None) -> GraphEntry:
    """The graph named (or chosen by modalities), else the one whose inputs the AnnData covers best.

    Among graphs whose input features are all in ``var_names``, the one with the most inputs wins
    (then the one returning the most features); when none is covered, the one sharing the most
    features, so that the alignment error lists what is missing.
    """
    if combination or source or target:
        return select_graph(manifest, decode, combination, tuple(source or ()), tuple(target or ()))
    names = _var_names(adata)
    pool = [g for g in manifest.graphs if g.decodes == decode]
    covered = [g for g in pool if set(g.input_features) <= names]
    if not covered:
        if not pool:
            return select_graph(manifest, decode)  # says what the model has instead
        # the closest graph: opening the input for it names the features that are missing
        return max(pool, key=lambda g: (len(set(g.input_features) & names), len(g.output_features)))
    best = max(covered, key=lambda g: (len(g.input_features), len(g.output_features)))
    return best


class Predictor:
    """An export folder ready to run on AnnData objects: ``Predictor("export/").impute(adata)``."""

    def __init__(self, export_dir, device: str = "auto", backend: Backend | None = None, batch_size: int = 4096):
        self._setup(load_manifest(export_dir), backend if backend is not None else OnnxBackend(device), batch_size)

    @classmethod
    def from_manifest(cls, manifest: Manifest, backend: Backend, batch_size: int = 4096) -> "Predictor":
        """A manifest already in memory and the backend that runs its graphs (the training-side
        ``InClust`` passes its own, built by the exporter's code, with the PyTorch module as backend)."""
        self = cls.__new__(cls)
        self._setup(manifest, backend, batch_size)
        return self

    def _setup(self, manifest: Manifest, backend: Backend, batch_size: int) -> None:
        if batch_size < 1:
            raise InclustError(f"batch_size must be at least 1, not {batch_size}", "pass a positive batch size")
        self.manifest, self.backend, self.batch_size = manifest, backend, batch_size

    def __repr__(self) -> str:
        m = self.manifest
        graphs = ", ".join(g.describe() for g in m.graphs)
        return (f"Predictor(model {m.model_name!r}, latent {m.latent_dim}, covariates {list(m.covariate_categories)}, "
                f"{len(m.label_categories)} labels, graphs: {graphs})")

    def close(self) -> None:
        self.backend.close()

    # --- the shared loop ----------------------------------------------------------------------
    def _checked_batch(self, graph, x, covariate, target_covariate, start: int, stop: int) -> dict[str, np.ndarray]:
        """One batch through the backend, its outputs checked against the graph's declared widths and for
        non-finite values: rows ``start`` to ``stop`` of the input, every door's batch."""
        res = self.backend.run(graph, x, covariate, target_covariate)
        check_outputs(graph, self.manifest, res, stop - start)
        check_finite(graph, res, start)
        return res

    def _run(self, adata, graph, layer, covariate_key, covariate, target_covariate, allow_missing, library_of=()):
        """Run ``graph`` (chosen by :func:`pick_graph`) over every batch; also the library sizes of the
        modalities in ``library_of``, taken from each batch's raw values as the chunk reader reads them
        (:mod:`.layout_chunk`)."""
        m = self.manifest
        data = open_memory(adata, graph, layer, allow_missing)
        covs = resolve_covariates(m, data, covariate_key, covariate, graph)
        tgt, tgt_name = resolve_target(m, graph, target_covariate) if graph.decodes else (None, "none")
        prepare_graph(self.backend, graph, m)
        n, bs = data.n_obs, self.batch_size
        read = chunk_reader(data, graph.runtime_plan, f"the AnnData {data.element}")
        buf, cbuf = np.zeros((min(bs, n), data.n_inputs), np.float32), np.zeros(min(bs, n), np.int64)
        tbuf = np.zeros(min(bs, n), np.int64)
        raw_input = {"raw": Target(data.parts, data.n_inputs, dense=True)} if library_of else None
        columns = graph.preprocessing_plan.columns_by_modality()
        sizes: dict[str, list[np.ndarray]] = {mm: [] for mm in library_of}
        out: dict[str, np.ndarray] = {}
        for s in range(0, n, bs):
            e = min(n, s + bs)
            tap = ChunkTap(raw_input, s, e) if raw_input else None
            x = read(s, e, buf, tap)
            if tap is not None:
                for mm, v in R.library_sizes(tap.finish().matrices["raw"], columns, library_of).items():
                    sizes[mm].append(v)
            res = self._checked_batch(graph, x, covs.take(s, e, cbuf), None if tgt is None else tgt.take(s, e, tbuf), s, e)
            for k, v in res.items():
                out.setdefault(k, np.empty((n, v.shape[1]), np.float32))[s:e] = v
        prov = {"graph": graph.name, "graph_sha256": graph.sha256, "model_name": m.model_name, "model_sha256": m.model_sha256,
                "input_element": data.element, "covariate": covs.description, "target_covariate": tgt_name,
                "input_modalities": list(graph.input_modalities), "output_modalities": list(graph.output_modalities),
                "missing_features": list(data.missing), "label_key": m.label_key, **self.backend.provenance()}
        return data, {mm: np.concatenate(v) for mm, v in sizes.items()}, out, prov

    @_keywords
    def run_arrays(self, graph: GraphEntry, x, covariate, target_covariate=None) -> dict[str, np.ndarray]:
        """``graph`` on ``x`` [cells, graph inputs], values already aligned and preprocessed (dense, or a
        CSR matrix densified one batch at a time): the tensor-level door (``InClust.predict``).

        ``covariate``/``target_covariate`` are category names, one or one per cell (target None: each
        cell's own), looked up as ``covariate=``/``target_covariate=`` are; the graph is prepared and
        its outputs checked as in :meth:`_run`. ``graph`` may be one the manifest does not list
        (``InClust.predict`` builds one per feature set)."""
        m, n = self.manifest, x.shape[0]
        cov = np.array(np.broadcast_to(category_indices(m, covariate, "--covariate"), (n,)))
        tgt = cov if target_covariate is None else np.array(np.broadcast_to(category_indices(m, target_covariate, "--target-covariate"), (n,)))
        prepare_graph(self.backend, graph, m)
        out: dict[str, list[np.ndarray]] = {}
        for s in range(0, n, self.batch_size):
            e = min(n, s + self.batch_size)
            block = x[s:e].toarray() if is_sparse(x) else x[s:e]
            res = self._checked_batch(graph, block, cov[s:e], tgt[s:e], s, e)
            for k, v in res.items():
                out.setdefault(k, []).append(v)
        if not out:  # no cells: each output empty, at its declared width
            return {t.name: np.zeros((0, t.shape[1]), np.float32) for t in graph.outputs}
        return {k: np.concatenate(v) for k, v in out.items()}

    # --- verbs ----------------------------------------------------------------------------------
    @_keywords
    def get_latent_representation(self, adata, combination=None, source=None, layer=None, covariate_key=None, covariate=None,
                                  allow_missing=False, inplace: bool = True) -> np.ndarray:
        """The batch-corrected latent [cells, latent_dim]; also ``adata.obsm["X_inclust"]`` when ``inplace``."""
        graph = pick_graph(self.manifest, adata, False, combination, source)
        warn_non_integer(adata, graph, layer, self.manifest.preprocessing)
        _, _, out, _ = self._run(adata, graph, layer, covariate_key, covariate, None, allow_missing)
        if inplace:
            adata.obsm["X_inclust"] = out["latent"]
        return out["latent"]

    @_keywords
    def predict_labels(self, adata, combination=None, source=None, layer=None, covariate_key=None, covariate=None,
                       allow_missing=False, inplace: bool = True) -> pd.DataFrame:
        """Most likely label and its probability per cell; also ``obs["inclust_label"(+"_probability")]``."""
        if not self.manifest.label_categories:
            raise InclustError("the model has no label categories to annotate with", "use get_latent_representation for the latent only")
        graph = pick_graph(self.manifest, adata, False, combination, source)
        data, _, out, _ = self._run(adata, graph, layer, covariate_key, covariate, None, allow_missing)
        table = R.label_table(out["label_probs"], self.manifest.label_categories, data.frame.index)
        if inplace:
            adata.obs[R.LABEL_COLUMN] = table[R.LABEL_COLUMN].to_numpy()
            adata.obs[R.PROBABILITY_COLUMN] = table[R.PROBABILITY_COLUMN].to_numpy()
        return table

    @_keywords
    def impute(self, adata, combination=None, source=None, target=None, layer=None, covariate_key=None, covariate=None,
               target_covariate=None, allow_missing=False, output_scale: str = "model", imputed_into: str = "layer", command="impute"):
        """A new AnnData over the graph's output features (measured values kept, imputed ones flagged).

        See :mod:`inclust_plus.results` for the layout; ``output_scale`` is model, log1p or counts.
        """
        R.check_choice(imputed_into)
        m = self.manifest
        graph = pick_graph(m, adata, True, combination, source, target)
        converter = R.ScaleConverter(graph.output_features, m.schema(), m.preprocessing, output_scale, graph.input_modalities)
        warn_non_integer(adata, graph, layer, self.manifest.preprocessing)
        data, library, out, prov = self._run(adata, graph, layer, covariate_key, covariate, target_covariate, allow_missing,
                                             converter.needs_library)
        values = converter.convert(out["y"], library)
        prov.update(command=command, output_scale=output_scale, scale=converter.description(),
                    **R.spread_provenance(converter, graph.has_spread, prov.pop("spread", None)))
        spread = None
        if graph.has_spread and converter.spread_reason is None:
            spread = converter.convert_spread(out["y_std"], library)
        elif graph.has_spread:
            warnings.warn(f"layers['{R.STD_LAYER}'] is not written: {converter.spread_reason}", UserWarning, stacklevel=3)
        return R.decoded_anndata(data.frame, view_sources(modality_views(adata, graph), layer), graph.output_features, converter.modality_of,
                                 values, out["latent"], out["label_probs"], m.label_categories, imputed_into, prov, per_modality=command == "generate",
                                 spread=spread)

    @_keywords
    def generate(self, adata, combination=None, source=None, target=None, **kwargs):
        """:meth:`impute` for another modality: also one ``obsm["inclust_<modality>"]`` per output modality."""
        return self.impute(adata, combination, source, target, command="generate", **kwargs)
