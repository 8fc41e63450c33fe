"""Input structure and options (issue 12): CSR/CSC indptr and indices checked, --allow-missing needs
enough shared features (--min-shared-fraction), --triton HOST:PORT validated; one line, exit 2."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from inclust_plus.errors import InclustError
from inclust_plus.runtime.cli import cli
from inclust_plus.triton.client import parse_url
from reliability_helpers import one_error
from runtime_fixtures import COVARIATES, RNA, make_cells, make_toy_export, write_h5ad

N = 40
COV = [COVARIATES[i % 3] for i in range(N)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_export(tmp_path_factory.mktemp("toy"))


def impute(toy, inp, out, *extra, combination="panel_to_rna"):
    return ["impute", "--onnx", toy.folder, "--input", inp, "--output", out, "--combination", combination, "--quiet", *extra]


def _broken(tmp_path, sparse: str, change, x=None) -> str:
    path = tmp_path / f"in_{sparse}.h5ad"
    write_h5ad(path, make_cells(N, RNA, seed=4) if x is None else x, RNA, COV, sparse=sparse)
    with h5py.File(path, "r+") as f:
        change(f["X"])
    return path


def _set(name, index, value):
    def change(group):
        arr = group[name][()]
        arr[index] = value
        del group[name]
        group[name] = arr

    return change


CSR_CASES = [  # id, change, words
    ("column index past the end", _set("indices", 7, 10), ("corrupt sparse matrix", "index 10", "outside 0..9")),
    ("negative column index", _set("indices", 3, -1), ("index -1", "in cell 0")),
    ("indptr decreasing", _set("indptr", 5, 0), ("corrupt CSR matrix", "indptr decreases")),
    ("indptr not from 0", _set("indptr", 0, 1), ("indptr starts at 1",)),
    ("indptr past the data", _set("indptr", -1, 10_000), ("indptr ends at 10000",)),
]


@pytest.mark.parametrize("change, words", [c[1:] for c in CSR_CASES], ids=[c[0] for c in CSR_CASES])
def test_corrupt_csr(toy, tmp_path, change, words):
    inp = _broken(tmp_path, "csr", change)
    one_error(cli, impute(toy, inp, tmp_path / "o.h5ad"), match=words, unchanged=tmp_path)


def test_out_of_range_index_in_a_later_cell_is_named(toy, tmp_path):
    x = make_cells(N, RNA, seed=4)

    def change(group):
        ptr = group["indptr"][()]
        _set("indices", int(ptr[25 + 1]) - 1, 12)(group)  # the last value of cell 25: rows stay sorted

    inp = _broken(tmp_path, "csr", change, x)
    one_error(cli, impute(toy, inp, tmp_path / "o.h5ad"), match="index 12 in cell 25 outside 0..9", unchanged=tmp_path)


def test_out_of_range_index_on_the_dense_path(toy, tmp_path):
    """Unsorted indices take the dense path (scipy): the range is checked there too."""

    def change(group):
        ptr, idx = group["indptr"][()], group["indices"][()]
        lo, hi = int(ptr[2]), int(ptr[3])
        idx[lo:hi] = idx[lo:hi][::-1]  # cell 2 unsorted
        idx[hi - 1] = 99
        del group["indices"]
        group["indices"] = idx

    inp = _broken(tmp_path, "csr", change)
    one_error(cli, impute(toy, inp, tmp_path / "o.h5ad"), match=("index 99", "cell 2"), unchanged=tmp_path)


CSC_CASES = [
    ("row index past the end", _set("indices", 2, N), ("corrupt sparse matrix", f"index {N}", "column")),
    ("indptr decreasing", _set("indptr", 3, 0), ("corrupt CSC matrix", "indptr decreases")),
    ("indptr length", lambda g: (g.__delitem__("indptr"), g.create_dataset("indptr", data=np.zeros(3, np.int64))),
     ("indptr length 3 for 10 columns",)),
]


@pytest.mark.parametrize("change, words", [c[1:] for c in CSC_CASES], ids=[c[0] for c in CSC_CASES])
def test_corrupt_csc(toy, tmp_path, change, words):
    inp = _broken(tmp_path, "csc", change)
    one_error(cli, impute(toy, inp, tmp_path / "o.h5ad"), match=words, unchanged=tmp_path, warnings_ok=True)


def test_valid_csr_with_empty_rows_still_runs(toy, tmp_path):
    x = make_cells(N, RNA, seed=4)
    x[[0, 7, N - 1]] = 0  # empty first, middle and last cells: the first/last-index checks skip them
    write_h5ad(tmp_path / "in.h5ad", x, RNA, COV)
    result = CliRunner().invoke(cli, [str(a) for a in impute(toy, tmp_path / "in.h5ad", tmp_path / "o.h5ad")])
    assert result.exit_code == 0, result.output


# --- --allow-missing ------------------------------------------------------------------------------
def test_allow_missing_needs_a_shared_feature(toy, tmp_path):
    other = [f"other{i}" for i in range(len(RNA))]
    write_h5ad(tmp_path / "none.h5ad", make_cells(N, other), other, COV)
    one_error(cli, impute(toy, tmp_path / "none.h5ad", tmp_path / "o.h5ad", "--allow-missing"),
              match=("holds 0 of the 6 features", "at least one required"), unchanged=tmp_path)


def test_min_shared_fraction(toy, tmp_path):
    names = RNA[:2] + [f"other{i}" for i in range(8)]  # 2 of the panel's 6 features
    write_h5ad(tmp_path / "some.h5ad", make_cells(N, names), names, COV)
    one_error(cli, impute(toy, tmp_path / "some.h5ad", tmp_path / "o.h5ad", "--allow-missing", "--min-shared-fraction", "0.5"),
              match=("holds 2 of the 6 features", "at least 50% (3) required"), unchanged=tmp_path)
    result = CliRunner().invoke(cli, [str(a) for a in impute(toy, tmp_path / "some.h5ad", tmp_path / "o.h5ad", "--allow-missing",
                                                             "--min-shared-fraction", "0.3")])
    assert result.exit_code == 0, result.output  # 2 of 6 >= 30%
    result = CliRunner().invoke(cli, [str(a) for a in impute(toy, tmp_path / "some.h5ad", tmp_path / "p.h5ad", "--allow-missing",
                                                             "--min-shared-fraction", "1.5")])
    assert result.exit_code == 2 and "1.5" in result.output and not (tmp_path / "p.h5ad").exists()


# --- --triton URLs --------------------------------------------------------------------------------
@pytest.mark.parametrize("url, words", [
    ("127.0.0.1:99999", "port 99999, outside 1-65535"),
    ("127.0.0.1:0", "port 0, outside 1-65535"),
    ("localhost", "has no HOST:PORT"),
    ("host:80/models", "has no HOST:PORT"),
    ("bad host:8001", "invalid host 'bad host'"),
    ("300.1.1.1:8001", "invalid host '300.1.1.1'"),
    ("[::zz]:8001", "invalid host '[::zz]'"),
    ("ftp://h:21", "unsupported Triton URL scheme 'ftp'"),
])
def test_bad_triton_url(toy, tmp_path, url, words):
    from reliability_helpers import good_input

    inp = good_input(tmp_path / "in.h5ad")
    one_error(cli, impute(toy, inp, tmp_path / "o.h5ad", "--triton", url), match=words, unchanged=tmp_path)


def test_good_triton_urls():
    assert parse_url("127.0.0.1:8001") == ("127.0.0.1:8001", "grpc")
    assert parse_url("http://triton.example.org:8000/") == ("triton.example.org:8000", "http")
    assert parse_url("grpc://[::1]:8001") == ("[::1]:8001", "grpc")
    with pytest.raises(InclustError):
        parse_url("-bad-.org:1")
