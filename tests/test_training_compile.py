"""torch.compile of the training loss (training/fitting/compiled.py): chosen only where it was measured
to pay, the same losses as eager autograd, and a failed compile trains on eagerly."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from evaluation.synthetic import synthetic_task
from inclust_plus.errors import InclustError
from inclust_plus.training.config import with_settings
from inclust_plus.training.fitting.compiled import MIN_MEMBERS, MIN_STEPS, use_compile
from inclust_plus.training.model import InClust

SMALL = {"model": {"ensemble": 3, "latent_dim": 8, "encoder_hidden": [32], "decoder_hidden": [32]}, "loss": {"likelihood": "gaussian"},
         "training": {"epochs": 2, "batch_size": 64, "workers": 1, "fast_step": "off", "seed": 2}}


@pytest.mark.parametrize("case, expected", [
    ({}, True),  # the preset's shape: CPU, fp32, 3+ members stacked, a long run
    ({"members": MIN_MEMBERS - 1}, False),  # one or two networks: measured slower compiled
    ({"steps": MIN_STEPS - 1}, False),  # too short to repay the compile
    ({"device": "cuda"}, False),  # not measured on a GPU yet
    ({"precision": "bf16"}, False),
    ({"kl_warmup": 5}, False),  # a changing KL weight would recompile every epoch
    ({"fast_step": "on"}, False),
    ({"mode": "off"}, False),
    ({"mode": "on", "members": 1, "steps": 1, "device": "cuda"}, True),
])
def test_auto_compiles_only_what_was_measured_to_pay(case, expected):
    args = {"mode": "auto", "members": 6, "steps": 12_200, "device": "cpu", "precision": "fp32", "kl_warmup": 0, "fast_step": "auto", **case}
    assert use_compile(**args) is expected


def _fit(compile_mode: str):
    st = synthetic_task("imputation", n_cells=300, seed=0, overrides=SMALL)
    cfg = with_settings(st.config, {"compile": compile_mode})
    model, _, result = InClust.fit(cfg, st.objects, progress=False)
    return model, result


@pytest.fixture(scope="module")
def eager():
    return _fit("off")


def test_the_compiled_loss_trains_as_eager_autograd_does(eager):
    eager, r_eager = eager
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, r_compiled = _fit("on")
    assert not [w for w in caught if "torch.compile of the training loss failed" in str(w.message)]  # it did compile
    for term in ("total", "reconstruction", "kl"):
        np.testing.assert_allclose(r_compiled.history[term], r_eager.history[term], rtol=1e-4)
    for key, value in eager.module.state_dict().items():
        np.testing.assert_allclose(compiled.module.state_dict()[key].numpy(), value.numpy(), rtol=1e-3, atol=1e-4, err_msg=key)


def test_a_failed_compile_trains_on_eagerly_with_one_warning(eager, monkeypatch):
    def broken(fn, **_):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler")
        return run

    _, r_eager = eager
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="torch.compile of the training loss failed") as caught:
        fell_back, r_back = _fit("on")
    assert len([w for w in caught if "torch.compile" in str(w.message)]) == 1
    assert r_back.history["total"] == r_eager.history["total"]  # the eager step exactly


def test_compile_on_with_the_hand_written_step_on_is_refused():
    st = synthetic_task("imputation", n_cells=100, seed=0)
    with pytest.raises(InclustError, match='training.compile = "on" and training.fast_step = "on"'):
        with_settings(st.config, {"compile": "on", "fast_step": "on"})
