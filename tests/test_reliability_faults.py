"""Fault injection (issue 12): a real ``inclust-run impute`` killed with SIGKILL or SIGINT at random
(seeded) moments, 24 times, never leaves a partial or corrupted output, and the next run succeeds.

Half the kills land at a uniform moment of the whole run (start-up and imports included), half
while the output is being written (after its temporary file appeared). After each kill the output
must be exactly what it was before, or (the kill came after the final rename) the complete new
result; after SIGINT the command must have exited 130 and removed its temporary file. A SIGKILL
may leave a temporary file (nothing can run after it): the next run to that output removes it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from reliability_helpers import assert_clean_interrupt, start_as_from_a_terminal
from runtime_fixtures import make_toy_workdir

N_CELLS, BATCH, ROUNDS, SEED = 20_000, 64, 12, 12
MIN_SIGINT_DELAY = 0.15  # before this the interpreter may not have reached the launcher's handler yet


def _command(folder: Path, out: Path, force: bool) -> list[str]:
    exe = Path(sys.executable).with_name("inclust-run")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-c", "from inclust_plus.launch import inclust_run; inclust_run()"]
    argv += ["impute", "--onnx", str(folder / "toy"), "--input", str(folder / "in.h5ad"), "--output", str(out),
             "--combination", "panel_to_rna", "--batch-size", str(BATCH), "--quiet"]
    return argv + (["--force"] if force else [])


def _temporaries(folder: Path, pid: int | None = None) -> list[str]:
    tag = ".inclust-" if pid is None else f".inclust-{pid}-"
    return sorted(p.name for p in folder.iterdir() if tag in p.name)


def _state(out: Path) -> bytes | None:
    return out.read_bytes() if out.exists() else None


def _complete(out: Path, reference: np.ndarray) -> bool:
    """The output is a whole, readable result equal to the reference run's."""
    a = ad.read_h5ad(out)
    return a.shape == reference.shape and np.allclose(np.asarray(a.layers["inclust_imputed"]), reference, atol=1e-6) and a.obsm["X_inclust"].shape == (N_CELLS, 3)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_toy_workdir(tmp_path_factory.mktemp("faults"), N_CELLS)


def _run_to_end(folder: Path, out: Path) -> tuple[float, float]:
    """A whole run with --force: (seconds until its temporary output appeared, seconds in all)."""
    start = time.perf_counter()
    proc = start_as_from_a_terminal(_command(folder, out, True), stderr=subprocess.PIPE, text=True)
    appeared = None
    while proc.poll() is None:
        if appeared is None and _temporaries(folder, proc.pid):
            appeared = time.perf_counter() - start
        time.sleep(0.002)
    total = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr.read()
    return appeared or total * 0.8, total


def _kill(folder: Path, out: Path, force: bool, sig: int, rng: np.random.Generator, startup: float, total: float) -> tuple[int, str, int]:
    proc = start_as_from_a_terminal(_command(folder, out, force), stderr=subprocess.PIPE, text=True)
    started = time.perf_counter()
    if rng.random() < 0.5:  # any moment of the run
        low = MIN_SIGINT_DELAY if sig == signal.SIGINT else 0.0
        time.sleep(rng.uniform(low, total))
    else:  # while the output is being written
        while proc.poll() is None and not _temporaries(folder, proc.pid) and time.perf_counter() - started < 30:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, max(0.01, total - startup)))
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, proc.pid


def test_killed_runs_never_leave_a_partial_or_changed_output(work):
    rng = np.random.default_rng(SEED)
    out = work / "out.h5ad"
    startup, total = _run_to_end(work, out)
    reference = np.asarray(ad.read_h5ad(out).layers["inclust_imputed"])
    outcomes = {"interrupted": 0, "killed": 0, "finished first": 0}
    for r in range(2 * ROUNDS):  # ROUNDS rounds, then more (at most as many again) until each signal hit 3 running runs:
        if r >= ROUNDS and outcomes["interrupted"] >= 3 and outcomes["killed"] >= 3:  # a fast machine finishes more runs first
            break
        force = r % 2 == 0
        for sig in (signal.SIGKILL, signal.SIGINT):
            if not force and out.exists():
                out.unlink()  # rounds without --force write a new file
            before = _state(out)
            rc, err, pid = _kill(work, out, force, sig, rng, startup, total)
            after = _state(out)
            if rc == 0:
                outcomes["finished first"] += 1
                assert _complete(out, reference)
            elif sig == signal.SIGINT:
                outcomes["interrupted"] += 1
                assert_clean_interrupt(rc, err, before, after)
                assert _temporaries(work, pid) == []  # its temporary file was removed
            else:
                outcomes["killed"] += 1
                assert rc == -signal.SIGKILL, (rc, err)
                assert after == before or _complete(out, reference), "a killed run left a partial output"
            if after is not None and after != before:
                assert _complete(out, reference)
        _run_to_end(work, out)  # the next run succeeds, and removes what a killed run left
        assert _complete(out, reference)
        assert _temporaries(work) == [], _temporaries(work)
    print(f"fault injection over {sum(outcomes.values())} kills: {outcomes}")
    assert sum(outcomes.values()) >= 2 * ROUNDS >= 20
    assert outcomes["interrupted"] >= 3 and outcomes["killed"] >= 3, outcomes  # the seeded points do hit running runs
