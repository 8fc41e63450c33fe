"""inclust-map under hostile conditions (issue 25): a diverged mapping, a model with non-finite weights,
batch names that cannot name files, an output that appears while mapping, and the help's example
chain run as written. Each refusal: exit 2, one line ``error: <problem>; <fix>``, nothing written.
(Its full disk and read-only folder: tests/test_reliability_train.py, beside inclust-train's.)"""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from inclust_plus.training import checkpoint as checkpoint_mod
from inclust_plus.training.map_cli import EPILOG as MAP_EPILOG
from inclust_plus.training.map_cli import main as map_main
from reliability_helpers import one_error
from train_reliability_helpers import command, map_args, temporaries, trained  # noqa: F401 - trained is a fixture


# --- 9. a diverged mapping is an error, never a model --------------------------------------------------
def test_diverged_mapping_is_exit_2_and_no_model(trained, tmp_path):
    one_error(map_main, map_args(trained, tmp_path / "mapped.pt", "--learning-rate", "1e30"),
              match=("the mapping diverged: its loss became", "at step 2 of 20", "lower the learning rate (--learning-rate, now 1e+30)"),
              unchanged=tmp_path)


def test_mapping_a_model_with_non_finite_weights_is_refused(trained, tmp_path):
    module, desc = checkpoint_mod.load_checkpoint(trained / "model.pt")
    with torch.no_grad():
        module.prior_means.fill_(float("nan"))
    checkpoint_mod.save_checkpoint(tmp_path / "nan.pt", module, desc)
    args = map_args(trained, tmp_path / "mapped.pt")
    args[0] = tmp_path / "nan.pt"
    one_error(map_main, args, match=("the mapping loss is nan before any step", "re-train the model"), unchanged=tmp_path)


# --- 10. unsafe batch names ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../evil", "a/b", "", " ", "-x"])
def test_unsafe_batch_name_is_refused_before_anything_is_read(trained, tmp_path, monkeypatch, name):
    from inclust_plus.training.model import InClust

    monkeypatch.setattr(InClust, "load", lambda *a: (_ for _ in ()).throw(AssertionError("read the model")))
    one_error(map_main, map_args(trained, tmp_path / "mapped.pt", "--name", name),
              match=(f"--name {name!r} cannot name the new batch's graphs and files", "letters, digits and _.+-"), unchanged=tmp_path)


def test_unsafe_data_file_name_needs_a_name(trained, tmp_path):
    data = tmp_path / "my section.h5ad"
    data.write_bytes((trained / "section2.h5ad").read_bytes())
    args = map_args(trained, tmp_path / "mapped.pt")
    args[2] = data
    one_error(map_main, args, match=("the batch name taken from my section.h5ad, 'my section' cannot name", "pass --name (letters, digits"),
              unchanged=tmp_path)


def test_unsafe_covariate_category_of_a_new_panel_is_refused(trained, tmp_path):
    import anndata as ad

    cells = ad.read_h5ad(trained / "section2.h5ad")
    cells.obs["run"] = "run 1/2"
    cells.write_h5ad(tmp_path / "runs.h5ad")
    args = map_args(trained, tmp_path / "mapped.pt", "--covariate-key", "run")
    args[2] = tmp_path / "runs.h5ad"
    one_error(map_main, args, match=("the new batch 'run' value 'run 1/2' cannot name the new batch's graphs and files",
                                     "rename that value in the data", "--name"), unchanged=tmp_path)


# --- 11. an output that appears while mapping --------------------------------------------------------------
def test_map_without_force_never_replaces_an_output_that_appeared(trained, tmp_path, monkeypatch):
    from inclust_plus.training import mapping

    out = tmp_path / "mapped.pt"
    real = mapping.map_query

    def meanwhile(*args, **kwargs):
        result = real(*args, **kwargs)
        out.write_bytes(b"another run's model")  # a second inclust-map to the same --out finished first
        return result

    monkeypatch.setattr(mapping, "map_query", meanwhile)
    one_error(map_main, map_args(trained, out), match=(f"output {out} appeared while this run was writing it", "--force"))
    assert out.read_bytes() == b"another run's model"
    assert temporaries(tmp_path) == []


def test_two_runs_to_one_out_exactly_one_writes_it(trained, tmp_path):
    """Two real inclust-map processes started together to one new --out: one writes it, the other
    exits 2 (the output appeared while it ran, or already existed when it started), never both 0."""
    out = tmp_path / "mapped.pt"
    procs = [subprocess.Popen(command("map", *map_args(trained, out, "--seed", str(i))), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    err = next(e for rc, e in results if rc == 2).strip()
    assert err in (f"error: output {out} appeared while this run was writing it; pass --force to overwrite it or choose another path",
                   f"error: output {out} already exists; pass --force to overwrite it or choose another path"), err
    assert checkpoint_mod.load_checkpoint(out)[1].mapping[-1].seed == [rc for rc, _ in results].index(0)
    assert temporaries(tmp_path) == []


def test_map_with_force_replaces_it(trained, tmp_path):
    out = tmp_path / "mapped.pt"
    out.write_bytes(b"old")
    res = CliRunner().invoke(map_main, [str(a) for a in map_args(trained, out, "--force")])
    assert res.exit_code == 0, res.output
    assert checkpoint_mod.load_checkpoint(out)[1].covariate.categories == ("b", "a", "section2")  # first seen order, then the new batch


# --- 12. the help's example ---------------------------------------------------------------------------
def _help_examples(epilog: str) -> list[list[str]]:
    lines = [line.split("#")[0].strip() for line in epilog.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("inclust-")]


def test_map_help_examples_are_real_command_lines(trained, tmp_path, monkeypatch):
    """Every example of ``inclust-map --help`` parses with the real CLIs, and the chain from mapping to
    inclust-run runs as written (in a folder holding the files it names)."""
    import anndata as ad
    import mudata as md

    from inclust_plus.export.cli import main as export_main
    from inclust_plus.runtime.cli import cli as run_cli

    examples = _help_examples(MAP_EPILOG)
    assert [e[0] for e in examples] == ["inclust-map"] * 3 + ["inclust-export", "inclust-run"]
    commands = {"inclust-map": map_main, "inclust-export": export_main, "inclust-run": run_cli}
    for argv in examples:  # click's own parser: an option the command lacks is an error here
        commands[argv[0]].make_context(argv[0], argv[1:], resilient_parsing=False)

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes((trained / "model.pt").read_bytes())
    (tmp_path / "section2.h5ad").write_bytes((trained / "section2.h5ad").read_bytes())
    cells = ad.read_h5ad(tmp_path / "section2.h5ad")
    cells.obs["batch"] = ["r1" if i % 2 else "r2" for i in range(cells.n_obs)]
    md.MuData({"rna": cells}).write(tmp_path / "new_runs.h5mu")
    for argv in examples[:3]:
        res = CliRunner().invoke(map_main, argv[1:] + ["--quiet", "--steps", "20", "--force"])
        assert res.exit_code == 0, (argv, res.output)
    res = CliRunner().invoke(map_main, examples[0][1:] + ["--quiet", "--steps", "20", "--force"])  # mapped.pt as the first example makes it
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(export_main, examples[3][1:] + ["--no-torchscript"])
    assert res.exit_code == 0, res.output
    proc = subprocess.run([sys.executable, "-m", "inclust_plus.launch", "run", *examples[4][1:], "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imputed = ad.read_h5ad(tmp_path / "section2.imputed.h5ad")
    assert imputed.n_obs == cells.n_obs and imputed.layers["inclust_imputed"].shape == (cells.n_obs, 10)
