"""The schema of ``manifest.json``: every field's type, range and relation, checked before use.

A manifest is read from a folder someone copied, downloaded or edited, so nothing in it is
trusted: a wrong type is a one-line error naming the field (never a traceback later), every file
the runtime loads (each graph's ONNX file, its TorchScript twin) must carry a 64-hex sha256 (an
empty or missing one would switch the integrity check off), and every path must stay inside the
export folder (no absolute paths, no ``..``, no symbolic link pointing out of it).

The rules are tables (:data:`TOP`, :data:`GRAPH`, ...): a new field is one line. Fields not named
here are ignored by the reader, so a newer exporter's optional additions still load.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable

from inclust_plus.errors import InclustError

from .graphs import INPUT_FORMATS, KINDS, PRECISIONS, graph_io

REEXPORT = "re-export the model with inclust-export"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

Check = Callable[[Any], str | None]  # returns what is wrong, or None


# --- value checks (each returns a problem or None) ------------------------------------------------
def string(v) -> str | None:
    return None if isinstance(v, str) and v != "" else "must be a non-empty string"


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def integer(minimum: int) -> Check:
    return lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= minimum else f"must be an integer >= {minimum}"


def number(positive: bool = False) -> Check:
    def check(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        return None if ok else f"must be a {'positive ' if positive else ''}finite number"

    return check


def boolean(v) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def sha256(v) -> str | None:
    return None if isinstance(v, str) and HEX64.match(v) else "must be a sha256 (64 hexadecimal characters)"


def safe_name(v) -> str | None:
    return None if isinstance(v, str) and SAFE_NAME.match(v) else "must be a name of letters, digits and _.+-"


def choice(*values: str) -> Check:
    return lambda v: None if v in values else f"must be one of {', '.join(values)}"


def list_of(check: Check, non_empty: bool = False, unique: bool = False) -> Check:
    def run(v):
        if not isinstance(v, list):
            return "must be a list"
        if non_empty and not v:
            return "must not be empty"
        for i, item in enumerate(v):
            problem = check(item)
            if problem:
                return _nest(f"[{i}]", problem)
        if unique and len({str(x) for x in v}) != len(v):
            return "has duplicate entries"
        return None

    return run


def category(v) -> str | None:
    ok = isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool))
    return None if ok else "must be a string or a number"


def relative_path(v) -> str | None:
    if not isinstance(v, str) or not v:
        return "must be a file name inside the export folder"
    if PurePosixPath(v).is_absolute() or PureWindowsPath(v).is_absolute() or PureWindowsPath(v).drive or v.startswith("\\"):
        return f"is an absolute path ({v!r}); it must be a file name inside the export folder"
    if ".." in PurePosixPath(v.replace("\\", "/")).parts:
        return f"leaves the export folder ({v!r}); it must be a file name inside it"
    return None


def _nest(step: str, problem: str) -> str:
    """Prefix a problem with where it is: ``.graphs[0].sha256 must be ...``."""
    return f"{step}{problem}" if problem[0] in ".[" else f"{step} {problem}"


def obj(fields: dict[str, tuple[bool, Check]]) -> Check:
    """A JSON object whose ``fields`` are (required, check); the problem names the field."""

    def run(v):
        if not isinstance(v, dict):
            return "must be an object"
        for key, (required, check) in fields.items():
            if key not in v:
                if required:
                    return f"has no field {key!r}"
                continue
            problem = check(v[key])
            if problem:
                return _nest(f".{key}", problem)
        return None

    return run


def mapping(check: Check) -> Check:
    """An object of free keys (modality names), each value checked."""

    def run(v):
        if not isinstance(v, dict):
            return "must be an object"
        for key, value in v.items():
            problem = check(value)
            if problem:
                return _nest(f".{key}", problem)
        return None

    return run


# --- the tables -----------------------------------------------------------------------------------
REQUIRED, OPTIONAL = True, False
STRINGS = list_of(string)
TENSOR = obj({"name": (REQUIRED, string), "dtype": (REQUIRED, string), "shape": (REQUIRED, list_of(lambda d: None if d == "batch" or (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str) else "must be 'batch' or a size"))})

MODEL = {
    "name": (OPTIONAL, optional(lambda v: None if isinstance(v, str) else "must be a string")),
    "sha256": (OPTIONAL, sha256),
    "latent_dim": (REQUIRED, integer(1)),
}
COVARIATE = {
    "keys": (OPTIONAL, optional(STRINGS)),
    "categories": (REQUIRED, list_of(category, non_empty=True, unique=True)),
    "join": (OPTIONAL, string),
}
LABELS = {
    "key": (OPTIONAL, optional(string)),
    "categories": (OPTIONAL, optional(list_of(category, unique=True))),
}
MODALITY = {"name": (REQUIRED, string), "features": (REQUIRED, list_of(string, non_empty=True, unique=True))}
RUN = lambda v: None if (isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v) and v[0] < v[1]) else "must be [start, end] with 0 <= start < end"
PLAN_GROUP = {  # one modality's columns of a graph's input (contract/plan.py ModalityPlan)
    "modality": (REQUIRED, string),
    "runs": (REQUIRED, list_of(RUN, non_empty=True)),
    "normalize_total": (OPTIONAL, optional(number(positive=True))),
    "log1p": (OPTIONAL, optional(boolean)),
    "scale": (OPTIONAL, optional(list_of(number()))),
}
PREPROCESSING = {
    "normalize_total": (OPTIONAL, optional(number(positive=True))),
    "log1p": (OPTIONAL, optional(boolean)),
    "scale": (OPTIONAL, optional(list_of(number()))),
}
VARIANT = {  # another flavour of a graph (issue 11): its own file, pinned by its own sha256
    "input_format": (REQUIRED, choice(*INPUT_FORMATS)),
    "precision": (OPTIONAL, optional(choice(*PRECISIONS))),
    "file": (REQUIRED, relative_path),
    "sha256": (REQUIRED, sha256),
    "inputs": (OPTIONAL, optional(list_of(TENSOR))),
    "outputs": (OPTIONAL, optional(list_of(TENSOR))),
}
GRAPH = {
    "name": (REQUIRED, safe_name),
    "kind": (REQUIRED, choice(*KINDS)),
    "file": (REQUIRED, relative_path),
    "sha256": (REQUIRED, sha256),
    "opset": (OPTIONAL, optional(integer(1))),
    "torchscript": (OPTIONAL, optional(relative_path)),
    "torchscript_sha256": (OPTIONAL, optional(sha256)),
    "folded_preprocessing": (OPTIONAL, optional(boolean)),
    "input_modalities": (REQUIRED, list_of(string, non_empty=True)),
    "output_modalities": (OPTIONAL, optional(STRINGS)),
    "input_features": (REQUIRED, list_of(string, non_empty=True, unique=True)),
    "output_features": (OPTIONAL, optional(list_of(string, unique=True))),
    "default_target_covariate": (OPTIONAL, optional(category)),
    "default_covariate": (OPTIONAL, optional(category)),
    "inputs": (REQUIRED, list_of(TENSOR, non_empty=True)),
    "outputs": (REQUIRED, list_of(TENSOR, non_empty=True)),
    "input_format": (OPTIONAL, optional(choice(*INPUT_FORMATS))),
    "precision": (OPTIONAL, optional(choice(*PRECISIONS))),
    "preprocessing_plan": (REQUIRED, list_of(obj(PLAN_GROUP), non_empty=True)),
    "variants": (OPTIONAL, optional(list_of(obj(VARIANT)))),
    "torch_export": (OPTIONAL, optional(relative_path)),
    "torch_export_sha256": (OPTIONAL, optional(sha256)),
}
TOP = {
    "format_version": (REQUIRED, integer(1)),
    "exporter_version": (OPTIONAL, optional(lambda v: None if isinstance(v, str) else "must be a string")),
    "model": (REQUIRED, obj(MODEL)),
    "covariate": (REQUIRED, obj(COVARIATE)),
    "labels": (OPTIONAL, optional(obj(LABELS))),
    "modalities": (REQUIRED, list_of(obj(MODALITY), non_empty=True)),
    "preprocessing": (OPTIONAL, optional(mapping(optional(obj(PREPROCESSING))))),
    "graphs": (REQUIRED, list_of(obj(GRAPH), non_empty=True)),
}


# --- relations between fields and the files on disk -----------------------------------------------
def confined(folder: Path, name: str, what: str, manifest: Path) -> Path:
    """``folder / name``, refused when it (or a symbolic link on the way) leads out of ``folder``."""
    path = folder / name
    inside = folder.resolve()
    real = path.resolve()
    if real != inside and not real.is_relative_to(inside):
        raise InclustError(f"manifest {manifest}: {what} {name!r} leads out of the export folder (to {real})", f"{REEXPORT}; graph files must live in the export folder")
    return path


def validate(raw: Any, path: Path) -> None:
    """Raise a one-line :class:`InclustError` for the first field of ``raw`` that breaks the schema."""
    problem = obj(TOP)(raw)
    if problem:
        where = f"field {problem[1:]}" if problem[0] in ".[" else problem
        raise InclustError(f"manifest {path}: {where}", REEXPORT)
    categories = {str(c) for c in raw["covariate"]["categories"]}
    features = {m["name"]: set(m["features"]) for m in raw["modalities"]}
    names = set()
    for i, g in enumerate(raw["graphs"]):
        where = f"manifest {path}: graph {g['name']!r}"
        if g["name"] in names:
            raise InclustError(f"manifest {path}: two graphs are named {g['name']!r}", REEXPORT)
        names.add(g["name"])
        for key, what in (("torchscript", "a TorchScript file"), ("torch_export", "a torch.export program")):
            if g.get(key) and not g.get(f"{key}_sha256"):
                raise InclustError(f"{where} has {what} but no {key}_sha256", f"{REEXPORT} (every file the runtime loads is pinned by its sha256)")
        if g.get("kind") == "impute" and not g.get("output_features"):
            raise InclustError(f"{where} is an impute graph without output_features", REEXPORT)
        for key in ("default_target_covariate", "default_covariate"):
            value = g.get(key)
            if value is not None and str(value) not in categories:
                raise InclustError(f"{where}: {key} {value!r} is not a covariate category", REEXPORT)
        _check_plan(g, features, where)
        _check_io(g, where)
        _check_widths(g, raw, where)
        for key in ("file", "torchscript", "torch_export"):
            if g.get(key):
                confined(path.parent, g[key], f"graph {g['name']!r} {key}", path)
        for v in g.get("variants") or ():
            confined(path.parent, v["file"], f"graph {g['name']!r} {v['input_format']} flavour file", path)


def _check_plan(g: dict, features: dict[str, set], where: str) -> None:
    """The graph's preprocessing plan covers each input column exactly once, by the modality that owns it."""
    n = len(g["input_features"])
    owner: list[str | None] = [None] * n
    for group in g["preprocessing_plan"]:
        m = group["modality"]
        if m not in features:
            raise InclustError(f"{where}: its preprocessing names modality {m!r} that the manifest does not list", REEXPORT)
        count = 0
        for start, end in group["runs"]:
            if end > n:
                raise InclustError(f"{where}: a preprocessing run of {m!r} ends at {end}, past its {n} input columns", REEXPORT)
            for c in range(start, end):
                if owner[c] is not None:
                    raise InclustError(f"{where}: input column {c} is in two preprocessing runs", REEXPORT)
                if g["input_features"][c] not in features[m]:
                    raise InclustError(f"{where}: input feature {g['input_features'][c]!r} is not a feature of {m!r}", REEXPORT)
                owner[c] = m
            count += end - start
        if group.get("scale") is not None and len(group["scale"]) != count:
            raise InclustError(f"{where}: the preprocessing scale of {m!r} has {len(group['scale'])} values for {count} columns", REEXPORT)
    if None in owner:
        raise InclustError(f"{where}: input column {owner.index(None)} is in no preprocessing run", REEXPORT)


def _check_io(g: dict, where: str) -> None:
    """Each flavour's inputs are the graph table's for its kind and input format, in that order; its outputs too
    (an ensemble's decoding graph adds ``y_std``)."""
    flavours = [(g.get("input_format") or "dense", g["inputs"], g["outputs"])]
    flavours += [(v["input_format"], v.get("inputs") or [], v.get("outputs") or g["outputs"]) for v in g.get("variants") or ()]
    for fmt, inputs, outputs in flavours:
        spec = graph_io(g["kind"], fmt, members=2 if any(t["name"] == "y_std" for t in outputs) else 1)
        want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
        if inputs and [t["name"] for t in inputs] != want_in:
            raise InclustError(f"{where}: its {fmt} inputs are {[t['name'] for t in inputs]}, an {g['kind']} graph takes {want_in}", REEXPORT)
        if [t["name"] for t in outputs] != want_out:
            raise InclustError(f"{where}: its {fmt} outputs are {[t['name'] for t in outputs]}, an {g['kind']} graph returns {want_out}", REEXPORT)


def _check_widths(g: dict, raw: dict, where: str) -> None:
    """Each flavour's declared static widths are the manifest's own sizes: ``x`` its input features,
    ``y``/``y_std`` its output features, ``latent`` the model's latent size, ``label_probs`` its label
    count. An edited feature list (issue 25) is refused here, before a graph is run on it."""
    labels = (raw.get("labels") or {}).get("categories") or []
    sizes = {"x": len(g["input_features"]), "y": len(g.get("output_features") or []), "y_std": len(g.get("output_features") or []),
             "latent": raw["model"]["latent_dim"], "label_probs": len(labels) if labels else None}
    tensors = [*g["inputs"], *g["outputs"]]
    for v in g.get("variants") or ():
        tensors += [*(v.get("inputs") or []), *(v.get("outputs") or [])]
    for t in tensors:
        want = sizes.get(t["name"])
        if want is None or len(t["shape"]) < 2 or not isinstance(t["shape"][1], int):
            continue
        if t["shape"][1] != want:
            what = {"x": "input features", "y": "output features", "y_std": "output features", "latent": "latent dimensions",
                    "label_probs": "label categories"}[t["name"]]
            raise InclustError(f"{where}: its {t['name']} is {t['shape'][1]} wide, the manifest lists {want} {what}", REEXPORT)
