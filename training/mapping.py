"""Map new cells onto a trained model: learn only the embedding rows of their new covariate categories.

inClust+ removes a batch by vector arithmetic, z_c = mu - e_b, with e_b one row of a linear
embedding of the one-hot covariate. A batch the model never saw therefore needs exactly one new
row, and everything else (encoder, decoder, classifier, prior means, the other rows) can stay
frozen - the inClust+ counterpart of scArches' query mapping.

Which objective learns that row: the training loss restricted to the new cells, without labels.
Its reconstruction term decodes the posterior sample z, which does not involve e_b, and with a
frozen encoder the posterior (mu, log s^2) of every new cell is fixed. What remains is

    w_kl  * mean_i sum_k q_k(mu_i - e) * KL(N(mu_i, s_i^2) || N(m_k + e, I))
  + w_cat * mean_i sum_k q_k log q_k          (only for a model trained without any labels)

with q = softmax(classifier(mu - e)): the new row is the offset that puts the new cells' corrected
latents onto the learned cell-type priors. The posteriors are computed once (one encoder pass),
after which each optimisation step costs a few small matrix products - seconds, not minutes, and
no decoder pass at all.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timezone

import numpy as np
import torch
from tqdm.auto import tqdm

from inclust_plus import interrupt
from inclust_plus.errors import InclustError

from .loss import posterior_terms
from .module import InClustModule, ModuleConfig
from .optim import adam, cosine_lr
from .query_data import QueryCells, align_cells, covariate_values

CHUNK = 8192  # cells per encoder pass
FULL_BATCH = 65536  # up to this many cells every step sees all of them; above, a random subset of this size


@torch.no_grad()
def _posteriors(module: InClustModule, cells: QueryCells, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance of the given cells (one frozen encoder pass)."""
    mask = torch.from_numpy(cells.measured.astype(np.float32))[None]
    mus, lvs = [], []
    for s in range(0, len(rows), CHUNK):
        x = torch.from_numpy(np.asarray(cells.x[rows[s : s + CHUNK]].toarray(), dtype=np.float32))
        mu, lv = module.encode(x, mask)
        mus.append(mu), lvs.append(lv)
    return torch.cat(mus), torch.cat(lvs)


def mapping_loss(module: InClustModule, mu: torch.Tensor, log_var: torch.Tensor, e: torch.Tensor, kl_weight: float,
                 cat_weight: float, unsupervised: bool) -> torch.Tensor:
    """The part of the training loss (training/loss.py, its very term functions) that depends on the
    covariate row ``e`` [n, D]: the KL and categorical terms of unlabeled cells at z_c = mu - e."""
    z_c = mu - e
    kl, cat, _, _ = posterior_terms(z_c, log_var, module.classify(z_c), module.prior_means, None, unsupervised)
    return kl_weight * kl + cat_weight * cat


def _extended(module: InClustModule, rows: torch.Tensor) -> InClustModule:
    """A copy of ``module`` whose covariate table has ``rows`` appended; every other tensor copied as is."""
    cfg = ModuleConfig(**{**module.config.to_dict(), "n_covariates": module.config.n_covariates + rows.shape[0]})
    out = InClustModule(cfg)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["covariate_embedding"] = torch.cat([state["covariate_embedding"], rows.detach().to(state["covariate_embedding"].dtype)])
    out.load_state_dict(state)
    return out.eval()


def _panel(description: dict, measured: np.ndarray, set_name: str, categories: list[str]) -> str:
    """The feature set the new cells measured: an existing set with the same features, or a new one
    (with its impute and embed combinations, so inclust-export builds graphs for it)."""
    features = np.flatnonzero(measured).tolist()
    for name, fs in description["feature_sets"].items():
        if sorted(map(int, fs["features"])) == features:
            return name
    sets = description["feature_sets"]
    while set_name in sets:
        set_name += "_panel"
    tables = description["schema"]["modalities"]
    starts = np.cumsum([0] + [len(m["features"]) for m in tables])
    present = [m["name"] for m, a, b in zip(tables, starts[:-1], starts[1:]) if measured[a:b].any()]
    sets[set_name] = {"modalities": present, "features": features}
    default = categories[0] if len(categories) == 1 else None
    for m, a, b in zip(tables, starts[:-1], starts[1:]):
        if not measured[a:b].all():  # something of this modality to impute or generate
            description["combinations"].append({"name": f"{set_name}_to_{m['name']}", "inputs": set_name, "outputs": m["name"],
                                                "default_target_covariate": None, "default_covariate": default})
    description["combinations"].append({"name": f"{set_name}_embed", "inputs": set_name, "outputs": None,
                                        "default_target_covariate": None, "default_covariate": default})
    return set_name


def map_query(model, data, name: str | None = None, covariate_key: str | None = None, layer: str | None = None,
              preprocessed: bool = False, steps: int = 300, learning_rate: float = 0.05, seed: int = 0,
              progress: bool = True, source: str | None = None):
    """A copy of ``model`` (an :class:`~inclust_plus.training.model.InClust`) that knows the new
    covariate categories of ``data`` (AnnData or MuData; no labels needed).

    Cells belong to category ``name`` or to the categories of obs column ``covariate_key``; for each
    category the model does not know, one embedding row is learned with every other weight frozen
    (module docstring). Cells of known categories are left out. The copy's description records
    the mapping under ``"mapping"``; ``model`` itself is unchanged.
    """
    from .model import InClust

    if steps < 1:
        raise InclustError(f"steps is {steps}", "map with at least 1 optimisation step")
    desc = copy.deepcopy(model.description)
    cells = align_cells(desc, data, layer=layer, preprocessed=preprocessed)
    values = covariate_values(cells, name, covariate_key)
    known = list(desc["covariate"]["categories"])
    new = [c for c in dict.fromkeys(values.tolist()) if c not in known]
    if not new:
        raise InclustError(f"every covariate category of the data ({', '.join(sorted(set(values.tolist())))}) is already in the model",
                           "nothing to map: run the model on these cells directly, or give them a new --name")
    rows = np.flatnonzero(np.isin(values, new))
    position = {c: i for i, c in enumerate(new)}
    which = torch.tensor([position[c] for c in values[rows]], dtype=torch.int64)  # row of ``new`` per mapped cell

    module = model.module.eval()
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mu, log_var = _posteriors(module, cells, rows)
    loss_cfg = desc.get("hyperparameters", {}).get("loss", {})
    kl_w, cat_w = float(loss_cfg.get("kl", 1.0)), float(loss_cfg.get("categorical", 1.0))
    unsupervised = desc.get("labels", {}).get("mode") == "unsupervised"
    # Start from the mean of the known rows: the offset of a typical batch.
    start = module.covariate_embedding.detach().mean(0, keepdim=True).repeat(len(new), 1)
    table = torch.nn.Parameter(start.clone())
    for p in module.parameters():
        p.requires_grad_(False)
    # torch's fused Adam kernel and the cosine decay in closed form: constructing torch.optim.Adam
    # imports torch._dynamo, ~1.2 s of a mapping that takes seconds (training/optim.py)
    opt = adam([table], learning_rate, table.device)
    history = []
    bar = tqdm(range(steps), desc=f"mapping {len(rows):,} cells", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            interrupt.check()  # Ctrl-C/SIGTERM: stop between steps, nothing is written
            idx = torch.randperm(len(rows), generator=gen)[:FULL_BATCH] if len(rows) > FULL_BATCH else slice(None)
            loss = mapping_loss(module, mu[idx], log_var[idx], table[which[idx]], kl_w, cat_w, unsupervised)
            opt.zero_grad()
            loss.backward()
            opt.lr = cosine_lr(learning_rate, step, steps)  # torch's CosineAnnealingLR(T_max=steps) at this step
            opt.step()
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        for p in module.parameters():
            p.requires_grad_(True)
        bar.close()
    seconds = time.perf_counter() - t0
    mapped = _extended(module, table.detach())
    desc["covariate"]["categories"] = known + new
    panel = _panel(desc, cells.measured, str(name or (new[0] if len(new) == 1 else "mapped")), new)
    counts = {c: int((values[rows] == c).sum()) for c in new}
    desc.setdefault("datasets", []).append({"name": panel if name is None else str(name), "cells": len(rows),
                                            "measured_features": int(cells.measured.sum()), "mapped": True})
    desc.setdefault("mapping", []).append({
        "categories": new, "cells": counts, "skipped_known_cells": int(len(values) - len(rows)), "feature_set": panel,
        "steps": steps, "learning_rate": learning_rate, "seed": seed, "seconds": round(seconds, 3),
        "initial_loss": round(history[0], 6), "final_loss": round(history[-1], 6), "source": source,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    })
    return InClust(mapped, desc)
