"""``inclust-export --torch-export``: one torch.export ExportedProgram (.pt2) per combination, equal
to the PyTorch model (and to the ONNX graph) for any batch size, listed with its sha256."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from export_toys import make_toy_checkpoint
from inclust_plus.export import export_model
from inclust_plus.export.cli import main as export_cli
from inclust_plus.contract.combinations import select_combinations
from inclust_plus.contract.plan_builder import build_plan
from inclust_plus.export.validate import random_feeds, reference, run_onnx, within_tolerance
from inclust_plus.hashing import file_sha256
from inclust_plus.runtime.cli import cli as run_cli
from inclust_plus.training.checkpoint import load_checkpoint


@pytest.mark.parametrize("variant", [{"members": 2}, {"input_normalization": "l2"}, {"activation": "gelu", "members": 2}],
                         ids=["ensemble", "l2-input", "gelu-ensemble"])
@pytest.mark.parametrize("fold", [False, True], ids=["runtime-preprocessing", "folded-preprocessing"])
def test_programs_equal_pytorch_for_any_batch(tmp_path, variant, fold):
    ckpt = make_toy_checkpoint(tmp_path / "model.pt", seed=4, **variant)
    manifest = json.loads(export_model(ckpt, tmp_path / "export", torchscript=False, torch_export=True, fold_preprocessing=fold).read_text())
    module, desc = load_checkpoint(ckpt)
    combos = {c.name: c for c in select_combinations(desc, None)}
    for entry in manifest["graphs"]:
        path = tmp_path / "export" / entry["torch_export"]
        assert entry["torch_export_sha256"] == file_sha256(path)
        program = torch.export.load(str(path)).module()
        combo = combos[entry["name"]]
        plan = build_plan(desc, combo.inputs) if fold else None
        onnx_bytes = (tmp_path / "export" / entry["file"]).read_bytes()
        for batch in (1, 7, 130):
            feeds = random_feeds(combo, module.config.n_covariates, batch, seed=batch, plan=plan)
            with torch.no_grad():
                outs = program(*[torch.from_numpy(feeds[t.name]) for t in combo.spec.inputs])
            got = {t.name: o.numpy() for t, o in zip(combo.spec.outputs, outs)}
            assert within_tolerance(got, reference(module, combo, feeds, plan)), (entry["name"], batch)
            onnx = run_onnx(onnx_bytes, feeds)
            assert max(float(np.abs(got[k] - onnx[k]).max()) for k in got) <= 2e-6, (entry["name"], batch)


def test_cli_flag_and_info(tmp_path):
    ckpt = make_toy_checkpoint(tmp_path / "model.pt", seed=1)
    res = CliRunner().invoke(export_cli, [str(ckpt), "--out", str(tmp_path / "e"), "--torch-export", "--combination", "merfish_to_rna"])
    assert res.exit_code == 0, res.output
    assert "merfish_to_rna: max |diff| vs PyTorch: onnxruntime" in res.output and ", torch.export " in res.output
    assert (tmp_path / "e" / "merfish_to_rna.pt2").is_file() and (tmp_path / "e" / "merfish_to_rna.ts").is_file()
    info = CliRunner().invoke(run_cli, ["info", str(tmp_path / "e")])
    assert "torch.export: merfish_to_rna.pt2" in info.output and info.output.count(" ok") == 4  # onnx, its CSR flavour, ts, pt2
    (tmp_path / "e" / "merfish_to_rna.pt2").write_bytes(b"tampered")
    assert "torch.export: merfish_to_rna.pt2 sha256" in (out := CliRunner().invoke(run_cli, ["info", str(tmp_path / "e")]).output) and "MISMATCH" in out
    plain = json.loads(export_model(ckpt, tmp_path / "plain", torchscript=False, combinations=["merfish_to_rna"]).read_text())
    assert "torch_export" not in plain["graphs"][0]  # without the flag the manifest is as before
