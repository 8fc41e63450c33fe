"""Shared checks of the reliability tests (issue 12): one error line, exit code, nothing written."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

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
    return subprocess.Popen(argv, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


# --- killing real commands at seeded moments (the fault-injection tests of run, export, train and map) ---------
MIN_SIGINT_DELAY = 0.15  # before this the interpreter may not have reached the launcher's handler yet
OUTCOMES = ("interrupted", "killed", "finished first")


def timed_run(argv: list, writing: Callable[[int], bool], unseen: float = 0.8) -> tuple[float, float]:
    """One whole run that must succeed: (seconds until ``writing(pid)`` first held, or ``unseen`` x the run when it
    was never seen; seconds in all)."""
    start = time.perf_counter()
    proc = start_as_from_a_terminal([str(a) for a in argv], stderr=subprocess.PIPE, text=True)
    appeared = None
    while proc.poll() is None:
        if appeared is None and writing(proc.pid):
            appeared = time.perf_counter() - start
        time.sleep(0.002)
    total = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr.read()
    return appeared or total * unseen, total


def run_temporaries(folder: Path, pid: int | None = None) -> list[str]:
    """The temporary outputs a command left in ``folder`` (``.inclust-<pid>-...``): any command's, or process ``pid``'s."""
    tag = ".inclust-" if pid is None else f".inclust-{pid}-"
    return sorted(p.name for p in folder.iterdir() if tag in p.name)


def kill_at_a_seeded_moment(argv: list, sig: int, rng, total: float, writing: Callable[[int], bool],
                            window: float | None = None) -> tuple[int, str, int]:
    """Start the command and send ``sig`` at a seeded moment: half the time at a uniform moment of a run of
    ``total`` s (a SIGINT not before the launcher's handler can be in place), half once ``writing(pid)`` holds
    (its temporary output appeared), a uniform 0..``window`` s later (None: the rest of such a run).
    Returns (exit code, stderr, pid); a run that finished first exits 0."""
    proc = start_as_from_a_terminal([str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    began = time.perf_counter()
    if rng.random() < 0.5:  # any moment of the run
        time.sleep(rng.uniform(MIN_SIGINT_DELAY if sig == signal.SIGINT else 0.0, total))
    else:  # while the output is being written
        while proc.poll() is None and not writing(proc.pid) and time.perf_counter() - began < 60:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, max(0.01, total - (time.perf_counter() - began)) if window is None else window))
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, proc.pid


def outcome(rc: int, sig: int) -> str:
    """What a kill did: the run finished first (exit 0), was interrupted (SIGINT) or killed (SIGKILL)."""
    return "finished first" if rc == 0 else "interrupted" if sig == signal.SIGINT else "killed"


def kill_rounds(outcomes: dict[str, int], hits: int, least: int, most: int) -> Iterator[int]:
    """Round numbers: at least ``least``, then on until each signal has hit ``hits`` running runs, at most ``most``
    in all (a seeded moment can land after a fast run finished, and how often depends on the machine)."""
    for r in range(most):
        if r >= least and outcomes["interrupted"] >= hits and outcomes["killed"] >= hits:
            return
        yield r
