"""Shared checks of the reliability tests (issue 12): one error line, exit code, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from runtime_fixtures import COVARIATES, RNA, make_cells, write_h5ad

N = 40
COV = [COVARIATES[i % 3] for i in range(N)]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders): compare before and after."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = None
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = Path(p).read_bytes() if not os.path.islink(p) else b"link"
    return out


def one_error(command, argv: list, match: str | tuple = (), code: int = 2, unchanged: Path | None = None, warnings_ok: bool = False) -> str:
    """Invoke a click command; expect exit ``code``, one ``error: ...; ...`` line holding ``match``, no traceback,
    and (with ``unchanged``) not a byte changed, added or removed under that folder. ``warnings_ok``:
    warning lines logged before the error (e.g. about CSC input) are allowed."""
    before = snapshot(unchanged) if unchanged is not None else None
    result = CliRunner().invoke(command, [str(a) for a in argv])
    lines = [line for line in result.stderr.strip().splitlines() if line and not (warnings_ok and ": warning: " in line)]
    assert result.exit_code == code, (result.exit_code, result.output, result.exc_info)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], result.stderr
    assert "Traceback" not in result.output
    for m in (match,) if isinstance(match, str) else match:
        assert m in lines[0], lines[0]
    if before is not None:
        assert snapshot(unchanged) == before
    return lines[0]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".inclust-" in p.name or ".tmp" in p.name)


def good_input(path: Path, n: int = N) -> Path:
    write_h5ad(path, make_cells(n, RNA), RNA, [COVARIATES[i % 3] for i in range(n)])
    return path


def assert_clean_interrupt(rc: int, err: str, before, after) -> None:
    """A run stopped by SIGINT: exit 130, the one closing line, no traceback, its outputs as they were."""
    assert rc == 130, (rc, err)
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGINT; no output was written"), err
    assert "Traceback" not in err
    assert after == before, "an interrupted run changed an output"


def start_as_from_a_terminal(argv: list, **kwargs):
    """``subprocess.Popen`` with SIGINT at its default in the child, as a command typed at a terminal
    starts: a test run started in the background by a shell ignores SIGINT, and children inherit that,
    so a Ctrl-C sent before the launcher installs its handler would be lost and the run finish instead."""
    import signal
    import subprocess

    return subprocess.Popen(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)
