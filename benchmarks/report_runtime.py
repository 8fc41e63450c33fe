"""BENCHMARKS.md sections of the runtime's streaming, memory, Triton and ensemble benchmarks."""

from __future__ import annotations

import statistics
from pathlib import Path

from report_common import _load, notes, table


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


def compare_section(results: Path) -> list[str]:
    """``impute_e2e.py --compare-with``: this tree's streaming runtime against a reference checkout's."""
    c = _load(results, "impute_e2e_compare")
    if not c:
        return []
    m = c["machine"]
    lines = ["## Streaming throughput before/after issue 12 (benchmarks/impute_e2e.py --compare-with)", "",
             f"Measured {c['date']} on {m['cpu_model']} ({m['cores']} cores, load average {m['load_average_1_5_15']}): "
             f"`inclust-run impute` of {c['cells']:,} cells x {c['input_genes']:,} genes ({c['density']:.0%} non-zero, CSR) -> "
             f"{c['output_features']} proteins, batch {c['batch_size']:,}, this tree ({c['this']}) and the reference "
             f"({c['reference']}) run alternately, {c['repeats']} times each, same input.", "",
             "| tree | best wall s | cells/s (best) | median wall s | best cpu s | median cpu s |", "|---|---:|---:|---:|---:|---:|"]
    for name in ("this", "reference"):
        walls, cpus = c["wall_s"][name], c["cpu_s"][name]
        lines.append(f"| {name} | {min(walls):.2f} | {c['best_cells_per_s'][name]:,} | {statistics.median(walls):.2f} | {min(cpus):.2f} | "
                     f"{statistics.median(cpus):.2f} |")
    median_cpu = statistics.median(c["cpu_s"]["reference"]) / statistics.median(c["cpu_s"]["this"])
    lines += ["", f"Throughput ratio this/reference: {c['ratio_this_to_reference']} (best wall), {c['median_wall_ratio']} (median wall), "
              f"{c['cpu_ratio_this_to_reference']} (best cpu time), {median_cpu:.3f} (median cpu time); "
              f"outputs identical: {'yes' if c['outputs_identical_first_10000_cells'] else 'no'}."]
    spread = {k: (min(v), max(v)) for k, v in c["cpu_s"].items()}
    lines.append(f"Run-to-run spread of the cpu time: this {spread['this'][0]:.2f}-{spread['this'][1]:.2f} s, "
                 f"reference {spread['reference'][0]:.2f}-{spread['reference'][1]:.2f} s.")
    if "chunk_reader_cpu_s" in c:
        r = c["chunk_reader_cpu_s"]
        lines.append(f"The chunk reader alone (CSR read, structure and value checks, preprocessing: the code this change touched on "
                     f"the hot path), {c['chunk_reader_chunks']} chunks of {c['chunk_reader_rows']:,} cells, best of 5 cpu times each, "
                     f"{c['repeats']} alternating runs per tree: this {min(r['this']):.3f} s, reference {min(r['reference']):.3f} s, "
                     f"ratio {c['chunk_reader_ratio_this_to_reference']}.")
    if m["load_average_1_5_15"][0] > m["cores"]:
        lines.append("Other jobs shared the machine (load average above its core count), so wall times swung between runs of "
                     "either tree; the cpu time of each run (user + system, from wait4) is the steadier measure.")
    return [*lines, "", *notes(results, "impute_e2e_compare")]


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
