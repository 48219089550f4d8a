"""What data a built-in model expects, and the check that a data dict fits it.

A `DataField` gives a key's named axes and kind. Axes with the same name must have
the same length, and a size field (``J``) must equal the length of the axis it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bayesdl.errors import BayesdlError


@dataclass(frozen=True)
class DataField:
    """One data key: ``dims`` names its axes (``()`` for a scalar); ``kind`` is
    ``real``, ``int`` (integer values held as floats) or ``size`` (a Python int)."""

    dims: tuple[str, ...] = ()
    kind: str = "real"


def validate_data(data: dict[str, Any], schema: dict[str, DataField], model: str) -> dict[str, Any]:
    """Check ``data`` against ``schema``; return it with sizes as ints and arrays as float."""
    missing = [key for key in schema if key not in data]
    if missing:
        raise BayesdlError(f"data for model {model!r} is missing {', '.join(map(repr, missing))}")
    out: dict[str, Any] = {}
    axis_lengths: dict[str, tuple[int, str]] = {}
    for key, field in schema.items():
        raw = data[key]
        if hasattr(raw, "detach"):  # a torch tensor, possibly on a GPU
            raw = raw.detach().cpu().numpy()
        value = np.asarray(raw)
        if value.dtype.kind not in "biuf":  # strings, objects, complex numbers, dates
            raise BayesdlError(f"data {key!r} for model {model!r} must hold real numbers, "
                               f"got {value.dtype} values")
        if field.kind == "size":
            if value.ndim != 0 or float(value) != int(value) or int(value) < 0:
                raise BayesdlError(f"data {key!r} for model {model!r} must be a non-negative integer")
            out[key] = int(value)
            continue
        if value.ndim != len(field.dims):
            raise BayesdlError(
                f"data {key!r} for model {model!r} has {value.ndim} dimension(s), expected "
                f"{len(field.dims)} ({', '.join(field.dims) or 'a scalar'})"
            )
        if field.kind == "int" and np.any(value != np.round(value)):
            raise BayesdlError(f"data {key!r} for model {model!r} must hold integers")
        for axis, length in zip(field.dims, value.shape, strict=True):
            if axis in axis_lengths and axis_lengths[axis][0] != length:
                other_length, other_key = axis_lengths[axis]
                raise BayesdlError(
                    f"data {key!r} for model {model!r} has {length} entries along {axis!r}, "
                    f"but {other_key!r} has {other_length}"
                )
            axis_lengths.setdefault(axis, (length, key))
        out[key] = value.astype(float)
    for key, field in schema.items():
        if field.kind == "size" and key in axis_lengths and axis_lengths[key][0] != out[key]:
            length, other = axis_lengths[key]
            raise BayesdlError(
                f"data {key!r} for model {model!r} is {out[key]}, but {other!r} has {length} entries"
            )
    return out
