"""Train the members of an ensemble: one after another, or side by side in worker processes.

A network of inClust+'s size keeps one CPU core busy and gains nothing from a second torch thread
(200 epochs on the MERFISH-panel data take about as long with 2 threads as with 1), so K members
train about ``min(K, cores)`` times faster in separate processes with one thread each than in
sequence. Member k always trains with seed ``seed + k`` and its own likelihood, so which path ran
changes only floating-point rounding, never what a member learns.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from tqdm.auto import tqdm

from .config import Config
from .data import TrainingData
from .module import InClustModule, ModuleConfig
from .trainer import TrainingResult, seed_everything, train


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def member_settings(cfg: Config, k: int):
    """Training and loss settings of member ``k``: seed + k, the k-th likelihood of the cycle."""
    likelihoods = cfg.loss.likelihoods()
    training = dataclasses.replace(cfg.training, seed=cfg.training.seed + k)
    loss = dataclasses.replace(cfg.loss, likelihood=likelihoods[k % len(likelihoods)])
    return training, loss


def _train_one(member: ModuleConfig, data: TrainingData, training, loss, threads: int, progress: bool, desc: str):
    if threads:
        torch.set_num_threads(threads)
    seed_everything(training.seed)
    module = InClustModule(member)
    result = train(module, data, training, loss, progress=progress, desc=desc)
    return module, result


def _train_in_worker(member: ModuleConfig, data: TrainingData, training, loss, threads: int):
    module, result = _train_one(member, data, training, loss, threads, False, "")
    return module.state_dict(), result


# Below this many rows x epochs (about 10 s of training for one network here), starting worker
# processes (each imports torch) costs more than training the members one after another saves.
PARALLEL_MIN_ROW_EPOCHS = 1_000_000


def worker_count(cfg: Config, n_rows: int) -> int:
    """Processes for the members: ``training.workers``, or (0) one per core up to the member count
    when the job is big enough to repay starting them."""
    k = cfg.model.ensemble
    if cfg.training.workers:
        return max(1, min(k, cfg.training.workers))
    if n_rows * cfg.training.epochs < PARALLEL_MIN_ROW_EPOCHS:
        return 1
    return max(1, min(k, available_cores()))


def train_members(member: ModuleConfig, data: TrainingData, cfg: Config, progress: bool = True):
    """The ``cfg.model.ensemble`` trained members of shape ``member`` and their training records."""
    k, workers = cfg.model.ensemble, worker_count(cfg, len(data.row_cell))
    settings = [member_settings(cfg, i) for i in range(k)]
    if workers == 1:
        runs = [
            _train_one(member, data, tr, lo, cfg.training.threads, progress, "training" if k == 1 else f"member {i + 1}/{k}")
            for i, (tr, lo) in enumerate(settings)
        ]
        return [m for m, _ in runs], [r for _, r in runs]
    threads = max(1, (cfg.training.threads or available_cores()) // workers)
    states, results = [None] * k, [None] * k
    # spawn, not fork: a forked child inherits the parent's OpenMP thread pool and can hang in it.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_in_worker, member, data, tr, lo, threads): i for i, (tr, lo) in enumerate(settings)}
        bar = tqdm(total=k, desc=f"training {k} members on {workers} processes", unit="member", disable=not progress)
        for future in as_completed(futures):
            states[futures[future]], results[futures[future]] = future.result()
            bar.update()
        bar.close()
    modules = []
    for state in states:
        module = InClustModule(member)
        module.load_state_dict(state)
        modules.append(module.eval())
    return modules, results
