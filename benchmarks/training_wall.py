"""Whole-process wall time of ``inclust-train`` on the standard MERFISH split: this checkout vs another.

What a user waits for: the process from start to end - imports, reading the .h5ad files,
preprocessing, the training loop, writing model.pt and the loss plot, and the process's exit. Each
contender runs its own ``python -m inclust_plus.training.cli`` (here: the ``inclust-train`` console
script itself, through inclust_plus/launch.py) on the same files with its own defaults (threads, workers),
the contenders alternating run by run so that a busy machine slows both alike; the median of the
runs is reported. The other checkout (``--other``, e.g. ``git worktree add --detach /tmp/main-ref main``)
is imported through a folder of links shaped like the installed package, put first on PYTHONPATH.

    python benchmarks/training_wall.py --other /tmp/main-ref       # one network, 50 epochs, 3 runs each
    python benchmarks/training_wall.py --other /tmp/main-ref --preset --runs 1   # the 6-network preset + accuracy
    python benchmarks/training_wall.py --other /tmp/main-ref --busy   # the same with the other core kept busy
    python benchmarks/training_wall.py --quick                     # synthetic cells, this checkout only

Every model is scored the same way (this checkout loads each model.pt): mean Pearson over the
held-out genes of the query cells (the standard split of ../shared/data/README.md).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import DATA, ROOT, add_run_options, machine, now, write_result  # noqa: E402

# One network with the paper's defaults (task "custom": loss weights 5/1/1/50, constant learning rate).
ONE_NETWORK = 'task = "custom"\n[model]\nensemble = 1\n[training]\nepochs = {epochs}\nbatch_size = 500\n'
PRESET = 'task = "imputation"\n[training]\nepochs = {epochs}\n'  # 6 networks, 200 epochs, its tuned loss
DATASETS = ('[[datasets]]\nname = "scrna"\npath = "reference.h5ad"\nlabel_key = "cell_type"\n'
            '[[datasets]]\nname = "merfish"\npath = "query.h5ad"\n[views]\nquery = ["merfish"]\n')


def package_links(checkout: Path, folder: Path) -> Path:
    """A folder holding ``inclust_plus`` laid out as installed (training/, export/, runtime/ inside)."""
    pkg = folder / "inclust_plus"
    pkg.mkdir(parents=True)
    for f in (checkout / "inclust_plus").iterdir():
        (pkg / f.name).symlink_to(f)
    for sub in ("training", "export", "runtime"):
        (pkg / sub).symlink_to(checkout / sub)
    return folder


def write_split(folder: Path, data: Path | None, n_synthetic: int) -> object:
    """reference.h5ad and query.h5ad of the standard split (or of synthetic cells) in ``folder``."""
    from evaluation.splits import pseudo_spatial_split

    if data is not None:
        import anndata

        adata = anndata.read_h5ad(data)
    else:
        from training_throughput import _synthetic

        adata = _synthetic(n_synthetic)
    split = pseudo_spatial_split(adata, seed=0)
    split.reference.write_h5ad(folder / "reference.h5ad")
    split.query.write_h5ad(folder / "query.h5ad")
    return split


def run_contender(name: str, env: dict, config: Path, out: Path, seed: int | None = None) -> dict:
    extra = env.pop("_EXTRA_ARGS", "").split() + (["--seed", str(seed)] if seed is not None else [])
    cmd = [sys.executable, "-m", "inclust_plus.training.cli", str(config), "--out", str(out), "--force", "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=config.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    loop = re.search(r"epochs(?: each)? in ([0-9.]+) s", proc.stdout)
    return {"wall_s": round(wall, 2), "loop_s": float(loop.group(1)) if loop else None, "line": proc.stdout.strip().splitlines()[0],
            "load_average_1": round(os.getloadavg()[0], 2)}


def mean_pearson(model_path: Path, split) -> float:
    from inclust_plus.training.model import InClust
    from evaluation.splits import per_gene_correlation

    model = InClust.load(model_path)
    x = split.query.X
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
    y, _, _ = model.predict(x, "merfish", "merfish", target_covariate="scrna")
    genes = list(model.description.modalities[0].features)
    pred = y[:, [genes.index(g) for g in split.held_out]]
    return round(float(np.nanmean(per_gene_correlation(pred, split.truth))), 4)


def _name(args) -> str:
    precision = f"_{args.also_precision}" if args.also_precision and args.other is None else ""
    one_thread = "_other_one_thread" if args.only_other_one_thread else ""
    return ("training_wall" + ("_preset" if args.preset else "") + ("_seeds" if args.vary_seed else "") + precision + one_thread
            + ("_busy" if args.busy else "")
            + ("_quick" if args.quick else ""))


def _run_all(args, contenders: dict, runs: dict, work: Path, config: Path, split) -> None:
    """``args.runs`` runs of every contender, alternating (the order reversed every run)."""
    for i in range(args.runs):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for name in order:
            out = work / f"{name.replace(' ', '_')}_{i}.pt"
            seed = i if args.vary_seed else None
            r = run_contender(name, dict(contenders[name]), config, out, seed)
            r["mean_pearson"] = mean_pearson(out, split)
            if seed is not None:
                r["seed"] = seed
            runs[name].append(r)
            print(f"{name:>14} run {i + 1}: {r['wall_s']:.1f} s wall (loop {r['loop_s']} s), mean Pearson {r['mean_pearson']}", flush=True)
            if args.out is not None or not args.quick:  # what was measured so far survives a run cut short
                write_result(_name(args) + "_partial", {"runs": runs}, *([args.out] if args.out else []))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, default=None, help="another checkout to compare (e.g. a worktree of main)")
    parser.add_argument("--other-name", default="main")
    parser.add_argument("--other-one-thread", action="store_true",
                        help="also run the other checkout with OMP_NUM_THREADS=1 (separates its thread default from its code)")
    parser.add_argument("--only-other-one-thread", action="store_true",
                        help="run the other checkout only with OMP_NUM_THREADS=1 (a short run of the code-only speedup)")
    parser.add_argument("--also-precision", choices=["bf16", "fp16"], default=None,
                        help="also run this checkout with --precision (its accuracy and time next to fp32)")
    parser.add_argument("--other-args", default=None,
                        help='also run the other checkout with these inclust-train arguments (e.g. "--native off": main\'s Python step)')
    parser.add_argument("--also-autograd", action="store_true",
                        help="also run this checkout with --fast-step off (autograd next to the hand-written step)")
    parser.add_argument("--preset", action="store_true", help="the 6-network imputation preset (200 epochs) instead of one network")
    parser.add_argument("--vary-seed", action="store_true",
                        help="run i trains with --seed i (every contender the same seeds): accuracy over seeds, not one draw")
    parser.add_argument("--busy", action="store_true",
                        help="keep one core busy (a spinning process) during every run: a shared machine's load, reproducibly")
    add_run_options(parser, None, "default: 50 (one network) or the preset's 200", "runs per contender, alternating",
                    "synthetic cells, 2 epochs, one run (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.epochs = 1, 2
    epochs = args.epochs or (200 if args.preset else 50)
    use_data = args.data if args.data.is_file() and not args.quick else None

    with tempfile.TemporaryDirectory(prefix="training_wall_") as tmp:
        work = Path(tmp)
        split = write_split(work, use_data, 2000)
        config = work / "config.toml"
        config.write_text((PRESET if args.preset else ONE_NETWORK).format(epochs=epochs) + DATASETS)
        contenders = {"this checkout": {**os.environ}}
        if args.other is not None:
            links = package_links(args.other.resolve(), work / "other_pkg")
            contenders[args.other_name] = {**os.environ, "PYTHONPATH": os.pathsep.join([str(links), os.environ.get("PYTHONPATH", "")])}
            if args.other_one_thread or args.only_other_one_thread:
                contenders[f"{args.other_name}, OMP_NUM_THREADS=1"] = {**contenders[args.other_name], "OMP_NUM_THREADS": "1"}
            if args.other_args:
                contenders[f"{args.other_name} {args.other_args}"] = {**contenders[args.other_name], "_EXTRA_ARGS": args.other_args}
            if args.only_other_one_thread:
                del contenders[args.other_name]
                args.other_name = f"{args.other_name}, OMP_NUM_THREADS=1"
        if args.also_autograd:
            contenders["this checkout, autograd"] = {**os.environ, "_EXTRA_ARGS": "--fast-step off"}
        if args.also_precision:
            contenders[f"this checkout, {args.also_precision}"] = {**os.environ, "_EXTRA_ARGS": f"--precision {args.also_precision}"}
        runs: dict[str, list[dict]] = {name: [] for name in contenders}
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
        try:
            _run_all(args, contenders, runs, work, config, split)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()

    summary = {name: {"median_wall_s": statistics.median(r["wall_s"] for r in rs),
                      "median_mean_pearson": statistics.median(r["mean_pearson"] for r in rs),
                      "mean_mean_pearson": round(statistics.mean(r["mean_pearson"] for r in rs), 4)} for name, rs in runs.items()}
    result = {
        "benchmark": "training_wall",
        "date": now(),
        "quick": args.quick,
        "data": use_data.name if use_data else "synthetic (--quick or real data not found)",
        "what": ("imputation preset (6 networks, its defaults)" if args.preset else "one network, paper defaults (batch 500)")
                + f", {epochs} epochs, standard split; whole inclust-train process, median of {args.runs} alternating runs"
                + (", one core kept busy by a spinning process" if args.busy else "")
                + (", run i with training seed i" if args.vary_seed else ""),
        "runs": runs,
        "summary": summary,
        "machine": machine(),
    }
    if args.other is not None and args.other_name in summary:
        result["speedup_vs_other"] = round(summary[args.other_name]["median_wall_s"] / summary["this checkout"]["median_wall_s"], 2)
        print(f"this checkout is {result['speedup_vs_other']}x {args.other_name} (median whole-process wall)")
    if args.out is not None or not args.quick:
        write_result(_name(args), result, *([args.out] if args.out else []))
        partial = (args.out or ROOT / "benchmarks" / "results") / f"{_name(args)}_partial.json"
        partial.unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    main()
