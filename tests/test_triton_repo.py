"""The Triton model repository written from an export: layout, configs (parsed by Triton's own
ModelConfig protobuf), names for clients, refusal of stale graphs, atomic replacement.

No server here (see test_triton_server.py); needs onnx for the toy export and tritonclient[grpc]
for Triton's ``model_config_pb2``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime_fixtures import COVARIATES, GRAPHS, LABELS, LATENT, PANEL, RNA, make_toy_export

pytest.importorskip("onnx", reason="the toy export is built with onnx")
from inclust_plus.errors import InclustError  # noqa: E402
from inclust_plus.triton.model_config import parse_model_config  # noqa: E402
from inclust_plus.triton.repository import write_triton_repository  # noqa: E402

NO_PB2 = "Triton's ModelConfig protobuf comes with tritonclient[grpc], not installed here (pip install 'tritonclient[grpc,http]')"

write = write_triton_repository


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"), seed=3)


@pytest.fixture(scope="module")
def repo(toy, tmp_path_factory):
    return write(toy.manifest, tmp_path_factory.mktemp("t") / "repo")


@pytest.fixture(scope="module")
def pb2():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2", reason=NO_PB2)


def configs(folder: Path) -> dict:
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason=NO_PB2)
    return {p.parent.name: parse_model_config(p.read_text()) for p in sorted(folder.glob("*/config.pbtxt"))}


def test_layout_one_model_per_graph_and_flavour(repo, toy):
    names = [g[0] for g in GRAPHS]
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(names + [n + "_python" for n in names])
    for n in names:
        assert (repo / n / "1" / "model.onnx").read_bytes() == (toy.folder / f"{n}.onnx").read_bytes()
        assert (repo / f"{n}_python" / "1" / "model.onnx").read_bytes() == (toy.folder / f"{n}.onnx").read_bytes()
        assert (repo / f"{n}_python" / "1" / "model.py").read_text().startswith('"""``model.py`` of the Python-backend')
        assert not (repo / n / "1" / "model.py").exists()
        assert (repo / n / "labels.txt").read_text().splitlines() == LABELS
    umask = os.umask(0)
    os.umask(umask)
    assert repo.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by a server running as another user
    index = json.loads((repo / "inclust_triton.json").read_text())
    assert index["flavour"] == "both" and len(index["models"]) == 2 * len(names)


def test_every_config_parses_with_triton_model_config(repo, pb2):
    parsed = configs(repo)
    assert len(parsed) == 2 * len(GRAPHS)
    for name, cfg in parsed.items():
        assert cfg.name == name
        assert cfg.backend == ("python" if name.endswith("_python") else "onnxruntime")
        assert cfg.max_batch_size == 4096
        assert list(cfg.dynamic_batching.preferred_batch_size) == [256, 1024]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
        assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, pb2.ModelInstanceGroup.KIND_AUTO)]


def test_tensor_dims_follow_the_graph(repo, pb2):
    cfg = configs(repo)
    FP32, INT64 = pb2.TYPE_FP32, pb2.TYPE_INT64
    for flavour in ("", "_python"):
        impute = cfg["panel_to_rna" + flavour]
        ins = {t.name: t for t in impute.input}
        assert list(ins) == ["x", "covariate", "target_covariate"]
        assert (ins["x"].data_type, list(ins["x"].dims), ins["x"].HasField("reshape")) == (FP32, [len(PANEL)], False)
        for c in ("covariate", "target_covariate"):
            # clients send [B, 1]; the graph sees the [B] vector it was exported with
            assert (ins[c].data_type, list(ins[c].dims), ins[c].HasField("reshape"), list(ins[c].reshape.shape)) == (INT64, [1], True, [])
        outs = {t.name: (t.data_type, list(t.dims), t.label_filename) for t in impute.output}
        assert outs == {"y": (FP32, [len(RNA)], ""), "latent": (FP32, [LATENT], ""), "label_probs": (FP32, [len(LABELS)], "labels.txt")}
        embed = cfg["rna_embed" + flavour]
        assert [t.name for t in embed.input] == ["x", "covariate"] and list(embed.input[0].dims) == [len(RNA)]
        assert [t.name for t in embed.output] == ["latent", "label_probs"]


def test_parameters_name_features_categories_and_the_graph(repo, toy):
    manifest = json.loads(toy.manifest.read_text())
    entry = next(g for g in manifest["graphs"] if g["name"] == "panel_to_rna")
    for name in ("panel_to_rna", "panel_to_rna_python"):
        p = {k: v.string_value for k, v in configs(repo)[name].parameters.items()}
        assert json.loads(p["inclust.input_features"]) == PANEL
        assert json.loads(p["inclust.output_features"]) == RNA
        assert json.loads(p["inclust.covariate_categories"]) == COVARIATES
        assert json.loads(p["inclust.label_categories"]) == LABELS
        assert p["inclust.default_target_covariate"] == "a" and p["inclust.kind"] == "impute"
        assert json.loads(p["inclust.manifest_graph"]) == entry
        assert json.loads(p["inclust.manifest"])["covariate"]["categories"] == COVARIATES


@pytest.mark.parametrize("flavour, suffixes", [("python", ["_python"]), ("onnxruntime", [""])])
def test_single_flavour(toy, tmp_path, flavour, suffixes):
    out = write(toy.manifest, tmp_path / "r", flavour=flavour, max_batch_size=512, preferred_batch_sizes=(256, 1024), instance_count=2)
    parsed = configs(out)
    assert sorted(parsed) == sorted(g[0] + s for g in GRAPHS for s in suffixes)
    cfg = next(iter(parsed.values()))
    assert cfg.max_batch_size == 512 and list(cfg.dynamic_batching.preferred_batch_size) == [256]
    assert cfg.instance_group[0].count == 2


def test_unlabelled_model_has_no_labels_file(tmp_path):
    toy = make_toy_export(tmp_path / "exp", labels=False)
    out = write(toy.manifest, tmp_path / "r", flavour="python")
    assert not list(out.glob("*/labels.txt"))
    assert all(not t.label_filename for cfg in configs(out).values() for t in cfg.output)


def test_odd_names_are_escaped_in_the_config(tmp_path):
    toy = make_toy_export(tmp_path / "exp")
    raw = json.loads(toy.manifest.read_text())
    weird = ['g"0', "g\\1", "gène2", "g 3", "g\t4", "g5"]
    rename = dict(zip([f"g{i}" for i in range(6)], weird))  # the panel's genes, renamed everywhere they are named
    for entry in (*raw["modalities"], *raw["graphs"]):
        for key in ("features", "input_features", "output_features"):
            if key in entry:
                entry[key] = [rename.get(f, f) for f in entry[key]]
    toy.manifest.write_text(json.dumps(raw))
    out = write(toy.manifest, tmp_path / "r", flavour="python")
    p = configs(out)["panel_embed_python"].parameters
    assert json.loads(p["inclust.input_features"].string_value) == weird


def test_refuses_a_graph_changed_after_export_and_leaves_nothing(toy, tmp_path):
    exp = make_toy_export(tmp_path / "exp")
    with open(exp.folder / "rna_embed.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InclustError, match="does not match the sha256"):
        write(exp.manifest, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no temporary folder left behind


def test_existing_folder_needs_force_and_is_replaced_whole(toy, tmp_path):
    out = tmp_path / "r"
    write(toy.manifest, out, flavour="onnxruntime")
    with pytest.raises(InclustError, match="already exists"):
        write(toy.manifest, out)
    write(toy.manifest, out, force=True, flavour="python")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(g[0] + "_python" for g in GRAPHS)


@pytest.mark.parametrize("kwargs, message", [
    ({"flavour": "tensorrt"}, "unknown Triton flavour"),
    ({"max_batch_size": 0}, "at least 1"),
])
def test_bad_arguments(toy, tmp_path, kwargs, message):
    with pytest.raises(InclustError, match=message):
        write(toy.manifest, tmp_path / "r", **kwargs)


def test_bad_manifests(tmp_path):
    with pytest.raises(InclustError, match="no manifest"):
        write(tmp_path / "nope.json", tmp_path / "r")
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(InclustError, match="not valid JSON"):
        write(bad, tmp_path / "r")
    toy = make_toy_export(tmp_path / "exp")
    with pytest.raises(InclustError, match="does not exist"):
        write(toy.manifest, tmp_path / "missing" / "r")
    # read by the runtime's manifest reader: what it refuses, the writer refuses with the same words
    raw = json.loads(toy.manifest.read_text())
    bad.write_text(json.dumps({**raw, "graphs": []}))
    with pytest.raises(InclustError, match="graphs must not be empty|lists no graphs"):
        write(bad, tmp_path / "r")
    bad.write_text(json.dumps({"graphs": raw["graphs"]}))
    with pytest.raises(InclustError, match="format_version"):
        write(bad, tmp_path / "r")
    raw["graphs"][0]["file"] = "../outside.onnx"
    bad.write_text(json.dumps(raw))
    with pytest.raises(InclustError, match="outside"):
        write(bad, tmp_path / "r")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "manifest.json"]


def test_real_export_with_triton_folder(tmp_path):
    """``export_model(..., triton_dir=...)`` (the exporter calls this module) gives parseable configs."""
    pytest.importorskip("torch", reason="the real exporter needs torch")
    from export_toys import make_toy_checkpoint

    from inclust_plus.export import export_model

    ckpt = make_toy_checkpoint(tmp_path / "model.pt")
    manifest = export_model(ckpt, tmp_path / "export", torchscript=False, triton_dir=tmp_path / "triton")
    graphs = json.loads(Path(manifest).read_text())["graphs"]
    parsed = configs(tmp_path / "triton")
    served = [g["name"] + s for g in graphs for s in ("", "_csr")]
    assert sorted(parsed) == sorted(served + [n + "_python" for n in served])
    for g in graphs:
        csr = parsed[g["name"] + "_csr"]
        assert csr.max_batch_size == 0 and not csr.HasField("dynamic_batching")
        assert [(t.name, list(t.dims)) for t in csr.input][:3] == [("values", [-1]), ("indices", [-1]), ("rows", [-1])]
        assert [(t.name, list(t.dims)) for t in csr.output] == [(o["name"], [-1, o["shape"][1]]) for o in g["outputs"]]
        cfg = parsed[g["name"] + "_python"]
        assert [(t.name, list(t.dims)) for t in cfg.output] == [(o["name"], [o["shape"][1]]) for o in g["outputs"]]


def test_committed_demo_repository_is_what_the_writer_writes(tmp_path):
    """triton_models/merfish_imputation, written again from itself (scripts/rewrite_triton_models.py),
    is byte for byte the committed folder: regenerate it after changing the writer."""
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason=NO_PB2)
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("rewrite_triton_models", root / "scripts" / "rewrite_triton_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    committed = root / "triton_models" / "merfish_imputation"
    (tmp_path / "export").mkdir()
    manifest = script.rebuild_export(committed, tmp_path / "export")
    flavour = json.loads((committed / "inclust_triton.json").read_text())["flavour"]
    again = write(manifest, tmp_path / "again", flavour=flavour)
    files = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (committed / f).read_bytes() == (again / f).read_bytes(), f
