"""Run the registered benchmarks (benchmarks/registry.py), then write BENCHMARKS.md.

    python benchmarks/run_all.py --list                 # every benchmark, its modes and what it needs
    python benchmarks/run_all.py                        # all of them (a benchmark whose needs are missing is skipped, said why)
    python benchmarks/run_all.py inference training     # any subset, by name
    python benchmarks/run_all.py --quick                # smoke run on tiny sizes, results to a temporary folder
    python benchmarks/run_all.py training-wall --other /tmp/main-ref   # side by side with another checkout

Each benchmark runs in its own Python process (so peak memory, thread pools and OpenMP settings
never leak from one into the next) and writes its results into ``benchmarks/results/`` (or
``--results``); BENCHMARKS.md and its detail page are then generated from every recorded result
by ``benchmarks/report.py``. A full run of everything takes hours on 2 cores (the accuracy and
device studies train the 6-network preset); name the ones a change concerns.

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
sys.path.insert(0, str(HERE))

from registry import BENCHMARKS, BY_NAME, Benchmark, missing  # noqa: E402

RESULTS = HERE / "results"


def command(bench: Benchmark, quick: bool, results: Path, other: Path | None = None) -> list[str]:
    """The command line of ``bench``'s full or quick run, writing into ``results``."""
    args = [a.replace("{other}", str(other)) for a in (bench.quick if quick else bench.full)]
    if bench.out == "dir":
        args += ["--out", str(results)]
    elif bench.out == "file":
        args += ["--out", str(results / f"{Path(bench.script).stem}.json")]
    return [sys.executable, str(HERE / bench.script), *args]


def listing() -> str:
    lines = []
    for b in BENCHMARKS:
        full = " ".join(b.full) or "(no arguments)"
        quick = " ".join(b.quick) if b.quick is not None else "(no quick mode)"
        needs = ", ".join(b.needs + tuple(f"{n} (full run)" for n in b.full_needs)) or "-"
        lines += [f"{b.name:26} {b.script}: {b.what}",
                  f"{'':26}   full: {full}  [<= {b.minutes} min]; quick: {quick}; needs: {needs}"]
    return "\n".join(lines)


def run_one(bench: Benchmark, quick: bool, results: Path, env: dict, other: Path | None) -> dict:
    lacking = missing(bench, quick, other)
    if lacking:
        print(f"== {bench.name}: skipped, needs {'; '.join(lacking)}", flush=True)
        return {"name": bench.name, "rc": "skipped"}
    cmd = command(bench, quick, results, other)
    print(f"== {bench.name}: {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}", flush=True)
    t0 = time.perf_counter()
    capture = bench.out == "stdout"
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=180 if quick else 60 * bench.minutes,
                              stdout=subprocess.PIPE if capture else None, text=True)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    if capture and rc == 0:  # runtime_memory.py prints its result; its own history file is not touched
        print(proc.stdout, end="")
        result = json.loads(proc.stdout)
        result["machine"] = {**result.get("machine", {}), "omp_wait_policy": env.get("OMP_WAIT_POLICY")}
        (results / "runtime_memory_latest.json").write_text(json.dumps(result, indent=1) + "\n")
    seconds = time.perf_counter() - t0
    print(f"== {bench.name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {seconds:.0f} s", flush=True)
    return {"name": bench.name, "rc": rc, "seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BY_NAME)}")
    parser.add_argument("--list", action="store_true", help="print every benchmark with its modes and needs, run nothing")
    parser.add_argument("--quick", action="store_true", help="tiny sizes; results go to a temporary folder unless --results is given")
    parser.add_argument("--other", type=Path, default=None, help="another checkout, for the benchmarks that compare with one")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results; a temp folder with --quick)")
    parser.add_argument("--no-report", action="store_true", help="do not write BENCHMARKS.md")
    parser.add_argument("--omp-wait-policy", choices=("auto", "default", "PASSIVE", "ACTIVE"), default="auto",
                        help="OpenMP wait policy of the benchmark processes (see the module docstring)")
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return 0
    unknown = [n for n in args.names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in args.names] if args.names else [b for b in BENCHMARKS if not args.quick or b.quick is not None]

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
    runs = [run_one(b, args.quick, results, env, args.other) for b in chosen]
    failed = [r["name"] for r in runs if r["rc"] not in (0, "skipped")]
    skipped = [r["name"] for r in runs if r["rc"] == "skipped"]
    print(f"== all: {len(runs) - len(failed) - len(skipped)} ok, {len(failed)} failed{f' {failed}' if failed else ''}, {len(skipped)} skipped "
          f"in {time.perf_counter() - started:.0f} s; results in {results}", flush=True)
    if not args.no_report:
        import report

        if args.quick or args.results:
            report.main(["--results", str(results), "--out", str(results / "BENCHMARKS.md"), "--details", str(results / "details.md")])
        else:
            report.main([])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
