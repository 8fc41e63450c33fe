"""``inclust-train CONFIG.toml --out model.pt``: train inClust+ and write a self-describing checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import click

from inclust_plus.atomic import Output, atomic_outputs, check_output_path, check_writable
from inclust_plus.errors import report_errors

from inclust_plus.training.config import TrainingConfig, choices_of

EPILOG = """\b
Examples:
  inclust-train examples/merfish_imputation.toml --out model.pt
  inclust-train my_config.toml --out runs/model.pt --epochs 10 --seed 1
  inclust-train examples/merfish_imputation.toml --ensemble 1   # one network: a quick first look
  inclust-train examples/merfish_imputation.toml --device cuda  # train on the GPU

The config names the datasets (AnnData .h5ad or MuData .h5mu), what each measured, its batch/
technology covariate and optional cell-type column; see the README for one example per task.
Writes model.pt (weights + description, loadable with torch.load(weights_only=True)) and a
loss-curve plot next to it (model.loss.svg: open it in a browser): both or, on any error, neither.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=Path("model.pt"), show_default=True, help="Where to write the trained model.")
# Flags only parse; their values are checked with the config's rules (config.with_settings), so a bad
# --epochs gets the very error a bad `epochs =` in the config file gets.
@click.option("--epochs", type=int, default=None, help="Override training.epochs from the config.")
@click.option("--seed", type=int, default=None, help="Override training.seed (same seed, same weights).")
@click.option("--ensemble", type=int, default=None,
              help="Override model.ensemble: how many networks to train and merge (1 = one network, fastest).")
@click.option("--device", metavar=choices_of(TrainingConfig, "device"), default=None,
              help="Override training.device: where to train (auto = the GPU when torch sees one, else the CPU).")
@click.option("--precision", metavar=choices_of(TrainingConfig, "precision"), default=None,
              help="Override training.precision: bf16/fp16 run the network's matrix products in half precision.")
@click.option("--fast-step", metavar=choices_of(TrainingConfig, "fast_step"), default=None,
              help="Override training.fast_step: the hand-written training step (auto = for the settings it is verified "
                   "on, autograd otherwise; on = an error for other settings; off = always autograd).")
@click.option("--compile", "compile_", metavar=choices_of(TrainingConfig, "compile"), default=None,
              help="Override training.compile: torch.compile of the training loss (auto = where it was measured to pay: "
                   "3 or more ensemble members on a CPU, long runs; on = always; off = never).")
@click.option("--neighbours/--no-neighbours", default=None,
              help="Override readout.neighbours: blend the query's imputation with its nearest reference cells' measured values "
                   "(more accurate, slower inference; needs views.query).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors
def main(config: Path, out: Path, epochs: int | None, seed: int | None, ensemble: int | None, device: str | None,
         precision: str | None, fast_step: str | None, compile_: str | None, neighbours: bool | None, force: bool,
         quiet: bool) -> None:
    """Train an inClust+ model from a TOML CONFIG and save it to --out."""
    from inclust_plus.training.config import load_config, with_settings

    flags = {"epochs": epochs, "seed": seed, "ensemble": ensemble, "device": device, "precision": precision, "fast_step": fast_step,
             "compile": compile_, "neighbours": neighbours}
    cfg = with_settings(load_config(config), {k: v for k, v in flags.items() if v is not None})  # before anything is written
    plot = out.with_suffix(".loss.svg")
    inputs = (config, *(d.path for d in cfg.datasets))  # an output must never replace an input of the run
    check_output_path(out, force, inputs=inputs)
    check_output_path(plot, force, inputs=inputs)
    check_writable(out)  # a read-only or locked folder: said now, not after the training

    from inclust_plus.training.assembly.background import Background

    reading = Background(_read_data, cfg)  # the files are read in a child while torch is imported
    try:
        from inclust_plus.training.fitting.device import resolve_device
        from inclust_plus.training.model import InClust  # torch: imported once the cheap checks passed
        from inclust_plus.training.checkpoint import write_checkpoint
        from inclust_plus.training.fitting.loss_plot import loss_curves

        resolve_device(cfg.training.device)  # a GPU asked for and missing: said before the data's errors
        data = reading.result()
    finally:
        reading.cancel()
    started = time.perf_counter()
    model, data, result = InClust.fit(cfg, progress=not quiet, data=data)
    wall = time.perf_counter() - started
    # Both outputs are written to temporaries first and then moved into place together: a failure
    # (a full disk) or Ctrl-C while writing either leaves the previous model.pt and plot as they were.
    with atomic_outputs(Output(out, force=force, suffix=".pt"), Output(plot, force=force, suffix=".svg")) as (model_tmp, plot_tmp):
        write_checkpoint(model_tmp, model.module, model.description, name=out, neighbours=model.neighbours)
        loss_curves(result.history, plot_tmp, title=f"{cfg.name} ({data.label_mode})")
    combos = ", ".join(c.name for c in model.description.combinations)
    k = cfg.model.ensemble
    networks = f"an ensemble of {k} networks, " if k > 1 else ""
    click.echo(
        f"trained {cfg.name}: {networks}{len(data.row_cell):,} rows from {len(data.dataset_names)} dataset(s), "
        f"{data.n_features} features, {result.epochs_run} epochs{' each' if k > 1 else ''} in {wall:.1f} s "
        f"({result.rows_per_second:,.0f} rows/s{' over all networks' if k > 1 else ''}, {resolve_device(cfg.training.device).type}); final loss {result.history['total'][-1]:.4f}"
    )
    click.echo(f"wrote {out} and {plot}; combinations: {combos}")


def _read_data(cfg):
    """The training data of ``cfg``. Its modules (numpy, anndata, ...) are imported only here, in the
    process that reads: before the fork they would delay both processes."""
    from inclust_plus.training.assembly.data import read_training_data

    return read_training_data(cfg)


if __name__ == "__main__":  # pragma: no cover - python -m inclust_plus.training.cli: the console script itself
    from inclust_plus.launch import inclust_train

    inclust_train()
