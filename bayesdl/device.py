"""Choosing the device and float type once per run, and the run's process settings."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch

from bayesdl.errors import BayesdlError


def generator_device(generator: torch.Generator | None) -> torch.device | None:
    """Where to draw from ``generator``: on its own device, since a run on CUDA makes CUDA
    torch's default device (:func:`run_context`) and a CPU generator cannot fill a CUDA
    tensor (the same numbers as on a CPU run, then moved); None (the default device)
    without a generator."""
    return None if generator is None else generator.device


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


_frozen_depth = 0


@contextlib.contextmanager
def collector_frozen() -> Iterator[None]:
    """Exempt the objects alive on entry from Python's cycle collector until the
    outermost exit. With torch, Pyro and a compiler loaded there are millions, and every
    full collection, which tracing and the small objects of each sampling step trigger
    now and then, walked all of them (0.1-0.2 s each here). A nested entry (the sampling
    loop inside a run) also exempts what was made since."""
    global _frozen_depth
    gc.freeze()
    _frozen_depth += 1
    try:
        yield
    finally:
        _frozen_depth -= 1
        if _frozen_depth == 0:
            gc.unfreeze()


@contextlib.contextmanager
def _torchscript_fuser_off() -> Iterator[None]:
    """TorchScript's NNC fuser and its legacy GPU fuser off, restored after (what
    ``torch.jit.fuser("none")`` does, without its nvfuser deprecation warnings)."""
    texpr, gpu = torch._C._jit_texpr_fuser_enabled(), torch._C._jit_can_fuse_on_gpu()
    torch._C._jit_set_texpr_fuser_enabled(False)
    torch._C._jit_override_can_fuse_on_gpu(False)
    try:
        yield
    finally:
        torch._C._jit_set_texpr_fuser_enabled(texpr)
        torch._C._jit_override_can_fuse_on_gpu(gpu)


@contextlib.contextmanager
def run_context(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Default dtype (and, on CUDA, default device) for tensors a model creates; the
    cycle collector spares the objects that existed before (:func:`collector_frozen`).

    On CUDA, TorchScript's fuser is off for the run: it compiles its CUDA kernels at the
    first calls (0.26 s of eight schools' set-up on an H200) and its kernels made a
    ChEES draw slower, not faster (1.25 vs 1.15 ms; bench/README.md, tenth session)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with collector_frozen():
            if device.type == "cuda":
                with torch.device(device), _torchscript_fuser_off():
                    yield
            else:
                yield
    finally:
        torch.set_default_dtype(previous)
