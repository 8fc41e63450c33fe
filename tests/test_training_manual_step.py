"""The hand-written training step (training/fast_step/manual_step.py) against autograd.

It runs exactly the settings of its allow-list (``COVERED``): the cases below are built from that
list, so every listed value is held equal to autograd (loss terms and every gradient, float
rounding); a setting outside it trains with autograd, and ``fast_step = "on"`` refuses it.
"""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from inclust_plus.errors import InclustError
from inclust_plus.training.fitting import trainer
from inclust_plus.training.fast_step.manual_step import COVERED, loss_and_grads, uncovered, use_fast_step
from inclust_plus.training.model import InClust
from inclust_plus.training.config import LossConfig
from inclust_plus.training.network.module import InClustModule, ModuleConfig
from evaluation.synthetic import synthetic_task
from inclust_plus.training.network.stacked import StackedNetworks


def _case(k, activation="relu", output="sigmoid", norm="none", bernoulli=False, unsupervised=False, enc=(20, 8), dec=(16,), seed=0,
          device="cpu", weights=None, correction="none"):
    torch.manual_seed(seed)
    cfg = ModuleConfig(n_features=12, n_covariates=3, n_labels=4, encoder_hidden=list(enc), latent_dim=5, decoder_hidden=list(dec),
                       activation=activation, output_activation=output, input_normalization=norm, input_correction=correction)
    members = [InClustModule(cfg) for _ in range(k)]
    gain, power = torch.rand(3, 12) + 0.5, torch.rand(3, 12) + 0.5  # fitted tables: one per model, the same in every member
    for m in members:
        with torch.no_grad():
            m.prior_means.normal_()  # apart, as after training (they start at zero)
            if correction != "none":
                m.input_gain.copy_(gain), m.input_power.copy_(power)
    net = StackedNetworks(members)
    n = 40
    x = torch.rand(k, n, 12)
    in_mask = (torch.rand(k, n, 12) > 0.3).float()
    out_mask = (torch.rand(k, n, 12) > 0.2).float()
    cov = torch.randint(0, 3, (k, n))
    label = torch.full((k, n), -1) if unsupervised else torch.randint(-1, 4, (k, n))
    noise = torch.randn(k, n, 5)
    if bernoulli == "mixed":
        bernoulli = torch.tensor([i % 2 == 1 for i in range(k)])
    w = weights or LossConfig(reconstruction=5.0, kl=1.3, categorical=0.7, label=50.0)
    assert uncovered(net.config, w, "fp32", device) is None  # every case is a setting of the allow-list
    net = net.to(device)
    if isinstance(bernoulli, torch.Tensor):
        bernoulli = bernoulli.to(device)
    tensors = [t.to(device) for t in (x, in_mask, out_mask, cov, label, noise)]
    return net, (*tensors, w, bernoulli, unsupervised)


def _autograd(net, args):
    for p in net.parameters():
        p.grad = None
    terms = net.loss(*args)
    terms[0].sum().backward()
    return terms.detach(), [p.grad.clone() for p in net.parameters()]


def _allow_listed_cases():
    """A case for every combination of the allow-list's values: activation x output activation x input
    normalization x likelihood (one for all members, or a mix; Bernoulli needs a sigmoid output) x
    labelled or not, on every listed device; then the network's shapes and term weights it takes any of."""
    cases = []
    for act, out, norm, corr, unsup in itertools.product(COVERED["model.activation"], COVERED["model.output_activation"],
                                                         COVERED["model.input_normalization"], COVERED["model.input_correction"], [False, True]):
        for bern in ([False, True, "mixed"] if out == "sigmoid" else [False]):
            cases.append(dict(k=2, activation=act, output=out, norm=norm, bernoulli=bern, unsupervised=unsup, correction=corr))
    cases += [dict(k=1), dict(k=3, bernoulli="mixed"), dict(k=2, enc=(), dec=(16,)), dict(k=1, enc=(20,), dec=()), dict(k=2, enc=(), dec=()),
              dict(k=2, weights=LossConfig(reconstruction=1000.0, kl=0.05, categorical=0.0, label=0.0)),
              dict(k=2, weights=LossConfig(reconstruction=1000.0, kl=1.0, categorical=0.7, label=50.0, unseen=16.0))]
    devices = [d for d in COVERED["training.device"] if d == "cpu" or (d == "cuda" and torch.cuda.is_available())]
    return [dict(c, device=d) for d in devices for c in cases]


CASES = _allow_listed_cases()
assert set(COVERED) == {"model.activation", "model.output_activation", "model.input_normalization", "model.input_correction",
                        "training.precision", "training.device", "loss.mixing"}, "a new allow-list key needs its values in _allow_listed_cases"
assert COVERED["training.precision"] == ("fp32",) and COVERED["loss.mixing"] == (0.0,)  # what every case uses


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_manual_step_equals_autograd(case):
    net, args = _case(**case)
    want_terms, want_grads = _autograd(net, args)
    for p in net.parameters():
        p.grad = None
    got_terms = loss_and_grads(net, *args)
    torch.testing.assert_close(got_terms, want_terms, rtol=1e-5, atol=1e-5)
    for (name, p), want in zip(net.named_parameters(), want_grads):
        scale = float(want.abs().max())
        assert scale > 0, name  # every parameter gets a gradient in these cases
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_settings_outside_the_allow_list_train_with_autograd():
    cfg = ModuleConfig(n_features=12, n_covariates=3, n_labels=4)
    assert uncovered(cfg, LossConfig(), "fp32", "cpu") is None
    assert uncovered(cfg, LossConfig(mixing=10.0), "fp32", "cpu") == "loss.mixing = 10.0"
    assert uncovered(cfg, LossConfig(), "bf16", "cpu") == "training.precision = 'bf16'"
    assert uncovered(cfg, LossConfig(), "fp32", "mps") == "training.device = 'mps'"
    gelu = ModuleConfig(n_features=12, n_covariates=3, n_labels=4, activation="gelu")  # in the table, not in the step's list
    assert uncovered(gelu, LossConfig(), "fp32", "cpu") == "model.activation = 'gelu'"

    @dataclasses.dataclass
    class LossWithANewTerm(LossConfig):  # a loss term added later, which the step does not know
        sparsity: float = 0.0

    assert uncovered(cfg, LossWithANewTerm(), "fp32", "cpu") == "loss.sparsity = 0.0"
    assert not use_fast_step("auto", cfg, LossConfig(mixing=1.0), "fp32", "cpu")
    assert use_fast_step("auto", cfg, LossConfig(), "fp32", "cpu") and use_fast_step("on", cfg, LossConfig(), "fp32", "cpu")
    assert not use_fast_step("off", cfg, LossConfig(), "fp32", "cpu")
    with pytest.raises(InclustError, match=r'training.fast_step = "on" but the hand-written step is not verified for loss.mixing = 1.0'):
        use_fast_step("on", cfg, LossConfig(mixing=1.0), "fp32", "cpu")


def test_training_outside_the_allow_list_never_builds_the_hand_written_step(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the hand-written step ran outside its allow-list")

    monkeypatch.setattr(trainer, "ManualStep", refuse)
    model, _, result = _fit(loss={"mixing": 1.0})
    assert result.history["mixing"][-1] > 0  # the mixing term was trained, by autograd
    with pytest.raises(InclustError, match="not verified for loss.mixing"):
        _fit(loss={"mixing": 1.0}, fast_step="on")


def _fit(seed=0, loss=None, model=None, fast_step="auto"):
    st = synthetic_task("imputation", n_cells=300, seed=0, overrides={
        "model": {"ensemble": 2, **(model or {})}, "loss": loss or {},
        "training": {"epochs": 4, "seed": seed, "workers": 1, "threads": 1, "fast_step": fast_step}})
    return InClust.fit(st.config, st.objects, progress=False)


def test_training_with_the_manual_step_learns_what_autograd_learns(monkeypatch):
    manual, _, r_manual = _fit()
    auto, _, r_auto = _fit(fast_step="off")
    # the same run to float rounding: 4 epochs of 2 members (Gaussian and Bernoulli)
    np.testing.assert_allclose(r_manual.history["total"], r_auto.history["total"], rtol=1e-4)
    for key, value in auto.module.state_dict().items():
        np.testing.assert_allclose(manual.module.state_dict()[key], value, rtol=1e-3, atol=1e-4, err_msg=key)
    assert r_manual.history["total"][-1] < r_manual.history["total"][0] * 0.95  # and it trains (63.4k -> 59.6k)


def test_the_step_worker_thread_trains_bit_for_bit_what_one_thread_does(monkeypatch):
    from inclust_plus.training.fitting import members

    runs = {}
    for offload in (False, True):
        monkeypatch.setattr(members, "offload_step", lambda *a, offload=offload: offload)
        runs[offload] = _fit()
    (one, _, r_one), (two, _, r_two) = runs[False], runs[True]
    assert r_one.history == r_two.history  # exactly: the same ops on the same inputs, whichever thread ran them
    for key, value in one.module.state_dict().items():
        assert torch.equal(two.module.state_dict()[key], value), key


def test_offload_only_with_a_second_core_and_one_thread_per_op(monkeypatch):
    from inclust_plus.training.fitting import members

    monkeypatch.setattr(members, "available_cores", lambda: 2)
    assert members.offload_step(torch.device("cpu"), 1)
    assert not members.offload_step(torch.device("cpu"), 2)  # ops split over threads already
    assert not members.offload_step(torch.device("meta"), 1)  # an accelerator queues its kernels: nothing to overlap
    monkeypatch.setattr(members, "available_cores", lambda: 1)
    assert not members.offload_step(torch.device("cpu"), 1)


def test_one_flat_adam_step_is_adam_on_every_parameter():
    from inclust_plus.training.fast_step.flat_params import FlatParameters

    net, _ = _case(3)
    ref = [p.detach().clone().requires_grad_() for p in net.parameters()]
    flat = FlatParameters(net)
    opt = torch.optim.Adam(ref, lr=0.01)
    torch.manual_seed(1)
    for _ in range(3):
        for p, r in zip(net.parameters(), ref):
            g = torch.randn_like(r)
            p.grad.copy_(g)
            r.grad = g
        flat.adam_step(0.01)
        opt.step()
    for (name, p), r in zip(net.named_parameters(), ref):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-6, atol=1e-7, msg=name)
    assert flat.data.data_ptr() == net.weights[0].data_ptr()  # the parameters are views of the flat buffer


def test_the_step_worker_hands_an_error_to_the_training_thread():
    from inclust_plus.training.fast_step.step_worker import StepWorker

    worker, ran = StepWorker(), []
    worker.submit(lambda: ran.append(1))
    worker.submit(lambda: 1 / 0)
    later = worker.call(lambda: ran.append(3) or "three")
    with pytest.raises(ZeroDivisionError):
        worker.wait()
    assert ran == [1, 3] and later.get() == "three"
    failed = worker.call(lambda: [][0])
    with pytest.raises(IndexError):
        failed.get()  # the caller waiting for that result gets its error
    worker.close()  # the error has reached the training thread: stopping does not raise it again
    assert not worker._thread.is_alive()


def test_training_leaves_no_worker_thread_behind(monkeypatch):
    import threading

    from inclust_plus.training.fitting import members

    monkeypatch.setattr(members, "offload_step", lambda *a: True)
    before = threading.active_count()
    _fit()
    _fit()  # a notebook fitting again
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name == "inclust-step-worker"]


def test_an_error_on_the_worker_thread_ends_training_with_that_error(monkeypatch):
    import threading

    from inclust_plus.training.fast_step import manual_step
    from inclust_plus.training.fitting import members

    monkeypatch.setattr(members, "offload_step", lambda *a: True)

    def broken(self, *args):
        raise FloatingPointError("the worker's part of the step failed")

    monkeypatch.setattr(manual_step.ManualStep, "_label_branch", broken)
    with pytest.raises(FloatingPointError, match="worker's part"):
        _fit()
    assert not [t for t in threading.enumerate() if t.name == "inclust-step-worker"]
