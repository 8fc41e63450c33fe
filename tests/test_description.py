"""The checkpoint's model description: frozen dataclasses, one reader, one writer (inclust_plus/contract/description*.py).

tests/data holds two checkpoints written by main before the dataclasses existed (a trained model
with two covariate keys and a partial panel, and the same model after inclust-map) and the
manifests main's exporter wrote for them (tests/data/make_main_fixture.py made them).
"""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inclust_plus.contract.description import ModelDescription
from inclust_plus.contract.description_io import from_json, to_json
from inclust_plus.errors import InclustError
from inclust_plus.export import export_model
from inclust_plus.training.checkpoint import load_checkpoint, save_checkpoint

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
STEMS = ("main_model", "main_mapped")


def _raw(stem: str) -> dict:
    return json.loads(torch.load(DATA / f"{stem}.pt", weights_only=True)["description_json"])


@pytest.mark.parametrize("stem", STEMS)
def test_checkpoints_written_by_main_export_to_the_same_manifest(stem, tmp_path):
    manifest = export_model(DATA / f"{stem}.pt", tmp_path / "e", torchscript=False)
    assert json.loads(manifest.read_text()) == json.loads((DATA / f"{stem}.manifest.json").read_text())


@pytest.mark.parametrize("stem", STEMS)
def test_the_writer_gives_back_what_main_wrote(stem):
    raw = _raw(stem)
    d = from_json(raw)
    assert to_json(d) == raw
    assert from_json(to_json(d)) == d


def test_fields_of_a_main_checkpoint():
    _, d = load_checkpoint(DATA / "main_mapped.pt")
    assert isinstance(d, ModelDescription)
    assert d.name == "main_fixture" and d.latent_dim == 3 and d.members == 1 and d.n_features == 24
    assert d.covariate.keys == ("batch", "tech") and d.covariate.categories == ("batch0|10x", "batch1|10x", "batch9")
    assert d.labels.key == "cell_type" and d.labels.mode == "semi-supervised" and len(d.labels.categories) == 6
    assert d.preprocessing["rna"].normalize_total == 10000 and d.preprocessing["rna"].log1p and len(d.preprocessing["rna"].scale) == 24
    assert d.feature_sets["batch1"].features == tuple(range(16))
    assert [c.name for c in d.combinations] == ["rna_to_rna", "batch1_to_batch1", "rna_embed", "batch1_embed"]
    assert d.combination("batch1_embed").default_covariate == "batch1|10x" and not d.combination("batch1_embed").decodes
    assert d.mapping[0].categories == ("batch9",) and d.mapping[0].cells == {"batch9": 100} and d.datasets[-1].mapped
    assert d.training.epochs == 2 and len(d.training.history["total"]) == 2
    assert d.loss_weight("kl") == 1.0 and d.loss_weight("label") == 50.0


def test_the_description_is_read_by_attribute_only():
    """No second reader by string key (issue 23): the JSON's names are the reader's business alone."""
    _, d = load_checkpoint(DATA / "main_model.pt")
    with pytest.raises(TypeError, match="not subscriptable"):
        d["name"]
    assert not hasattr(d, "get") and not hasattr(d, "keys")
    assert d.name == "main_fixture"


def _broken(edit) -> dict:
    raw = copy.deepcopy(_raw("main_mapped"))
    edit(raw)
    return raw


BROKEN = [  # (what is edited, the words the one-line error must hold)
    (lambda r: r.pop("schema"), "description has no field 'schema'"),
    (lambda r: r["covariate"].update(categories="batch0"), "description field covariate.categories must be a list"),
    (lambda r: r["labels"].update(mode="guessed"), "description field labels.mode must be one of supervised"),
    (lambda r: r["feature_sets"]["batch1"].update(features=[0, 1, "x"]), "description field feature_sets.batch1.features[2] must be an integer >= 0"),
    (lambda r: r["feature_sets"]["batch1"].update(features=[0, 99]), "feature set 'batch1' uses feature index 99 outside 0..23"),
    (lambda r: r["combinations"][0].update(inputs="nope"), "combination 'rna_to_rna' uses feature set 'nope' that the description does not define"),
    (lambda r: r["combinations"][0].update(name="../evil"), "description field combinations[0].name must be a name of letters"),
    (lambda r: r["combinations"][1].update(default_covariate="batch7"), "combination 'batch1_to_batch1' defaults to unknown covariate 'batch7'"),
    (lambda r: r["preprocessing"]["rna"].update(scale=[1.0, 2.0]), "preprocessing.rna.scale has 2 values for 24 features"),
    (lambda r: r["preprocessing"]["rna"].update(scale=[0.0] * 24), "description field preprocessing.rna.scale[0] must be a positive finite number"),
    (lambda r: r["covariate"]["categories"].pop(), "2 covariate categories for 3 embeddings"),
    (lambda r: r["module"].pop("latent_dim"), "description field module has no field 'latent_dim'"),
    (lambda r: r["mapping"][0].update(steps="5"), "description field mapping[0].steps must be an integer >= 1"),
]


@pytest.mark.parametrize("edit, words", BROKEN)
def test_a_broken_description_is_one_line_naming_the_field(edit, words, tmp_path):
    good = torch.load(DATA / "main_mapped.pt", weights_only=True)
    torch.save({**good, "description_json": json.dumps(_broken(edit))}, tmp_path / "model.pt")
    with pytest.raises(InclustError) as err:
        load_checkpoint(tmp_path / "model.pt")
    text = err.value.one_line()
    assert "\n" not in text and text.startswith(f"checkpoint {tmp_path / 'model.pt'}: ")
    assert words in err.value.problem, text
    assert err.value.fix.startswith("re-run inclust-train")


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    module, d = load_checkpoint(DATA / "main_mapped.pt")
    with pytest.raises(InclustError, match=f"cannot write {tmp_path / 'm.pt'}: feature set 'batch1' uses feature index 30 outside 0..23"):
        save_checkpoint(tmp_path / "m.pt", module, _broken(lambda r: r["feature_sets"]["batch1"].update(features=[30])))
    assert not (tmp_path / "m.pt").exists()
    path = save_checkpoint(tmp_path / "m.pt", module, d)
    assert load_checkpoint(path)[1] == d


def test_machine_settings_are_not_saved(tmp_path):
    """device, threads, workers and the fast-step choice are how to run, not what the model is."""
    from inclust_plus.training.model import InClust
    from evaluation.synthetic import make_cells

    cells = make_cells(n_cells=60, n_batches=1, seed=0, sizes={"rna": 10, "protein": 2, "atac": 2})
    model = InClust.setup(cells.anndata("rna"), label_key="cell_type", epochs=1, batch_size=30, threads=1, workers=1, device="cpu",
                          fast_step="off", preprocessing={"rna": {"log1p": True}}, encoder_hidden=[4], latent_dim=2, decoder_hidden=[4])
    model.train(progress=False).save(tmp_path / "m.pt")
    saved = json.loads(torch.load(tmp_path / "m.pt", weights_only=True)["description_json"])["hyperparameters"]
    assert set(saved) == {"task", "model", "loss", "training", "views"}
    assert set(saved["training"]) == {"epochs", "batch_size", "learning_rate", "seed", "validation_fraction", "patience", "lr_schedule",
                                      "kl_warmup_epochs", "precision"}
    assert saved["training"]["epochs"] == 1 and saved["model"]["latent_dim"] == 2


def test_a_description_dict_goes_through_the_reader():
    from inclust_plus.training.model import InClust

    module, d = load_checkpoint(DATA / "main_model.pt")
    assert InClust(module, to_json(d)).description == d
    with pytest.raises(InclustError, match="description has no field 'combinations'"):
        InClust(module, {k: v for k, v in to_json(d).items() if k != "combinations"})


def test_model_and_mapping_do_not_import_each_other():
    def imports(path: Path) -> set[str]:
        return {n.module or "" for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)}

    def names(path: Path) -> set[str]:  # the last part: ".model" and "inclust_plus.training.model" alike
        return {m.rsplit(".", 1)[-1] for m in imports(path)}

    assert "model" not in names(ROOT / "training" / "mapping.py")
    assert "mapping" in names(ROOT / "training" / "model.py")


def test_the_description_is_torch_free():
    code = ("import sys, inclust_plus.contract.description_io as io, json; "
            "assert not {'torch', 'inclust_plus.training', 'inclust_plus.export'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# settings added after the fixture was written, and the value that is the old training ("module": the network's description)
ADDED_SINCE = {("loss", "unseen"): 1.0, ("loss", "mixing_kernel"): "median", ("model", "input_correction"): "none", ("module", "input_correction"): "none"}


def test_training_describes_a_model_as_main_did():
    """The same seeded run as tests/data/make_main_fixture.py: the description main wrote, less the run options."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_main_fixture", DATA / "make_main_fixture.py")
    fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixture)
    for got, stem in zip(fixture.models(), STEMS):
        now, then = json.loads(json.dumps(to_json(got.description))), _raw(stem)  # a copy: the mapped model shares dicts with the first
        for raw in (now, then):  # timings and dates differ from run to run
            for key in ("seconds", "rows_per_second"):
                raw["training"].pop(key)
            for entry in raw.get("mapping", ()):
                entry.pop("seconds"), entry.pop("date")
        for key in ("device", "threads", "workers", "native"):  # run options: main saved them, no longer
            then["hyperparameters"]["training"].pop(key)
        for (section, key), value in ADDED_SINCE.items():  # recorded now, at the value that trains as main did
            now_part, then_part = (now, then) if section == "module" else (now["hyperparameters"], then["hyperparameters"])
            assert now_part[section].pop(key) == value and key not in then_part[section]
        assert now == then
