"""What an inClust+ result holds and in which units: the output side, shared by the in-memory
:class:`~inclust_plus.runtime.predictor.Predictor` (and so the training-side ``InClust``) and the
``inclust-run`` h5ad writer. Reading an input is the runtime's (runtime/inputs.py, memory.py,
preprocess.py); data flows one way, input side -> backend -> this module, which reads no input.

One layout for every decoded result (docs/ARCHITECTURE.md, "Results"):

* ``var`` = the graph's output features, with the input's var columns carried over,
  ``var["modality"]`` and ``var["inclust_imputed"]`` (True for a feature the input did not measure);
* ``X`` = the measured values as given (zero for imputed features), ``layers["inclust_imputed"]``
  = the model's values for every output feature (``imputed_into="X"`` swaps them: model values in
  X, measured ones in ``layers["inclust_measured"]``);
* ``uns["inclust"]["output_scale"]`` and ``["scale"]`` say what the model's numbers are;
* an ensemble's graphs also give ``layers["inclust_std"]``: the members' per-feature standard
  deviation of the model's values, in the same output scale (the conversion is linear for model and
  log1p scales; through expm1 it is not, so ``counts`` of a log1p modality leave it out, said in
  ``uns["inclust"]["std_layer"]``).

The model works on preprocessed values (x / library * total, log1p, / per-feature max); its output
is on that scale. :class:`ScaleConverter` undoes the steps that can be undone: ``log1p`` multiplies
the per-feature max back, ``counts`` also applies expm1 and the cell's library size (the sum of the
measured input features of that modality, which is what normalisation divided by). Torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported on use (inclust_plus/sparse.py says why)
    import pandas as pd

from .errors import InclustError

SCALES = ("model", "log1p", "counts")
IMPUTED_INTO = ("layer", "X")
IMPUTED_LAYER = "inclust_imputed"
MEASURED_LAYER = "inclust_measured"
STD_LAYER = "inclust_std"
IMPUTED_FLAG = "inclust_imputed"
MODALITY_COLUMN = "modality"


def _active(spec: dict | None) -> bool:
    return bool(spec) and bool(spec.get("normalize_total") or spec.get("log1p") or spec.get("scale") is not None)


def describe_preprocessing(spec: dict | None) -> str:
    """``log1p(x / library * 10000) / max per feature``, or ``values as given``."""
    if not _active(spec):
        return "values as given (no preprocessing recorded)"
    text = "x"
    if spec.get("normalize_total"):
        text = f"{text} / library * {float(spec['normalize_total']):g}"
    if spec.get("log1p"):
        text = f"log1p({text})"
    if spec.get("scale") is not None:
        text = f"{text} / max per feature"
    return text


class ScaleConverter:
    """Model-scale output -> ``model``, ``log1p`` or ``counts`` units, per output feature.

    ``modalities`` = ``[{name, features}]`` (the schema), ``preprocessing`` = ``{modality: spec}``,
    ``input_modalities`` = the modalities whose library size the input provides. Every impossible
    request is an :class:`InclustError` at construction, before any work.
    """

    def __init__(self, output_features, modalities: list[dict], preprocessing: dict, scale: str = "model", input_modalities=()):
        if scale not in SCALES:
            raise InclustError(f"unknown output scale {scale!r}", f"choose one of {', '.join(SCALES)}")
        self.scale = scale
        self.features = list(output_features)
        owner = {f: m["name"] for m in modalities for f in m["features"]}
        position = {m["name"]: {f: i for i, f in enumerate(m["features"])} for m in modalities}
        self.modality_of = [owner.get(f, "") for f in self.features]
        self.blocks: list[tuple[str, np.ndarray, dict]] = []
        for m in dict.fromkeys(self.modality_of):
            cols = np.asarray([j for j, o in enumerate(self.modality_of) if o == m], dtype=np.intp)
            spec = dict(preprocessing.get(m) or {})
            if spec.get("scale") is not None:
                full = np.asarray(spec["scale"], dtype=np.float32)
                s = full[[position[m][self.features[j]] for j in cols]]
                spec["scale"] = np.where(s == 0, 1, s).astype(np.float32)
            self.blocks.append((m, cols, spec))
        self.needs_library: list[str] = []
        for m, _, spec in self.blocks:
            if scale == "log1p" and _active(spec) and not spec.get("log1p"):
                raise InclustError(f"output scale log1p: modality {m!r} was not log-transformed ({describe_preprocessing(spec)})",
                                   "use output scale model or counts")
            if scale == "log1p" and not _active(spec):
                raise InclustError(f"output scale log1p: modality {m!r} had no preprocessing, its values are in the input's units",
                                   "use output scale model (the same numbers)")
            if scale == "counts" and spec.get("normalize_total"):
                if m not in input_modalities:
                    raise InclustError(f"output scale counts: the library size of {m!r} is unknown for these cells (not an input)",
                                       "use output scale log1p or model")
                self.needs_library.append(m)

    def description(self) -> str:
        """What the numbers are, e.g. ``model scale: rna = log1p(x / library * 10000) / max per feature``."""
        parts = []
        for m, _, spec in self.blocks:
            if self.scale == "model":
                parts.append(f"{m} = {describe_preprocessing(spec)}")
            elif self.scale == "log1p":
                inner = "x / library * {:g}".format(float(spec["normalize_total"])) if spec.get("normalize_total") else "x"
                parts.append(f"{m} = log1p({inner})")
            else:
                parts.append(f"{m} = counts" + (" (library size of the cell's measured input features)" if spec.get("normalize_total") else ""))
        return f"{self.scale} scale: " + "; ".join(parts)

    @property
    def spread_reason(self) -> str | None:
        """Why a spread cannot be given in this scale (None: it can, see :meth:`convert_spread`).

        A standard deviation converts exactly under the positive linear steps (per-feature max,
        library size) but not through expm1: the spread of counts is not the converted spread.
        """
        if self.scale == "counts":
            logged = [m for m, _, spec in self.blocks if spec.get("log1p")]
            if logged:
                return f"the members' spread has no counts form for log1p modality {logged[0]!r}; use output scale model or log1p"
        return None

    def convert_spread(self, sd: np.ndarray, library: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """A standard deviation of model-scale values in the chosen units (only when :attr:`spread_reason` is None)."""
        if self.spread_reason is not None:
            raise InclustError(self.spread_reason.split("; ")[0], "use output scale model or log1p")
        return self.convert(sd, library)  # every remaining step is a positive per-feature or per-cell factor

    def convert(self, y: np.ndarray, library: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """``y`` [cells, output features] in the chosen units (float32, a new array unless ``model``)."""
        if self.scale == "model":
            return y
        out = np.array(y, dtype=np.float32, copy=True)
        for m, cols, spec in self.blocks:
            block = out[:, cols]
            if spec.get("scale") is not None:
                block *= spec["scale"]
            if self.scale == "counts":
                if spec.get("log1p"):
                    np.expm1(block, out=block)
                    np.maximum(block, 0, out=block)
                if spec.get("normalize_total"):
                    lib = np.asarray((library or {})[m], dtype=np.float64).reshape(-1, 1)
                    block *= (lib / float(spec["normalize_total"])).astype(np.float32)
            out[:, cols] = block
        return out


def library_sizes(raw: np.ndarray, columns: dict, wanted) -> dict[str, np.ndarray]:
    """Per-cell sums of the raw input columns of each modality in ``wanted`` (what normalisation divided by);
    ``columns`` maps a modality to its input columns."""
    out = {}
    for m in wanted:
        cols = list(columns.get(m, ()))
        out[m] = np.asarray(raw[:, cols].sum(axis=1, dtype=np.float64)).ravel()
    return out


def output_var(output_features, modality_of, measured, input_var: pd.DataFrame | None = None) -> pd.DataFrame:
    """The result's var table: input var columns for the features it has, then modality and imputed flag."""
    import pandas as pd

    index = pd.Index([str(f) for f in output_features], dtype=object)
    if input_var is not None and len(input_var.columns):
        carried = input_var.drop(columns=[c for c in (MODALITY_COLUMN, IMPUTED_FLAG) if c in input_var.columns])
        carried = carried[~carried.index.duplicated()].copy()
        for col in carried.columns:  # dtypes that stay writable by anndata once absent features get NaN
            kind = carried[col].dtype
            if pd.api.types.is_bool_dtype(kind):
                carried[col] = carried[col].astype("boolean")
            elif pd.api.types.is_integer_dtype(kind):
                carried[col] = carried[col].astype("Int64")
            elif not pd.api.types.is_float_dtype(kind) and not isinstance(kind, pd.CategoricalDtype):
                carried[col] = pd.Categorical(carried[col].astype(str))
        var = carried.reindex(index)
        var.index = index
    else:
        var = pd.DataFrame(index=index)
    var[MODALITY_COLUMN] = pd.Categorical(list(modality_of))
    var[IMPUTED_FLAG] = ~np.asarray(measured, dtype=bool)
    return var


def check_choice(imputed_into: str) -> str:
    if imputed_into not in IMPUTED_INTO:
        raise InclustError(f"unknown imputed-into {imputed_into!r}", f"choose one of {', '.join(IMPUTED_INTO)}")
    return imputed_into


LATENT_KEY = "X_inclust"
LABEL_COLUMN = "inclust_label"
PROBABILITY_COLUMN = "inclust_label_probability"


def align_columns(matrix, names, features):
    """``matrix`` (cells x ``names``) with its columns put in ``features`` order (zero where absent).

    Dense stays dense, sparse stays CSR; values are copied exactly (a 0/1 selection product).
    Returns the aligned matrix and a mask of the features present.
    """
    import scipy.sparse as sp

    pos = {}
    for i, n in enumerate(names):
        pos.setdefault(str(n), i)
    pairs = [(pos[f], j) for j, f in enumerate(features) if f in pos]
    present = np.zeros(len(features), dtype=bool)
    present[[j for _, j in pairs]] = True
    src, dst = np.asarray([p[0] for p in pairs], np.intp), np.asarray([p[1] for p in pairs], np.intp)
    if sp.issparse(matrix):
        select = sp.csr_matrix((np.ones(len(src), np.float32), (src, dst)), shape=(matrix.shape[1], len(features)))
        return sp.csr_matrix(matrix @ select, dtype=np.float32), present
    dense = np.asarray(matrix)
    out = np.zeros((dense.shape[0], len(features)), dtype=np.float32)
    out[:, dst] = dense[:, src]
    return out, present


def _combine(aligned: list, presents: list):
    """One matrix from per-source aligned ones: each feature from the first source that has it."""
    import scipy.sparse as sp

    if len(aligned) == 1:
        return aligned[0]
    taken = np.zeros(len(presents[0]), dtype=bool)
    total = None
    for mat, present in zip(aligned, presents):
        keep = present & ~taken
        taken |= keep
        mask = sp.diags(keep.astype(np.float32)) if sp.issparse(mat) else keep.astype(np.float32)
        part = mat @ mask if sp.issparse(mat) else mat * mask
        total = part if total is None else total + part
    return total


def label_table(probs: np.ndarray, categories, index) -> pd.DataFrame:
    """Per cell (``index``): the most likely label (``obs[LABEL_COLUMN]``) and its probability."""
    import pandas as pd

    best = probs.argmax(axis=1)
    return pd.DataFrame({LABEL_COLUMN: pd.Categorical.from_codes(best, categories=list(categories)),
                         PROBABILITY_COLUMN: probs[np.arange(len(best)), best].astype(np.float32)}, index=index)


def decoded_anndata(obs: pd.DataFrame, sources, output_features, modality_of, values, latent, probs, label_categories,
                    imputed_into: str, provenance: dict, per_modality: bool = False, spread=None):
    """The AnnData of a decoded result (layout in the module docstring), built in memory.

    ``obs`` is the cells' obs table, ``sources`` the (matrix, var names, var, layers) of the
    AnnData objects the model read (runtime/memory.py ``view_sources``); ``spread`` (an
    ensemble's members' std, already in the output scale) becomes ``layers["inclust_std"]``.
    """
    import anndata as ad
    import pandas as pd

    features = [str(f) for f in output_features]
    srcs = sources
    measured, presents = [], []
    for matrix, names, _, _ in srcs:
        aligned, present = align_columns(matrix, names, features)
        measured.append(aligned)
        presents.append(present)
    present = np.logical_or.reduce(presents)
    x_measured = _combine(measured, presents)
    input_var = pd.concat([v for _, _, v, _ in srcs]) if len(srcs) > 1 else srcs[0][2]
    var = output_var(features, modality_of, present, input_var)
    layers = {}
    for name in dict.fromkeys(k for _, _, _, ls in srcs for k in ls if k != STD_LAYER):  # never a previous result's spread
        got = [(align_columns(ls[name], names, features)) for _, names, _, ls in srcs if name in ls]
        layers[name] = _combine([g[0] for g in got], [g[1] for g in got])
    values = np.asarray(values, dtype=np.float32)
    if imputed_into == "X":
        x, layers[MEASURED_LAYER] = values, x_measured
    else:
        x, layers[IMPUTED_LAYER] = x_measured, values
    if spread is not None:
        layers[STD_LAYER] = np.asarray(spread, dtype=np.float32)
    out = ad.AnnData(X=x, obs=obs.copy(), var=var, layers=layers)
    out.obsm[LATENT_KEY] = np.asarray(latent, dtype=np.float32)
    if label_categories:
        for column, value in label_table(probs, label_categories, out.obs.index).items():
            out.obs[column] = value.values  # by position: obs names may repeat
    info = {k: v for k, v in provenance.items() if v is not None}
    info["imputed_into"] = imputed_into
    if per_modality:
        info["obsm_features"] = {}
        for m in dict.fromkeys(modality_of):
            cols = [j for j, o in enumerate(modality_of) if o == m]
            out.obsm[f"inclust_{m}"] = values[:, cols]
            info["obsm_features"][m] = [features[j] for j in cols]
    out.uns["inclust"] = info
    return out


def spread_provenance(converter: ScaleConverter, has_spread: bool, source: str | None = None) -> dict:
    """``uns["inclust"]`` entries about ``layers["inclust_std"]``: written (and what it is) or why not; empty for one network.
    ``source``: what the spread is over, when not the ensemble's members (e.g. posterior samples)."""
    if not has_spread:
        return {}
    reason = converter.spread_reason
    if reason is not None:
        return {"std_layer": f"not written: {reason}"}
    what = source or "over the ensemble's members (divided by K)"
    return {"std_layer": STD_LAYER, "std": f"per-feature standard deviation {what}, {converter.scale} scale"}
