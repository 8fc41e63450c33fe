"""The benchmark scripts still run, on tiny sizes, and the report renders what they record.

Not a performance test (the numbers of a smoke run mean nothing): it keeps benchmarks/ from
rotting as the package changes (a renamed function, a changed manifest field, a CLI flag).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

pytest.importorskip("torch")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("bench_results")


def test_inference_throughput_quick(results):
    import inference_throughput

    out = inference_throughput.main(["--quick", "--threads", "1", "--models", "merfish", "--batches", "1", "8", "--out", str(results)])
    rows = out["models"][0]["rows"]
    assert [r["batch"] for r in rows] == [1, 8]
    for r in rows:
        assert r["max_abs_diff_onnx_vs_eager"] <= 1e-5  # the three contenders compute the same thing
        assert r["onnx_cells_per_s"] > 0 and r["eager_cells_per_s"] > 0 and r["torchscript_cells_per_s"] > 0
        assert r["graph_flops"] == 2 * r["batch"] * sum(i * o for i, o in out["models"][0]["gemm_layers"])
    # MERFISH graph: encoder 122-200-50, posterior mean 50-50, classifier 50-13, decoder 50-200-153
    assert [tuple(layer) for layer in out["models"][0]["gemm_layers"]] == [(122, 200), (200, 50), (50, 50), (50, 13), (50, 200), (200, 153)]
    assert (results / "inference_throughput_quick.json").is_file()


def test_impute_e2e_quick(results):
    import impute_e2e

    out = impute_e2e.main(["--quick", "--cells", "1500", "--out", str(results)])
    assert out["cells"] == 1500 and out["spot_check_max_abs_diff"] <= 1e-5
    assert 0 < out["peak_rss_mb"] < out["rss_limit_mb"]
    assert out["ratio_to_bare"] > 0 and out["stages"]["prepare_us_per_cell"] > 0


def test_training_throughput_quick(results):
    import training_throughput

    out = training_throughput.main(["--quick", "--out", str(results)])
    assert out["runs"][0]["rows"] == 3000 and out["runs"][0]["epochs"] == 2 and out["best_rows_per_s"] > 0


def test_ensemble_inference_quick(results):
    import ensemble_inference

    out = ensemble_inference.main(["--quick", "--threads", "1", "--out", str(results)])
    assert [r["batch"] for r in out["cells_per_s"]] == [64, 256] and out["members"] == 6
    assert all(v > 0 for r in out["cells_per_s"] for k, v in r.items() if k != "batch")
    assert (results / "ensemble_inference_quick.json").is_file()


def test_report_renders_recorded_results(results):
    import report

    # the sections written by others' benchmarks are included when their results exist
    (results / "runtime_memory.json").write_text(json.dumps([{
        "date": "2026-01-01", "cells": 10, "input_mb": 1, "output_mb": 1, "batch_size": 4, "wall_s": 1,
        "cells_per_s": 10, "peak_rss_mb": 100, "passed": True}]))
    details = report.build_details(results)
    for heading in ("## Machine", "## Acceptance", "## 1. Inference throughput", "## 2. Achieved GFLOP/s",
                    "## 3. End-to-end", "## 4. Training throughput", "## 5. GPU", "## Runtime memory", "Smoke run",
                    "## Inference cost of the imputation preset's ensemble"):
        assert heading in details, heading
    assert "| 8 |" in details  # the batch-8 inference row
    # the headline page: every section but the detail-only ones, each linking to its full version
    text = report.build(results)
    assert "## 2. Achieved GFLOP/s" not in text and "Smoke run" in text
    assert "| 1 |" in text and "| 8 |" in text  # the first inference table (merfish, batches 1 and 8)
    for heading in ("## Acceptance", "## 1. Inference throughput", "## 3. End-to-end", "## Runtime memory"):
        section = text[text.index(heading):]
        anchor = report._slug(section.splitlines()[0])
        assert f"(docs/benchmarks.md#{anchor})" in section.split("\n## ")[0], heading
        assert f"\n{section.splitlines()[0]}\n" in details  # the anchor names a heading of the detail page


def test_headline_keeps_when_where_first_table_and_verdict():
    import report

    section = ["## X (benchmarks/x.py)", "", "Data: d.h5ad. Measured 2026-01-01 on Some CPU, 2 cores. Long explanation follows.", "",
               "| a | b |", "|---|---|", "| 1 | 2 |", "", "Acceptance: met (0.9).", "Noise line.", "", "| c |", "|---|", "| 3 |", ""]
    out = report.headline(section)
    assert out == ["## X (benchmarks/x.py)", "", "Data: d.h5ad. Measured 2026-01-01 on Some CPU, 2 cores.", "",
                   "| a | b |", "|---|---|", "| 1 | 2 |", "", "Acceptance: met (0.9).", "", "| c |", "|---|", "| 3 |", "",
                   "Details: [docs/benchmarks.md](docs/benchmarks.md#x-benchmarksxpy).", ""]


def test_benchmarks_md_is_what_report_writes():
    """BENCHMARKS.md and docs/benchmarks.md hold no hand edit that the next report.py run would drop:
    past the machine section (this host's lscpu and free), each is exactly what report.py renders."""
    import report

    def body(text: str) -> str:
        return text[text.index("\n## ", text.index("## Machine")):]

    assert body(report.build(report.RESULTS)) == body((BENCH.parent / "BENCHMARKS.md").read_text())
    assert body(report.build_details(report.RESULTS)) == body(report.DETAILS.read_text())


def test_registry_lists_every_script_in_benchmarks(tmp_path):
    """A benchmark script that is not in benchmarks/registry.py would never be run by run_all.py:
    every script there is registered or a declared helper, and every registered script exists."""
    import registry
    import run_all

    scripts = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    registered = {b.script for b in registry.BENCHMARKS}
    assert scripts - registered - set(registry.HELPERS) == set()
    assert registered | set(registry.HELPERS) <= scripts
    assert not registered & set(registry.HELPERS)
    assert len(registry.BY_NAME) == len(registry.BENCHMARKS)  # names are unique
    for bench in registry.BENCHMARKS:
        assert set(bench.needs + bench.full_needs) <= set(registry.NEEDS), bench.name
        for quick in (True, False):
            if quick and bench.quick is None:
                continue
            cmd = run_all.command(bench, quick, tmp_path, other=tmp_path)
            assert Path(cmd[1]).is_file() and "{other}" not in " ".join(cmd), cmd


def test_run_all_list_names_every_benchmark(capsys):
    import registry
    import run_all

    assert run_all.main(["--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert listed == [b.name for b in registry.BENCHMARKS]


def test_run_all_skips_what_the_machine_lacks(capsys, tmp_path):
    """A run whose needs are missing (here: no other checkout) is skipped with the reason, not failed."""
    import run_all

    assert run_all.main(["training-wall", "--results", str(tmp_path), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "== training-wall: skipped, needs" in out and "--other DIR" in out and "0 failed" in out


def test_gpu_quick_on_cpu(results):
    import gpu

    out = gpu.main(["--device", "cpu", "--quick", "--out", str(results)])
    assert out["cuda"] is False and out["feeds"]["h2d_pinned_gb_per_s"] is None
    row = out["feeds"]["rows"][0]
    assert row["batch"] == 256 and row["csr_bytes_per_cell"] < row["dense_bytes_per_cell"]
    for k in ("dense_numpy", "csr_numpy", "dense_iobinding", "csr_iobinding"):
        assert row[f"{k}_cells_per_s"] > 0
    assert out["precision"]["cuda_fp32"] is None and 0 < out["precision"]["cpu_fp16_graph"] < 2e-4  # 9.6e-05 measured: float16 weights' rounding
    e2e = out["e2e"][0]
    assert e2e["cells"] == 20_000 and e2e["cells_per_s"]["cpu_dense"] > 0 and e2e["cells_per_s"]["cpu_csr"] > 0
    assert all(v is not None for v in e2e["startup_s"].values())
    assert (results / "gpu_quick.json").is_file()
def test_training_wall_quick(results):
    import training_wall

    out = training_wall.main(["--quick", "--out", str(results)])
    run = out["runs"]["this checkout"][0]
    # 2 epochs on 2,000 rows learn next to nothing: 0.0069 measured (seeded, same on every run); the score is pinned, not bounded by [-1, 1]
    # (the loop's seconds are printed to 0.1 s: 2 epochs of 2,000 rows print 0.0 on an idle machine)
    assert run["wall_s"] > run["loop_s"] >= 0 and "2 epochs" in run["line"] and abs(run["mean_pearson"] - 0.0069) <= 0.005, run["mean_pearson"]
    assert (results / "training_wall_quick.json").is_file()


def test_training_device_quick(results):
    import training_device

    out = training_device.main(["--quick", "--out", str(results)])
    assert [r["device"] for r in out["preset"]] == ["cpu"] and out["preset"][0]["members"] == 2
    assert out["citeseq"][0]["cells"] == 1000 and out["citeseq"][0]["features"] == 520 and out["citeseq"][0]["rows_per_s"] > 0
    assert (results / "training_device_quick.json").is_file()


def test_ensemble_training_quick(results):
    import ensemble_training

    out = ensemble_training.main(["--quick", "--out", str(results)])
    assert set(out["median_wall_s"]) == {"stacked, 1 process", "2 worker processes"} and out["members"] == 2
    assert all(r[0]["member_rows_per_s"] > 0 for r in out["runs"].values())


def test_training_compile_quick(results):
    import training_compile

    out = training_compile.main(["--quick", "--out", str(results)])
    row = out["rows_measured"][0]
    assert row["device"] == "cpu" and row["members"] == 1 and set(row["ms_per_step"]) == {"eager", "compiled (default)", "hand-written"}
    # the same loss: compiled within float rounding of eager (7e-08 measured), the hand-written step too
    assert row["rel_diff_vs_eager"]["compiled (default)"] < 1e-5 and row["rel_diff_vs_eager"]["hand-written"] < 1e-5
    assert all(v > 0 for v in row["ms_per_step"].values())
    assert out["verdict"].startswith("the preset (1 members): measured, ") and "on CPU; GPU pending" in out["verdict"] and "defaults unchanged" in out["verdict"]
    assert (results / "training_compile_quick.json").is_file()
