"""Inference throughput (cells/s) of the folded graphs against PyTorch eager, and their GEMM efficiency.

For the MERFISH model (merfish_to_rna, 122 -> 153 genes) and a CITE-seq-sized model
(rna_to_protein, 20,000 genes -> 200 proteins), both with seeded random weights, at batch 1, 64,
1,024 and 16,384, side by side in one process and with the same number of threads:

- PyTorch eager, unfolded: what a user of the PyTorch model runs (``InClust.predict``): zero-fill a
  full-width x, copy the input columns in, ``module.predict`` with the input mask, take the
  output columns. Same inputs and outputs as the graph;
- the folded ONNX graph on onnxruntime, in a session built by the runtime's own
  :class:`~inclust_plus.runtime.backend.OnnxBackend` (its thread and execution settings);
- the same session with IO binding (inputs and preallocated outputs bound once), as a serving
  loop that keeps its buffers would call it;
- the folded TorchScript twin (``torch.jit.load``).

GEMM efficiency: the FLOPs of a graph's Gemm nodes (2 x batch x in x out each) divided by its
time give its achieved GFLOP/s; the same GEMMs run alone (torch ``linear`` and numpy ``@`` on
matrices of exactly those shapes, best of both and of several repeats) give the machine's rate
for those shapes. A square 2,048^3 GEMM gives the machine's peak.

    python benchmarks/inference_throughput.py           # about 3 minutes on 2 cores
    python benchmarks/inference_throughput.py --quick   # small models, small batches (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import CITESEQ, MERFISH, ModelShape, best_time, machine, make_export, now, write_result  # noqa: E402

BATCHES = (1, 64, 1024, 16384)
QUICK_SHAPES = (
    ModelShape("merfish", (("rna", 153),), "merfish_to_rna", "merfish", "rna", panel=122),
    ModelShape("citeseq_small", (("rna", 2000), ("protein", 50)), "rna_to_protein", "rna", "protein"),
)


def gemm_layers(onnx_path: Path) -> list[tuple[int, int]]:
    """(in, out) of every Gemm node of an exported graph, from its weight initializers."""
    import onnx

    model = onnx.load(str(onnx_path))
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            out, inp = shapes[node.input[1]]  # weights are [out, in] (transB=1)
            layers.append((int(inp), int(out)))
    return layers


TIMING = {"repeats": 5, "min_seconds": 0.05}  # best_time settings; --quick makes them small


def _time(fn, budget: float) -> float:
    return best_time(fn, repeats=TIMING["repeats"], min_seconds=TIMING["min_seconds"], max_seconds=budget)


def gemm_seconds(batch: int, n_in: int, n_out: int, budget: float) -> float:
    """Best time of ``[batch, n_in] @ [n_in, n_out]`` with torch (MKL) or numpy (OpenBLAS)."""
    import torch

    rng = np.random.default_rng(0)
    a = rng.random((batch, n_in), dtype=np.float32)
    w = rng.standard_normal((n_out, n_in), dtype=np.float32)
    at, wt = torch.from_numpy(a), torch.from_numpy(w)
    out_t = torch.empty(batch, n_out)
    out_n = np.empty((batch, n_out), np.float32)
    t_torch = _time(lambda: torch.mm(at, wt.t(), out=out_t), budget)
    t_numpy = _time(lambda: np.matmul(a, w.T, out=out_n), budget)
    return min(t_torch, t_numpy)


def peak_gemm_gflops(n: int) -> dict:
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    at, bt = torch.from_numpy(a), torch.from_numpy(b)
    flops = 2 * n**3
    return {
        "n": n,
        "torch_gflops": round(flops / _time(lambda: at @ bt, 10.0) / 1e9, 1),
        "numpy_gflops": round(flops / _time(lambda: a @ b, 10.0) / 1e9, 1),
    }


class Contenders:
    """The three ways of running one combination, all taking ``x`` [batch, n_inputs] as numpy."""

    def __init__(self, shape: ModelShape, folder: Path, threads: int):
        import torch

        from inclust_plus.runtime.backend import OnnxBackend
        from inclust_plus.runtime.manifest import load_manifest
        from inclust_plus.training.checkpoint import load_checkpoint

        self.torch = torch
        self.module, manifest_path = make_export(shape, folder)
        manifest = load_manifest(manifest_path)
        self.graph = manifest.graph(shape.combination)
        self.backend = OnnxBackend("cpu", threads=threads)
        self.backend.prepare(self.graph)
        self.session = self.backend.sessions[str(self.graph.path)][0]
        self.scripted = torch.jit.load(str(self.graph.torchscript)).eval()
        desc = load_checkpoint(folder / "model.pt")[1]  # the description make_export wrote
        self.inputs = torch.tensor(desc.feature_set(shape.inputs).features)
        self.outputs = torch.tensor(desc.feature_set(shape.outputs).features)
        self.n_features = shape.n_features
        self.mask = torch.zeros(self.n_features)
        self.mask[self.inputs] = 1.0
        self.layers = gemm_layers(self.graph.path)
        self._bound = None

    def feeds(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {
            "x": rng.random((batch, len(self.inputs)), dtype=np.float32),
            "covariate": np.ones(batch, np.int64),
            "target_covariate": np.zeros(batch, np.int64),
        }

    def eager(self, f: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(f["x"])
            full = torch.zeros(x.shape[0], self.n_features)
            full[:, self.inputs] = x
            y, latent, probs = self.module.predict(full, self.mask, torch.from_numpy(f["covariate"]), torch.from_numpy(f["target_covariate"]))
            return [y[:, self.outputs].numpy(), latent.numpy(), probs.numpy()]

    def onnx(self, f: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, f)

    def onnx_iobinding(self, f: dict[str, np.ndarray]):
        """A bound run: inputs and preallocated outputs bound once, as a serving loop would keep them."""
        if self._bound is None or self._bound[0] is not f:
            io = self.session.io_binding()
            for name, value in f.items():
                io.bind_cpu_input(name, value)
            outs = [np.empty((len(f["x"]), o.shape[1]), np.float32) for o in self.session.get_outputs()]
            for o, buf in zip(self.session.get_outputs(), outs):
                io.bind_output(o.name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
            self._bound = (f, io, outs)  # keeps the bound buffers alive
        self.session.run_with_iobinding(self._bound[1])
        return self._bound[2]

    def torchscript(self, f: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            outs = self.scripted(torch.from_numpy(f["x"]), torch.from_numpy(f["covariate"]), torch.from_numpy(f["target_covariate"]))
            return [o.numpy() for o in outs]

    def flops(self, batch: int) -> int:
        return sum(2 * batch * i * o for i, o in self.layers)


def measure(c: Contenders, batch: int, budget: float) -> dict:
    f = c.feeds(batch)
    ref = c.eager(f)
    got = c.onnx(f)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    bound = c.onnx_iobinding(f)
    assert all(np.array_equal(a, b) for a, b in zip(got, bound))
    row = {"batch": batch, "max_abs_diff_onnx_vs_eager": diff}
    for name in ("eager", "onnx", "onnx_iobinding", "torchscript"):
        fn = getattr(c, name)
        row[f"{name}_cells_per_s"] = round(batch / _time(lambda: fn(f), budget), 1)
    gemm_s = sum(gemm_seconds(batch, i, o, budget / 4) for i, o in c.layers)
    flops = c.flops(batch)
    row["graph_flops"] = flops
    row["gemm_only_gflops"] = round(flops / gemm_s / 1e9, 2)
    for name in ("onnx", "torchscript"):
        achieved = flops * row[f"{name}_cells_per_s"] / batch / 1e9
        row[f"{name}_gflops"] = round(achieved, 2)
        row[f"{name}_gemm_fraction"] = round(achieved / row["gemm_only_gflops"], 3)
    row["onnx_vs_eager"] = round(row["onnx_cells_per_s"] / row["eager_cells_per_s"], 2)
    row["onnx_iobinding_vs_eager"] = round(row["onnx_iobinding_cells_per_s"] / row["eager_cells_per_s"], 2)
    row["torchscript_vs_eager"] = round(row["torchscript_cells_per_s"] / row["eager_cells_per_s"], 2)
    return row


def acceptance(result: dict, quick: bool) -> dict:
    """The issue's three inference criteria, read off the CITE-seq-sized rows (and all rows >= 1,024)."""
    cite = next((m for m in result["models"] if m["name"].startswith("citeseq")), None)
    rows = {r["batch"]: r for r in cite["rows"]} if cite else {}
    big = [r for m in result["models"] for r in m["rows"] if r["batch"] >= 1024]
    out = {}
    if 1024 in rows:
        out["onnx_vs_eager_batch1024_citeseq"] = {"value": rows[1024]["onnx_vs_eager"], "target": 2.0, "passed": rows[1024]["onnx_vs_eager"] >= 2.0}
    if 1 in rows:
        out["onnx_vs_eager_batch1_citeseq"] = {"value": rows[1]["onnx_vs_eager"], "target": 5.0, "passed": rows[1]["onnx_vs_eager"] >= 5.0}
    if big:
        worst = min(r["onnx_gemm_fraction"] for r in big)
        out["onnx_gemm_fraction_batch_ge_1024_min"] = {"value": worst, "target": 0.5, "passed": worst >= 0.5}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models and batches 1 and 64 (smoke run)")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--models", nargs="+", default=None, help="merfish and/or citeseq")
    parser.add_argument("--threads", type=int, default=0, help="threads for every contender (0: usable cores)")
    parser.add_argument("--budget", type=float, default=8.0, help="seconds of repeats per measurement at most")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    import torch

    from inclust_plus.runtime.backend import usable_cores

    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    shapes = QUICK_SHAPES if args.quick else (MERFISH, CITESEQ)
    if args.models:
        shapes = tuple(s for s in shapes if s.name.split("_")[0] in args.models)
    batches = args.batches or ((1, 64) if args.quick else BATCHES)
    budget = 0.3 if args.quick else args.budget
    if args.quick:
        TIMING.update(repeats=2, min_seconds=0.01)
    result = {"benchmark": "inference_throughput", "date": now(), "quick": args.quick, "threads": threads,
              "machine": {**machine(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
              "peak_gemm": peak_gemm_gflops(256 if args.quick else 2048), "models": []}
    with tempfile.TemporaryDirectory(prefix="inclust_infer_") as tmp:
        for shape in shapes:
            c = Contenders(shape, Path(tmp) / shape.name, threads)
            model = {"name": shape.name, "combination": shape.combination, "n_inputs": len(c.inputs),
                     "n_outputs": len(c.outputs), "gemm_layers": c.layers, "rows": []}
            for batch in batches:
                row = measure(c, batch, budget)
                model["rows"].append(row)
                print(f"{shape.name:>14} batch {batch:>6}: eager {row['eager_cells_per_s']:>12,.0f}  onnx {row['onnx_cells_per_s']:>12,.0f}"
                      f"  torchscript {row['torchscript_cells_per_s']:>12,.0f} cells/s  onnx/eager {row['onnx_vs_eager']:.2f}"
                      f"  onnx {row['onnx_gflops']:.1f} GFLOP/s = {row['onnx_gemm_fraction']:.0%} of GEMM", flush=True)
            result["models"].append(model)
            c.backend.close()
    result["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    result["acceptance"] = acceptance(result, args.quick)
    print(json.dumps(result["acceptance"], indent=1))
    if args.out is not None or not args.quick:
        write_result("inference_throughput_quick" if args.quick else "inference_throughput", result, *([args.out] if args.out else []))
    return result


if __name__ == "__main__":
    main()
