"""Typed ``key=value`` settings: method options (``--opt``) and model arguments (``--arg``).

Strings from the command line are converted to the type the option declares; values
from Python are checked against it. Unknown keys and unparsable values are errors.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from bayesdl.errors import BayesdlError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_key_values(pairs: list[str] | None, flag: str) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BayesdlError(f"{flag} {pair!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def convert_value(value: Any, kind: type, what: str) -> Any:
    """``value`` as ``kind`` (bool, int, float or str); strings are parsed."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise BayesdlError(f"{what} must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise BayesdlError(f"{what} must be an integer, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise BayesdlError(f"{what} must be an integer, got {value!r}") from None
        if number != int(number):
            raise BayesdlError(f"{what} must be an integer, got {value!r}")
        return int(number)
    if kind is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise BayesdlError(f"{what} must be a number, got {value!r}") from None
    return str(value)


def guess_value(value: Any) -> Any:
    """A command-line string as bool, int, float or str, whichever it reads as."""
    if not isinstance(value, str):
        return value
    if value.lower() in _TRUE - {"1"} | _FALSE - {"0"}:
        return value.lower() in _TRUE
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def build_options(options_class: type, given: dict[str, Any], method: str) -> Any:
    """An instance of the method's options dataclass from ``given`` (strings or values)."""
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    hints = typing.get_type_hints(options_class)
    unknown = [key for key in given if key not in fields]
    if unknown:
        known = ", ".join(f"{name}={field.default!r}" for name, field in fields.items())
        raise BayesdlError(
            f"method {method!r} has no option {unknown[0]!r}; its options are: {known or 'none'}"
        )
    values = {
        key: convert_value(value, hints[key], f"option {key!r} of method {method!r}")
        for key, value in given.items()
    }
    return options_class(**values)


def options_help(options_class: type) -> str:
    """``name=default`` for every option of a method, for help texts."""
    return ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(options_class))
