"""``inclust-export`` from the command line: success output, bad input -> one line, exit 2, no files."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from export_toys import make_toy_checkpoint
from inclust_plus.errors import InclustError
from inclust_plus.export.cli import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_toy_checkpoint(tmp_path_factory.mktemp("cli") / "model.pt", seed=2)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result, folder, before, *words):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for w in words:
        assert w in lines[0], lines[0]
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing left behind


def test_default_out_dir_and_parity_report(ckpt, tmp_path):
    model = tmp_path / "mymodel.pt"
    model.write_bytes(ckpt.read_bytes())
    result = run(model, "--combination", "merfish_to_rna")
    assert result.exit_code == 0, result.output
    out = tmp_path / "mymodel_export"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "merfish_to_rna.csr.onnx", "merfish_to_rna.onnx", "merfish_to_rna.ts"]
    assert "merfish_to_rna: max |diff| vs PyTorch: onnxruntime" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mymodel.pt", "mymodel_export"]


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("this is not a model\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_clean_failure(run(bad, "--out", tmp_path / "out"), tmp_path, before, "not a readable inclust-plus checkpoint")


def test_a_torch_file_that_is_not_ours(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_clean_failure(run(other, "--out", tmp_path / "out"), tmp_path, before, "not an inclust-plus checkpoint")


def test_truncated_checkpoint(ckpt, tmp_path):
    cut = tmp_path / "cut.pt"
    data = ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_clean_failure(run(cut, "--out", tmp_path / "out"), tmp_path, before, "truncated")


def test_missing_checkpoint(tmp_path):
    assert_clean_failure(run(tmp_path / "nope.pt"), tmp_path, [], "does not exist")


def test_unknown_combination_lists_the_valid_names(ckpt, tmp_path):
    result = run(ckpt, "--out", tmp_path / "out", "--combination", "merfish_to_rna", "--combination", "rna_to_atac")
    assert_clean_failure(result, tmp_path, [], "unknown combination 'rna_to_atac'", "merfish_to_rna", "merfish_embed", "rna_protein_embed")


def test_existing_output_needs_force(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_failure(run(ckpt, "--out", out), tmp_path, ["out"], "already exists", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # --force replaces a previous export only: a folder holding a file export did not write is kept (issue 12)
    assert_clean_failure(run(ckpt, "--out", out, "--force"), tmp_path, ["out"], "did not write (keep.txt)", "--out")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    result = run(ckpt, "--out", out, "--force", "--no-torchscript", "--no-csr", "--combination", "rna_protein_embed")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "rna_protein_embed.onnx"]
    result = run(ckpt, "--out", out, "--force", "--no-torchscript", "--no-csr", "--combination", "merfish_embed")
    assert result.exit_code == 0, result.output  # a previous export is replaced
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "merfish_embed.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_parity_check_writes_nothing(ckpt, tmp_path, monkeypatch):
    import inclust_plus.export.validate as validate

    monkeypatch.setattr(validate, "ATOL", -1.0)
    assert_clean_failure(run(ckpt, "--out", tmp_path / "out"), tmp_path, [], "differs from the PyTorch model", "onnxruntime")


def _fake_triton(monkeypatch, fail: bool):
    calls = []

    def write_triton_repository(manifest_path, out_dir, force=False, into=None):
        manifest = json.loads(manifest_path.read_text())
        assert all((manifest_path.parent / g["file"]).is_file() for g in manifest["graphs"])
        calls.append((manifest_path.name, out_dir, force))
        if fail:
            raise InclustError("fake Triton writer failed")
        (into / "model").mkdir()  # the export moves this temporary folder onto out_dir with its own

    fake = types.ModuleType("inclust_plus.triton.repository")
    fake.write_triton_repository = write_triton_repository
    fake.written_by_triton_export = lambda folder: None
    monkeypatch.setitem(sys.modules, "inclust_plus.triton.repository", fake)
    return calls


def test_triton_writer_gets_the_manifest(ckpt, tmp_path, monkeypatch):
    calls = _fake_triton(monkeypatch, fail=False)
    result = run(ckpt, "--out", tmp_path / "out", "--triton", tmp_path / "triton", "--combination", "merfish_embed")
    assert result.exit_code == 0, result.output
    assert calls == [("manifest.json", tmp_path / "triton", False)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "triton"]


def test_failing_triton_writer_leaves_no_export(ckpt, tmp_path, monkeypatch):
    _fake_triton(monkeypatch, fail=True)
    result = run(ckpt, "--out", tmp_path / "out", "--triton", tmp_path / "triton")
    assert_clean_failure(result, tmp_path, [], "fake Triton writer failed")


def test_triton_folder_inside_the_export_is_refused(ckpt, tmp_path):
    assert_clean_failure(run(ckpt, "--out", tmp_path / "out", "--triton", tmp_path / "out" / "t"), tmp_path, [], "overlap")


def test_help_mentions_every_option():
    result = run("--help")
    assert result.exit_code == 0
    for opt in ("--out", "--combination", "--torchscript", "--no-torchscript", "--fold-preprocessing", "--triton", "--force"):
        assert opt in result.output


def test_description_that_contradicts_the_weights(tmp_path):
    from export_toys import toy_module
    from inclust_plus.training.checkpoint import save_checkpoint

    good = torch.load(make_toy_checkpoint(tmp_path / "good.pt"), weights_only=True)
    desc = json.loads(good["description_json"])
    desc["covariate"]["categories"] = ["scrna", "merfish"]  # the module has 3 embeddings
    with pytest.raises(InclustError, match="2 covariate categories for 3 embeddings"):  # the writer refuses it
        save_checkpoint(tmp_path / "refused.pt", toy_module(), desc)
    assert not (tmp_path / "refused.pt").exists()
    torch.save({**good, "description_json": json.dumps(desc)}, tmp_path / "bad.pt")  # an edited file: the reader refuses it
    (tmp_path / "good.pt").unlink()
    assert_clean_failure(run(tmp_path / "bad.pt", "--out", tmp_path / "out"), tmp_path, ["bad.pt"], "2 covariate categories for 3 embeddings")


def test_parity_tolerance_is_absolute_plus_float32_relative():
    # 1e-5 absolute, plus 1e-6 of the value: float32 rounding on a latent of ~10 must not fail an export.
    from inclust_plus.export.validate import within_tolerance

    want = {"latent": np.array([[10.0, -12.0, 0.5]], dtype=np.float32)}
    assert within_tolerance({"latent": want["latent"] + np.array([[1.9e-5, -2.1e-5, 1.0e-5]], dtype=np.float32)}, want)
    assert not within_tolerance({"latent": want["latent"] + np.array([[2.5e-5, 0.0, 0.0]], dtype=np.float32)}, want)
    assert not within_tolerance({"latent": want["latent"] + np.array([[0.0, 0.0, 1.2e-5]], dtype=np.float32)}, want)
    assert not within_tolerance({"latent": want["latent"][:, :2]}, want)


def test_force_replaces_a_previous_export_with_every_flavour(ckpt, tmp_path):
    """--force recognises every file an export wrote (CSR and fp16 flavours, TorchScript, torch.export)."""
    out = tmp_path / "out"
    first = run(ckpt, "--out", out, "--fp16", "--torch-export", "--combination", "merfish_embed")
    assert first.exit_code == 0, first.output
    assert {"merfish_embed.csr.onnx", "merfish_embed.fp16.onnx", "merfish_embed.pt2", "merfish_embed.ts"} <= {p.name for p in out.iterdir()}
    again = run(ckpt, "--out", out, "--force", "--no-torchscript", "--combination", "merfish_embed")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "merfish_embed.csr.onnx", "merfish_embed.onnx"]
