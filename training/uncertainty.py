"""How sure is each imputed value: the spread of an ensemble's members, or of posterior samples.

Imputed genes correlate with the truth at r ~ 0.3-0.5, so a user needs to know which values to
trust. The imputation preset is an ensemble of independently trained networks (training/network/ensemble.py)
whose decodes are averaged; where they disagree, the mean is less reliable. The spread kept here is
the members' per-feature standard deviation of the decoded values (population form, over the K
members actually trained), measured against the error on real data in benchmarks/uncertainty.py.

A single network has no members to disagree: ``samples = K`` instead decodes K draws of the latent
from the posterior N(mu, s^2) and reports their mean and spread (for an ensemble too, where each
draw is decoded by the averaged members).

``InClust.impute`` (training/api.py: the runtime's ``Predictor`` with the PyTorch module as its
backend, training/torch_backend.py) writes the spread as ``layers["inclust_std"]`` in the layout of
:mod:`inclust_plus.results`; :func:`impute` here is that call with the values in ``X``, and
:func:`predict_with_std` the tensor-level ``InClust.predict`` (the backend's ``run_graph``).
"""

from __future__ import annotations

import numpy as np
import torch

from inclust_plus.errors import InclustError
from inclust_plus.results import STD_LAYER  # the one name of the layer, shared with the runtime and the training API


@torch.no_grad()
def predict_with_std(model, x: np.ndarray, inputs: str, covariate, target_covariate=None, samples: int = 0, seed: int = 0,
                     batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Full-width decoded features and their spread for ``x`` (cells x features of set ``inputs``).

    ``samples = 0``: the ensemble's mean decode (what ``model.predict`` returns) and the members'
    standard deviation. ``samples = K``: mean and standard deviation of K posterior-sample decodes.
    ``covariate``/``target_covariate``: category names, one or one per cell.
    """
    if samples == 0 and model.module.config.members == 1:
        raise InclustError("a single network has no ensemble spread", "pass samples=K (e.g. 20) to use K posterior samples instead")
    y, _, _, sd = model.predict(x, inputs, covariate, target_covariate, batch_size=batch_size, return_std=True, samples=samples, seed=seed)
    return y, sd


def impute(model, data, inputs: str, outputs: str, covariate: str | None = None, covariate_key: str | None = None,
           target_covariate: str | None = None, samples: int = 0, seed: int = 0, layer: str | None = None):
    """``model.impute`` of the combination ``inputs`` -> ``outputs`` with the imputed values in ``X``
    (``imputed_into="X"``; the layout of :mod:`inclust_plus.results`) and their spread in
    ``layers["inclust_std"]``: the ensemble members' (``samples=0``) or that of K posterior samples.

    Kept for its one difference: a single network without ``samples`` has no spread to write, which
    is an error here (``model.impute`` then simply writes no layer).
    """
    if samples == 0 and model.module.config.members == 1:
        raise InclustError("a single network has no ensemble spread", "pass samples=K (e.g. 20) to use K posterior samples instead")
    combos = [c for c in model.description.combinations if c.inputs == inputs and c.outputs == outputs]
    if not combos:
        known = ", ".join(f"{c.inputs} -> {c.outputs}" for c in model.description.combinations if c.decodes)
        raise InclustError(f"the model has no combination {inputs} -> {outputs}", f"choose one of: {known or 'none'}")
    return model.impute(data, combos[0].name, layer=layer, covariate_key=covariate_key, covariate=covariate,
                        target_covariate=target_covariate, imputed_into="X", samples=samples, seed=seed)
