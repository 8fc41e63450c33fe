"""Assemble BENCHMARKS.md from benchmarks/results/*.json (and the Markdown some benchmarks write).

Every table is generated from the recorded results, so BENCHMARKS.md never shows a number that no
run produced; hand-written findings live in benchmarks/performance_notes.md and are included as
they are. Sections whose results are missing say so instead of disappearing.

    python benchmarks/report.py [--results DIR] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from report_gpu import gpu_section  # benchmarks/ is on sys.path when report.py runs (and in the smoke tests)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NOTES = ROOT / "benchmarks" / "performance_notes.md"
LSCPU_KEYS = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache", "Hypervisor vendor")


def _load(results: Path, name: str):
    """``<name>.json``, else the smoke run's ``<name>_quick.json`` (so a --quick report shows its tables)."""
    for stem in (name, f"{name}_quick"):
        p = results / f"{stem}.json"
        if p.is_file():
            return json.loads(p.read_text())
    return None


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _n(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _ok(a: dict | None) -> str:
    if not a:
        return "not measured"
    return "**met**" if a["passed"] else "**not met**"


def machine_section(results: Path) -> list[str]:
    lscpu = dict(line.split(":", 1) for line in _cmd(["lscpu"]).splitlines() if ":" in line)
    cpu = "; ".join(f"{k}: {lscpu[k].strip()}" for k in LSCPU_KEYS if k in lscpu)
    flags = lscpu.get("Flags", "").split()
    simd = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    lines = [
        "## Machine",
        "",
        f"- report assembled {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; each result below carries its own date and load",
        f"- `lscpu`: {cpu}; SIMD: {simd or 'unknown'}",
        f"- `nproc`: {_cmd(['nproc']) or '?'}",
        "- `free -h`:",
        "",
        "```",
        _cmd(["free", "-h"]) or "(free not available)",
        "```",
        "",
        "- GPU: **none**. This task was not lent a GPU machine, so item 5 of issue 7 (runtime and TorchScript on",
        "  CUDA next to the memory/PCIe bound) is not measured here; `inclust-run --device cuda` and",
        "  `--torchscript --device cuda` are the commands to time on a GPU machine.",
        "",
    ]
    here = simd.split(", ") if simd else []
    elsewhere = []
    for path in sorted(results.glob("*.json")):
        try:
            m = json.loads(path.read_text()).get("machine")
        except (ValueError, AttributeError):
            continue
        if isinstance(m, dict) and m.get("simd") is not None and list(m["simd"]) != here:
            elsewhere.append(f"`{path.stem}` ({m.get('cpu_model')}, SIMD: {', '.join(m['simd'])})")
    if elsewhere:
        lines += ["- Not every result was measured on this host: " + "; ".join(elsewhere) + ". Ratios within one "
                  "result are measured side by side on one host; absolute numbers from different hosts are not comparable.", ""]
    return lines


def acceptance_section(inf, e2e, train) -> list[str]:
    rows = []
    if inf:
        a = inf.get("acceptance", {})
        for key, label in (
            ("onnx_vs_eager_batch1024_citeseq", "Folded ONNX vs PyTorch eager (unfolded), CITE-seq-sized, batch 1,024"),
            ("onnx_vs_eager_batch1_citeseq", "Folded ONNX vs PyTorch eager (unfolded), CITE-seq-sized, batch 1"),
            ("onnx_gemm_fraction_batch_ge_1024_min", "Folded ONNX GFLOP/s / measured GEMM rate, batch >= 1,024 (worst row)"),
        ):
            if key in a:
                v = a[key]
                unit = "x" if "vs_eager" in key else ""
                shown = f"{v['value']:.2f}{unit}" if unit else f"{v['value']:.0%}"
                target = f">= {v['target']:g}x" if unit else f">= {v['target']:.0%}"
                rows.append(f"| {label} | {shown} | {target} | {_ok(v)} |")
    if e2e:
        for key, label in (("ratio_to_bare", "End-to-end `inclust-run impute` / bare onnxruntime, 1M cells x 2,000 genes"),
                           ("peak_rss_mb", "Peak RSS of that run")):
            v = e2e["acceptance"][key]
            shown = f"{v['value']:.0%}" if key == "ratio_to_bare" else f"{v['value']:,.0f} MiB"
            target = ">= 50%" if key == "ratio_to_bare" else f"< {v['target']:,} MiB"
            rows.append(f"| {label} | {shown} | {target} | {_ok(v)} |")
    if train:
        rows.append(f"| Training rows/s vs official (45,000 rows/s), MERFISH, batch 500 | {train['speedup_vs_official']:.2f}x "
                    f"({train['best_rows_per_s']:,} rows/s) | >= 2x | {_ok(train)} |")
    if not rows:
        return ["## Acceptance", "", "No results recorded yet: run `python benchmarks/run_all.py`.", ""]
    return ["## Acceptance (issue 7)", "", "| criterion | measured | target | |", "|---|---|---|---|", *rows, ""]


def _load_note(m: dict) -> str:
    before = m.get("load_average_1_5_15")
    after = m.get("load_average_after")
    s = f"load average (1/5/15 min) {before}" if before else ""
    if after:
        s += f" before, {after} after"
    return s


def inference_section(inf) -> list[str]:
    if not inf:
        return ["## 1-2. Inference throughput and GEMM efficiency", "", "Not measured yet.", ""]
    m = inf["machine"]
    peak = inf["peak_gemm"]
    lines = [
        "## 1. Inference throughput (cells/s)",
        "",
        f"Measured {inf['date']}, {inf['threads']} threads for every contender (torch intra-op threads = onnxruntime intra-op threads), "
        f"OMP_WAIT_POLICY={m.get('omp_wait_policy') or 'unset'}; {_load_note(m)}. Best of several repeats. "
        "Eager = `module.predict` on a zero-filled full-width x with the input mask, output columns taken afterwards "
        "(what `InClust.predict` does); ONNX = the folded graph in a session built by the runtime's `OnnxBackend` "
        "(`session.run` with a feed dict, as the runtime calls it); ONNX + IO binding = the same session with inputs and preallocated "
        "outputs bound once (a serving loop's best case); TorchScript = the folded `.ts` twin. "
        "The acceptance ratios use plain `session.run`. "
        f"ONNX and eager outputs agree within {max(r['max_abs_diff_onnx_vs_eager'] for mm in inf['models'] for r in mm['rows']):.1g} (max |diff|).",
        "",
    ]
    for model in inf["models"]:
        lines += [f"### {model['name']}: {model['combination']} ({model['n_inputs']:,} -> {model['n_outputs']:,})", "",
                  "| batch | eager | ONNX (folded) | ONNX + IO binding | TorchScript (folded) | ONNX / eager | ONNX + IO binding / eager | TorchScript / eager |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in model["rows"]:
            lines.append(f"| {r['batch']:,} | {_n(r['eager_cells_per_s'])} | {_n(r['onnx_cells_per_s'])} | {_n(r.get('onnx_iobinding_cells_per_s'))} | "
                         f"{_n(r['torchscript_cells_per_s'])} | {r['onnx_vs_eager']:.2f}x | {r.get('onnx_iobinding_vs_eager', 0):.2f}x | {r['torchscript_vs_eager']:.2f}x |")
        lines.append("")
    lines += [
        "## 2. Achieved GFLOP/s of the folded graphs / measured GEMM rate",
        "",
        "GFLOP = 2 x batch x in x out summed over the graph's Gemm nodes. The GEMM rate is the same GEMMs "
        "run alone on matrices of exactly those shapes (best of torch `mm` (MKL) and numpy `matmul` (OpenBLAS), "
        f"best of several repeats). Machine peak, square 2,048^3 GEMM: torch {peak['torch_gflops']} GFLOP/s, "
        f"numpy {peak['numpy_gflops']} GFLOP/s.",
        "",
        "| model | batch | GFLOP per batch | GEMM-only GFLOP/s | ONNX GFLOP/s | ONNX / GEMM | TorchScript GFLOP/s | TorchScript / GEMM |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in inf["models"]:
        for r in model["rows"]:
            lines.append(f"| {model['name']} | {r['batch']:,} | {r['graph_flops'] / 1e9:.4g} | {r['gemm_only_gflops']:.1f} | {r['onnx_gflops']:.1f} | "
                         f"{r['onnx_gemm_fraction']:.0%} | {r['torchscript_gflops']:.1f} | {r['torchscript_gemm_fraction']:.0%} |")
    lines.append("")
    return lines


def e2e_section(e2e) -> list[str]:
    if not e2e:
        return ["## 3. End-to-end impute", "", "Not measured yet.", ""]
    s = e2e["stages"]
    m = e2e["machine"]
    return [
        f"## 3. End-to-end `inclust-run impute`: {e2e['cells']:,} cells x {e2e['input_genes']:,} genes (sparse h5ad)",
        "",
        f"Measured {e2e['date']}; {_load_note(m)}. Input: CSR counts at density {e2e['density']} "
        f"({e2e['nonzeros']:,} stored values, {e2e['input_mb']:,} MB); graph rna_to_protein "
        f"({e2e['input_genes']:,} -> {e2e['output_features']}), {e2e['preprocessing']}; batch {e2e['batch_size']:,}; "
        f"output {e2e['output_mb']:,} MB.",
        "",
        "| wall s | cells/s | peak RSS | bare onnxruntime cells/s (same graph and batch, preprocessed input in memory; best of one call at a time and one caller per core) | end-to-end / bare |",
        "|---:|---:|---:|---:|---:|",
        f"| {e2e['wall_s']:.1f} | {e2e['cells_per_s']:,} | {e2e['peak_rss_mb']:,.0f} MiB | {e2e['bare_onnxruntime_cells_per_s']:,} | {e2e['ratio_to_bare']:.0%} |",
        "",
        f"Where the time goes: the runtime's stages timed one by one in-process over {s['cells']:,} cells, in microseconds per cell. "
        "`inclust-run` prepares the next chunk in a worker thread while the graph runs, so its wall time is less than the sum.",
        "",
        "| prepare chunk: CSR read + checks + preprocessing (SparseReader) | same, plain dense path (before) | graph (onnxruntime) | write h5ad |",
        "|---:|---:|---:|---:|",
        f"| {s['prepare_us_per_cell']:.2f} | {s['prepare_dense_us_per_cell']:.2f} | {s['graph_us_per_cell']:.2f} | {s['write_us_per_cell']:.2f} |",
        "",
        f"Command: `{e2e['command']}`; first 1,000 outputs equal onnxruntime run directly (max |diff| {e2e['spot_check_max_abs_diff']:.1g}).",
        "",
    ]


def training_section(train) -> list[str]:
    if not train:
        return ["## 4. Training throughput", "", "Not measured yet.", ""]
    m = train["machine"]
    lines = [
        "## 4. Training throughput (rows/s), MERFISH reference data",
        "",
        f"Measured {train['date']} on {train['data']}: {train['task']}, batch {train['batch_size']}, "
        f"{train['torch_threads']} torch threads, OMP_WAIT_POLICY={m.get('omp_wait_policy') or 'unset'}; {_load_note(m)}. "
        "rows/s is the training loop's own figure (as the official one); fit wall time includes loading and assembling the data.",
        "",
        "| run | rows | epochs | loop s | fit wall s | rows/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(train["runs"], 1):
        lines.append(f"| {i} | {r['rows']:,} | {r['epochs']} | {r['train_seconds']:.2f} | {r['fit_wall_seconds']:.2f} | {r['rows_per_s']:,} |")
    lines += ["", f"Best {train['best_rows_per_s']:,} rows/s = **{train['speedup_vs_official']:.2f}x** the official implementation's "
              f"{train['official_rows_per_s']:,} rows/s (target 2x).", ""]
    for extra in train.get("variants", []):
        lines.append(f"- {extra['label']}: {extra['rows_per_s']:,} rows/s")
    if train.get("variants"):
        lines.append("")
    return lines


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
             "19:25 UTC ran with a 256 MiB budget, later ones with the final 512 MiB).", "",
             "| date | cells | genes in -> out | workers | feed | input MB | output MB | batch | wall s | cells/s | peak RSS MiB | < 1,536 MiB |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        genes = f"{r.get('input_genes', 122):,} -> {r.get('output_genes', 153):,}"
        lines.append(f"| {r['date']} | {r['cells']:,} | {genes} | {r.get('workers') or 'cores'} | {r.get('input_format', 'dense')} | {r['input_mb']:,} | {r['output_mb']:,} | "
                     f"{r['batch_size']:,} | {r['wall_s']} | {r['cells_per_s']:,} | {r['peak_rss_mb']:,} | {'yes' if r['passed'] else 'no'} |")
    return lines + [""]


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
    return lines + [""]


def triton_section(results: Path) -> list[str]:
    t = _load(results, "triton_load")
    if not t:
        return []
    lines = ["## Triton load (issue 6, benchmarks/triton_load.py)", "",
             f"Measured {t.get('when')}; {t['model']['graph']} ({t['model']['n_inputs']} -> {t['model']['n_outputs']}), "
             f"{t['request']['requests']:,} requests of {t['request']['rows']} cells; server: {t['server']['build']}.", "",
             "| path | concurrency | failures | requests/s | cells/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in (("triton_grpc", "Triton gRPC"), ("onnxruntime_direct", "onnxruntime in-process")):
        r = t.get(key)
        if r:
            lines.append(f"| {label} | {r['concurrency']} | {r['failures']} | {r['requests_per_s']:,} | {r['cells_per_s']:,.0f} | "
                         f"{r['latency_ms']['p50']} | {r['latency_ms']['p99']} |")
    return lines + [""]


def ensemble_section(results: Path) -> list[str]:
    e = _load(results, "ensemble_inference")
    if not e:
        return []
    names = [k for k in e["cells_per_s"][0] if k != "batch"]
    lines = ["## Inference cost of the imputation preset's ensemble (benchmarks/ensemble_inference.py)", "",
             f"Measured {e['date']}; {e['graph']} (122 -> 153 genes), onnxruntime CPU, {e['threads']} intra-op threads, "
             f"cells/s. The preset merges {e['members']} networks into one; the exported graph keeps only the diagonal "
             "blocks of its block-diagonal layers (grouped layers), the last column is what it would cost without that.", "",
             "| batch | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for row in e["cells_per_s"]:
        lines.append(f"| {row['batch']:,} | " + " | ".join(f"{row[n]:,}" for n in names) + " |")
    return lines + [""]


def accuracy_section(results: Path) -> list[str]:
    for stem in ("imputation_accuracy", "imputation_accuracy_quick"):
        md = results / f"{stem}.md"
        if md.is_file():
            text = md.read_text().strip()
            text = re.sub(r"^# ", "## ", text, count=1)  # its title becomes a section
            text = re.sub(r"^(#{2,}) ", lambda m: "#" + m.group(1) + " " if m.start() else m.group(0), text, flags=re.M)
            return [text + (" (quick run)" if stem.endswith("quick") else ""), ""]
    return []


def _machine_note(m: dict) -> str:
    return f"{m.get('cpu_model')}, {m.get('cores')} cores, torch {m.get('torch')}, GPU: {m.get('gpu')}"


def training_issue13_section(results: Path) -> list[str]:
    """Issue 13: whole-process training wall time, stacked ensembles, CPU vs CUDA."""
    wall, preset = _load(results, "training_wall"), _load(results, "training_wall_preset")
    half, one = _load(results, "training_wall_bf16"), _load(results, "training_wall_other_one_thread")
    ens, dev = _load(results, "ensemble_training"), _load(results, "training_device")
    if not any((wall, preset, half, one, ens, dev)):
        return []
    lines = ["## Training: whole process, stacked ensembles, CPU vs GPU (issue 13)", ""]
    for w, title in ((wall, "One network, paper defaults"), (one, "One network, paper defaults, main with one thread"),
                     (preset, "The 6-network imputation preset"),
                     (half, "bf16 autocast against fp32, one network")):
        if not w:
            continue
        names = list(w["runs"])
        lines += [f"### {title} (benchmarks/training_wall.py)", "",
                  f"Measured {w['date']} on {_machine_note(w['machine'])}: {w['what']}. Load average 1 min per run in brackets "
                  "(the machine is shared; both contenders ran alternately in the same load).", "",
                  "| contender | " + " | ".join(f"run {i + 1} wall s (loop s) [load]" for i in range(len(w['runs'][names[0]]))) +
                  " | median wall s | mean Pearson |", "|---|" + "---:|" * (len(w["runs"][names[0]]) + 2)]
        for n in names:
            cells = [f"{r['wall_s']} ({r['loop_s']}) [{r['load_average_1']}]" for r in w["runs"][n]]
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {w['summary'][n]['median_wall_s']} | {w['summary'][n]['median_mean_pearson']} |")
        ratio = w.get("speedup_vs_other")
        if ratio is not None:
            lines += ["", f"This checkout is **{ratio}x** as fast as {names[1]} (median whole-process wall)."]
        lines.append("")
    if ens:
        lines += ["### Ensemble members: stacked in one process vs worker processes (benchmarks/ensemble_training.py)", "",
                  f"Measured {ens['date']} on {_machine_note(ens['machine'])}: {ens['members']} members, {ens['epochs']} epochs, "
                  f"standard split, one torch thread per process, load average at the end "
                  f"{ens['machine'].get('load_average_1_5_15')}. Median wall s: " +
                  ", ".join(f"{k} {v}" for k, v in ens["median_wall_s"].items()) + f"; faster: **{ens['faster']}**.", ""]
    if dev:
        lines += ["### CPU vs CUDA (benchmarks/training_device.py)", "",
                  f"Measured {dev['date']} on {_machine_note(dev['machine'])}, {dev['torch_threads']} CPU threads.", "",
                  "| part | device | precision | wall s | rows/s | mean Pearson |", "|---|---|---|---:|---:|---:|"]
        for r in dev["preset"]:
            lines.append(f"| imputation preset ({r['members']} networks, {r['epochs']} epochs) | {r['device']} | {r['precision']} | "
                         f"{r['fit_wall_s']} | {r['member_rows_per_s']:,} | {r['mean_pearson']} |")
        for r in dev["citeseq"]:
            lines.append(f"| CITE-seq-sized ({r['cells']:,} cells x {r['features']:,}) | {r['device']} | {r['precision']} | "
                         f"{r['wall_s']} | {r['rows_per_s']:,} | |")
        lines += [f"Skipped: {'; '.join(dev['skipped'])}." if dev["skipped"] else "", ""]
    else:
        lines += ["### CPU vs CUDA", "", "Not measured: no GPU was lent to this task. `python benchmarks/training_device.py "
                  "--devices cpu cuda` on a GPU machine records the preset's wall time and accuracy and the CITE-seq-sized "
                  "rows/s on both.", ""]
    return lines
def written_section(results: Path, *stems: str) -> list[str]:
    """The Markdown a benchmark wrote itself (``<stem>.md``, a ``## `` section): the first of ``stems`` that ran."""
    for stem in stems:
        md = results / f"{stem}.md"
        if md.is_file():
            return [md.read_text().strip() + (" (reduced run)" if stem.endswith("_reduced") else ""), ""]
    return []


def build(results: Path = RESULTS) -> str:
    inf = _load(results, "inference_throughput")
    e2e = _load(results, "impute_e2e")
    train = _load(results, "training_throughput")
    quick = any(r and r.get("quick") for r in (inf, e2e, train))
    lines = [
        "# Benchmarks",
        "",
        *(["**Smoke run (--quick): tiny sizes, these numbers mean nothing.**", ""] if quick else []),
        "Generated by `python benchmarks/run_all.py` (which runs every benchmark and then `benchmarks/report.py`); "
        "raw results in `benchmarks/results/*.json`. `python benchmarks/run_all.py --quick` is a smoke run on tiny sizes "
        "and does not touch this file.",
        "",
        *machine_section(results),
        *acceptance_section(inf, e2e, train),
        *inference_section(inf),
        *e2e_section(e2e),
        *training_section(train),
        *training_issue13_section(results),
        *gpu_section(_load(results, "gpu")),
        *runtime_memory_section(results),
        *compare_section(results),
        *triton_section(results),
        *accuracy_section(results),
        *ensemble_section(results),
        *written_section(results, "mapping"),  # issue 15
        *written_section(results, "uncertainty", "uncertainty_reduced"),  # issue 15
        *written_section(results, "integration"),  # issue 15
        *written_section(results, "integration_real"),  # issue 15
        *written_section(results, "integration_real_effect0"),  # issue 15: the panels' difference only
    ]
    if NOTES.is_file():
        lines += [NOTES.read_text().strip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    text = build(args.results)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
