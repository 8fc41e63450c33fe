"""The runtime (and the Triton package it uses) never imports torch, training or export: every module
imports with them blocked, and the base install (no tritonclient) imports them all."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import inclust_plus.contract as contract
import inclust_plus.runtime as runtime
import inclust_plus.triton as triton

RUNTIME_MODULES = sorted(f"inclust_plus.runtime.{m.name}" for m in pkgutil.iter_modules(runtime.__path__)) + sorted(
    f"inclust_plus.triton.{m.name}" for m in pkgutil.iter_modules(triton.__path__))
CONTRACT_MODULES = sorted(f"inclust_plus.contract.{m.name}" for m in pkgutil.iter_modules(contract.__path__))


def test_every_runtime_module_imports_without_torch():
    assert "inclust_plus.runtime.cli" in RUNTIME_MODULES and "inclust_plus.runtime.torchscript_backend" in RUNTIME_MODULES
    assert "inclust_plus.triton.repository" in RUNTIME_MODULES and "inclust_plus.triton.cli" in RUNTIME_MODULES
    code = textwrap.dedent(
        f"""
        import sys, importlib
        for blocked in ("torch", "inclust_plus.training", "inclust_plus.export", "mudata", "onnx", "tritonclient", "google.protobuf"):
            sys.modules[blocked] = None  # any import of these raises ImportError
        for name in {RUNTIME_MODULES!r}:
            importlib.import_module(name)
        from inclust_plus.runtime.cli import cli
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m] is not None)
        assert not loaded, loaded
        print("ok", len({RUNTIME_MODULES!r}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(RUNTIME_MODULES)}"


def test_torchscript_flag_without_torch_is_a_clear_error(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        from inclust_plus.errors import InclustError
        from inclust_plus.runtime.torchscript_backend import TorchScriptBackend
        try:
            TorchScriptBackend("cpu")
        except InclustError as err:
            print(err.one_line())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("--torchscript needs torch") and "pip install" in result.stdout


def test_the_contract_needs_only_numpy():
    """The contract is read by every layer: it imports no torch, onnx, onnxruntime, scipy, anndata or h5py."""
    assert "inclust_plus.contract.manifest_io" in CONTRACT_MODULES and "inclust_plus.contract.plan" in CONTRACT_MODULES
    code = textwrap.dedent(
        f"""
        import sys, importlib
        for blocked in ("torch", "onnx", "onnxruntime", "scipy", "anndata", "h5py", "pandas",
                        "inclust_plus.training", "inclust_plus.export", "inclust_plus.runtime"):
            sys.modules[blocked] = None
        for name in {CONTRACT_MODULES!r}:
            importlib.import_module(name)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
