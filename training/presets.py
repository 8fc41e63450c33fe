"""The paper's four tasks as presets: configs with the right views, covariates and preprocessing.

Each preset has a worked TOML example in the README; ``evaluation.synthetic.synthetic_task`` (in the
repository, not installed) builds the same task on synthetic cells with known truth for the tests.
"""

from __future__ import annotations

from inclust_plus.training.config import Config, config_from_dict

COUNT_PREP = {"normalize_total": 1e4, "log1p": True, "scale": "max"}
PROTEIN_PREP = {"log1p": True, "scale": "max"}
RNA_PROTEIN_PREP = {"rna": COUNT_PREP, "protein": PROTEIN_PREP}


def _dataset(name: str, *modalities: str, labelled: bool = True) -> dict:
    """One ``[[datasets]]`` entry; labelled datasets read their cell types from obs["cell_type"]."""
    return {"name": name, "modalities": list(modalities), **({"label_key": "cell_type"} if labelled else {})}


PRESETS: dict[str, dict] = {
    # (a) scRNA-seq reference + spatial query measured on a gene panel: impute the missing genes.
    "imputation": {
        "task": "imputation",
        "datasets": [_dataset("scrna", "rna"), _dataset("merfish", "rna", labelled=False)],
        "views": {"query": ["merfish"]},
    },
    # (b) paired RNA + protein in several batches: one batch-free latent space.
    "integration": {
        "task": "integration",
        "datasets": [_dataset("batch0", "rna", "protein"), _dataset("batch1", "rna", "protein")],
        "preprocessing": RNA_PROTEIN_PREP,
    },
    # (c) RNA+protein and protein+ATAC datasets bridged by the shared protein panel.
    "triple": {
        "task": "triple",
        "datasets": [_dataset("cite", "rna", "protein"), _dataset("asap", "protein", "atac")],
        "preprocessing": RNA_PROTEIN_PREP,
    },
    # (d) CITE-seq reference + RNA-only query: generate protein and transfer labels.
    "generation": {
        "task": "generation",
        "datasets": [_dataset("cite", "rna", "protein"), _dataset("query", "rna", labelled=False)],
        "views": {"query": ["query"]},
        "preprocessing": RNA_PROTEIN_PREP,
    },
}


def preset_config(task: str, overrides: dict | None = None) -> Config:
    """The preset for ``task`` merged with ``overrides`` (sections are merged key by key)."""
    base = {k: (v.copy() if isinstance(v, dict) else [dict(d) for d in v] if isinstance(v, list) else v) for k, v in PRESETS[task].items()}
    base["name"] = task
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    # The preset's own recipes cover every modality its task may have (RNA and protein); datasets that
    # measure fewer keep only theirs. A recipe the overrides name for an absent modality stays, so the
    # config check still calls a misspelt one an error.
    measured = {m for d in base["datasets"] for m in d.get("modalities", ())}
    asked = set((overrides or {}).get("preprocessing") or {})
    base["preprocessing"] = {m: r for m, r in (base.get("preprocessing") or {}).items() if m in measured or m in asked}
    return config_from_dict(base)
