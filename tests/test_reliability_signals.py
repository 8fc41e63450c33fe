"""Ctrl-C and SIGTERM (issue 12): a stop flag the loops check, exit 130, the temporary output removed,
an existing output intact, in all three commands; and why a raising handler was not enough."""

from __future__ import annotations

import os
import signal
import sys
import weakref

import pytest
from click.testing import CliRunner

from inclust_plus import interrupt
from inclust_plus.runtime import output as output_mod
from inclust_plus.runtime.cli import cli
from reliability_helpers import good_input, snapshot, temporaries
from runtime_fixtures import make_toy_export


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"))


def _inside_a_weakref_callback(fn) -> None:
    """Run ``fn`` the way the thread pool's and h5py's cleanups run: as a weakref callback."""

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda _: fn())  # noqa: F841 - kept alive until the callback ran
    del thing


def _signal_self(sig) -> None:
    os.kill(os.getpid(), sig)
    sum(range(10_000))  # bytecodes: the Python-level handler runs here, inside the callback


def test_a_raising_handler_is_lost_inside_a_weakref_callback(monkeypatch):
    """The cause of the bug: the exception a handler raises in a weakref callback is dropped."""
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_type))

    def raising(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raising)
    try:
        _inside_a_weakref_callback(lambda: _signal_self(signal.SIGTERM))
        went_on = True  # the run would have carried on and replaced the output
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert went_on and dropped == [KeyboardInterrupt]


def test_the_stop_flag_survives_a_weakref_callback(monkeypatch):
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_type))
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN where a shell started the tests in the background
    with interrupt.stop_on_signals():
        _inside_a_weakref_callback(lambda: _signal_self(signal.SIGTERM))
        assert interrupt.requested() and dropped == []
        with pytest.raises(interrupt.Interrupted, match="SIGTERM"):
            interrupt.check()
    assert not interrupt.requested()  # cleared with the handlers it installed
    assert signal.getsignal(signal.SIGINT) is before and before is not interrupt._handler


def test_a_second_request_stops_at_once():
    with interrupt.stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))


@pytest.mark.parametrize("where", ["chunk", "finish"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_runtime_signal_while_writing_keeps_the_existing_output(toy, tmp_path, monkeypatch, sig, where):
    """A signal while the h5ad is written (between chunks, or in the last step, writing uns):
    exit 130, the existing output byte for byte, no temporary file."""
    inp = good_input(tmp_path / "in.h5ad", n=600)
    out = tmp_path / "o.h5ad"
    out.write_bytes(b"the previous result")
    method = {"chunk": "write", "finish": "finish"}[where]
    original = getattr(output_mod.OutputWriter, method)
    calls = []

    def signalled(self, *args):
        calls.append(1)
        original(self, *args)
        if len(calls) == (2 if where == "chunk" else 1):
            _signal_self(sig)

    monkeypatch.setattr(output_mod.OutputWriter, method, signalled)
    argv = ["impute", "--onnx", toy.folder, "--input", inp, "--output", out, "--combination", "panel_to_rna", "--quiet", "--force",
            "--batch-size", "50"]
    monkeypatch.setattr("inclust_plus.runtime.runner.chunk_rows", lambda *a: 100)  # six chunks: several writes
    before = snapshot(tmp_path)
    result = CliRunner().invoke(cli, [str(a) for a in argv])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines() == [f"error: interrupted by {sig.name}; no output was written (an existing one is unchanged)"]
    assert snapshot(tmp_path) == before and temporaries(tmp_path) == []
    assert len(calls) == (2 if where == "chunk" else 1)  # stopped at the next chunk


def test_training_stops_between_steps(tmp_path, monkeypatch):
    from inclust_plus.training.fitting import trainer
    from inclust_plus.training.cli import main as train

    good_input(tmp_path / "ref.h5ad", n=200)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[[datasets]]\nname = "ref"\npath = "ref.h5ad"\n[training]\nepochs = 50\nbatch_size = 20\n')
    (tmp_path / "model.pt").write_bytes(b"the previous model")
    # the loop's unit of work: one hand-written step (training/fast_step/manual_step.py)
    owner, name = trainer.ManualStep, "__call__"
    step = getattr(owner, name)
    steps = []

    def step_then_sigterm(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            _signal_self(signal.SIGTERM)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, step_then_sigterm)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(train, [str(cfg), "--out", str(tmp_path / "model.pt"), "--force", "--quiet"])
    assert result.exit_code == 130, result.output
    assert "interrupted by SIGTERM" in result.stderr
    assert len(steps) == 3  # stopped at the next step, not after 50 epochs
    assert snapshot(tmp_path) == before and temporaries(tmp_path) == []


def test_export_stops_between_graphs(tmp_path, monkeypatch):
    from export_toys import make_toy_checkpoint
    from inclust_plus.export import api
    from inclust_plus.export.cli import main as export

    ckpt = make_toy_checkpoint(tmp_path / "model.pt", seed=2)
    one = api._export_one
    graphs = []

    def export_then_sigint(*args, **kwargs):
        graphs.append(1)
        entry = one(*args, **kwargs)
        _signal_self(signal.SIGINT)
        return entry

    monkeypatch.setattr(api, "_export_one", export_then_sigint)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(export, [str(ckpt), "--out", str(tmp_path / "e"), "--no-torchscript"])
    assert result.exit_code == 130, result.output
    assert "interrupted by SIGINT" in result.stderr and len(graphs) == 1
    assert snapshot(tmp_path) == before and temporaries(tmp_path) == []


@pytest.mark.parametrize("argv, words", [
    (["-m", "inclust_plus.launch", "run", "impute", "--batch-size", "abc"], ("'--batch-size': 'abc' is not a valid integer", "inclust-run impute --help")),
    (["-m", "inclust_plus.launch", "export", "MODEL", "--out", "FILE"], ("'--out'", "is a file", "--help")),
    (["-m", "inclust_plus.launch", "train", "--bogus"], ("No such option '--bogus'", "--help")),
])
def test_a_bad_flag_is_one_line_from_the_console_scripts(tmp_path, argv, words):
    """click's usage errors, through the console-script launcher: one line and exit 2, like every bad input."""
    import subprocess
    import sys

    (tmp_path / "FILE").write_text("x")
    (tmp_path / "MODEL").write_text("x")
    res = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "; " in lines[0], res.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_a_console_script_ends_without_teardown_but_with_all_its_output(tmp_path):
    """exit_now skips the interpreter's teardown (~1 s once torch is loaded) yet flushes what the
    command wrote: stdout to a pipe is block-buffered, so a missing flush loses the whole help text."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "inclust_plus.launch", "train", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("Usage: inclust-train") and "--precision" in res.stdout
    code = ("import atexit, sys; from inclust_plus import launch; atexit.register(lambda: print('teardown ran'));"
            "print('written', end=''); launch.exit_now(3)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (res.returncode, res.stdout) == (3, "written")
