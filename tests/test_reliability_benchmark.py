"""The before/after streaming comparison of issue 12 (``impute_e2e.py --compare-with``) still runs and
renders: this checkout against itself, on the smoke size. Not a performance test: no timing is judged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytest.importorskip("torch")
pytest.importorskip("onnx")


def test_compare_with_a_checkout_runs_and_renders(tmp_path):
    import impute_e2e
    import report

    result = impute_e2e.main(["--quick", "--cells", "3000", "--compare-with", str(ROOT), "--repeats", "1", "--out", str(tmp_path)])
    assert (tmp_path / "impute_e2e_compare.json").is_file()
    assert result["outputs_identical_first_10000_cells"] is True  # the same code gives the same cells
    assert len(result["wall_s"]["this"]) == len(result["cpu_s"]["reference"]) == len(result["chunk_reader_cpu_s"]["this"]) == 1
    assert result["ratio_this_to_reference"] > 0 and result["chunk_reader_rows"] > 0
    text = "\n".join(report.compare_section(tmp_path))
    assert "## Streaming throughput before/after issue 12" in text and "| reference |" in text
    assert f"{result['ratio_this_to_reference']} (best wall)" in text and result["machine"]["cpu_model"] in text


def test_output_layout_compare_runs_and_checks_the_files(tmp_path):
    """``output_layout.py --compare-with``: three contenders, the content and pinned-chunk byte checks."""
    import output_layout

    result = output_layout.main(["--quick", "--cells", "3000", "--rounds", "1", "--compare-with", str(ROOT), "--out", str(tmp_path)])
    assert (tmp_path / "output_layout_compare_quick.json").is_file()
    assert set(result["runs"]) == {"this", "reference", "old"} and all(len(v) == 1 for v in result["runs"].values())
    assert result["content_differences"] == [] and result["pinned_chunks_byte_identical"] is True  # the same code, the same file
    assert result["chunk_rows"]["this"] == result["chunk_rows"]["reference"] > 0


def test_h5_differences_names_what_differs(tmp_path):
    import h5py
    import numpy as np
    import output_layout

    for name, value in (("a.h5", 1.0), ("b.h5", 2.0)):
        with h5py.File(tmp_path / name, "w") as f:
            f["X/data"] = np.arange(4, dtype=np.float32)
            f["uns/inclust/seconds"] = value  # ignored
            f["uns/other"] = value
            f["X"].attrs["shape"] = np.asarray([2, 2]) * value
    assert output_layout.h5_differences(tmp_path / "a.h5", tmp_path / "b.h5") == ["/X (attributes)", "/uns/other"]
    assert output_layout.h5_differences(tmp_path / "a.h5", tmp_path / "a.h5") == []
