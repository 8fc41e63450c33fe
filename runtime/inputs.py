"""Open a user's h5ad or h5mu, find the matrix to read and align its features to a graph by name.

Only h5py and anndata's element reader are used (no mudata, no full ``read_h5ad``): the obs and
var tables are small enough to read, the matrix is read chunk by chunk through
:mod:`.matrices`. An h5mu is read per modality group ``/mod/<name>``; the graph's input
modalities say which groups to use (or the only one present), and their cells must be identical.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from inclust_plus.errors import InclustError, names_shown

from .manifest import GraphEntry
from .matrices import MatrixRows, matrix_rows

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem

log = logging.getLogger("inclust_plus.runtime")


def _index(group: h5py.Group) -> h5py.Dataset:
    key = group.attrs.get("_index", "_index")
    key = key.decode() if isinstance(key, bytes) else key
    if key not in group:
        raise InclustError(f"{group.file.filename}: {group.name} has no index", "re-write the file with anndata")
    return group[key]


def _index_values(group: h5py.Group) -> list[str]:
    return [str(v) for v in read_elem(_index(group))]


@dataclass
class Part:
    """One matrix feeding some of the graph's input columns."""

    rows: MatrixRows
    src: np.ndarray  # column positions in the matrix
    dst: np.ndarray  # column positions in the graph input


class AlignedParts:
    """Chunk filling over ``parts`` (row readers with their source -> graph column maps) and
    ``missing`` features, shared by file inputs and in-memory ones (:mod:`.memory`)."""

    parts: list
    missing: list

    def values_per_row(self) -> float:
        return sum(p.rows.values_per_row() for p in self.parts) or 1.0

    def read(self, start: int, stop: int, out: np.ndarray, tap=None) -> np.ndarray:
        """Fill and return ``out[:stop-start]`` with the aligned features of those cells; ``tap``
        (see :mod:`.matrices`) is handed each part's rows as read."""
        view = out[: stop - start]
        if self.missing:
            view[:] = 0
        for p in self.parts:
            p.rows.fill(start, stop, p.src, p.dst, view, tap)
        return view


@dataclass
class InputData(AlignedParts):
    """An opened input: cell count, the obs group to copy, and a chunk filler."""

    path: Path
    file: h5py.File
    n_obs: int
    obs: h5py.Group
    element: str
    parts: list[Part]
    n_inputs: int
    missing: list[str] = field(default_factory=list)


    def covariate_column(self, key: str) -> pd.Categorical:
        """The obs column ``key`` as categories (values as strings)."""
        order = self.obs.attrs.get("column-order", [])
        columns = [c.decode() if isinstance(c, bytes) else str(c) for c in order]
        if key not in self.obs or key not in columns:
            raise InclustError(f"obs of {self.path} has no column {key!r}", f"columns: {names_shown(columns) or 'none'}; or pass --covariate NAME")
        values = read_elem(self.obs[key])
        if isinstance(values, pd.Categorical):
            return pd.Categorical.from_codes(values.codes, categories=[str(c) for c in values.categories])
        return pd.Categorical(np.asarray(values).astype(str))

    def close(self) -> None:
        self.file.close()


def _element(group: h5py.Group, layer: str | None, obsm: str | None, label: str):
    if layer:
        if "layers" not in group or layer not in group["layers"]:
            have = list(group["layers"].keys()) if "layers" in group else []
            raise InclustError(f"{label} has no layer {layer!r}", f"layers: {names_shown(have) or 'none'}")
        return group["layers"][layer], f"layers/{layer}"
    if obsm:
        if "obsm" not in group or obsm not in group["obsm"]:
            have = list(group["obsm"].keys()) if "obsm" in group else []
            raise InclustError(f"{label} has no obsm entry {obsm!r}", f"obsm: {names_shown(have) or 'none'}")
        return group["obsm"][obsm], f"obsm/{obsm}"
    if "X" not in group:
        raise InclustError(f"{label} has no X", "pass --layer or --obsm to read another matrix")
    return group["X"], "X"


def _open_group(group: h5py.Group, label: str, layer, obsm) -> tuple[MatrixRows, list[str], int, str]:
    """Matrix reader, its column names and cell count for one AnnData group (file root or /mod/x)."""
    if "obs" not in group or "var" not in group:
        raise InclustError(f"{label} is not an AnnData (no obs/var)", "pass an h5ad written by anndata or scanpy")
    n_obs = int(_index(group["obs"]).shape[0])
    elem, where = _element(group, layer, obsm, label)
    rows = matrix_rows(elem, n_obs)
    if rows.n_rows != n_obs:
        raise InclustError(f"{label} {where} has {rows.n_rows} rows for {n_obs} cells", "re-write the file")
    if obsm:
        names = rows.names
        if names is None:
            names = []  # a bare array: aligned by position below
    else:
        names = _index_values(group["var"])
        if len(names) != rows.n_cols:
            raise InclustError(f"{label} {where} has {rows.n_cols} columns for {len(names)} var names", "re-write the file")
    return rows, names, n_obs, where


def _check_shared(graph: GraphEntry, n_present: int, min_fraction: float) -> None:
    """With --allow-missing: at least one input feature, and at least ``min_fraction`` of them, must be present.

    A graph fed only zeros gives every cell the same output, which looks like a result but is none.
    """
    n = len(graph.input_features)
    needed = max(1, math.ceil(min_fraction * n - 1e-9))
    if n_present < needed:
        stated = f"at least {min_fraction:.0%} ({needed})" if min_fraction > 0 else "at least one"
        raise InclustError(
            f"the input holds {n_present} of the {n} features graph {graph.name!r} needs, {stated} required with --allow-missing",
            "check the var names (e.g. gene symbols vs ids) or choose another combination",
        )


def _align(graph: GraphEntry, sources: list[tuple[MatrixRows, list[str], str]], allow_missing: bool,
           min_fraction: float = 0.0, quiet: bool = False) -> tuple[list[Part], list[str]]:
    """Each source's columns matched to the graph's input features by name; ``quiet``: no log lines
    (an input opened a second time, whose missing features were reported the first time)."""
    wanted = list(graph.input_features)
    taken: dict[int, tuple[int, int]] = {}  # graph column -> (source, matrix column)
    for s, (rows, names, label) in enumerate(sources):
        if not names:  # obsm array without column names: must match the graph width, in order
            if rows.n_cols != len(wanted):
                raise InclustError(f"{label} has {rows.n_cols} unnamed columns but the graph takes {len(wanted)} features", "store it as a data frame with feature names, or pass X")
            if not quiet:
                log.info("%s has no column names: its %d columns are taken as the graph's input features in order", label, rows.n_cols)
            for j in range(len(wanted)):
                taken.setdefault(j, (s, j))
            continue
        positions: dict[str, int] = {}
        dups: list[str] = []
        needed = set(wanted)
        for j, n in enumerate(names):
            if n in positions and n in needed:
                dups.append(n)
            positions.setdefault(n, j)
        if dups:
            raise InclustError(
                f"{label} has duplicate var names among the model's features: {names_shown(sorted(set(dups)))}",
                "make var names unique (anndata var_names_make_unique) or drop the duplicates",
            )
        for g, n in enumerate(wanted):
            if g not in taken and n in positions:
                taken[g] = (s, positions[n])
    missing = [n for g, n in enumerate(wanted) if g not in taken]
    if missing and not allow_missing:
        raise InclustError(
            f"the input lacks {len(missing)} of the {len(wanted)} features graph {graph.name!r} needs: {names_shown(missing)}",
            "pass --allow-missing to fill them with zeros, or choose another combination",
        )
    if missing:
        _check_shared(graph, len(wanted) - len(missing), min_fraction)
        if not quiet:
            log.warning("%d of %d input features are missing and filled with zeros: %s", len(missing), len(wanted), names_shown(missing))
    parts = []
    for s, (rows, _, _) in enumerate(sources):
        pairs = sorted((m, g) for g, (src, m) in taken.items() if src == s)
        if pairs:
            parts.append(Part(rows, np.asarray([m for m, _ in pairs], np.intp), np.asarray([g for _, g in pairs], np.intp)))
    return parts, missing


def open_input(path: str | Path, graph: GraphEntry, layer: str | None = None, obsm: str | None = None, allow_missing: bool = False,
               min_shared_fraction: float = 0.0, quiet: bool = False) -> InputData:
    """Open ``path`` (h5ad or h5mu) for ``graph``; errors for anything unreadable, empty or misaligned.
    ``quiet``: no log lines about missing or unnamed columns (see :func:`_align`)."""
    p = Path(path)
    if p.is_dir():
        raise InclustError(f"input {p} is a folder, not a dataset file", "pass the .h5ad (or .h5mu) file itself")
    if not p.is_file():
        raise InclustError(f"input {p} does not exist", "check the --input path")
    try:
        f = h5py.File(p, "r")
    except OSError:
        raise InclustError(f"input {p} is not a readable h5ad (corrupt, truncated or not HDF5)", "check the file or write it again with anndata") from None
    try:
        data = _open(f, p, graph, layer, obsm, allow_missing, min_shared_fraction, quiet)
    except InclustError:
        f.close()
        raise
    except (KeyError, ValueError, TypeError, OSError) as err:
        f.close()
        raise InclustError(f"input {p} is not a readable h5ad ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", "check the file or write it again with anndata") from None
    return data


def read_modalities(mods: list[str], graph: GraphEntry, where: str) -> list[str]:
    """The modalities of a MuData (``where``: how to name it) that ``graph`` reads: those among its
    input modalities, or the only one there is."""
    use = [m for m in graph.input_modalities if m in mods] or (mods if len(mods) == 1 else [])
    if not use:
        raise InclustError(f"{where} has modalities {names_shown(mods)} but graph {graph.name!r} reads {', '.join(graph.input_modalities)}",
                           "rename the modality or choose another combination")
    return use


def _open(f: h5py.File, p: Path, graph: GraphEntry, layer, obsm, allow_missing, min_fraction: float = 0.0, quiet: bool = False) -> InputData:
    if "mod" in f and isinstance(f["mod"], h5py.Group):
        use = read_modalities(list(f["mod"].keys()), graph, str(p))
        groups = [(f["mod"][m], f"{p.name}:mod/{m}") for m in use]
    else:
        groups = [(f, p.name)]
    opened = [(_open_group(g, label, layer, obsm), g, label) for g, label in groups]
    n_obs = opened[0][0][2]
    if n_obs == 0:
        raise InclustError(f"input {p} has no cells", "pass a non-empty AnnData")
    first_index = _index_values(groups[0][0]["obs"]) if len(groups) > 1 else None
    for (_, _, n, _), g, label in opened[1:]:
        if n != n_obs or _index_values(g["obs"]) != first_index:
            raise InclustError(f"modalities of {p} do not hold the same cells in the same order ({label})", "subset them to common cells (mudata intersect_obs) first")
    obs = groups[0][0]["obs"]
    if len(groups) > 1 or groups[0][0] is not f:
        root_obs = f["obs"] if "obs" in f else None
        mod_index = first_index if first_index is not None else _index_values(obs)
        if root_obs is not None and _index(root_obs).shape[0] == n_obs and _index_values(root_obs) == mod_index:
            obs = root_obs  # the MuData-wide obs carries the columns shared by modalities
    sources = [(rows, names, f"{label} {where}") for (rows, names, _, where), _, label in opened]
    for rows, _, label in sources:
        if rows.n_cols == 0:  # else read as an unnamed array "of 0 columns"
            raise InclustError(f"{label} has no features (0 columns); graph {graph.name!r} takes {len(graph.input_features)}",
                               f"pass the file with its measured features (e.g. {names_shown(graph.input_features)})")
    parts, missing = _align(graph, sources, allow_missing, min_fraction, quiet)
    element = opened[0][0][3]
    return InputData(path=p, file=f, n_obs=n_obs, obs=obs, element=element, parts=parts, n_inputs=len(graph.input_features), missing=missing)
