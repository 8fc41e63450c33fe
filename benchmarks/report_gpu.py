"""The GPU section of BENCHMARKS.md (issue 11), from benchmarks/results/gpu.json (benchmarks/gpu.py).

Kept apart from report.py, which renders the other sections. Without a CUDA run it says so and shows
what gpu.py measured on the CPU: the same feeds and end-to-end contenders, so the CPU side of every
GPU comparison is already on record.
"""

from __future__ import annotations

from report_common import _n


LABELS = {
    "cpu_dense": "CPU, dense graph (`--device cpu --input-format dense`, this branch)",
    "cpu_csr": "CPU, CSR graph (`--device cpu --input-format csr`)",
    "baseline_cpu": "CPU, `inclust-run` before issue 11 (main), dense",
    "cuda_auto": "CUDA, auto (CSR graph, pinned buffers, IO binding)",
    "cuda_dense": "CUDA, dense graph",
    "cuda_torchscript": "CUDA, TorchScript (`--torchscript`)",
}


def gpu_section(g: dict | None) -> list[str]:
    lines = ["## 5. GPU (issue 11, benchmarks/gpu.py)", ""]
    if not g:
        return lines + ["Not measured yet: run `benchmarks/gpu_device_check.sh` on a GPU machine.", ""]
    m = g.get("machine") or {}
    where = "CUDA" if g.get("cuda") else "CPU only (no GPU in this task; the GPU rows are empty)"
    lines += [f"Measured {g['date']} on {m.get('cpu_model', '?')} ({m.get('cores', '?')} cores, load average "
              f"{m.get('load_average_1_5_15')} at the end: shared with other work), GPU: {m.get('gpu', '?')}; {where}; onnxruntime "
              f"{g.get('onnxruntime_version')}. `benchmarks/gpu_device_check.sh` runs the CUDA side in one device call. "
              "Contenders are interleaved (one pass of each per repetition), so load hits them alike.", ""]
    feeds = g.get("feeds")
    if feeds:
        lines += [f"Feeds: CITE-seq-sized graph, counts at 5% density, cells/s (pinned host-to-device: "
                  f"{_n(feeds.get('h2d_pinned_gb_per_s'), None)} GB/s).", "",
                  "| batch | bytes/cell dense | bytes/cell CSR | dense numpy | CSR numpy | dense IO binding | CSR IO binding | dense on device | PCIe bound CSR |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in feeds["rows"]:
            lines.append(f"| {r['batch']:,} | {r['dense_bytes_per_cell']:,} | {r['csr_bytes_per_cell']:,} | {_n(r['dense_numpy_cells_per_s'], None)} | "
                         f"{_n(r['csr_numpy_cells_per_s'], None)} | {_n(r['dense_iobinding_cells_per_s'], None)} | {_n(r['csr_iobinding_cells_per_s'], None)} | "
                         f"{_n(r.get('dense_on_device_cells_per_s'), None)} | {_n(r.get('pcie_bound_csr_cells_per_s'), None)} |")
        lines.append("")
    p = g.get("precision")
    if p:
        lines += ["Precision, max |diff| against fp32 on CPU: " + ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v or '—'}"
                                                                     for k, v in p.items() if k != "cpu_parity_bound") + ".", ""]
    if g.get("e2e_date"):
        load = (g.get("machine_e2e") or {}).get("load_average_1_5_15")
        lines += [f"End-to-end rows measured {g['e2e_date']} (load average {load}: absolute numbers and start-up times are inflated, "
                  "the interleaved ratios are what counts)."]
        first = g.get("e2e_first_run")
        if first:
            lines += ["An earlier run (" + first["date"] + ", " + first.get("note", "") + "): " + "; ".join(
                f"{e['cells']:,} x {e['genes']:,}: " + ", ".join(f"{k} {_n(v, None)}" for k, v in e["cells_per_s"].items()) + " cells/s"
                for e in first["e2e"]) + "."]
        lines.append("")
    for e in g.get("e2e") or []:
        names = list(e["cells_per_s"])
        lines += [f"End to end, `inclust-run impute`, {e['cells']:,} cells x {e['genes']:,} genes at {e['density']:.0%} -> {e['proteins']} "
                  f"proteins (best of the interleaved repetitions); I/O floor (h5py read + write only) {_n(e['io_floor_cells_per_s'], None)} cells/s.", "",
                  "| contender | wall s | cells/s | start-up s (1,000 cells) |", "|---|---:|---:|---:|"]
        for k in names:
            lines.append(f"| {LABELS.get(k, k)} | {_n(e['wall_s'][k], None)} | {_n(e['cells_per_s'][k], None)} | {_n(e['startup_s'].get(k), None)} |")
        lines.append("")
    return lines
