"""inclust-run against hostile inputs and exports (issue 25): CSR indices stored as floats (defect 4),
a manifest that disagrees with its graphs (5), ``info`` over every file (6), non-finite outputs (9),
and the runtime's message nits (12). Each: exit 2, the exact line, nothing written, a previous output
untouched; through the real command (click's runner on ``inclust-run``) and, where it applies, the Predictor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from export_toys import make_toy_checkpoint
from inclust_plus.errors import InclustError
from inclust_plus.export import export_model
from inclust_plus.runtime import Predictor
from inclust_plus.runtime.cli import cli
from reliability_helpers import one_error, snapshot

N = 30
GRAPH = "merfish_to_rna"  # 6 input features (rna), 12 outputs, covariates scrna/merfish/cite


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    ckpt = make_toy_checkpoint(root / "model.pt", seed=2)
    export_model(ckpt, root / "exp", torchscript=False, fp16=True)
    return root / "exp"


@pytest.fixture(scope="module")
def ts_export(tmp_path_factory):
    """The same model exported with its TorchScript twins, for the checks that apply to every backend."""
    root = tmp_path_factory.mktemp("ts_export")
    return export_model(make_toy_checkpoint(root / "model.pt", seed=2), root / "exp", torchscript=True).parent


def cells(export: Path, path: Path) -> Path:
    features = next(g for g in json.loads((export / "manifest.json").read_text())["graphs"] if g["name"] == GRAPH)["input_features"]
    rng = np.random.default_rng(0)
    x = (rng.gamma(1.0, 5.0, (N, len(features))) * (rng.random((N, len(features))) < 0.5)).round().astype(np.float32)
    obs = pd.DataFrame({"dataset": pd.Categorical(["merfish"] * N)}, index=[f"c{i}" for i in range(N)])
    ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=features)).write_h5ad(path)
    return path


def copy_export(export: Path, to: Path, edit=None) -> Path:
    shutil.copytree(export, to)
    if edit is not None:
        raw = json.loads((to / "manifest.json").read_text())
        edit(raw)
        (to / "manifest.json").write_text(json.dumps(raw))
    return to


def impute(export: Path, inp: Path, out: Path, *extra) -> list:
    return ["impute", "--onnx", export, "--input", inp, "--output", out, "--combination", GRAPH, "--covariate-key", "dataset", "--quiet", *extra]


def expect(tmp_path: Path, argv: list, line: str) -> None:
    """Exit 2 with exactly ``line``; the previous output (o.h5ad) and everything else under tmp_path unchanged."""
    (tmp_path / "o.h5ad").write_bytes(b"previous")
    assert one_error(cli, argv + ["--force"], unchanged=tmp_path) == line


# --- defect 4: CSR indices stored as floats -------------------------------------------------------
@pytest.mark.parametrize("part", ["indices", "indptr"])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_float_csr_indices_are_one_line(export, tmp_path, part, fmt):
    inp = cells(export, tmp_path / "in.h5ad")
    with h5py.File(inp, "a") as f:
        values = f[f"X/{part}"][()]
        del f[f"X/{part}"]
        f[f"X/{part}"] = values.astype(np.float64)
    expect(tmp_path, impute(export, inp, tmp_path / "o.h5ad", "--input-format", fmt),
           f"error: /X is a corrupt CSR matrix ({part} stored as float64, not integers); re-write the h5ad with anndata or scanpy")


# --- defect 5: a manifest that disagrees with its own graph ---------------------------------------
def _graph(raw: dict) -> dict:
    return next(g for g in raw["graphs"] if g["name"] == GRAPH)


def _extra_category(raw):
    raw["covariate"]["categories"].append("extra")


def _shorten(raw, shapes: bool):
    g = _graph(raw)
    g["input_features"] = g["input_features"][:5]
    for group in g["preprocessing_plan"]:
        group["runs"], group["scale"] = [[0, 5]], group["scale"][:5]
    if shapes:  # the declared shapes edited too: only the graph file itself can tell
        for flavour in [g, *g["variants"]]:
            for t in flavour.get("inputs") or []:
                if t["name"] == "x":
                    t["shape"] = ["batch", 5]


EDITED = "the manifest was edited or belongs to another export; re-export the model with inclust-export"


ENGINES = {"onnx-dense": ("--input-format", "dense"), "onnx-csr": ("--input-format", "csr"), "torchscript": ("--torchscript",)}


def _backend(engine: str):
    from inclust_plus.runtime.torchscript_backend import TorchScriptBackend

    return TorchScriptBackend("cpu") if engine == "torchscript" else None


@pytest.mark.parametrize("engine", ENGINES)
def test_manifest_with_an_extra_covariate_category(ts_export, tmp_path, engine):
    """The same line whichever backend runs the graph (TorchScript was not probed before)."""
    export = ts_export
    edited = copy_export(export, tmp_path / "exp", _extra_category)
    inp = cells(export, tmp_path / "in.h5ad")
    line = f"error: graph '{GRAPH}' cannot take the manifest's 4 covariate categories (the last is 'extra'); {EDITED}"
    assert one_error(cli, impute(edited, inp, tmp_path / "o.h5ad", *ENGINES[engine]), unchanged=tmp_path) == line
    with pytest.raises(InclustError) as err:
        Predictor(edited, backend=_backend(engine)).impute(ad.read_h5ad(inp), combination=GRAPH, covariate_key="dataset")
    assert f"error: {err.value.one_line()}" == line


def test_manifest_with_shortened_input_features(export, tmp_path):
    """The feature list and plan cut to 5 of the graph's 6 inputs: the schema ties the declared x width to it."""
    edited = copy_export(export, tmp_path / "exp", lambda raw: _shorten(raw, shapes=False))
    inp = cells(export, tmp_path / "in.h5ad")
    expect(tmp_path, impute(edited, inp, tmp_path / "o.h5ad"),
           f"error: manifest {edited / 'manifest.json'}: graph '{GRAPH}': its x is 6 wide, the manifest lists 5 input features; "
           "re-export the model with inclust-export")


def test_manifest_with_shortened_inputs_and_shapes(export, tmp_path):
    """Declared shapes edited to match: the graph file's own signature is compared when it is loaded (CLI and Predictor)."""
    edited = copy_export(export, tmp_path / "exp", lambda raw: _shorten(raw, shapes=True))
    inp = cells(export, tmp_path / "in.h5ad")
    line = f"error: graph '{GRAPH}' ({GRAPH}.onnx) has x float32[batch, 6], the manifest says x float32[batch, 5]; {EDITED}"
    expect(tmp_path, impute(edited, inp, tmp_path / "o.h5ad"), line)
    with pytest.raises(InclustError) as err:
        Predictor(edited).impute(ad.read_h5ad(inp), combination=GRAPH, covariate_key="dataset")
    assert f"error: {err.value.one_line()}" == line


def test_torchscript_graph_shorter_than_its_manifest_entry(ts_export, tmp_path):
    """TorchScript has no signature to compare: the probe's first call (first category only) tells."""
    edited = copy_export(ts_export, tmp_path / "exp", lambda raw: _shorten(raw, shapes=True))
    inp = cells(ts_export, tmp_path / "in.h5ad")
    expect(tmp_path, impute(edited, inp, tmp_path / "o.h5ad", "--torchscript"),
           f"error: graph '{GRAPH}' does not run on the inputs its manifest entry declares; {EDITED}")


# --- defect 6: info lists and checks every file the manifest names ---------------------------------
@pytest.mark.parametrize("flavour, damage", [("csr.onnx", "tampered"), ("csr.onnx", "deleted"), ("fp16.onnx", "tampered"),
                                             ("csr.fp16.onnx", "deleted")])
def test_info_checks_the_csr_and_fp16_flavours(export, tmp_path, flavour, damage):
    from click.testing import CliRunner

    folder = copy_export(export, tmp_path / "exp")
    n_files = sum(1 + len(g["variants"]) for g in json.loads((folder / "manifest.json").read_text())["graphs"])
    clean = CliRunner().invoke(cli, ["info", str(folder)])
    assert clean.exit_code == 0 and clean.stdout.count(" ok\n") == n_files == 28, clean.output  # 7 graphs x 4 flavours
    target = folder / f"{GRAPH}.{flavour}"
    target.write_bytes(target.read_bytes() + b"x") if damage == "tampered" else target.unlink()
    before = snapshot(tmp_path)
    check = "MISMATCH" if damage == "tampered" else "missing"
    line = one_error(cli, ["info", folder])
    assert line == (f"error: 1 of the {n_files} files the manifest names are not as exported ({target.name} {check}); "
                    "re-export the model with inclust-export or copy the whole export folder again")
    listing = CliRunner().invoke(cli, ["info", str(folder)]).stdout
    kind = "onnx " + flavour.removesuffix(".onnx").replace(".", " ")
    assert f"    {kind}: {target.name} sha256 " in listing and listing.count(f" {check}\n") == 1 and listing.count(" ok\n") == n_files - 1
    assert snapshot(tmp_path) == before


# --- defect 9: non-finite outputs are an error, never a result ------------------------------------------
def _diverged(folder: Path) -> None:
    """Every weight of the graph's first initializer NaN (dense and CSR files), sha256s re-pinned."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    raw = json.loads((folder / "manifest.json").read_text())
    g = _graph(raw)
    for entry in [g, *g["variants"]]:
        model = onnx.load(folder / entry["file"])
        init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).dtype.kind == "f" and numpy_helper.to_array(i).ndim == 2)
        init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), init.name))
        onnx.save(model, folder / entry["file"])
        entry["sha256"] = hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_non_finite_outputs_are_refused(export, tmp_path, fmt):
    folder = copy_export(export, tmp_path / "exp")
    _diverged(folder)
    inp = cells(export, tmp_path / "in.h5ad")
    line = (f"error: graph '{GRAPH}' returned non-finite values (NaN or infinity) in y, first for the cell in row 0: the model's training "
            "diverged or its graph is damaged; retrain with a lower learning rate and export again")
    expect(tmp_path, impute(folder, inp, tmp_path / "o.h5ad", "--input-format", fmt), line)
    with pytest.raises(InclustError) as err:
        Predictor(folder).impute(ad.read_h5ad(inp), combination=GRAPH, covariate_key="dataset")
    assert f"error: {err.value.one_line()}" == line


# --- defect 12: --triton '' and --triton-concurrency, message nits ---------------------------------------
def test_empty_triton_url_is_refused_not_run_locally(export, tmp_path):
    inp = cells(export, tmp_path / "in.h5ad")
    expect(tmp_path, impute(export, inp, tmp_path / "o.h5ad", "--triton", ""),
           "error: --triton was given an empty URL; pass the server as HOST:PORT (e.g. localhost:8001), or drop --triton to run locally")


@pytest.mark.parametrize("value", ["0", "-4"])
@pytest.mark.parametrize("with_url", [True, False], ids=["with-triton", "without"])
def test_triton_concurrency_below_one_is_refused_alike(export, tmp_path, value, with_url):
    inp = cells(export, tmp_path / "in.h5ad")
    url = ["--triton", "localhost:1"] if with_url else []  # nothing listens there: the check comes before any connection
    expect(tmp_path, impute(export, inp, tmp_path / "o.h5ad", *url, "--triton-concurrency", value),
           f"error: --triton-concurrency must be at least 1, not {value}; pass the requests in flight at once, e.g. 4")


def test_h5ad_with_no_genes(export, tmp_path):
    obs = pd.DataFrame({"dataset": pd.Categorical(["merfish"] * N)}, index=[f"c{i}" for i in range(N)])
    ad.AnnData(np.zeros((N, 0), np.float32), obs=obs).write_h5ad(tmp_path / "in.h5ad")
    expect(tmp_path, impute(export, tmp_path / "in.h5ad", tmp_path / "o.h5ad"),
           f"error: in.h5ad X has no features (0 columns); graph '{GRAPH}' takes 6; pass the file with its measured features "
           "(e.g. gene000, gene002, gene003, gene005, gene007, ... (1 more))")


@pytest.mark.parametrize("force", [False, True])
def test_folder_given_as_output(export, tmp_path, force):
    inp = cells(export, tmp_path / "in.h5ad")
    (tmp_path / "results").mkdir()
    line = one_error(cli, impute(export, inp, tmp_path / "results", *(["--force"] if force else [])), unchanged=tmp_path)
    assert line == f"error: output {tmp_path / 'results'} is a folder; pass a file path ending in .h5ad (e.g. inside that folder)"


def test_folder_given_as_dataset(export, tmp_path):
    (tmp_path / "data").mkdir()
    expect(tmp_path, impute(export, tmp_path / "data", tmp_path / "o.h5ad"),
           f"error: input {tmp_path / 'data'} is a folder, not a dataset file; pass the .h5ad (or .h5mu) file itself")
