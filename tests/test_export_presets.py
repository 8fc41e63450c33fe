"""Issue 4 acceptance: every combination of every task preset, exported, equals PyTorch within 1e-5
(onnxruntime and TorchScript) at batches 1, 7 and 1,024 — on models trained by the presets themselves."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from inclust_plus.export import export_model
from inclust_plus.training.checkpoint import read_checkpoint
from inclust_plus.training.presets import PRESETS
from test_export_parity import ATOL, BATCHES, make_feeds, torch_reference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.mark.parametrize("fold", [False, True], ids=["preprocessed", "raw"])
@pytest.mark.parametrize("task", sorted(PRESETS))
def test_every_preset_combination_matches_pytorch(task, fold, tmp_path, preset_checkpoint):
    ckpt = preset_checkpoint(task)
    manifest_path = export_model(ckpt, tmp_path / "export", fold_preprocessing=fold)
    manifest = json.loads(manifest_path.read_text())
    module, desc, table = read_checkpoint(ckpt)  # the imputation preset carries the neighbour read-out: its table
    assert sorted(g["name"] for g in manifest["graphs"]) == sorted(c.name for c in desc.combinations)
    n_cov = len(manifest["covariate"]["categories"])
    for graph in manifest["graphs"]:
        sess = ort.InferenceSession(str(manifest_path.parent / graph["file"]), providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(str(manifest_path.parent / graph["torchscript"]))
        names = [o["name"] for o in graph["outputs"]]
        for batch in BATCHES:
            feeds = make_feeds(graph, n_cov, batch, raw=fold)
            if fold:  # raw values as the modality has them: counts where it is normalised, 0/1 peaks for ATAC
                binary = [c for c, f in enumerate(graph["input_features"]) if f.startswith("atac_")]
                feeds["x"][:, binary] = feeds["x"][:, binary] > 0
            want = torch_reference(module, desc, graph, feeds, raw=fold, table=table)  # the imputation preset's read-out: y blended
            got_ort = dict(zip(names, sess.run(names, feeds)))
            with torch.no_grad():
                got_ts = dict(zip(names, (t.numpy() for t in scripted(*(torch.from_numpy(feeds[i["name"]]) for i in graph["inputs"])))))
            for got in (got_ort, got_ts):
                for name in names:
                    assert got[name].shape == want[name].shape
                    assert float(np.nanmax(np.abs(got[name].astype(np.float64) - want[name]))) <= ATOL, (task, graph["name"], name, batch)
