"""A real tritonserver (the nvidia-pytriton build) on loopback, serving the Python-backend models of
a toy export: parity with local onnxruntime, metadata, malformed requests, ``--triton`` in the CLI.

One server for the whole module (started in a fixture, stopped in its ``finally``). The server's
Python environment is this interpreter's or ``$INCLUST_TRITON_ENV`` (numpy<2, onnxruntime,
nvidia-pytriton); see inclust_plus/triton/server_env.py.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from runtime_fixtures import COVARIATES, GRAPHS, LABELS, LATENT, PANEL, PROTEIN, RNA, make_cells, make_toy_export, write_h5ad

pytestmark = pytest.mark.triton
pytest.importorskip("onnx", reason="the toy export is built with onnx")
ort = pytest.importorskip("onnxruntime")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc,http] is not installed")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[grpc,http] is not installed")

from tritonclient.utils import InferenceServerException  # noqa: E402

from inclust_plus.errors import InclustError  # noqa: E402
from inclust_plus.runtime import RunOptions, run  # noqa: E402
from inclust_plus.triton.client import TritonBackend, parse_url  # noqa: E402
from inclust_plus.triton.repository import write_triton_repository  # noqa: E402
from inclust_plus.triton.server import triton_server  # noqa: E402
from inclust_plus.triton.server_env import find_server_env  # noqa: E402
from inclust_plus.triton.staging import models_to_load  # noqa: E402

TOL = 1e-5


def _server_env_or_skip():
    try:
        return find_server_env()
    except InclustError as err:
        pytest.skip(f"no usable tritonserver: {err.one_line()}")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"), seed=4)


@pytest.fixture(scope="module")
def server(toy, tmp_path_factory):
    _server_env_or_skip()
    # "both": the PyPI build loads the *_python models and skips the onnxruntime-backend ones
    repo = write_triton_repository(toy.manifest, tmp_path_factory.mktemp("t") / "repo", max_batch_size=256, preferred_batch_sizes=(64, 256))
    srv = None
    try:
        with triton_server(repo, ready_timeout=180) as srv:
            yield srv
    finally:
        if srv is not None:  # whatever happened in the tests, nothing may be left running
            assert srv.process.poll() is not None


@pytest.fixture()
def grpc(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def local(toy, name, feed):
    sess = ort.InferenceSession(str(toy.folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def feed_for(name, n, seed=0):
    _, kind, _, _, fin, _, _ = next(g for g in GRAPHS if g[0] == name)
    rng = np.random.default_rng(seed)
    feed = {"x": make_cells(n, fin, seed=seed), "covariate": rng.integers(0, len(COVARIATES), n).astype(np.int64)}
    if kind == "impute":
        feed["target_covariate"] = rng.integers(0, len(COVARIATES), n).astype(np.int64)
    return feed


def infer(client, model, feed, shapes=None, dtypes=None):
    inputs = []
    for k, v in feed.items():
        arr = v.reshape(-1, 1) if v.ndim == 1 else v
        if dtypes and k in dtypes:
            arr = arr.astype(dtypes[k])
        t = grpcclient.InferInput(k, list(arr.shape), {np.float32: "FP32", np.int64: "INT64", np.float64: "FP64", np.int32: "INT32"}[arr.dtype.type])
        t.set_data_from_numpy(arr)
        if shapes and k in shapes:
            t.set_shape(shapes[k])  # same bytes, declared shape without the [B, 1] column
        inputs.append(t)
    return client.infer(model, inputs)


def test_only_python_models_are_loaded_by_the_pypi_build(server, grpc):
    index = grpc.get_model_repository_index(as_json=True)["models"]
    ready = sorted(m["name"] for m in index if m.get("state") == "READY")
    assert ready == sorted(g[0] + "_python" for g in GRAPHS)
    assert sorted(server.skipped) == sorted(g[0] for g in GRAPHS)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("name", [g[0] for g in GRAPHS])
def test_results_equal_local_onnxruntime(server, toy, name, protocol):
    feed = feed_for(name, 1000, seed=len(name))
    url = server.grpc_url if protocol == "grpc" else server.http_url
    backend = TritonBackend(url, protocol=protocol, concurrency=4, request_rows=96)
    try:
        got = backend.infer(name + "_python", feed)
    finally:
        backend.close()
    assert backend.requests == 11  # 1000 rows in requests of 96 (the last one 40), 4 in flight
    want = local(toy, name, feed)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == np.float32
        assert np.abs(got[k] - want[k]).max() <= TOL, k


def test_model_metadata_lists_the_right_shapes(grpc):
    meta = grpc.get_model_metadata("panel_to_rna_python", as_json=True)
    assert [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in meta["inputs"]] == [
        ("x", "FP32", [-1, len(PANEL)]), ("covariate", "INT64", [-1, 1]), ("target_covariate", "INT64", [-1, 1])]
    assert [(t["name"], t["datatype"], [int(s) for s in t["shape"]]) for t in meta["outputs"]] == [
        ("y", "FP32", [-1, len(RNA)]), ("latent", "FP32", [-1, LATENT]), ("label_probs", "FP32", [-1, len(LABELS)])]
    embed = grpc.get_model_metadata("rna_protein_embed_python", as_json=True)
    assert [int(s) for s in embed["inputs"][0]["shape"]] == [-1, len(RNA) + len(PROTEIN)]
    params = grpc.get_model_config("panel_to_rna_python", as_json=True)["config"]["parameters"]
    assert json.loads(params["inclust.input_features"]["string_value"]) == PANEL


def test_labels_file_names_the_top_classes(server, toy):
    client = httpclient.InferenceServerClient(server.http_url)
    feed = feed_for("rna_embed", 5)
    inputs = []
    for k, v in feed.items():
        arr = v.reshape(-1, 1) if v.ndim == 1 else v
        t = httpclient.InferInput(k, list(arr.shape), "FP32" if arr.dtype == np.float32 else "INT64")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    res = client.infer("rna_embed_python", inputs, outputs=[httpclient.InferRequestedOutput("label_probs", class_count=1)])
    best = local(toy, "rna_embed", feed)["label_probs"].argmax(1)
    top = [c.decode() if isinstance(c, bytes) else c for c in res.as_numpy("label_probs").reshape(-1)]
    assert [t.split(":")[2] for t in top] == [LABELS[i] for i in best]
    client.close()


@pytest.mark.parametrize("case", ["wide_x", "no_batch_dim", "fp64_x", "int32_covariate", "missing_input", "unknown_model", "covariate_out_of_range"])
def test_malformed_requests_fail_and_the_server_keeps_serving(server, grpc, toy, case):
    feed = feed_for("panel_to_rna", 8)
    model, shapes, dtypes = "panel_to_rna_python", None, None
    if case == "wide_x":
        feed["x"] = np.ones((8, len(PANEL) + 1), np.float32)
    elif case == "no_batch_dim":
        shapes = {"covariate": [8]}
    elif case == "fp64_x":
        dtypes = {"x": np.float64}
    elif case == "int32_covariate":
        dtypes = {"covariate": np.int32}
    elif case == "missing_input":
        del feed["target_covariate"]
    elif case == "unknown_model":
        model = "no_such_model"
    elif case == "covariate_out_of_range":
        feed["covariate"][3] = len(COVARIATES)
    with pytest.raises(InferenceServerException) as err:
        infer(grpc, model, feed, shapes, dtypes)
    if case == "covariate_out_of_range":
        assert "covariate index out of range 0..2" in err.value.message()
    assert server.process.poll() is None and grpc.is_server_ready()
    good = feed_for("panel_to_rna", 8, seed=9)
    res = infer(grpc, "panel_to_rna_python", good)
    assert np.abs(res.as_numpy("y") - local(toy, "panel_to_rna", good)["y"]).max() <= TOL


def test_bad_request_in_a_dynamic_batch_fails_alone(server, toy):
    """Requests batched together: one with a bad covariate is rejected, the others are answered."""
    backend = TritonBackend(server.grpc_url, concurrency=8, request_rows=10)
    feed = feed_for("rna_embed", 80)
    feed["covariate"][35] = -1  # in the fourth request
    with pytest.raises(InclustError, match="rejected a request: .*covariate index out of range"):
        backend.infer("rna_embed_python", feed)
    feed["covariate"][35] = 0
    got = backend.infer("rna_embed_python", feed)
    assert np.abs(got["latent"] - local(toy, "rna_embed", feed)["latent"]).max() <= TOL
    backend.close()


def test_backend_errors_are_one_line(server, tmp_path):
    with pytest.raises(InclustError, match="cannot reach Triton|is the server running"):
        backend = TritonBackend(f"127.0.0.1:{_closed_port()}", timeout_s=5)
        backend.served_models()
    with pytest.raises(InclustError, match="unsupported Triton URL scheme"):
        parse_url("https://x:1")
    assert parse_url("http://127.0.0.1:8000") == ("127.0.0.1:8000", "http")
    assert parse_url("localhost:8001") == ("localhost:8001", "grpc")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command, combination", [("impute", "panel_to_rna"), ("embed", "rna_protein_embed")])
def test_cli_with_triton_equals_local(server, toy, tmp_path, command, combination):
    from inclust_plus.runtime.cli import cli

    n = 301
    x = make_cells(n, RNA + PROTEIN, seed=2)
    cov = [COVARIATES[i % 3] for i in range(n)]
    write_h5ad(tmp_path / "in.h5ad", x, RNA + PROTEIN, cov)
    common = [command, "--onnx", str(toy.folder), "--input", str(tmp_path / "in.h5ad"), "--combination", combination, "--batch-size", "128", "-q"]
    res = CliRunner().invoke(cli, [*common, "--output", str(tmp_path / "local.h5ad")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*common, "--output", str(tmp_path / "triton.h5ad"), "--triton", f"grpc://{server.grpc_url}", "--triton-concurrency", "3"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    a, b = ad.read_h5ad(tmp_path / "local.h5ad"), ad.read_h5ad(tmp_path / "triton.h5ad")
    assert np.abs(np.asarray(a.X) - np.asarray(b.X)).max() <= TOL if a.n_vars else b.n_vars == 0
    if "inclust_imputed" in a.layers:
        assert np.abs(a.layers["inclust_imputed"] - b.layers["inclust_imputed"]).max() <= TOL
    assert np.abs(a.obsm["X_inclust"] - b.obsm["X_inclust"]).max() <= TOL
    assert list(a.obs["inclust_label"]) == list(b.obs["inclust_label"])
    u = b.uns["inclust"]
    assert u["backend"] == "triton" and u["triton_model"] == combination + "_python" and u["triton_requests"] == 3 * 3  # 3 batches, 3 in flight each


def test_cli_refuses_a_server_with_another_export(server, toy, tmp_path):
    from inclust_plus.runtime.cli import cli

    other = make_toy_export(tmp_path / "other", seed=99)  # same graph names, other weights
    write_h5ad(tmp_path / "in.h5ad", make_cells(5, RNA + PROTEIN), RNA + PROTEIN, ["a"] * 5)
    res = CliRunner().invoke(cli, ["embed", "--onnx", str(other.folder), "--input", str(tmp_path / "in.h5ad"), "--output", str(tmp_path / "o.h5ad"),
                                   "--combination", "rna_embed", "--triton", server.grpc_url])
    assert res.exit_code == 2 and "serves another export" in res.output
    assert not (tmp_path / "o.h5ad").exists()


def test_cli_refuses_an_edited_covariate_list_on_triton_too(server, toy, tmp_path):
    """The served graphs are this export's (same sha256) but its manifest gained a covariate category:
    the covariate probe runs through Triton as it does locally, with the same line, exit 2, no output."""
    import shutil

    from inclust_plus.runtime.cli import cli

    edited = Path(shutil.copytree(toy.folder, tmp_path / "edited"))
    raw = json.loads((edited / "manifest.json").read_text())
    raw["covariate"]["categories"].append("extra")
    (edited / "manifest.json").write_text(json.dumps(raw))
    write_h5ad(tmp_path / "in.h5ad", make_cells(5, RNA + PROTEIN), RNA + PROTEIN, [COVARIATES[0]] * 5)
    line = (f"error: graph 'panel_to_rna' cannot take the manifest's {len(COVARIATES) + 1} covariate categories (the last is 'extra'); "
            "the manifest was edited or belongs to another export; re-export the model with inclust-export")
    for where in ([], ["--triton", server.grpc_url], ["--triton", f"http://{server.http_url}"]):
        res = CliRunner().invoke(cli, ["impute", "--onnx", str(edited), "--input", str(tmp_path / "in.h5ad"), "--output", str(tmp_path / "o.h5ad"),
                                       "--combination", "panel_to_rna", "-q", *where])
        assert res.exit_code == 2 and res.output.strip().splitlines()[-1] == line, (where, res.output)
        assert not (tmp_path / "o.h5ad").exists()


def test_runner_with_http_backend_and_explicit_model(server, toy, tmp_path):
    x = make_cells(50, RNA + PROTEIN, seed=3)
    write_h5ad(tmp_path / "in.h5ad", x, RNA + PROTEIN, ["b"] * 50)
    backend = TritonBackend(f"http://{server.http_url}", model="rna_to_protein_python", concurrency=2)
    run(RunOptions("generate", onnx=toy.folder, input=tmp_path / "in.h5ad", output=tmp_path / "o.h5ad", combination="rna_to_protein"), backend=backend)
    backend.close()
    out = ad.read_h5ad(tmp_path / "o.h5ad")
    want = local(toy, "rna_to_protein", {"x": x[:, : len(RNA)], "covariate": np.ones(50, np.int64), "target_covariate": np.ones(50, np.int64)})
    assert list(out.var_names) == PROTEIN
    assert np.abs(np.asarray(out.layers["inclust_imputed"]) - want["y"]).max() <= TOL


def test_models_to_load_and_environment_checks(tmp_path):
    repo = write_triton_repository(make_toy_export(tmp_path / "e").manifest, tmp_path / "r", flavour="onnxruntime")
    with pytest.raises(InclustError, match="no model .* uses a backend this server has"):
        models_to_load(repo, {"python"})
    assert models_to_load(repo, {"python", "onnxruntime"}) == (None, [])
    with pytest.raises(InclustError, match="no Python interpreter"):
        find_server_env(tmp_path)


def test_serve_command_runs_until_interrupted(toy, tmp_path):
    """``inclust-run serve REPO --http-port 0 --grpc-port 0``: ready line, answers, SIGINT stops it cleanly."""
    import re
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    _server_env_or_skip()
    repo = write_triton_repository(toy.manifest, tmp_path / "r", flavour="python")
    cmd = [sys.executable, "-c", "from inclust_plus.runtime.cli import main; main()", "serve", str(repo), "--http-port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, http = time.monotonic() + 120, None
        while http is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"Triton is ready: HTTP (127\.0\.0\.1:\d+)", proc.stdout.readline())
            http = m.group(1) if m else None
        assert http, "no ready line"
        with urllib.request.urlopen(f"http://{http}/v2/models/rna_embed_python/ready", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "stopping Triton" in rest
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{http}/v2/health/live", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_help_and_bad_repository(tmp_path):
    from inclust_plus.runtime.cli import cli

    res = CliRunner().invoke(cli, ["serve", "--help"])
    assert res.exit_code == 0 and "--grpc-port" in res.output and "nvidia-pytriton" in res.output
    res = CliRunner().invoke(cli, ["serve", str(tmp_path)])
    assert res.exit_code == 2 and "is not a Triton model repository" in res.output


def test_stop_leaves_nothing_running(server):
    """Last test of the module: stop the shared server; the fixture's finally is then a no-op."""
    pid = server.process.pid
    server.stop()
    assert server.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no stub left in the server's process group
    assert not server.is_ready()
    assert not server.workdir.exists()
    assert not list(Path("/dev/shm").glob(f"inclust{os.getpid()}_{server.http_port}_*"))  # no shared memory left
