"""Assemble BENCHMARKS.md and its detail page from benchmarks/results/*.json (and the Markdown some benchmarks write).

Every table is generated from the recorded results, so neither page shows a number that no run
produced. docs/benchmarks.md holds every section in full (how each was measured, every table, the
stage breakdowns) and the hand-written findings of benchmarks/performance_notes.md; BENCHMARKS.md
holds the headline of each section: its heading, the sentence that says when and on which machine
it was measured, its first table and its verdict, with a link to the full section. Sections whose
results are missing say so instead of disappearing.

    python benchmarks/report.py [--results DIR] [--out BENCHMARKS.md] [--details docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from report_common import _load, _load_note, _n, _ok  # benchmarks/ is on sys.path when report.py runs (and in the smoke tests)
from report_gpu import gpu_section
from report_runtime import compare_section, ensemble_section, runtime_memory_section, triton_section
from report_training import training_issue13_section, training_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NOTES = ROOT / "benchmarks" / "performance_notes.md"
DETAILS = ROOT / "docs" / "benchmarks.md"
VERDICT = re.compile(r"\*\*|^Acceptance|acceptance|: (not )?met\b")
DETAILS_LINK = "docs/benchmarks.md"  # as linked from BENCHMARKS.md at the repository root
LSCPU_KEYS = ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "L2 cache", "L3 cache", "Hypervisor vendor")


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.rstrip()
    except (OSError, subprocess.SubprocessError):
        return ""


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


def accuracy_section(results: Path) -> list[str]:
    for stem in ("imputation_accuracy", "imputation_accuracy_quick"):
        md = results / f"{stem}.md"
        if md.is_file():
            text = md.read_text().strip()
            text = re.sub(r"^# ", "## ", text, count=1)  # its title becomes a section
            text = re.sub(r"^(#{2,}) ", lambda m: "#" + m.group(1) + " " if m.start() else m.group(0), text, flags=re.M)
            return [text + (" (quick run)" if stem.endswith("quick") else ""), ""]
    return []


def written_section(results: Path, *stems: str) -> list[str]:
    """The Markdown a benchmark wrote itself (``<stem>.md``, a ``## `` section): the first of ``stems`` that ran."""
    for stem in stems:
        md = results / f"{stem}.md"
        if md.is_file():
            return [md.read_text().strip() + (" (reduced run)" if stem.endswith("_reduced") else ""), ""]
    return []


def sections(results: Path) -> list[tuple[bool, list[str]]]:
    """Every section in full, in page order, each with whether BENCHMARKS.md shows its headline."""
    inf = _load(results, "inference_throughput")
    e2e = _load(results, "impute_e2e")
    train = _load(results, "training_throughput")
    inference = inference_section(inf)
    gemm = next((i for i, line in enumerate(inference) if line.startswith("## 2.")), len(inference))  # GEMM efficiency: details only
    return [
        (True, acceptance_section(inf, e2e, train)),
        (True, inference[:gemm]),
        (False, inference[gemm:]),
        (True, e2e_section(e2e)),
        (True, training_section(train)),
        (True, training_issue13_section(results)),
        (True, written_section(results, "training_compile")),  # torch.compile of the one loss: the preset and one network, CPU (GPU when lent)
        (True, written_section(results, "training_compile_fit")),  # a whole preset fit, compile auto vs off
        (True, gpu_section(_load(results, "gpu"))),
        (True, runtime_memory_section(results)),
        (False, compare_section(results)),
        (True, triton_section(results)),
        (True, accuracy_section(results)),
        (True, written_section(results, "imputation_splits_summary")),  # kNN baselines and read-outs, every split (hand-assembled from the JSON)
        (True, ensemble_section(results)),
        (True, written_section(results, "mapping")),
        (True, written_section(results, "uncertainty", "uncertainty_reduced")),
        (True, written_section(results, "integration")),
        (True, written_section(results, "integration_real")),
        (False, written_section(results, "integration_real_effect0")),  # the panels' difference only
        (True, written_section(results, "integration_contenders")),  # loss settings against the paper's
    ]


def _quick(results: Path) -> list[str]:
    if any(r and r.get("quick") for r in (_load(results, n) for n in ("inference_throughput", "impute_e2e", "training_throughput"))):
        return ["**Smoke run (--quick): tiny sizes, these numbers mean nothing.**", ""]
    return []


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub) gives a heading."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _paragraphs(lines: list[str]) -> list[list[str]]:
    out, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def _when_and_where(paragraph: str) -> str:
    """The sentences of ``paragraph`` up to the one saying when and on what it was measured."""
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z`])", paragraph)
    for i, sentence in enumerate(sentences):
        if "easured" in sentence:
            return " ".join(sentences[: i + 1])
    return sentences[0]


def headline(section: list[str]) -> list[str]:
    """A section's heading, when/where it was measured, its first table, its verdict and a link to the rest."""
    if not section:
        return []
    section = "\n".join(section).split("\n")  # a benchmark's own Markdown comes as one string
    heading = section[0]
    blocks = _paragraphs(section[1:])
    out = [heading, ""]
    table_at = next((i for i, b in enumerate(blocks) if b[0].startswith("|")), None)
    said = False
    for b in blocks[:table_at]:
        if b[0].startswith("#"):
            out += [b[0], ""]  # the sub-heading the first table belongs to
        elif not said:
            out += [_when_and_where(" ".join(b)), ""]
            said = True
    if table_at is None:
        return [*out[:-1], *([] if said else blocks[0] if blocks else []), "", f"Details: [{DETAILS_LINK}]({DETAILS_LINK}#{_slug(heading)}).", ""]
    out += [*blocks[table_at], ""]
    kept = False  # the verdict: lines that say met / not met or a figure in bold, and a table they introduce
    for b in blocks[table_at + 1:]:
        if b[0].startswith("#"):
            break
        if b[0].startswith("|"):
            if kept:
                out += [*b, ""]
            kept = False
            continue
        verdict = [line for line in b if VERDICT.search(line)]
        out += [*verdict, ""] if verdict else []
        kept = bool(verdict)
    return [*out, f"Details: [{DETAILS_LINK}]({DETAILS_LINK}#{_slug(heading)}).", ""]


def build(results: Path = RESULTS) -> str:
    """BENCHMARKS.md: the headline of every section."""
    lines = [
        "# Benchmarks",
        "",
        *_quick(results),
        "The headline numbers, each with when and on which machine it was measured; how each was measured, every "
        f"table and what the numbers led to: [{DETAILS_LINK}]({DETAILS_LINK}). Generated by `python benchmarks/run_all.py` "
        "(`--list`: every benchmark, its quick and full runs and what it needs; names run a subset), which runs the "
        "benchmarks of `benchmarks/registry.py` and then `benchmarks/report.py`; raw results in `benchmarks/results/`.",
        "",
        *machine_section(results),
    ]
    for shown, section in sections(results):
        if shown:
            lines += headline(section)
    return "\n".join(lines)


def build_details(results: Path = RESULTS) -> str:
    """docs/benchmarks.md: every section in full, then the hand-written findings."""
    lines = [
        "# Benchmarks: details",
        "",
        *_quick(results),
        "Every benchmark section in full; the headline tables are in [BENCHMARKS.md](../BENCHMARKS.md). Generated by "
        "`benchmarks/report.py` from `benchmarks/results/`; the findings after the tables are benchmarks/performance_notes.md.",
        "",
        *machine_section(results),
    ]
    for _, section in sections(results):
        lines += section
    if NOTES.is_file():
        lines += [NOTES.read_text().strip(), ""]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--details", type=Path, default=DETAILS)
    args = parser.parse_args(argv)
    _write(args.details, build_details(args.results))
    _write(args.out, build(args.results))
    return args.out


if __name__ == "__main__":
    main()
