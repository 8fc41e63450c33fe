"""Rewrite the committed demo repository ``triton_models/merfish_imputation`` with the current writer.

The README's way to regenerate it is to train the preset and export again (minutes to hours). When
only the writer changed, this does the same from the repository itself: every model's config
carries the manifest (``inclust.manifest`` + one ``inclust.manifest_graph`` per graph) and its
``1/model.onnx`` is the exported graph byte for byte, so the export folder is rebuilt in a
temporary folder, its manifest checked against the ``manifest_sha256`` of ``inclust_triton.json``
(the rebuilt one must be the exported file exactly), and the repository written again with
:func:`inclust_plus.triton.repository.write_triton_repository` and the flavour it had.

    python scripts/rewrite_triton_models.py [triton_models/merfish_imputation]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from inclust_plus.errors import InclustError
from inclust_plus.hashing import file_sha256
from inclust_plus.triton.layout import CONFIG_FILE, INDEX_FILE
from inclust_plus.triton.model_config import read_model_config
from inclust_plus.triton.repository import write_triton_repository

DEFAULT = Path(__file__).resolve().parent.parent / "triton_models" / "merfish_imputation"


def rebuild_export(repository: Path, folder: Path) -> Path:
    """The export folder (manifest.json + graph files) the repository was written from, in ``folder``."""
    index = json.loads((repository / INDEX_FILE).read_text())
    top, graphs = None, []
    for model in index["models"]:
        if model["backend"] != index["models"][0]["backend"] or model.get("input_format", "dense") != "dense":
            continue  # one model per graph carries its whole entry (CSR variants included)
        config = read_model_config(repository / model["name"] / CONFIG_FILE)
        top = json.loads(config.parameters["inclust.manifest"].string_value)
        entry = json.loads(config.parameters["inclust.manifest_graph"].string_value)
        shutil.copyfile(repository / model["name"] / "1" / "model.onnx", folder / entry["file"])
        for variant in entry.get("variants") or []:
            csr = next(m for m in index["models"] if m["graph"] == model["graph"] and m.get("input_format") == "csr")
            shutil.copyfile(repository / csr["name"] / "1" / "model.onnx", folder / variant["file"])
        graphs.append(entry)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({**top, "graphs": graphs}, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    if file_sha256(manifest) != index["manifest_sha256"]:
        raise InclustError(f"the manifest rebuilt from {repository} differs from the exported one", "regenerate the repository by exporting again (triton_models/README.md)")
    return manifest


def main(repository: Path) -> None:
    flavour = json.loads((repository / INDEX_FILE).read_text())["flavour"]
    with tempfile.TemporaryDirectory(prefix="inclust-triton-rewrite-") as tmp:
        manifest = rebuild_export(repository, Path(tmp))
        write_triton_repository(manifest, repository, force=True, flavour=flavour)
    print(f"rewrote {repository} ({flavour})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT)
