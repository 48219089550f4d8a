"""`ModelSpec`: the model, its data and optional guide, as handed to a method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelSpec:
    """A Pyro model with the keyword arguments it is run with.

    ``data`` holds every keyword argument of the model (observed arrays as tensors on
    the run's device, sizes and switches as Python values). ``dims`` and ``coords``
    name the axes of sites for ArviZ (``{"theta": ["school"]}``).
    """

    model: Callable[..., Any]
    data: dict[str, Any] = field(default_factory=dict)
    guide: Callable[..., Any] | None = None
    name: str = "model"
    dims: dict[str, list[str]] = field(default_factory=dict)
    coords: dict[str, list[Any]] = field(default_factory=dict)
