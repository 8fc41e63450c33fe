"""Contract test: the torch-free runtime (``inclust-run``) reads what ``inclust-export`` writes.

Raw counts go in; with and without --fold-preprocessing (preprocessing inside the graph, or done
by the runtime from the manifest) the imputed values must equal the PyTorch model.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from export_toys import MERFISH, make_toy_checkpoint
from inclust_plus.export import export_model
from inclust_plus.training.checkpoint import load_checkpoint
from reference import predict_masked, preprocess_by_hand

ad = pytest.importorskip("anndata")
pd = pytest.importorskip("pandas")
pytest.importorskip("inclust_plus.runtime.cli")


def _inclust_run(*args) -> subprocess.CompletedProcess:
    code = "import sys; from inclust_plus.runtime.cli import main; sys.argv[0] = 'inclust-run'; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)


def test_runtime_imputes_what_pytorch_predicts(tmp_path):
    ckpt = make_toy_checkpoint(tmp_path / "model.pt", seed=5)
    module, desc = load_checkpoint(ckpt)
    genes = [f"gene{i:03d}" for i in MERFISH]
    rng = np.random.default_rng(0)
    counts = np.round(rng.gamma(0.5, 30.0, (40, len(genes)))).astype(np.float32)
    cells = ad.AnnData(X=counts, obs=pd.DataFrame({"dataset": ["merfish"] * 40}, index=[f"c{i}" for i in range(40)]),
                       var=pd.DataFrame(index=genes))
    cells.write_h5ad(tmp_path / "merfish.h5ad")

    x = preprocess_by_hand(counts, desc, MERFISH).astype(np.float32)
    want = predict_masked(module, MERFISH, list(range(12)), x, np.full(40, 1), np.zeros(40, np.int64))["y"]  # merfish -> scrna

    for fold in (False, True):
        out = export_model(ckpt, tmp_path / f"export_{fold}", combinations=["merfish_to_rna"], fold_preprocessing=fold).parent
        result = _inclust_run("impute", "--onnx", out, "--input", tmp_path / "merfish.h5ad", "--output", tmp_path / f"out_{fold}.h5ad",
                              "--combination", "merfish_to_rna", "--covariate-key", "dataset", "-q")
        assert result.returncode == 0, result.stderr
        got = ad.read_h5ad(tmp_path / f"out_{fold}.h5ad")
        assert list(got.var_names) == [f"gene{i:03d}" for i in range(12)]
        diff = float(np.abs(np.asarray(got.layers["inclust_imputed"], dtype=np.float64) - want).max())
        assert diff <= 1e-5, (fold, diff)
