"""Train the members of an ensemble: side by side in this process, or in groups in worker processes.

Member k always starts from the weights of seed ``seed + k`` and trains with its own shuffle,
noise and likelihood (training/fitting/trainer.py), so where it trains - stacked with the others in one
process, or in a group of a fresh worker process - changes only floating-point rounding, never
what it learns. On a GPU all members train stacked in this process; on a CPU a big job adds a
worker process per idle core (each training its share of the members stacked, one torch thread
each), and stays in one stacked process when the cores are busy (``worker_count``).
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

import numpy as np
import torch
from tqdm.auto import tqdm

from inclust_plus import interrupt
from inclust_plus.errors import InclustError

from inclust_plus.training.config import Config
from inclust_plus.training.assembly.data import TrainingData
from inclust_plus.training.fitting.device import resolve_device
from inclust_plus.training.fast_step.manual_step import use_fast_step
from inclust_plus.training.network import correction
from inclust_plus.training.network.module import InClustModule, ModuleConfig
from inclust_plus.training.fitting.trainer import TrainingResult, seed_everything, train_stacked


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


def input_correction_tables(data: TrainingData) -> dict[str, torch.Tensor]:
    """The input correction's tables fitted on the training cells (training/network/correction.py): each covariate
    level's features matched to the level with the most cells that measure them."""
    levels = len(data.covariate_categories)
    measuring = np.zeros((levels, data.n_features))
    for d, name in enumerate(data.dataset_names):
        per_level = np.bincount(data.covariate[data.dataset_of_cell == d], minlength=levels)
        measuring += per_level[:, None] * data.measured[name][None, :]
    return dict(zip(correction.BUFFERS, map(torch.from_numpy, correction.fit(data.x, data.covariate, measuring))))


def initial_member(member: ModuleConfig, seed: int, tables: dict[str, torch.Tensor] | None = None) -> InClustModule:
    """Member weights as a network of seed ``seed`` starts (the same wherever it then trains), with the
    input correction's ``tables`` when its config has one."""
    seed_everything(seed)
    module = InClustModule(member)
    for name, value in (tables or {}).items():
        getattr(module, name).copy_(value)
    return module


def default_threads(device: torch.device) -> int:
    """torch threads per process when ``training.threads`` is 0: one on the CPU.

    A network of inClust+'s size is too small to split across threads, and the threads of one
    op wait for each other: on the shared 2-core machine of BENCHMARKS.md a second thread made one
    network 1.3-2.8x slower and 6 stacked members up to 8x slower whenever the other core was busy,
    and gained at most 1.2x when it was idle. More cores are used by more processes instead
    (``worker_count``), which never wait for each other, and within one process by the step worker
    thread (``offload_step``), which waits for the training thread only twice a step, sleeping.
    """
    return 1 if device.type == "cpu" else 0


def offload_step(device: torch.device, threads: int) -> bool:
    """Whether this process's training step hands the work off its chain to a second thread
    (training/fast_step/step_worker.py): on a CPU with a second core, one torch thread per op. The result is
    the same either way; on the 2-core machine of BENCHMARKS.md it makes one network's step faster."""
    return device.type == "cpu" and threads == 1 and available_cores() >= 2


def _train_group(member: ModuleConfig, data: TrainingData, settings, device, precision: str, threads: int, progress: bool, desc: str,
                 tables: dict[str, torch.Tensor] | None, offload: bool = False):
    """Members of ``settings`` stacked in this process, each started from its seed with the input correction's ``tables``
    (fitted once per ensemble by :func:`train_members`, so every worker starts from the same ones)."""
    before = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        modules = [initial_member(member, tr.seed, tables) for tr, _ in settings]
        return train_stacked(modules, data, settings, device, precision, progress, desc, offload)
    finally:  # a caller's Python session keeps its own setting
        torch.set_num_threads(before)


# Below this many rows x epochs x members (about 25 s of training here), starting worker processes
# (each imports torch and reads the pickled data: ~13 s on the loaded 2-core machine) costs more than
# a second core saves (benchmarks/ensemble_training.py: 3 epochs of 6 members, 11.5 s stacked vs 18.5 s).
PARALLEL_MIN_ROW_EPOCHS = 1_500_000


def _cpu_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, all) clock ticks so far of the CPUs ``cpus``, from /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


def idle_cores(window: float = 0.25) -> int:
    """Cores that other processes leave idle, besides the one this process uses: their busy time
    over the next ``window`` seconds (/proc/stat), while this process waits. Not the 1-minute load
    average, which lags: after a run that ended half a minute ago it still says the cores are busy
    (a preset trained stacked in one process there, 333 s, against 210-243 s in 2 processes).
    Where /proc/stat is missing, the load average (which counts this process as one)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    before = _cpu_ticks(cpus) if cpus else None
    if before is not None:
        time.sleep(window)
        after = _cpu_ticks(cpus)
        if after is not None and after[1] > before[1]:
            busy = len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
            return max(0, int(len(cpus) - 1 - busy + 0.5))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - not Unix
        return 0
    return max(0, int(available_cores() - max(load, 1.0) + 0.5))


def worker_count(cfg: Config, n_rows: int, device: torch.device) -> int:
    """Processes for the members: ``training.workers``, or (0) this one plus one per idle core (up to
    the member count) for a big job on the CPU, each training its share of the members stacked with
    one thread; a GPU trains all members stacked in this process.

    Extra processes pay only with a core to run on: on the shared 2-core machine at load ~7,
    6 members trained 12 epochs in 51 s stacked in one process against 54-67 s in 2 processes
    (benchmarks/ensemble_training.py), while on an idle machine 2 processes use twice the cores.
    Which path runs changes only floating-point rounding, never what a member learns.
    """
    k = cfg.model.ensemble
    if device.type != "cpu":
        return 1
    if cfg.training.workers:
        return max(1, min(k, cfg.training.workers))
    if k == 1 or n_rows * cfg.training.epochs * k < PARALLEL_MIN_ROW_EPOCHS:
        return 1
    return max(1, min(k, available_cores(), 1 + idle_cores()))


def train_members(member: ModuleConfig, data: TrainingData, cfg: Config, progress: bool = True):
    """The ``cfg.model.ensemble`` trained members of shape ``member``, their training records and
    the wall seconds the whole ensemble took."""
    device = resolve_device(cfg.training.device)
    use_fast_step(cfg.training.fast_step, member, cfg.loss, cfg.training.precision, device.type)  # "on" outside its list: an error now, not in a worker
    k, workers = cfg.model.ensemble, worker_count(cfg, len(data.row_cell), device)
    settings = [member_settings(cfg, i) for i in range(k)]
    t0 = time.perf_counter()
    threads = cfg.training.threads or default_threads(device)
    tables = input_correction_tables(data) if member.input_correction != "none" else None
    if workers == 1:
        desc = "training" if k == 1 else f"training {k} members side by side"
        modules, results = _train_group(member, data, settings, device, cfg.training.precision, threads, progress, desc,
                                        tables, offload_step(device, threads))
        return modules, results, time.perf_counter() - t0
    states, results = _train_in_workers(member, data, settings, workers, threads, cfg.training.precision, progress, tables)
    modules = []
    for state in states:
        module = InClustModule(member)
        module.load_state_dict(state)
        modules.append(module.eval())
    return modules, results, time.perf_counter() - t0


_ONE_LINE = f"{InclustError.__module__}.{InclustError.__qualname__}: "  # how a worker's traceback ends with one


def _groups(k: int, workers: int) -> list[list[int]]:
    """Members dealt round-robin into ``workers`` groups (sizes differ by at most one)."""
    return [list(range(k))[w::workers] for w in range(workers)]


def _train_in_workers(member, data, settings, workers: int, threads: int, precision: str, progress: bool, tables=None):
    """Each group of members stacked in a fresh ``python -m inclust_plus.training.fitting.members`` process.

    Fresh interpreters rather than multiprocessing: a spawned multiprocessing child re-imports the
    caller's main script (which breaks scripts read from stdin and re-runs scripts without a
    ``__main__`` guard), and a forked one inherits the parent's OpenMP thread pool.
    """
    k = len(settings)
    groups = _groups(k, workers)
    with tempfile.TemporaryDirectory(prefix="inclust_members_") as tmp:
        job = Path(tmp) / "job.pkl"
        with open(job, "wb") as f:  # private to this run: written here, read by our own workers only
            pickle.dump({"member": member, "data": data, "settings": settings, "threads": threads, "precision": precision,
                         "groups": groups, "tables": tables}, f, protocol=pickle.HIGHEST_PROTOCOL)
        # The workers import this package exactly as this process did (a script may have extended sys.path).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        running = {}
        bar = tqdm(total=k, desc=f"training {k} members on {workers} processes", unit="member", disable=not progress)
        try:
            for g in range(len(groups)):
                log = open(Path(tmp) / f"group{g}.log", "wb")
                cmd = [sys.executable, "-m", "inclust_plus.training.fitting.members", str(job), str(g), tmp]
                running[g] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            while running:
                interrupt.check()  # Ctrl-C/SIGTERM: the finally below stops the workers
                for g, (proc, log) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    log.close()
                    del running[g]
                    if proc.returncode != 0:
                        interrupt.check()  # a worker ended by the same Ctrl-C is the stop, not a failure
                        lines = (Path(tmp) / f"group{g}.log").read_text(errors="replace").strip().splitlines()
                        if lines and lines[-1].startswith(_ONE_LINE):  # the worker's own one-line error (a diverged member)
                            raise InclustError(lines[-1][len(_ONE_LINE):])
                        which = ", ".join(map(str, groups[g]))
                        raise RuntimeError(f"training ensemble member {which} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
                    bar.update(len(groups[g]))
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


def _worker_main(job: str, group: str, out: str) -> None:
    """Train group ``group`` of the pickled job; write each member's weights and training record to ``out``."""
    with open(job, "rb") as f:
        spec = pickle.load(f)
    members = spec["groups"][int(group)]
    settings = [spec["settings"][i] for i in members]
    modules, results = _train_group(spec["member"], spec["data"], settings, torch.device("cpu"), spec["precision"],
                                    spec["threads"], False, "", spec["tables"])
    for i, module, result in zip(members, modules, results):
        torch.save(module.state_dict(), Path(out) / f"member{i}.pt")
        (Path(out) / f"member{i}.json").write_text(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    _worker_main(*sys.argv[1:])
