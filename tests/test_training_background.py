"""The forked background call (training/assembly/background.py) and inclust-train's data read through it."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from inclust_plus.errors import InclustError
from inclust_plus.training.assembly.background import Background, fork_is_safe

from test_training_errors import _adata, _config

PARENT = os.getpid()
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the background call forks only on Linux")


def _where(value):
    return value, os.getpid()


@linux_only
def test_the_value_comes_from_the_child():
    call = Background(_where, {"a": np.arange(5)}, fork=True)
    assert call.forked
    value, pid = call.result()
    assert pid != PARENT and value["a"].tolist() == [0, 1, 2, 3, 4]


def _bad_input():
    raise InclustError("dataset 'ref' contains negative values", "pass counts")


@linux_only
def test_an_input_error_in_the_child_is_the_same_one_line_error():
    with pytest.raises(InclustError) as err:
        Background(_bad_input, fork=True).result()
    assert str(err.value) == "dataset 'ref' contains negative values; pass counts"


def _fails_in_the_child():
    if os.getpid() != PARENT:
        raise ZeroDivisionError("only there")
    return "computed here"


def _dies_in_the_child():
    if os.getpid() != PARENT:
        os.kill(os.getpid(), signal.SIGKILL)
    return "computed here"


@linux_only
@pytest.mark.parametrize("fn", [_fails_in_the_child, _dies_in_the_child])
def test_any_other_failure_runs_the_call_here(fn):
    """So that the real error, with its traceback, is the one shown (or the call succeeds here)."""
    assert Background(fn, fork=True).result() == "computed here"


@linux_only
def test_a_ctrl_c_that_ended_the_child_stops_the_run_instead_of_reading_again():
    from inclust_plus import interrupt

    with interrupt.stop_on_signals():
        call = Background(_dies_in_the_child, fork=True)
        interrupt.request("SIGINT")  # what Ctrl-C does to this process, while the child dies of it
        with pytest.raises(interrupt.Interrupted):
            call.result()


@linux_only
def test_cancel_stops_a_running_child():
    call = Background(time.sleep, 60, fork=True)
    pid = call._pid
    t0 = time.perf_counter()
    call.cancel()
    assert time.perf_counter() - t0 < 5 and not call.forked
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, 0)  # reaped: no zombie left


def test_no_fork_once_torch_is_loaded():
    import torch  # noqa: F401 - its thread pools do not survive a fork

    assert not fork_is_safe()
    call = Background(_where, 1)
    assert not call.forked and call.result() == (1, PARENT)


@linux_only
def test_the_forked_read_assembles_what_the_in_process_read_does(tmp_path):
    from inclust_plus.training.config import load_config
    from inclust_plus.training.assembly.data import read_training_data

    cfg = load_config(_config(tmp_path, _adata(), _adata(genes=("g0", "g1"), seed=1)))
    here = read_training_data(cfg)
    there = Background(read_training_data, cfg, fork=True).result()
    assert there.x.shape == (80, 4) and np.array_equal(there.x, here.x)
    for name in ("row_cell", "row_input", "row_output", "covariate", "labels", "dataset_of_cell"):
        assert np.array_equal(getattr(there, name), getattr(here, name)), name
    assert (there.features, there.label_categories, there.covariate_categories) == (here.features, here.label_categories, here.covariate_categories)


def _train(tmp_path, cfg):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "inclust_plus.training.cli", str(cfg), "--out", str(tmp_path / "model.pt"), "--quiet",
                           "--ensemble", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)


@linux_only
def test_a_fresh_inclust_train_process_reads_in_the_background_and_trains(tmp_path):
    res = _train(tmp_path, _config(tmp_path, _adata(), _adata(genes=("g0", "g1"), seed=1)))
    assert res.returncode == 0, res.stderr
    assert "80 rows from 2 dataset(s), 4 features" in res.stdout and (tmp_path / "model.loss.svg").exists()


@linux_only
def test_a_bad_file_read_in_the_background_is_one_line_and_exit_2(tmp_path):
    bad = _adata()
    bad.X = bad.X * -1.0
    res = _train(tmp_path, _config(tmp_path, bad, _adata(genes=("g0", "g1"), seed=1)))
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: dataset 'ref'") and "negative values" in lines[0]
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "model.loss.svg").exists()


def test_the_training_process_imports_no_pandas_scipy_anndata_or_matplotlib():
    """They cost ~1.5 s of every run; the reading child imports them, the training process does not."""
    code = ("import sys; import inclust_plus.training.cli, inclust_plus.training.model, inclust_plus.training.fitting.loss_plot, "
            "inclust_plus.training.assembly.background; print(sorted(m for m in ('pandas', 'scipy', 'anndata', 'matplotlib') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
