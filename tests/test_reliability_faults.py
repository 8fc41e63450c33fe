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
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from reliability_helpers import (OUTCOMES, assert_clean_interrupt, kill_at_a_seeded_moment, kill_rounds, outcome, run_temporaries,
                                 timed_run)
from runtime_fixtures import make_toy_workdir

N_CELLS, BATCH, ROUNDS, SEED = 20_000, 64, 12, 12


def _command(folder: Path, out: Path, force: bool) -> list[str]:
    exe = Path(sys.executable).with_name("inclust-run")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-c", "from inclust_plus.launch import inclust_run; inclust_run()"]
    argv += ["impute", "--onnx", str(folder / "toy"), "--input", str(folder / "in.h5ad"), "--output", str(out),
             "--combination", "panel_to_rna", "--batch-size", str(BATCH), "--quiet"]
    return argv + (["--force"] if force else [])


def _state(out: Path) -> bytes | None:
    return out.read_bytes() if out.exists() else None


def _complete(out: Path, reference: np.ndarray) -> bool:
    """The output is a whole, readable result equal to the reference run's."""
    a = ad.read_h5ad(out)
    return a.shape == reference.shape and np.allclose(np.asarray(a.layers["inclust_imputed"]), reference, atol=1e-6) and a.obsm["X_inclust"].shape == (N_CELLS, 3)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_toy_workdir(tmp_path_factory.mktemp("faults"), N_CELLS)


def test_killed_runs_never_leave_a_partial_or_changed_output(work):
    rng = np.random.default_rng(SEED)
    out = work / "out.h5ad"
    writing = lambda pid: bool(run_temporaries(work, pid))  # noqa: E731
    _, total = timed_run(_command(work, out, True), writing)
    reference = np.asarray(ad.read_h5ad(out).layers["inclust_imputed"])
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for r in kill_rounds(outcomes, hits=3, least=ROUNDS, most=2 * ROUNDS):
        force = r % 2 == 0
        for sig in (signal.SIGKILL, signal.SIGINT):
            if not force and out.exists():
                out.unlink()  # rounds without --force write a new file
            before = _state(out)
            rc, err, pid = kill_at_a_seeded_moment(_command(work, out, force), sig, rng, total, writing)
            after = _state(out)
            outcomes[outcome(rc, sig)] += 1
            if rc == 0:
                assert _complete(out, reference)
            elif sig == signal.SIGINT:
                assert_clean_interrupt(rc, err, before, after)
                assert run_temporaries(work, pid) == []  # its temporary file was removed
            else:
                assert rc == -signal.SIGKILL, (rc, err)
                assert after == before or _complete(out, reference), "a killed run left a partial output"
            if after is not None and after != before:
                assert _complete(out, reference)
        timed_run(_command(work, out, True), writing)  # the next run succeeds, and removes what a killed run left
        assert _complete(out, reference)
        assert run_temporaries(work) == [], run_temporaries(work)
    print(f"fault injection over {sum(outcomes.values())} kills: {outcomes}")
    assert sum(outcomes.values()) >= 2 * ROUNDS >= 20
    assert outcomes["interrupted"] >= 3 and outcomes["killed"] >= 3, outcomes  # the seeded points do hit running runs
