"""Load test: N requests of R cells at concurrency C against a local tritonserver, next to onnxruntime.

What it does, all on this machine and on loopback only:

1. Export a model with ``--triton`` (Python-backend flavour): ``--checkpoint`` if given, else a
   model of the demo's size (153 genes, 122 in the MERFISH panel, 2 covariates, 13 cell types,
   the paper's layer sizes) with seeded random weights; the impute graph merfish_to_rna is served.
2. Start the PyPI tritonserver (:mod:`inclust_plus.triton.server`), send ``--requests`` gRPC
   requests of ``--rows`` cells with ``--concurrency`` in flight (``async_infer``), and record
   each request's latency, every failure, and the server's own statistics (mean dynamic batch).
   Every response to the first pass over the input pool is compared with local onnxruntime.
3. Run the same requests directly with onnxruntime in this process, one after another.

Inputs are real cells (``/work/shared/data`` or ``--data``) when available, else random values
in [0, 1]. Results go to ``--out`` (JSON). Needs torch (for the export), tritonclient[grpc] and
a server environment (see inclust_plus/triton/server_env.py)::

    INCLUST_TRITON_ENV=/path/to/server-venv python benchmarks/triton_load.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_common import merfish_checkpoint  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("INCLUST_SHARED", HERE.parent.parent / "shared")) / "data" / "merfish_scrna_reference.h5ad"
N_GENES, N_PANEL, N_LABELS = 153, 122, 13
GRAPH = "merfish_to_rna"


def demo_sized_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random weights with the demo model's shapes (what training on the reference data gives)."""
    return merfish_checkpoint(path, N_GENES, N_PANEL, seed=seed, name="demo_sized_random")


def input_pool(features: list[str], rows: int, size: int, data: Path | None, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """``size`` distinct request inputs of ``rows`` cells in the graph's feature order."""
    rng = np.random.default_rng(seed)
    if data is not None and data.is_file():
        import anndata as ad

        a = ad.read_h5ad(data)
        names = list(map(str, a.var_names))
        if all(f in names for f in features):
            idx = rng.choice(a.n_obs, size=rows * size, replace=a.n_obs < rows * size)
            x = a[np.sort(idx)][:, features].X
            x = np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=np.float32)
            rng.shuffle(x)
            return [np.ascontiguousarray(x[i * rows:(i + 1) * rows]) for i in range(size)], f"{data.name} ({a.n_obs} cells)"
    return [rng.random((rows, len(features)), dtype=np.float32) for _ in range(size)], "uniform random in [0, 1]"


def summary(latencies: list[float], seconds: float, rows: int, failures: int) -> dict:
    lat = np.asarray(latencies) * 1e3
    return {
        "requests": len(latencies),
        "failures": failures,
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "cells_per_s": round(len(latencies) * rows / seconds, 0),
        "latency_ms": {q: round(float(np.percentile(lat, p)), 3) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))} | {"max": round(float(lat.max()), 3), "mean": round(float(lat.mean()), 3)},
    }


def triton_load(url: str, model: str, pool: list[np.ndarray], covs: list[np.ndarray], n: int, concurrency: int, reference: list[dict], timeout: float) -> dict:
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    requests = []
    for x, c in zip(pool, covs):
        ins = [grpc.InferInput("x", list(x.shape), "FP32"), grpc.InferInput("covariate", [len(x), 1], "INT64"), grpc.InferInput("target_covariate", [len(x), 1], "INT64")]
        ins[0].set_data_from_numpy(x)
        ins[1].set_data_from_numpy(c.reshape(-1, 1))
        ins[2].set_data_from_numpy(np.zeros((len(x), 1), np.int64))
        requests.append(ins)
    outputs = [grpc.InferRequestedOutput(k) for k in ("y", "latent", "label_probs")]
    slots = threading.Semaphore(concurrency)
    latencies: list[float] = []
    failures: list[str] = []
    max_diff = [0.0]

    def done(i: int, t0: float, result, error) -> None:
        try:
            latencies.append(time.perf_counter() - t0)
            if error is not None:
                failures.append(str(error))
            elif i < len(pool):  # first pass over the pool: compare with local onnxruntime
                for k, want in reference[i].items():
                    max_diff[0] = max(max_diff[0], float(np.abs(result.as_numpy(k) - want).max()))
        except BaseException as err:  # noqa: BLE001 - counted as a failure
            failures.append(repr(err))
        finally:
            slots.release()

    for i in range(min(n, 50)):  # warm-up, not timed
        client.infer(model, requests[i % len(requests)], outputs=outputs)
    start = time.perf_counter()
    for i in range(n):
        slots.acquire()
        t0 = time.perf_counter()
        client.async_infer(model, requests[i % len(requests)], callback=lambda result, error, i=i, t0=t0: done(i, t0, result, error),
                           outputs=outputs, client_timeout=timeout)
    for _ in range(concurrency):
        slots.acquire()
    seconds = time.perf_counter() - start
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    client.close()
    out = summary(latencies, seconds, len(pool[0]), len(failures))
    inferences, executions = int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
    out.update(
        concurrency=concurrency,
        max_abs_diff_vs_onnxruntime=max_diff[0],
        first_failures=failures[:3],
        server_mean_batch_cells=round(inferences / max(executions, 1), 1),
        server_mean_requests_per_execution=round(inferences / max(executions, 1) / len(pool[0]), 2),
    )
    return out


def ort_direct(onnx_path: Path, pool: list[np.ndarray], covs: list[np.ndarray], n: int) -> tuple[dict, list[dict]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feeds = [{"x": x, "covariate": c, "target_covariate": np.zeros(len(x), np.int64)} for x, c in zip(pool, covs)]
    reference = [dict(zip(names, sess.run(names, f))) for f in feeds]
    for i in range(min(n, 50)):
        sess.run(names, feeds[i % len(feeds)])
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        sess.run(names, feeds[i % len(feeds)])
        latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - start
    out = summary(latencies, seconds, len(pool[0]), 0)
    out.update(concurrency=1, onnxruntime_version=ort.__version__, intra_op_threads="default (all cores)")
    return out, reference


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="model.pt to serve (default: demo-sized random weights)")
    ap.add_argument("--graph", default=GRAPH, help="graph to load-test (an impute graph)")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=256, help="cells per request")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--pool", type=int, default=64, help="distinct request inputs, cycled")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="h5ad to take real cells from")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before one request counts as failed")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "triton_load.json")
    args = ap.parse_args()

    from inclust_plus.export import export_model
    from inclust_plus.triton.server import triton_server
    from inclust_plus.triton.server_env import find_server_env

    with tempfile.TemporaryDirectory(prefix="inclust-triton-load-") as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint or demo_sized_checkpoint(tmp / "model.pt")
        manifest_path = export_model(ckpt, tmp / "export", combinations=[args.graph], torchscript=False, triton_dir=tmp / "triton")
        graph = next(g for g in json.loads(Path(manifest_path).read_text())["graphs"] if g["name"] == args.graph)
        pool, source = input_pool(graph["input_features"], args.rows, args.pool, args.data)
        rng = np.random.default_rng(1)
        covs = [rng.integers(0, 2, args.rows).astype(np.int64) for _ in pool]
        ort_result, reference = ort_direct(tmp / "export" / graph["file"], pool, covs, args.requests)
        print(f"onnxruntime direct: {ort_result['requests_per_s']} req/s, p50 {ort_result['latency_ms']['p50']} ms, p99 {ort_result['latency_ms']['p99']} ms", flush=True)
        env = find_server_env()
        config_text = (tmp / "triton" / f"{args.graph}_python" / "config.pbtxt").read_text()
        t0 = time.perf_counter()
        with triton_server(tmp / "triton") as server:
            startup = time.perf_counter() - t0
            triton_result = triton_load(server.grpc_url, f"{args.graph}_python", pool, covs, args.requests, args.concurrency, reference, args.timeout)
        print(f"triton (python backend, gRPC, {args.concurrency} in flight): {triton_result['requests_per_s']} req/s, "
              f"p50 {triton_result['latency_ms']['p50']} ms, p99 {triton_result['latency_ms']['p99']} ms, "
              f"{triton_result['failures']} failures, mean server batch {triton_result['server_mean_batch_cells']} cells", flush=True)

    result = {
        "benchmark": "triton_load",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "model": {"checkpoint": str(args.checkpoint) if args.checkpoint else "demo-sized random weights", "graph": args.graph,
                  "n_inputs": len(graph["input_features"]), "n_outputs": len(graph["output_features"])},
        "inputs": source,
        "request": {"requests": args.requests, "rows": args.rows, "distinct_inputs": args.pool},
        "server": {"build": "nvidia-pytriton tritonserver, Python backend + onnxruntime (CPU)", "python_env": str(env.python),
                   "startup_s": round(startup, 2),
                   "dynamic_batching": [line.strip() for line in config_text.splitlines() if "preferred_batch_size" in line or "max_queue_delay" in line or "max_batch_size" in line]},
        "triton_grpc": triton_result,
        "onnxruntime_direct": ort_result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if triton_result["failures"] or triton_result["max_abs_diff_vs_onnxruntime"] > 1e-5:
        raise SystemExit("load test failed: failures or results differ from onnxruntime")


if __name__ == "__main__":
    main()
