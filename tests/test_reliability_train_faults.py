"""Fault injection for inclust-train and inclust-map (issue 25), the real commands as subprocesses:

* killed with SIGKILL or SIGINT at seeded random moments (half anywhere in the run, half once its
  temporary output appeared), the outputs are afterwards exactly what they were, or (the kill came
  after the final move) the complete new result: never a partial file, never a new model.pt beside
  an old loss plot; after SIGINT the command exited 130 and removed its temporaries, and the next
  run succeeds and removes what a SIGKILL left;
* on a real small file system (tmpfs) filled to a seeded random number of free bytes, a run either
  writes the complete new outputs or exits 2 with the one-line full-disk error, the previous
  outputs untouched to the byte and no temporary left.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import OUTCOMES, assert_clean_interrupt, kill_at_a_seeded_moment, outcome, timed_run

from train_reliability_helpers import (command, fill, history_of, needs_tmpfs, one_line, run, section_data, small_disk,
                                       temporaries, toy_config)

ROUNDS, SEED = 3, 25
PAGE = 4096
OUTPUTS = {"train": ("model.pt", "model.loss.svg"), "map": ("mapped.pt",)}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The config and data of both commands, and the model.pt inclust-map reads."""
    folder = tmp_path_factory.mktemp("inputs")
    cfg = toy_config(folder)
    subprocess.run(command("train", cfg, "--out", folder / "model.pt", "--quiet"), check=True, capture_output=True)
    section_data(folder / "section2.h5ad")
    return folder


def argv(name: str, inputs: Path, out: Path, seed: int, force: bool) -> list:
    if name == "train":
        args = [inputs / "cfg.toml", "--out", out / "model.pt", "--seed", seed, "--quiet"]
    else:
        args = [inputs / "model.pt", "--data", inputs / "section2.h5ad", "--out", out / "mapped.pt", "--seed", seed, "--quiet", "--steps", 30]
    return args + (["--force"] if force else [])


def outputs(name: str, folder: Path) -> dict[str, bytes | None]:
    return {f: (folder / f).read_bytes() if (folder / f).exists() else None for f in OUTPUTS[name]}


def signature(name: str, folder: Path):
    """What identifies a run's result (a checkpoint's bytes hold its timing, so not those): the loss
    history, and the plot's bytes, which are drawn from that history."""
    if name == "train":
        return history_of(folder / "model.pt"), (folder / "model.loss.svg").read_bytes()
    from inclust_plus.training.checkpoint import load_checkpoint

    desc = load_checkpoint(folder / "mapped.pt")[1]
    return desc.covariate.categories, desc.mapping[-1].final_loss


def _run_to_end(name: str, inputs: Path, out: Path, seed: int) -> tuple[float, float]:
    """A whole run with --force that must succeed: (seconds until its temporary output appeared, seconds in all)."""
    return timed_run(command(name, *argv(name, inputs, out, seed, True)), lambda pid: bool(temporaries(out)), unseen=0.9)


@pytest.mark.parametrize("name", ["train", "map"])
def test_killed_runs_never_leave_a_partial_mixed_or_changed_output(inputs, tmp_path, name):
    rng = np.random.default_rng([SEED, len(name)])
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    out.mkdir(), fresh.mkdir()
    _run_to_end(name, inputs, fresh, 1)
    reference = signature(name, fresh)  # what the killed runs (seed 1) write when they finish
    _, total = _run_to_end(name, inputs, out, 0)  # the previous outputs: seed 0, every file different
    previous = signature(name, out)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    for r in range(ROUNDS):
        force = r % 2 == 0
        for sig in (signal.SIGKILL, signal.SIGINT):
            if not force:
                for f in OUTPUTS[name]:
                    (out / f).unlink(missing_ok=True)  # rounds without --force write new files
            before = outputs(name, out)
            # once writing: a window of 50 ms (writing and committing take milliseconds; exiting takes longer)
            rc, err, pid = kill_at_a_seeded_moment(command(name, *argv(name, inputs, out, 1, force)), sig, rng, total,
                                                  lambda pid: bool(temporaries(out)), window=0.05)
            after = outputs(name, out)
            outcomes[outcome(rc, sig)] += 1
            if rc == 0:
                assert signature(name, out) == reference
            elif sig == signal.SIGINT:
                assert_clean_interrupt(rc, err, before, after)
                assert not [t for t in temporaries(out) if f".inclust-{pid}-" in t]  # its temporaries were removed
            else:
                assert rc == -signal.SIGKILL, (rc, err)
                if after != before:  # every output new and whole: none partial, none left from before
                    assert all(v is not None for v in after.values()) and all(after[f] != before[f] for f in after)
                    assert signature(name, out) == reference
        _run_to_end(name, inputs, out, 0)  # the next run succeeds, and removes what a killed run left
        assert signature(name, out) == previous
        assert temporaries(out) == []
    print(f"inclust-{name} over {2 * ROUNDS} kills: {outcomes}")
    assert outcomes["interrupted"] + outcomes["killed"] >= 2, outcomes  # the seeded points do hit running runs (3-5 of 6 here)


@needs_tmpfs
@pytest.mark.parametrize("name", ["train", "map"])
def test_full_disk_at_a_random_byte_never_leaves_a_partial_or_replaced_output(inputs, tmp_path, name):
    """Free space drawn at random (seeded): less than the new outputs need (the write fails at a random
    byte of them: exit 2, the one line, the previous outputs to the byte) or enough (exit 0, the whole
    new outputs), in turn."""
    rng = np.random.default_rng([SEED, 2, len(name)])
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _run_to_end(name, inputs, fresh, 1)
    new = signature(name, fresh)
    need = sum((fresh / f).stat().st_size for f in OUTPUTS[name])
    outcomes = {"full": 0, "written": 0}
    with small_disk(tmp_path / "disk", 2 * 1024 * 1024) as disk:
        _run_to_end(name, inputs, disk, 0)  # the previous outputs
        before = outputs(name, disk)
        for r in range(ROUNDS + 2):
            (disk / "filler").unlink(missing_ok=True)
            for f, data in before.items():
                (disk / f).write_bytes(data)  # the previous outputs again, after a round that replaced them
            fits = r % 2 == 1  # odd rounds leave room for the new outputs, even ones fail at a random byte of them
            free = fill(disk, int(rng.integers(need + 2 * PAGE, 2 * need) if fits else rng.integers(0, need - PAGE)))
            proc = run(name, *argv(name, inputs, disk, 1, True))
            assert (proc.returncode == 0) == fits, (free, need, proc.stderr)
            if fits:
                outcomes["written"] += 1
                assert signature(name, disk) == new
                assert all(outputs(name, disk)[f] != before[f] for f in OUTPUTS[name])
            else:
                outcomes["full"] += 1
                one_line(proc, "No space left on device", "free some disk space")
                assert outputs(name, disk) == before, f"free {free} bytes: an output changed"
            assert temporaries(disk) == []
    print(f"inclust-{name} on a full disk: {outcomes}")
    assert outcomes == {"full": 3, "written": 2}
