"""Check the layering contracts in .importlinter (import-linter) on the package as it is installed.

pyproject.toml maps training/, export/ and runtime/ into ``inclust_plus`` (``package-dir``), while
import-linter only finds a package's modules in its own folder. So this lays the ``*.py`` files out
in a temporary folder the way the install does and runs ``lint-imports`` there; it prints
import-linter's report and exits with its status (0: every contract kept).

    python scripts/lint_imports.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def stage(dest: Path) -> list[str]:
    """Copy every package's modules to ``dest/<package path>``; the package names, as installed."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dir.items():
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for module in (ROOT / folder).glob("*.py"):
            shutil.copy2(module, target / module.name)
    return sorted(package_dir)


def check(extra: dict[str, str] | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    """Run import-linter on the staged package. ``extra`` adds modules (path under the staged root ->
    source), which is how tests/test_layering.py shows that a forbidden import breaks a contract."""
    with tempfile.TemporaryDirectory(prefix="inclust_layers_") as tmp:
        stage(Path(tmp))
        for path, source in (extra or {}).items():
            Path(tmp, path).write_text(source)
        env = {**os.environ, "PYTHONPATH": tmp}  # the staged copy, not the editable install
        code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
        cmd = [sys.executable, "-c", code, str(ROOT / ".importlinter"), "--no-cache", "--no-logo"]
        return subprocess.run(cmd, cwd=tmp, env=env, capture_output=capture, text=True)


def main() -> int:
    return check().returncode


if __name__ == "__main__":
    sys.exit(main())
