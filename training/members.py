"""Train the members of an ensemble: one after another, or side by side in fresh worker processes.

A network of inClust+'s size keeps one CPU core busy and gains nothing from a second torch thread
(200 epochs on the MERFISH-panel data take about as long with 2 threads as with 1), so K members
train about ``min(K, cores)`` times faster in separate processes with one thread each than in
sequence. Member k always trains with seed ``seed + k`` and its own likelihood, so which path ran
changes only floating-point rounding, never what a member learns.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from inclust_plus import interrupt

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
    states, results = _train_in_workers(member, data, settings, workers, threads, progress)
    modules = []
    for state in states:
        module = InClustModule(member)
        module.load_state_dict(state)
        modules.append(module.eval())
    return modules, results


def _train_in_workers(member, data, settings, workers: int, threads: int, progress: bool):
    """Each member in a fresh ``python -m inclust_plus.training.members`` process, ``workers`` at a time.

    Fresh interpreters rather than multiprocessing: a spawned multiprocessing child re-imports the
    caller's main script (which breaks scripts read from stdin and re-runs scripts without a
    ``__main__`` guard), and a forked one inherits the parent's OpenMP thread pool.
    """
    k = len(settings)
    with tempfile.TemporaryDirectory(prefix="inclust_members_") as tmp:
        job = Path(tmp) / "job.pkl"
        with open(job, "wb") as f:  # private to this run: written here, read by our own workers only
            pickle.dump({"member": member, "data": data, "settings": settings, "threads": threads}, f, protocol=pickle.HIGHEST_PROTOCOL)
        # The workers import this package exactly as this process did (a script may have extended sys.path).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        pending, running = list(range(k)), {}
        bar = tqdm(total=k, desc=f"training {k} members on {workers} processes", unit="member", disable=not progress)
        try:
            while pending or running:
                interrupt.check()  # Ctrl-C/SIGTERM: the finally below stops the workers
                while pending and len(running) < workers:
                    i = pending.pop(0)
                    log = open(Path(tmp) / f"member{i}.log", "wb")
                    cmd = [sys.executable, "-m", "inclust_plus.training.members", str(job), str(i), tmp]
                    running[i] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
                for i, (proc, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log.close()
                    del running[i]
                    if proc.returncode != 0:
                        interrupt.check()  # a worker ended by the same Ctrl-C is the stop, not a failure
                        lines = (Path(tmp) / f"member{i}.log").read_text(errors="replace").strip().splitlines()
                        raise RuntimeError(f"training ensemble member {i} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
                    bar.update()
                time.sleep(0.05)
        finally:
            for proc, log in running.values():
                proc.kill()
                proc.wait()
                log.close()
            bar.close()
        states = [torch.load(Path(tmp) / f"member{i}.pt", weights_only=True) for i in range(k)]
        results = [TrainingResult(**json.loads((Path(tmp) / f"member{i}.json").read_text())) for i in range(k)]
    return states, results


def _worker_main(job: str, index: str, out: str) -> None:
    """Train member ``index`` of the pickled job and write its weights and training record to ``out``."""
    with open(job, "rb") as f:
        spec = pickle.load(f)
    i = int(index)
    training, loss = spec["settings"][i]
    module, result = _train_one(spec["member"], spec["data"], training, loss, spec["threads"], False, "")
    torch.save(module.state_dict(), Path(out) / f"member{i}.pt")
    (Path(out) / f"member{i}.json").write_text(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    _worker_main(*sys.argv[1:])
