"""Ensembles: K trained networks merged into one inClust+ network (training/network/ensemble.py).

The merged network must decode exactly the mean of its members' decodes, embed into their
concatenated latents and classify with their averaged logits, so that everything downstream
(checkpoint, export, runtime) can treat it as a plain, wider inClust+ network.
"""

import numpy as np
import pytest
import torch

from inclust_plus.errors import InclustError
from inclust_plus.training.checkpoint import load_checkpoint
from inclust_plus.training.network.ensemble import merge_members
from inclust_plus.training.model import InClust
from inclust_plus.training.network.module import InClustModule, ModuleConfig
from inclust_plus.training.presets import preset_config
from evaluation.synthetic import synthetic_task


def _member(seed: int, **kwargs) -> InClustModule:
    torch.manual_seed(seed)
    cfg = ModuleConfig(n_features=9, n_covariates=2, n_labels=3, latent_dim=4, **kwargs)
    module = InClustModule(cfg)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module.eval()


@pytest.mark.parametrize("shape", [{"encoder_hidden": [8, 5], "decoder_hidden": [6]}, {"encoder_hidden": [], "decoder_hidden": []}])
def test_merged_network_averages_its_members(shape):
    members = [_member(s, **shape) for s in range(3)]
    merged = merge_members(members)
    assert merged.config.members == 3 and merged.config.latent_dim == 12
    assert merged.config.encoder_hidden == [3 * h for h in shape["encoder_hidden"]]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 9, generator=g)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 1, 0]], dtype=torch.float32)
    cov, target = torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([1, 1, 0, 0, 1, 0])
    with torch.no_grad():
        outs = [m.predict(x, mask, cov, target) for m in members]
        y, z, p = merged.predict(x, mask, cov, target)
    np.testing.assert_allclose(y, torch.stack([o[0] for o in outs]).mean(0), atol=1e-6)
    np.testing.assert_allclose(z, torch.cat([o[1] for o in outs], dim=1), atol=1e-6)
    class_logits = torch.stack([torch.log(o[2].double()) for o in outs]).mean(0)
    np.testing.assert_allclose(p.double(), torch.softmax(class_logits, -1), atol=1e-6)


def test_single_member_is_returned_unchanged_and_mixed_shapes_are_refused():
    one = _member(0)
    assert merge_members([one]) is one
    with pytest.raises(ValueError, match="one architecture"):
        merge_members([_member(0), _member(1, encoder_hidden=[7])])


def test_ensemble_fit_trains_each_seed_and_saves_one_network(tmp_path):
    # One after another (workers = 1) with the torch threads of a single-network fit.
    st = synthetic_task("imputation", n_cells=300, seed=0, overrides={"model": {"ensemble": 2}, "loss": {"likelihood": "gaussian"},
                                                                       "training": {"epochs": 2, "workers": 1}})
    model, _, result = InClust.fit(st.config, st.objects, progress=False)
    assert model.module.config.members == 2 and model.module.config.latent_dim == 2 * st.config.model.latent_dim
    assert len(result.history["total"]) == 2 and result.seconds > 0
    # Member 0 is exactly the single-network model of the same seed.
    single_cfg = synthetic_task("imputation", n_cells=300, seed=0, overrides={"model": {"ensemble": 1}, "training": {"epochs": 2}}).config
    single, _, _ = InClust.fit(single_cfg, st.objects, progress=False)
    latent = single.module.config.latent_dim
    np.testing.assert_array_equal(model.module.covariate_embedding[:, :latent].detach(), single.module.covariate_embedding.detach())
    path = model.save(tmp_path / "model.pt")
    loaded, desc = load_checkpoint(path)
    assert desc.members == 2
    for key, value in model.module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_members_trained_in_worker_processes_equal_sequential_ones():
    def fit(workers):
        overrides = {"model": {"ensemble": 2}, "training": {"epochs": 2, "workers": workers, "threads": 2 if workers > 1 else 1}}
        st = synthetic_task("imputation", n_cells=300, seed=0, overrides=overrides)
        return InClust.fit(st.config, st.objects, progress=False)

    (seq, _, seq_result), (par, _, par_result) = fit(1), fit(2)
    assert seq.module.config == par.module.config and seq.module.config.members == 2
    # Same seeds, likelihoods and batches: only floating-point rounding may differ between processes.
    for key, value in seq.module.state_dict().items():
        np.testing.assert_allclose(par.module.state_dict()[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(par_result.history["total"], seq_result.history["total"], rtol=1e-5)


def test_ensemble_below_one_is_a_config_error():
    with pytest.raises(InclustError, match="model.ensemble"):
        preset_config("imputation", {"model": {"ensemble": 0}})


def test_a_failing_worker_is_reported_with_its_last_line():
    from inclust_plus.training.assembly.data import assemble
    from inclust_plus.training.assembly.loading import load_dataset
    from inclust_plus.training.fitting.members import _train_in_workers, member_settings

    st = synthetic_task("imputation", n_cells=100, seed=0, overrides={"model": {"ensemble": 2}, "training": {"epochs": 1}})
    data = assemble([load_dataset(d, st.objects[d.name]) for d in st.config.datasets], st.config)
    member = ModuleConfig(n_features=data.n_features, n_covariates=len(data.covariate_categories), n_labels=len(data.label_categories))
    settings = [member_settings(st.config, k) for k in range(2)]
    # torch refuses a negative thread count inside the worker: its error must reach the caller.
    with pytest.raises(RuntimeError, match="training ensemble member [01] failed: .*thread"):
        _train_in_workers(member, data, settings, workers=2, threads=-3, precision="fp32", progress=False)
