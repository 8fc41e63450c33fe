"""The input correction (``model.input_correction = "moments"``, training/network/correction.py): exact values on
tiny cases, and the same numbers through every door (the PyTorch model, its exported graphs, the API, mapping)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inclust_plus.training.network import correction


def _shifted_pair(seed: int = 0):
    """Reference values x and a second technology's y = gain * x ^ power of the same cells (zeros stay zero)."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 0.1, (500, 4)) * (rng.random((500, 4)) < 0.6)
    gain, power = np.array([0.5, 0.5, 2.0, 1.0]), np.array([1.0, 2.0, 0.5, 1.5])
    return x, np.where(x > 0, gain * x**power, 0.0)


def test_fit_undoes_a_gain_and_a_power_exactly():
    x, y = _shifted_pair()
    cells = np.vstack([x, y])
    covariate = np.r_[np.zeros(500, int), np.ones(500, int)]
    gain, power, reference = correction.fit(cells, covariate, np.array([[500] * 4, [400] * 4]))  # level 0 measures more: the reference
    np.testing.assert_allclose(gain[0], 1.0), np.testing.assert_allclose(power[0], 1.0)
    np.testing.assert_allclose(gain[1], [2.0, 2**0.5, 0.25, 1.0], rtol=1e-5)  # gain ^ (-1 / power)
    np.testing.assert_allclose(power[1], [1.0, 0.5, 2.0, 2 / 3], rtol=1e-5)
    back = correction.apply(torch.tensor(y, dtype=torch.float32), torch.from_numpy(gain[1]), torch.from_numpy(power[1])).numpy()
    np.testing.assert_allclose(back, x, atol=1e-6)
    assert (back[x == 0] == 0).all()
    np.testing.assert_allclose(reference[0], (x > 0).sum(0))  # the reference's count of non-zero values


def test_a_level_with_too_few_values_keeps_the_identity():
    x, y = _shifted_pair()
    y[correction.MIN_VALUES - 1:, 0] = 0  # feature 0: fewer non-zero values than MIN_VALUES in level 1
    gain, power, _ = correction.fit(np.vstack([x, y]), np.r_[np.zeros(500, int), np.ones(500, int)], np.ones((2, 4)) * [[2], [1]])
    assert (gain[1, 0], power[1, 0]) == (1.0, 1.0) and gain[1, 1] != 1.0


def test_negative_values_keep_their_sign():
    out = correction.apply(torch.tensor([[-4.0, 0.0, 4.0]]), torch.tensor([2.0, 2.0, 2.0]), torch.tensor([0.5, 0.5, 0.5]))
    assert out.tolist() == [[-4.0, 0.0, 4.0]]


def test_a_corrected_model_encodes_only_with_the_covariate():
    from inclust_plus.training.network.module import InClustModule, ModuleConfig

    m = InClustModule(ModuleConfig(n_features=5, n_covariates=2, n_labels=3, input_correction="moments"))
    with pytest.raises(ValueError, match="pass the covariate"):
        m.encode(torch.ones(2, 5), torch.ones(1, 5))
    m.input_gain[1] = 2.0
    mu0, _ = m.encode(torch.ones(2, 5), torch.ones(1, 5), torch.tensor([0, 0]))
    mu1, _ = m.encode(torch.ones(2, 5), torch.ones(1, 5), torch.tensor([1, 1]))
    mu_plain, _ = m.encode(2 * torch.ones(2, 5), torch.ones(1, 5), torch.tensor([0, 0]))
    assert not torch.allclose(mu0, mu1) and torch.allclose(mu1, mu_plain)  # level 1's cells are read doubled


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    """A 2-member imputation model with the input correction, its query shifted by a per-gene gain and power, exported."""
    from evaluation.synthetic import synthetic_task
    from inclust_plus.export.api import export_model
    from inclust_plus.training.model import InClust

    task = synthetic_task("imputation", n_cells=600, overrides={"model": {"ensemble": 2, "input_correction": "moments"},
                                                                 "training": {"epochs": 3, "seed": 4}})
    query = task.objects["merfish"]
    rng = np.random.default_rng(1)
    gain, power = np.exp(rng.normal(0, 0.5, query.n_vars)), np.exp(rng.normal(0, 0.3, query.n_vars))
    x = query.X.toarray() if hasattr(query.X, "toarray") else np.asarray(query.X)
    query.X = np.asarray(np.clip(gain * x**power, 0, 1), dtype=np.float32)
    model, data, _ = InClust.fit(task.config, task.objects, progress=False)
    folder = tmp_path_factory.mktemp("corrected")
    model.save(folder / "model.pt")
    export_model(folder / "model.pt", folder / "export", torch_export=True)  # every graph checked against the model as written
    return model, data, query, folder


def test_the_fitted_tables_are_saved_and_the_reference_level_is_the_identity(corrected):
    from inclust_plus.training.model import InClust

    model, data, _, folder = corrected
    m = model.module
    ref = data.covariate_categories.index("scrna")
    assert torch.all(m.input_gain[ref] == 1) and torch.all(m.input_power[ref] == 1)
    query = data.covariate_categories.index("merfish")
    panel = data.measured["merfish"]
    assert (m.input_power[query, torch.from_numpy(panel)] != 1).float().mean() > 0.3  # shifted genes with enough values are corrected
    assert torch.all(m.input_gain[query, torch.from_numpy(~panel)] == 1)  # genes the query never measured are not
    loaded = InClust.load(folder / "model.pt").module
    assert torch.equal(loaded.input_gain, m.input_gain) and torch.equal(loaded.input_power, m.input_power)


def test_every_door_gives_the_same_numbers(corrected):
    import json

    from inclust_plus.runtime.predictor import Predictor
    from inclust_plus.runtime.torchscript_backend import TorchScriptBackend

    model, _, query, folder = corrected
    api = model.impute(query.copy())
    for backend in (None, TorchScriptBackend("cpu")):  # onnxruntime, then the TorchScript twins
        runtime = Predictor(folder / "export", backend=backend).impute(query.copy())
        np.testing.assert_allclose(np.asarray(runtime.layers["inclust_imputed"]), np.asarray(api.layers["inclust_imputed"]), atol=2e-5)
        np.testing.assert_allclose(runtime.obsm["X_inclust"], api.obsm["X_inclust"], atol=2e-5)
    manifest = json.loads((folder / "export" / "manifest.json").read_text())
    flavours = {v["input_format"] for g in manifest["graphs"] for v in g["variants"]}
    assert "csr" in flavours  # the CSR flavour carries the correction too (checked against the model as written)


def test_mapping_fits_the_new_batch_its_own_rows(corrected):
    model, data, query, _ = corrected
    mapped = model.map_query(query.copy(), name="section2", steps=5, progress=False)
    m = mapped.module
    query_level = data.covariate_categories.index("merfish")
    # the same cells as the trained query: the same moments, so the same rows
    torch.testing.assert_close(m.input_gain[-1], m.input_gain[query_level], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.input_power[-1], m.input_power[query_level], atol=1e-5, rtol=1e-5)
    a = mapped.get_latent_representation(query.copy(), covariate="section2") if hasattr(mapped, "get_latent_representation") else None
    assert a is None or np.isfinite(a).all()


def test_the_read_out_compares_corrected_inputs_through_every_door(tmp_path):
    """``[readout] neighbours = true`` on a corrected model: the input lookup reads the corrected inputs in the
    model, its ONNX graph and its TorchScript twin alike (the same numbers), and not the inputs as fed."""
    from evaluation.synthetic import synthetic_task
    from inclust_plus.export.api import export_model
    from inclust_plus.runtime.predictor import Predictor
    from inclust_plus.runtime.torchscript_backend import TorchScriptBackend
    from inclust_plus.training.model import InClust
    from inclust_plus.training.network import correction as corr

    task = synthetic_task("imputation", n_cells=600, overrides={"model": {"input_correction": "moments"}, "readout": {"neighbours": True},
                                                                 "training": {"epochs": 3, "seed": 4}})
    model, data, _ = InClust.fit(task.config, task.objects, progress=False)
    query = task.objects["merfish"]
    assert not torch.all(model.module.input_power == 1)
    model.save(tmp_path / "model.pt")
    export_model(tmp_path / "model.pt", tmp_path / "export")
    api = np.asarray(model.impute(query.copy()).layers["inclust_imputed"])
    for backend in (None, TorchScriptBackend("cpu")):
        got = np.asarray(Predictor(tmp_path / "export", backend=backend).impute(query.copy()).layers["inclust_imputed"])
        # a cell whose k-th and (k+1)-th neighbours tie within float32 rounding may rightly pick either (1 of 300 seen)
        off = (np.abs(got - api) > 2e-5).any(1)
        assert off.mean() <= 0.01 and np.abs(got - api)[off].max(initial=0) < 0.05, (off.sum(), np.abs(got - api).max())
    m = model.module
    m.input_gain.fill_(1.0), m.input_power.fill_(1.0)  # the same model reading its inputs uncorrected differs
    assert corr.corrected_rows(m, np.ones((1, 3)), [0, 1, 2], [1]).tolist() == [[1.0, 1.0, 1.0]]
    assert np.abs(np.asarray(model.impute(query.copy()).layers["inclust_imputed"]) - api).max() > 1e-3
