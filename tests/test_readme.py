"""The README's Python snippets run as written, on the example data (from a scratch folder)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _untied_rows(model, query) -> np.ndarray:
    """The query rows of the read-out's graph whose neighbours do not tie (export/validate.py ``untied_rows``)."""
    from inclust_plus.contract.combinations import select_combinations
    from inclust_plus.contract.plan_builder import build_plan
    from inclust_plus.export.validate import untied_rows

    desc = model.description
    combination = select_combinations(desc, [desc.readout.combination])[0]
    names = [desc.feature_names[i] for i in combination.inputs]
    x = query[:, names].X
    feeds = {"x": np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32),
             "covariate": np.full(query.n_obs, list(desc.covariate.categories).index("merfish"))}
    _, latent, _ = model.predict(feeds["x"], "merfish", "merfish")
    return untied_rows(model.module, combination, feeds, build_plan(desc, combination.inputs), model.neighbours, latent)


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no Python example"
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the point is to run them
    imputed, same, query, model = scope["imputed"], scope["same"], scope["query"], scope["model"]
    assert int(imputed.var["inclust_imputed"].sum()) == 31 and imputed.n_vars == 153
    # The imputation task with a query has the neighbour read-out. A row whose k-th and (k+1)-th neighbours tie
    # within float32 rounding may rightly pick either (export/validate.py's tie rule): after 5 epochs the latents
    # are nearly parallel and most rows tie, so those rows are held to one swapped neighbour's worth of difference.
    assert model.description.readout is not None
    diff = np.abs(imputed.layers["inclust_imputed"] - same.layers["inclust_imputed"]).max(1)
    untied = _untied_rows(model, query)
    assert untied.sum() >= 10 and diff[untied].max() <= 1e-5
    assert diff.max() <= 0.02
    assert query.obsm["X_inclust"].shape == (2000, 50) and "inclust_label" in query.obs
    assert (tmp_path / "exported" / "manifest.json").is_file()


def test_readme_toml_settings_are_valid_configs():
    """Every TOML fragment the README shows is accepted by the one settings check, with the task it is given for."""
    import tomllib

    from inclust_plus.training.config import config_from_dict

    blocks = [tomllib.loads(b) for b in re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)]
    paper = [b for b in blocks if b.get("loss", {}).get("mixing") == 0.0]
    assert len(paper) == 1, "the README's setting for the paper's own loss is gone"
    datasets = [{"name": "a"}, {"name": "b"}]
    cfg = config_from_dict({"task": "integration", "datasets": datasets, **paper[0]})
    assert (cfg.loss.kl, cfg.loss.mixing, cfg.model.input_correction) == (1.0, 0.0, "none")
    # The rest of the integration defaults (training/config.py TASK_DEFAULTS) stay: the README changes only the loss and the model.
    assert (cfg.loss.mixing_kernel, cfg.training.batch_size, cfg.training.epochs) == ("per_type", 500, 200)
