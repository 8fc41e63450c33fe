"""An ensemble's members stacked in one process vs split over worker processes, on the CPU (issue 13).

Trains the imputation preset's 6 networks on the standard MERFISH split for a few epochs, the
contenders alternating run by run: ``workers = 1`` (all members stacked in this process, one
torch thread) and ``workers = 2`` (two fresh processes, each training 3 members stacked,
one thread each). Decides training/fitting/members.py ``worker_count``'s default.

    python benchmarks/ensemble_training.py              # 10 epochs, 2 runs each
    python benchmarks/ensemble_training.py --quick      # synthetic cells, 1 epoch, one run each
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, machine, now, write_result  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "merfish_scrna_reference.h5ad"


def run(split, workers: int, threads: int, epochs: int, members: int) -> dict:
    from inclust_plus.training.model import InClust
    from inclust_plus.training.presets import preset_config

    cfg = preset_config("imputation", {"model": {"ensemble": members},
                                       "training": {"epochs": epochs, "workers": workers, "threads": threads, "device": "cpu"}})
    t0 = time.perf_counter()
    _, _, result = InClust.fit(cfg, {"scrna": split.reference, "merfish": split.query}, progress=False)
    return {"wall_s": round(time.perf_counter() - t0, 2), "member_rows_per_s": round(result.rows_per_second)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from evaluation.splits import pseudo_spatial_split

    if args.quick:
        args.epochs, args.runs, args.members = 1, 1, 2
    if args.data.is_file() and not args.quick:
        import anndata

        adata, source = anndata.read_h5ad(args.data), args.data.name
    else:
        from training_throughput import _synthetic

        adata, source = _synthetic(1500), "synthetic"
    split = pseudo_spatial_split(adata, seed=0)
    contenders = {"stacked, 1 process": (1, 1), f"{min(2, args.members)} worker processes": (min(2, args.members), 1)}
    runs = {name: [] for name in contenders}
    for i in range(args.runs):
        for name in (list(contenders) if i % 2 == 0 else list(reversed(contenders))):
            runs[name].append(run(split, *contenders[name], args.epochs, args.members))
            print(f"{name:>22} run {i + 1}: {runs[name][-1]['wall_s']} s, {runs[name][-1]['member_rows_per_s']:,} member-rows/s", flush=True)
    medians = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    result = {"benchmark": "ensemble_training", "date": now(), "quick": args.quick, "data": source, "members": args.members,
              "epochs": args.epochs, "runs": runs, "median_wall_s": medians, "faster": min(medians, key=medians.get),
              "machine": machine()}
    if args.out is not None or not args.quick:
        write_result("ensemble_training_quick" if args.quick else "ensemble_training", result, *([args.out] if args.out else []))
    return result


if __name__ == "__main__":
    main()
