"""``model.pt``: weights plus a JSON description, loadable with ``torch.load(weights_only=True)``.

The file holds only tensors and plain strings/ints, so loading it never executes pickled code.
The description (:class:`~inclust_plus.contract.description.ModelDescription`; docs/ARCHITECTURE.md,
"Checkpoint") is everything the exporter needs to rebuild the module and to name features,
covariates, labels and modality combinations; it is written and read by the contract's one writer
and one reader (:mod:`inclust_plus.contract.description_io`), so a broken one is a one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from inclust_plus import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, __version__
from inclust_plus.atomic import atomic_path
from inclust_plus.contract.description import ModelDescription
from inclust_plus.contract.description_io import RETRAIN, from_json, to_json
from inclust_plus.errors import InclustError

from inclust_plus.training.network.module import InClustModule, ModuleConfig
from inclust_plus.training.neighbours import NeighbourTable
from inclust_plus.training.readout import table_arrays, table_from


def save_checkpoint(path: str | os.PathLike, module: InClustModule, description: ModelDescription | dict, force: bool = True,
                    neighbours=None) -> Path:
    """Write ``module`` and ``description`` (and the read-out's ``neighbours`` table) atomically to ``path``
    (an existing file only with ``force``)."""
    with atomic_path(path, ".pt", force=force) as tmp:  # a file system error names ``path``
        write_checkpoint(tmp, module, description, name=path, neighbours=neighbours)
    return Path(path)


class _Sink:
    """The file torch.save writes to, keeping the OSError of a failed write: torch's zip writer, told
    of it, raises its own position check ("unexpected pos") on top, and the disk's errno (a full
    disk: ENOSPC) would be lost behind a traceback."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data):
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self):
        return self.fh.flush()


def write_checkpoint(path: str | os.PathLike, module: InClustModule, description: ModelDescription | dict,
                     name: str | os.PathLike | None = None, neighbours=None) -> None:
    """Write the checkpoint to ``path`` as it is (callers pass a temporary: :func:`save_checkpoint`,
    or ``inclust-train``, which commits it together with its loss plot). A failed write is the
    file system's OSError naming ``path`` (one line at the command's top), never torch's traceback.

    ``module`` decides the description's ``module`` entry; a description that contradicts the
    weights (or a JSON object that is not a valid one) is refused before anything is written; the
    error names ``name`` (the output the temporary ``path`` stands for). ``neighbours`` (a
    NeighbourTable, with the description's ``readout`` record) is stored as float32 tensors under
    ``neighbours``: arrays, not pickled objects, so ``weights_only=True`` still loads the file."""
    raw = to_json(description) if isinstance(description, ModelDescription) else dict(description)
    desc = from_json({**raw, "module": module.config.to_dict(), "package_version": __version__}, f"cannot write {name or path}")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "description_json": json.dumps(to_json(desc), sort_keys=True),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
    }
    if (desc.readout is None) != (neighbours is None):
        raise InclustError(f"cannot write {name or path}: the description's readout record and the neighbour table come together",
                           "pass both (InClust.save does) or neither")
    if neighbours is not None:
        arrays = table_arrays(table_from(desc.readout, table_arrays(neighbours), desc, f"cannot write {name or path}"))  # checked as read
        payload["neighbours"] = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    try:
        with open(path, "wb") as fh:
            sink = _Sink(fh)
            try:
                torch.save(payload, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None
    except OSError as err:  # a write error names no file: name it
        raise OSError(err.errno, err.strerror, str(path)) from None


def load_checkpoint(path: str | os.PathLike) -> tuple[InClustModule, ModelDescription]:
    """Load a checkpoint written by :func:`save_checkpoint`; clear errors for anything else."""
    module, desc, _ = read_checkpoint(path)
    return module, desc


def read_checkpoint(path: str | os.PathLike) -> tuple[InClustModule, ModelDescription, NeighbourTable | None]:
    """:func:`load_checkpoint` plus the neighbour read-out's table (None when the model has none)."""
    p = Path(path)
    if not p.is_file():
        raise InclustError(f"checkpoint {p} does not exist", "pass the model.pt written by inclust-train")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, IndexError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
        raise InclustError(
            f"{p} is not a readable inclust-plus checkpoint (truncated or not a torch file: {type(err).__name__})",
            "re-run inclust-train or copy model.pt again",
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InclustError(f"{p} is a torch file but not an inclust-plus checkpoint", "pass the model.pt written by inclust-train")
    if payload.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise InclustError(
            f"{p} has checkpoint format {payload.get('format_version')}, newer than this package understands",
            "upgrade inclust-plus",
        )
    try:
        raw = json.loads(payload["description_json"])
    except (KeyError, TypeError, ValueError):
        raise InclustError(f"checkpoint {p} has no readable description", RETRAIN) from None
    desc = from_json(raw, f"checkpoint {p}")
    try:
        config = ModuleConfig(**desc.module)
    except TypeError as err:  # a key this package does not know: written by a newer one
        raise InclustError(f"checkpoint {p} describes its network with keys this package does not know ({err})", "upgrade inclust-plus") from None
    desc = dataclasses.replace(desc, module=config.to_dict())  # keys added since it was written, at their defaults
    module = InClustModule(config)
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise InclustError(f"{p} has weights that do not match its description ({err})".splitlines()[0], "re-run inclust-train") from None
    module.eval()
    return module, desc, table_from(desc.readout, payload.get("neighbours"), desc, f"checkpoint {p}")
