"""Shared pieces of the issue-7 benchmarks: model shapes, seeded checkpoints, timing, machine, results.

Every benchmark builds its models here so that the numbers in BENCHMARKS.md refer to the same
shapes: the MERFISH model (153 genes, panel of 122 -> 153) and a CITE-seq-sized model
(20,000 genes -> 200 proteins), both with the paper's layer sizes and seeded random weights
(speed does not depend on the values). Timing is "best of several repeats", each repeat long
enough (``min_seconds``) for the clock to be accurate, because other work on a shared machine
only ever makes a repeat slower, never faster.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # evaluation/ (splits, synthetic data, metrics) is in the repository, not installed
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "merfish_scrna_reference.h5ad"  # the real data (../shared/data/README.md)
N_LABELS = 13


@dataclass(frozen=True)
class ModelShape:
    """A checkpoint layout: modalities (name, size), the benchmarked combination and its feature sets."""

    name: str
    modalities: tuple[tuple[str, int], ...]
    combination: str
    inputs: str
    outputs: str
    panel: int | None = None  # size of a partial first-modality panel (named "panel"), if the inputs are one
    preprocessing: bool = False  # counts preprocessing (normalize_total 1e4, log1p, max scale) on every modality
    members: int = 1  # > 1: an ensemble of that many networks merged into one (training/network/ensemble.py)

    @property
    def n_features(self) -> int:
        return sum(n for _, n in self.modalities)


MERFISH = ModelShape("merfish", (("rna", 153),), "merfish_to_rna", "merfish", "rna", panel=122)
CITESEQ = ModelShape("citeseq", (("rna", 20_000), ("protein", 200)), "rna_to_protein", "rna", "protein")


def description(shape: ModelShape, seed: int = 0) -> dict:
    """A checkpoint description (docs/ARCHITECTURE.md) for ``shape``, built like tests/export_toys.py."""
    schema, feature_sets, start = [], {}, 0
    rng = np.random.default_rng(seed)
    prep = {}
    for mod, n in shape.modalities:
        names = [f"{mod}{i:05d}" for i in range(n)]
        schema.append({"name": mod, "features": names})
        feature_sets[mod] = {"modalities": [mod], "features": list(range(start, start + n))}
        prep[mod] = (
            {"normalize_total": 1e4, "log1p": True, "scale": [float(v) for v in rng.uniform(4.0, 8.0, n)]}
            if shape.preprocessing
            else {"normalize_total": None, "log1p": False, "scale": None}
        )
        start += n
    if shape.panel is not None:
        first = shape.modalities[0][0]
        feature_sets[shape.inputs] = {"modalities": [first], "features": list(range(shape.panel))}
    covariates = ["reference", "query"]
    return {
        "name": f"{shape.name}_random",
        "schema": {"modalities": schema},
        "covariate": {"keys": ["dataset"], "categories": covariates},
        "labels": {"key": "cell_type", "categories": [f"type{i:02d}" for i in range(N_LABELS)], "mode": "supervised"},
        "preprocessing": prep,
        "feature_sets": feature_sets,
        "combinations": [
            {"name": shape.combination, "inputs": shape.inputs, "outputs": shape.outputs,
             "default_target_covariate": "reference", "default_covariate": "query"},
        ],
        "hyperparameters": {"seed": seed},
        "training": {"epochs": 0, "rows_per_second": 0.0, "history": {}},
    }


def make_module(shape: ModelShape, seed: int = 0):
    """The paper's layer sizes (encoder 200-50, latent 50, decoder 200) with seeded random weights
    (``shape.members`` such networks, seeds seed, seed + 1, ..., merged into one ensemble)."""
    import torch

    from inclust_plus.training.network.module import InClustModule, ModuleConfig

    from inclust_plus.training.network.ensemble import merge_members

    members = []
    for k in range(shape.members):
        torch.manual_seed(seed + k)
        members.append(InClustModule(ModuleConfig(n_features=shape.n_features, n_covariates=2, n_labels=N_LABELS)).eval())
    return merge_members(members)


def make_export(shape: ModelShape, folder: Path, seed: int = 0, torchscript: bool = True, table=None, **options) -> tuple[object, Path]:
    """Write ``model.pt`` (with the read-out's NeighbourTable ``table``, if given) and its export under ``folder``;
    returns (module, manifest path)."""
    from inclust_plus.contract.description import ReadoutRecord
    from inclust_plus.contract.description_io import readout_json
    from inclust_plus.export import export_model
    from inclust_plus.training.checkpoint import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    module = make_module(shape, seed)
    desc = description(shape, seed)
    if table is not None:  # the record that says what the table is (training/readout.py writes it after training)
        desc["readout"] = readout_json(ReadoutRecord(shape.combination, tuple(table.features), len(table.latents), ("reference",),
                                                     table.k_latent, table.k_inputs, tuple(table.weights)))
    ckpt = save_checkpoint(folder / "model.pt", module, desc, neighbours=table)
    manifest = export_model(ckpt, folder / "export", combinations=[shape.combination], torchscript=torchscript, force=True, **options)
    return module, manifest


def merfish_checkpoint(path: Path, genes: int = 153, panel: int = 122, decoded: int | None = None, seed: int = 0,
                       name: str = "merfish_shaped_random") -> Path:
    """model.pt of one random network shaped like the demo model: ``genes`` genes named like the real
    data's (gene000, ...), the graph ``merfish_to_rna`` from the first ``panel`` genes to the first
    ``decoded`` (default: all), covariates scrna/merfish. What the runtime and Triton load tests run."""
    import torch

    from inclust_plus.training.checkpoint import save_checkpoint
    from inclust_plus.training.network.module import InClustModule, ModuleConfig

    torch.manual_seed(seed)
    module = InClustModule(ModuleConfig(n_features=genes, n_covariates=2, n_labels=N_LABELS)).eval()
    sets = {"rna": range(genes), "merfish": range(panel), "decoded": range(decoded or genes)}
    desc = {
        "name": name,
        "schema": {"modalities": [{"name": "rna", "features": [f"gene{i:03d}" for i in range(genes)]}]},
        "covariate": {"keys": ["dataset"], "categories": ["scrna", "merfish"]},
        "labels": {"key": "cell_type", "categories": [f"type{i:02d}" for i in range(N_LABELS)], "mode": "supervised"},
        "preprocessing": {"rna": {"normalize_total": None, "log1p": False, "scale": None}},
        "feature_sets": {k: {"modalities": ["rna"], "features": list(v)} for k, v in sets.items()},
        "combinations": [{"name": "merfish_to_rna", "inputs": "merfish", "outputs": "decoded", "default_target_covariate": "scrna"}],
        "hyperparameters": {"seed": seed},
        "training": {"epochs": 0, "rows_per_second": 0.0, "history": {}},
    }
    return save_checkpoint(path, module, desc)


def best_time(fn: Callable[[], object], repeats: int = 5, min_seconds: float = 0.05, max_seconds: float = 20.0) -> float:
    """Seconds per call: the best, over ``repeats``, of the mean over a loop of at least ``min_seconds``.

    One warm-up call first (allocations, lazy initialisation); stops early after ``max_seconds``.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    loops = max(1, int(min_seconds / once))
    best = once
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
        if time.perf_counter() - started > max_seconds:
            break
    return best


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict:
    """What the numbers were measured on, including how busy the machine was (load average)."""
    cpu = _lscpu()
    flags = cpu.get("Flags", "").split()
    info = {
        "cpu_model": cpu.get("Model name", platform.processor() or platform.machine()),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "l3_cache": cpu.get("L3 cache"),
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "hypervisor": cpu.get("Hypervisor vendor"),
        "memory_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "gpu": "none (no GPU on this machine)",
    }
    for mod in ("numpy", "onnxruntime", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _replace_text(path: Path, text: str) -> Path:
    """Write ``path`` through a temporary beside it, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_result(name: str, result: dict, out_dir: Path = RESULTS) -> Path:
    """``benchmarks/results/<name>.json`` (overwritten: the latest run is the one reported)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return _replace_text(out_dir / f"{name}.json", json.dumps(result, indent=1) + "\n")


# Run by a fresh interpreter: ru_maxrss of a process counts its life before exec too, and a child
# forked straight from a torch-laden benchmark process would start with that process's RSS.
_LAUNCHER = """
import json, os, subprocess, sys, time
cmd, log = json.loads(sys.argv[1]), sys.argv[2]
with open(log, "w") as err:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss, "wall": wall,
                  "cpu": usage.ru_utime + usage.ru_stime}))
"""


def run_measured(cmd: list[str], log: Path) -> dict:
    """``wait4``'s account of ``cmd`` run from a small fresh launcher: rc, maxrss_kib (KiB on Linux),
    wall and cpu (user + system) seconds; a failing command stops the benchmark with its stderr tail."""
    import sys

    out = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(cmd), str(log)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"{Path(cmd[0]).name} failed ({res['rc']}): {Path(log).read_text()[-2000:]}")
    return res


def publish(stem: str, result: dict, markdown: str, out_dir: Path = RESULTS) -> Path:
    """A benchmark's JSON (:func:`write_result`) and its own ``## `` section ``<stem>.md``, which
    report.py copies into BENCHMARKS.md; both written atomically; the Markdown is printed too."""
    path = write_result(stem, result, out_dir)
    _replace_text(Path(out_dir) / f"{stem}.md", markdown)
    print(markdown)
    return path


def io_sizes(src: Path, out: Path, nonzeros: int, batch_size: int) -> dict:
    """The input/output part of a streaming run's result: stored values, file sizes, batch."""
    return {"nonzeros": int(nonzeros), "input_mb": round(Path(src).stat().st_size / 2**20, 1),
            "output_mb": round(Path(out).stat().st_size / 2**20, 1), "batch_size": batch_size}


def add_run_options(parser, epochs: int | None, epochs_help: str, runs_help: str, quick_help: str) -> None:
    """The options every training benchmark takes: --data, --epochs, --runs, --quick, --out."""
    parser.add_argument("--data", type=Path, default=DATA, help="the real MERFISH reference (../shared/data)")
    parser.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    parser.add_argument("--runs", type=int, default=3, help=runs_help)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")


def set_threads(n: int) -> None:
    """torch intra-op threads (the onnxruntime sessions get theirs through SessionOptions)."""
    import torch

    torch.set_num_threads(n)


def _counts(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(1, 21, n).astype(np.float32)


def write_sparse_counts_h5ad(
    path: Path,
    n_cells: int,
    genes: list[str],
    density: float,
    chunk: int = 50_000,
    seed: int = 0,
    values: Callable[[np.random.Generator, int], np.ndarray] = _counts,
    dataset: str = "query",
) -> int:
    """A CSR h5ad of ``n_cells`` x ``genes`` at ``density``, written chunk by chunk.

    Stored values come from ``values(rng, n)`` (default: counts 1-20). Written with h5py in anndata's
    on-disk layout (no AnnData in memory), with an obs column ``dataset`` = ``dataset`` for every
    cell. Returns the number of stored values.
    """
    import h5py

    rng = np.random.default_rng(seed)
    n_genes = len(genes)
    str_dt = h5py.string_dtype()

    def strings(group, name, values):
        ds = group.create_dataset(name, data=np.asarray(values, dtype=object), dtype=str_dt)
        ds.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        return ds

    with h5py.File(path, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": np.array([n_cells, n_genes])})
        data = x.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
        indices = x.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
        indptr = x.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        indptr[0] = 0
        nnz = 0
        for start in range(0, n_cells, chunk):
            stop = min(n_cells, start + chunk)
            rows, cols = np.nonzero(rng.random((stop - start, n_genes), dtype=np.float32) < density)
            data.resize((nnz + len(rows),))
            indices.resize((nnz + len(rows),))
            data[nnz:] = values(rng, len(rows))
            indices[nnz:] = cols.astype(np.int32)
            indptr[start + 1 : stop + 1] = nnz + np.cumsum(np.bincount(rows, minlength=stop - start))
            nnz += len(rows)
        obs = f.create_group("obs")
        obs.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index"})
        obs.attrs["column-order"] = np.asarray(["dataset"], dtype=str_dt)
        names = obs.create_dataset("_index", shape=(n_cells,), dtype=str_dt)
        names.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        for start in range(0, n_cells, 200_000):
            stop = min(n_cells, start + 200_000)
            names[start:stop] = np.char.add("cell", np.arange(start, stop).astype(str)).astype(object)
        cat = obs.create_group("dataset")
        cat.attrs.update({"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": np.False_})
        strings(cat, "categories", [dataset])
        codes = cat.create_dataset("codes", data=np.zeros(n_cells, np.int8))
        codes.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        var = f.create_group("var")
        var.attrs.update({"encoding-type": "dataframe", "encoding-version": "0.2.0", "_index": "_index"})
        var.attrs["column-order"] = np.asarray([], dtype=str_dt)
        strings(var, "_index", genes)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            f.create_group(key).attrs.update({"encoding-type": "dict", "encoding-version": "0.1.0"})
    return nnz


def machine_line(threads: int) -> str:
    """One line naming the machine and its load, for a result measured with ``threads`` torch threads."""
    m = machine()
    return (f"{m['cpu_model']}, {m['cores']} cores shared with other work (load average {m['load_average_1_5_15'][0]} at the end), "
            f"{threads} torch thread(s) per process")
