"""Write the result h5ad incrementally with h5py, in anndata's on-disk format.

The big arrays (``X``, ``obsm/X_inclust``, the label codes and probabilities) are created at
full size up front and filled chunk by chunk, so memory never holds more than one chunk. The
input's obs table is copied group-to-group inside HDF5 (no pandas round trip, constant memory);
small elements (var, uns, empty dicts) go through anndata's own ``write_elem`` so their
encoding stays exactly what anndata expects. Encoding attributes of the hand-written datasets
mirror what ``anndata.write_h5ad`` produces (checked by reading the file back in the tests).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from inclust_plus.results import IMPUTED_LAYER, MEASURED_LAYER, STD_LAYER

try:  # anndata >= 0.11
    from anndata.io import read_elem, write_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem, write_elem

LATENT_KEY = "X_inclust"
LABEL_KEY = "inclust_label"
PROBABILITY_KEY = "inclust_label_probability"
ARRAY = {"encoding-type": "array", "encoding-version": "0.2.0"}


@contextlib.contextmanager
def disk_errors():
    """HDF5's failed writes as ``OSError(errno, strerror, filename)``. Why: h5py raises some of them
    as ``RuntimeError`` (a failed object copy, a failed flush while closing) and all of them with the
    errno and file only in the text, while the commands turn an ``OSError`` into a one-line error
    (a full disk: ENOSPC) naming its file."""
    try:
        yield
    except (RuntimeError, OSError) as err:
        found = re.search(r"errno = (\d+)", str(err))
        if found is None or (isinstance(err, OSError) and err.filename is not None):
            raise
        code = int(found.group(1))
        name = re.search(r"filename = '([^']*)'", str(err))
        raise OSError(code, os.strerror(code), name.group(1) if name else None) from err


def _array(parent: h5py.Group, name: str, shape: tuple, dtype) -> h5py.Dataset:
    if name in parent:
        del parent[name]
    ds = parent.create_dataset(name, shape=shape, dtype=dtype)
    ds.attrs.update(ARRAY)
    return ds


class _CsrRows:
    """A CSR matrix (anndata's ``csr_matrix`` encoding) written row chunk by row chunk, in order.

    Measured values and carried layers are mostly zeros (imputed features, sparse counts), so
    they are stored sparse: a generate run whose outputs were all unmeasured writes an empty X
    instead of cells x features zeros.
    """

    def __init__(self, parent: h5py.Group, name: str, shape: tuple[int, int]):
        if name in parent:
            del parent[name]
        g = parent.create_group(name)
        g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.asarray(shape, dtype=np.int64)})
        self.data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 16,))
        self.indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 16,))
        self.indptr = g.create_dataset("indptr", shape=(shape[0] + 1,), dtype=np.int64)
        self.indptr[0] = 0
        self.nnz, self.next_row = 0, 0

    def __setitem__(self, rows: slice, block: np.ndarray) -> None:
        if rows.start != self.next_row:
            raise RuntimeError("sparse output rows must be written in order")  # pragma: no cover - the run loop writes in order
        m = block if sp.isspmatrix_csr(block) else sp.csr_matrix(block, dtype=np.float32)
        m.sort_indices()
        end = self.nnz + m.nnz
        if m.nnz:
            self.data.resize((end,))
            self.indices.resize((end,))
            self.data[self.nnz : end] = m.data
            self.indices[self.nnz : end] = m.indices
        self.indptr[rows.start + 1 : rows.start + 1 + m.shape[0]] = m.indptr[1:].astype(np.int64) + self.nnz
        self.nnz, self.next_row = end, rows.start + m.shape[0]


def _plain(value):
    """Provenance values as types anndata's writer accepts (no None, lists of str)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return np.asarray([str(v) for v in value], dtype=object)
    if isinstance(value, (bool, int, float, np.number)):
        return value
    return str(value)  # str subclasses such as torch's version string included


class OutputWriter:
    """An h5ad being written at ``path``: call :meth:`write` per chunk, then :meth:`finish`.

    With a :class:`~inclust_plus.runtime.layout.Layout` (impute/generate) the var table is the
    layout's, X holds the measured values (or the model's with ``--imputed-into X``), the model's
    values go to ``layers["inclust_imputed"]`` and the input's layers are carried over.
    """

    def __init__(
        self,
        path: Path,
        n_obs: int,
        obs_source: h5py.Group,
        features: list[str],
        latent_dim: int | None,
        label_categories: list[str],
        layout=None,
    ):
        self.f = h5py.File(path, "w")
        try:
            with disk_errors():
                self._create(n_obs, obs_source, features, latent_dim, label_categories, layout)
        except BaseException:
            self.abort()
            raise

    def _create(self, n_obs, obs_source, features, latent_dim, label_categories, layout) -> None:
        f = self.f
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        self._copy_obs(obs_source)
        self.layout = layout
        write_elem(f, "var", layout.var if layout is not None else pd.DataFrame(index=pd.Index(list(features), dtype=object)))
        shape = (n_obs, len(features))
        measured_in_x = layout is not None and layout.imputed_into != "X"
        self.x = (_CsrRows(f, "X", shape) if measured_in_x else _array(f, "X", shape, np.float32)) if features else None
        for key in ("obsm", "layers", "obsp", "varm", "varp"):
            write_elem(f, key, {})
        self.layers: dict[str, h5py.Dataset | _CsrRows] = {}
        self.per_modality: dict[str, tuple[list[int], h5py.Dataset]] = {}
        if layout is not None and features:
            if measured_in_x:
                self.layers[IMPUTED_LAYER] = _array(f["layers"], IMPUTED_LAYER, shape, np.float32)
            else:
                self.layers[MEASURED_LAYER] = _CsrRows(f["layers"], MEASURED_LAYER, shape)
            for name in layout.layers:
                self.layers[name] = _CsrRows(f["layers"], name, shape)
            if layout.writes_spread:
                self.layers[STD_LAYER] = _array(f["layers"], STD_LAYER, shape, np.float32)
            if layout.per_modality:
                for m, cols in layout.modality_columns().items():
                    self.per_modality[m] = (cols, _array(f["obsm"], f"inclust_{m}", (n_obs, len(cols)), np.float32))
        self.latent = _array(f["obsm"], LATENT_KEY, (n_obs, latent_dim), np.float32) if latent_dim else None
        self.codes = self.prob = None
        if label_categories:
            self._label_columns(n_obs, list(label_categories))

    def _copy_obs(self, source: h5py.Group) -> None:
        if source.attrs.get("encoding-type") in ("dataframe", b"dataframe"):
            source.file.copy(source, self.f, name="obs")
        else:  # older on-disk layouts: let anndata translate
            write_elem(self.f, "obs", read_elem(source))
        obs = self.f["obs"]
        for key in (LABEL_KEY, PROBABILITY_KEY):
            if key in obs:
                del obs[key]

    def _label_columns(self, n_obs: int, categories: list[str]) -> None:
        obs = self.f["obs"]
        group = obs.create_group(LABEL_KEY)
        group.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": np.False_})
        write_elem(group, "categories", np.asarray(categories, dtype=object))
        dtype = np.int8 if len(categories) < 128 else np.int32
        self.codes = _array(group, "codes", (n_obs,), dtype)
        self.prob = _array(obs, PROBABILITY_KEY, (n_obs,), np.float32)
        order = [c.decode() if isinstance(c, bytes) else str(c) for c in obs.attrs.get("column-order", [])]
        order = [c for c in order if c not in (LABEL_KEY, PROBABILITY_KEY)] + [LABEL_KEY, PROBABILITY_KEY]
        obs.attrs["column-order"] = np.asarray(order, dtype=h5py.string_dtype())

    def write(self, start: int, y: np.ndarray | None, latent: np.ndarray | None, probs: np.ndarray | None,
              y_std: np.ndarray | None = None, prepared=None) -> None:
        """Store the results of the cells ``start .. start + len(chunk)`` (``y_std``: an ensemble's spread;
        ``prepared``: the chunk's :class:`~inclust_plus.runtime.layout_chunk.LayoutChunk`, else the layout reads it)."""
        if self.layout is not None and self.x is not None and y is not None:
            if prepared is None:
                prepared = self.layout.tap(start, start + len(y)).finish()
            values, measured, carried = self.layout.chunk(start, y, prepared)
            if STD_LAYER in self.layers and y_std is not None:
                self.layers[STD_LAYER][start : start + len(y)] = self.layout.spread(y_std, prepared)
            rows = slice(start, start + len(y))
            into_x = self.layout.imputed_into == "X"
            self.x[rows] = values if into_x else measured
            self.layers[MEASURED_LAYER if into_x else IMPUTED_LAYER][rows] = measured if into_x else values
            for name, block in carried.items():
                self.layers[name][rows] = block
            for cols, ds in self.per_modality.values():
                ds[rows] = values[:, cols]
        elif self.x is not None and y is not None:
            self.x[start : start + len(y)] = y
        if self.latent is not None and latent is not None:
            self.latent[start : start + len(latent)] = latent
        if self.codes is not None and probs is not None:
            best = probs.argmax(axis=1)
            self.codes[start : start + len(best)] = best.astype(self.codes.dtype)
            self.prob[start : start + len(best)] = probs[np.arange(len(best)), best]

    def finish(self, provenance: dict) -> None:
        """Write uns and close. Everything is flushed before the close: a full disk then fails the
        flush, with every handle still open for :meth:`abort`, never half way through a close."""
        with disk_errors():
            write_elem(self.f, "uns", {"inclust": _plain(provenance)})
            self.f.flush()
            self.f.close()

    def abort(self) -> None:
        """Close the file after a failure, for good, writing nothing more to it. Why: on a full disk
        HDF5's close flushes its caches, fails, and leaves handles that crash the process when
        Python releases them (a segfault after the error line, issue 25). The file is garbage about
        to be deleted, so HDF5's descriptor is pointed at an anonymous in-memory file first: its last
        writes land there, every handle closes, and the disk space is freed at once."""
        with contextlib.suppress(Exception):
            if self.f.id.valid:
                _discard_writes(self.f.id.get_vfd_handle())
        with _file_size_unlimited():
            self.x = self.latent = self.codes = self.prob = None
            self.layers, self.per_modality = {}, {}
            try:
                self.f.close()
            except Exception:  # noqa: BLE001 - closing after a failure must not hide the failure
                pass


@contextlib.contextmanager
def _file_size_unlimited():
    """A ``ulimit -f`` soft limit (the failure being cleaned up) raised to the hard one meanwhile: it
    applies to the in-memory file too, and must not fail the last flushes into it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    except (ImportError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _discard_writes(fd: int) -> None:
    """Make ``fd`` an empty in-memory file (Linux memfd), else empty the file it is (space for the flush)."""
    try:
        spare = os.memfd_create("inclust-discarded")
    except (AttributeError, OSError):
        os.ftruncate(fd, 0)
        return
    try:
        os.dup2(spare, fd)
    finally:
        os.close(spare)
