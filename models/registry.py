"""The registry of built-in models: name -> model, guide, default data, data schema.

A built-in registers itself with ``@register(...)`` on its model function. Keyword
arguments of the model that are not data (``centered=False``) are the model's
arguments, set with ``--arg key=value``; keyword arguments of its ``data`` function
(``num_points=100``) set the generated data.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from bayesdl.data_schema import DataField
from bayesdl.errors import BayesdlError


@dataclass
class BuiltinModel:
    """A model shipped with bayesdl."""

    name: str
    description: str
    model: Callable[..., Any]
    data: Callable[..., dict[str, Any]]
    schema: dict[str, DataField]
    guide: Callable[..., Any] | None = None
    dims: dict[str, list[str]] = field(default_factory=dict)
    coords: Callable[[dict[str, Any]], dict[str, list[Any]]] | None = None

    def model_args(self) -> dict[str, Any]:
        """The model's own arguments (not data) with their defaults."""
        return {
            name: p.default
            for name, p in inspect.signature(self.model).parameters.items()
            if name not in self.schema and p.default is not inspect.Parameter.empty
        }

    def data_args(self) -> dict[str, Any]:
        """Arguments of the default-data function with their defaults."""
        return {
            name: p.default
            for name, p in inspect.signature(self.data).parameters.items()
            if p.default is not inspect.Parameter.empty
        }


REGISTRY: dict[str, BuiltinModel] = {}


def register(name: str, description: str, *, data: Callable[..., dict[str, Any]],
             schema: dict[str, DataField], guide: Callable[..., Any] | None = None,
             dims: dict[str, list[str]] | None = None,
             coords: Callable[[dict[str, Any]], dict[str, list[Any]]] | None = None):
    """Decorator: register the decorated Pyro model as the built-in ``name``."""

    def decorate(model: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[name] = BuiltinModel(name, description, model, data, schema, guide,
                                      dims or {}, coords)
        return model

    return decorate


def get_builtin(name: str) -> BuiltinModel:
    """The built-in model ``name``, or a BayesdlError listing them."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise BayesdlError(
            f"unknown model {name!r}; built-ins are {', '.join(sorted(REGISTRY))}, "
            "or give a file as path/to/file.py:function"
        ) from None


def bundled_json(filename: str) -> dict[str, Any]:
    """A JSON data file bundled in ``bayesdl/models/data``."""
    return json.loads(resources.files("bayesdl.models").joinpath("data", filename).read_text())


def bundled_path(filename: str):
    """Context manager giving a real file path to a file bundled in ``bayesdl/models/data``."""
    return resources.as_file(resources.files("bayesdl.models").joinpath("data", filename))
