"""The layering contracts (.importlinter) hold, and break when a forbidden import appears.

scripts/lint_imports.py runs import-linter on the package laid out as installed (training/,
export/ and runtime/ are mapped into inclust_plus by pyproject.toml's package-dir)."""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import lint_imports  # noqa: E402


def test_every_contract_is_kept():
    result = lint_imports.check(capture=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("path, source, contract", [
    ("inclust_plus/runtime/probe.py", "import torch\n", "The runtime, Triton and the core never import"),
    ("inclust_plus/contract/probe.py", "from inclust_plus.training import config\n", "The runtime, Triton and the core never import"),
    # a core module gains a lazy import of export
    ("inclust_plus/errors.py", (ROOT / "inclust_plus" / "errors.py").read_text() + "\n\ndef f():\n    import inclust_plus.export.api\n",
     "The runtime, Triton and the core never import"),
    ("inclust_plus/triton/probe.py", "from inclust_plus.runtime.runner import run\n", "Triton reaches into no runtime internals"),
    ("inclust_plus/training/probe.py", "def f():\n    from inclust_plus.export import onnx_graph\n", "Training never imports export"),
    ("inclust_plus/contract/probe.py", "from inclust_plus.runtime.manifest import select_graph\n", "The core imports none of the layers above"),
])
def test_a_forbidden_import_breaks_its_contract(path, source, contract):
    result = lint_imports.check({path: source}, capture=True)
    assert result.returncode == 1, result.stdout
    assert "0 broken" not in result.stdout
    broken = result.stdout[result.stdout.index("Broken contracts"):]
    assert contract in broken


def test_every_core_module_is_a_source_of_the_core_contracts():
    """A new module in inclust_plus/ is covered from the start (launch, the console scripts above
    every layer, is the one module that imports training and export)."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    torch_free = set(config["importlinter:contract:torch-free"]["source_modules"].split())
    bottom = set(config["importlinter:contract:core-bottom"]["source_modules"].split())
    core = {f"inclust_plus.{p.stem}" for p in (ROOT / "inclust_plus").glob("*.py") if p.stem not in ("__init__", "launch")}
    core |= {f"inclust_plus.{p.parent.name}" for p in (ROOT / "inclust_plus").glob("*/__init__.py")} - {"inclust_plus.triton"}
    assert "inclust_plus.contract" in core and "inclust_plus.errors" in core
    assert bottom == core, sorted(core ^ bottom)
    assert torch_free == core | {"inclust_plus.runtime", "inclust_plus.triton"}, sorted(torch_free ^ core)
