"""Training on a chosen device, in a chosen precision, with ensemble members stacked in one network.

The stacked trainer (training/network/stacked.py, training/fitting/trainer.py) must give every member exactly what
it would learn alone, compute the loss of InClustModule.loss, and gather the same batches from a
sparse matrix as from a dense one.
"""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from click.testing import CliRunner

from inclust_plus.errors import InclustError
from inclust_plus.training.assembly.batches import DeviceRows
from inclust_plus.training.cli import main as train_cli
from inclust_plus.training.assembly.data import assemble
from inclust_plus.training.fitting.device import resolve_device
from inclust_plus.training.network.ensemble import merge_members
from inclust_plus.training.assembly.loading import load_dataset
from inclust_plus.training.model import InClust
from inclust_plus.training.config import LossConfig
from inclust_plus.training.network.module import InClustModule, ModuleConfig
from inclust_plus.training.presets import preset_config
from evaluation.synthetic import synthetic_task
from inclust_plus.training.network.loss import TERMS
from inclust_plus.training.network.stacked import StackedNetworks

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="depends on the hardware: this machine has a CUDA GPU")


def _fit(ensemble: int, seed: int, likelihood, **training):
    overrides = {"model": {"ensemble": ensemble}, "loss": {"likelihood": likelihood},
                 "training": {"epochs": 3, "seed": seed, "workers": 1, "threads": 1, **training}}
    st = synthetic_task("imputation", n_cells=300, seed=0, overrides=overrides)
    return InClust.fit(st.config, st.objects, progress=False)


@pytest.mark.parametrize("training", [{}, {"validation_fraction": 0.2, "patience": 1, "epochs": 6, "lr_schedule": "cosine"}])
def test_stacked_members_equal_the_same_members_trained_alone(training):
    # Member 0: Gaussian, seed 3; member 1: Bernoulli, seed 4 (the likelihood list is cycled).
    grouped, _, grouped_result = _fit(2, 3, ["gaussian", "bernoulli"], **training)
    alone = [_fit(1, 3, "gaussian", **training), _fit(1, 4, "bernoulli", **training)]
    expected = merge_members([m.module for m, _, _ in alone])
    assert grouped.module.config == expected.config
    for key, value in expected.state_dict().items():
        np.testing.assert_allclose(grouped.module.state_dict()[key], value, rtol=1e-4, atol=2e-5, err_msg=key)
    # the ensemble's curve is the mean of the members' own curves
    curves = [r.history["total"] for _, _, r in alone]
    n = min(map(len, curves))
    np.testing.assert_allclose(grouped_result.history["total"], np.mean([c[:n] for c in curves], 0), rtol=1e-5)
    # the two members really learned different things (different seeds and likelihoods)
    a, b = (m.module.output.weight for m, _, _ in alone)
    assert (a - b).abs().max() > 0.01


def test_training_on_the_cpu_is_deterministic_for_a_seed():
    (a, _, ra), (b, _, rb) = _fit(2, 0, ["gaussian", "bernoulli"]), _fit(2, 0, ["gaussian", "bernoulli"])
    for key, value in a.module.state_dict().items():
        assert torch.equal(b.module.state_dict()[key], value), key
    assert ra.history == rb.history
    c, _, _ = _fit(2, 1, ["gaussian", "bernoulli"])
    assert not torch.equal(c.module.output.weight, a.module.output.weight)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("unsupervised", [False, True])
def test_stacked_loss_is_the_module_loss(likelihood, unsupervised):
    torch.manual_seed(0)
    cfg = ModuleConfig(n_features=12, n_covariates=2, n_labels=4, encoder_hidden=[10, 6], latent_dim=5, decoder_hidden=[8])
    members = [InClustModule(cfg).eval() for _ in range(3)]
    with torch.no_grad():
        for m in members:
            m.prior_means.normal_()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 7, 12, generator=g)
    in_mask = (torch.rand(3, 7, 12, generator=g) > 0.3).float()
    out_mask = (torch.rand(3, 7, 12, generator=g) > 0.2).float()
    cov = torch.randint(0, 2, (3, 7), generator=g)
    label = torch.randint(-1, 4, (3, 7), generator=g)
    w = LossConfig(reconstruction=3.0, kl=0.7, categorical=1.5, label=20.0, mixing=2.0, likelihood=likelihood)
    stacked = StackedNetworks(members).eval()
    got = stacked.loss(x, in_mask, out_mask, cov, label, None, w, likelihood == "bernoulli", unsupervised)
    assert got.shape == (len(TERMS), 3)
    assert (got[TERMS.index("mixing")] > 0).all()  # the optional batch-mixing term is on and compared too
    for k, m in enumerate(members):
        want = m.loss(x[k], in_mask[k], out_mask[k], cov[k], label[k], w, unsupervised)
        np.testing.assert_allclose(got[:, k].detach(), [float(want[t].detach()) for t in TERMS], rtol=1e-5, atol=1e-5)
    # per-member likelihoods: member 1 Bernoulli, the others Gaussian
    mixed = stacked.loss(x, in_mask, out_mask, cov, label, None, w, torch.tensor([False, True, False]), unsupervised)
    bern = stacked.loss(x, in_mask, out_mask, cov, label, None, w, True, unsupervised)
    gauss = stacked.loss(x, in_mask, out_mask, cov, label, None, w, False, unsupervised)
    np.testing.assert_allclose(mixed[:, 1].detach(), bern[:, 1].detach())
    np.testing.assert_allclose(mixed[:, [0, 2]].detach(), gauss[:, [0, 2]].detach())
    # unstacking gives the members back unchanged
    for m, back in zip(members, stacked.members()):
        for key, value in m.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), key


def test_sparse_rows_are_densified_to_the_dense_rows():
    st = synthetic_task("imputation", n_cells=200, seed=0)
    data = assemble([load_dataset(d, st.objects[d.name]) for d in st.config.datasets], st.config)
    dense = DeviceRows(data, torch.device("cpu"))
    data.x = sp.csr_matrix(data.x)
    sparse = DeviceRows(data, torch.device("cpu"))
    assert sparse.sparse and not dense.sparse
    rows = torch.tensor([[5, 0, 199, 17, 17], [3, 150, 1, 2, 100]])
    for a, b in zip(dense.batch(rows), sparse.batch(rows)):
        assert torch.equal(a, b)
    assert dense.batch(rows)[0].shape == (2, 5, data.n_features)
    assert float(dense.batch(rows)[0].abs().sum()) > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_autocast_trains_on_the_cpu_close_to_fp32(precision):
    fp32, _, r32 = _fit(1, 0, "gaussian", epochs=4)
    bf16, _, r16 = _fit(1, 0, "gaussian", epochs=4, precision=precision)
    assert all(p.dtype == torch.float32 for p in bf16.module.parameters())  # weights stay fp32
    assert np.isfinite(r16.history["total"]).all()
    assert r16.history["total"][-1] < r16.history["total"][0]  # it learns
    assert abs(r16.history["total"][-1] - r32.history["total"][-1]) < 0.05 * r32.history["total"][-1]


@no_cuda
def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path):
    with pytest.raises(InclustError, match="no CUDA GPU"):
        resolve_device("cuda")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[datasets]]\nname = "a"\npath = "missing.h5ad"\n')
    res = CliRunner().invoke(train_cli, [str(cfg), "--out", str(tmp_path / "m.pt"), "--device", "cuda"])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training.device is 'cuda' but torch sees no CUDA GPU"), res.output
    assert "Traceback" not in res.output and not (tmp_path / "m.pt").exists()


@no_cuda
def test_device_auto_trains_on_the_cpu_here(tmp_path):
    assert resolve_device("auto") == torch.device("cpu")
    cfg = tmp_path / "c.toml"
    st = synthetic_task("imputation", n_cells=200, seed=0)
    for name, obj in st.objects.items():
        obj.write_h5ad(tmp_path / f"{name}.h5ad")
    cfg.write_text('task = "imputation"\n[[datasets]]\nname = "scrna"\npath = "scrna.h5ad"\nlabel_key = "cell_type"\n'
                   '[[datasets]]\nname = "merfish"\npath = "merfish.h5ad"\n[views]\nquery = ["merfish"]\n'
                   '[preprocessing.rna]\nlog1p = true\nscale = "max"\n[training]\ndevice = "auto"\n')
    res = CliRunner().invoke(train_cli, [str(cfg), "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--ensemble", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "rows/s over all networks, cpu)" in res.output


@pytest.mark.parametrize("key,value", [("device", "tpu"), ("precision", "fp8")])
def test_unknown_device_or_precision_is_a_config_error(key, value):
    with pytest.raises(InclustError, match=f'training.{key} = "{value}" is invalid: it must be one of'):
        preset_config("imputation", {"training": {key: value}})


def test_fused_adam_and_cosine_decay_equal_torch_optim():
    from inclust_plus.training.fitting.optim import FusedAdam, cosine_lr

    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref_opt = FusedAdam(ours, 0.01), torch.optim.Adam(ref, lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=20)
    for step in range(1, 21):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for p, q, gr in zip(ours, ref, grads):
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref_opt.step()
        sched.step()
        opt.lr = cosine_lr(0.01, step, 20)
        assert opt.lr == pytest.approx(ref_opt.param_groups[0]["lr"], abs=1e-12)
        for p, q in zip(ours, ref):
            np.testing.assert_allclose(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)
    assert (ours[0].detach() - ref[0].detach()).abs().max() < 1e-6 and (ours[0].detach() != 0).all()


def test_idle_cores_come_from_the_cpus_busy_time_now_not_the_lagging_load_average(monkeypatch):
    from inclust_plus.training.fitting import members

    monkeypatch.setattr(members.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(members.os, "getloadavg", lambda: (2.0, 2.0, 2.0))  # a run that ended a moment ago
    monkeypatch.setattr(members.time, "sleep", lambda s: None)
    readings = iter([(1000, 4000), (1010, 4100)])  # others kept 10 of 100 ticks busy on the 2 CPUs
    monkeypatch.setattr(members, "_cpu_ticks", lambda cpus: next(readings))
    assert members.idle_cores() == 1  # the load average alone would say 0
    readings = iter([(1000, 4000), (1090, 4100)])  # a busy process on the other core
    assert members.idle_cores() == 0
    monkeypatch.setattr(members, "_cpu_ticks", lambda cpus: None)  # no /proc/stat: the load average
    assert members.idle_cores() == 0


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="Linux only")
def test_cpu_ticks_read_this_machines_cpus():
    import os

    from inclust_plus.training.fitting import members

    busy, total = members._cpu_ticks(os.sched_getaffinity(0))
    assert 0 <= busy <= total and total > 0 and members._cpu_ticks({10_000}) is None


def test_worker_processes_only_for_big_cpu_jobs_with_an_idle_core(monkeypatch):
    from inclust_plus.training.fitting import members

    cfg = preset_config("imputation")  # 6 members, 200 epochs
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(members, "available_cores", lambda: 2)
    monkeypatch.setattr(members, "idle_cores", lambda: 1)
    assert members.worker_count(cfg, 30_370, cpu) == 2  # the preset on the MERFISH split, a core free
    assert members.worker_count(cfg, 100, cpu) == 1  # too small to repay starting processes
    assert members.worker_count(cfg, 30_370, cuda) == 1  # a GPU trains all members stacked
    monkeypatch.setattr(members, "idle_cores", lambda: 0)
    assert members.worker_count(cfg, 30_370, cpu) == 1  # every core busy: stacked in this process
    cfg.training.workers = 3
    assert members.worker_count(cfg, 100, cpu) == 3  # asked for
    cfg.model.ensemble = 1
    cfg.training.workers = 0
    monkeypatch.setattr(members, "idle_cores", lambda: 1)
    assert members.worker_count(cfg, 30_370, cpu) == 1
