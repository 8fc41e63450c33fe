"""The README's Python snippets run as written, on the example data (from a scratch folder)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has no Python example"
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the point is to run them
    imputed, same, query = scope["imputed"], scope["same"], scope["query"]
    assert int(imputed.var["inclust_imputed"].sum()) == 31 and imputed.n_vars == 153
    assert np.abs(imputed.layers["inclust_imputed"] - same.layers["inclust_imputed"]).max() <= 1e-5
    assert query.obsm["X_inclust"].shape == (2000, 50) and "inclust_label" in query.obs
    assert (tmp_path / "exported" / "manifest.json").is_file()
