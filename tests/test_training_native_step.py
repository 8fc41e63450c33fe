"""The C++ training step (training/native_step.cpp) against the Python step it mirrors.

It runs the same ATen ops in the same order, so a run trains bit for bit what the Python step
(training/manual_step.py) trains: the same weights and the same loss curves, exactly, for every
case the Python step covers and whether its worker thread runs or not. The library is built once
per machine (scripts/setup.sh); a test that needs it builds it if it is missing.
"""

import logging
import subprocess
import sys
import types

import pytest
import torch

from inclust_plus.errors import InclustError
from inclust_plus.training import members, native_step, trainer
from inclust_plus.training.model import InClust
from evaluation.synthetic import synthetic_task

UNLABELLED = [{"name": "scrna", "modalities": ["rna"]}, {"name": "merfish", "modalities": ["rna"]}]
CASES = {
    "2 members, Gaussian and Bernoulli": {},
    "one network": {"model": {"ensemble": 1}},
    "tanh, l2 input normalization": {"model": {"activation": "tanh", "input_normalization": "l2"}},
    "cosine decay, KL warm-up, validation": {"training": {"lr_schedule": "cosine", "kl_warmup_epochs": 2, "validation_fraction": 0.2}},
    "unsupervised": {"datasets": UNLABELLED},
    "one encoder layer, no decoder layer": {"model": {"encoder_hidden": [24], "decoder_hidden": []}},
    "Bernoulli only": {"loss": {"likelihood": "bernoulli"}},
    "identity output, sigmoid hidden": {"model": {"activation": "sigmoid", "output_activation": "identity"}, "loss": {"likelihood": "gaussian"}},
}


def _fit(native: str, **sections):
    overrides = {"model": {"ensemble": 2}, "training": {"epochs": 3, "batch_size": 64, "workers": 1, "threads": 1, "native": native}}
    for key, value in sections.items():
        overrides[key] = {**overrides[key], **value} if isinstance(value, dict) and key in overrides else value
    st = synthetic_task("imputation", n_cells=300, seed=0, overrides=overrides)
    return InClust.fit(st.config, st.objects, progress=False)


@pytest.fixture
def cpp_runs(monkeypatch):
    """How many times the C++ step ran (so a test knows which step trained)."""
    calls = []
    run = native_step.NativeSteps.run
    monkeypatch.setattr(native_step.NativeSteps, "run", lambda self, *a: calls.append(1) or run(self, *a))
    return calls


def _same_training(a, b):
    (model_a, _, result_a), (model_b, _, result_b) = a, b
    assert result_a.history == result_b.history  # exactly, validation included
    for key, value in model_a.module.state_dict().items():
        assert torch.equal(model_b.module.state_dict()[key], value), key


# every case with the worker thread; two also on one thread (the thread only orders the same ops)
RUNS = [(case, True) for case in CASES] + [("2 members, Gaussian and Bernoulli", False), ("unsupervised", False)]


@pytest.mark.parametrize("case, offload", RUNS, ids=[f"{c}, {'worker thread' if o else 'one thread'}" for c, o in RUNS])
def test_the_cpp_step_trains_bit_for_bit_what_the_python_step_does(case, offload, monkeypatch, cpp_runs):
    monkeypatch.setattr(members, "offload_step", lambda *a: offload)
    python = _fit("off", **CASES[case])
    assert not cpp_runs
    cpp = _fit("on", **CASES[case])
    assert cpp_runs
    _same_training(python, cpp)


def test_runs_of_steps_split_anywhere_train_the_same(monkeypatch, cpp_runs):
    """A call runs up to MAX_STEPS_PER_CALL steps; the next batch, gathered during a call's last step, carries over."""
    monkeypatch.setattr(members, "offload_step", lambda *a: True)
    whole = _fit("on")
    calls = len(cpp_runs)
    monkeypatch.setattr(native_step, "MAX_STEPS_PER_CALL", 2)
    split = _fit("on")
    assert len(cpp_runs) - calls >= 3 * 3  # each of the 3 epochs' steps now spans several calls
    _same_training(whole, split)


def test_auto_uses_the_cpp_step_where_it_is_built(cpp_runs):
    native_step.load()
    _fit("auto")
    assert cpp_runs


@pytest.mark.parametrize("offload", [True, False], ids=["worker thread", "one thread"])
def test_an_error_inside_the_cpp_step_ends_training_with_that_error(offload, monkeypatch):
    from inclust_plus.training.batches import DeviceRows

    class BadCovariates(DeviceRows):  # covariates beyond the embedding's rows: the worker's index_select fails
        def __init__(self, *args):
            super().__init__(*args)
            self.cell_covariate = self.cell_covariate + 1000

    monkeypatch.setattr(members, "offload_step", lambda *a: offload)
    monkeypatch.setattr(trainer, "DeviceRows", BadCovariates)
    with pytest.raises((RuntimeError, IndexError), match="index"):
        _fit("on")
    monkeypatch.setattr(trainer, "DeviceRows", DeviceRows)
    _fit("on")  # nothing is left stuck: the next run trains


def test_on_needs_a_build_and_auto_falls_back_saying_why_once(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("INCLUST_NATIVE_CACHE", str(tmp_path))  # nothing built here
    monkeypatch.setattr(native_step.shutil, "which", lambda name: None)
    with pytest.raises(native_step.NativeUnavailable, match="not built yet.*python -m inclust_plus.training.native_step"):
        native_step.load(allow_build=False)
    with caplog.at_level(logging.WARNING, logger="inclust_plus.training"):
        assert native_step.available("auto") is None
        assert native_step.available("auto") is None
    warnings = [r.getMessage() for r in caplog.records if "Python step" in r.getMessage()]
    assert warnings == ["training with the Python step: the C++ step is not available (no C++ compiler (c++, g++ or clang++) on PATH)"]
    with pytest.raises(InclustError, match=r'training.native = "on" but the C\+\+ training step cannot run: no C\+\+ compiler'):
        native_step.available("on")
    assert native_step.available("off") is None
    assert not list(tmp_path.iterdir())  # no half-made build left


def test_on_with_a_sparse_table_or_an_accelerator_is_an_error():
    sparse = types.SimpleNamespace(device=torch.device("cpu"), sparse=True)
    with pytest.raises(InclustError, match="dense table only .*a sparse table"):
        native_step.native_steps("on", None, sparse, False, False, [], False)
    assert native_step.native_steps("auto", None, sparse, False, False, [], False) is None
    cuda = types.SimpleNamespace(device=torch.device("meta"), sparse=False)
    assert native_step.native_steps("auto", None, cuda, False, False, [], False) is None


def test_a_built_step_loads_without_the_extension_builder():
    """Loading is an import of the cached library (~10 ms), not torch's builder (setuptools & co.)."""
    native_step.load()
    code = ("import sys; from inclust_plus.training import native_step as n; m = n.load(allow_build=False); "
            "print(hasattr(m, 'Steps'), 'torch.utils.cpp_extension' in sys.modules, 'setuptools' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"]


def test_the_cache_folder_follows_the_source(monkeypatch, tmp_path):
    monkeypatch.setenv("INCLUST_NATIVE_CACHE", str(tmp_path))
    here = native_step.cache_folder()
    source = tmp_path / "native_step.cpp"
    source.write_text(native_step.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(native_step, "SOURCE", source)
    assert native_step.cache_folder() != here and native_step.cache_folder().parent == tmp_path
