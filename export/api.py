"""``export_model``: checkpoint -> folder of ONNX graphs, TorchScript modules and ``manifest.json``.

All checks on the user's input (paths, checkpoint, combination names) run before any file is
written; the folder (and a --triton one) through :func:`inclust_plus.atomic.atomic_outputs`, so a
failure at any point (including a failed parity check) leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import onnx

from inclust_plus import interrupt
from inclust_plus.atomic import Output, atomic_outputs, check_not_inside, check_output_path, refuse_foreign_entries
from inclust_plus.contract import GraphEntry
from inclust_plus.contract.combinations import Combination, select_combinations
from inclust_plus.contract.description import ModelDescription
from inclust_plus.contract.manifest_builder import build_manifest, graph_entry, variant_entry, write_manifest
from inclust_plus.contract.plan_builder import IDENTITY, build_plan
from inclust_plus.errors import InclustError
from inclust_plus.hashing import file_sha256

from . import onnx_graph
from . import torchscript as ts_export
from .folding import fold
from .validate import check_finite_weights, check_parity, check_variant_parity

def default_out_dir(checkpoint: str | os.PathLike) -> Path:
    """``<model stem>_export`` next to the checkpoint."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}_export")


def _load(ckpt: Path):
    """``read_checkpoint`` (weights, description, neighbour table or None) plus the failures torch.load
    reports with exceptions it does not catch.

    (``torch.load(weights_only=True)`` on a text file raises IndexError, for instance.)
    """
    from inclust_plus.training.checkpoint import read_checkpoint

    unreadable = InclustError(
        f"{ckpt} is not a readable inclust-plus checkpoint (not a torch zip file)",
        "pass the model.pt written by inclust-train",
    )
    if ckpt.is_file() and not zipfile.is_zipfile(ckpt):
        raise unreadable
    try:
        return read_checkpoint(ckpt)
    except (IndexError, KeyError, TypeError, AttributeError, UnicodeDecodeError, json.JSONDecodeError):
        raise unreadable from None


def _variants(combo: Combination, csr: bool, fp16: bool) -> list[tuple[str, str, str]]:
    """(input_format, precision, file) of the flavours written next to the dense float32 graph."""
    out = [("csr", "fp32", f"{combo.name}.csr.onnx")] if csr else []
    if fp16:
        out.append(("dense", "fp16", f"{combo.name}.fp16.onnx"))
        if csr:
            out.append(("csr", "fp16", f"{combo.name}.csr.fp16.onnx"))
    return out


def _export_one(module, desc: ModelDescription, combo: Combination, folder: Path, want_torchscript: bool, fold_preprocessing: bool,
                csr: bool = True, fp16: bool = False, want_torch_export: bool = False, neighbours=None) -> tuple[GraphEntry, dict]:
    """Write one graph (its TorchScript / torch.export twins and its CSR / float16 flavours), check parity, return its manifest entry and diffs.

    ``neighbours`` (the checkpoint's NeighbourTable, for the read-out's graph): the graph, its CSR flavour, its
    TorchScript twin and its torch.export program carry the lookup (export/neighbours_graph.py,
    export/neighbours_torchscript.py); float16 flavours are not written for it (a half-precision latent would pick
    other neighbours where two are nearly as close), so a runner cannot pick one by accident."""
    full_plan = build_plan(desc, combo.inputs)  # written into the manifest either way
    plan = full_plan if fold_preprocessing else IDENTITY
    weights = fold(module, combo, plan)

    def graph(input_format: str = "dense", precision: str = "fp32") -> onnx.ModelProto:
        proto = onnx_graph.build_model(weights, combo, plan, desc.name, input_format, precision, lookup_input=neighbours is not None)
        if neighbours is None:
            return proto
        from .neighbours_graph import append_neighbours

        return append_neighbours(proto, neighbours, list(combo.outputs))

    if neighbours is not None:
        fp16 = False
    proto = graph()
    data = onnx_graph.serialize(proto)
    onnx_file = f"{combo.name}.onnx"
    (folder / onnx_file).write_bytes(data)
    ts_file, loaded = None, None
    if want_torchscript:
        ts_file = f"{combo.name}.ts"
        if neighbours is None:
            scripted = ts_export.script(weights, plan, combo.spec.decodes)
        else:
            from .neighbours_torchscript import script as script_with_neighbours

            scripted = script_with_neighbours(weights, plan, neighbours, list(combo.outputs))
        ts_export.save(scripted, folder / ts_file)
        loaded = ts_export.load(folder / ts_file)
    diffs = check_parity(module, combo, plan if fold_preprocessing else None, data, loaded, neighbours=neighbours)
    variants = []
    for input_format, precision, file in _variants(combo, csr, fp16):
        vdata = onnx_graph.serialize(graph(input_format, precision))
        (folder / file).write_bytes(vdata)
        vdiffs = check_variant_parity(module, combo, plan if fold_preprocessing else None, vdata, input_format, precision,
                                      dense_bytes=data if precision == "fp32" else None, neighbours=neighbours)
        diffs[f"{input_format}/{precision}"] = vdiffs["onnxruntime"]
        variants.append(variant_entry(combo, input_format, precision, file, hashlib.sha256(vdata).hexdigest(), weights.latent_dim, weights.n_labels))
    pt2 = None
    if want_torch_export:  # manifests without the option keep exactly their old fields
        from . import torch_export

        pt2 = folder / f"{combo.name}.pt2"
        torch_export.save(torch_export.export_program(weights, plan, combo, module.config.n_covariates, neighbours), pt2)
        diffs["torch.export"] = torch_export.check_parity(module, combo, plan if fold_preprocessing else None, pt2, neighbours=neighbours)
    entry = graph_entry(
        combo,
        file=onnx_file,
        sha256=hashlib.sha256(data).hexdigest(),
        opset=onnx_graph.OPSET,
        torchscript=ts_file,
        torchscript_sha256=hashlib.sha256((folder / ts_file).read_bytes()).hexdigest() if ts_file else None,
        folded_preprocessing=fold_preprocessing,
        latent_dim=weights.latent_dim,
        n_labels=weights.n_labels,
        plan=full_plan,
        variants=variants,
        torch_export=pt2.name if pt2 else None,
        torch_export_sha256=file_sha256(pt2) if pt2 else None,
    )
    return entry, diffs


def written_by_export(folder: Path) -> None:
    """Refuse to replace (``--force``) a folder holding anything but a previous export's files.

    The files an export writes are the ones its manifest lists (each graph's file, its CSR/fp16
    flavours, TorchScript and torch.export twins); anything else (a model.pt, a user's notes) would be
    deleted with the old folder, so it is an error instead.
    """
    owned: set[str] | None = {"manifest.json"}
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        for g in manifest.get("graphs") or []:
            owned.update(str(g[k]) for k in ("file", "torchscript", "torch_export") if g.get(k))
            owned.update(str(v["file"]) for v in g.get("variants") or [] if v.get("file"))
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        owned = None
    refuse_foreign_entries(folder, owned, "output folder", "export", "--out")


def _triton_writer():
    """The Triton repository writer and its check of a folder it may replace, imported only when asked for (it is optional)."""
    try:
        from inclust_plus.triton.repository import write_triton_repository, written_by_triton_export
    except ImportError as err:
        raise InclustError(f"--triton is unavailable in this install ({err})", "export without --triton") from None
    from inclust_plus.triton.model_config import require_protobuf

    require_protobuf()  # no tritonclient[grpc]: said before anything is exported
    return write_triton_repository, written_by_triton_export


def export_model(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    combinations: list[str] | tuple[str, ...] | None = None,
    torchscript: bool = True,
    fold_preprocessing: bool = False,
    force: bool = False,
    triton_dir: str | os.PathLike | None = None,
    report: dict | None = None,
    csr: bool = True,
    fp16: bool = False,
    torch_export: bool = False,
    neighbours: bool = True,
) -> Path:
    """Export ``checkpoint``; return the path of the written ``manifest.json``.

    ``neighbours=False`` exports the decoder alone from a model that carries the neighbour read-out
    (training/readout.py): every graph then has all its twins and flavours and the decoder's
    throughput, at the decoder's accuracy.

    ``csr``: also write each combination's CSR-fed flavour; ``fp16``: also float16-weight graphs.

    ``report``, when given, receives the measured parity (max |diff|) per graph and runtime.
    ``torch_export`` also writes a ``torch.export`` ExportedProgram (``<name>.pt2``) per graph.
    """
    ckpt = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else default_out_dir(ckpt)
    check_output_path(out, force, inputs=(ckpt,))
    check_not_inside(out, (ckpt,), "--out")
    if triton_dir is not None:
        t, o = Path(triton_dir).resolve(), out.resolve()
        if t == o or t.is_relative_to(o) or o.is_relative_to(t):
            raise InclustError("--triton and --out folders overlap", "choose two separate folders")
        check_output_path(triton_dir, force, inputs=(ckpt,))
        check_not_inside(triton_dir, (ckpt,), "--triton")
    model_sha = file_sha256(ckpt) if ckpt.is_file() else ""
    module, desc, table = _load(ckpt)  # the description's reader checked it against the weights' sizes
    check_finite_weights(module)
    combos = select_combinations(desc, combinations)
    if not neighbours:
        table = None

    write_triton, triton_replaceable = _triton_writer() if triton_dir is not None else (None, None)
    outputs = [Output(out, folder=True, force=force, replaceable=written_by_export)]
    if triton_dir is not None:  # both folders appear together or not at all, both checked before any work
        outputs.append(Output(Path(triton_dir), folder=True, force=force, replaceable=triton_replaceable))

    with atomic_outputs(*outputs) as tmps:
        tmp = tmps[0]
        graphs = []
        for combo in combos:
            interrupt.check()  # Ctrl-C/SIGTERM between graphs: the temporary folder is removed
            readout = table if table is not None and combo.name == desc.readout.combination else None
            entry, diffs = _export_one(module, desc, combo, tmp, torchscript, fold_preprocessing, csr, fp16, torch_export, readout)
            graphs.append(entry)
            if report is not None:
                report[combo.name] = diffs
        write_manifest(build_manifest(desc, model_sha, graphs), tmp / "manifest.json")
        if write_triton is not None:
            write_triton(tmp / "manifest.json", Path(triton_dir), force=force, into=tmps[1])
    manifest = out / "manifest.json"
    return manifest
