"""``inclust-map model.pt --data NEW.h5ad --out mapped.pt``: add a new batch to a trained model without retraining."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from inclust_plus.atomic import check_output_path, check_writable
from inclust_plus.errors import InclustError, report_errors

EPILOG = """\b
Examples:
  inclust-map model.pt --data section2.h5ad --out mapped.pt                 # one new batch, named section2
  inclust-map model.pt --data section2.h5ad --name slide7 --out mapped.pt   # ... named slide7
  inclust-map model.pt --data new_runs.h5mu --covariate-key batch --out mapped.pt   # one new batch per value
  inclust-export mapped.pt --out exported
  inclust-run impute --onnx exported --input section2.h5ad --output section2.imputed.h5ad --combination section2_to_rna --covariate section2

The new cells need no cell-type labels. Only the covariate embedding rows of the new batches are
learned (seconds); every other weight stays exactly as trained, so the reference is unchanged.
The written model holds the extended covariate table and exports like any other. New cells
measured on a panel the model has not seen get graphs named after the batch (section2_to_rna
above); on a trained panel they use that panel's graphs (inclust-run info exported lists them).
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The new cells: an AnnData (.h5ad) or MuData (.h5mu) with the model's feature names.")
@click.option("--name", default=None, help="Name of the new batch (all cells); default: the data file's name without extension.")
@click.option("--covariate-key", default=None, help="obs column holding each cell's batch (instead of --name).")
@click.option("--layer", default=None, help="Read the values from this layer instead of X.")
@click.option("--preprocessed", is_flag=True, help="Values are already normalised/log-transformed like the training data.")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Optimisation steps.")
@click.option("--learning-rate", type=float, default=0.05, show_default=True, help="Adam's step size for the new rows (lower it if the mapping diverges).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same result).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where to write the mapped model.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@report_errors
def main(model: Path, data: Path, name: str | None, covariate_key: str | None, layer: str | None, preprocessed: bool,
         steps: int, learning_rate: float, seed: int, out: Path, force: bool, quiet: bool) -> None:
    """Learn the new batches of --data into MODEL (a model.pt from inclust-train) and write --out."""
    from inclust_plus.hashing import file_sha256

    from inclust_plus.training.mapping import SAFE_RULE, check_batch_name

    if name is not None and covariate_key is not None:
        raise InclustError("--name and --covariate-key are exclusive", "pass one of them")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise InclustError(f"--learning-rate is {learning_rate}", "pass a positive number such as 0.05")
    if name is not None:
        check_batch_name(name)
    elif covariate_key is None:  # the batch is named after the data file
        check_batch_name(data.stem, f"the batch name taken from {data.name},", f"pass --name ({SAFE_RULE})")
        name = data.stem
    check_output_path(out, force, inputs=(model, data))
    check_writable(out)  # a read-only or locked folder: said now, before the model and the cells are read

    from inclust_plus.training.model import InClust
    from inclust_plus.training.assembly.loading import read_cells

    trained = InClust.load(model)
    cells = read_cells(data)
    started = time.perf_counter()
    mapped = trained.map_query(cells, name=name, covariate_key=covariate_key, layer=layer, preprocessed=preprocessed,
                               steps=steps, learning_rate=learning_rate, seed=seed, progress=not quiet,
                               source=f"{data.name} sha256:{file_sha256(data)}")
    mapped.save(out, force=force)  # without --force never replaces a file that appeared meanwhile
    info = mapped.description.mapping[-1]
    cats = ", ".join(f"{c} ({n:,} cells)" for c, n in info.cells.items())
    skipped = f"; {info.skipped_known_cells:,} cells of known batches left out" if info.skipped_known_cells else ""
    click.echo(f"mapped {cats} onto {trained.description.name} in {time.perf_counter() - started:.1f} s "
               f"(loss {info.initial_loss:.4f} -> {info.final_loss:.4f}, feature set {info.feature_set}){skipped}")
    click.echo(f"wrote {out}; covariate categories: {', '.join(mapped.description.covariate.categories)}")


if __name__ == "__main__":  # pragma: no cover
    main()
