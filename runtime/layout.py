"""What ``inclust-run impute|generate`` writes besides the model's values: the honest layout.

The layout is that of :mod:`inclust_plus.results` (shared with the in-memory Predictor and the
training API): the output's var is the graph's output features with the input's var columns,
``var["modality"]`` and ``var["inclust_imputed"]``; X keeps the measured values of the features the
input has (raw, from the same X or layer), the model's values go to
``layers["inclust_imputed"]`` (or X with ``--imputed-into X``) in the ``--output-scale`` asked
for; the input's layers are carried over for the features it has; ``generate`` adds one
``obsm["inclust_<modality>"]`` per output modality. Everything here is planned before any output
is created (so a bad ``--output-scale`` costs nothing); per chunk, the values come from the rows
the chunk reader reads anyway (:mod:`.layout_chunk`), so the input is read once.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from inclust_plus import results as R
from inclust_plus.errors import InclustError

from .inputs import InputData, open_input
from .layout_chunk import ChunkTap, LayoutChunk, Target
from .manifest import GraphEntry, Manifest
from .preprocess import PreprocessPlan, non_integer_warning

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem

log = logging.getLogger("inclust_plus.runtime")
CHECKED_ROWS = 1000  # rows looked at for the counts warning


def schema(manifest: Manifest) -> list[dict]:
    return manifest.schema()


def warn_if_not_counts(data, plan: PreprocessPlan) -> None:
    """Warn when a model that normalises counts itself is given non-integer values (log-normalised X?).
    ``plan``: the graph's whole preprocessing, whether the runtime applies it or the graph folds it in."""
    counting = [g for g in plan.active if g.has_ops]
    if not counting:
        return
    n = min(CHECKED_ROWS, data.n_obs)
    x = data.read(0, n, np.zeros((n, data.n_inputs), np.float32))
    for step in counting:
        text = non_integer_warning(x[:, step.columns], step.name)
        if text:
            log.warning(text.replace("layer='counts' / ", ""))
            return


def _groups(data: InputData, modalities) -> list:
    f = data.file
    if "mod" in f:
        return [f["mod"][m] for m in modalities if m in f["mod"]]
    return [f]


MEASURED = "X"  # the measured values' target name (a carried layer has its own name; the library is LIBRARY)
LIBRARY = " library"  # not an h5ad key: the graph input's raw values, for library sizes


@dataclass
class Layout:
    """The planned output of a decoding command.

    Per chunk: :meth:`tap` is handed to the chunk reader (it takes the measured values, carried
    layers and library sizes from the rows the reader reads, :mod:`.layout_chunk`), its
    ``finish()`` gives a :class:`~.layout_chunk.LayoutChunk`, and :meth:`chunk` turns that and the
    model's values into what the writer stores. Without a prepared chunk, :meth:`chunk` reads it all
    itself (what every chunk did before the reader handed its rows on).
    """

    var: pd.DataFrame
    converter: R.ScaleConverter
    imputed_into: str
    per_modality: bool
    features: list[str]
    graph: GraphEntry
    measured: InputData | None = None
    layers: dict[str, InputData] = field(default_factory=dict)
    library: InputData | None = None  # the graph input itself (not owned: the run loop closes it)
    targets: dict[str, Target] = field(default_factory=dict)

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

    def plan_targets(self) -> None:
        """The matrices built per chunk (once the readers are open)."""
        width = len(self.features)
        if self.measured is not None:
            self.targets[MEASURED] = Target(self.measured.parts, width)
        for name, src in self.layers.items():
            self.targets[name] = Target(src.parts, width)
        if self.converter.needs_library and self.library is not None:
            self.targets[LIBRARY] = Target(self.library.parts, self.library.n_inputs, dense=True)

    def bytes_per_row(self) -> int:
        """What a chunk in flight holds for the layout, per cell (for the run loop's memory budget)."""
        return sum(t.bytes_per_row() for t in self.targets.values())

    def tap(self, start: int, stop: int) -> ChunkTap:
        """A tap for the chunk reader of cells ``start..stop``; ``.finish()`` once the chunk is read."""
        return ChunkTap(self.targets, start, stop)

    def _library(self, prepared: LayoutChunk) -> dict:
        block = prepared.matrices.get(LIBRARY)
        if block is None:
            return {}
        if prepared.library is None:  # the values and the spread of a chunk use the same sizes
            prepared.library = R.library_sizes(block, self.graph.preprocessing_plan.columns_by_modality(), self.converter.needs_library)
        return prepared.library

    def spread(self, sd: np.ndarray, prepared: LayoutChunk) -> np.ndarray:
        """The members' std of a chunk in the output scale (only when :attr:`writes_spread`)."""
        return self.converter.convert_spread(sd, self._library(prepared) if self.converter.needs_library else None)

    def chunk(self, start: int, y: np.ndarray, prepared: LayoutChunk | None = None) -> tuple[np.ndarray, sp.csr_matrix, dict[str, sp.csr_matrix]]:
        """(model values in the output scale, measured values and carried layers as CSR) of cells ``start..start+len(y)``."""
        if prepared is None:
            prepared = self.tap(start, start + len(y)).finish()
        values = self.converter.convert(y, self._library(prepared))
        got = prepared.matrices
        measured = got[MEASURED] if MEASURED in got else sp.csr_matrix((len(y), len(self.features)), dtype=np.float32)
        return values, measured, {name: got[name] for name in self.layers}

    def close(self) -> None:
        for src in (self.measured, *self.layers.values()):
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
                    features=features, graph=graph)
    try:
        try:  # quiet: the missing-feature warning was given when the input was opened for the graph
            layout.measured = open_input(options.input, outputs_as_inputs, options.layer, options.obsm, allow_missing=True, quiet=True)
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
                layout.layers[name] = open_input(options.input, outputs_as_inputs, name, None, allow_missing=True, quiet=True)
            except InclustError as err:
                log.info("layer %r is not carried over (%s)", name, err.problem)
        layout.library = data  # the library sizes' raw values are the graph input's own
        layout.plan_targets()
    except BaseException:
        layout.close()
        raise
    return layout
