"""The pieces of inClust+: masks, vector arithmetic, checkpoints, seeding."""

import numpy as np
import pytest
import torch

from inclust_plus.errors import InclustError
from inclust_plus.training.checkpoint import load_checkpoint, save_checkpoint
from inclust_plus.training.model import InClust
from inclust_plus.training.config import LossConfig
from inclust_plus.training.network.module import InClustModule, ModuleConfig
from inclust_plus.training.presets import preset_config
from evaluation.synthetic import synthetic_task


def _module(seed=0, n_features=12, n_cov=3, n_labels=4):
    torch.manual_seed(seed)
    return InClustModule(ModuleConfig(n_features=n_features, n_covariates=n_cov, n_labels=n_labels, encoder_hidden=[16, 8], latent_dim=5, decoder_hidden=[16])).eval()


def _zeroed_module():
    """Every weight 0: the output is sigmoid(0) = 0.5 everywhere, the latent N(0, 1), the logits uniform,
    so a loss term's value can be written down by hand."""
    m = _module()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    return m


def test_masked_input_feature_changes_nothing():
    m = _module()
    x = torch.rand(7, 12)
    mask = torch.ones(1, 12)
    mask[0, [2, 5, 11]] = 0
    cov = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    before = m.predict(x, mask, cov)
    x2 = x.clone()
    x2[:, [2, 5, 11]] = torch.rand(7, 3) * 100
    after = m.predict(x2, mask, cov)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    # ...while an unmasked feature does change the output.
    x3 = x.clone()
    x3[:, 0] += 1.0
    assert not torch.equal(m.predict(x3, mask, cov)[1], before[1])


def test_masked_output_feature_does_not_enter_loss():
    m = _module()
    x = torch.rand(9, 12)
    in_mask = torch.ones(9, 12)
    out_mask = torch.ones(9, 12)
    out_mask[:, [1, 4]] = 0
    cov = torch.zeros(9, dtype=torch.long)
    label = torch.tensor([0, 1, 2, 3, -1, -1, 0, 1, 2])
    w = LossConfig()
    base = m.loss(x, in_mask, out_mask, cov, label, w, unsupervised=False)
    x2 = x.clone()
    x2[:, [1, 4]] = 50.0  # only the (masked) targets differ; the input mask hides nothing, so zero them in input too
    in_mask2 = in_mask.clone()
    in_mask2[:, [1, 4]] = 0
    a = m.loss(x, in_mask2, out_mask, cov, label, w, unsupervised=False)
    b = m.loss(x2, in_mask2, out_mask, cov, label, w, unsupervised=False)
    assert torch.allclose(a["reconstruction"], b["reconstruction"])
    assert torch.allclose(a["total"], b["total"])
    # Unmasking the output makes the huge targets count.
    c = m.loss(x2, in_mask2, torch.ones(9, 12), cov, label, w, unsupervised=False)
    assert c["reconstruction"] > b["reconstruction"] + 100
    assert base["reconstruction"] > 0


def test_reconstruction_loss_exact_value():
    m = _zeroed_module()
    x = torch.zeros(2, 12)
    x[0, 0] = 1.0
    out_mask = torch.zeros(2, 12)
    out_mask[:, 0] = 1.0
    terms = m.loss(x, torch.ones(2, 12), out_mask, torch.zeros(2, dtype=torch.long), torch.tensor([0, 0]), LossConfig(), False)
    # all-zero weights: sigmoid(0) = 0.5 everywhere -> cell 0: 0.5*(1-0.5)^2, cell 1: 0.5*(0-0.5)^2
    assert terms["reconstruction"].item() == pytest.approx(0.125)
    # KL of N(0, 1) against N(0, I) is 0; label CE is log(4) with uniform logits.
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["label"].item() == pytest.approx(np.log(4), rel=1e-6)


def test_unseen_features_weigh_loss_unseen_exact_value():
    """``loss.unseen``: an output feature the row's input hides counts w times, a seen one once."""
    m = _zeroed_module()
    x = torch.zeros(2, 12)
    x[:, 0] = 1.0  # error 0.5 on feature 0 and on feature 1 (0 - 0.5) for both cells
    out_mask = torch.zeros(2, 12)
    out_mask[:, [0, 1]] = 1.0
    in_mask = torch.ones(2, 12)
    in_mask[0, 0] = 0.0  # cell 0 does not see feature 0, cell 1 sees all
    args = (x, in_mask, out_mask, torch.zeros(2, dtype=torch.long), torch.tensor([0, 0]))
    # per row 0.5 * sum_f weight_f * 0.25: cell 0 (16 + 1), cell 1 (1 + 1); the mean over rows
    assert m.loss(*args, LossConfig(unseen=16.0), False)["reconstruction"].item() == pytest.approx(0.125 * (17 + 2) / 2)
    assert m.loss(*args, LossConfig(), False)["reconstruction"].item() == pytest.approx(0.125 * (2 + 2) / 2)
    assert preset_config("imputation").loss.unseen == 16.0  # the imputation task's default (TASK_DEFAULTS says why)
    assert preset_config("integration").loss.unseen == 1.0  # the paper's loss elsewhere
    with pytest.raises(InclustError, match="loss.unseen = 0 is invalid"):
        preset_config("imputation", {"loss": {"unseen": 0}})


def test_bernoulli_reconstruction_exact_value():
    m = _zeroed_module()
    x = torch.tensor([[1.0] + [0.0] * 11, [0.25] + [0.0] * 11])
    out_mask = torch.zeros(2, 12)
    out_mask[:, 0] = 1.0
    w = LossConfig(likelihood="bernoulli")
    terms = m.loss(x, torch.ones(2, 12), out_mask, torch.zeros(2, dtype=torch.long), torch.tensor([0, 0]), w, False)
    # logits 0: -x log 0.5 - (1 - x) log 0.5 = log 2 whatever x is.
    assert terms["reconstruction"].item() == pytest.approx(np.log(2), rel=1e-6)
    # A sigmoid output is what makes the Bernoulli likelihood a likelihood.
    m.config.output_activation = "identity"
    with pytest.raises(ValueError, match="sigmoid"):
        m.loss(x, torch.ones(2, 12), out_mask, torch.zeros(2, dtype=torch.long), torch.tensor([0, 0]), w, False)


def test_vector_arithmetic_moves_cells_between_covariates():
    m = _module()
    x = torch.rand(5, 12)
    mask = torch.ones(1, 12)
    src = torch.tensor([1] * 5)
    tgt = torch.tensor([2] * 5)
    y, z_c, _ = m.predict(x, mask, src, tgt)
    mu, _ = m.encode(x, mask)
    e = m.covariate_embedding
    assert torch.allclose(z_c, mu - e[1])
    assert torch.allclose(y, m.decode(mu - e[1] + e[2]))
    # The corrected latent does not depend on which covariate we decode into.
    assert torch.equal(m.predict(x, mask, src, src)[1], z_c)


def test_checkpoint_round_trip(tmp_path):
    m = _module()
    desc = {"name": "toy", "covariate": {"categories": ["a", "b", "c"]}, "schema": {"modalities": [{"name": "rna", "features": [f"g{i}" for i in range(12)]}]},
            "feature_sets": {"rna": {"modalities": ["rna"], "features": list(range(12))}}, "combinations": [{"name": "rna_embed", "inputs": "rna"}]}
    path = save_checkpoint(tmp_path / "model.pt", m, desc)
    raw = torch.load(path, weights_only=True)  # must not need pickle of our classes
    assert raw["format"] == "inclust-plus-checkpoint"
    m2, desc2 = load_checkpoint(path)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert desc2.name == "toy" and desc2.latent_dim == 5 and desc2.module == m.config.to_dict()


def _fit(seed):
    st = synthetic_task("integration", n_cells=300, seed=0, overrides={"training": {"epochs": 2, "seed": seed}})
    model, _, _ = InClust.fit(st.config, st.objects, progress=False)
    return model


def test_same_seed_same_weights():
    a, b, c = _fit(3), _fit(3), _fit(4)
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k]), k
    assert any(not torch.equal(v, c.module.state_dict()[k]) for k, v in a.module.state_dict().items())


def test_masks_stored_as_pattern_table_not_per_cell():
    st = synthetic_task("integration", n_cells=300, seed=0, overrides={"training": {"epochs": 1}})
    _, data, _ = InClust.fit(st.config, st.objects, progress=False)
    table = data.mask_table.array()
    assert table.shape[0] == 3  # rna, protein, rna+protein
    assert table.shape[0] < 10 and len(data.row_input) == 300 * 3
    assert data.row_input.dtype == np.int64 and data.row_input.ndim == 1


def test_l2_input_normalization_sees_profiles_not_depth():
    torch.manual_seed(0)
    m = InClustModule(ModuleConfig(n_features=12, n_covariates=2, n_labels=3, encoder_hidden=[16], latent_dim=4, input_normalization="l2")).eval()
    x = torch.rand(5, 12)
    mask = torch.ones(1, 12)
    mask[0, 3] = 0
    cov = torch.zeros(5, dtype=torch.long)
    a = m.predict(x, mask, cov)[1]
    b = m.predict(x * 7.5, mask, cov)[1]  # a deeper-sequenced copy of the same cells
    assert torch.allclose(a, b, atol=1e-6)
    x2 = x.clone()
    x2[:, 3] = 100.0  # the masked feature does not enter the norm either
    assert torch.allclose(m.predict(x2, mask, cov)[1], a, atol=1e-6)
    zero = m.predict(torch.zeros(1, 12), mask, cov[:1])[1]
    assert torch.isfinite(zero).all()


def test_one_definition_of_the_architecture_keys_and_the_checkpoint_description():
    """The [model] section and the module's config share NetworkShape (one set of keys and defaults);
    the module's description, the checkpoint's "module" that export reads, keeps its keys and values."""
    import dataclasses

    from inclust_plus.training.config import ModelConfig, NetworkShape

    cfg = ModuleConfig(n_features=12, n_covariates=2, n_labels=3)
    assert cfg.to_dict() == {"n_features": 12, "n_covariates": 2, "n_labels": 3, "encoder_hidden": [200, 50], "latent_dim": 50,
                             "decoder_hidden": [200], "activation": "relu", "output_activation": "sigmoid",
                             "input_normalization": "none", "input_correction": "none", "covariate_init_std": 0.1, "members": 1}
    assert ModuleConfig(**cfg.to_dict()) == cfg
    shape = {f.name for f in dataclasses.fields(NetworkShape)}
    assert {f.name for f in dataclasses.fields(ModelConfig)} - shape == {"n_clusters", "ensemble"}
    assert {f.name for f in dataclasses.fields(ModuleConfig)} - shape == {"n_features", "n_covariates", "n_labels", "members"}
    model = ModelConfig(encoder_hidden=[8, 6], latent_dim=4, input_normalization="l2", covariate_init_std=0.5, ensemble=3)
    member = ModuleConfig(n_features=12, n_covariates=2, n_labels=3, **model.shape())
    assert (member.encoder_hidden, member.latent_dim, member.input_normalization, member.covariate_init_std, member.members) == ([8, 6], 4, "l2", 0.5, 1)
    assert member.encoder_hidden is not model.encoder_hidden  # copied: merging an ensemble never edits the config
