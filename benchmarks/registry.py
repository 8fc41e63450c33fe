"""Every benchmark of benchmarks/, with how to run it: the one list run_all.py runs and --list prints.

A new benchmark script is one :class:`Benchmark` line here (tests/test_benchmarks_smoke.py fails
while a script in benchmarks/ is neither registered nor a declared helper). ``full`` are the
arguments of the run whose results BENCHMARKS.md shows, ``quick`` those of the smoke run on tiny
sizes (``None``: the script has no smoke mode and the quick run skips it). Every script writes
``<results>/<name>.json`` (and some a ``.md`` section) into the folder given by ``--out``.

What a run needs beyond this repository, checked before it starts (missing: skipped, with the reason):

- ``data``: the real MERFISH/scRNA-seq reference (``bench_common.DATA``; not in the repository);
- ``gpu``: CUDA visible to torch;
- ``triton``: a Triton server environment in ``INCLUST_TRITON_ENV`` (triton_models/README.md);
- ``checkout``: another checkout to compare with (``run_all.py --other DIR``, e.g. a worktree of main).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

NEEDS = ("data", "gpu", "triton", "checkout")


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    what: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = ("--quick",)
    needs: tuple[str, ...] = ()  # in both modes
    full_needs: tuple[str, ...] = ()  # only the full run (its quick run falls back to synthetic cells or the CPU)
    minutes: int = 10  # time limit of the full run
    out: str = "dir"  # "dir": --out RESULTS; "file": --out RESULTS/<name>.json; "stdout": prints its JSON

    def needed(self, quick: bool) -> tuple[str, ...]:
        return self.needs + (() if quick else self.full_needs)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("inference", "inference_throughput.py", "cells/s of the folded ONNX/TorchScript graphs vs PyTorch eager, GEMM efficiency",
              quick=("--quick", "--threads", "1"), minutes=7),
    Benchmark("e2e", "impute_e2e.py", "end-to-end inclust-run impute, 1M cells x 2,000 genes, next to bare onnxruntime",
              quick=("--quick", "--cells", "3000"), minutes=7),
    Benchmark("memory", "runtime_memory.py", "peak RSS of inclust-run impute on 1M cells (recorded as runtime_memory_latest.json)",
              full=("--cells", "1000000", "--no-record"), quick=("--cells", "3000", "--no-record"), minutes=5, out="stdout"),
    Benchmark("output-layout", "output_layout.py", "what the honest output layout costs inclust-run impute, old layout side by side"),
    Benchmark("ensemble", "ensemble_inference.py", "inference cost of the imputation preset's 6-network ensemble",
              quick=("--quick", "--threads", "1"), minutes=5),
    Benchmark("triton", "triton_load.py", "load test of a local tritonserver next to onnxruntime",
              quick=("--requests", "200", "--concurrency", "4"), needs=("triton",), out="file"),
    Benchmark("gpu", "gpu.py", "GPU imputation: feeds, precision, end to end on CUDA next to the CPU",
              full=("--device", "cuda"), quick=("--device", "cpu", "--quick"), full_needs=("gpu",)),
    Benchmark("training", "training_throughput.py", "training rows/s on the MERFISH reference vs the official 45,000 rows/s",
              full_needs=("data",), minutes=5),
    Benchmark("training-wall", "training_wall.py", "whole-process inclust-train wall time, this checkout vs another",
              full=("--other", "{other}"), full_needs=("data", "checkout"), minutes=15),
    Benchmark("ensemble-training", "ensemble_training.py", "ensemble members stacked in one process vs worker processes",
              full_needs=("data",), minutes=20),
    Benchmark("training-device", "training_device.py", "training on CPU vs CUDA: the imputation preset and a CITE-seq-sized model",
              full=("--devices", "cpu", "cuda"), full_needs=("data", "gpu"), minutes=30),
    Benchmark("training-compile", "training_compile.py", "torch.compile of the one loss definition vs eager autograd vs the hand-written step, 1 network and the preset's 6",
              full=("--threads", "1", "2"), full_needs=("data",), minutes=20),
    Benchmark("training-compile-fit", "training_compile_fit.py", "a whole imputation-preset fit with training.compile auto vs off, alternating",
              quick=None, needs=("data",), minutes=40),
    Benchmark("accuracy", "imputation_accuracy.py", "imputation accuracy on real MERFISH-panel splits vs kNN, ridge, cell-type mean",
              needs=("data",), minutes=40),
    Benchmark("imputation-splits", "imputation_splits.py", "the imputation preset and its read-outs vs kNN euclidean and cosine, five splits, plain and shifted",
              quick=("--splits", "standard", "--conditions", "plain", "--baselines-only"), needs=("data",), minutes=40),
    Benchmark("neighbours-throughput", "neighbours_throughput.py", "imputation graph cells/s with and without the latent-neighbour read-out",
              quick=None, needs=("data",), minutes=10),
    Benchmark("mapping", "mapping.py", "mapping a new batch without retraining vs training on it", needs=("data",), minutes=10),
    Benchmark("uncertainty", "uncertainty.py", "does the ensemble's spread say which imputed values to trust",
              quick=("--members", "2", "--epochs", "1", "--samples", "2"), needs=("data",), minutes=20),
    Benchmark("integration", "integration.py", "integration on harder synthetic data vs PCA baselines (seeds 0-2)",
              quick=("--cells", "300", "--epochs", "1", "--seed", "0"), minutes=10),
    Benchmark("integration-real", "integration_real.py", "integration of two real datasets with different panels and a technical effect",
              quick=("--epochs", "1"), needs=("data",), minutes=15),
    Benchmark("integration-real-effect0", "integration_real.py", "the same with the panels as the only difference",
              full=("--effect", "0"), quick=("--effect", "0", "--epochs", "1"), needs=("data",), minutes=15),
)

BY_NAME = {b.name: b for b in BENCHMARKS}

# Files of benchmarks/ that are not benchmarks themselves.
HELPERS = {
    "bench_common.py": "what every benchmark shares: machine description, result writing, model builders",
    "impute_e2e_compare.py": "impute_e2e.py's --compare-with mode: this tree's inclust-run against another checkout's",
    "registry.py": "this list",
    "run_all.py": "runs the registered benchmarks, then report.py",
    "report.py": "writes BENCHMARKS.md (headline tables) and docs/benchmarks.md (details) from results/",
    "report_common.py": "report helpers: loading results, number and table formats",
    "report_gpu.py": "the GPU section of the report",
    "report_runtime.py": "the runtime sections of the report (memory, Triton, ensemble, comparisons)",
    "report_training.py": "the training sections of the report",
    "gpu_device_check.sh": "runs the gpu, training-device and training-compile benchmarks (and the CUDA tests) in one call on a GPU machine",
}


def missing(bench: Benchmark, quick: bool, other: Path | None = None) -> list[str]:
    """What ``bench`` needs that this machine lacks (empty: it can run)."""
    from bench_common import DATA

    out = []
    for need in bench.needed(quick):
        if need == "data" and not DATA.is_file():
            out.append(f"the real data ({DATA})")
        elif need == "gpu" and not _cuda():
            out.append("a CUDA GPU")
        elif need == "triton" and not os.environ.get("INCLUST_TRITON_ENV"):
            out.append("a Triton server environment (INCLUST_TRITON_ENV)")
        elif need == "checkout" and other is None:
            out.append("another checkout to compare with (--other DIR)")
    return out


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
