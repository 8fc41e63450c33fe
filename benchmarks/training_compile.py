"""Does torch.compile of the one loss definition pay for training? Eager autograd, compiled, hand-written.

Why: the issue asks to use torch.compile on training/network/loss.py where it pays, measured on the
preset and a GPU. This times one optimizer step (loss terms via the one definition + backward + the
trainer's fused Adam) on the training rows of the imputation preset (standard split, assembled by
``read_training_data`` as ``InClust.fit`` does), for one network and the preset's stacked members:
eager autograd, ``torch.compile`` of ``StackedNetworks.loss`` (default mode; on CUDA also
"max-autotune-no-cudagraphs") and the hand-written step (training/fast_step/, where its allow-list
covers the setting, with the trainer's step worker). Contenders alternate within each round on the
same fixed batches (gathering one is left out: the same for all); ms/step is the median over rounds.
The first step (compile, in a fresh inductor cache unless --warm-cache) is reported apart, and
every contender's first loss terms (same weights, batch and noise) are compared with eager's.

    python benchmarks/training_compile.py --threads 1 2          # CPU (and CUDA when torch sees one)
    python benchmarks/training_compile.py --devices cuda         # on a GPU machine
    python benchmarks/training_compile.py --quick                # smoke run: synthetic cells, tiny

A device torch does not see is recorded as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DATA, machine, now, publish, write_result  # noqa: E402

CUDA_MODES = ("default", "max-autotune-no-cudagraphs")


def training_data(data_path: Path, quick: bool):
    """The imputation preset's config and its assembled training rows (real data; synthetic cells with --quick)."""
    from inclust_plus.training.assembly.data import read_training_data

    if data_path.is_file() and not quick:
        import anndata

        from evaluation.splits import pseudo_spatial_split
        from inclust_plus.training.presets import preset_config

        split = pseudo_spatial_split(anndata.read_h5ad(data_path), seed=0)
        cfg, objects, source = preset_config("imputation"), {"scrna": split.reference, "merfish": split.query}, data_path.name
    else:
        from evaluation.synthetic import synthetic_task

        task = synthetic_task("imputation", n_cells=600)
        cfg, objects, source = task.config, task.objects, "synthetic cells (evaluation/synthetic.py; --quick or no real data)"
    return cfg, read_training_data(cfg, objects), source


def contenders(cfg, data, k: int, device, threads: int, modes):
    """name -> (step(batch, tables, noise) -> terms, close); each contender with its own copy of the same initial members."""
    import torch

    from inclust_plus.training.fast_step.manual_step import ManualStep, use_fast_step
    from inclust_plus.training.fast_step.step_worker import StepWorker
    from inclust_plus.training.fitting.members import initial_member, member_settings, offload_step
    from inclust_plus.training.fitting.optim import adam
    from inclust_plus.training.network.module import ModuleConfig
    from inclust_plus.training.network.stacked import StackedNetworks

    member = ModuleConfig(n_features=data.n_features, n_covariates=len(data.covariate_categories),
                          n_labels=len(data.label_categories), **cfg.model.shape())
    settings = [member_settings(cfg, i) for i in range(k)]
    likelihoods = [lo.likelihood for _, lo in settings]  # as train_stacked: one bool, or member k's likelihood
    bernoulli = likelihoods[0] == "bernoulli" if len(set(likelihoods)) == 1 else torch.tensor([v == "bernoulli" for v in likelihoods], device=device)
    weights = dataclasses.replace(settings[0][1], likelihood="per member")
    unsupervised, lr = data.label_mode == "unsupervised", cfg.training.learning_rate

    def net():
        return StackedNetworks([initial_member(member, t.seed) for t, _ in settings]).to(device)

    def autograd(mode: str | None = None):  # eager, or the loss compiled in ``mode``
        n = net()
        opt = adam(n.parameters(), lr, device)
        loss_of = n.loss if mode is None else torch.compile(n.loss, mode=None if mode == "default" else mode, dynamic=False)

        def step(batch, tables, noise):
            terms = loss_of(*batch, noise, weights, bernoulli, unsupervised)
            opt.zero_grad()
            terms[0].sum().backward()
            opt.step()
            return terms
        return step, lambda: None

    out = {"eager": autograd(), **{f"compiled ({mode})": autograd(mode) for mode in modes}}
    if use_fast_step(cfg.training.fast_step, member, cfg.loss, cfg.training.precision, device.type):
        manual = ManualStep(net(), StepWorker() if offload_step(device, threads) else None)  # the trainer's choice
        out["hand-written"] = (lambda batch, tables, noise: manual(*batch, noise, weights, bernoulli, unsupervised,
                                                                   label_tables=tables, lr=lr), manual.close)
    return out


def measure(cfg, data, k: int, device, threads: int, rounds: int, steps: int, pool: int, modes) -> dict:
    import torch

    from inclust_plus.training.assembly.batches import DeviceRows

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    rows, bs = DeviceRows(data, device), min(cfg.training.batch_size, len(data.row_cell))
    batches = []
    for _ in range(pool):
        idx = torch.stack([torch.randperm(len(data.row_cell))[:bs] for _ in range(k)]).to(device)
        *batch, tables = rows.batch(idx, label_tables=True)
        batches.append((tuple(batch), tables, torch.randn(k, bs, cfg.model.latent_dim, device=device)))
    steps_of = contenders(cfg, data, k, device, threads, modes)
    first, rel, times = {}, {}, {name: [] for name in steps_of}
    try:
        for name, (step, _) in steps_of.items():  # warm-up: first step (compile) timed apart; 2 more steps
            sync()
            t0 = time.perf_counter()
            terms = step(*batches[0]).detach()
            sync()
            first[name] = round(time.perf_counter() - t0, 2)
            ref = terms if name == "eager" else ref
            rel[name] = float(((terms - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item())
            for s in (1, 2):
                step(*batches[s % pool])
        names = list(steps_of)
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
                step, _ = steps_of[name]
                sync()
                t0 = time.perf_counter()
                for s in range(steps):
                    step(*batches[s % pool])
                sync()
                times[name].append((time.perf_counter() - t0) * 1000 / steps)
    finally:
        for _, close in steps_of.values():
            close()
    ms = {name: round(statistics.median(v), 2) for name, v in times.items()}
    return {"device": device.type, "members": k, "threads": threads if device.type == "cpu" else None, "batch": bs,
            "ms_per_step": ms, "spread_ms": {n: [round(min(v), 2), round(max(v), 2)] for n, v in times.items()},
            "first_step_s": first, "rel_diff_vs_eager": {n: float(f"{v:.2e}") for n, v in rel.items()},
            "eager_over": {n: round(ms["eager"] / v, 2) for n, v in ms.items() if n != "eager"}, "break_even_steps": break_even(ms, first)}


def break_even(ms: dict, first: dict) -> dict:
    """Steps after which each compiled contender's saving over the best uncompiled one repays its compile time (None: never)."""
    best = min(v for n, v in ms.items() if not n.startswith("compiled"))
    return {n: (round((first[n] - first["eager"]) * 1000 / (best - v)) if v < best else None) for n, v in ms.items() if n.startswith("compiled")}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["## torch.compile of the training loss (benchmarks/training_compile.py)", "",
             f"Data: {result['data']}, {result['rows']:,} training rows, imputation preset. Measured {result['date']} on {m['cpu_model']}, "
             f"{m['cores']} cores shared with other work (load average {result['load_before']} before, {m['load_average_1_5_15']} after); "
             f"GPU: {m['gpu']}. Median ms per optimizer step (loss + backward + Adam) of {result['rounds']} alternating rounds of "
             f"{result['steps']} steps; first step (compile included; inductor cache: {result['inductor_cache']}) apart; break-even: steps "
             f"for compiled's saving over the best other contender to repay its compile (the preset trains {result['preset_steps']:,} steps); "
             "relative difference of the first loss terms to eager.", "",
             "| device | members | threads | contender | ms/step | eager / this | first step s | break-even steps | rel. diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows_measured"]:
        for name, v in row["ms_per_step"].items():
            lines.append(f"| {row['device']} | {row['members']} | {row['threads'] or '-'} | {name} | {v} | "
                         f"{row['eager_over'].get(name, 1.0)} | {row['first_step_s'][name]} | "
                         f"{row['break_even_steps'].get(name, '') or ('never' if name.startswith('compiled') else '')} | {row['rel_diff_vs_eager'][name]:.1e} |")
    lines += ["", "The trainer today: one torch thread per CPU process (training/fitting/members.py) and the hand-written step "
              "where its allow-list covers the setting (the preset's), else eager autograd; nothing is compiled.", "",
              *(f"Skipped: {s}." for s in result["skipped"]), "", f"**Verdict: {result['verdict']}**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--members", nargs="+", type=int, default=None, help="default: 1 and the preset's ensemble (6)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="torch CPU threads, one run each")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per contender per round")
    parser.add_argument("--cuda-modes", nargs="+", default=list(CUDA_MODES), choices=CUDA_MODES)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--warm-cache", action="store_true", help="inductor's default cache as found (default: a fresh one, cold compile)")
    parser.add_argument("--quick", action="store_true", help="CPU, synthetic cells, one network, 2 rounds of 2 steps")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    cold = not (args.quick or args.warm_cache)
    if cold:  # what compiling costs a first training run on a machine (read when inductor first compiles)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_cold_")
    import torch

    torch._dynamo.config.cache_size_limit = 64  # one compiled loss per contender network, members count and device
    load_before = [round(v, 2) for v in os.getloadavg()]
    cfg, data, source = training_data(args.data, args.quick)
    members = args.members or ([1] if args.quick else [1, cfg.model.ensemble])
    if args.quick:
        args.devices, args.rounds, args.steps = ["cpu"], 2, 2
    result = {"benchmark": "training_compile", "date": now(), "quick": args.quick, "data": source, "rows": len(data.row_cell),
              "rounds": args.rounds, "steps": args.steps, "load_before": load_before,
              "inductor_cache": "fresh (the first compile in this process is cold)" if cold else "default location, as found",
              "preset_steps": cfg.training.epochs * math.ceil(len(data.row_cell) / cfg.training.batch_size), "rows_measured": [], "skipped": []}
    save, stem, out = args.out is not None or not args.quick, "training_compile_quick" if args.quick else "training_compile", [args.out] if args.out else []
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            result["skipped"].append("cuda: torch sees no CUDA device (run on a GPU machine: benchmarks/gpu_device_check.sh)")
            continue
        modes = ["default"] if device == "cpu" else args.cuda_modes
        for threads in args.threads if device == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            for k in members:
                row = measure(cfg, data, k, torch.device(device), threads, args.rounds, args.steps, 4, modes)
                result["rows_measured"].append(row)
                if save:  # so far, in case a time limit stops the run (the full result replaces it)
                    write_result(stem, {**result, "partial": True, "machine": machine()}, *out)
                print(f"{device} K={k} threads={threads}: {row['ms_per_step']} ms/step, first step s {row['first_step_s']}, "
                      f"rel diff {row['rel_diff_vs_eager']}", flush=True)
    result["machine"] = machine()
    if torch.cuda.is_available():
        result["machine"]["gpu"] = torch.cuda.get_device_name(0)
    result["verdict"] = verdict(result["rows_measured"], max(members), result["preset_steps"])
    if save:
        if args.quick:
            write_result(stem, result, *out)
        else:
            publish(stem, result, markdown(result), *out)
    return result


def verdict(rows: list[dict], preset_k: int, preset_steps: int) -> str:
    """Compiled pays where, for the preset (CPU: with one thread, the trainer's), its training steps plus its compile take
    at least 15% less time than those of the best uncompiled contender (eager or hand-written). Defaults stay as they
    are either way: what a switch needs besides is said in the verdict."""
    def pays(row):
        ms, first = row["ms_per_step"], row["first_step_s"]
        best = min(v for n, v in ms.items() if not n.startswith("compiled")) * preset_steps / 1000
        return min(v * preset_steps / 1000 + first[n] for n, v in ms.items() if n.startswith("compiled")) < best / 1.15

    said = []
    for device, label in (("cpu", "CPU"), ("cuda", "GPU")):  # on the CPU, with the trainer's one thread (training/fitting/members.py)
        preset = [r for r in rows if r["device"] == device and r["members"] == preset_k and r["threads"] in (1, None)]
        said.append(f"measured, {'paid' if all(map(pays, preset)) else 'did not pay'} on {label}" if preset else f"{label} pending")
    why = (" (steps and compile only: a default waits for a whole preset fit measured with it - a compile per process and"
           " worker, a recompile for the last partial batch, a C++ compiler at run time)") if any("paid" in x for x in said) else ""
    return f"the preset ({preset_k} members): {'; '.join(said)}; training defaults unchanged{why}"


if __name__ == "__main__":
    main()
