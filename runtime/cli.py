"""``inclust-run``: impute, generate, embed or annotate cells of an h5ad/h5mu with an exported model.

Commands and what they write (all keep the input's obs names and obs columns):

=========  ==================  ===============================================================
command    graph               output
=========  ==================  ===============================================================
impute     decoding graph      var = a modality completed from a feature panel (merfish -> rna);
                               X = the measured values kept, layers["inclust_imputed"] = the
                               model's values (--imputed-into X swaps them), var["inclust_imputed"]
                               and var["modality"], uns["inclust"]["scale"] (--output-scale);
                               obsm["X_inclust"], obs["inclust_label"(+"_probability")]
generate   decoding graph      the same for another modality (rna -> protein), plus one
                               obsm["inclust_<modality>"] per output modality
embed      embed graph         obsm["X_inclust"] and the labels; X has no columns
annotate   embed graph         obs["inclust_label"] and its probability only
=========  ==================  ===============================================================

Triton (``--triton URL`` on every run command, and the ``serve`` command) comes from
:mod:`inclust_plus.triton.cli`, imported like any other module; it imports tritonclient only when a
Triton option is used. Nothing here may import torch: ``--torchscript`` loads
:mod:`.torchscript_backend` on demand.
"""

from __future__ import annotations

import logging

import click

from inclust_plus import __version__
from inclust_plus.errors import report_errors
from inclust_plus.results import IMPUTED_INTO, SCALES
from inclust_plus.triton.cli import RUN_OPTIONS as TRITON_OPTIONS
from inclust_plus.triton.cli import serve_command, triton_backend

from .backend import DEVICES, PRECISIONS, Backend
from .info import info_command
from .runner import DECODING, INPUT_FORMATS, RunOptions, default_backend, run

log = logging.getLogger("inclust_plus.runtime")


class _EchoHandler(logging.Handler):
    """Log lines to whatever stderr is current (click's test runner swaps it per call)."""

    def emit(self, record: logging.LogRecord) -> None:
        level = "warning: " if record.levelno >= logging.WARNING else ""
        click.echo(f"inclust-run: {level}{record.getMessage()}", err=True)


def _setup_logging(quiet: bool) -> None:
    if not any(isinstance(h, _EchoHandler) for h in log.handlers):
        log.addHandler(_EchoHandler())
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def choose_backend(extra: dict, options: RunOptions) -> Backend:
    """Triton when ``--triton URL`` was given (``extra``: the Triton options' values), else the local default."""
    backend = triton_backend(extra, options)
    return backend if backend is not None else default_backend(options)


HELP = {
    "impute": "Complete a modality from a measured feature panel (e.g. MERFISH genes -> all scRNA genes).",
    "generate": "Generate another modality from a measured one (e.g. RNA -> protein).",
    "embed": "Write the batch-corrected latent (obsm['X_inclust']) and predicted labels.",
    "annotate": "Write predicted labels (obs['inclust_label']) and their probabilities.",
}


def _common_options(decoding: bool):
    opts = [
        click.option("--onnx", "onnx", required=True, type=click.Path(), help="Export folder of inclust-export, or its manifest.json."),
        click.option("--input", "input_path", required=True, type=click.Path(), help="Input .h5ad (or .h5mu with one group per modality)."),
        click.option("--output", "output_path", required=True, type=click.Path(), help="Output .h5ad (written atomically)."),
        click.option("--combination", help="Graph name from the manifest (e.g. merfish_to_rna)."),
        click.option("--from", "source", multiple=True, help="Input modality (repeat or comma-separate for several)."),
    ]
    if decoding:
        opts.append(click.option("--to", "target", multiple=True, help="Output modality (repeat or comma-separate)."))
    opts += [
        click.option("--covariate-key", help="obs column holding each cell's covariate (e.g. dataset)."),
        click.option("--covariate", help="One covariate category for all cells."),
    ]
    if decoding:
        opts.append(click.option("--target-covariate", help="Decode as if measured in this covariate (default: the graph's default, else each cell's own)."))
    opts += [
        click.option("--batch-size", default=4096, show_default=True, type=int, help="Cells per inference call."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="auto: CUDA if onnxruntime-gpu sees a GPU, else CPU."),
        click.option("--input-format", type=click.Choice(INPUT_FORMATS), default="auto", show_default=True,
                     help="How cells reach the graph: csr (only the stored values: far fewer bytes to a GPU), dense (every value; "
                          "faster on CPU, measured), auto (csr on CUDA when the export has CSR graphs, else dense)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
                     help="fp32: exact float32 (GPU TF32 off). tf32 / fp16: faster on a GPU, slightly less accurate "
                          "(fp16 needs an export made with --fp16); both need a CUDA GPU."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Inference calls running at once (default: one per CPU core; 3 on a GPU). Memory stays within one budget."),
        click.option("--allow-missing", is_flag=True, help="Fill input features absent from the file with zeros (listed in uns['inclust'])."),
        click.option("--min-shared-fraction", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0), metavar="FRACTION",
                     help="With --allow-missing: refuse to run when fewer than this fraction of the graph's input features are in the file (0: at least one)."),
        click.option("--layer", help="Read this layer instead of X."),
        click.option("--obsm", help="Read this obsm entry instead of X (a data frame named by feature, or an array in the graph's feature order)."),
        click.option("--force", is_flag=True, help="Overwrite an existing output."),
        click.option("--torchscript", is_flag=True, help="Run the TorchScript export with torch (optional extra) instead of ONNX."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bar, warnings only."),
    ]

    def apply(func):
        for opt in reversed(opts):
            func = opt(func)
        return func

    return apply


# Options of impute/generate about what the output holds (inclust_plus.results); read from **extra.
OUTPUT_OPTIONS = [
    click.Option(["--output-scale"], type=click.Choice(SCALES), default="model", show_default=True,
                 help="Units of the model's values: model (what the network outputs), log1p (per-feature max undone) "
                      "or counts (also expm1 and the cell's library size), where the preprocessing can be inverted."),
    click.Option(["--imputed-into"], type=click.Choice(IMPUTED_INTO), default="layer", show_default=True,
                 help="layer: X keeps the measured values, the model's go to layers['inclust_imputed']; "
                      "X: the model's values in X, the measured ones in layers['inclust_measured']."),
]


def _make_command(name: str) -> click.Command:
    decoding = name in DECODING

    @click.command(name=name, help=HELP[name])
    @_common_options(decoding)
    @report_errors
    def command(onnx, input_path, output_path, combination, source, covariate_key, covariate, batch_size, device,
                input_format, precision, workers, allow_missing, min_shared_fraction, layer, obsm, force, torchscript, quiet,
                target=(), target_covariate=None, **extra):
        _setup_logging(quiet)
        options = RunOptions(
            command=name, onnx=onnx, input=input_path, output=output_path, combination=combination,
            source=tuple(source), target=tuple(target), covariate_key=covariate_key, covariate=covariate,
            target_covariate=target_covariate, batch_size=batch_size, device=device, allow_missing=allow_missing,
            min_shared_fraction=min_shared_fraction,
            layer=layer, obsm=obsm, force=force, torchscript=torchscript, quiet=quiet,
            input_format=input_format, precision=precision, workers=workers,
            output_scale=extra.pop("output_scale", "model"), imputed_into=extra.pop("imputed_into", "layer"),
        )
        backend = choose_backend(extra, options)  # Ctrl-C/SIGTERM: a stop flag (see report_errors)
        try:
            path = run(options, backend=backend)
        finally:
            backend.close()
        log.info("wrote %s", path)

    command.params.extend(TRITON_OPTIONS)
    if decoding:
        command.params.extend(OUTPUT_OPTIONS)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="inclust-run")
def cli():
    """Run an exported inClust+ model on h5ad/h5mu files with onnxruntime (no torch needed).

    Every command reads --input in chunks, checks features, values and covariates, and writes
    --output atomically: on any error or interruption nothing is written or overwritten.
    """


for _name in ("impute", "generate", "embed", "annotate"):
    cli.add_command(_make_command(_name))
cli.add_command(serve_command)
cli.add_command(info_command)


def main() -> None:  # console-script entry point
    cli(prog_name="inclust-run")
