"""The one writer and the one reader of the checkpoint's model description.

:func:`to_json` turns a :class:`~.description.ModelDescription` into the JSON object stored as
``description_json`` in ``model.pt``; :func:`from_json` trusts nothing in such an object: it checks
every field against the tables below (the manifest schema's checks, :mod:`.schema`), then the
relations between fields and with the weights' sizes (``module``), and raises one line naming the
broken field ("re-run inclust-train") before building the dataclasses.
``from_json(to_json(d)) == d``; a checkpoint written before the dataclasses reads the same way.
"""

from __future__ import annotations

from typing import Any

from inclust_plus import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION
from inclust_plus.errors import InclustError

from .description import (LABEL_MODES, CombinationEntry, DatasetRecord, FeatureSet, MappingRecord, ModelDescription, ReadoutRecord,
                          Recipe, TrainedLabels, TrainingRecord)
from .manifest import Covariate, Modality
from .schema import boolean, category, choice, integer, list_of, mapping, number, obj, optional, safe_name, string

RETRAIN = "re-run inclust-train (or inclust-map) to write the model again"

# --- the tables (required, check) -----------------------------------------------------------------
REQUIRED, OPTIONAL = True, False


def _any_number(v) -> str | None:
    return None if isinstance(v, (int, float)) and not isinstance(v, bool) else "must be a number"


def _set_ref(v) -> str | None:
    """A combination's inputs or outputs: one feature set's name or a list of them."""
    return string(v) if isinstance(v, str) else list_of(string, non_empty=True)(v)


def _text(v) -> str | None:
    return None if isinstance(v, str) else "must be a string"


MODULE = {  # the sizes export and the reader rely on; the rest is ModuleConfig's (training/network/module.py)
    "n_features": (REQUIRED, integer(1)),
    "n_covariates": (REQUIRED, integer(1)),
    "n_labels": (REQUIRED, integer(1)),
    "latent_dim": (REQUIRED, integer(1)),
    "members": (OPTIONAL, integer(1)),
}
MODALITY = {"name": (REQUIRED, string), "features": (REQUIRED, list_of(string, non_empty=True, unique=True))}
COVARIATE = {
    "keys": (OPTIONAL, optional(list_of(string))),
    "categories": (REQUIRED, list_of(category, non_empty=True, unique=True)),
}
LABELS = {
    "key": (OPTIONAL, optional(string)),
    "categories": (OPTIONAL, optional(list_of(category, unique=True))),
    "mode": (OPTIONAL, optional(choice(*LABEL_MODES))),
}
RECIPE = {
    "normalize_total": (OPTIONAL, optional(number(positive=True))),
    "log1p": (OPTIONAL, optional(boolean)),
    "scale": (OPTIONAL, optional(list_of(number(positive=True)))),
}
FEATURE_SET = {"modalities": (REQUIRED, list_of(string)), "features": (REQUIRED, list_of(integer(0), unique=True))}
COMBINATION = {
    "name": (REQUIRED, safe_name),
    "inputs": (REQUIRED, _set_ref),
    "outputs": (OPTIONAL, optional(_set_ref)),
    "default_target_covariate": (OPTIONAL, optional(category)),
    "default_covariate": (OPTIONAL, optional(category)),
}
DATASET = {
    "name": (REQUIRED, string),
    "cells": (REQUIRED, integer(0)),
    "measured_features": (REQUIRED, integer(0)),
    "mapped": (OPTIONAL, optional(boolean)),
}
TRAINING = {
    "epochs": (REQUIRED, integer(0)),
    "rows_per_second": (OPTIONAL, optional(_any_number)),
    "best_epoch": (OPTIONAL, optional(integer(0))),
    "seconds": (OPTIONAL, optional(_any_number)),
    "history": (OPTIONAL, optional(mapping(list_of(_any_number)))),
}
MAPPING = {
    "categories": (REQUIRED, list_of(category, non_empty=True, unique=True)),
    "cells": (REQUIRED, mapping(integer(0))),
    "skipped_known_cells": (REQUIRED, integer(0)),
    "feature_set": (REQUIRED, string),
    "steps": (REQUIRED, integer(1)),
    "learning_rate": (REQUIRED, number(positive=True)),
    "seed": (REQUIRED, integer(0)),
    "seconds": (REQUIRED, _any_number),
    "initial_loss": (REQUIRED, _any_number),
    "final_loss": (REQUIRED, _any_number),
    "source": (OPTIONAL, optional(_text)),
    "date": (OPTIONAL, optional(_text)),
}
READOUT = {
    "combination": (REQUIRED, string),
    "features": (REQUIRED, list_of(integer(0), non_empty=True, unique=True)),
    "cells": (REQUIRED, integer(1)),
    "datasets": (REQUIRED, list_of(string, non_empty=True)),
    "k_latent": (REQUIRED, integer(1)),
    "k_inputs": (REQUIRED, integer(1)),
    "weights": (REQUIRED, list_of(number())),
}
TOP = {
    "name": (REQUIRED, string),
    "task": (OPTIONAL, optional(string)),
    "package_version": (OPTIONAL, optional(_text)),
    "module": (REQUIRED, obj(MODULE)),
    "schema": (REQUIRED, obj({"modalities": (REQUIRED, list_of(obj(MODALITY), non_empty=True))})),
    "covariate": (REQUIRED, obj(COVARIATE)),
    "labels": (OPTIONAL, optional(obj(LABELS))),
    "preprocessing": (OPTIONAL, optional(mapping(optional(obj(RECIPE))))),
    "feature_sets": (REQUIRED, mapping(obj(FEATURE_SET))),
    "combinations": (REQUIRED, list_of(obj(COMBINATION))),
    "datasets": (OPTIONAL, optional(list_of(obj(DATASET)))),
    "hyperparameters": (OPTIONAL, optional(mapping(lambda v: None))),
    "training": (OPTIONAL, optional(obj(TRAINING))),
    "mapping": (OPTIONAL, optional(list_of(obj(MAPPING)))),
    "readout": (OPTIONAL, optional(obj(READOUT))),
}


# --- JSON -> dataclasses ------------------------------------------------------------------------
def _fail(where: str, problem: str) -> InclustError:
    return InclustError(f"{where}: {problem}", RETRAIN)


def _category(v) -> str | None:
    return None if v is None else str(v)


def _refs(v):
    return None if v is None else (str(v) if isinstance(v, str) else tuple(str(s) for s in v))


def _relations(d: ModelDescription, where: str) -> None:
    """What the tables cannot say: indices in range, names that exist, sizes that match the weights."""
    n, module = d.n_features, d.module
    problems = []
    if n != module["n_features"]:
        problems.append(f"{n} feature names for {module['n_features']} features")
    if len(d.covariate.categories) != module["n_covariates"]:
        problems.append(f"{len(d.covariate.categories)} covariate categories for {module['n_covariates']} embeddings")
    if d.labels.categories and len(d.labels.categories) != module["n_labels"]:
        problems.append(f"{len(d.labels.categories)} label categories for {module['n_labels']} classifier outputs")
    if problems:
        raise _fail(where, f"description does not match its weights: {problems[0]}")
    modality_names = {m.name for m in d.modalities}
    if len(modality_names) != len(d.modalities):
        raise _fail(where, "two modalities of schema.modalities share a name")
    for name, fs in d.feature_sets.items():
        outside = [i for i in fs.features if i >= n]
        if outside:
            raise _fail(where, f"feature set {name!r} uses feature index {outside[0]} outside 0..{n - 1}")
    for mod, recipe in d.preprocessing.items():
        if recipe.scale is not None and mod in modality_names:
            count = len(next(m for m in d.modalities if m.name == mod).features)
            if len(recipe.scale) != count:
                raise _fail(where, f"preprocessing.{mod}.scale has {len(recipe.scale)} values for {count} features")
    categories = set(d.covariate.categories)
    for c in d.combinations:
        for refs in (c.inputs, c.outputs):
            for s in (refs,) if isinstance(refs, str) else refs or ():
                if s not in d.feature_sets:
                    raise _fail(where, f"combination {c.name!r} uses feature set {s!r} that the description does not define "
                                       f"(known sets: {', '.join(sorted(d.feature_sets))})")
        if not d.set_features(c.inputs):
            raise _fail(where, f"combination {c.name!r} has no input features")
        for what, value in (("targets", c.default_target_covariate), ("defaults to", c.default_covariate)):
            if value is not None and value not in categories:
                raise _fail(where, f"combination {c.name!r} {what} unknown covariate {value!r}")
    names = [c.name for c in d.combinations]
    if len(set(names)) != len(names):
        raise _fail(where, "two combinations share a name")
    if d.readout is not None:
        _readout_relations(d, d.readout, where)


def _readout_relations(d: ModelDescription, r: ReadoutRecord, where: str) -> None:
    """The read-out names a decoding combination that outputs its features, and three weights summing to 1."""
    combo = next((c for c in d.combinations if c.name == r.combination), None)
    if combo is None or not combo.decodes:
        raise _fail(where, f"readout.combination {r.combination!r} is not a decoding combination of the description")
    outputs = set(d.set_features(combo.outputs))
    outside = [f for f in r.features if f not in outputs]
    if outside:
        raise _fail(where, f"readout.features has feature {outside[0]}, which combination {r.combination!r} does not output")
    if len(r.weights) != 3 or min(r.weights) < 0 or abs(sum(r.weights) - 1) > 1e-6:
        raise _fail(where, f"readout.weights {list(r.weights)} are not three non-negative numbers summing to 1")


def from_json(raw: Any, where: str = "the description given") -> ModelDescription:
    """Check ``raw`` (the parsed ``description_json``) and build the :class:`ModelDescription`.

    ``where`` starts every error (e.g. ``"checkpoint model.pt"``)."""
    if not isinstance(raw, dict):
        raise _fail(where, "description is not a JSON object")
    problem = obj(TOP)(raw)
    if problem:
        raise _fail(where, f"description field {problem[1:]}" if problem[0] in ".[" else f"description {problem}")
    labels = raw.get("labels") or {}
    training = raw.get("training")
    d = ModelDescription(
        name=raw["name"],
        task=raw.get("task") or "custom",
        package_version=raw.get("package_version"),
        module=dict(raw["module"]),
        modalities=tuple(Modality(m["name"], tuple(m["features"])) for m in raw["schema"]["modalities"]),
        covariate=Covariate(tuple(raw["covariate"].get("keys") or ()), tuple(str(c) for c in raw["covariate"]["categories"])),
        labels=TrainedLabels(labels.get("key"), tuple(str(c) for c in labels.get("categories") or ()), labels.get("mode") or "unsupervised"),
        preprocessing={
            m: Recipe(r.get("normalize_total"), bool(r.get("log1p", False)), None if r.get("scale") is None else tuple(float(v) for v in r["scale"]))
            for m, r in ((m, r or {}) for m, r in (raw.get("preprocessing") or {}).items())
        },
        feature_sets={k: FeatureSet(tuple(v["modalities"]), tuple(v["features"])) for k, v in raw["feature_sets"].items()},
        combinations=tuple(
            CombinationEntry(c["name"], _refs(c["inputs"]), _refs(c.get("outputs")), _category(c.get("default_target_covariate")),
                             _category(c.get("default_covariate")))
            for c in raw["combinations"]
        ),
        datasets=tuple(DatasetRecord(e["name"], e["cells"], e["measured_features"], bool(e.get("mapped", False)))
                       for e in raw.get("datasets") or ()),
        hyperparameters=dict(raw.get("hyperparameters") or {}),
        training=None if training is None else TrainingRecord(
            epochs=training["epochs"], rows_per_second=training.get("rows_per_second") or 0.0, best_epoch=training.get("best_epoch"),
            seconds=training.get("seconds"), history={k: tuple(v) for k, v in (training.get("history") or {}).items()},
        ),
        mapping=tuple(
            MappingRecord(tuple(str(c) for c in e["categories"]), dict(e["cells"]), e["skipped_known_cells"], e["feature_set"], e["steps"],
                          e["learning_rate"], e["seed"], e["seconds"], e["initial_loss"], e["final_loss"], e.get("source"), e.get("date"))
            for e in raw.get("mapping") or ()
        ),
        readout=None if raw.get("readout") is None else _readout(raw["readout"]),
    )
    _relations(d, where)
    return d


def _readout(r: dict) -> ReadoutRecord:
    return ReadoutRecord(r["combination"], tuple(r["features"]), r["cells"], tuple(r["datasets"]), r["k_latent"], r["k_inputs"],
                         tuple(float(w) for w in r["weights"]))


def as_description(description: ModelDescription | dict, where: str = "the description given") -> ModelDescription:
    """``description`` itself, or the JSON object of one read by :func:`from_json` (the one reader)."""
    return description if isinstance(description, ModelDescription) else from_json(description, where)


# --- dataclasses -> JSON ------------------------------------------------------------------------
def _ref_json(v):
    return v if v is None or isinstance(v, str) else list(v)


def to_json(d: ModelDescription) -> dict:
    """The JSON object stored as ``description_json`` (``json.dumps(..., sort_keys=True)`` in the checkpoint)."""
    out = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "name": d.name,
        "task": d.task,
        "package_version": d.package_version,
        "module": dict(d.module),
        "schema": {"modalities": [{"name": m.name, "features": list(m.features)} for m in d.modalities]},
        "covariate": {"keys": list(d.covariate.keys), "categories": list(d.covariate.categories)},
        "labels": {"key": d.labels.key, "categories": list(d.labels.categories), "mode": d.labels.mode},
        "preprocessing": {m: recipe_json(r) for m, r in d.preprocessing.items()},
        "feature_sets": {k: {"modalities": list(v.modalities), "features": list(v.features)} for k, v in d.feature_sets.items()},
        "combinations": [
            {"name": c.name, "inputs": _ref_json(c.inputs), "outputs": _ref_json(c.outputs),
             "default_target_covariate": c.default_target_covariate, "default_covariate": c.default_covariate}
            for c in d.combinations
        ],
        "datasets": [
            {"name": e.name, "cells": e.cells, "measured_features": e.measured_features, **({"mapped": True} if e.mapped else {})}
            for e in d.datasets
        ],
        "hyperparameters": dict(d.hyperparameters),
    }
    if d.training is not None:
        t = d.training
        out["training"] = {"epochs": t.epochs, "best_epoch": t.best_epoch, "seconds": t.seconds, "rows_per_second": t.rows_per_second,
                           "history": {k: list(v) for k, v in t.history.items()}}
    if d.mapping:
        out["mapping"] = [
            {"categories": list(e.categories), "cells": dict(e.cells), "skipped_known_cells": e.skipped_known_cells,
             "feature_set": e.feature_set, "steps": e.steps, "learning_rate": e.learning_rate, "seed": e.seed, "seconds": e.seconds,
             "initial_loss": e.initial_loss, "final_loss": e.final_loss, "source": e.source, "date": e.date}
            for e in d.mapping
        ]
    if d.readout is not None:  # absent, not null, when off: older descriptions keep their bytes
        out["readout"] = readout_json(d.readout)
    return out


def readout_json(r: ReadoutRecord) -> dict:
    """The JSON object of one read-out record (the inverse of the reader's ``_readout``)."""
    return {"combination": r.combination, "features": list(r.features), "cells": r.cells, "datasets": list(r.datasets),
            "k_latent": r.k_latent, "k_inputs": r.k_inputs, "weights": list(r.weights)}


def recipe_json(r: Recipe) -> dict:
    """One modality's recipe as the checkpoint and the manifest write it."""
    return {"normalize_total": r.normalize_total, "log1p": r.log1p, "scale": None if r.scale is None else list(r.scale)}

