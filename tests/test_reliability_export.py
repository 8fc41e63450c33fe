"""inclust-export's outputs (issue 25): the export folder and a --triton repository appear together
or not at all (defect 3), a diverged model is refused (defect 9), and the export side's message nits
(defect 12). Through the real command; exit code, the one line and the file system before and after."""

from __future__ import annotations

import pytest

from export_toys import make_toy_checkpoint
from inclust_plus.export import api
from inclust_plus.export.cli import main as export
from reliability_helpers import one_error, snapshot, temporaries

COMBO = ["--combination", "merfish_embed", "--no-torchscript"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_toy_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", seed=2)


def _late(monkeypatch, action):
    """Run ``action()`` while the export works (after its first graph), as another process would."""
    real = api._export_one

    def export_one(*args, **kwargs):
        out = real(*args, **kwargs)
        action()
        return out

    monkeypatch.setattr(api, "_export_one", export_one)


def test_triton_repository_not_replaced_when_the_export_folder_is_refused_late(ckpt, tmp_path, monkeypatch):
    """Before: the Triton folder was committed inside the export's block, so a late refusal of --out left it replaced."""
    x, y = tmp_path / "x", tmp_path / "y"
    from click.testing import CliRunner

    assert CliRunner().invoke(export, [str(ckpt), "--out", str(x), "--triton", str(y), *COMBO]).exit_code == 0
    before = snapshot(tmp_path)
    _late(monkeypatch, lambda: (x / "notes.txt").write_text("mine"))
    other = ["--combination", "merfish_to_rna", "--no-torchscript"]  # a replaced folder would differ from the previous one
    line = one_error(export, [ckpt, "--out", x, "--triton", y, "--force", *other])
    assert line == (f"error: output folder {x} holds files inclust-export did not write (notes.txt); --force replaces only a previous "
                    "export; choose another --out folder or move those files out first")
    after = snapshot(tmp_path)
    assert after.pop("x/notes.txt") == b"mine"
    assert after == before  # both previous folders byte for byte, no temporary
    assert temporaries(tmp_path) == []


def test_no_triton_repository_when_the_export_folder_appeared_meanwhile(ckpt, tmp_path, monkeypatch):
    x, y = tmp_path / "x", tmp_path / "y"
    _late(monkeypatch, lambda: x.mkdir(exist_ok=True))
    line = one_error(export, [ckpt, "--out", x, "--triton", y, *COMBO])
    assert line == f"error: output {x} appeared while this run was writing it; pass --force to overwrite it or choose another path"
    assert snapshot(tmp_path) == {"x": None}  # no Triton folder, no temporaries


def test_triton_folder_with_foreign_files_refused_before_the_work(ckpt, tmp_path, monkeypatch):
    x, y = tmp_path / "x", tmp_path / "y"
    y.mkdir()
    (y / "notes.txt").write_text("mine")
    _late(monkeypatch, lambda: pytest.fail("the export ran before the Triton folder was checked"))
    line = one_error(export, [ckpt, "--out", x, "--triton", y, "--force", *COMBO], unchanged=tmp_path)
    assert line == (f"error: Triton folder {y} holds files inclust-export did not write (notes.txt); --force replaces only a previous "
                    "repository; choose another --triton folder or move those files out first")


# --- defect 9: a diverged model ---------------------------------------------------------------------
def test_export_refuses_non_finite_weights(tmp_path):
    import torch

    from export_toys import toy_description, toy_module
    from inclust_plus.training.checkpoint import save_checkpoint

    module = toy_module(seed=2)
    name, weight = next(iter(module.named_parameters()))
    with torch.no_grad():
        weight.view(-1)[:3] = float("nan")  # what a diverged training leaves
    ckpt = save_checkpoint(tmp_path / "model.pt", module, toy_description(seed=2))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "manifest.json").write_text("{}")  # a previous output stays as it was
    line = one_error(export, [ckpt, "--out", tmp_path / "x", "--triton", tmp_path / "y", "--force"], unchanged=tmp_path)
    assert line == (f"error: the model's weights are not finite (3 of {weight.numel()} values of {name} are NaN or infinite): its training "
                    "diverged; retrain with a lower learning rate (inclust-train stops when the loss is not finite) and export that model")


# --- defect 12 (export side): a broken checkpoint description ------------------------------------------
# The writer refuses a broken description (training/checkpoint.py), so each file is edited by hand, as a
# user or a bad copy would; the description's one reader (contract/description_io.py) names the field.
@pytest.mark.parametrize("case, problem", [
    ("covariate", "description field covariate must be an object"),
    ("categories", "description field covariate.categories must be a list"),
    ("labels", "description field labels must be an object"),
    ("no-name", "description has no field 'name'"),
])
def test_broken_checkpoint_description_is_one_clear_line(tmp_path, case, problem):
    import json

    import torch

    from export_toys import toy_description, toy_module
    from inclust_plus.training.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "model.pt", toy_module(seed=2), toy_description(seed=2))
    payload = torch.load(ckpt, weights_only=True)
    desc = json.loads(payload["description_json"])
    if case == "covariate":
        desc["covariate"] = "dataset"
    elif case == "categories":
        desc["covariate"]["categories"] = None
    elif case == "labels":
        desc["labels"] = ["B", "T", "NK"]
    else:
        del desc["name"]
    payload["description_json"] = json.dumps(desc)
    torch.save(payload, ckpt)
    line = one_error(export, [ckpt, "--out", tmp_path / "x"], unchanged=tmp_path)
    assert line.startswith(f"error: checkpoint {ckpt}: {problem}"), line
    assert line.endswith("re-run inclust-train (or inclust-map) to write the model again"), line
