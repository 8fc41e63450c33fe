"""The one reference predictor of the tests: what an exported graph must return, computed by hand.

Independent of the exporter and the runtime on purpose: the preprocessing follows the formula of
docs/ARCHITECTURE.md ("Preprocessing") in float64 from the checkpoint description (not from the
contract's plan), and the prediction is the model's own semantics: zero-fill the full feature
vector, mask the features the graph does not take, ``module.predict``, slice the outputs.
"""

from __future__ import annotations

import numpy as np

from inclust_plus.contract.description import ModelDescription, Recipe
from inclust_plus.contract.manifest import Covariate, Modality


def recipe_description(modalities: dict[str, list[str]], recipes: dict[str, dict]) -> ModelDescription:
    """A description holding only what :func:`preprocess_by_hand` reads, for tests of the preprocessing
    alone: ``modalities`` {name: feature names}, ``recipes`` {name: {normalize_total, log1p, scale}}."""
    return ModelDescription(
        name="recipes", module={}, modalities=tuple(Modality(m, tuple(f)) for m, f in modalities.items()),
        covariate=Covariate((), ("none",)),
        preprocessing={m: Recipe(r.get("normalize_total"), bool(r.get("log1p")), None if r.get("scale") is None else tuple(r["scale"]))
                       for m, r in recipes.items() if r},
    )


def feature_names(desc: ModelDescription) -> list[str]:
    return list(desc.feature_names)


def preprocess_by_hand(raw: np.ndarray, desc: ModelDescription, inputs: list[int]) -> np.ndarray:
    """Per modality x/sum*total (sum over its present columns; 0 -> 1), log1p, /scale (0 -> 1); float64.

    ``desc``: the checkpoint's ModelDescription (its ``modalities`` and ``preprocessing`` recipes)."""
    x = np.asarray(raw, dtype=np.float64).copy()
    start = 0
    for mod in desc.modalities:
        n = len(mod.features)
        prep = desc.preprocessing.get(mod.name)
        cols = [c for c, f in enumerate(inputs) if start <= f < start + n]
        if cols and prep is not None:
            part = x[:, cols]
            if prep.normalize_total is not None:
                lib = part.sum(1, keepdims=True)
                part = part / np.where(lib == 0, 1.0, lib) * prep.normalize_total
            if prep.log1p:
                part = np.log1p(part)
            if prep.scale is not None:
                scale = np.asarray([prep.scale[inputs[c] - start] for c in cols], dtype=np.float64)
                part = part / np.where(scale == 0, 1.0, scale)
            x[:, cols] = part
        start += n
    return x


def predict_masked(module, inputs: list[int], outputs: list[int], x: np.ndarray, covariate: np.ndarray,
                   target: np.ndarray | None = None, spread: bool = False, double: bool = False) -> dict[str, np.ndarray]:
    """``module.predict`` on ``x`` (the graph's preprocessed input columns) zero-filled to full width
    with the input mask; ``y`` (and ``y_std`` with ``spread``) sliced to ``outputs``."""
    import torch

    dtype = torch.float64 if double else torch.float32
    n = module.config.n_features
    x_full = torch.zeros(len(x), n, dtype=dtype)
    x_full[:, inputs] = torch.from_numpy(np.asarray(x)).to(dtype)
    mask = torch.zeros(n, dtype=dtype)
    mask[inputs] = 1
    if double:
        module = module.double()
    try:
        with torch.no_grad():
            y, latent, probs, *std = module.predict(x_full, mask, torch.from_numpy(np.asarray(covariate)),
                                                    None if target is None else torch.from_numpy(np.asarray(target)), return_std=spread)
    finally:
        if double:
            module.float()
    out = {"y": y[:, outputs].numpy(), "latent": latent.numpy(), "label_probs": probs.numpy()}
    if std:
        out["y_std"] = std[0][:, outputs].numpy()
    return out


def graph_reference(module, desc: ModelDescription, graph: dict, x: np.ndarray, covariate, target=None, raw: bool = False,
                    double: bool = False) -> dict[str, np.ndarray]:
    """The outputs of manifest graph entry ``graph`` for its input ``x`` (``raw``: preprocess by hand first)."""
    names = feature_names(desc)
    inputs = [names.index(f) for f in graph["input_features"]]
    outputs = [names.index(f) for f in graph["output_features"]]
    if raw:
        x = preprocess_by_hand(x, desc, inputs)
    x = np.asarray(x, np.float64 if double else np.float32)
    spread = any(o["name"] == "y_std" for o in graph["outputs"])
    out = predict_masked(module, inputs, outputs, x, covariate, target, spread, double)
    return {o["name"]: out[o["name"]] for o in graph["outputs"]}
