"""A model trained with two covariate keys takes its covariate from those obs columns at runtime (issue 16).

Training joins a cell's values of ``covariate_keys`` into one category (``batch|technology``); the
manifest records the keys and the join, and the runtime rebuilds each cell's category from the same
obs columns, so the output equals the run with each cell's category named explicitly.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from inclust_plus.export.cli import main as export_main
from inclust_plus.runtime.cli import cli as run_main
from inclust_plus.training.cli import main as train_main

from reliability_helpers import one_error
from runtime_fixtures import RNA, make_cells, write_h5ad

N = 120
BATCH = [("b1", "b2")[i % 2] for i in range(N)]
TECH = [("10x", "smart")[(i // 2) % 2] for i in range(N)]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two_keys")
    write_h5ad(tmp / "ref.h5ad", make_cells(N, RNA, seed=3), RNA, extra_obs={"batch": BATCH, "tech": TECH})
    (tmp / "cfg.toml").write_text('[[datasets]]\nname = "ref"\npath = "ref.h5ad"\ncovariate_keys = ["batch", "tech"]\n'
                                  "[training]\nepochs = 3\nbatch_size = 40\n")
    res = CliRunner().invoke(train_main, [str(tmp / "cfg.toml"), "--out", str(tmp / "model.pt"), "--quiet"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(export_main, [str(tmp / "model.pt"), "--out", str(tmp / "export"), "--no-torchscript", "--no-csr"])
    assert res.exit_code == 0, res.output
    return tmp


def _embed(export, cells, out, *extra):
    res = CliRunner().invoke(run_main, ["embed", "--onnx", str(export / "export"), "--input", str(cells), "--output", str(out), *extra])
    assert res.exit_code == 0, res.output
    return ad.read_h5ad(out)


def test_manifest_says_the_keys_and_the_join(export):
    cov = json.loads((export / "export" / "manifest.json").read_text())["covariate"]
    assert cov["keys"] == ["batch", "tech"] and cov["join"] == "|"
    assert sorted(cov["categories"]) == ["b1|10x", "b1|smart", "b2|10x", "b2|smart"]


def test_two_key_model_runs_from_obs_columns(export, tmp_path):
    query = tmp_path / "query.h5ad"
    write_h5ad(query, make_cells(N, RNA, seed=4), RNA, extra_obs={"batch": BATCH, "tech": TECH})
    joined = _embed(export, query, tmp_path / "joined.h5ad")
    assert joined.uns["inclust"]["covariate"] == "obs['batch|tech']"
    # the same cells, each group run with its category named explicitly, give the same latent
    want = np.empty_like(joined.obsm["X_inclust"])
    for cat in ("b1|10x", "b1|smart", "b2|10x", "b2|smart"):
        rows = [i for i in range(N) if f"{BATCH[i]}|{TECH[i]}" == cat]
        part = tmp_path / f"part_{cat.replace('|', '_')}.h5ad"
        write_h5ad(part, make_cells(N, RNA, seed=4)[rows], RNA)
        want[rows] = _embed(export, part, tmp_path / f"out_{cat.replace('|', '_')}.h5ad", "--covariate", cat).obsm["X_inclust"]
    np.testing.assert_allclose(joined.obsm["X_inclust"], want, rtol=0, atol=1e-6)
    # the covariates matter: another category gives another latent
    other = _embed(export, query, tmp_path / "other.h5ad", "--covariate", "b1|10x").obsm["X_inclust"]
    assert np.abs(other - joined.obsm["X_inclust"]).max() > 1e-3
    # --covariate-key names the join explicitly too
    explicit = _embed(export, query, tmp_path / "explicit.h5ad", "--covariate-key", "batch|tech")
    np.testing.assert_array_equal(explicit.obsm["X_inclust"], joined.obsm["X_inclust"])


def test_unknown_combination_is_one_line(export, tmp_path):
    query = tmp_path / "query.h5ad"
    write_h5ad(query, make_cells(4, RNA, seed=5), RNA, extra_obs={"batch": ["b1", "b3", "b1", "b2"], "tech": ["10x"] * 4})
    one_error(run_main, ["embed", "--onnx", export / "export", "--input", query, "--output", tmp_path / "o.h5ad", "--quiet"],
              ("obs column 'batch|tech'", "b3|10x"), unchanged=tmp_path)
