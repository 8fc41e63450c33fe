"""Issue 5 acceptance: a fresh virtual environment with the base install (no extras, no torch) runs
``inclust-run impute`` end to end on an exported model.

The project is copied to a temporary folder before ``pip install`` so the build leaves nothing in
the working tree. pip resolves the base dependencies from its configured index (PyPI or a local
mirror); the test takes about a minute with a warm pip cache.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from runtime_fixtures import COVARIATES, PANEL, RNA, make_cells, make_toy_export, write_h5ad

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("inclust_plus", "runtime", "training", "export")


def _copy_project(dest: Path) -> Path:
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    if not (dest / "README.md").exists():  # pyproject names a readme
        (dest / "README.md").write_text("inclust-plus\n")
    for d in PACKAGE_DIRS:
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _export(tmp_path: Path):
    """A model exported by inclust_plus.export when available, else the hand-built toy export."""
    try:
        import export_toys
        from inclust_plus.export import export_model
        from inclust_plus.training.checkpoint import load_checkpoint
    except ImportError:
        return make_toy_export(tmp_path / "toy"), None
    ckpt = export_toys.make_toy_checkpoint(tmp_path / "model.pt", seed=2)
    manifest = export_model(ckpt, tmp_path / "export", torchscript=False)
    return manifest, load_checkpoint(ckpt)


@pytest.mark.venv
def test_base_install_runs_without_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    src = _copy_project(tmp_path / "src")
    pip = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]

    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout.lower()
    assert "torch" not in freeze and "onnxruntime" in freeze
    assert "tritonclient" not in freeze  # the Triton package imports it only when --triton / serve run
    serve_help = subprocess.run([str(venv / "bin" / "inclust-run"), "serve", "--help"], capture_output=True, text=True)
    assert serve_help.returncode == 0 and "--python-env" in serve_help.stdout, serve_help.stderr

    exported, ckpt = _export(tmp_path)
    exe = venv / "bin" / "inclust-run"
    out = tmp_path / "imputed.h5ad"
    if ckpt is None:  # hand-built toy
        model = exported
        x = make_cells(64, RNA, seed=4)
        cov = [COVARIATES[i % 3] for i in range(64)]
        write_h5ad(tmp_path / "in.h5ad", x, RNA, cov)
        args = ["--onnx", str(model.folder), "--combination", "panel_to_rna"]
    else:
        import json

        import pandas as pd

        from test_runtime_export import reference

        man = json.loads(Path(exported).read_text())
        graph = next(g for g in man["graphs"] if g["name"] == "merfish_to_rna")
        module, desc = ckpt
        x = np.round(np.random.default_rng(4).gamma(0.5, 30.0, (64, len(graph["input_features"])))).astype(np.float32)
        obs = pd.DataFrame({"dataset": ["merfish"] * 64}, index=[f"c{i}" for i in range(64)])
        ad.AnnData(x, obs=obs, var=pd.DataFrame(index=graph["input_features"])).write_h5ad(tmp_path / "in.h5ad")
        args = ["--onnx", str(exported), "--combination", "merfish_to_rna", "--covariate-key", "dataset"]
    run = subprocess.run([str(exe), "impute", "--input", str(tmp_path / "in.h5ad"), "--output", str(out), *args],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "CPUExecutionProvider" in run.stderr
    result = ad.read_h5ad(out)
    if ckpt is None:
        ref = model.reference("panel_to_rna", x[:, [RNA.index(f) for f in PANEL]], np.arange(64) % 3, np.zeros(64, int))
    else:
        cats = list(desc.covariate.categories)
        tgt = np.full(64, cats.index(graph["default_target_covariate"])) if graph["default_target_covariate"] else None
        ref = reference(module, desc, graph, x, np.full(64, cats.index("merfish")), tgt)
        assert ref["y"].shape == (64, len(graph["output_features"]))  # PyTorch's reference, computed here (the fresh venv has no torch: above)
    assert np.abs(result.layers["inclust_imputed"] - ref["y"]).max() <= 1e-5
    assert result.uns["inclust"]["provider"] == "CPUExecutionProvider"
