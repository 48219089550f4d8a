"""Data files (CSV, JSON, NPZ): what parses, and that every bad input is a
`BayesdlError` whose message names the file and the problem, never another exception.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesdl.data_files import check_finite, read_data_file
from bayesdl.errors import BayesdlError


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# ----------------------------------------------------------------- what parses
def test_csv_columns_become_arrays(tmp_path):
    data = read_data_file(write(tmp_path, "d.csv", "x,y\n1,2.5\n3,-4e-1\n5, 6\n"))
    assert set(data) == {"x", "y"}
    np.testing.assert_array_equal(data["x"], [1.0, 3.0, 5.0])
    np.testing.assert_array_equal(data["y"], [2.5, -0.4, 6.0])
    assert data["x"].dtype == np.float64


def test_csv_indexed_columns_stack_into_a_matrix(tmp_path):
    text = "y,X[1],X[2],X[3]\n0,1,2,3\n1,4,5,6\n"
    data = read_data_file(write(tmp_path, "d.csv", text))
    assert set(data) == {"y", "X"}
    np.testing.assert_array_equal(data["X"], [[1, 2, 3], [4, 5, 6]])
    # columns in any order, the index decides the position (X[10] after X[9])
    header = ",".join(f"X[{i}]" for i in [10, 2, 1, 3, 4, 5, 6, 7, 8, 9])
    data = read_data_file(write(tmp_path, "e.csv", f"{header}\n" + "10,2,1,3,4,5,6,7,8,9\n"))
    np.testing.assert_array_equal(data["X"], [list(range(1, 11))])


def test_csv_blank_lines_and_excel_bom_are_tolerated(tmp_path):
    data = read_data_file(write(tmp_path, "d.csv", b"\xef\xbb\xbfa,b\r\n1,2\r\n\r\n3,4\r\n\n"))
    assert set(data) == {"a", "b"}  # the BOM is not part of the first name
    np.testing.assert_array_equal(data["b"], [2.0, 4.0])


def test_json_stan_style_dict(tmp_path):
    path = write(tmp_path, "d.json", json.dumps(
        {"N": 3, "y": [1, 2.5, 3], "X": [[1, 2], [3, 4], [5, 6]], "s": 0.5}))
    data = read_data_file(path)
    assert data["N"] == 3 and isinstance(data["N"], int)
    assert data["s"] == 0.5
    np.testing.assert_array_equal(data["y"], [1, 2.5, 3])
    assert data["X"].shape == (3, 2) and data["X"].dtype == np.float64


def test_npz_arrays_and_scalars(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, y=np.arange(4.0), X=np.ones((4, 2)), N=np.array(4), flags=np.array([1, 0]))
    data = read_data_file(path)
    assert data["N"] == 4 and np.ndim(data["N"]) == 0
    assert data["X"].shape == (4, 2)
    np.testing.assert_array_equal(data["y"], np.arange(4.0))


def test_extension_is_case_insensitive(tmp_path):
    assert "a" in read_data_file(write(tmp_path, "D.CSV", "a\n1\n"))


# ----------------------------------------------------------------- what does not
def csv_bad_cases():
    return [
        ("empty", "d.csv", "", r"is empty"),
        ("blank lines only", "d.csv", "\n\n  \n", r"is empty"),
        ("header only", "d.csv", "a,b\n", r"has a header but no rows"),
        ("ragged", "d.csv", "a,b\n1,2\n3\n", r"line 3: 1 fields, header has 2"),
        ("too many fields", "d.csv", "a,b\n1,2,3\n", r"line 2: 3 fields, header has 2"),
        ("non-numeric", "d.csv", "a,b\n1,2\n3,x\n", r"line 3, column 'b': 'x' is not a number"),
        ("empty cell", "d.csv", "a,b\n1,\n", r"line 2, column 'b': '' is not a number"),
        ("NaN", "d.csv", "a,b\n1,nan\n", r"'b' holds nan at index \(0,\)"),
        ("Inf", "d.csv", "a\n1\n2\n-inf\n", r"'a' holds -inf at index \(2,\)"),
        ("overflow to Inf", "d.csv", "a\n1e400\n", r"'a' holds inf"),
        ("empty header name", "d.csv", "a,,c\n1,2,3\n", r"unique, non-empty names"),
        ("duplicate header", "d.csv", "a,a\n1,2\n", r"unique, non-empty names"),
        ("index gap", "d.csv", "X[1],X[3]\n1,2\n", r"X\[i\] must run 1\.\.n without gaps"),
        ("index from 0", "d.csv", "X[0],X[1]\n1,2\n", r"X\[i\] must run 1\.\.n"),
        ("column and indexed", "d.csv", "X,X[1]\n1,2\n", r"'X' is both a column and indexed"),
        ("not text", "d.csv", b"a\n\xff\xfe\x00\x81\n", r"not a text CSV file"),
        ("huge field", "d.csv", "a\n" + "1" * 200_000 + "\n", r"not a readable CSV file"),
    ]


def json_bad_cases():
    return [
        ("invalid", "d.json", "{'y': [1]}", r"is not valid JSON"),
        ("truncated", "d.json", '{"y": [1, 2', r"is not valid JSON"),
        ("array", "d.json", "[1, 2, 3]", r"expected a JSON object of named values"),
        ("number", "d.json", "3", r"expected a JSON object"),
        ("string value", "d.json", '{"y": "abc"}', r"'y' is 'abc', not a number or array"),
        ("null value", "d.json", '{"y": null}', r"'y' is None, not a number or array"),
        ("bool value", "d.json", '{"flag": true}', r"'flag' is True, not a number"),
        ("strings in array", "d.json", '{"y": ["a", "b"]}', r"'y' is not a rectangular array"),
        ("ragged", "d.json", '{"X": [[1, 2], [3]]}', r"'X' is not a rectangular array"),
        ("object in array", "d.json", '{"X": [{"a": 1}]}', r"'X' is not a rectangular array"),
        ("nested object", "d.json", '{"X": {"a": 1}}', r"'X' is not a rectangular array"),
        ("NaN", "d.json", '{"y": [1, NaN]}', r"'y' holds nan at index \(1,\)"),
        ("Inf scalar", "d.json", '{"s": Infinity}', r"'s' is inf"),
        ("overflow to Inf", "d.json", '{"y": [1e999]}', r"'y' holds inf"),
        ("null in array", "d.json", '{"y": [1, null]}', r"'y' holds nan"),
        ("huge integer", "d.json", '{"N": ' + "9" * 400 + "}", r"'N' is too large"),
        ("huge integer in array", "d.json", '{"y": [' + "9" * 400 + "]}", r"'y' holds a number"),
        ("deep nesting", "d.json", '{"y": ' + "[" * 100_000 + "]" * 100_000 + "}",
         r"nested too deeply"),
        ("not text", "d.json", b"\xff\xfe{", r"is not valid JSON"),
    ]


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def npz_bad_cases():
    return [
        ("object array", "d.npz", npz_bytes(y=np.array([{"a": 1}], dtype=object)),
         r"holds objects, not numbers"),
        ("strings", "d.npz", npz_bytes(y=np.array(["a", "b"])), r"'y' has dtype <U1, not numeric"),
        ("complex", "d.npz", npz_bytes(y=np.array([1 + 2j])), r"'y' has dtype complex128"),
        ("datetimes", "d.npz", npz_bytes(t=np.array(["2020-01-01"], dtype="datetime64[D]")),
         r"'t' has dtype datetime64"),
        ("NaN", "d.npz", npz_bytes(y=np.array([1.0, np.nan])), r"'y' holds nan at index \(1,\)"),
        ("Inf scalar", "d.npz", npz_bytes(s=np.array(np.inf)), r"'s' is inf"),
        ("not a zip", "d.npz", b"this is text", r"d\.npz"),
        ("a plain .npy", "d.npz", b"\x93NUMPY\x01\x00garbage", r"d\.npz"),
        ("non-array member", "d.npz", zip_bytes({"notes.txt": b"hello"}),
         r"'notes\.txt' is not a NumPy array"),
        ("damaged member", "d.npz", zip_bytes({"y.npy": b"\x93NUMPY\x09garbage"}), r"d\.npz"),
    ]


def other_bad_cases():
    return [
        ("unknown extension", "d.txt", "a\n1\n", r"unknown format '\.txt'; use \.csv, \.json or \.npz"),
        ("no extension", "data", "a\n1\n", r"unknown format '\(no extension\)'"),
        ("empty json", "d.json", "", r"is empty"),
        ("empty npz", "d.npz", b"", r"is empty"),
    ]


ALL_BAD = csv_bad_cases() + json_bad_cases() + npz_bad_cases() + other_bad_cases()


@pytest.mark.parametrize("name, content, message", [c[1:] for c in ALL_BAD],
                         ids=[f"{c[1].split('.')[-1]}: {c[0]}" for c in ALL_BAD])
def test_bad_file_is_a_one_line_error_naming_the_problem(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(BayesdlError, match=message) as error:
        read_data_file(path)
    text = str(error.value)
    assert name in text  # names the file
    assert "\n" not in text.strip() or "is not a number" in text  # one line (a cell may hold \n)
    assert len(text) < 600


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(BayesdlError, match=r"'.*nope\.csv' does not exist"):
        read_data_file(tmp_path / "nope.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(BayesdlError, match=r"is a directory"):
        read_data_file(tmp_path / "dir.csv")


def test_check_finite_names_key_and_index():
    check_finite({"N": 3, "flag": True, "y": np.arange(3.0), "k": np.array([1, 2])})
    with pytest.raises(BayesdlError, match=r"'X' holds nan at index \(1, 0\)"):
        check_finite({"X": np.array([[1.0, 2.0], [np.nan, 3.0]])})
    with pytest.raises(BayesdlError, match=r"'s' is -inf"):
        check_finite({"s": float("-inf")})


# ----------------------------------------------------------------- fuzz
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _parse_or_bayesdl_error(path: Path) -> None:
    try:
        data = read_data_file(path)
    except BayesdlError as error:
        assert str(error)
        return
    assert isinstance(data, dict)
    for key, value in data.items():
        assert isinstance(key, str)
        assert isinstance(value, (int, float, np.ndarray, np.generic)), (key, type(value))
        if isinstance(value, np.ndarray):
            assert value.dtype.kind in "biuf"


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".csv", ".json", ".npz"]))
def test_fuzz_arbitrary_bytes(tmp_path, content, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    _parse_or_bayesdl_error(path)


# text that is close to valid: CSV-ish and JSON-ish alphabets
_csv_text = st.text(alphabet=st.sampled_from(list("ab,X[]12.e-+ \n\r\"'naifINF_0")), max_size=120)
_json_leaf = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(),
                       st.booleans(), st.none(), st.integers(min_value=10**300, max_value=10**400))
_json_value = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=12)


@FUZZ
@given(text=_csv_text)
def test_fuzz_csv_like_text(tmp_path, text):
    path = tmp_path / "fuzz.csv"
    path.write_text(text, encoding="utf-8")
    _parse_or_bayesdl_error(path)


@FUZZ
@given(value=_json_value)
def test_fuzz_json_values(tmp_path, value):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(value), encoding="utf-8")
    _parse_or_bayesdl_error(path)


_member_names = st.text(alphabet="abxy.npyz_", min_size=1, max_size=8)


@FUZZ
@given(members=st.dictionaries(_member_names, st.binary(max_size=80), min_size=1, max_size=3),
       arrays=st.dictionaries(st.text(alphabet="abc", min_size=1, max_size=3),
                              st.sampled_from([np.arange(3.0), np.array([np.nan]), np.array(2),
                                               np.array(["s"]), np.array([1 + 1j]),
                                               np.array([True, False]), np.zeros((2, 0))]),
                              max_size=3))
def test_fuzz_npz_archives(tmp_path, members, arrays):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(zip_bytes(members))
    _parse_or_bayesdl_error(path)
    path.write_bytes(npz_bytes(**arrays) if arrays else b"")
    _parse_or_bayesdl_error(path)
