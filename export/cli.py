"""``inclust-export``: the command-line face of :func:`inclust_plus.export.export_model`."""

from __future__ import annotations

from pathlib import Path

import click

from inclust_plus.errors import report_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to write (default: <model stem>_export next to MODEL). Written atomically.")
@click.option("--combination", "combinations", multiple=True, metavar="NAME",
              help="Export only this combination (repeatable). Default: every combination in the checkpoint, "
                   "including the embed graphs. An unknown name lists the valid ones.")
@click.option("--torchscript/--no-torchscript", default=True, show_default=True,
              help="Also write a TorchScript module (<name>.ts) per combination, for libtorch serving.")
@click.option("--torch-export", "torch_export", is_flag=True,
              help="Also write a torch.export ExportedProgram (<name>.pt2) per combination (torch.export.load), "
                   "the successor of TorchScript, checked against PyTorch like the other graphs.")
@click.option("--fold-preprocessing", is_flag=True,
              help="Graphs take raw values and apply the checkpoint's normalisation, log1p and scaling themselves.")
@click.option("--csr/--no-csr", default=True, show_default=True,
              help="Also write a CSR-fed graph per combination (<name>.csr.onnx): it takes only a batch's stored values "
                   "(12 bytes each instead of 4 bytes per feature), for GPU runs on sparse data (inclust-run --input-format).")
@click.option("--fp16", is_flag=True,
              help="Also write float16-weight graphs (<name>.fp16.onnx, float32 inputs and outputs) for inclust-run --precision fp16 on a GPU.")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository to this folder.")
@click.option("--neighbours/--no-neighbours", default=True, show_default=True,
              help="For a model trained with the neighbour read-out ([readout] neighbours): impute the genes the query lacks "
                   "from the decoder blended with the nearest reference cells (more accurate, larger and slower graph), "
                   "or from the decoder alone (--no-neighbours: every twin and flavour, full speed).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@report_errors
def main(model: Path, out_dir: Path | None, combinations: tuple[str, ...], torchscript: bool, torch_export: bool,
         fold_preprocessing: bool, csr: bool, fp16: bool, triton_dir: Path | None, neighbours: bool, force: bool) -> None:
    """Export MODEL (a model.pt written by inclust-train) to one mask-folded ONNX graph per modality
    combination, plus TorchScript twins and a manifest.json for the torch-free runtime.

    Every graph is run with onnxruntime (and TorchScript) on a random batch right after it is
    written and must equal the PyTorch model within 1e-5 (+ 1e-6 x |value|), or the export fails and writes nothing.
    """
    from .api import export_model

    report: dict = {}
    manifest = export_model(model, out_dir, combinations=list(combinations) or None, torchscript=torchscript,
                            fold_preprocessing=fold_preprocessing, force=force, triton_dir=triton_dir, report=report,
                            csr=csr, fp16=fp16, torch_export=torch_export, neighbours=neighbours)
    for name, diffs in report.items():
        parity = ", ".join(f"{rt} {d:.1e}" for rt, d in diffs.items())
        click.echo(f"{name}: max |diff| vs PyTorch: {parity}")
    click.echo(f"wrote {manifest}")
    if triton_dir is not None:
        click.echo(f"wrote Triton repository {triton_dir}")


if __name__ == "__main__":  # pragma: no cover
    main()
