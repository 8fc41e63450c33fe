"""Mapping new cells onto a trained model (training/mapping.py, inclust-map): one new covariate row, nothing else.

A small synthetic model (two labelled reference batches with every gene, one unlabelled query
batch measured on a 60-gene panel) stands in for a real reference; the acceptance numbers on real
data are in benchmarks/mapping.py.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from inclust_plus.errors import InclustError
from inclust_plus.training.config import config_from_dict
from inclust_plus.training.map_cli import main as map_main
from inclust_plus.training.mapping import _posteriors, mapping_loss
from inclust_plus.training.model import InClust
from inclust_plus.training.network.module import InClustModule, ModuleConfig
from inclust_plus.training.assembly.query_data import align_cells
from evaluation.synthetic import make_cells

ad = pytest.importorskip("anndata")
PANEL = np.sort(np.random.default_rng(1).permutation(100)[:60])


@pytest.fixture(scope="module")
def trained():
    """(model trained on batches 0-2, the AnnData of every batch, the cells)."""
    torch.set_num_threads(1)
    cells = make_cells(n_cells=1500, n_batches=3, seed=0, sizes={"rna": 100, "protein": 5, "atac": 5})
    objs = {f"batch{b}": cells.anndata("rna", np.flatnonzero(cells.batch == f"batch{b}")) for b in range(3)}
    objs["batch2"] = objs["batch2"][:, PANEL].copy()
    cfg = config_from_dict({
        "name": "toy", "task": "custom",
        "datasets": [{"name": "batch0", "label_key": "cell_type"}, {"name": "batch1", "label_key": "cell_type"}, {"name": "batch2"}],
        "views": {"query": ["batch2"]},
        "preprocessing": {"rna": {"normalize_total": 1e4, "log1p": True, "scale": "max"}},
        "training": {"epochs": 40, "batch_size": 100, "threads": 1},
    })
    model, _, _ = InClust.fit(cfg, objs, progress=False)
    return model, objs


def _without_last_category(model: InClust) -> InClust:
    """The same model as if its last covariate category had never been seen."""
    cfg = ModuleConfig(**{**model.module.config.to_dict(), "n_covariates": model.module.config.n_covariates - 1})
    small = InClustModule(cfg)
    state = model.module.state_dict()
    small.load_state_dict({**state, "covariate_embedding": state["covariate_embedding"][:-1]})
    d = model.description
    return InClust(small, dataclasses.replace(d, covariate=dataclasses.replace(d.covariate, categories=d.covariate.categories[:-1])))


def test_mapping_learns_only_the_new_row(trained):
    model, objs = trained
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    mapped = model.map_query(objs["batch2"], name="section2", progress=False)
    after = mapped.module.state_dict()
    assert mapped.description.covariate.categories == ("batch0", "batch1", "batch2", "section2")
    for key, value in before.items():
        if key == "covariate_embedding":
            assert after[key].shape == (4, value.shape[1])
            assert torch.equal(after[key][:3], value)
            assert not torch.equal(after[key][3], value.mean(0))  # it moved from its start
        else:
            assert torch.equal(after[key], value), key
    for key, value in model.module.state_dict().items():  # the source model is untouched
        assert torch.equal(value, before[key]), key
    info = mapped.description.mapping[-1]
    assert info.categories == ("section2",) and info.cells == {"section2": 500} and info.feature_set == "batch2"
    assert info.final_loss < info.initial_loss


def test_mapping_uses_the_fused_adam_step_not_torch_optim(trained, monkeypatch):
    """Constructing a torch.optim optimizer imports torch._dynamo (~1.2 s of a mapping that takes
    seconds); the mapping steps Adam with the fused kernel and the cosine decay in closed form."""
    def refused(*args, **kwargs):
        raise AssertionError("torch.optim constructed")

    monkeypatch.setattr(torch.optim, "Adam", refused)
    monkeypatch.setattr(torch.optim.lr_scheduler, "CosineAnnealingLR", refused)
    model, objs = trained
    info = model.map_query(objs["batch2"], name="section2", progress=False, steps=20).description.mapping[-1]
    assert info.steps == 20 and info.final_loss < info.initial_loss


def test_mapping_recovers_a_held_out_batch_offset(trained):
    """Forget batch 2's row, map its cells back: the learned row is the trained one to 20% of the
    batch offset (relative to the mean row, where mapping starts), and fits the cells at least as well."""
    model, objs = trained
    trained_row = model.module.covariate_embedding.detach()[2]
    base = _without_last_category(model)
    mapped = base.map_query(objs["batch2"], name="batch2", progress=False)
    row = mapped.module.covariate_embedding.detach()[2]
    offset = (trained_row - base.module.covariate_embedding.detach().mean(0)).norm()
    assert float(offset) > 0.5  # a real batch effect to recover
    rel = float((row - trained_row).norm() / offset)
    assert rel < 0.25, rel  # measured 0.165
    cells = align_cells(base.description, objs["batch2"])
    mu, lv = _posteriors(base.module, cells, np.arange(cells.n_cells))
    with torch.no_grad():
        at_trained = float(mapping_loss(base.module, mu, lv, trained_row.expand(len(mu), -1), 1.0, 1.0, False))
    assert mapped.description.mapping[-1].final_loss <= at_trained + 1e-4
    # Labels transfer to the mapped cells (the trained types, never shown for batch 2).
    x = cells.dense(0, cells.n_cells)[:, mapped.feature_set("batch2")]
    _, _, probs = mapped.predict(x, "batch2", "batch2")
    truth = objs["batch2"].obs["cell_type"].astype(str).to_numpy()
    assert (np.asarray(mapped.description.labels.categories)[probs.argmax(1)] == truth).mean() > 0.95


def test_a_new_panel_needs_a_name_that_can_name_files(trained):
    """The panel's graphs are files named after it: refused before the mapping runs or anything is written."""
    model, objs = trained
    with pytest.raises(InclustError, match="--name 'slide 7' cannot name the new batch's graphs and files; choose another: letters, digits"):
        model.map_query(objs["batch2"][:, :30].copy(), name="slide 7", progress=False, steps=2)


def test_new_panel_gets_its_own_feature_set_and_graphs(trained):
    model, objs = trained
    small = objs["batch2"][:, :30].copy()
    mapped = model.map_query(small, name="tiny", progress=False)
    assert mapped.description.feature_sets["tiny"].features == tuple(PANEL[:30].tolist())
    names = [c.name for c in mapped.description.combinations]
    assert "tiny_to_rna" in names and "tiny_embed" in names
    assert "tiny" not in model.description.feature_sets


def _inclust_run(*args) -> subprocess.CompletedProcess:
    code = "import sys; from inclust_plus.runtime.cli import main; sys.argv[0] = 'inclust-run'; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)


def test_cli_maps_and_the_mapped_model_exports_and_runs(trained, tmp_path):
    from inclust_plus.export import export_model

    model, objs = trained
    model.save(tmp_path / "model.pt")
    objs["batch2"].write_h5ad(tmp_path / "section2.h5ad")
    res = CliRunner().invoke(map_main, [str(tmp_path / "model.pt"), "--data", str(tmp_path / "section2.h5ad"),
                                        "--out", str(tmp_path / "mapped.pt"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "mapped section2 (500 cells)" in res.output
    mapped = InClust.load(tmp_path / "mapped.pt")
    assert mapped.description.covariate.categories[-1] == "section2"

    # Unmapped, the runtime refuses the new batch in one line; mapped, it imputes what PyTorch predicts.
    for ckpt, name in ((tmp_path / "model.pt", "plain"), (tmp_path / "mapped.pt", "mapped")):
        out = export_model(ckpt, tmp_path / f"export_{name}", combinations=["batch2_to_rna"], torchscript=False).parent
        run = _inclust_run("impute", "--onnx", out, "--input", tmp_path / "section2.h5ad", "--output", tmp_path / f"{name}.h5ad",
                           "--combination", "batch2_to_rna", "--covariate", "section2", "--target-covariate", "batch0", "-q")
        if name == "plain":
            assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "section2" in run.stderr, run.stderr
            continue
        assert run.returncode == 0, run.stderr
        got = ad.read_h5ad(tmp_path / f"{name}.h5ad")
        cells = align_cells(mapped.description, objs["batch2"])
        want, _, _ = mapped.predict(cells.dense(0, cells.n_cells)[:, mapped.feature_set("batch2")], "batch2", "section2", "batch0")
        assert np.abs(np.asarray(got.layers["inclust_imputed"]) - want[:, mapped.feature_set("rna")]).max() < 1e-4


@pytest.mark.parametrize("args, message", [
    (["--out", "{model}"], "same file as input"),
    (["--out", "{tmp}/exists.pt"], "already exists"),
    (["--out", "{tmp}/o.pt", "--name", "a", "--covariate-key", "batch"], "exclusive"),
    (["--out", "{tmp}/o.pt", "--covariate-key", "nope"], "obs has no column 'nope'"),  # the runtime's wording (issue 23)
    (["--out", "{tmp}/o.pt", "--name", "batch1"], "already in the model"),
    (["--out", "{tmp}/o.pt", "--data", "{tmp}/missing.h5ad"], "does not exist"),
    (["--out", "{tmp}/o.pt", "--data", "{tmp}/alien.h5ad"], "shares no feature names"),
    (["--out", "{tmp}/nofolder/o.pt"], "does not exist"),
])
def test_cli_errors_are_one_line(trained, tmp_path, args, message):
    model, objs = trained
    model.save(tmp_path / "model.pt")
    objs["batch2"].write_h5ad(tmp_path / "section2.h5ad")
    (tmp_path / "exists.pt").write_bytes(b"keep")
    alien = objs["batch2"].copy()
    alien.var_names = [f"other{i}" for i in range(alien.n_vars)]
    alien.write_h5ad(tmp_path / "alien.h5ad")
    fill = {"model": tmp_path / "model.pt", "tmp": tmp_path}
    argv = [str(tmp_path / "model.pt"), "--data", str(tmp_path / "section2.h5ad"), "--quiet"] + [a.format(**fill) for a in args]
    if argv.count("--data") == 2:  # the case overrides the data file
        i = argv.index("--data")
        del argv[i : i + 2]
    res = CliRunner().invoke(map_main, argv)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.output
    assert (tmp_path / "exists.pt").read_bytes() == b"keep"
    assert not (tmp_path / "o.pt").exists()


def test_mapping_an_ensemble_learns_each_members_block(trained):
    """Two identical members merged: the new row's two blocks both equal the single network's mapped row
    (the objective sums the members' blocks, and Adam's step ignores the factor 2), and the other weights stay."""
    from inclust_plus.training.network.ensemble import merge_members

    model, objs = trained
    pair = InClust(merge_members([copy.deepcopy(model.module), copy.deepcopy(model.module)]), copy.deepcopy(model.description))
    single = model.map_query(objs["batch2"], name="s2", progress=False).module.covariate_embedding.detach()[3]
    mapped = pair.map_query(objs["batch2"], name="s2", progress=False)
    row = mapped.module.covariate_embedding.detach()[3]
    d = single.shape[0]
    assert torch.allclose(row[:d], single, atol=1e-3) and torch.allclose(row[d:], single, atol=1e-3)
    for key, value in pair.module.state_dict().items():
        if key != "covariate_embedding":
            assert torch.equal(mapped.module.state_dict()[key], value), key
