"""How sure is each imputed value: the spread of an ensemble's members, or of posterior samples.

Imputed genes correlate with the truth at r ~ 0.3-0.5, so a user needs to know which values to
trust. The imputation preset is an ensemble of independently trained networks (training/ensemble.py)
whose decodes are averaged; where they disagree, the mean is less reliable. The spread kept here is
the members' per-feature standard deviation of the decoded values (population form, over the K
members actually trained), measured against the error on real data in benchmarks/uncertainty.py.

A single network has no members to disagree: ``samples = K`` instead decodes K draws of the latent
from the posterior N(mu, s^2) and reports their mean and spread (for an ensemble too, where each
draw is decoded by the averaged members).

Written into AnnData as ``X`` (the imputed values) and ``layers["inclust_std"]`` (their spread),
with the cells' ``obs`` and provenance in ``uns["inclust"]``.
"""

from __future__ import annotations

import numpy as np
import torch

from inclust_plus.errors import InclustError
from inclust_plus.results import STD_LAYER  # the one name of the layer, shared with the runtime and the training API

from .query_data import align_cells, covariate_values


@torch.no_grad()
def predict_with_std(model, x: np.ndarray, inputs: str, covariate, target_covariate=None, samples: int = 0, seed: int = 0,
                     batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Full-width decoded features and their spread for ``x`` (cells x features of set ``inputs``).

    ``samples = 0``: the ensemble's mean decode (what ``model.predict`` returns) and the members'
    standard deviation. ``samples = K``: mean and standard deviation of K posterior-sample decodes.
    ``covariate``/``target_covariate``: category names, one or one per cell.
    """
    module = model.module.eval()
    if samples < 0:
        raise InclustError(f"samples is {samples}", "pass 0 (the ensemble's spread) or a number of posterior samples")
    if samples == 0 and module.config.members == 1:
        raise InclustError("a single network has no ensemble spread", "pass samples=K (e.g. 20) to use K posterior samples instead")
    if samples == 0:  # the members' spread comes out of the ordinary masked prediction
        y, _, _, sd = model.predict(x, inputs, covariate, target_covariate, batch_size=batch_size, return_std=True)
        return y, sd
    idx = model.feature_set(inputs)
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    cov = np.broadcast_to(model.covariate_index(covariate), (n,))
    tgt = cov if target_covariate is None else np.broadcast_to(model.covariate_index(target_covariate), (n,))
    mask = torch.zeros(1, model.n_features)
    mask[0, idx] = 1.0
    gen = torch.Generator().manual_seed(seed)
    means, stds = [], []
    for s in range(0, n, batch_size):
        full = torch.zeros(min(batch_size, n - s), model.n_features)
        full[:, idx] = torch.from_numpy(x[s : s + batch_size])
        c = torch.from_numpy(np.array(cov[s : s + batch_size]))
        t = torch.from_numpy(np.array(tgt[s : s + batch_size]))
        mu, log_var = module.encode(full, mask)
        shift = module.covariate_embedding[t] - module.covariate_embedding[c]
        sd_z = torch.exp(0.5 * log_var)
        draws = torch.stack([module.decode(mu + sd_z * torch.randn(mu.shape, generator=gen) + shift) for _ in range(samples)])
        y, sd = draws.mean(0), draws.std(0, correction=0)
        means.append(y.numpy()), stds.append(sd.numpy())
    return np.concatenate(means), np.concatenate(stds)


def _combination(model, inputs: str, outputs: str) -> dict:
    for c in model.description.get("combinations", []):
        if c["inputs"] == inputs and c.get("outputs") == outputs:
            return c
    return {}


def impute(model, data, inputs: str, outputs: str, covariate: str | None = None, covariate_key: str | None = None,
           target_covariate: str | None = None, samples: int = 0, seed: int = 0, layer: str | None = None):
    """An AnnData of ``data``'s cells x the features of set ``outputs``: the imputed values in ``X``,
    their spread in ``layers["inclust_std"]``.

    ``data`` (AnnData/MuData) must hold every feature of set ``inputs`` (raw values; the model's
    preprocessing is applied). The cells' covariate is ``covariate`` or obs column ``covariate_key``
    (default: the covariate of the dataset whose panel ``inputs`` is); values are decoded into
    ``target_covariate`` (default: the combination's, else each cell's own).
    """
    import anndata
    import pandas as pd

    desc = model.description
    combo = _combination(model, inputs, outputs)
    in_idx, out_idx = model.feature_set(inputs), model.feature_set(outputs)
    cells = align_cells(desc, data, layer=layer)
    missing = [i for i in in_idx if not cells.measured[i]]
    if missing:
        names = [f for m in desc["schema"]["modalities"] for f in m["features"]]
        raise InclustError(f"the data lacks {len(missing)} of the {len(in_idx)} input features of {inputs!r} (e.g. {names[missing[0]]!r})",
                           "pass cells measured on that panel, or choose the feature set they were measured on")
    if covariate is None and covariate_key is None:
        covariate = combo.get("default_covariate")
        if covariate is None:
            raise InclustError(f"no default covariate for inputs {inputs!r}", "pass covariate=NAME or covariate_key=COLUMN")
    cov = covariate_values(cells, covariate, covariate_key)
    target = target_covariate if target_covariate is not None else combo.get("default_target_covariate")
    x = cells.dense(0, cells.n_cells)[:, in_idx]
    y, sd = predict_with_std(model, x, inputs, cov, target, samples=samples, seed=seed)
    names = [f for m in desc["schema"]["modalities"] for f in m["features"]]
    out = anndata.AnnData(X=y[:, out_idx], obs=pd.DataFrame(index=pd.Index(cells.obs_names.astype(str))),
                          var=pd.DataFrame(index=pd.Index([names[i] for i in out_idx])))
    out.obs = cells.obs.copy().set_index(out.obs_names) if len(cells.obs) == out.n_obs else out.obs
    out.layers[STD_LAYER] = sd[:, out_idx]
    out.uns["inclust"] = {"model": desc.get("name", ""), "inputs": inputs, "outputs": outputs,
                          "target_covariate": target if target is not None else "own",
                          "spread": f"{samples} posterior samples" if samples else f"{model.module.config.members} ensemble members",
                          "std_layer": STD_LAYER}
    return out
