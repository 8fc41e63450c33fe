"""Run every benchmark of issue 7 (and the runtime-memory one) and write BENCHMARKS.md.

    python benchmarks/run_all.py                 # the full set, about 10 minutes on 2 cores
    python benchmarks/run_all.py --quick         # smoke run on tiny sizes (under a minute), results to a temp folder
    python benchmarks/run_all.py --only inference training
    python benchmarks/run_all.py --with-triton --with-accuracy   # also the Triton load test and the 25-minute accuracy study

Each benchmark runs in its own Python process (so peak memory, thread pools and OpenMP settings
never leak from one into the next) and writes ``benchmarks/results/<name>.json``; BENCHMARKS.md
is then generated from all recorded results by ``benchmarks/report.py``.

OpenMP wait policy (``--omp-wait-policy``, default ``auto``): on an idle machine PyTorch's default
(spinning threads) is fastest (training: 80k rows/s against 62k with PASSIVE on 2 cores), but
when anything else runs, spinning OpenMP threads fight for the cores and the PyTorch contenders
(eager, TorchScript, training) lose up to 100x, which would flatter the onnxruntime numbers.
``auto`` leaves the default when the 1-minute load average is below half the cores and sets
OMP_WAIT_POLICY=PASSIVE otherwise. The value used is recorded with each result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

# name -> (script, full-run arguments, quick-run arguments, timeout seconds of a full run)
BENCHMARKS: dict[str, tuple[str, list[str], list[str], int]] = {
    "inference": ("inference_throughput.py", [], ["--quick", "--threads", "1"], 420),
    "e2e": ("impute_e2e.py", [], ["--quick", "--cells", "3000"], 420),
    "training": ("training_throughput.py", [], ["--quick"], 300),
    # runtime_memory.py keeps its own history file; run_all records its run in runtime_memory_latest.json
    "memory": ("runtime_memory.py", ["--cells", "1000000", "--no-record"], ["--cells", "3000", "--no-record"], 300),
    "triton": ("triton_load.py", [], ["--requests", "200", "--concurrency", "4"], 600),
    "accuracy": ("imputation_accuracy.py", [], ["--quick"], 1800),
    "ensemble": ("ensemble_inference.py", [], ["--quick", "--threads", "1"], 300),
}
DEFAULT = ("inference", "e2e", "training", "memory", "ensemble")


def command(name: str, quick: bool, results: Path) -> list[str]:
    script, full, quick_args, _ = BENCHMARKS[name]
    args = list(quick_args if quick else full)
    if name in ("inference", "e2e", "training", "ensemble"):
        args += ["--out", str(results)]
    elif name == "triton":
        args += ["--out", str(results / "triton_load.json")]
    elif name == "accuracy":
        args += ["--out", str(results)]
    return [sys.executable, str(HERE / script), *args]


def run_one(name: str, quick: bool, results: Path, env: dict) -> dict:
    cmd = command(name, quick, results)
    timeout = 120 if quick else BENCHMARKS[name][3]
    print(f"== {name}: {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}", flush=True)
    t0 = time.perf_counter()
    capture = name == "memory"  # it prints its result as JSON
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=timeout, stdout=subprocess.PIPE if capture else None, text=True)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if capture and rc == 0:
        print(proc.stdout, end="")
        result = json.loads(proc.stdout)
        result["machine"] = {**result.get("machine", {}), "omp_wait_policy": env.get("OMP_WAIT_POLICY")}
        (results / "runtime_memory_latest.json").write_text(json.dumps(result, indent=1) + "\n")
    seconds = time.perf_counter() - t0
    print(f"== {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {seconds:.0f} s", flush=True)
    return {"name": name, "rc": rc, "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes; results go to a temporary folder unless --results is given")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--with-triton", action="store_true", help="also the Triton load test (needs INCLUST_TRITON_ENV, see triton_models/README.md)")
    parser.add_argument("--with-accuracy", action="store_true", help="also the imputation accuracy study (about 25 minutes)")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results; a temp folder with --quick)")
    parser.add_argument("--no-report", action="store_true", help="do not write BENCHMARKS.md")
    parser.add_argument("--omp-wait-policy", choices=("auto", "default", "PASSIVE", "ACTIVE"), default="auto",
                        help="OpenMP wait policy of the benchmark processes (see the module docstring)")
    args = parser.parse_args(argv)

    names = list(args.only or DEFAULT)
    if not args.only:
        names += ["triton"] * args.with_triton + ["accuracy"] * args.with_accuracy
    results = args.results or (Path(tempfile.mkdtemp(prefix="inclust_bench_")) if args.quick else RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    policy = args.omp_wait_policy
    if policy == "auto" and "OMP_WAIT_POLICY" not in env:
        busy = os.getloadavg()[0] >= 0.5 * (os.cpu_count() or 1)
        policy = "PASSIVE" if busy else "default"
        print(f"== 1-minute load average {os.getloadavg()[0]:.2f}: OpenMP wait policy {policy}", flush=True)
    if policy in ("PASSIVE", "ACTIVE"):
        env["OMP_WAIT_POLICY"] = policy
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    runs = [run_one(name, args.quick, results, env) for name in names]
    failed = [r["name"] for r in runs if r["rc"] != 0]
    print(f"== all: {len(runs) - len(failed)}/{len(runs)} ok in {time.perf_counter() - started:.0f} s; results in {results}", flush=True)
    if not args.no_report:
        sys.path.insert(0, str(HERE))
        import report

        out = (results / "BENCHMARKS.md") if args.quick or args.results else ROOT / "BENCHMARKS.md"
        report.main(["--results", str(results), "--out", str(out)])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
