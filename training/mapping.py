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

import dataclasses
import math
import time
from datetime import datetime, timezone

import numpy as np
import torch
from tqdm.auto import tqdm

from inclust_plus import interrupt
from inclust_plus.contract.description import CombinationEntry, DatasetRecord, FeatureSet, MappingRecord, ModelDescription
from inclust_plus.contract.schema import SAFE_NAME
from inclust_plus.errors import InclustError

from inclust_plus.training.network import correction
from inclust_plus.training.network.loss import posterior_terms
from inclust_plus.training.network.module import InClustModule, ModuleConfig
from inclust_plus.training.fitting.optim import adam, cosine_lr
from inclust_plus.training.assembly.query_data import QueryCells, align_cells, covariate_values

CHUNK = 8192  # cells per encoder pass
FULL_BATCH = 65536  # up to this many cells every step sees all of them; above, a random subset of this size


@torch.no_grad()
def _posteriors(module: InClustModule, cells: QueryCells, rows: np.ndarray, covariate: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and log-variance of the given cells (one frozen encoder pass); ``covariate``: each cell's
    row of the model's input correction, if it has one."""
    mask = torch.from_numpy(cells.measured.astype(np.float32))[None]
    mus, lvs = [], []
    for s in range(0, len(rows), CHUNK):
        x = torch.from_numpy(np.asarray(cells.x[rows[s : s + CHUNK]].toarray(), dtype=np.float32))
        mu, lv = module.encode(x, mask, None if covariate is None else covariate[s : s + CHUNK])
        mus.append(mu), lvs.append(lv)
    return torch.cat(mus), torch.cat(lvs)


SAFE_RULE = "letters, digits and _.+- only, starting with a letter or digit"


def check_batch_name(name: str, what: str = "--name", fix: str = f"choose another: {SAFE_RULE} (e.g. --name section2)") -> None:
    """Refuse a batch name that cannot name files: a new panel's feature set, and so its graphs
    (``<name>_to_rna.onnx``) and Triton models, are named after it, by the rule inclust-export
    holds every combination name to (contract/schema.py ``SAFE_NAME``)."""
    if not (isinstance(name, str) and SAFE_NAME.match(name)):
        raise InclustError(f"{what} {name!r} cannot name the new batch's graphs and files", fix)


def _finite_loss(loss: float, step: int, steps: int, learning_rate: float) -> None:
    """A non-finite mapping loss is an error, never a mapped model: before any step it comes from the
    model or the cells, later from too large a step size."""
    if math.isfinite(loss):
        return
    if step == 0:
        raise InclustError(f"the mapping loss is {loss} before any step: the model's weights or the new cells hold non-finite values",
                           "check the cells for NaN/inf values, or re-train the model")
    raise InclustError(f"the mapping diverged: its loss became {loss} at step {step + 1} of {steps}",
                       f"lower the learning rate (--learning-rate, now {learning_rate:g})")


def mapping_loss(module: InClustModule, mu: torch.Tensor, log_var: torch.Tensor, e: torch.Tensor, kl_weight: float,
                 cat_weight: float, unsupervised: bool) -> torch.Tensor:
    """The part of the training loss (training/network/loss.py, its very term functions) that depends on the
    covariate row ``e`` [n, D]: the KL and categorical terms of unlabeled cells at z_c = mu - e."""
    z_c = mu - e
    kl, cat, _, _ = posterior_terms(z_c, log_var, module.classify(z_c), module.prior_means, None, unsupervised)
    return kl_weight * kl + cat_weight * cat


def _correction_rows(module: InClustModule, cells: QueryCells, rows: np.ndarray, which: torch.Tensor, n_new: int) -> dict | None:
    """The input correction's rows of the new categories (training/network/correction.py), each fitted on its own
    cells against the reference moments the model keeps; None for a model without an input correction."""
    if getattr(module, "input_gain", None) is None:
        return None
    reference = module.input_reference.double().numpy()
    fitted = [correction.rows_for(correction.log_moments(cells.x[rows[(which == i).numpy()]]), reference) for i in range(n_new)]
    return {"input_gain": torch.from_numpy(np.stack([g for g, _ in fitted])), "input_power": torch.from_numpy(np.stack([p for _, p in fitted]))}


def _extended(module: InClustModule, rows: torch.Tensor, correction_rows: dict | None = None) -> InClustModule:
    """A copy of ``module`` whose covariate table has ``rows`` appended (and the input correction its
    ``correction_rows``); every other tensor copied as is."""
    cfg = ModuleConfig(**{**module.config.to_dict(), "n_covariates": module.config.n_covariates + rows.shape[0]})
    out = InClustModule(cfg)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    state["covariate_embedding"] = torch.cat([state["covariate_embedding"], rows.detach().to(state["covariate_embedding"].dtype)])
    for key, new_rows in (correction_rows or {}).items():
        state[key] = torch.cat([state[key], new_rows.to(state[key].dtype)])
    out.load_state_dict(state)
    return out.eval()


def _existing_panel(description: ModelDescription, measured: np.ndarray) -> str | None:
    """The model's feature set with exactly the features ``measured``, if there is one."""
    features = np.flatnonzero(measured).tolist()
    for name, fs in description.feature_sets.items():
        if sorted(fs.features) == features:
            return name
    return None


def _panel(description: ModelDescription, measured: np.ndarray, set_name: str, categories: list[str]) -> tuple[ModelDescription, str]:
    """The feature set the new cells measured: an existing set with the same features, or a new one
    (with its impute and embed combinations, so inclust-export builds graphs for it)."""
    existing = _existing_panel(description, measured)
    if existing is not None:
        return description, existing
    features = np.flatnonzero(measured).tolist()
    while set_name in description.feature_sets:
        set_name += "_panel"
    tables = [(m.name, *description.modality_range(m.name)) for m in description.modalities]
    present = tuple(m for m, a, b in tables if measured[a:b].any())
    default = categories[0] if len(categories) == 1 else None
    combos = [CombinationEntry(f"{set_name}_to_{m}", set_name, m, None, default)
              for m, a, b in tables if not measured[a:b].all()]  # something of this modality to impute or generate
    combos.append(CombinationEntry(f"{set_name}_embed", set_name, None, None, default))
    return dataclasses.replace(description, feature_sets={**description.feature_sets, set_name: FeatureSet(present, tuple(features))},
                               combinations=description.combinations + tuple(combos)), set_name


def map_query(module: InClustModule, description: ModelDescription, data, name: str | None = None, covariate_key: str | None = None,
              layer: str | None = None, preprocessed: bool = False, steps: int = 300, learning_rate: float = 0.05, seed: int = 0,
              progress: bool = True, source: str | None = None) -> tuple[InClustModule, ModelDescription]:
    """The weights and description of a model (``InClust.map_query`` wraps them) that knows the new
    covariate categories of ``data`` (AnnData or MuData; no labels needed).

    Cells belong to category ``name`` or to the categories of obs column ``covariate_key``; for each
    category the model does not know, one embedding row is learned with every other weight frozen
    (module docstring). Cells of known categories are left out. The new description records the
    mapping under ``mapping``; ``module`` and ``description`` themselves are unchanged.
    """
    if steps < 1:
        raise InclustError(f"steps is {steps}", "map with at least 1 optimisation step")
    desc = description
    cells = align_cells(desc, data, layer=layer, preprocessed=preprocessed)
    values = covariate_values(cells, name, covariate_key)
    known = list(desc.covariate.categories)
    new = [c for c in dict.fromkeys(values.tolist()) if c not in known]
    if not new:
        raise InclustError(f"every covariate category of the data ({', '.join(sorted(set(values.tolist())))}) is already in the model",
                           "nothing to map: run the model on these cells directly, or give them a new --name")
    set_name = str(name or (new[0] if len(new) == 1 else "mapped"))  # a new panel's feature set is named so
    if name is not None:
        check_batch_name(set_name)
    elif _existing_panel(desc, cells.measured) is None:  # a new panel named after its one new category
        check_batch_name(set_name, f"the new batch {covariate_key!r} value",
                         f"rename that value in the data ({SAFE_RULE}), or map its cells with --name")
    rows = np.flatnonzero(np.isin(values, new))
    position = {c: i for i, c in enumerate(new)}
    which = torch.tensor([position[c] for c in values[rows]], dtype=torch.int64)  # row of ``new`` per mapped cell
    desc, panel = _panel(desc, cells.measured, set_name, new)

    module = module.eval()
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # Start from the mean of the known rows: the offset of a typical batch.
    start = module.covariate_embedding.detach().mean(0, keepdim=True).repeat(len(new), 1)
    corrections = _correction_rows(module, cells, rows, which, len(new))
    if corrections is None:
        mu, log_var = _posteriors(module, cells, rows)
    else:  # encoded with their own rows of the input correction, appended like their embedding rows
        mu, log_var = _posteriors(_extended(module, start, corrections), cells, rows, module.config.n_covariates + which)
    kl_w, cat_w = desc.loss_weight("kl"), desc.loss_weight("categorical")
    unsupervised = desc.labels.mode == "unsupervised"
    table = torch.nn.Parameter(start.clone())
    for p in module.parameters():
        p.requires_grad_(False)
    # torch's fused Adam kernel and the cosine decay in closed form: constructing torch.optim.Adam
    # imports torch._dynamo, ~1.2 s of a mapping that takes seconds (training/fitting/optim.py)
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
            _finite_loss(history[-1], step, steps, learning_rate)
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    finally:
        for p in module.parameters():
            p.requires_grad_(True)
        bar.close()
    if not bool(torch.isfinite(table).all()):  # the last step's update, which no loss saw
        _finite_loss(math.nan, steps, steps, learning_rate)
    seconds = time.perf_counter() - t0
    mapped = _extended(module, table.detach(), corrections)
    desc = dataclasses.replace(desc, covariate=dataclasses.replace(desc.covariate, categories=tuple(known + new)))
    counts = {c: int((values[rows] == c).sum()) for c in new}
    record = MappingRecord(
        categories=tuple(new), cells=counts, skipped_known_cells=int(len(values) - len(rows)), feature_set=panel,
        steps=steps, learning_rate=learning_rate, seed=seed, seconds=round(seconds, 3),
        initial_loss=round(history[0], 6), final_loss=round(history[-1], 6), source=source,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    dataset = DatasetRecord(panel if name is None else str(name), len(rows), int(cells.measured.sum()), mapped=True)
    return mapped, dataclasses.replace(desc, module=mapped.config.to_dict(), datasets=desc.datasets + (dataset,), mapping=desc.mapping + (record,))
