"""Reading data files (CSV, JSON, NPZ) into a dict of NumPy arrays and numbers.

- CSV: a header row; each column becomes an array. Columns named ``X[1]``, ``X[2]``,
  ... (Stan's and posteriordb's naming) are stacked into one matrix ``X``.
- JSON: a Stan-style data dict, ``{"N": 8, "y": [...]}``, as in posteriordb.
- NPZ: NumPy's archive of named arrays.

Every problem is a `BayesdlError` naming the file, the key and what is wrong.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from bayesdl.errors import BayesdlError

_INDEXED_COLUMN = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<index>\d+)\]$")


def read_data_file(path: str | Path) -> dict[str, Any]:
    """Read ``path`` by its extension; the values are NumPy arrays or Python numbers."""
    path = Path(path)
    if not path.exists():
        raise BayesdlError(f"data file {str(path)!r} does not exist")
    if path.is_dir():
        raise BayesdlError(f"data file {str(path)!r} is a directory")
    if path.stat().st_size == 0:
        raise BayesdlError(f"data file {str(path)!r} is empty")
    readers = {".csv": _read_csv, ".json": _read_json, ".npz": _read_npz}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise BayesdlError(
            f"data file {str(path)!r}: unknown format {path.suffix or '(no extension)'!r}; "
            "use .csv, .json or .npz"
        )
    data = reader(path)
    check_finite(data, source=str(path))
    return data


def _read_csv(path: Path) -> dict[str, Any]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's BOM
            rows = list(csv.reader(handle))
    except UnicodeDecodeError:
        raise BayesdlError(f"data file {str(path)!r} is not a text CSV file") from None
    except csv.Error as error:  # e.g. a field over csv's size limit
        raise BayesdlError(f"data file {str(path)!r} is not a readable CSV file: {error}") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise BayesdlError(f"data file {str(path)!r} is empty")
    header = [name.strip() for name in rows[0]]
    if any(not name for name in header) or len(set(header)) != len(header):
        raise BayesdlError(f"data file {str(path)!r}: the header needs unique, non-empty names")
    if len(rows) < 2:
        raise BayesdlError(f"data file {str(path)!r} has a header but no rows")
    columns: dict[str, list[float]] = {name: [] for name in header}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise BayesdlError(
                f"data file {str(path)!r} line {line}: {len(row)} fields, header has {len(header)}"
            )
        for name, cell in zip(header, row, strict=True):
            try:
                columns[name].append(float(cell))
            except ValueError:
                raise BayesdlError(
                    f"data file {str(path)!r} line {line}, column {name!r}: "
                    f"{cell!r} is not a number"
                ) from None
    return _stack_indexed_columns({k: np.asarray(v) for k, v in columns.items()}, path)


def _stack_indexed_columns(columns: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    groups: dict[str, dict[int, np.ndarray]] = {}
    for name, values in columns.items():
        match = _INDEXED_COLUMN.match(name)
        if match:
            groups.setdefault(match["name"], {})[int(match["index"])] = values
        else:
            out[name] = values
    for name, members in groups.items():
        if name in out:
            raise BayesdlError(f"data file {str(path)!r}: {name!r} is both a column and indexed")
        if sorted(members) != list(range(1, len(members) + 1)):
            raise BayesdlError(
                f"data file {str(path)!r}: columns {name}[i] must run 1..n without gaps"
            )
        out[name] = np.column_stack([members[i] for i in range(1, len(members) + 1)])
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BayesdlError(f"data file {str(path)!r} is not valid JSON: {error}") from None
    except RecursionError:
        raise BayesdlError(f"data file {str(path)!r}: JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise BayesdlError(f"data file {str(path)!r}: expected a JSON object of named values")
    return {key: _json_value(key, value, path) for key, value in raw.items()}


def _json_value(key: str, value: Any, path: Path) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        raise BayesdlError(f"data file {str(path)!r}: {key!r} is {value!r}, not a number or array")
    if isinstance(value, (int, float)):
        if isinstance(value, int) and abs(value) >= 2**63:
            raise BayesdlError(f"data file {str(path)!r}: {key!r} is too large an integer")
        return value
    try:
        array = np.asarray(value, dtype=float)
    except OverflowError:
        raise BayesdlError(
            f"data file {str(path)!r}: {key!r} holds a number too large for a float"
        ) from None
    except (ValueError, TypeError):
        raise BayesdlError(
            f"data file {str(path)!r}: {key!r} is not a rectangular array of numbers"
        ) from None
    return array


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except ValueError as error:
        raise BayesdlError(f"data file {str(path)!r} holds objects, not numbers: {error}") from None
    except Exception as error:  # noqa: BLE001 - NumPy raises several types for bad archives
        raise BayesdlError(f"data file {str(path)!r} is not a readable .npz archive: {error}") from None
    for key, value in data.items():
        if not isinstance(value, np.ndarray):  # a zip member that is not a .npy file
            raise BayesdlError(f"data file {str(path)!r}: {key!r} is not a NumPy array")
        if value.dtype.kind not in "biuf":  # not complex, strings, dates or records
            raise BayesdlError(f"data file {str(path)!r}: {key!r} has dtype {value.dtype}, not numeric")
    return {k: (v.item() if v.ndim == 0 else v) for k, v in data.items()}


def check_finite(data: dict[str, Any], source: str = "data") -> None:
    """Raise if any numeric value is NaN or infinite, naming the key and the index."""
    for key, value in data.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise BayesdlError(f"{source}: {key!r} is {value}")
        elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            bad = ~np.isfinite(value)
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                raise BayesdlError(
                    f"{source}: {key!r} holds {value[index]} at index {index if value.ndim else ()}"
                )
