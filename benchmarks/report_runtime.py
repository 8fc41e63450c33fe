"""BENCHMARKS.md sections of the runtime's memory, Triton and ensemble benchmarks."""

from __future__ import annotations

from pathlib import Path

from report_common import _load, table


def runtime_memory_section(results: Path) -> list[str]:
    runs = _load(results, "runtime_memory") or []
    runs = runs if isinstance(runs, list) else [runs]
    latest = _load(results, "runtime_memory_latest")  # the run made by run_all.py
    if latest and latest.get("date") not in {r.get("date") for r in runs}:
        runs = runs + [latest]
    if not runs:
        return []
    lines = ["## Runtime memory (issue 5, benchmarks/runtime_memory.py)", "",
             "`inclust-run impute` with the MERFISH-shaped graph (122 -> 153 genes) on generated sparse h5ad files "
             "(the rows from before 2026-11-24 14:00 UTC predate the chunk workers of issue 7).", "",
             "Issue 11 rows (genes 2,000 -> 200) force `--workers 16` on the 2-core machine: one memory budget for all chunks in flight "
             "(the 1,135.7 MiB CSR row predates counting the graph's own intermediates in that budget; rows of 2026-12-01 before "
             "19:25 UTC ran with a 256 MiB budget, later ones with the final 512 MiB).", ""]
    head = ["date", "cells", "genes in -> out", "workers", "feed", "input MB", "output MB", "batch", "wall s", "cells/s", "peak RSS MiB", "< 1,536 MiB"]
    rows = [[r["date"], f"{r['cells']:,}", f"{r.get('input_genes', 122):,} -> {r.get('output_genes', 153):,}", r.get("workers") or "cores",
             r.get("input_format", "dense"), f"{r['input_mb']:,}", f"{r['output_mb']:,}", f"{r['batch_size']:,}", r["wall_s"],
             f"{r['cells_per_s']:,}", f"{r['peak_rss_mb']:,}", "yes" if r["passed"] else "no"] for r in runs]
    return [*lines, *table(head, "lrlrlrrrrrrl", rows), ""]


def triton_section(results: Path) -> list[str]:
    t = _load(results, "triton_load")
    if not t:
        return []
    lines = ["## Triton load (issue 6, benchmarks/triton_load.py)", "",
             f"Measured {t.get('when')}; {t['model']['graph']} ({t['model']['n_inputs']} -> {t['model']['n_outputs']}), "
             f"{t['request']['requests']:,} requests of {t['request']['rows']} cells; server: {t['server']['build']}.", ""]
    paths = (("triton_grpc", "Triton gRPC"), ("onnxruntime_direct", "onnxruntime in-process"))
    rows = [[label, r["concurrency"], r["failures"], f"{r['requests_per_s']:,}", f"{r['cells_per_s']:,.0f}", r["latency_ms"]["p50"], r["latency_ms"]["p99"]]
            for key, label in paths if (r := t.get(key))]
    return [*lines, *table(["path", "concurrency", "failures", "requests/s", "cells/s", "p50 ms", "p99 ms"], "lrrrrrr", rows), ""]


def ensemble_section(results: Path) -> list[str]:
    e = _load(results, "ensemble_inference")
    if not e:
        return []
    names = [k for k in e["cells_per_s"][0] if k != "batch"]
    lines = ["## Inference cost of the imputation preset's ensemble (benchmarks/ensemble_inference.py)", "",
             f"Measured {e['date']}; {e['graph']} (122 -> 153 genes), onnxruntime CPU, {e['threads']} intra-op threads, "
             f"cells/s. The preset merges {e['members']} networks into one; the exported graph keeps only the diagonal "
             "blocks of its block-diagonal layers (grouped layers), the last column is what it would cost without that.", ""]
    rows = [[f"{row['batch']:,}", *(f"{row[n]:,}" for n in names)] for row in e["cells_per_s"]]
    return [*lines, *table(["batch", *names], "r" * (len(names) + 1), rows), ""]
