"""Bad input to inclust-train: one line naming the problem and the fix, exit code 2, nothing written."""

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from inclust_plus.training.cli import main


def _adata(n=40, genes=("g0", "g1", "g2", "g3"), seed=0, **obs):
    rng = np.random.default_rng(seed)
    x = rng.poisson(2.0, (n, len(genes))).astype(np.float32)
    df = pd.DataFrame({"cell_type": rng.choice(["a", "b"], n), "batch": rng.choice(["x", "y"], n), **obs}, index=[f"c{seed}_{i}" for i in range(n)])
    return anndata.AnnData(X=sp.csr_matrix(x), obs=df, var=pd.DataFrame(index=list(genes)))


def _config(tmp_path, ref, query, extra="", ref_extra='label_key = "cell_type"'):
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "query.h5ad")
    text = f"""
task = "imputation"
[[datasets]]
name = "ref"
path = "ref.h5ad"
{ref_extra}
[[datasets]]
name = "query"
path = "query.h5ad"
[views]
query = ["query"]
[training]
epochs = 1
{extra}
"""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(text)
    return cfg


def _run(tmp_path, cfg):
    out = tmp_path / "model.pt"
    res = CliRunner().invoke(main, [str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert not out.exists()
    assert not list(tmp_path.glob(".model.pt*")) and not list(tmp_path.glob("*.svg"))
    return lines[0]


SCALED = '\n[preprocessing.rna]\nnormalize_total = 1e4\nlog1p = true\nscale = "max"'


def test_good_config_trains(tmp_path):
    cfg = _config(tmp_path, _adata(), _adata(genes=("g0", "g1"), seed=1), extra=SCALED)
    res = CliRunner().invoke(main, [str(cfg), "--out", str(tmp_path / "model.pt"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "model.pt").stat().st_size > 1000 and (tmp_path / "model.loss.svg").exists()
    assert "an ensemble of 6 networks" in res.output  # the imputation preset


def test_ensemble_override_trains_one_gaussian_network(tmp_path):
    # --ensemble 1 keeps the first likelihood of the preset's cycle (Gaussian): unscaled counts are accepted.
    from inclust_plus.training.checkpoint import load_checkpoint

    cfg = _config(tmp_path, _adata(), _adata(genes=("g0", "g1"), seed=1))
    res = CliRunner().invoke(main, [str(cfg), "--out", str(tmp_path / "model.pt"), "--quiet", "--ensemble", "1"])
    assert res.exit_code == 0, res.output
    assert "an ensemble of" not in res.output
    assert load_checkpoint(tmp_path / "model.pt")[1].module["members"] == 1


def test_bernoulli_likelihood_on_unscaled_counts(tmp_path):
    # The imputation preset's ensemble has Bernoulli members: raw counts outside [0, 1] are refused.
    cfg = _config(tmp_path, _adata(), _adata(genes=("g0", "g1"), seed=1))
    line = _run(tmp_path, cfg)
    assert "likelihood 'bernoulli' needs features in [0, 1]" in line and "span [0, 9]" in line and "scale = 'max'" in line


def test_unknown_likelihood(tmp_path):
    cfg = _config(tmp_path, _adata(), _adata(seed=1), extra='[loss]\nlikelihood = ["gaussian", "poisson"]')
    msg = _run(tmp_path, cfg)
    assert "loss.likelihood" in msg and '"poisson"' in msg and "'gaussian', 'bernoulli'" in msg


def test_missing_config(tmp_path):
    assert "does not exist" in _run(tmp_path, tmp_path / "nope.toml")


def test_missing_data_file(tmp_path):
    cfg = _config(tmp_path, _adata(), _adata(seed=1))
    (tmp_path / "query.h5ad").unlink()
    assert "does not exist" in _run(tmp_path, cfg)


def test_unknown_config_key(tmp_path):
    cfg = _config(tmp_path, _adata(), _adata(seed=1), extra="epocs = 3")
    msg = _run(tmp_path, cfg)
    assert "unknown config key" in msg and "epocs" in msg


def test_no_shared_features(tmp_path):
    cfg = _config(tmp_path, _adata(), _adata(genes=("h0", "h1"), seed=1))
    assert "shares no features" in _run(tmp_path, cfg)


def test_label_column_absent(tmp_path):
    cfg = _config(tmp_path, _adata(), _adata(seed=1), ref_extra='label_key = "celltype"')
    assert "no label column 'celltype'" in _run(tmp_path, cfg)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, bad):
    ref = _adata()
    x = ref.X.toarray()
    x[3, 1] = bad
    ref.X = sp.csr_matrix(x)
    assert "NaN or infinite" in _run(tmp_path, _config(tmp_path, ref, _adata(seed=1)))


def test_negative_values(tmp_path):
    ref = _adata()
    x = ref.X.toarray()
    x[0, 0] = -1
    ref.X = sp.csr_matrix(x)
    assert "negative values" in _run(tmp_path, _config(tmp_path, ref, _adata(seed=1)))


def test_duplicate_feature_names(tmp_path):
    ref = _adata(genes=("g0", "g1", "g1", "g3"))
    assert "duplicate feature names" in _run(tmp_path, _config(tmp_path, ref, _adata(seed=1)))


def test_empty_dataset(tmp_path):
    ref = _adata()[:0].copy()
    assert "empty" in _run(tmp_path, _config(tmp_path, ref, _adata(seed=1)))


def test_covariate_with_one_missing_value(tmp_path):
    ref = _adata()
    ref.obs["batch"] = ref.obs["batch"].astype(object)
    ref.obs.iloc[5, ref.obs.columns.get_loc("batch")] = np.nan
    cfg = _config(tmp_path, ref, _adata(seed=1), ref_extra='label_key = "cell_type"\ncovariate_keys = ["batch"]')
    assert "1 missing value" in _run(tmp_path, cfg)


def test_existing_output_not_overwritten(tmp_path):
    cfg = _config(tmp_path, _adata(), _adata(seed=1))
    out = tmp_path / "model.pt"
    out.write_bytes(b"keep me")
    res = CliRunner().invoke(main, [str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 2 and "already exists" in res.output
    assert out.read_bytes() == b"keep me"


def test_a_config_that_still_chooses_the_removed_cpp_step(tmp_path):
    """``training.native`` went with the C++ step: an old config is told so, not "unknown key"."""
    cfg = _config(tmp_path, _adata(), _adata(genes=("g0", "g1"), seed=1), extra='native = "auto"')
    assert _run(tmp_path, cfg) == ('error: config key training.native is gone with the C++ training step (the Python step '
                                   'trains the same model); delete the line (training.fast_step = "auto", "on" or "off" '
                                   'chooses the hand-written step)')


def test_fast_step_on_outside_its_allow_list(tmp_path):
    """The hand-written step runs only verified settings; "on" with another one is a one-line error."""
    cfg = _config(tmp_path, _adata(), _adata(genes=("g0", "g1"), seed=1), extra='fast_step = "on"\n[loss]\nmixing = 1.0' + SCALED)
    assert _run(tmp_path, cfg) == ('error: training.fast_step = "on" but the hand-written step is not verified for loss.mixing = 1.0; '
                                   'set training.fast_step = "auto" to train these settings with autograd')


def test_raw_counts_that_diverge_are_told_to_take_log1p():
    """Raw counts (thousands) with no preprocessing diverge in the first epoch: the error names the
    modality, how large its values are and the recipe to set, not only the learning rate."""
    from evaluation.synthetic import make_cells
    from inclust_plus.errors import InclustError
    from inclust_plus.training.model import InClust

    cells = make_cells(n_cells=60, n_batches=1, seed=0, sizes={"rna": 10, "protein": 2, "atac": 2})
    model = InClust.setup(cells.anndata("rna"), label_key="cell_type", epochs=1, batch_size=30, encoder_hidden=[4],
                          latent_dim=2, decoder_hidden=[4])
    with pytest.raises(InclustError) as info:
        model.train(progress=False)
    assert info.value.problem.startswith("training diverged: ")
    assert info.value.fix == ("the rna values reach 2,928 with no log1p, like raw counts: set preprocessing "
                              "{'rna': {'normalize_total': 10000, 'log1p': True}} (a [preprocessing.rna] table), then train again")
    assert model.module is None  # no model from a diverged run
