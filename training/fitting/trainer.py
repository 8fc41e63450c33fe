"""The training loop: K networks (K = 1 for a single model) trained side by side on one device.

Each member keeps everything it would have alone: its seed's initial weights (made by the
caller), its own shuffle of the rows and its own reparameterisation noise (one generator each),
its own validation split and early stopping, and its likelihood. The members share only the
schedule (epochs, batch size, learning rate and its decay, KL warm-up), which a config sets for
all of them. Stacked (training/network/stacked.py), they train in one forward and backward pass per step.

The step avoids fixed costs where it can: rows are gathered on the device from tensors placed
there once (training/assembly/batches.py), the loss and its gradients are written out by hand for the
settings where that is verified (training/fast_step/manual_step.py, its allow-list; no autograd graph to
record; elsewhere autograd on training/network/loss.py, compiled where that was measured to pay:
training/fitting/compiled.py), Adam runs fused (one kernel over one
flat buffer of all parameters, training/fast_step/flat_params.py), and the loss terms are summed on the
device and read once per epoch - the only host-device exchange in the loop besides the epoch's
shuffled order. On a CPU with a second core the work off the step's chain (the next batch, the
classifier/KL branch, the weight gradients) runs on a second thread during the step
(training/fast_step/step_worker.py), with the same result bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from inclust_plus import interrupt
from inclust_plus.errors import InclustError

from inclust_plus.training.assembly.batches import DeviceRows
from inclust_plus.training.config import LossConfig, TrainingConfig
from inclust_plus.training.assembly.data import TrainingData
from inclust_plus.training.fitting.compiled import CompiledLoss, use_compile
from inclust_plus.training.fitting.device import autocast, grad_scaler
from inclust_plus.training.fast_step.manual_step import ManualStep, use_fast_step
from inclust_plus.training.fast_step.step_worker import StepWorker
from inclust_plus.training.network.module import InClustModule
from inclust_plus.training.fitting.optim import adam, cosine_lr
from inclust_plus.training.network.loss import TERMS
from inclust_plus.training.network.stacked import StackedNetworks

NOISE_SEED_OFFSET = 7919  # the noise generator's seed is the member's seed plus this (not the shuffle's stream)


@dataclass
class TrainingResult:
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    rows_per_second: float = 0.0

    @classmethod
    def combined(cls, results: list["TrainingResult"], wall: float | None = None) -> "TrainingResult":
        """One record for the members of an ensemble: per-epoch mean of their curves; ``wall`` (the
        time the whole ensemble took, default: the members' summed time) and the rows all members
        trained on per second of it."""
        if len(results) == 1 and wall is None:
            return results[0]
        history = {}
        for term in results[0].history:
            curves = [r.history[term] for r in results]
            n = min(len(c) for c in curves)
            history[term] = [float(np.mean([c[i] for c in curves])) for i in range(n)]
        rows = sum(r.rows_per_second * r.seconds for r in results)
        seconds = sum(r.seconds for r in results) if wall is None else wall
        return cls(history=history, best_epoch=round(float(np.mean([r.best_epoch for r in results]))),
                   epochs_run=max(r.epochs_run for r in results), seconds=seconds, rows_per_second=rows / max(seconds, 1e-9))


def seed_everything(seed: int) -> torch.Generator:
    np.random.seed(seed)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _shared_schedule(settings: list[tuple[TrainingConfig, LossConfig]]) -> None:
    """Members trained side by side may differ only in seed and likelihood."""
    first_t, first_l = settings[0]
    for t, lo in settings[1:]:
        if dataclasses.replace(t, seed=first_t.seed) != first_t or dataclasses.replace(lo, likelihood=first_l.likelihood) != first_l:
            raise ValueError("members trained side by side must share every setting but seed and likelihood")


def _split_rows(n_rows: int, cfg: TrainingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Member's (training, validation) rows: a validation share drawn with its seed, both sorted."""
    order = np.random.default_rng(cfg.seed).permutation(n_rows)
    n_val = int(round(cfg.validation_fraction * n_rows)) if cfg.validation_fraction > 0 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _evaluate(net: StackedNetworks, rows: DeviceRows, val: torch.Tensor, weights, bernoulli, unsupervised, precision, chunk=4096):
    """Mean validation loss per member [K] (posterior mean, no noise), read once."""
    net.eval()
    total = torch.zeros(net.k, dtype=torch.float64, device=val.device)
    with torch.no_grad(), autocast(val.device, precision):
        for s in range(0, val.shape[1], chunk):
            part = val[:, s : s + chunk]
            total += net.loss(*rows.batch(part), None, weights, bernoulli, unsupervised)[0].double() * part.shape[1]
    net.train()
    return (total / max(val.shape[1], 1)).tolist()


def _check_finite(epoch_terms: list[list[float]], val: list[float] | None, active: list[bool], epoch: int, settings) -> None:
    """A diverged network is an error, never a model: checked on the loss terms the epoch already read
    from the device (no extra host-device exchange), naming the terms that went non-finite."""
    for i, on in enumerate(active):
        if not on:
            continue  # stopped early: its result is its best epoch, whatever it does now
        bad = {t: row[i] for t, row in zip(TERMS, epoch_terms) if not math.isfinite(row[i])}
        if val is not None and not math.isfinite(val[i]):
            bad["validation"] = val[i]
        if bad:
            named = [t for t in bad if t != "total"] or ["total"]
            who = f" of the network with seed {settings[i][0].seed}" if len(active) > 1 else ""
            raise _diverged(f"the {' and '.join(named)} loss term{'s' if len(named) > 1 else ''}{who} became {bad[named[0]]}",
                            epoch, settings[i][0])


def _diverged(what: str, epoch: int, t: TrainingConfig) -> InclustError:
    return InclustError(f"training diverged: {what} in epoch {epoch + 1}",
                        f"lower training.learning_rate (now {t.learning_rate:g}; try {t.learning_rate / 10:g}) or check the data for extreme values")


def _step_inputs(rows: DeviceRows, epoch_rows: torch.Tensor, batch_size: int, noises, latent: int, label_tables: bool, s: int):
    """Step ``s``'s batch and noise; called in step order (each member's noise generator is a stream)."""
    step_rows = epoch_rows[:, s * batch_size : (s + 1) * batch_size]
    noise = torch.empty(step_rows.shape[0], step_rows.shape[1], latent, device=epoch_rows.device)
    for i, g in enumerate(noises):
        noise[i].normal_(generator=g)
    return rows.batch(step_rows, label_tables=label_tables), noise


def train_stacked(
    members: list[InClustModule],
    data: TrainingData,
    settings: list[tuple[TrainingConfig, LossConfig]],
    device: torch.device,
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "training",
    offload: bool = False,
) -> tuple[list[InClustModule], list[TrainingResult]]:
    """Train ``members`` (initialised by the caller) side by side; member k with ``settings[k]``.
    ``offload``: the hand-written step's work off its chain runs on a second thread
    (training/fast_step/step_worker.py; bit for bit the same result)."""
    _shared_schedule(settings)
    cfg, loss_cfg = settings[0]
    k = len(members)
    net = StackedNetworks(members).to(device)
    rows = DeviceRows(data, device)
    splits = [_split_rows(len(data.row_cell), t) for t, _ in settings]
    train_rows = torch.from_numpy(np.stack([s[0] for s in splits])).to(device)
    val_rows = torch.from_numpy(np.stack([s[1] for s in splits])).to(device) if len(splits[0][1]) else None
    n_train = train_rows.shape[1]
    shuffles = [torch.Generator().manual_seed(t.seed) for t, _ in settings]
    noises = [torch.Generator(device).manual_seed(t.seed + NOISE_SEED_OFFSET) for t, _ in settings]
    likelihoods = [lo.likelihood for _, lo in settings]
    bernoulli = likelihoods[0] == "bernoulli" if len(set(likelihoods)) == 1 else torch.tensor([v == "bernoulli" for v in likelihoods], device=device)
    weights = dataclasses.replace(loss_cfg, likelihood="per member")
    full_weights = dataclasses.replace(weights)
    unsupervised = data.label_mode == "unsupervised"
    scaler = grad_scaler(device, precision)
    manual, loss_fn = None, net.loss
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total_steps, step = max(1, cfg.epochs * steps_per_epoch), 0
    compiled = use_compile(cfg.compile, k, total_steps, device.type, precision, cfg.kl_warmup_epochs, cfg.fast_step)
    if not compiled and use_fast_step(cfg.fast_step, net.config, loss_cfg, precision, device.type):  # gradients by hand (training/fast_step/manual_step.py)
        manual = ManualStep(net, StepWorker() if offload else None)
        opt = None
    else:  # autograd, on the loss compiled where that was measured to pay (training/fitting/compiled.py)
        opt = adam(net.parameters(), cfg.learning_rate, device, need_torch_optimizer=scaler is not None)
        if compiled:
            loss_fn = CompiledLoss(net, cfg.batch_size)
    lr = cfg.learning_rate

    def lr_at(t: int) -> float:  # the rate of step t (0-based): constant, or the cosine decay
        return cosine_lr(cfg.learning_rate, t, total_steps) if cfg.lr_schedule == "cosine" and t else cfg.learning_rate

    results = [TrainingResult(history={t: [] for t in TERMS}) for _ in range(k)]
    for r in results:
        if val_rows is not None:
            r.history["validation"] = []
    active = [True] * k
    best, best_state, since_best = [math.inf] * k, [None] * k, [0] * k
    latent = net.config.latent_dim
    net.train()
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=desc, unit="epoch", disable=not progress, dynamic_ncols=True)
    try:
        for epoch in bar:
            if cfg.kl_warmup_epochs:
                weights.kl = full_weights.kl * min(1.0, (epoch + 1) / cfg.kl_warmup_epochs)
            perm = torch.stack([torch.randperm(n_train, generator=g) for g in shuffles]).to(device)
            epoch_rows = train_rows.gather(1, perm)
            sums = torch.zeros(len(TERMS), k, dtype=torch.float64, device=device)
            step_inputs = partial(_step_inputs, rows, epoch_rows, cfg.batch_size, noises, latent, manual is not None)
            ahead: list = []  # the next step's inputs, gathered on the step worker during this step
            for s in range(steps_per_epoch):
                interrupt.check()  # Ctrl-C/SIGTERM: stop between steps, nothing is written
                batch, noise = ahead.pop() if ahead else step_inputs(s)
                n = noise.shape[1]
                if manual is not None:  # loss terms, gradients and update in one pass, no autograd graph
                    *batch, tables = batch
                    then = partial(lambda s: ahead.append(step_inputs(s)), s + 1) if s + 1 < steps_per_epoch else None
                    terms = manual(*batch, noise, weights, bernoulli, unsupervised, label_tables=tables, lr=lr, meanwhile=then)
                else:
                    with autocast(device, precision):
                        terms = loss_fn(*batch, noise, weights, bernoulli, unsupervised)
                    opt.zero_grad()
                    loss = terms[0].sum()  # a separate term per member: no gradient mixes between members
                    if scaler is None:
                        loss.backward()
                        opt.step()
                    else:  # fp16: one loss scale for all members (an overflow in one skips the step of all)
                        scaler.scale(loss).backward()
                        scaler.step(opt.optimizer)
                        scaler.update()
                step += 1
                lr = lr_at(step)
                if opt is not None:
                    opt.lr = lr
                sums += terms.detach().double() * n
            epoch_terms = (sums / n_train).tolist()  # the epoch's one read from the device
            val = _evaluate(net, rows, val_rows, full_weights, bernoulli, unsupervised, precision) if val_rows is not None else None
            _check_finite(epoch_terms, val, active, epoch, settings)
            for i in range(k):
                if not active[i]:
                    continue  # stopped early: keeps training with the others, but its result is its best epoch
                r = results[i]
                for t, row in zip(TERMS, epoch_terms):
                    r.history[t].append(row[i])
                r.epochs_run = epoch + 1
                if val is None:
                    r.best_epoch = epoch + 1
                    continue
                r.history["validation"].append(val[i])
                if val[i] < best[i]:
                    best[i], since_best[i], r.best_epoch = val[i], 0, epoch + 1
                    best_state[i] = [p.detach()[i].clone() for p in net.parameters()]
                else:
                    since_best[i] += 1
                if cfg.patience and since_best[i] >= cfg.patience:
                    active[i] = False
            shown = {name: f"{np.mean([results[i].history[name][-1] for i in range(k)]):.3f}" for name in ("total", "reconstruction", "kl")}
            if val is not None:
                shown["val"] = f"{np.mean(val):.3f}"
            bar.set_postfix(shown)
            if not any(active):
                break
    finally:  # the step worker thread stops with the loop, also on an error or Ctrl-C
        if manual is not None:
            manual.close()
    bar.close()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        for i, state in enumerate(best_state):
            if state is not None:
                for p, v in zip(net.parameters(), state):
                    p[i].copy_(v)
    if not all(bool(torch.isfinite(p).all()) for p in net.parameters()):  # the last update, which no loss saw
        raise _diverged("the weights became non-finite", results[0].epochs_run - 1, cfg)
    for r in results:
        r.seconds = seconds
        r.rows_per_second = n_train * r.epochs_run / max(seconds, 1e-9)
    return net.members(), results
