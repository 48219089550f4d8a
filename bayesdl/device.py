"""Choosing the device and float type once per run, and seeding."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from bayesdl.errors import BayesdlError

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BayesdlError(f"unknown device {str(name)!r}; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BayesdlError("device cuda was asked for, but no CUDA GPU is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise BayesdlError(f"unsupported device {str(name)!r}; use cpu or cuda")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``float64`` (default, for accurate checks) or ``float32`` (faster on GPUs)."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise BayesdlError(f"unsupported dtype {name}; use float64 or float32")
        return name
    if name not in DTYPES:
        raise BayesdlError(f"unknown dtype {name!r}; use float64 or float32")
    return DTYPES[name]


@contextlib.contextmanager
def run_context(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Default dtype (and, on CUDA, default device) for tensors a model creates."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if device.type == "cuda":
            with torch.device(device):
                yield
        else:
            yield
    finally:
        torch.set_default_dtype(previous)
