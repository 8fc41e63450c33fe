"""GPU imputation that pays (issue 11): feeds, precision and end-to-end runs on CUDA next to the CPU.

Runs on any machine; what needs CUDA is skipped (recorded as null) without it. Sections:

- ``feeds``: the CITE-seq-sized graph (20,000 genes -> 200 proteins, counts preprocessing folded)
  at 5% density, per batch size: dense vs CSR feeds, each from numpy (``session.run``) and through
  IO binding (page-locked buffers on CUDA), plus the dense graph on inputs already on the device
  (CUDA: the compute bound). Each row carries the bytes sent per cell and, on CUDA, the PCIe bound
  for those bytes (measured pinned host-to-device bandwidth / bytes per cell).
- ``precision``: max |diff| of fp32 / tf32 / fp16 (CUDA) and the fp16 graph (CPU) against fp32 on CPU.
- ``e2e``: ``inclust-run impute`` wall time per contender (CPU dense, CPU CSR, CUDA auto, CUDA
  TorchScript, optionally a baseline ``inclust-run`` such as main's), interleaved repetitions so
  load hits all alike, for 1M x 2,000 genes @10% and 200k x 20,000 @5% (``--quick``: 20k x 200),
  next to the I/O floor (h5py alone: read the CSR input chunk by chunk, write an output of the same
  size) and the start-up time (wall of the same command on 1,000 cells).

    python benchmarks/gpu.py --device cuda            # the full run (GPU machine)
    python benchmarks/gpu.py --device cpu --quick     # smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ModelShape, best_time, machine, make_export, now, write_result, write_sparse_counts_h5ad  # noqa: E402

CUDA = "CUDAExecutionProvider"
# inclust-run through this interpreter (the GPU machine installs the package with pip --target: no console script on PATH)
INCLUST_RUN = [sys.executable, "-c", "from inclust_plus.runtime.cli import main; main()"]


def shape_for(genes: int, proteins: int) -> ModelShape:
    return ModelShape(f"rna{genes}_to_protein{proteins}", (("rna", genes), ("protein", proteins)), "rna_to_protein", "rna", "protein", preprocessing=True)


def sparse_counts(n: int, genes: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(1, 21, (n, genes)) * (rng.random((n, genes)) < density)).astype(np.float32)


def session(path: Path, cuda: bool, precision: str = "fp32"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    providers = [(CUDA, {"use_tf32": "1" if precision == "tf32" else "0"}), "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


def h2d_bandwidth(nbytes: int = 256 * 2**20) -> float | None:
    """Pinned host-to-device GB/s through onnxruntime (OrtValue to 'cuda' from a page-locked buffer)."""
    import onnxruntime as ort

    from inclust_plus.runtime.pinned import host_registry

    reg = host_registry(True)
    if reg is None:
        return None
    buf = np.ones(nbytes // 4, np.float32)
    reg.register([buf])
    try:
        seconds = best_time(lambda: ort.OrtValue.ortvalue_from_numpy(buf, "cuda", 0), repeats=5, min_seconds=0.0)
    finally:
        reg.close()
    return nbytes / seconds / 1e9


def feeds_section(manifest: Path, x_raw: np.ndarray, batches: list[int], cuda: bool) -> dict:
    import onnxruntime as ort

    from inclust_plus.export.csr_graph import csr_feeds
    from inclust_plus.runtime.backend import OnnxBackend
    from inclust_plus.runtime.manifest import load_manifest

    graph = load_manifest(manifest).graphs[0]
    csr_graph = graph.variant("csr")
    backend = OnnxBackend("cuda" if cuda else "cpu")
    gbps = h2d_bandwidth() if cuda else None
    dense_s, csr_s = session(graph.path, cuda), session(csr_graph.path, cuda)
    rows = []
    for batch in batches:
        n = len(x_raw) - len(x_raw) % batch
        cov = np.ones(batch, np.int64)
        chunks = [x_raw[s : s + batch] for s in range(0, n, batch)]
        csrs = [csr_feeds(c) for c in chunks]
        nnz = sum(len(c["values"]) for c in csrs) / n
        dense_bytes, csr_bytes = 4 * x_raw.shape[1] + 16, 12 * nnz + 16

        def numpy_dense():
            for c in chunks:
                dense_s.run(None, {"x": c, "covariate": cov, "target_covariate": cov})

        def numpy_csr():
            for c in csrs:
                csr_s.run(None, {**c, "covariate": cov, "target_covariate": cov})

        def bound(g, feeds_list):
            def go():
                for f in feeds_list:
                    backend.run_feeds(g, f, cov, cov)
            return go

        row = {"batch": batch, "cells": n, "stored_per_cell": round(nnz, 1), "dense_bytes_per_cell": dense_bytes, "csr_bytes_per_cell": round(csr_bytes, 1)}
        contenders = {"dense_numpy": numpy_dense, "csr_numpy": numpy_csr,
                      "dense_iobinding": bound(graph, [{"x": c} for c in chunks]), "csr_iobinding": bound(csr_graph, csrs)}
        if cuda:
            on_device = [ort.OrtValue.ortvalue_from_numpy(c, "cuda", 0) for c in chunks]
            cov_d = ort.OrtValue.ortvalue_from_numpy(cov, "cuda", 0)

            def resident():
                for v in on_device:
                    b = dense_s.io_binding()
                    b.bind_ortvalue_input("x", v)
                    b.bind_ortvalue_input("covariate", cov_d)
                    b.bind_ortvalue_input("target_covariate", cov_d)
                    for name in ("y", "latent", "label_probs"):
                        b.bind_output(name, "cuda")
                    dense_s.run_with_iobinding(b)
            contenders["dense_on_device"] = resident
        for name in contenders:  # interleaved: one pass of each, best of 3
            row[f"{name}_cells_per_s"] = 0.0
        for _ in range(3):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                row[f"{name}_cells_per_s"] = max(row[f"{name}_cells_per_s"], round(n / (time.perf_counter() - t0)))
        if gbps:
            row["pcie_bound_dense_cells_per_s"] = round(gbps * 1e9 / dense_bytes)
            row["pcie_bound_csr_cells_per_s"] = round(gbps * 1e9 / csr_bytes)
            row["csr_iobinding_share_of_pcie_bound"] = round(row["csr_iobinding_cells_per_s"] / row["pcie_bound_csr_cells_per_s"], 3)
        rows.append(row)
    return {"h2d_pinned_gb_per_s": None if gbps is None else round(gbps, 1), "rows": rows}


def precision_section(manifest: Path, x_raw: np.ndarray, cuda: bool) -> dict:
    from inclust_plus.runtime.manifest import load_manifest

    graph = load_manifest(manifest).graphs[0]
    cov = np.ones(len(x_raw), np.int64)
    feeds = {"x": x_raw, "covariate": cov, "target_covariate": cov}
    ref = session(graph.path, False).run(None, feeds)

    def diff(outs):
        return float(max(np.abs(a.astype(np.float64) - b).max() for a, b in zip(outs, ref)))

    fp16 = graph.variant("dense", "fp16")
    out = {"cpu_fp16_graph": diff(session(fp16.path, False).run(None, feeds)) if fp16 else None}
    for p in ("fp32", "tf32", "fp16"):
        g = fp16 if p == "fp16" else graph
        out[f"cuda_{p}"] = diff(session(g.path, True, p).run(None, feeds)) if cuda and g is not None else None
    out["cpu_parity_bound"] = "1e-5 + 1e-6 x |value|"
    return out


def io_floor(src: Path, out: Path, n_outputs: int, chunk: int = 65_536) -> float:
    """Seconds to read the CSR input chunk by chunk and write a float32 output of the run's size, h5py only."""
    import h5py

    t0 = time.perf_counter()
    with h5py.File(src, "r") as f, h5py.File(out, "w") as g:
        x = f["X"]
        ptr = x["indptr"][()]
        n = len(ptr) - 1
        y = g.create_dataset("X", shape=(n, n_outputs), dtype=np.float32)
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            x["data"][ptr[s] : ptr[e]]
            x["indices"][ptr[s] : ptr[e]]
            y[s:e] = np.zeros((e - s, n_outputs), np.float32)
    return time.perf_counter() - t0


def e2e_section(size: dict, work: Path, cuda: bool, baseline: str | None, reps: int, only: list[str] | None = None) -> dict:
    shape = shape_for(size["genes"], size["proteins"])
    _, manifest = make_export(shape, work / f"model{size['genes']}", torchscript=cuda, fold_preprocessing=True)
    genes = [f"rna{i:05d}" for i in range(size["genes"])]
    src, tiny = work / "cells.h5ad", work / "tiny.h5ad"
    write_sparse_counts_h5ad(src, size["cells"], genes, size["density"])
    write_sparse_counts_h5ad(tiny, 1000, genes, size["density"])
    exe = INCLUST_RUN
    contenders = {"cpu_dense": [exe, "--device", "cpu", "--input-format", "dense"], "cpu_csr": [exe, "--device", "cpu", "--input-format", "csr"]}
    if cuda:
        contenders["cuda_auto"] = [exe, "--device", "cuda"]
        contenders["cuda_dense"] = [exe, "--device", "cuda", "--input-format", "dense"]
        contenders["cuda_torchscript"] = [exe, "--device", "cuda", "--torchscript"]
    if baseline:
        contenders["baseline_cpu"] = [baseline, "--device", "cpu"]
    if only:
        contenders = {k: v for k, v in contenders.items() if k in only}
    walls = {k: [] for k in contenders}
    startup = {}

    def command(argv, inp):
        return [*(argv[0] if isinstance(argv[0], list) else [argv[0]]), "impute", "--onnx", str(manifest), "--input", str(inp), "--output", str(work / "out.h5ad"),
                "--combination", shape.combination, "--quiet", "--force", *argv[1:]]

    for name, argv in contenders.items():  # start-up: the whole command on 1,000 cells
        t0 = time.perf_counter()
        ok = subprocess.run(command(argv, tiny), capture_output=True).returncode == 0
        startup[name] = round(time.perf_counter() - t0, 2) if ok else None
    floor = min(io_floor(src, work / "floor.h5ad", size["proteins"] + 50 + 13) for _ in range(2))
    for _ in range(reps):
        for name, argv in contenders.items():
            t0 = time.perf_counter()
            res = subprocess.run(command(argv, src), capture_output=True, text=True)
            walls[name].append(time.perf_counter() - t0 if res.returncode == 0 else None)
            if res.returncode != 0:
                print(f"gpu.py: {name} failed: {res.stderr.strip()[-300:]}", flush=True)
    best = {k: min([w for w in v if w is not None], default=None) for k, v in walls.items()}
    cps = {k: None if w is None else round(size["cells"] / w) for k, w in best.items()}
    return {**size, "wall_s": {k: None if w is None else round(w, 2) for k, w in best.items()}, "cells_per_s": cps,
            "io_floor_s": round(floor, 2), "io_floor_cells_per_s": round(size["cells"] / floor), "startup_s": startup}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--baseline-exe", default=None, help="another inclust-run (e.g. main's) to time side by side on CPU")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-feeds", action="store_true", help="skip the feeds and precision sections")
    parser.add_argument("--contenders", default=None, help="comma-separated e2e contenders (default all: cpu_dense, cpu_csr, cuda_auto, "
                                                            "cuda_dense, cuda_torchscript, baseline_cpu)")
    parser.add_argument("--cells", type=int, nargs="+", default=None, help="override the e2e sizes' cell counts (short CPU runs)")
    parser.add_argument("--sizes", default=None, help="comma-separated e2e sizes to run, by index (0: 1M x 2,000, 1: 200k x 20,000)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    cuda = args.device == "cuda" and CUDA in ort.get_available_providers()
    genes, proteins = (200, 20) if args.quick else (20_000, 200)
    sizes = ([{"cells": 20_000, "genes": 200, "proteins": 20, "density": 0.10}] if args.quick else
             [{"cells": 1_000_000, "genes": 2_000, "proteins": 200, "density": 0.10}, {"cells": 200_000, "genes": 20_000, "proteins": 200, "density": 0.05}])
    if args.sizes:
        sizes = [sizes[int(i)] for i in args.sizes.split(",")]
    if args.cells:
        sizes = [{**s, "cells": c} for s, c in zip(sizes, args.cells)]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="inclust_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = {"benchmark": "gpu", "date": now(), "quick": args.quick, "device_asked": args.device, "cuda": cuda,
                  "onnxruntime_version": ort.__version__, "providers": ort.get_available_providers()}
        if not args.skip_feeds:
            _, manifest = make_export(shape_for(genes, proteins), work / "feeds", torchscript=False, fold_preprocessing=True, fp16=True)
            # On CPU every session keeps its dense [batch, 20,000] intermediates in its arena (several GB at
            # batch 16,384 for four sessions: out of memory on a 23 GB machine), so CPU feeds stop at 1,024.
            x = sparse_counts(2048 if args.quick else (32_768 if cuda else 4096), genes, 0.05)
            result["feeds"] = feeds_section(manifest, x, [256] if args.quick else ([1024, 4096, 16384] if cuda else [256, 1024]), cuda)
            result["precision"] = precision_section(manifest, x[:1024], cuda)
            print(json.dumps(result["feeds"], indent=1), flush=True)
        if not args.skip_e2e:
            result["e2e"] = [e2e_section(s, work, cuda, args.baseline_exe, args.reps or (1 if args.quick else 2),
                                       args.contenders.split(",") if args.contenders else None) for s in sizes]
            print(json.dumps(result["e2e"], indent=1), flush=True)
        result["machine"] = machine()
        write_result("gpu_quick" if args.quick else "gpu", result, *([args.out] if args.out else []))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
