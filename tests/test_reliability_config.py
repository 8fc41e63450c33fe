"""Config validation (issue 12): every key has a type, range or choice; a bad value is one line naming
the key, exit 2, before anything is read or written; a new key is one line of schema."""

from __future__ import annotations

import dataclasses

import pytest

from inclust_plus.errors import InclustError
from inclust_plus.training import config as config_mod
from inclust_plus.training.cli import main as train
from inclust_plus.training.schema import Choice, Int, check_dataclass, key, rule_of
from reliability_helpers import good_input, one_error

BAD = [  # (section, key = value as TOML, words the error must hold)
    ("training", 'epochs = "two"', ('training.epochs = "two"', "integer >= 1")),
    ("training", 'learning_rate = "fast"', ('training.learning_rate = "fast"', "number > 0")),
    ("training", "seed = 0.5", ("training.seed = 0.5", "integer")),
    ("training", "epochs = 0", ("training.epochs = 0", "integer >= 1", "e.g. epochs = 50")),
    ("training", "epochs = -3", ("training.epochs = -3", "integer >= 1")),
    ("training", "batch_size = -1", ("training.batch_size = -1", "integer >= 1")),
    ("training", 'lr_schedule = "cosin"', ('training.lr_schedule = "cosin"', "'constant', 'cosine'")),
    ("training", "validation_fraction = 1.0", ("training.validation_fraction", "< 1")),
    ("training", "patience = true", ("training.patience = true", "integer >= 0")),
    ("training", "workers = -1", ("training.workers = -1", "integer >= 0")),
    ("model", "latent_dim = 0", ("model.latent_dim = 0", "integer >= 1")),
    ("model", "encoder_hidden = [200, -5]", ("model.encoder_hidden", "list of integers >= 1")),
    ("model", 'activation = "swish"', ('model.activation = "swish"', "'relu', 'tanh', 'sigmoid', 'identity', 'gelu'")),
    ("model", "ensemble = 0", ("model.ensemble = 0", "integer >= 1")),
    ("loss", "kl = -1.0", ("loss.kl = -1.0", "number >= 0")),
    ("loss", 'likelihood = "poisson"', ('loss.likelihood = "poisson"', "'gaussian', 'bernoulli'")),
    ("loss", "likelihood = []", ("loss.likelihood = []", "non-empty list")),
    ("views", 'joint = "yes"', ('views.joint = "yes"', "true or false")),
    ("preprocessing.rna", "normalize_total = 0", ("preprocessing.rna.normalize_total = 0", "number > 0")),
    ("preprocessing.rna", 'scale = "min"', ('preprocessing.rna.scale = "min"', "'max'")),
    ("preprocessing.rna", "log1p = 1", ("preprocessing.rna.log1p = 1", "true or false")),
    ("datasets", 'modalities = "rna"', ('datasets[0].modalities = "rna"', "list of")),
    ("datasets", "label_key = 3", ("datasets[0].label_key = 3", "string")),
    ("top", 'task = "imputing"', ('task = "imputing"', "'imputation'")),
]


def _config(tmp_path, section: str, line: str):
    good_input(tmp_path / "ref.h5ad", n=40)
    dataset = 'name = "ref"\npath = "ref.h5ad"'
    text = {
        "top": f'{line}\n[[datasets]]\n{dataset}\n',
        "datasets": f'[[datasets]]\n{dataset}\n{line}\n',
    }.get(section, f'[[datasets]]\n{dataset}\n[{section}]\n{line}\n')
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(text)
    return cfg


@pytest.mark.parametrize("section, line, words", BAD, ids=[f"{s}:{b.split(' =')[0]}={b.split('= ')[1]}" for s, b, _ in BAD])
def test_bad_value_is_one_line_naming_the_key(tmp_path, monkeypatch, section, line, words):
    from inclust_plus.training import model as model_mod

    def never(*args, **kwargs):
        raise AssertionError("training started despite an invalid config")

    monkeypatch.setattr(model_mod.InClust, "fit", never)
    cfg = _config(tmp_path, section, line)
    one_error(train, [cfg, "--out", tmp_path / "model.pt", "--quiet"], match=words, unchanged=tmp_path)


def test_command_line_overrides_are_checked_too(tmp_path):
    cfg = _config(tmp_path, "training", "epochs = 1")
    one_error(train, [cfg, "--out", tmp_path / "model.pt", "--seed", "-4", "--quiet"], match=("training.seed = -4", "integer from 0"), unchanged=tmp_path)


def test_every_key_has_a_rule():
    """Declared with key(default, rule), or derivable from its annotation: nothing goes unchecked."""
    for cls in (config_mod.Config, config_mod.DatasetConfig, config_mod.ModelConfig, config_mod.LossConfig,
                config_mod.TrainingConfig, config_mod.ViewsConfig):
        import typing

        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]) or f.name == "datasets":
                continue  # sections and the dataset list are checked field by field
            assert rule_of(f, hints) is not None, f"{cls.__name__}.{f.name} has no validation rule"


def test_a_new_key_is_one_line():
    """What another branch adds (training.device, training.precision) needs one line each."""

    @dataclasses.dataclass
    class Training(config_mod.TrainingConfig):
        device: str = key("auto", Choice("auto", "cpu", "cuda"))
        precision: str = key("float32", Choice("float32", "bfloat16"))
        accumulate: int = 1  # no rule: checked as an int from its annotation

    check_dataclass(Training(), "training.")
    with pytest.raises(InclustError, match=r"training.device = \"tpu\" is invalid: it must be one of 'auto', 'cpu', 'cuda'"):
        check_dataclass(Training(device="tpu"), "training.")
    with pytest.raises(InclustError, match=r"training.accumulate = \"2\" is invalid: it must be an integer"):
        check_dataclass(Training(accumulate="2"), "training.")
    with pytest.raises(InclustError, match="training.epochs = 0"):
        check_dataclass(Training(epochs=0), "training.")
    assert Int(min=1).problem(3) is None


def test_good_config_and_presets_pass():
    cfg = config_mod.config_from_dict({"task": "imputation", "datasets": [{"name": "a", "path": "a.h5ad"}]})
    assert cfg.training.epochs == 200 and cfg.loss.likelihood == ["gaussian", "bernoulli"]
    config_mod.check_config(cfg)


def test_a_preset_on_fewer_modalities_keeps_only_their_recipes():
    """The integration preset names RNA and protein recipes; RNA-only datasets keep the RNA one (not an
    error about protein), while a recipe the user names for an absent modality is still refused."""
    from inclust_plus.errors import InclustError
    from inclust_plus.training.presets import COUNT_PREP, preset_config

    rna_only = [{"name": "b0", "modalities": ["rna"]}, {"name": "b1", "modalities": ["rna"]}]
    cfg = preset_config("integration", {"datasets": rna_only})
    assert set(cfg.preprocessing) == {"rna"} and cfg.preprocessing["rna"]["log1p"] is COUNT_PREP["log1p"]
    with pytest.raises(InclustError, match=r"table \[preprocessing.RNA\] names modality 'RNA', which no dataset measures"):
        preset_config("integration", {"datasets": rna_only, "preprocessing": {"RNA": {"log1p": True}}})
