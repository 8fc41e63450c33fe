"""Every bad input of issue 5: one ``error:`` line, exit 2, no output written, existing output untouched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from inclust_plus.runtime.cli import cli
from runtime_fixtures import COVARIATES, PROTEIN, RNA, make_cells, make_toy_export, write_h5ad

N = 40
COV = [COVARIATES[i % 3] for i in range(N)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def good(tmp_path):
    return write_h5ad(tmp_path / "in.h5ad", make_cells(N, RNA), RNA, COV) and tmp_path / "in.h5ad"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name) if folder.is_dir() else []


def fails(toy, *args, match: str, out: Path, command="impute", combination="panel_to_rna", code=2):
    """Run, expect a one-line error containing ``match``, no new output and no temp file."""
    existed = out.read_bytes() if out.exists() else None
    argv = [command, "--onnx", str(toy.folder), "--output", str(out), "--quiet"]
    if combination:
        argv += ["--combination", combination]
    result = CliRunner().invoke(cli, argv + [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]
    assert (out.read_bytes() if out.exists() else None) == existed
    assert leftovers(out.parent) == []
    return lines[0]


def test_missing_and_corrupt_input(toy, tmp_path, good):
    fails(toy, "--input", tmp_path / "nope.h5ad", match="does not exist", out=tmp_path / "o.h5ad")
    (tmp_path / "junk.h5ad").write_bytes(b"not an hdf5 file at all" * 10)
    fails(toy, "--input", tmp_path / "junk.h5ad", match="not a readable h5ad", out=tmp_path / "o.h5ad")
    data = good.read_bytes()
    (tmp_path / "cut.h5ad").write_bytes(data[: len(data) // 2])
    fails(toy, "--input", tmp_path / "cut.h5ad", match="not a readable h5ad", out=tmp_path / "o.h5ad")
    import h5py

    with h5py.File(tmp_path / "nox.h5ad", "w") as f:
        f.create_group("obs")
    fails(toy, "--input", tmp_path / "nox.h5ad", match="not an AnnData", out=tmp_path / "o.h5ad")


def test_wrong_modality_and_graph_choice(toy, tmp_path, good):
    msg = fails(toy, "--input", good, "--from", "atac", match="modality 'atac' is not in the model", out=tmp_path / "o.h5ad", combination=None)
    assert "known modalities: rna, protein" in msg
    fails(toy, "--input", good, match="several impute/generate graphs match", out=tmp_path / "o.h5ad", combination=None)
    fails(toy, "--input", good, "--from", "protein", match="no impute/generate graph from protein", out=tmp_path / "o.h5ad", combination=None)
    msg = fails(toy, "--input", good, "--from", "rna", match="several embed/annotate graphs match", out=tmp_path / "o.h5ad", command="embed", combination=None)
    assert "rna_embed (rna -> latent)" in msg and "panel_embed" in msg and "--combination" in msg
    fails(toy, "--input", good, match="combination 'nope' is not in", out=tmp_path / "o.h5ad", combination="nope")
    fails(toy, "--input", good, match="is an embed graph", out=tmp_path / "o.h5ad", combination="rna_embed")
    mudata = pytest.importorskip("mudata")
    mudata.MuData({"atac": ad.AnnData(make_cells(N, RNA), var=pd.DataFrame(index=RNA)),
                   "adt": ad.AnnData(make_cells(N, PROTEIN), var=pd.DataFrame(index=PROTEIN))}).write(tmp_path / "two.h5mu")
    fails(toy, "--input", tmp_path / "two.h5mu", "--covariate", "a", match="has modalities adt, atac", out=tmp_path / "o.h5ad", combination="rna_to_protein")


def test_missing_features(toy, tmp_path):
    keep = RNA[3:]
    write_h5ad(tmp_path / "in.h5ad", make_cells(N, keep), keep, COV)
    msg = fails(toy, "--input", tmp_path / "in.h5ad", match="lacks 3 of the 6 features", out=tmp_path / "o.h5ad")
    assert "g0, g1, g2" in msg and "--allow-missing" in msg


def test_duplicate_var_names(toy, tmp_path):
    names = RNA[:5] + ["g1"] + RNA[5:]
    write_h5ad(tmp_path / "in.h5ad", make_cells(N, names), names, COV)
    fails(toy, "--input", tmp_path / "in.h5ad", match="duplicate var names among the model's features: g1", out=tmp_path / "o.h5ad")


@pytest.mark.parametrize("value,match", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-1.0, "negative values")])
def test_bad_values(toy, tmp_path, value, match):
    x = make_cells(N, RNA)
    x[17, 2] = value
    write_h5ad(tmp_path / "in.h5ad", x, RNA, COV, sparse=None)
    msg = fails(toy, "--input", tmp_path / "in.h5ad", match=match, out=tmp_path / "o.h5ad")
    assert "cell 17" in msg


def test_unknown_covariates(toy, tmp_path):
    write_h5ad(tmp_path / "in.h5ad", make_cells(N, RNA), RNA, ["a"] * (N - 1) + ["zebrafish"])
    msg = fails(toy, "--input", tmp_path / "in.h5ad", match="categories the model does not know: zebrafish", out=tmp_path / "o.h5ad")
    assert "known: a, b, c" in msg
    fails(toy, "--input", tmp_path / "in.h5ad", "--covariate", "d", match="--covariate 'd' is not a covariate category", out=tmp_path / "o.h5ad")
    fails(toy, "--input", tmp_path / "in.h5ad", "--covariate-key", "batch", match="has no column 'batch'", out=tmp_path / "o.h5ad")
    fails(toy, "--input", tmp_path / "in.h5ad", "--covariate", "a", "--target-covariate", "q", match="--target-covariate 'q'", out=tmp_path / "o.h5ad")
    write_h5ad(tmp_path / "nocov.h5ad", make_cells(N, RNA), RNA, None)
    fails(toy, "--input", tmp_path / "nocov.h5ad", match="pass --covariate-key COL or --covariate NAME", out=tmp_path / "o.h5ad")


def test_empty_anndata(toy, tmp_path):
    write_h5ad(tmp_path / "in.h5ad", np.zeros((0, len(RNA)), np.float32), RNA, [])
    fails(toy, "--input", tmp_path / "in.h5ad", match="has no cells", out=tmp_path / "o.h5ad")


def test_output_paths(toy, tmp_path, good):
    fails(toy, "--input", good, match="same file as input", out=good)
    other = tmp_path / "link.h5ad"
    os.symlink(good, other)
    fails(toy, "--input", other, match="same file as input", out=good)
    existing = tmp_path / "o.h5ad"
    existing.write_bytes(b"precious")
    fails(toy, "--input", good, match="already exists", out=existing)
    fails(toy, "--input", good, match="does not exist", out=tmp_path / "no" / "o.h5ad")


def test_tampered_and_missing_graph(tmp_path, good):
    model = make_toy_export(tmp_path / "m")
    path = model.folder / "panel_to_rna.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    fails(model, "--input", good, match="tampered or corrupt", out=tmp_path / "o.h5ad")
    path.unlink()
    fails(model, "--input", good, match="is missing", out=tmp_path / "o.h5ad")
    (model.folder / "manifest.json").write_text("{ not json")
    fails(model, "--input", good, match="not valid JSON", out=tmp_path / "o.h5ad")
    fails(model, "--input", good, "--onnx", tmp_path / "nowhere", match="no manifest at", out=tmp_path / "o.h5ad")


def test_device_cuda_without_cuda(toy, tmp_path, good):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("depends on the hardware: this onnxruntime has CUDA")
    fails(toy, "--input", good, "--device", "cuda", match="no CUDA provider", out=tmp_path / "o.h5ad")


def test_error_midway_keeps_existing_output(toy, tmp_path):
    """NaN in the last of many chunks: chunks were already written to the temp file, which is removed."""
    x = make_cells(500, RNA)
    x[-1, 0] = np.nan
    write_h5ad(tmp_path / "in.h5ad", x, RNA, ["a"] * 500, sparse=None)
    out = tmp_path / "o.h5ad"
    out.write_bytes(b"old result")
    from inclust_plus.errors import InclustError
    from inclust_plus.runtime import RunOptions, run

    with pytest.raises(InclustError, match="cell 499"):
        run(RunOptions("impute", onnx=toy.folder, input=tmp_path / "in.h5ad", output=out, combination="panel_to_rna",
                       force=True, batch_size=8, value_budget=8 * 10, quiet=True))
    assert out.read_bytes() == b"old result" and leftovers(tmp_path) == []


def test_interrupted_in_process(toy, tmp_path, good, monkeypatch):
    from inclust_plus.runtime import cli as cli_mod
    from inclust_plus.runtime.backend import OnnxBackend

    class Interrupting(OnnxBackend):
        calls = 0

        def run(self, *args):
            Interrupting.calls += 1
            if Interrupting.calls == 3:
                raise KeyboardInterrupt
            return super().run(*args)

    monkeypatch.setattr(cli_mod, "choose_backend", lambda extra, options: Interrupting("cpu"))
    msg = fails(toy, "--input", good, "--batch-size", "4", match="interrupted", out=tmp_path / "o.h5ad", code=130)
    assert Interrupting.calls == 3 and "no output" in msg


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_by_signal(toy, tmp_path, sig):
    """A real Ctrl-C (or a scheduler's SIGTERM) on the running command: no output, no temp file."""
    n = 60_000
    x = make_cells(n, RNA, density=0.3)
    write_h5ad(tmp_path / "in.h5ad", x, RNA, ["a"] * n)
    exe = Path(sys.executable).with_name("inclust-run")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "inclust_plus.runtime.cli"]
    out = tmp_path / "o.h5ad"
    proc = subprocess.Popen(argv + ["impute", "--onnx", str(toy.folder), "--input", str(tmp_path / "in.h5ad"), "--output", str(out),
                                    "--combination", "panel_to_rna", "--batch-size", "1", "--quiet"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not leftovers(tmp_path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip(f"the run ended before it could be interrupted ({proc.returncode})")
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"error: interrupted by {sig.name}; no output was written (an existing one is unchanged)"
    assert not out.exists() and leftovers(tmp_path) == []


def test_annotate_without_labels(tmp_path, good):
    model = make_toy_export(tmp_path / "m", labels=False)
    fails(model, "--input", good, match="no label categories", out=tmp_path / "o.h5ad", command="annotate", combination="rna_embed")
    shutil.rmtree(model.folder)
