"""One settings check: a config file, inclust-train's flags, InClust.setup(**settings) and InClust.train(**settings)
give the same one-line error for the same bad value (training/config.py ``with_settings`` -> ``check_config``)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from inclust_plus.errors import InclustError
from inclust_plus.training import config as config_module
from inclust_plus.training.cli import main as train_main
from inclust_plus.training.model import InClust
from evaluation.synthetic import make_cells

ad = pytest.importorskip("anndata")

BAD = [  # (section, key, value): each trained nothing, to NaN, stored a typo or raised a TypeError through InClust.train
    ("training", "epochs", 0),
    ("training", "learning_rate", -5),
    ("training", "lr_schedule", "cosin"),
    ("training", "epochs", "2"),
]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    folder = tmp_path_factory.mktemp("settings")
    adata = make_cells(n_cells=40, n_batches=1, seed=0, sizes={"rna": 8, "protein": 2, "atac": 2}).anndata("rna")
    adata.write_h5ad(folder / "data.h5ad")
    return adata, folder


def _toml(value) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _config_file_error(folder, text: str, *args) -> str:
    """What inclust-train prints for a config holding ``text`` (one dataset named "data")."""
    path = folder / "c.toml"
    path.write_text(f'[[datasets]]\nname = "data"\npath = "data.h5ad"\nmodalities = ["rna"]\n{text}')
    result = CliRunner().invoke(train_main, [str(path), "--out", str(folder / "m.pt"), "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert not (folder / "m.pt").exists()
    line = result.output.strip()
    assert line.startswith("error: ") and "\n" not in line, result.output
    return line[len("error: "):]


def _error(call) -> str:
    with pytest.raises(InclustError) as err:
        call()
    assert "\n" not in err.value.one_line()
    return err.value.one_line()


@pytest.mark.parametrize("section, key, value", BAD)
def test_setup_and_train_give_the_config_files_error(cells, section, key, value):
    adata, folder = cells
    expected = _config_file_error(folder, f"[{section}]\n{key} = {_toml(value)}\n")
    assert expected.startswith(f"config key {section}.{key} = ")
    assert _error(lambda: InClust.setup(adata, **{key: value})) == expected
    model = InClust.setup(adata, epochs=1)
    assert _error(lambda: model.train(progress=False, **{key: value})) == expected
    assert model.config.training.epochs == 1 and model.config.training.learning_rate == 1e-3  # a refused setting changes nothing
    assert model.module is None


def test_an_unknown_label_column_is_the_config_files_error(cells):
    adata, folder = cells
    path = folder / "labels.toml"
    path.write_text('[[datasets]]\nname = "data"\npath = "data.h5ad"\nmodalities = ["rna"]\nlabel_key = "celltype_nope"\n')
    result = CliRunner().invoke(train_main, [str(path), "--out", str(folder / "m.pt"), "--quiet", "--epochs", "1"])
    assert result.exit_code == 2 and not (folder / "m.pt").exists()
    expected = result.output.strip()[len("error: "):]
    assert expected.startswith("dataset 'data' has no label column 'celltype_nope'; obs columns are: cell_type, batch")
    assert _error(lambda: InClust.setup(adata, label_key="celltype_nope")) == expected
    assert _error(lambda: InClust.setup({"data": adata}, label_key={"data": "celltype_nope"})) == expected
    assert _error(lambda: InClust.setup({"data": adata}, label_key={"other": "cell_type"})) == "label_key names unknown dataset 'other'; datasets are: data"


def test_a_label_column_only_some_datasets_have_labels_those(cells):
    adata, _ = cells
    query = adata[:10].copy()
    del query.obs["cell_type"]
    model = InClust.setup({"ref": adata[10:].copy(), "query": query}, label_key="cell_type")
    assert [d.label_key for d in model.config.datasets] == ["cell_type", None]


def test_a_flag_and_a_setup_keyword_go_through_the_same_check(cells, monkeypatch):
    """inclust-train --epochs 7 and InClust.setup(epochs=7) both reach config.check_config with epochs 7."""
    adata, folder = cells
    seen = []
    original = config_module.check_config

    def spy(cfg):
        seen.append(cfg.training.epochs)
        original(cfg)
        if cfg.training.epochs == 7:
            raise InclustError("stopped by the test")

    monkeypatch.setattr(config_module, "check_config", spy)
    assert _config_file_error(folder, "", "--epochs", "7") == "stopped by the test"
    assert seen[-1] == 7
    seen.clear()
    assert _error(lambda: InClust.setup(adata, epochs=7)) == "stopped by the test"
    assert seen[-1] == 7
    seen.clear()
    assert _error(lambda: InClust.setup(adata, epochs=3).train(epochs=7, progress=False)) == "stopped by the test"
    assert seen[-1] == 7


def test_a_bad_flag_gets_the_config_files_error(cells):
    _, folder = cells
    expected = _config_file_error(folder, "[training]\nepochs = 0\n")
    assert _config_file_error(folder, "", "--epochs", "0") == expected
    assert _config_file_error(folder, "", "--ensemble", "0").startswith("config key model.ensemble = 0 is invalid")
    assert _config_file_error(folder, "", "--device", "gpu") == _config_file_error(folder, '[training]\ndevice = "gpu"\n')


def test_an_unknown_setting_names_the_valid_ones(cells):
    adata, _ = cells
    text = _error(lambda: InClust.setup(adata, epoch=3))
    assert text.startswith("unknown setting 'epoch'; settings are fields of [model], [loss], [training], [views] or [readout]: ")
    assert "epochs" in text
    assert _error(lambda: InClust.setup(adata).train(epoch=3, progress=False)) == text
