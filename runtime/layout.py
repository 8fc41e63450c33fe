"""What ``inclust-run impute|generate`` writes besides the model's values: the honest layout.

The layout is that of :mod:`inclust_plus.results` (shared with the in-memory Predictor and the
training API): the output's var is the graph's output features with the input's var columns,
``var["modality"]`` and ``var["inclust_imputed"]``; X keeps the measured values of the features the
input has (read again, raw, from the same X or layer), the model's values go to
``layers["inclust_imputed"]`` (or X with ``--imputed-into X``) in the ``--output-scale`` asked
for; the input's layers are carried over for the features it has; ``generate`` adds one
``obsm["inclust_<modality>"]`` per output modality. Everything here is planned before any output
is created (so a bad ``--output-scale`` costs nothing) and read chunk by chunk afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from inclust_plus import results as R
from inclust_plus.errors import InclustError

from .inputs import InputData, open_input
from .manifest import GraphEntry, Manifest
from .matrices import CsrRows
from .preprocess import PreprocessPlan

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem

log = logging.getLogger("inclust_plus.runtime")
CHECKED_ROWS = 1000  # rows looked at for the counts warning


@contextlib.contextmanager
def _quiet():
    """Re-opening the input for measured values must not repeat the missing-feature warning."""
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def schema(manifest: Manifest) -> list[dict]:
    return manifest.schema()


def warn_if_not_counts(data, plan: PreprocessPlan) -> None:
    """Warn when a model that normalises counts itself is given non-integer values (log-normalised X?)."""
    counting = [g for g in plan.active if g.has_ops]
    if not counting:
        return
    n = min(CHECKED_ROWS, data.n_obs)
    x = data.read(0, n, np.zeros((n, data.n_inputs), np.float32))
    for step in counting:
        text = R.non_integer_warning(x[:, step.columns], step.name)
        if text:
            log.warning(text.replace("layer='counts' / ", ""))
            return


def _groups(data: InputData, modalities) -> list:
    f = data.file
    if "mod" in f:
        return [f["mod"][m] for m in modalities if m in f["mod"]]
    return [f]


@dataclass
class Layout:
    """The planned output of a decoding command; :meth:`chunk` gives one chunk's arrays."""

    var: pd.DataFrame
    converter: R.ScaleConverter
    imputed_into: str
    per_modality: bool
    features: list[str]
    graph: GraphEntry
    modalities: list[dict]
    measured: InputData | None = None
    layers: dict[str, InputData] = field(default_factory=dict)
    library: InputData | None = None
    _colmaps: dict = field(default_factory=dict)

    @property
    def writes_spread(self) -> bool:
        """An ensemble's graph whose spread converts into the output scale: ``layers["inclust_std"]``."""
        return self.graph.has_spread and self.converter.spread_reason is None

    def provenance(self) -> dict:
        info = {"output_scale": self.converter.scale, "scale": self.converter.description(), "imputed_into": self.imputed_into,
                **R.spread_provenance(self.converter, self.graph.has_spread)}
        if self.per_modality:
            info["obsm_features"] = {m: [self.features[j] for j in cols] for m, cols in self.modality_columns().items()}
        return info

    def modality_columns(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for j, m in enumerate(self.converter.modality_of):
            out.setdefault(m, []).append(j)
        return out

    def _read(self, source: InputData, start: int, stop: int, width: int) -> np.ndarray:
        return source.read(start, stop, np.zeros((stop - start, width), np.float32))

    def _sparse(self, source: InputData, start: int, stop: int) -> sp.csr_matrix:
        """The chunk's values of ``source`` as CSR over the output features.

        CSR input is remapped on its stored values only (about 4x faster than filling a dense
        block and compressing it again, measured in benchmarks/output_layout.py); duplicates are
        summed as the dense path sums them. Other layouts go through the dense reader.
        """
        n, width = stop - start, len(self.features)
        if not all(isinstance(p.rows, CsrRows) for p in source.parts):
            return sp.csr_matrix(self._read(source, start, stop, width))
        pieces = []
        for p in source.parts:
            m = p.rows
            colmap = self._colmaps.get(id(p))
            if colmap is None:
                colmap = np.full(m.n_cols, -1, dtype=np.int64)
                colmap[p.src] = p.dst
                self._colmaps[id(p)] = colmap
            lo, hi = int(m.indptr[start]), int(m.indptr[stop])
            cols = colmap[np.asarray(m.indices[lo:hi])]
            keep = cols >= 0
            kept_before = np.concatenate([[0], np.cumsum(keep)])  # kept values before each stored one
            indptr = kept_before[m.indptr[start : stop + 1] - lo]
            piece = sp.csr_matrix((np.asarray(m.data[lo:hi], dtype=np.float32)[keep], cols[keep], indptr), shape=(n, width))
            piece.sum_duplicates()  # also sorts the column indices of each row
            pieces.append(piece)
        if not pieces:
            return sp.csr_matrix((n, width), dtype=np.float32)
        return pieces[0] if len(pieces) == 1 else sp.csr_matrix(sum(pieces[1:], pieces[0]), dtype=np.float32)

    def _library(self, start: int, stop: int) -> dict:
        if self.library is None:
            return {}
        raw = self._read(self.library, start, stop, self.library.n_inputs)
        return R.library_sizes(raw, self.graph.preprocessing_plan.columns_by_modality(), self.converter.needs_library)

    def spread(self, start: int, sd: np.ndarray) -> np.ndarray:
        """The members' std of cells ``start..start+len(sd)`` in the output scale (only when :attr:`writes_spread`)."""
        return self.converter.convert_spread(sd, self._library(start, start + len(sd)) if self.converter.needs_library else None)

    def chunk(self, start: int, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(model values in the output scale, measured values and carried layers as CSR) of cells ``start..start+len(y)``."""
        stop = start + len(y)
        lib = self._library(start, stop)
        values = self.converter.convert(y, lib)
        width = len(self.features)
        measured = self._sparse(self.measured, start, stop) if self.measured is not None else sp.csr_matrix((len(y), width), dtype=np.float32)
        layers = {name: self._sparse(src, start, stop) for name, src in self.layers.items()}
        return values, measured, layers

    def close(self) -> None:
        for src in (self.measured, self.library, *self.layers.values()):
            if src is not None:
                src.close()


def plan_layout(options, manifest: Manifest, graph: GraphEntry, data: InputData) -> Layout:
    """Check the output options and open the readers of measured values and layers."""
    imputed_into = R.check_choice(options.imputed_into)
    modalities = schema(manifest)
    features = list(graph.output_features)
    converter = R.ScaleConverter(features, modalities, manifest.preprocessing, options.output_scale, graph.input_modalities)
    if graph.has_spread and converter.spread_reason is not None:
        log.warning("layers['%s'] is not written: %s", R.STD_LAYER, converter.spread_reason)
    mods = tuple(dict.fromkeys((*graph.input_modalities, *graph.output_modalities)))
    outputs_as_inputs = dataclasses.replace(graph, input_features=tuple(features), input_modalities=mods)
    layout = Layout(var=pd.DataFrame(), converter=converter, imputed_into=imputed_into, per_modality=options.command == "generate",
                    features=features, graph=graph, modalities=modalities)
    try:
        with _quiet():
            try:
                layout.measured = open_input(options.input, outputs_as_inputs, options.layer, options.obsm, allow_missing=True)
            except InclustError as err:
                log.info("measured values are not kept (%s)", err.problem)
            if layout.measured is not None and any(p.rows.names is None and options.obsm for p in layout.measured.parts):
                layout.measured.close()  # an unnamed obsm array: its columns are not output features by name
                layout.measured = None
            present = np.ones(len(features), dtype=bool)
            if layout.measured is not None:
                missing = set(layout.measured.missing)
                present = np.asarray([f not in missing for f in features])
            else:
                present[:] = False
            groups = _groups(data, mods)
            var_tables = [read_elem(g["var"]) for g in groups if "var" in g]
            input_var = pd.concat(var_tables) if len(var_tables) > 1 else (var_tables[0] if var_tables else None)
            layout.var = R.output_var(features, converter.modality_of, present, input_var)
            names = list(dict.fromkeys(k for g in groups if "layers" in g for k in g["layers"].keys()))
            for name in names:
                if name in (R.IMPUTED_LAYER, R.MEASURED_LAYER, R.STD_LAYER):
                    continue
                try:
                    layout.layers[name] = open_input(options.input, outputs_as_inputs, name, None, allow_missing=True)
                except InclustError as err:
                    log.info("layer %r is not carried over (%s)", name, err.problem)
            if converter.needs_library:
                layout.library = open_input(options.input, graph, options.layer, options.obsm, options.allow_missing)
    except BaseException:
        layout.close()
        raise
    return layout
